"""A recipe's token budget against the data it trains on: how many epochs of each source's built training tokens
the run will read. A budget far beyond the data (train/130m.toml once asked ~1B tokens of a ~9M-token build: ~100
epochs) trains on repeats, not on the scale it claims, so `nexus-eval train` refuses it unless --allow-repeat.

The schedule (schedule.py) draws each micro-batch's source by mixture weight, then random windows of that source:
source s is expected to supply total_tokens · w_s / Σw of the run's tokens; over its built tokens that is its epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus_eval.errors import RecipeError
from nexus_eval.training.recipe import Recipe

MAX_EPOCHS = 1.0  # more passes than this over any source's built tokens needs --allow-repeat


@dataclass(frozen=True)
class SourceEpochs:
    source: str
    tokens_read: int  # expected tokens the run reads from this source
    tokens_built: int  # the source's training tokens in the data build (manifest.json)

    @property
    def epochs(self) -> float:
        return self.tokens_read / max(1, self.tokens_built)


def total_tokens(recipe: Recipe) -> int:
    return recipe.tokens_per_step() * recipe.train.steps


def source_epochs(recipe: Recipe, manifest: dict[str, Any]) -> list[SourceEpochs]:
    """Epochs over each mixture source of the data build of `manifest` (sources it lacks are left out: set-up
    names them)."""
    weights = {s: w for s, w in recipe.data.mixture.items() if w > 0}
    total_weight = sum(weights.values())
    budget = total_tokens(recipe)
    return [
        SourceEpochs(source, round(budget * w / total_weight), int(manifest["sources"][source]["tokens"]["train"]))
        for source, w in sorted(weights.items())
        if source in manifest["sources"]
    ]


def check_epochs(recipe: Recipe, manifest: dict[str, Any], data_dir: Path, allow_repeat: bool = False) -> None:
    """RecipeError naming the recipe, the data build and the epochs when the run would read some source more than
    MAX_EPOCHS times, unless `allow_repeat`."""
    if allow_repeat:
        return
    over = [e for e in source_epochs(recipe, manifest) if e.epochs > MAX_EPOCHS]
    if not over:
        return
    worst = max(over, key=lambda e: e.epochs)
    raise RecipeError(
        f"{recipe.path}: {total_tokens(recipe):,} training tokens read {worst.epochs:.1f} epochs of source "
        f"{worst.source!r} ({worst.tokens_built:,} tokens in {data_dir / 'manifest.json'}; more than "
        f"{MAX_EPOCHS:g} epoch is training on repeats); build more data, lower train.steps, or pass --allow-repeat"
    )
