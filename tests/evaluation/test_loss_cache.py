"""The measured-loss cache (evaluation.loss): one JSON per checkpoint content × data build × settings × loss code
version, written atomically, validated on read (anything unusable is measured again), read back without loading the
model; and nats/token of a harness checkpoint taken from its nexus.json without measuring."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from typer.testing import CliRunner

from nexus_eval import checkpoints
from nexus_eval.checkpoints import list_checkpoints, read_meta
from nexus_eval.cli import app
from nexus_eval.errors import EvalError
from nexus_eval.evaluation import loss
from nexus_eval.evaluation.loss import (
    LOSS_VERSION,
    checkpoint_loss,
    loss_cache_path,
    loss_key,
    loss_problems,
    measured_loss,
    read_cached_loss,
)
from nexus_eval.schema import MEASURED_LOSS_SCHEMA, LossKey
from tests.comparison.hf_trainer import train_with_hf_trainer

runner = CliRunner()


def forbid_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any model load from here on fails the test: what follows must come from the cache or nexus.json."""

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loss, "load_model", refuse)


@pytest.fixture
def ckpt(tiny_runs: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of a harness checkpoint (tests below edit its nexus.json)."""
    return Path(shutil.copytree(list_checkpoints(tiny_runs["adamw"])[-1], tmp_path / "run" / "ckpt-000006"))


@pytest.fixture(scope="module")
def measured(tiny_runs: dict[str, Path], tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Measured:
    """A harness checkpoint measured once (windows 2, docs 1) into a fresh cache: (checkpoint, cache dir, lookup)."""
    ckpt = list_checkpoints(tiny_runs["adamw"])[-1]
    cache = tmp_path_factory.mktemp("loss_cache") / "loss"
    return Measured(ckpt, cache, measured_loss(ckpt, tiny_data_dir, windows=2, docs=1, cache_dir=cache))


class Measured(NamedTuple):
    ckpt: Path
    cache: Path
    lookup: loss.LossLookup

    @property
    def key(self) -> LossKey:
        return loss_key(checkpoints.content_hash(self.ckpt), self.lookup.record["data_hash"], 2, 1)

    @property
    def path(self) -> Path:
        return loss_cache_path(self.cache, self.key)


def test_second_lookup_reads_the_cache_without_loading_the_model(
    measured: Measured, tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert measured.lookup.source == "measured"
    record, path = measured.lookup.record, measured.path
    assert path.name.startswith(measured.key["checkpoint_hash"][:16]) and json.loads(path.read_text()) == record
    assert loss_problems(record, measured.key) == []
    assert record["schema"] == MEASURED_LOSS_SCHEMA and record["loss_version"] == LOSS_VERSION
    assert record["same_tokenizer"] and record["val_loss"] > 0 and 0 < record["bits_per_byte"] < 20
    mtime = path.stat().st_mtime_ns
    forbid_model_load(monkeypatch)
    second = measured_loss(measured.ckpt, tiny_data_dir, windows=2, docs=1, cache_dir=measured.cache)
    assert (second.source, second.record) == ("cache", record)
    assert path.stat().st_mtime_ns == mtime
    bpb = checkpoint_loss(measured.ckpt, tiny_data_dir, "bpb", 2, 1, measured.cache)
    assert bpb == loss.LossValue(record["bits_per_byte"], "bpb", "cache")
    other = loss_key(measured.key["checkpoint_hash"], record["data_hash"], 2, 2)  # another setting: another file
    assert loss_cache_path(measured.cache, other) != path


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # a truncated write
        lambda text: text.replace(f'"loss_version": {LOSS_VERSION}', '"loss_version": 0'),  # older loss code
        lambda text: text.replace('"windows": 2', '"windows": 3'),  # another key's measurement
        lambda text: text.replace('"schema": 1', '"schema": 7'),
        lambda text: text.replace('"bits_per_byte": ', '"bits_per_byte": "x", "_": '),  # not a number
        lambda text: text.replace('"same_tokenizer": true', '"same_tokenizer": 1'),
        lambda text: text.replace('"val_bits_per_byte": {', '"val_bits_per_byte": {"x": "y", '),
        lambda text: "[]",
    ],
)
def test_unusable_cache_file_is_refused(measured: Measured, tmp_path: Path, damage: Any) -> None:
    damaged = tmp_path / measured.path.name
    damaged.write_text(damage(measured.path.read_text()))
    assert damaged.read_text() != measured.path.read_text()  # the damage applied
    assert read_cached_loss(damaged, measured.key) is None


def test_damaged_cache_file_is_measured_again(measured: Measured, tiny_data_dir: Path, tmp_path: Path) -> None:
    cache = Path(shutil.copytree(measured.cache, tmp_path / "loss"))
    path = loss_cache_path(cache, measured.key)
    path.write_text(path.read_text()[:100])
    again = measured_loss(measured.ckpt, tiny_data_dir, windows=2, docs=1, cache_dir=cache)
    assert again.source == "measured"
    assert again.record["bits_per_byte"] == pytest.approx(measured.lookup.record["bits_per_byte"])
    assert json.loads(path.read_text()) == again.record


def test_nats_of_a_harness_checkpoint_come_from_nexus_json(
    ckpt: Path, tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "loss"
    forbid_model_load(monkeypatch)
    got = checkpoint_loss(ckpt, tiny_data_dir, "nats", cache_dir=cache)
    assert got == loss.LossValue(read_meta(ckpt)["heldout_loss"], "nats", "nexus.json")
    assert not cache.exists()
    monkeypatch.undo()
    meta = read_meta(ckpt)  # trained on another data build: measured on this one instead
    (ckpt / "nexus.json").write_text(json.dumps({**meta, "data_hash": "0" * 64}))
    measured = checkpoint_loss(ckpt, tiny_data_dir, "nats", windows=4, docs=1, cache_dir=cache)
    assert measured.source == "measured"
    assert measured.value == pytest.approx(meta["heldout_loss"], abs=1e-5)  # the trainer's own windows (4)


def test_foreign_tokenizer_has_bits_per_byte_only(tiny_data_dir: Path, tmp_path: Path) -> None:
    trainer_ckpt = train_with_hf_trainer(tmp_path / "trainer", steps=2, save_steps=2) / "checkpoint-2"
    cache = tmp_path / "loss"
    got = checkpoint_loss(trainer_ckpt, tiny_data_dir, "bpb", windows=1, docs=1, cache_dir=cache)
    assert got.source == "measured" and 0 < got.value < 20
    record = measured_loss(trainer_ckpt, tiny_data_dir, windows=1, docs=1, cache_dir=cache).record
    assert not record["same_tokenizer"] and record["val_loss"] is None and record["val_loss_per_source"] == {}
    with pytest.raises(EvalError, match="checkpoint-2: its tokenizer is not the data build's"):
        checkpoint_loss(trainer_ckpt, tiny_data_dir, "nats", windows=1, docs=1, cache_dir=cache)


def test_loss_command_says_cached(ckpt: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    args = ["loss", str(ckpt), "--data", str(tiny_data_dir), "--windows", "2", "--docs", "1"]
    args += ["--cache", str(tmp_path / "loss")]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "measured" in first.stderr
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "cache" in second.stderr
    assert json.loads(second.stdout) == json.loads(first.stdout)
