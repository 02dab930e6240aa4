"""A checkpoint series through one engine (issue 14): weights swapped into the loaded model equal a fresh load item
for item on both backends; all tasks of a checkpoint in one lm-eval call; --model-args, --device and --batch-size
checked, recorded and keyed; the batch-invariance check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.errors import EvalError
from nexus_eval.evaluation import EvalSettings, evaluate, read_samples
from nexus_eval.evaluation.backends import BackendSpec, can_swap_weights
from nexus_eval.evaluation.engine import Engine
from nexus_eval.evaluation.invariance import check_batch_invariance, responses
from tests.evaluation.eval_fixtures import tiny_checkpoint
from tests.evaluation.test_backends import needs_vllm

# A multiple-choice task, a gold-continuation bits-per-byte task and a generation task (committed synthetic data).
TASKS = ["arith_steps1_mc", "arith_gold_bpb", "arith_steps1_gen"]
LIMIT = 4


@pytest.fixture(scope="module")
def series(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three checkpoints of one run: same config and tokenizer, different weights."""
    from nexus_eval.data import load_tokenizer

    tokenizer = load_tokenizer(tiny_data_dir)
    run = tmp_path_factory.mktemp("series") / "run"
    return [tiny_checkpoint(run / f"ckpt-{i:06d}", tokenizer, seed=i) for i in (1, 2, 3)]


def item_records(results: list[dict], cache: Path) -> dict[tuple[str, str], list]:
    """(checkpoint name, task) → the per-item raw responses (log-likelihoods and generations) of each result."""
    return {(Path(r["checkpoint"]).name, r["task"]): [responses(i) for i in read_samples(cache, r)] for r in results}


def test_the_engine_swaps_weights_within_a_run_and_loads_afresh_otherwise(series: list[Path], tmp_path: Path) -> None:
    other = json.loads((series[0] / "config.json").read_text())
    other_ckpt = tmp_path / "other" / "ckpt-000001"
    other_ckpt.parent.mkdir()
    import shutil

    shutil.copytree(series[0], other_ckpt)
    (other_ckpt / "config.json").write_text(json.dumps({**other, "max_position_embeddings": 256}))
    assert can_swap_weights(series[0], series[1]) and not can_swap_weights(series[0], other_ckpt)
    with Engine(BackendSpec("hf")) as engine:
        engine.load(series[0])
        lm = engine.load(series[1])
        assert (engine.fresh_loads, engine.weight_swaps) == (1, 1)
        live = lm.model.state_dict()
        for name, tensor in load_file(str(series[1] / "model.safetensors")).items():
            assert live[name].equal(tensor), name  # the second checkpoint's weights, not the first's
        engine.load(other_ckpt)
        assert (engine.fresh_loads, engine.weight_swaps) == (2, 1)


def swapped_equals_fresh(series: list[Path], backend: str, tmp_path: Path) -> None:
    """The series evaluated through one engine equals each checkpoint evaluated in an engine of its own, item for
    item and bit for bit; and the checkpoints' results differ (a stale model would pass otherwise)."""
    together = evaluate(series, TASKS, backend=backend, limit=LIMIT, cache_dir=tmp_path / "series", progress=False)
    alone = [
        result
        for ckpt in series
        for result in evaluate(
            [ckpt], TASKS, backend=backend, limit=LIMIT, cache_dir=tmp_path / ckpt.name, progress=False
        )  # fmt: skip
    ]
    records = item_records(together, tmp_path / "series")
    fresh: dict = {}
    for ckpt in series:
        fresh.update(item_records([r for r in alone if Path(r["checkpoint"]) == ckpt], tmp_path / ckpt.name))
    assert records.keys() == fresh.keys() and len(records) == len(series) * len(TASKS)
    for key, items in records.items():
        assert items == fresh[key], key
    for a, b in zip(together, alone, strict=True):
        assert a["item_scores"] == b["item_scores"] and a["metrics"] == b["metrics"]
    first, second = (records[(series[i].name, "arith_gold_bpb")] for i in (0, 1))
    assert first != second


@pytest.mark.slow
def test_hf_series_through_one_engine_equals_fresh_loads(series: list[Path], tmp_path: Path) -> None:
    swapped_equals_fresh(series, "hf", tmp_path)


