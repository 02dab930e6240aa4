"""Minimal-pair tasks from a data build: deterministic, drawn from val/OOD text only and never from train, a swap of
the same characters, loadable by lm-eval, and scored by `nexus-eval eval` as whole strings after the BOS token."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.tasks import pairs
from nexus_eval.tasks import registry as tasks
from nexus_eval.tasks.materialize import prepare
from nexus_eval.tasks.pairs import CODE_TOKEN, TrainText, generate_family, swap_tokens, swap_words, write_pair_tasks

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

COUNT = 40  # items per family on the tiny build: enough of each kind, a second to write


def collapsed(text: str) -> str:
    return " ".join(text.split())


def read_items(out: Path, task: str) -> list[dict]:
    path = out / "pairs" / task / "test.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def written(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """(generated dir, summary) of one write_pair_tasks on the tiny build."""
    out = tmp_path_factory.mktemp("generated")
    return out, write_pair_tasks(tiny_data_dir, out, COUNT)


def test_every_family_of_the_build_is_written(tiny_data_dir: Path, written: tuple[Path, dict]) -> None:
    from nexus_eval.data import load_manifest, ood_names

    out, summary = written
    expected = {name for name, source, *_ in pairs.IN_DISTRIBUTION} | {
        f"pairs_ood_{domain}" for domain in ood_names(load_manifest(tiny_data_dir))
    }
    assert set(summary) == expected
    for name in expected:
        assert summary[name]["splits"]["test"] == len(read_items(out, name)) > COUNT // 2, summary[name]
        config = tasks.read_task_yaml(out / f"{name}.yaml")
        assert config["output_type"] == "multiple_choice" and config["doc_to_choice"] == "{{[good, bad]}}"
        assert config["doc_to_text"] == "" and config["doc_to_target"] == 0
        assert config["metadata"]["data_hash"] == load_manifest(tiny_data_dir)["hash"]


def test_the_same_build_rewrites_byte_identical_files_and_removes_stale_ones(
    tiny_data_dir: Path, written: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = written
    before = snapshot(out)
    (out / "pairs_gone.yaml").write_text("task: pairs_gone\n")  # another build's family
    (out / "pairs" / "pairs_gone").mkdir()
    (out / "pairs" / "pairs_gone" / "test.jsonl").write_text("{}\n")
    (out / "ood_kept.yaml").write_text("task: ood_kept\n")  # not ours to remove
    write_pair_tasks(tiny_data_dir, out, COUNT)
    after = snapshot(out)
    assert after.pop("ood_kept.yaml") == b"task: ood_kept\n"
    (out / "ood_kept.yaml").unlink()
    assert after == before
    elsewhere = tmp_path / "elsewhere"  # the items do not depend on where they are written
    write_pair_tasks(tiny_data_dir, elsewhere, COUNT)
    assert {k: v for k, v in snapshot(elsewhere).items() if k.endswith(".jsonl")} == {
        k: v for k, v in before.items() if k.endswith(".jsonl")
    }


def test_items_come_from_held_out_text_and_never_from_train(tiny_data_dir: Path, written: tuple[Path, dict]) -> None:
    from nexus_eval.data import load_manifest, load_tokenizer, open_tokens, read_docs

    out, summary = written
    manifest = load_manifest(tiny_data_dir)
    tokenizer = load_tokenizer(tiny_data_dir)
    train = collapsed(
        " ".join(tokenizer.decode(open_tokens(tiny_data_dir, "train", s)[:].tolist()) for s in manifest["sources"])
    )
    for name in summary:
        for item in read_items(out, name):
            assert item["split"] in ("val", "ood"), item
            doc = read_docs(tiny_data_dir, item["split"], item["source"])[item["source_doc"]]
            assert collapsed(item["good"]) in collapsed(doc), item
            assert item["good"] not in train and item["bad"] not in train, item


def test_good_and_bad_are_the_same_characters_with_two_neighbours_swapped(written: tuple[Path, dict]) -> None:
    out, summary = written
    for name in summary:
        items = read_items(out, name)
        assert len({item["good"] for item in items}) == len(items)
        for item in items:
            good, bad, k = item["good"], item["bad"], item["position"]
            assert good != bad and sorted(good) == sorted(bad), item
            if item["corruption"] == "word_swap":
                words = good.split()
                assert k >= 1 and bad.split() == words[:k] + [words[k + 1], words[k]] + words[k + 2 :], item
            else:
                tokens = CODE_TOKEN.findall(good)
                assert CODE_TOKEN.findall(bad)[k : k + 2] != tokens[k : k + 2], item
                assert bad.replace(" ", "") != good.replace(" ", "") or tokens[k] != tokens[k + 1]


def test_ood_rule_and_corruptions() -> None:
    assert pairs.is_code_domain(["#define FOO(x) ((x) + 1)\nstruct a { int b; };"])
    assert not pairs.is_code_domain(["The old man walked down the road, and the dog followed him home."])
    rng = random.Random(0)
    assert swap_words("The cat sat on the mat.".split(), rng)[2] in (1, 2, 3)  # never 0, never "mat." (punctuation)
    assert swap_words("The 4 * 9 = 36.".split(), rng) is None  # no two plain words side by side
    good, bad, k = swap_tokens("x = foo(a, b)", rng)
    assert good == "x = foo(a, b)" and sorted(bad) == sorted(good) and bad != good
    assert swap_tokens("'a b' 'c d'", rng) is None  # string literals are single tokens, and no symbol between


def test_a_candidate_found_in_train_is_never_an_item(tiny_data_dir: Path) -> None:
    from nexus_eval.data import load_tokenizer, open_tokens

    decoded = load_tokenizer(tiny_data_dir).decode(open_tokens(tiny_data_dir, "train", "text")[:200_000].tolist())
    train = TrainText(decoded)
    sentence = next(" ".join(s) for s in pairs.sentences(decoded))
    assert sentence in train and sentence.replace(" ", "  ", 1) in train  # whitespace does not matter
    assert sentence + " Zyxwv." not in train
    family = pairs.PairFamily("pairs_probe", "val", "text", "sentences", "probe")
    assert generate_family(family, [decoded], [], "h", 5)  # these sentences make items...
    assert generate_family(family, [decoded], [train], "h", 5) == []  # ...unless they occur in train


def test_the_pairs_suite_lists_generated_tasks_with_acc(written: tuple[Path, dict], monkeypatch) -> None:
    out, summary = written
    monkeypatch.setattr(tasks, "OOD_DIR", out)
    try:
        tasks.refresh()
        assert tasks.SUITES["pairs"] == sorted(summary) and set(summary) <= set(tasks.SUITES["all"])
        assert all(tasks.PRIMARY_METRIC[name] == "acc,none" for name in summary)
    finally:
        monkeypatch.undo()
        tasks.refresh()


@pytest.mark.parametrize("args", [["--pair-items", "10"], ["--data", "no-such-dir", "--pair-items", "0"]])
def test_bad_pair_items_is_a_one_line_error_before_anything_is_written(args: list[str]) -> None:
    result = CliRunner().invoke(app, ["tasks", "prepare", *args])
    assert result.exit_code == 2 and "error: --pair-items" in result.output and "Traceback" not in result.output


def test_prepare_with_a_data_dir_writes_the_pair_tasks(tiny_data_dir: Path, tmp_path: Path) -> None:
    summary = prepare(gsm8k_dir=None, data_dir=tiny_data_dir, tasks_dir=tmp_path, pair_items=5)
    names = [name for name in summary if name.startswith("pairs_")]
    assert "pairs_text_order" in names and any(name.startswith("ood_") for name in summary)
    for name in names:
        assert summary[name]["splits"] == {"test": 5} and (tmp_path / "generated" / f"{name}.yaml").is_file()
        assert len(read_items(tmp_path / "generated", name)) == 5


def test_yamls_load_in_lm_eval(written: tuple[Path, dict]) -> None:
    from lm_eval.tasks import TaskManager

    out, summary = written
    names = sorted(summary)
    loaded = TaskManager(include_path=str(out), include_defaults=False).load(names)["tasks"]
    for name in names:
        task = loaded[name]
        docs = list(task.test_docs())
        items = read_items(out, name)
        assert len(docs) == len(items)
        doc = docs[0]
        assert task.doc_to_text(doc) == "" and task.doc_to_target(doc) == 0
        assert task.doc_to_choice(doc) == [items[0]["good"], items[0]["bad"]]
        requests = task.construct_requests(doc, task.doc_to_text(doc), metadata=(name, 0, 1))
        assert [r.args for r in requests] == [("", " " + items[0]["good"]), ("", " " + items[0]["bad"])]


def renamed_tasks(out: Path, names: list[str], directory: Path) -> list[str]:
    """Copies of generated pair YAMLs under other task names (tasks/generated/ may hold the same names)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        text = (out / f"{name}.yaml").read_text().replace(f"task: {name}\n", f"task: probe_{name}\n")
        (directory / f"probe_{name}.yaml").write_text(text)
        paths.append(str(directory / f"probe_{name}.yaml"))
    return paths


