"""The records that travel between stages and live on disk, one TypedDict each, with its schema version.

Every stage reads and writes these files through the types below, so a reader sees their fields without running the
code. They stay plain JSON dicts (TypedDicts, not classes) because the files are the interface: a checkpoint's
nexus.json is read by other tools, an eval result by lm-eval users, a leaderboard JSON by anyone.

| record         | file                                             | written by            | read by                |
|----------------|--------------------------------------------------|-----------------------|------------------------|
| RunInfo        | runs/<run>/run.json                              | training              | comparison             |
| CheckpointMeta | runs/<run>/ckpt-NNNNNN/nexus.json                | training              | evaluation, comparison |
| MetricsRow     | runs/<run>/metrics.jsonl (one per line)          | training              | comparison (curves)    |
| EvalResult     | results/eval/<hash>/<task>.<backend>.<key>.json  | evaluation (cache.py) | comparison             |
| CompareResults | reports/<name>/results.json, leaderboards/*.json | comparison            | leaderboard, plots     |
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

# nexus.json, run.json and metrics.jsonl carry no version field yet: their format as of version 1 is what is below.
# A change that readers must notice adds a "schema" field with version 2.
CHECKPOINT_META_VERSION = 1
EVAL_RESULT_SCHEMA = 1
COMPARE_RESULTS_SCHEMA = 1
COMPARE_RESULTS_KIND = "nexus-eval-compare"


# ---- training ----------------------------------------------------------------------------------------------------


class RunIdentity(TypedDict):
    """What every file of a run says about how it was trained (the common part of run.json and nexus.json)."""

    run_id: str  # <recipe>-<optimizer>-s<seed>
    optimizer: str  # "adamw" | "nexus"
    optimizer_hparams: dict[str, Any]
    seed: int
    recipe: dict[str, Any]  # Recipe.to_dict()
    recipe_hash: str
    data_hash: str  # the data build's manifest hash
    code_version: str  # <version>+<git sha>
    model_params: int
    # Written since the fairness guards (comparison/guards.py); runs trained before lack them, and the guards then
    # compare data_hash instead. sha256 of the data build's tokenizer files (manifest "files" entries) ...
    tokenizer_hash: NotRequired[str]
    # ... and of what the held-out loss is measured on: the val/OOD token files, context, eval_windows, mixture weights.
    heldout_hash: NotRequired[str]


class RunInfo(RunIdentity):
    """run.json, written when a run starts."""

    total_steps: int
    data_dir: str


class HeldOutLoss(TypedDict):
    """Held-out losses measured by the harness (nats/token) on the data build's val and OOD splits."""

    val_loss: float  # mixture loss: sources weighted by the recipe's mixture
    val_loss_per_source: dict[str, float]
    ood_loss: dict[str, float]  # per OOD domain


class CheckpointMeta(RunIdentity):
    """nexus.json in each checkpoint directory."""

    step: int
    tokens_seen: int
    heldout_loss: float
    heldout_loss_per_source: dict[str, float]
    ood_loss: dict[str, float]
    target_loss: float | None  # the recipe target whose crossing wrote this checkpoint, else None


class GradCosine(TypedDict):
    sources: list[str]
    matrix: list[list[float]]
    mean_offdiag: float


class MetricsRow(HeldOutLoss):
    """One line of metrics.jsonl, written every eval_interval steps."""

    step: int
    tokens: int
    lr: float
    train_loss: float
    tokens_per_s: float
    grad_cosine: NotRequired[GradCosine]


# ---- evaluation --------------------------------------------------------------------------------------------------


class EvalKey(TypedDict):
    """What an eval result depends on: the cache key (nexus_eval.evaluation.cache)."""

    checkpoint_hash: str  # sha256 of the files that define the model (checkpoints.content_hash)
    task: str
    task_version: Any
    yaml_hash: str  # hash of the task YAML, its helpers and data
    backend: str  # "hf" | "vllm"
    num_fewshot: int | None
    limit: int | None
    seed: int