@needs_vllm
@pytest.mark.slow
def test_vllm_series_through_one_engine_equals_fresh_loads(series: list[Path], tmp_path: Path) -> None:
    """vLLM's weight swap (vllm_worker.py) re-ties the tiny preset's embedding and head: without it the logits of
    the second checkpoint came from the first's head."""
    swapped_equals_fresh(series[:2], "vllm", tmp_path)


def test_tasks_in_one_call_score_as_tasks_alone(series: list[Path], tmp_path: Path) -> None:
    """All tasks of a checkpoint go through one lm-eval call (batched together); each equals its own call."""
    together = evaluate(series[:1], TASKS[:2], limit=LIMIT, cache_dir=tmp_path / "one-call", progress=False)
    for result in together:
        (alone,) = evaluate(series[:1], [result["task"]], limit=LIMIT, cache_dir=tmp_path / result["task"],
                            progress=False)  # fmt: skip
        assert alone["doc_ids"] == result["doc_ids"]
        for key, scores in result["item_scores"].items():
            for x, y in zip(scores, alone["item_scores"][key], strict=True):
                assert math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6), (result["task"], key)


def test_backend_settings_are_recorded_and_keyed(series: list[Path], tmp_path: Path) -> None:
    default = evaluate(series[:1], TASKS[:1], limit=2, cache_dir=tmp_path, progress=False)[0]
    assert "engine" not in default  # defaults keep the key results had before these flags
    assert default["provenance"]["device"] == "cpu" and default["provenance"]["batch_size"] == 8
    given = evaluate(series[:1], TASKS[:1], limit=2, cache_dir=tmp_path, progress=False, batch_size=2,
                     model_args="attn_implementation=eager")[0]  # fmt: skip
    assert given["engine"] == {"batch_size": 2, "model_args": {"attn_implementation": "eager"}}
    assert given["provenance"]["model_args"]["attn_implementation"] == "eager"
    assert given["samples"] != default["samples"]  # another cache entry
    assert given["item_scores"] == default["item_scores"]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--model-args", "no_such_arg=1"], "--model-args no_such_arg=1"),
        (["--model-args", "pretrained=/elsewhere"], "--model-args pretrained=/elsewhere"),
        (["--device", "cuda:7"], "--device cuda:7"),
        (["--device", "tpu"], "--device tpu"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--batch-size", "many"], "--batch-size many"),
    ],
)
def test_bad_backend_settings_are_one_line_and_cache_nothing(
    series: list[Path], tmp_path: Path, flags: list[str], named: str
) -> None:
    cache = tmp_path / "cache"
    args = ["eval", str(series[0]), "--tasks", TASKS[0], "--limit", "2", "--cache", str(cache), "--quiet", *flags]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.output
    assert not cache.exists() or not any(cache.rglob("*.json"))


def test_vllm_model_args_are_checked_against_vllms_engine_args() -> None:
    pytest.importorskip("vllm")
    BackendSpec("vllm", model_args=(("max_num_seqs", 4), ("gpu_memory_utilization", 0.5))).check()
    with pytest.raises(EvalError, match="--model-args attn_implementation=eager: the vllm backend has no argument"):
        BackendSpec("vllm", model_args=(("attn_implementation", "eager"),)).check()


@pytest.mark.slow
def test_hf_log_likelihoods_do_not_move_with_the_batch_size(series: list[Path]) -> None:
    settings = EvalSettings(tasks=tuple(TASKS), limit=8, batch_size=8)
    rows = check_batch_invariance(series[:1], settings, progress=False)
    assert [row.task for row in rows] == TASKS
    for row in rows:
        if row.task != "arith_steps1_gen":
            assert row.logliks > 0 and row.logliks_over_tolerance == 0, row
            assert row.score_batch_1 == row.score_batch_n
    generated = rows[-1]
    assert generated.generations == 8 and generated.logliks == 0  # counted; reported, not asserted equal


def test_the_batch_invariance_command_needs_a_batch_above_one(series: list[Path]) -> None:
    result = CliRunner().invoke(app, ["eval", str(series[0]), "--tasks", TASKS[0], "--check-batch-invariance",
                                      "--batch-size", "1"])  # fmt: skip
    assert result.exit_code == 2 and "batch size 1" in result.output
