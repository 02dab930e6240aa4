"""The trainer end to end on a tiny real data build: checkpoints, fairness, exact resume, NaN stop, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nexus_eval.checkpoints import list_checkpoints, load_model, read_meta
from nexus_eval.cli import app
from nexus_eval.recipe import load_recipe
from nexus_eval.train import Trainer, run_dir_for, train
from tests.conftest import write_recipe


def test_run_writes_loss_labelled_hf_checkpoints(tiny_runs: dict[str, Path]) -> None:
    for optimizer, run_dir in tiny_runs.items():
        ckpts = list_checkpoints(run_dir)
        # step 2: the first held-out eval finds the 100.0 target crossed; steps 3 and 6: the interval and the end.
        assert [read_meta(c)["step"] for c in ckpts] == [2, 3, 6]
        meta = read_meta(ckpts[-1])
        assert meta["optimizer"] == optimizer and meta["tokens_seen"] == 6 * 3 * 4 * 32
        assert set(meta["heldout_loss_per_source"]) == {"text", "math", "code"}
        assert len(meta["ood_loss"]) >= 2 and meta["data_hash"] and meta["recipe_hash"]
        assert read_meta(ckpts[0])["target_loss"] == 100.0
        model, tokenizer = load_model(ckpts[-1])
        assert model.config.model_type == "llama" and len(tokenizer) <= model.config.vocab_size
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [2, 4, 6]
        assert rows[-1]["val_loss"] == pytest.approx(meta["heldout_loss"])
        cos = rows[-1]["grad_cosine"]
        assert len(cos["matrix"]) == len(cos["sources"]) >= 2
        # Training reduced the held-out loss from the first eval to the last.
        assert rows[-1]["val_loss"] < rows[0]["val_loss"]


def test_optimizers_see_identical_micro_batches_and_start_point(tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, tiny_data_dir))
    a = Trainer(recipe, "adamw", 0, tmp_path / "a", tiny_data_dir)
    b = Trainer(recipe, "nexus", 0, tmp_path / "b", tiny_data_dir)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)
    for step in range(4):
        for x, y in zip(a.schedule.step_batches(step, 3), b.schedule.step_batches(step, 3), strict=True):
            assert x.source == y.source and torch.equal(x.inputs, y.inputs)
    c = Trainer(recipe, "nexus", 1, tmp_path / "c", tiny_data_dir)  # another seed: other batches
    assert not torch.equal(c.schedule.step_batches(0, 3)[0].inputs, a.schedule.step_batches(0, 3)[0].inputs)


def test_nexus_and_adamw_end_in_different_places(tiny_runs: dict[str, Path]) -> None:
    a, b = (read_meta(list_checkpoints(tiny_runs[o])[-1])["heldout_loss"] for o in ("adamw", "nexus"))
    assert a != b


def test_resume_reproduces_uninterrupted_run(tiny_runs: dict[str, Path], tmp_path: Path, tiny_data_dir: Path) -> None:
    for optimizer, run_dir in tiny_runs.items():
        killed = tmp_path / optimizer / run_dir.name
        shutil.copytree(run_dir, killed)
        shutil.rmtree(killed / "ckpt-000006")  # as if killed after step 3's checkpoint
        with (killed / "metrics.jsonl").open("a") as fh:
            fh.write('{"step": 7, "half-written')
        recipe = write_recipe(tmp_path, tiny_data_dir)
        assert run_dir_for(tmp_path / optimizer, load_recipe(recipe), optimizer, 0) == killed
        train(recipe, optimizer, seed=0, out=tmp_path / optimizer, resume=True, progress=False)
        want, _ = load_model(run_dir / "ckpt-000006")
        got, _ = load_model(killed / "ckpt-000006")
        for p, q in zip(want.parameters(), got.parameters(), strict=True):
            assert torch.equal(p, q)
        strip = [
            {k: v for k, v in json.loads(r).items() if k != "tokens_per_s"}
            for r in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        again = [
            {k: v for k, v in json.loads(r).items() if k != "tokens_per_s"}
            for r in (killed / "metrics.jsonl").read_text().splitlines()
        ]
        assert strip == again


runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_nan_loss_stops_with_clear_error(tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tiny_data_dir, lr=1e30)
    code, out = cli("train", str(recipe), "--optimizer", "adamw", "--out", str(tmp_path / "runs"), "--quiet")
    assert code == 2 and "training loss is nan" in out and len(out.strip().splitlines()) == 1


def test_bad_input_one_line_errors(tiny_data_dir: Path, tmp_path: Path) -> None:
    good = write_recipe(tmp_path, tiny_data_dir)
    bad_key = tmp_path / "bad_key.toml"
    bad_key.write_text(good.read_text().replace("micro_batch", "microbatch"))
    bad_source = tmp_path / "bad_source.toml"
    bad_source.write_text(good.read_text().replace("code = 1.0", "poetry = 1.0"))
    cases = [
        (["train", str(bad_key), "--optimizer", "adamw"], "unknown key 'microbatch'"),
        (["train", str(good), "--optimizer", "sgd"], "--optimizer must be one of"),
        (["train", str(tmp_path / "nope.toml"), "--optimizer", "adamw"], "recipe not found"),
        (["train", str(good), "--optimizer", "adamw", "--data", str(tmp_path)], "manifest.json"),
        (["train", str(bad_source), "--optimizer", "adamw"], "'poetry'"),
    ]
    for args, message in cases:
        code, out = cli(*args, "--out", str(tmp_path / "runs"), "--quiet")
        assert code == 2, (args, out)
        assert message in out and len(out.strip().splitlines()) == 1, (args, out)
