"""Training memory, estimated before anything is allocated (nexus_eval.training.memory): a recipe that cannot fit is
refused with the estimate and the available figure, and the estimate is close to a real run's peak RSS."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from nexus_eval.errors import RecipeError
from nexus_eval.training.memory import GIB, available_memory, check_fits, estimate
from nexus_eval.training.metrics_log import MIB
from nexus_eval.training.recipe import Recipe, load_recipe
from tests.conftest import REPO_ROOT, write_recipe
from tests.processes import cli_process


def with_shape(recipe: Recipe, context: int, micro_batch: int) -> Recipe:
    return dataclasses.replace(
        recipe,
        model=dataclasses.replace(recipe.model, context=context),
        optim=dataclasses.replace(recipe.optim, micro_batch=micro_batch),
    )


def test_the_reported_context_is_refused_naming_estimate_and_available() -> None:
    """train/tiny.toml with context = 100000 on the default data build (vocab 4096) ran 10 minutes at 15.5 GB RSS
    before it was killed: now it is refused up front."""
    tiny = load_recipe(REPO_ROOT / "train" / "tiny.toml")
    need = estimate(with_shape(tiny, 100_000, tiny.optim.micro_batch), "nexus", vocab=4096)
    assert need.total > 15.5e9  # it was still growing when killed
    with pytest.raises(RecipeError) as refused:
        check_fits(tiny, need, (16 * GIB, "MemAvailable in /proc/meminfo"))
    message = str(refused.value)
    assert "tiny.toml" in message and "16.0 GiB is available (MemAvailable" in message
    assert re.search(r"needs about \d+\.\d GiB", message) and "model.context" in message
    check_fits(tiny, estimate(tiny, "nexus", vocab=4096), (16 * GIB, "test"))  # the recipe as shipped fits


def test_the_estimate_grows_with_what_training_holds() -> None:
    tiny = load_recipe(REPO_ROOT / "train" / "tiny.toml")
    base = estimate(tiny, "adamw", vocab=4096)
    assert estimate(tiny, "nexus", vocab=4096).state_bytes > base.state_bytes  # θ0
    assert estimate(with_shape(tiny, 512, 4), "adamw", 4096).activation_bytes == 2 * base.activation_bytes
    assert estimate(tiny, "adamw", vocab=32000).activation_bytes > 4 * base.activation_bytes  # logits dominate
    assert available_memory() is None or available_memory()[0] > 0


@pytest.mark.slow
def test_the_estimate_is_near_the_peak_rss_of_a_real_run(tiny_data_dir: Path, tmp_path: Path) -> None:
    """Two steps whose activations (32 × 256 tokens per micro-batch) weigh about as much as the runtime: an estimate
    without them would miss by more than the factor allowed."""
    recipe_path = write_recipe(tmp_path, tiny_data_dir)
    text = (
        recipe_path.read_text().replace("context = 32", "context = 256").replace("micro_batch = 4", "micro_batch = 32")
    )
    recipe_path.write_text(text.replace("steps = 6", "steps = 2"))
    need = estimate(load_recipe(recipe_path), "nexus", vocab=512).total
    proc = cli_process("train", str(recipe_path), "--optimizer", "nexus", "--out", str(tmp_path / "runs"), "--quiet",
                       cwd=tmp_path)  # fmt: skip
    _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    # The run's own VmHWM as metrics.jsonl logs it: the child's ru_maxrss would also count this pytest process' RSS
    # at the fork (2.7 GiB late in the full suite).
    rows = [json.loads(line) for path in (tmp_path / "runs").glob("*/metrics.jsonl") for line in path.open()]
    peak = max(row["peak_memory_mib"] for row in rows if "peak_memory_mib" in row) * MIB
    assert need / 2 < peak < need * 2, f"estimate {need / GIB:.2f} GiB, peak RSS {peak / GIB:.2f} GiB"