class EvalResult(EvalKey):
    """One checkpoint × task × backend × settings, with per-item scores for paired statistics."""

    schema: int  # EVAL_RESULT_SCHEMA
    checkpoint: str  # path at evaluation time (informative; the hash is the identity)
    metrics: dict[str, float | None]  # "metric,filter" → lm-eval's aggregate
    stderr: dict[str, float | None]
    higher_is_better: dict[str, bool]
    doc_ids: list[int]
    item_scores: dict[str, list[float | None]]  # "metric,filter" → per-item score aligned with doc_ids
    item_weights: NotRequired[dict[str, list[float | None]]]  # ratio metrics (bits per byte): bytes per item
    n: int
    lm_eval_version: str
    created: str  # ISO time


# ---- comparison --------------------------------------------------------------------------------------------------


class CompareSettingsRecord(TypedDict):
    """CompareSettings as stored in results JSON (nexus_eval.comparison.settings.CompareSettings.to_record)."""

    mode: str  # "match-loss" | "interpolate"
    tolerance: float | None
    targets: list[float]
    suite: str | None
    tasks: list[str]
    backend: str
    limit: int | None
    num_fewshot: int | None
    bootstrap_resamples: int
    bootstrap_seed: int
    level: float


class RunRow(TypedDict):
    run_id: str
    optimizer: str
    seed: int | None
    checkpoints: int


class SideSummary(TypedDict):
    """One optimizer's side of a pair: a checkpoint, or two bracketing ones when interpolating."""

    checkpoint: str  # run/ckpt-NNNNNN, or "a ↔ b"
    loss: float
    step: NotRequired[int]
    tokens: NotRequired[int]
    bracket_losses: NotRequired[list[float]]
    weights: NotRequired[list[float]]


class PairRow(TypedDict):
    target: float
    seed: str
    adamw: SideSummary
    nexus: SideSummary
    delta_loss: float


class UnmatchedRow(TypedDict):
    target: float
    seed: str
    reason: str


class EstimateFields(TypedDict):
    """A difference Nexus − AdamW with its 95% CI (stats.Estimate.to_dict)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int
    unit: str  # "items" | "seeds" | "pair"
    method: str
    excludes_zero: bool


class TaskRow(EstimateFields):
    target: float
    seed: str  # a seed label, or "all" for the mean over seeds
    task: str
    metric: str
    higher_is_better: bool
    adamw: float | None
    nexus: float | None


class OodRow(EstimateFields):
    target: float
    seed: str
    domain: str
    adamw: float | None
    nexus: float | None


class OverlapRow(TypedDict):
    target: float
    seed: str
    task: str
    n: int
    baseline_solved: int
    candidate_solved: int
    kept: float | None
    only_baseline: int
    only_candidate: int


class MetricPoint(TypedDict):
    """A checkpoint's downstream metric at its held-out loss (the metric-vs-loss plot)."""

    optimizer: str
    seed: int | None
    run_id: str
    checkpoint: str
    loss: float
    task: str
    metric: str
    value: float


class CurvePoint(TypedDict):
    tokens: int | None
    val_loss: float | None
    grad_cos: float | None


class RunCurve(TypedDict):
    run_id: str
    optimizer: str
    seed: int | None
    points: list[CurvePoint]


class AllowedMismatch(TypedDict):
    """Two runs of a comparison that differ in a guarded field, paired anyway because of --allow-mismatch FIELD."""

    field: str  # "data_hash", "tokenizer", "heldout", "model" or a recipe key such as "optim.lr"
    runs: list[str]  # the two run_ids
    values: list[Any]  # their values of the field, in the order of `runs` (None: not recorded)


class CompareResults(TypedDict):
    """results.json of `nexus-eval compare` and leaderboards/<name>.json: all that tables and plots are drawn from."""

    schema: int  # COMPARE_RESULTS_SCHEMA
    kind: str  # COMPARE_RESULTS_KIND
    settings: CompareSettingsRecord
    runs: list[RunRow]
    pairs: list[PairRow]
    unmatched: list[UnmatchedRow]
    tasks: list[TaskRow]
    overlap: list[OverlapRow]
    ood: list[OodRow]
    geometry: list[dict[str, Any]]
    points: list[MetricPoint]
    curves: list[RunCurve]
    allowed_mismatches: NotRequired[list[AllowedMismatch]]  # empty: every guarded field agreed; absent in old files
