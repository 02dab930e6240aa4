"""Per-item samples: real lm-eval on a tiny Llama for each output type (multiple choice, loglikelihood bits per byte,
rolling loglikelihood, generate_until), stored compressed beside each result, part of what makes a cached result
valid, and shown by `nexus-eval samples`."""

from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.errors import EvalError
from nexus_eval.evaluation import cache as evalcache
from nexus_eval.evaluation.runner import EvalSettings, evaluate_with_status
from nexus_eval.evaluation.samples import answer_text, best_choice, gold_index, target_text
from nexus_eval.tasks.materialize import ood_task_yaml
from tests.evaluation.eval_fixtures import tiny_checkpoint

MC, BPB, GEN = "arith_steps1_mc", "arith_gold_bpb", "arith_steps1_gen"  # committed synthetic data
LIMIT = 3
ROLLING_TEXTS = ["A short note.\nIt has two lines.", "Another\tdocument, with a tab.", "Third one."]


@pytest.fixture(scope="module")
def ckpt(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nexus_eval.data import load_tokenizer

    return tiny_checkpoint(tmp_path_factory.mktemp("runs") / "run" / "ckpt-000001", load_tokenizer(tiny_data_dir))


@pytest.fixture(scope="module")
def rolling_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A loglikelihood_rolling task as `tasks prepare --data` writes them for OOD domains, over three short texts."""
    root = tmp_path_factory.mktemp("rolling")
    items = root / "items.jsonl"
    items.write_text("".join(json.dumps({"text": text}) + "\n" for text in ROLLING_TEXTS))
    path = root / "ood_probe.yaml"
    path.write_text(ood_task_yaml(root, "probe", items, "test"))
    return path


def settings(cache: Path, *tasks: str) -> EvalSettings:
    return EvalSettings(tasks=tasks, limit=LIMIT, cache_dir=cache)


@pytest.fixture(scope="module")
def evaluated(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(cache dir, task name → result) of one real evaluation of a multiple-choice and a bits-per-byte task."""
    cache = tmp_path_factory.mktemp("cache")
    rows = evaluate_with_status([ckpt], settings(cache, MC, BPB), progress=False)
    return cache, {result["task"]: result for result, _ in rows}


@pytest.fixture(scope="module")
def evaluated_more(ckpt: Path, rolling_task: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The same for a generation task (64 tokens per item) and a rolling-loglikelihood task."""
    cache = tmp_path_factory.mktemp("cache_more")
    rows = evaluate_with_status([ckpt], settings(cache, GEN, str(rolling_task)), progress=False)
    return cache, {result["task"]: result for result, _ in rows}


def samples_file(cache: Path, result: dict) -> Path:
    key = evalcache.cache_key(*(result[field] for field in evalcache.KEY_FIELDS))
    return evalcache.cache_path(cache, key).parent / result["samples"]


def check_complete(cache: Path, results: dict) -> None:
    for task, result in results.items():
        path = samples_file(cache, result)
        assert path.name.endswith(".samples.jsonl.gz") and path.read_bytes()[:2] == b"\x1f\x8b", task  # gzip
        assert path.with_name(path.name.replace(".samples.jsonl.gz", ".json")).is_file(), task  # beside its result
        items = evalcache.read_samples(cache, result)
        assert [item["doc_id"] for item in items] == result["doc_ids"], task
        lines = gzip.decompress(path.read_bytes()).decode().splitlines()
        assert [json.loads(line) for line in lines] == items, task  # JSON lines, nothing else
        for index, item in enumerate(items):
            scores = {metric: values[index] for metric, values in result["item_scores"].items()}
            assert item["scores"] == scores, task
            assert item["prompt"] and item["resps"] and item["filtered_resps"], task


def test_every_result_has_complete_compressed_samples(evaluated: tuple[Path, dict]) -> None:
    assert set(evaluated[1]) == {MC, BPB}
    check_complete(*evaluated)


def test_generation_and_rolling_results_have_complete_samples(evaluated_more: tuple[Path, dict]) -> None:
    assert set(evaluated_more[1]) == {GEN, "ood_probe"}
    check_complete(*evaluated_more)


def test_multiple_choice_items_keep_each_choice_and_the_pick_matches_acc(evaluated: tuple[Path, dict]) -> None:
    cache, results = evaluated
    for item in evalcache.read_samples(cache, results[MC]):
        assert item["output_type"] == "multiple_choice" and item["prompt"].startswith("Question: ")
        assert len(item["choices"]) == 4 and isinstance(item["target"], int)
        assert all(isinstance(c["loglikelihood"], float) and isinstance(c["is_greedy"], bool) for c in item["choices"])
        assert item["scores"]["acc,none"] == float(best_choice(item) == gold_index(item) == item["target"])
        assert target_text(item) == f"({item['target']}) {item['choices'][item['target']]['text'].strip()}"
        assert answer_text(item, "acc,none").startswith(f"({best_choice(item)}) ")


def test_bits_per_byte_items_keep_the_gold_continuation_and_its_loglikelihood(evaluated: tuple[Path, dict]) -> None:
    cache, results = evaluated
    for item in evalcache.read_samples(cache, results[BPB]):
        (choice,) = item["choices"]
        assert item["output_type"] == "loglikelihood" and choice["text"] == item["target"]
        expected = -choice["loglikelihood"] / (len(item["target"].encode()) * math.log(2))
        assert item["scores"]["bits_per_byte,none"] == pytest.approx(expected)


def test_rolling_items_keep_the_text_and_its_loglikelihood(evaluated_more: tuple[Path, dict]) -> None:
    cache, results = evaluated_more
    items = evalcache.read_samples(cache, results["ood_probe"])
    assert [item["target"] for item in items] == ROLLING_TEXTS and [i["prompt"] for i in items] == ROLLING_TEXTS
    for item in items:
        (loglik,) = item["filtered_resps"]["none"]  # one request: the whole text
        assert item["output_type"] == "loglikelihood_rolling" and item["choices"] == [] and loglik < 0
        assert item["scores"]["bits_per_byte,none"] == pytest.approx(
            -loglik / (len(item["target"].encode()) * math.log(2))
        )
        assert answer_text(item, "bits_per_byte,none") == f"LL {loglik:.3f}"


def test_generation_items_keep_the_response_and_each_filters_answer(evaluated_more: tuple[Path, dict]) -> None:
    cache, results = evaluated_more
    for item in evalcache.read_samples(cache, results[GEN]):
        assert item["output_type"] == "generate_until" and item["choices"] == []
        assert set(item["filtered_resps"]) == {"strict-match", "flexible-extract"}  # one record for both filters
        assert isinstance(item["resps"][0][0], str) and "#### " in item["target"]
        assert set(item["scores"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
        (answer,) = item["filtered_resps"]["flexible-extract"]
        assert answer_text(item, "exact_match,flexible-extract") == (answer or "(empty)")


def test_missing_or_damaged_samples_make_the_result_recomputed(ckpt: Path, tmp_path: Path) -> None:
    chosen = settings(tmp_path, BPB)
    ((first, cached),) = evaluate_with_status([ckpt], chosen, progress=False)
    assert not cached
    key = evalcache.cache_key(*(first[field] for field in evalcache.KEY_FIELDS))
    result_path, path = evalcache.cache_path(tmp_path, key), samples_file(tmp_path, first)
    original = path.read_bytes()
    lines = gzip.decompress(original).splitlines(keepends=True)
    damages = {
        "truncated": original[: len(original) // 2],
        "one line short": gzip.compress(b"".join(lines[:-1])),
        "not gzip": b"".join(lines),
    }
    for damage, data in damages.items():
        path.write_bytes(data)
        assert evalcache.read_cached(result_path, key) is None, damage  # the cache sees no result
        with pytest.raises(EvalError, match=path.name):
            evalcache.read_samples(tmp_path, first)  # a reader meets one line naming the file, not a traceback
    path.unlink()
    assert evalcache.read_cached(result_path, key) is None
    ((again, cached),) = evaluate_with_status([ckpt], chosen, progress=False)
    assert not cached and again["doc_ids"] == first["doc_ids"]
    assert gzip.decompress(path.read_bytes()) == gzip.decompress(original)  # the same samples, written again
    ((_, cached),) = evaluate_with_status([ckpt], chosen, progress=False)
    assert cached
    assert not list(tmp_path.rglob(".*.tmp*")), "a temp file of an atomic write was left behind"


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_cli_shows_the_items_of_a_cached_result(ckpt: Path, evaluated: tuple[Path, dict]) -> None:
    cache, results = evaluated
    common = ["samples", str(ckpt), "--limit", str(LIMIT), "--cache", str(cache)]
    table = invoke(*common, "--task", MC)
    assert table.exit_code == 0, table.output
    items = evalcache.read_samples(cache, results[MC])
    rows = [line for line in table.stdout.splitlines() if re.match(r"│\s+\d+ │", line)]
    assert [int(row.split("│")[1]) for row in rows] == [item["doc_id"] for item in items]
    assert "acc,none" in table.stdout
    as_json = invoke(*common, "--task", MC, "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout) == items
    one = invoke(*common, "--task", MC, "--item", "1")
    assert one.exit_code == 0, one.output
    assert items[1]["prompt"].splitlines()[0][:40] in one.stdout and "← best" in one.stdout
    one_json = invoke(*common, "--task", BPB, "--item", "2", "--json")
    assert json.loads(one_json.stdout) == evalcache.read_samples(cache, results[BPB])[2]


def test_cli_does_not_evaluate_what_is_not_cached(ckpt: Path, evaluated: tuple[Path, dict]) -> None:
    cache, _ = evaluated
    cases = {
        "other limit": (["--task", MC, "--limit", "2"], "no cached result for task arith_steps1_mc"),
        # evaluated with --limit 3: a lookup with other settings names the ones that are cached
        "no limit": (["--task", MC], f"cached with --limit {LIMIT} only; run `nexus-eval eval"),
        "other seed": (["--task", BPB, "--limit", str(LIMIT), "--seed", "7"], "cached with --seed 1234 only"),
        "other task": (["--task", "compare_mc", "--limit", str(LIMIT)], "no cached result for task compare_mc"),
        "no such item": (["--task", MC, "--limit", str(LIMIT), "--item", "99"], "--item 99: no such doc_id"),
        "unknown task": (["--task", "no_such_task"], "unknown task"),
    }
    before = sorted(cache.rglob("*"))
    for what, (args, expected) in cases.items():
        result = invoke("samples", str(ckpt), *args, "--cache", str(cache))
        assert result.exit_code == 2, (what, result.output)
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and expected in line, (what, line)
    (line,) = invoke("samples", str(ckpt), "--task", MC, "--limit", "2", "--cache", str(cache)).stderr.splitlines()
    assert (
        f"cached with --limit {LIMIT} only; run `nexus-eval eval {ckpt} --tasks {MC} --limit 2 --cache {cache}` first"
        in line
    )
    assert sorted(cache.rglob("*")) == before, "the samples command must not evaluate"