def direct_loglikelihood(model, tokenizer, text: str) -> float:  # noqa: ANN001 (transformers objects)
    """log P(" " + text | BOS) summed over its tokens: what lm-eval computes for a choice with an empty context."""
    import torch

    ids = [tokenizer.bos_token_id] + tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return sum(logprobs[i - 1, ids[i]].item() for i in range(1, len(ids)))


@pytest.fixture(scope="module")
def ckpt(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init checkpoint saved as the trainer saves one, with a 512-token context: the study recipe's
    tiny runs (tiny_runs) have 32 tokens, shorter than most pair items with the tiny build's 512-word vocabulary."""
    from nexus_eval.data import load_tokenizer
    from tests.evaluation.eval_fixtures import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("runs") / "run" / "ckpt-000001", load_tokenizer(tiny_data_dir))


@pytest.mark.slow
def test_eval_scores_each_choice_whole_after_bos(ckpt: Path, written: tuple[Path, dict], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nexus_eval.evaluation import cache as evalcache

    out, summary = written
    names = ["pairs_text_order", "pairs_code_order"]
    cache = tmp_path / "cache"
    args = ["eval", str(ckpt), "--tasks", ",".join(renamed_tasks(out, names, tmp_path / "yaml")), "--limit", "6"]
    result = CliRunner().invoke(app, [*args, "--cache", str(cache), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    results = {r["task"]: r for r in json.loads(result.stdout)}
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    assert tokenizer.bos_token_id == tokenizer.eos_token_id  # the document separator the model was trained with
    for name in names:
        items = read_items(out, name)[:6]
        samples = evalcache.read_samples(cache, results[f"probe_{name}"])
        assert len(samples) == len(items)
        for item, sample in zip(items, samples, strict=True):
            good, bad = (choice["loglikelihood"] for choice in sample["choices"])
            assert math.isclose(good, direct_loglikelihood(model, tokenizer, item["good"]), rel_tol=1e-4)
            assert math.isclose(bad, direct_loglikelihood(model, tokenizer, item["bad"]), rel_tol=1e-4)
            assert sample["scores"]["acc,none"] == float(good > bad)


@pytest.mark.slow
def test_hf_and_vllm_agree_on_pairs(ckpt: Path, written: tuple[Path, dict], tmp_path: Path) -> None:
    from tests.evaluation.test_backends import VLLM_ERROR, VLLM_SKIP_REASON

    if VLLM_ERROR is not None:
        pytest.skip(VLLM_SKIP_REASON)
    from nexus_eval.evaluation import cache as evalcache
    from nexus_eval.evaluation.runner import evaluate

    out, summary = written
    paths = renamed_tasks(out, sorted(summary), tmp_path / "yaml")
    cache = tmp_path / "cache"
    hf, vl = (evaluate([ckpt], paths, backend=b, limit=20, cache_dir=cache, progress=False) for b in ("hf", "vllm"))
    for a, b in zip(hf, vl, strict=True):
        assert a["task"] == b["task"] and a["doc_ids"] == b["doc_ids"]
        for x, y in zip(evalcache.read_samples(cache, a), evalcache.read_samples(cache, b), strict=True):
            lx = [c["loglikelihood"] for c in x["choices"]]
            ly = [c["loglikelihood"] for c in y["choices"]]
            assert all(math.isclose(p, q, rel_tol=1e-3, abs_tol=1e-3) for p, q in zip(lx, ly, strict=True)), (lx, ly)
            if abs(lx[0] - lx[1]) > 1e-2:  # a near tie may flip between kernels; anything clearer may not
                assert x["scores"]["acc,none"] == y["scores"]["acc,none"]
