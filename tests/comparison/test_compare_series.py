"""`compare` over checkpoint series of any origin (issue 17): a series trained by transformers' own Trainer against a
harness run in bits per byte, a series of the data's tokenizer in nats/token on the reference's held-out set, N
series against one reference, external rows marked in the report, and bad input refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nexus_eval.checkpoints import list_checkpoints, read_meta
from nexus_eval.cli import app
from nexus_eval.comparison import CompareOptions, CompareSettings, compare
from nexus_eval.comparison.external import compared_runs
from nexus_eval.errors import ComparisonError
from nexus_eval.evaluation.loss import measured_loss
from tests.comparison.hf_trainer import train_with_hf_trainer

TASK = "arith_steps1_mc"
runner = CliRunner()


@pytest.fixture(scope="module")
def trainer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """checkpoint-{2,4,6} of a tiny GPT-2 trained by transformers.Trainer, with a tokenizer of its own."""
    return train_with_hf_trainer(tmp_path_factory.mktemp("trainer") / "gpt2-trainer")


def exported(run_dir: Path, out: Path, newest_only: bool = False) -> Path:
    """The run's checkpoints as another trainer would leave them: checkpoint-<step> dirs of weights, config and
    tokenizer, without the harness's nexus.json or optimizer state."""
    found = list_checkpoints(run_dir)
    for ckpt in found[-1:] if newest_only else found:
        step = read_meta(ckpt)["step"]
        shutil.copytree(ckpt, out / f"checkpoint-{step}", ignore=shutil.ignore_patterns("nexus.json", "*.pt"))
    return out


def options(tmp_path: Path, data: Path, **kw: object) -> CompareOptions:
    defaults = {
        "cache_dir": tmp_path / "eval",
        "out": tmp_path / "out",
        "progress": False,
        "show": False,
        "data_dir": data,
        "loss_cache_dir": tmp_path / "loss",
    }
    return CompareOptions(**{**defaults, **kw})  # type: ignore[arg-type]


def settings(**kw: object) -> CompareSettings:
    return CompareSettings(**{"tasks": (TASK,), "limit": 8, "bootstrap_resamples": 200, **kw})  # type: ignore[arg-type]


@pytest.mark.slow
def test_same_tokenizer_series_is_measured_in_nats_on_the_reference_heldout_set(
    tiny_runs: dict[str, Path], tiny_data_dir: Path, tmp_path: Path
) -> None:
    """The AdamW run exported without nexus.json is an external series; measured on the Nexus reference's held-out
    set (its recipe's windows, context and mixture), each checkpoint's nats/token equal what the trainer recorded."""
    ext = exported(tiny_runs["adamw"], tmp_path / "exported")
    found = compared_runs([f"nexus={tiny_runs['nexus']}", f"exported={ext}"], [], tiny_data_dir, cache_dir=tmp_path)
    assert found.unit == "nats" and found.unit_chosen_by == "same tokenizer"
    reference, external = found.runs
    assert not reference.external and external.external and external.label == "exported"
    recorded = {read_meta(c)["step"]: read_meta(c)["heldout_loss"] for c in list_checkpoints(tiny_runs["adamw"])}
    assert {c.step: c.loss for c in external.checkpoints} == pytest.approx(recorded, abs=1e-4)
    assert [c.loss for c in reference.checkpoints] == [read_meta(c.path)["heldout_loss"] for c in reference.checkpoints]
    assert len(list(tmp_path.glob("*.json"))) == len(recorded)  # one cached measurement per external checkpoint

    target = external.checkpoints[-1].loss
    report = compare(
        [f"nexus={tiny_runs['nexus']}", f"exported={ext}"],
        settings(targets=(target, 0.01), tolerance=0.5),
        options(tmp_path, tiny_data_dir),
    )
    assert report["settings"]["reference"] == "nexus" and report["settings"]["series"] == ["nexus", "exported"]
    assert report["settings"]["loss_unit"] == "nats"
    (pair,) = report["pairs"]
    assert pair["series"] == "exported" and pair["candidate"]["checkpoint"].startswith("exported/checkpoint-")
    (unreached,) = report["unmatched"]  # 0.01 nats: no series gets there
    assert unreached["target"] == 0.01 and "no checkpoint within" in unreached["reason"]
    row = next(r for r in report["runs"] if r["series"] == "exported")
    assert row["external"] and row["checks"]["tokenizer"] == "data build's" and row["optimizer"] is None
    trained = json.loads((tiny_runs["adamw"] / "run.json").read_text())
    assert row["checks"]["parameters"] == trained["model_params"]  # read from the safetensors headers alone
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## External series" in markdown and "exported †" in markdown and "decontamination" in markdown


