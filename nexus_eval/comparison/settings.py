"""What a comparison compares (CompareSettings, stored as the results JSON's "settings") and how it is run
(CompareOptions: batch size, cache, output paths, display; not part of the result)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from nexus_eval.comparison.series import LOSS_UNITS
from nexus_eval.comparison.stats import LEVEL, RESAMPLES
from nexus_eval.errors import ComparisonError
from nexus_eval.schema import CompareSettingsRecord

MATCH_LOSS, INTERPOLATE = "match-loss", "interpolate"
MIN_RESAMPLES = 100
CURVE_POINTS = 8  # points of the default held-out loss grid of the curves (comparison.curves)


@dataclass(frozen=True)
class CompareSettings:
    """How checkpoints are paired and what they are evaluated and compared on.

    targets: target losses (None: the recipes', else a grid); tasks: task names or YAML paths (None: the suite's).
    allow_mismatch: fields in which the runs may differ (guards.py); the differences it lets through are recorded in
    results["allowed_mismatches"], one by one, rather than in the settings record.
    After a comparison, `resolved(...)` holds what it actually used, and `to_record()` of that is results["settings"].
    """

    mode: str = MATCH_LOSS  # "match-loss" | "interpolate"
    tolerance: float = 0.01  # largest |Δloss| of a pair (match-loss), nats/token
    targets: tuple[float, ...] | None = None
    suite: str | None = "reasoning"
    tasks: tuple[str, ...] | None = None
    backend: str = "hf"
    limit: int | None = None
    num_fewshot: int | None = None
    bootstrap_resamples: int = RESAMPLES
    bootstrap_seed: int = 0
    level: float = LEVEL
    allow_mismatch: tuple[str, ...] = ()
    reference: str | None = None  # the series every other is matched against (None: adamw, else the first)
    loss_unit: str = "auto"  # "auto" (nats/token when every series shares the data's tokenizer) | "nats" | "bpb"
    series: tuple[str, ...] = ()  # every series label, the reference first: set by `resolved`
    # `--tolerance auto`: the comparison replaces `tolerance` with half the smallest seed SD of held-out loss
    # (comparison.noise) before matching; the resolved settings keep the flag and the derived number.
    tolerance_auto: bool = False
    curve_points: int = CURVE_POINTS  # the default grid: this many losses over the range every seed covers
    curve_losses: tuple[float, ...] | None = None  # the grid as given (--curve-losses)

    def __post_init__(self) -> None:
        # Sequences given as lists are stored as tuples: the settings stay hashable and immutable.
        for name in ("targets", "tasks", "allow_mismatch", "series", "curve_losses"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """ComparisonError naming the flag at fault."""
        if self.limit is not None and self.limit <= 0:
            raise ComparisonError(f"--limit must be positive (got {self.limit})")
        if self.bootstrap_resamples < MIN_RESAMPLES:
            raise ComparisonError(
                f"--resamples: bootstrap resamples must be ≥ {MIN_RESAMPLES} (got {self.bootstrap_resamples})"
            )
        if self.mode not in (MATCH_LOSS, INTERPOLATE):
            raise ComparisonError(f"compare: mode must be {MATCH_LOSS!r} or {INTERPOLATE!r} (got {self.mode!r})")
        if self.tolerance < 0:
            raise ComparisonError(f"--tolerance must be ≥ 0 (got {self.tolerance})")
        if self.loss_unit not in LOSS_UNITS:
            raise ComparisonError(f"--loss-unit {self.loss_unit}: expected one of {', '.join(LOSS_UNITS)}")
        if self.tolerance_auto and self.interpolate:
            raise ComparisonError("--tolerance auto: only with --match-loss (--interpolate pairs at the target itself)")
        if self.curve_points < 2:
            raise ComparisonError(f"--curve-points must be ≥ 2 (got {self.curve_points})")
        if self.curve_losses is not None and not all(0 < x < float("inf") for x in self.curve_losses):
            raise ComparisonError(f"--curve-losses: expected positive finite losses (got {list(self.curve_losses)})")
        if self.level != LEVEL:  # the t quantiles over seeds and the report's "95% CI" headers are for this level
            raise ComparisonError(f"confidence level must be {LEVEL} (got {self.level})")

    @property
    def interpolate(self) -> bool:
        return self.mode == INTERPOLATE

    def resolved(
        self, targets: Iterable[float], tasks: Iterable[str], series: Iterable[str], loss_unit: str
    ) -> CompareSettings:
        """These settings as a comparison used them: the targets of its pairs and unmatched targets (descending),
        the task names, no suite when the tasks were given, the series labels (reference first) and the unit."""
        labels = tuple(series)
        return replace(
            self,
            targets=tuple(sorted(set(targets), reverse=True)),
            suite=None if self.tasks else self.suite,
            tasks=tuple(tasks),
            reference=labels[0],
            series=labels,
            loss_unit=loss_unit,
        )

    def to_record(self) -> CompareSettingsRecord:
        """The settings object of the results JSON (call it on `resolved(...)` settings)."""
        record = {
            **asdict(self),
            "targets": list(self.targets or ()),
            "tasks": list(self.tasks or ()),
            "series": list(self.series),
            "curve_losses": None if self.curve_losses is None else list(self.curve_losses),
        }
        record.pop("allow_mismatch")  # what it let through is results["allowed_mismatches"]
        return CompareSettingsRecord(**{**record, "tolerance": None if self.interpolate else self.tolerance})


@dataclass(frozen=True)
class CompareOptions:
    """How a comparison runs and where it writes. batch_size, device and model_args set how the backend runs (keyed
    in the eval cache where not the defaults; `eval --check-batch-invariance` says whether they move the numbers).

    geometry_data_dir: None, no geometry columns; a data dir, gradient cosine and minima MSD per pair measured on it.
    disagreements: list the items each pair scores differently (out/disagreements.md, and beside the leaderboard);
    disagreement_task: only for this task (a name or YAML path among the compared tasks), else for every task.
    """

    batch_size: int | str | None = None  # None: the backend's default
    device: str | None = None
    devices: str | None = None  # --devices: the missing checkpoints spread over one worker per device
    model_args: tuple[tuple[str, Any], ...] = ()
    cache_dir: Path = Path("results/eval")
    out: Path = Path("reports/compare")
    leaderboard: str | None = None
    leaderboard_dir: Path = Path("leaderboards")
    geometry_data_dir: Path | None = None
    disagreements: bool = False
    disagreement_task: str | None = None
    lr_sweep: Path | None = None  # --lr-sweep: the sweep that chose each optimizer's lr, kept in the results
    progress: bool = True
    show: bool = True
    data_dir: Path = Path("data")  # held-out data for the losses the runs do not record (external series, bpb)
    loss_cache_dir: Path = Path("results/loss")
    # Evaluate every checkpoint of the runs, not only the paired ones: the curves (comparison.curves) then have every
    # checkpoint of every seed. Without it they have the paired checkpoints and whatever the cache already holds.
    evaluate_all: bool = False

    def check(self) -> None:
        """ComparisonError naming the flag whose directory is a file: found before the evaluations, not after."""
        dirs = {"--out": self.out, "--cache": self.cache_dir, "--data": self.geometry_data_dir}
        for flag, path in dirs.items():
            if path is not None and path.exists() and not path.is_dir():
                raise ComparisonError(f"{flag} {path}: is a file, not a directory")