@pytest.mark.slow
def test_trainer_series_against_a_harness_run_in_bits_per_byte(
    tiny_runs: dict[str, Path], tiny_data_dir: Path, trainer_dir: Path, tmp_path: Path
) -> None:
    """transformers.Trainer's checkpoints (their own tokenizer) against the harness's AdamW run: bits per byte on
    the same held-out bytes for both, each loss the cached measurement, the pair's Δloss their difference."""
    specs = [str(tiny_runs["adamw"]), f"gpt2={trainer_dir}"]
    found = compared_runs(specs, [], tiny_data_dir, cache_dir=tmp_path / "loss")
    assert found.unit == "bpb" and found.unit_chosen_by == "tokenizers differ"
    losses = [c.loss for r in found.runs for c in r.checkpoints]
    middle = (max(losses) + min(losses)) / 2
    report = compare(specs, settings(targets=(round(middle, 3),), tolerance=50.0), options(tmp_path, tiny_data_dir))
    assert report["settings"]["loss_unit"] == "bpb" and report["settings"]["reference"] == "adamw"
    (pair,) = report["pairs"]
    assert pair["series"] == "gpt2" and pair["candidate"]["checkpoint"].startswith("gpt2/checkpoint-")
    by_label = {c.label: c for r in found.runs for c in r.checkpoints}
    for side in ("reference", "candidate"):
        ckpt = by_label[pair[side]["checkpoint"]]
        spec = found.heldout
        assert spec is not None
        cached = measured_loss(
            ckpt.path, tiny_data_dir, spec.windows, spec.docs, tmp_path / "loss", spec.max_context, spec.mixture
        )
        assert cached.source == "cache" and pair[side]["loss"] == cached.record["bits_per_byte"]
    assert pair["delta_loss"] == pytest.approx(pair["candidate"]["loss"] - pair["reference"]["loss"])
    assert {r["series"] for r in report["tasks"]} == {"gpt2"} and report["tasks"][0]["reference"] is not None
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "bits/byte" in markdown and "gpt2 †" in markdown and "AdamW vs gpt2 †" in markdown


@pytest.mark.slow
def test_three_series_each_against_the_reference(
    tiny_runs: dict[str, Path], tiny_data_dir: Path, tmp_path: Path
) -> None:
    """N series: every one but the reference is matched against it, and the report has a group of tables each."""
    ext = exported(tiny_runs["adamw"], tmp_path / "exported")
    specs = [str(tiny_runs["adamw"]), str(tiny_runs["nexus"]), f"copy={ext}"]
    target = read_meta(list_checkpoints(tiny_runs["adamw"])[-1])["heldout_loss"]
    report = compare(specs, settings(targets=(target,), tolerance=0.5), options(tmp_path, tiny_data_dir))
    assert report["settings"]["series"] == ["adamw", "nexus", "copy"]
    assert sorted(p["series"] for p in report["pairs"]) == ["copy", "nexus"]
    copy = next(p for p in report["pairs"] if p["series"] == "copy")
    assert copy["delta_loss"] == pytest.approx(0.0, abs=1e-4)  # the same weights, measured on the same windows
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Nexus vs AdamW: Loss-matched pairs" in markdown and "## copy † vs AdamW: Loss-matched pairs" in markdown
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["schema"] == 3 and {r["series"] for r in saved["runs"]} == {"adamw", "nexus", "copy"}


def test_bad_series_input_is_one_line(
    tiny_runs: dict[str, Path], tiny_data_dir: Path, trainer_dir: Path, tmp_path: Path
) -> None:
    base = ["compare", "--match-loss", "--tasks", TASK, "--data", str(tiny_data_dir), "--out", str(tmp_path / "o")]
    base += ["--loss-cache", str(tmp_path / "loss"), "--cache", str(tmp_path / "eval"), "--quiet"]
    cases = {
        "label already names": [str(tiny_runs["adamw"]), f"x={trainer_dir}", "--series", f"x={trainer_dir}"],
        "--reference nope: no such series": [str(tiny_runs["adamw"]), f"x={trainer_dir}", "--reference", "nope"],
        "--loss-unit nats: series x": [str(tiny_runs["adamw"]), f"x={trainer_dir}", "--loss-unit", "nats"],
        "--loss-unit kg": [str(tiny_runs["adamw"]), str(tiny_runs["nexus"]), "--loss-unit", "kg"],
        "empty series": [str(tiny_runs["adamw"]), f"x={tmp_path}"],
        "one series only": [f"x={trainer_dir}"],
    }
    for expected, args in cases.items():
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == 2, (expected, result.output)
        assert expected in result.output and result.output.strip().count("\n") == 0, result.output
    assert not (tmp_path / "o").exists()


def test_a_series_that_never_reaches_a_target_names_itself(
    tiny_runs: dict[str, Path], tiny_data_dir: Path, tmp_path: Path
) -> None:
    ext = exported(tiny_runs["adamw"], tmp_path / "exported", newest_only=True)  # one checkpoint to measure
    with pytest.raises(ComparisonError, match="no nexus/exported checkpoint pair within --tolerance 0.01"):
        compare(
            [f"nexus={tiny_runs['nexus']}", f"exported={ext}"],
            settings(targets=(0.01,), tolerance=0.01),
            options(tmp_path, tiny_data_dir),
        )
