"""The records that travel between stages and live on disk, one TypedDict each, with its schema version.

Every stage reads and writes these files through the types below, so a reader sees their fields without running the
code. They stay plain JSON dicts (TypedDicts, not classes) because the files are the interface: a checkpoint's
nexus.json is read by other tools, an eval result by lm-eval users, a leaderboard JSON by anyone.

| record         | file                                             | written by            | read by                |
|----------------|--------------------------------------------------|-----------------------|------------------------|
| RunInfo        | runs/<run>/run.json                              | training              | comparison             |
| CheckpointMeta | runs/<run>/ckpt-NNNNNN/nexus.json                | training              | evaluation, comparison |
| GgufImport     | <imported checkpoint>/gguf_import.json           | checkpoints_gguf      | people (provenance)    |
| MetricsRow     | runs/<run>/metrics.jsonl (one per line)          | training              | comparison (curves)    |
| EvalResult     | results/eval/<hash>/<task>.<backend>.<key>.json  | evaluation (cache.py) | comparison             |
| ItemSample     | the same path, .samples.jsonl.gz (one per line)  | evaluation (cache.py) | samples, comparison    |
| MeasuredLoss   | results/loss/<hash16>.<key16>.json               | evaluation (loss.py)  | comparison (series)    |
| MinimalPair    | tasks/generated/pairs/<task>/test.jsonl          | tasks (pairs.py)      | lm-eval (task YAML)    |
| CompareResults | reports/<name>/results.json, leaderboards/*.json | comparison            | leaderboard, plots     |
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

# nexus.json, run.json and metrics.jsonl carry no version field yet: their format as of version 1 is what is below.
# A change that readers must notice adds a "schema" field with version 2.
CHECKPOINT_META_VERSION = 1
EVAL_RESULT_SCHEMA = 2  # 2: provenance, and per-item samples stored beside each result
MEASURED_LOSS_SCHEMA = 1
GGUF_IMPORT_SCHEMA = 1
# 2: run rows carry provenance. 3: series: rows name their series, the sides are "reference" and "candidate" (were
# "adamw" and "nexus"), a loss unit. Files of schema 1 and 2 still load (comparison.results_schema.upgraded).
COMPARE_RESULTS_SCHEMA = 3
COMPARE_RESULTS_READABLE = (1, 2, 3)
COMPARE_RESULTS_KIND = "nexus-eval-compare"


# ---- provenance: where a result came from (nexus_eval.provenance) ----------------------------------------------


class CodeVersion(TypedDict):
    version: str  # the package version
    git_sha: str | None  # None outside a git checkout
    dirty: bool | None  # uncommitted changes to the code (nexus_eval/, tasks/, pyproject.toml)


class DeviceInfo(TypedDict):
    type: str  # "cpu" | "cuda" | ...
    cpu: str  # CPU model name
    cpu_capability: str  # torch.backends.cpu.get_cpu_capability(): the instruction set of torch's CPU kernels
    threads: int  # torch.get_num_threads()
    gpu: str | None  # GPU name (CUDA)
    gpu_count: int


class Environment(TypedDict):
    """The process that produced a result: code, python, library versions, device, world size."""

    code: CodeVersion
    python: str
    libraries: dict[str, str | None]  # torch, transformers, lm_eval, vllm, datasets, numpy, tokenizers
    device: DeviceInfo
    world_size: int
    platform: str


# ---- training ----------------------------------------------------------------------------------------------------


class DataBuild(TypedDict):
    """How the data build a run trained on was made (from its manifest.json): enough to build it again."""

    hash: str
    params: dict[str, Any]  # `nexus-eval data build` parameters
    tokenizer_hash: str | None  # sha256 of the tokenizer files the manifest lists


class OptimizerSource(TypedDict):
    """Where the code of a run's optimizer came from (nexus_eval/optimizer_registry.py): the class that implements
    its update and the version of the package providing it."""

    module: str  # e.g. "nexus_eval.optim.nexus"
    name: str  # e.g. "Nexus"
    version: str | None  # the package's version (None: it has none)
    # A plug-in's (package.module:factory) module file and its sha256: its code can change under one version
    file: NotRequired[str | None]
    sha256: NotRequired[str | None]


class RunIdentity(TypedDict):
    """What every file of a run says about how it was trained (the common part of run.json and nexus.json)."""

    run_id: str  # <recipe>-<optimizer>-s<seed>
    optimizer: str  # a registered optimizer's name (nexus_eval/optimizer_registry.py): adamw, nexus, an ablation
    optimizer_hparams: dict[str, Any]
    # written since the optimizer registry; runs trained before lack it (their optimizer is one of the built-ins)
    optimizer_source: NotRequired[OptimizerSource]
    seed: int
    recipe: dict[str, Any]  # Recipe.to_dict()
    recipe_hash: str
    data_hash: str  # the data build's manifest hash
    code_version: str  # <version>+<git short sha>[.dirty]
    model_params: int
    data_build: NotRequired[DataBuild]
    # run.json: the process that last started or resumed the run; nexus.json: the one that trained up to it
    environment: NotRequired[Environment]
    # Written since the fairness guards (comparison/guards.py); runs trained before lack them, and the guards then
    # compare data_hash instead. sha256 of the data build's tokenizer files (manifest "files" entries) ...
    tokenizer_hash: NotRequired[str]
    # ... and of what the held-out loss is measured on: the val/OOD token files, context, eval_windows, mixture weights.
    heldout_hash: NotRequired[str]


class ExecutionRecord(TypedDict):
    """How the process that last started or resumed a run executed it (the recipe's [parallel] table as resolved):
    not part of what the run trains, so kept out of the recipe and its hash."""

    strategy: str  # "none" | "ddp" | "fsdp"
    device: str  # "cpu" | "cuda" | "mps"
    world_size: int
    compile: bool
    device_batch: int  # rows per forward/backward on one process
    activation_checkpointing: bool
    precision: str  # "fp32" | "bf16-autocast/fp32-master"


class RunInfo(RunIdentity):
    """run.json, written when a run starts (and again on each resume)."""

    total_steps: int
    data_dir: str
    execution: NotRequired[ExecutionRecord]  # written since distributed training; older runs lack it


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


class GgufImport(TypedDict):
    """gguf_import.json in a checkpoint made from a GGUF file (`nexus-eval checkpoints import-gguf`): where its weights
    came from. Not part of the checkpoint's content hash (it names a path and a time)."""

    schema: int
    source: str  # absolute path of the GGUF file
    source_sha256: str
    source_bytes: int
    architecture: str  # the transformers model class, e.g. LlamaForCausalLM
    dtype: str  # of the stored weights: "float32" (dequantized)
    tensors: int  # tensors in model.safetensors (a tied output embedding is stored once)
    tie_word_embeddings: bool
    libraries: dict[str, str | None]  # provenance's libraries plus gguf and safetensors
    code: CodeVersion
    created: str  # UTC, ISO 8601


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
    mfu: NotRequired[float]  # model FLOPs utilization over tokens_per_s, when the device's peak is known
    peak_memory_mib: NotRequired[float]  # CUDA max_memory_allocated, or the process' peak RSS on CPU
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
    engine: NotRequired[dict[str, Any]]  # batch_size, device, model_args where not the backend's defaults


class EvalProvenance(TypedDict):
    """How an eval result was computed, beyond its cache key: backend arguments and the evaluating process."""

    model_args: dict[str, Any]  # what lm-eval's model class got (pretrained path, dtype, device, batch size, ...)
    dtype: str
    batch_size: int | str  # "auto": the backend batches itself (vLLM's default)
    device: NotRequired[str]  # where the model ran (results before --device existed: cpu)
    environment: Environment


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
    samples: str  # name of the ItemSample file beside this result (gzip JSON lines, one per doc_id, in order)
    provenance: EvalProvenance


class ChoiceScore(TypedDict):
    """One continuation a loglikelihood or multiple-choice item scored."""

    text: str  # the continuation (lm-eval's second request argument)
    loglikelihood: float | None  # log P(text | prompt), nats; None if not finite
    is_greedy: bool | None  # whether greedy decoding from the prompt yields exactly this text


class ItemSample(TypedDict):
    """One evaluated item as lm-eval logged it (`--log_samples`), merged over the task's filters."""

    doc_id: int
    output_type: str  # "multiple_choice" | "loglikelihood" | "loglikelihood_rolling" | "generate_until"
    prompt: str  # context of the item's first request (rolling loglikelihood: the scored text itself)
    target: Any  # lm-eval's target: text, or for multiple choice the gold choice (index, indices or text)
    resps: list[Any]  # the model's raw responses, one list per request (generate_until: the generated texts)
    filtered_resps: dict[str, Any]  # filter name → what it kept of resps (generate_until: the extracted answer)
    choices: list[ChoiceScore]  # multiple_choice / loglikelihood: each continuation scored; else empty
    scores: dict[str, float | None]  # "metric,filter" → this item's score, as in EvalResult.item_scores


class MinimalPair(TypedDict):
    """One minimal-pair task item (BLiMP-style): the model should give `good` a higher total log-likelihood than
    `bad`, an exact reordering of the same characters (`tasks prepare --data DIR`, nexus_eval/tasks/pairs.py)."""

    good: str  # a sentence or code line of the build's held-out text, whitespace as written there (prose: collapsed)
    bad: str  # `good` with two adjacent words (prose) or tokens (code) swapped
    source: str  # the val source or OOD domain it comes from
    split: str  # "val" | "ood": never "train"
    source_doc: int  # index of its document in <split>/<source>.jsonl of the build
    corruption: str  # "word_swap" | "token_swap"
    position: int  # index of the first of the two swapped words / tokens in `good`


class LossKey(TypedDict):
    """What a measured loss depends on: the loss cache key (nexus_eval.evaluation.loss)."""

    checkpoint_hash: str  # sha256 of the files that define the model (checkpoints.content_hash)
    data_hash: str  # the data build's manifest hash
    windows: int  # held-out windows per source (nats/token)
    docs: int  # documents per source/domain (bits per byte)
    max_context: int  # windows and document chunks are min(model context, max_context) tokens
    mixture: dict[str, float] | None  # source weights of the nats/token loss (None: the recipe's, else uniform)
    loss_version: int  # loss.LOSS_VERSION: bumped when the measurement changes


class MeasuredLoss(LossKey):
    """Held-out and OOD loss of one checkpoint, measured by the harness on a data build (`nexus-eval loss`).

    Loss values are None where not finite (a diverged model)."""

    schema: int  # MEASURED_LOSS_SCHEMA
    checkpoint: str  # path at measurement time (informative; the hash is the identity)
    created: str  # ISO time
    context: int  # tokens per window / document chunk
    same_tokenizer: bool  # the checkpoint's tokenizer is the data build's: the nats/token fields are measured
    val_loss: float | None  # nats/token, mixture over the recipe's sources (None: another tokenizer)
    val_loss_per_source: dict[str, float | None]  # empty with another tokenizer
    ood_loss: dict[str, float | None]  # nats/token per OOD domain; empty with another tokenizer
    bits_per_byte: float | None  # Σ bits / Σ UTF-8 bytes over the val documents of every source (the same bytes
    # for every checkpoint of a data build, whatever its tokenizer)
    val_bits_per_byte: dict[str, float | None]  # per source
    ood_bits_per_byte: dict[str, float | None]  # per OOD domain


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
    reference: str  # the label every other series is matched against (schema 3)
    series: list[str]  # every series label, the reference first
    loss_unit: str  # "nats" (nats/token) | "bpb" (bits per byte), what every loss of the comparison is in
    # Written since the noise and curves sections; older files lack them.
    tolerance_auto: NotRequired[bool]  # `--tolerance auto`: `tolerance` was derived from the seed SD of the loss
    curve_points: NotRequired[int]  # points of the default loss grid of the curves
    curve_losses: NotRequired[list[float] | None]  # the grid as given (--curve-losses), else None


class ExternalChecks(TypedDict):
    """What the harness could check about a series it did not train, and what it could not."""

    origin: str  # "hf" (checkpoint directories), "gguf" or "file" (a series file)
    tokenizer: str  # "data build's" | "its own" (then the comparison is in bits per byte)
    parameters: int | None  # from the safetensors headers
    architecture: str | None  # model_type, layers, hidden size (config.json)
    context: int | None  # the model's longest context (config.json)
    not_checked: list[str]  # training data, decontamination, recipe and seed


class EvalSettingsProvenance(TypedDict):
    """The evaluation behind one run's results in a comparison (one entry per distinct setting found)."""

    backend: str
    dtype: str
    batch_size: int | str
    model_args: dict[str, Any]  # paths left out: they name where a checkpoint lay, not what it is
    task_yaml_hashes: dict[str, str]  # task → hash of its YAML, helpers and data
    environment: Environment


class RunProvenance(TypedDict):
    """Everything a reader needs to trace (and `leaderboard reproduce` to redo) one run of a comparison."""

    data_hash: str | None
    data_build: DataBuild | None
    recipe_hash: str | None
    recipe: dict[str, Any] | None
    tokenizer_hash: str | None  # sha256 of the checkpoints' tokenizer files
    code_version: str | None
    training: Environment | None  # of the process that wrote the run's newest checkpoint
    evaluation: list[EvalSettingsProvenance]


class RunRow(TypedDict):
    run_id: str
    series: str  # its series label (schema 3; older files: the optimizer)
    optimizer: str | None  # a harness run's; None for an external series
    seed: int | None
    checkpoints: int
    external: bool  # not trained by this harness: `checks` says what could be checked
    checks: NotRequired[ExternalChecks]
    provenance: NotRequired[RunProvenance]  # schema 2


class SideSummary(TypedDict):
    """One series' side of a pair: a checkpoint, or two bracketing ones when interpolating."""

    checkpoint: str  # run/ckpt-NNNNNN, or "a ↔ b"
    loss: float
    step: NotRequired[int]
    tokens: NotRequired[int]
    bracket_losses: NotRequired[list[float]]
    weights: NotRequired[list[float]]


class PairRow(TypedDict):
    target: float
    seed: str
    series: str  # the candidate side's series (matched against the reference)
    reference: SideSummary
    candidate: SideSummary
    delta_loss: float  # candidate − reference


class UnmatchedRow(TypedDict):
    target: float
    seed: str
    series: str
    reason: str


class EstimateFields(TypedDict):
    """A difference candidate − reference (e.g. Nexus − AdamW) with its 95% CI (stats.Estimate.to_dict)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int  # of the unit: items, seeds (also for "seeds×items") or 1 pair
    unit: str  # "items" | "seeds" | "seeds×items" (hierarchical bootstrap) | "pair"
    method: str
    excludes_zero: bool
    items: NotRequired[int]  # "seeds×items": paired items summed over the seeds


class TaskRow(EstimateFields):
    """Per seed: the paired item bootstrap, conditional on that training seed. seed "all" (several seeds): the
    across-seed estimate, a hierarchical bootstrap over seeds and items, with the Student-t interval over the per-seed
    differences beside it (t_*; results written before these fields existed hold only the t interval, in low/high);
    its excludes_zero is true only when both intervals exclude zero (stats.both_exclude_zero)."""

    target: float
    seed: str  # a seed label, or "all" for the mean over seeds
    series: str
    task: str
    metric: str
    higher_is_better: bool
    reference: float | None
    candidate: float | None
    t_low: NotRequired[float | None]
    t_high: NotRequired[float | None]
    t_n: NotRequired[int]  # seeds the t interval is over
    # Accuracy of multiple-choice items: mean over the row's items of 1/n_choices, and whether neither side's score is
    # distinguishable from it (comparison/chance.py); None where there is no chance level or it could not be judged.
    # Absent in results written before the chance check.
    chance: NotRequired[float | None]
    at_chance: NotRequired[bool | None]


class OodRow(EstimateFields):
    target: float
    seed: str
    series: str
    domain: str
    reference: float | None
    candidate: float | None


class OverlapRow(TypedDict):
    """Solved items: baseline = the reference series, candidate = the other."""

    target: float
    seed: str
    series: str
    task: str
    n: int
    baseline_solved: int
    candidate_solved: int
    kept: float | None
    only_baseline: int
    only_candidate: int


class MetricPoint(TypedDict):
    """A checkpoint's downstream metric at its held-out loss (the metric-vs-loss plot)."""

    series: str
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
    series: str
    seed: int | None
    points: list[CurvePoint]


class LossNoiseRow(TypedDict):
    """The seed-to-seed SD of one series' held-out loss at one eval step all its seeds logged (comparison.noise)."""

    series: str
    at: str  # "target": the first shared eval step whose mean over seeds reaches `target`; "final": the last one
    target: float | None  # None for "final"
    step: int | None  # None: the mean over seeds never reaches the target
    mean: float | None
    sd: float | None  # sample SD over seeds (n − 1 degrees of freedom); None with fewer than two seeds
    n: int  # seeds
    source: str  # "metrics.jsonl" (the trainer's val_loss, nats/token) | "checkpoints" (the comparison's loss)


class ScoreNoiseRow(TypedDict):
    """The seed-to-seed SD of one series' task score at one target loss (each seed's score read at that loss)."""

    series: str
    target: float
    task: str
    metric: str
    mean: float | None
    sd: float | None  # sample SD over seeds; None with fewer than two
    n: int  # seeds with a score at the target
    interpolated: int  # of them, read off the line between evaluated checkpoints around the target
    nearest: int  # of them, at their evaluated checkpoint nearest the target (none brackets it)


class ToleranceRecord(TypedDict):
    """The matching tolerance and where it came from."""

    value: float | None  # the largest |Δloss| of a pair (None: interpolated, both sides sit at the target)
    auto: bool  # `--tolerance auto`: half of smallest_sd
    smallest_sd: float | None  # the smallest positive seed SD of held-out loss in the noise rows
    series: str | None  # the row it came from
    at: str | None
    step: int | None
    derivation: str  # one line, as the report prints it


class NoiseRecord(TypedDict):
    """Seed-to-seed noise of a comparison: held-out loss at fixed steps, task scores at fixed losses."""

    loss: list[LossNoiseRow]
    scores: list[ScoreNoiseRow]
    score_method: str  # how a seed's score at a target loss is read
    tolerance: ToleranceRecord


class SeedBand(TypedDict):
    """A mean over seeds with its 95% Student-t interval (None with fewer than two seeds)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int  # seeds


class CurveBandPoint(SeedBand):
    loss: float  # the grid point: held-out loss, in the comparison's unit


class CurveBand(TypedDict):
    """One series' curve of a task score (or an OOD domain's loss) against held-out loss: at each grid point the mean
    over seeds of each seed's value, interpolated linearly in held-out loss between its checkpoints, with a t band."""

    kind: str  # "task" | "ood"
    name: str  # the task, or the OOD domain
    metric: str  # the task's primary metric, or "ood_loss"
    higher_is_better: bool
    series: str
    points: list[CurveBandPoint]


class CurveDelta(TypedDict):
    """One grid point of a curve, a series against the reference: both bands and their difference paired by seed."""

    kind: str
    name: str
    metric: str
    higher_is_better: bool
    series: str  # the candidate's
    loss: float
    reference: SeedBand
    candidate: SeedBand
    delta: SeedBand  # candidate − reference, per seed, then mean and t interval over the seeds both cover
    chance: NotRequired[float | None]  # task curves: the task's chance level (as TaskRow.chance), over all its items
    at_chance: NotRequired[bool | None]  # both sides' means within a guesser's 95% range (chance.curve_at_chance)


class OodPoint(TypedDict):
    """A checkpoint's loss on one OOD domain at its held-out loss (the OOD curves), in the comparison's unit."""

    series: str
    seed: int | None
    run_id: str
    checkpoint: str
    loss: float
    domain: str
    value: float


class LossCurves(TypedDict):
    """Score and OOD loss against held-out loss over every checkpoint of every seed (comparison.curves)."""

    method: str  # how the grid was chosen and the bands computed
    bands: list[CurveBand]
    deltas: list[CurveDelta]
    ood_points: list[OodPoint]  # the raw OOD points (task points are CompareResults.points)


class GeometrySeedRow(TypedDict):
    """One geometry measure at one target over the seeds of a series and the reference (t intervals over seeds)."""

    target: float
    series: str
    measure: str  # "grad_cos" (mean off-diagonal gradient cosine) | "minima_msd" (per-source minima MSD)
    reference: SeedBand
    candidate: SeedBand
    delta: SeedBand  # candidate − reference, per seed


class AllowedMismatch(TypedDict):
    """Two runs of a comparison that differ in a guarded field, paired anyway because of --allow-mismatch FIELD."""

    field: str  # "data_hash", "tokenizer", "heldout", "model" or a recipe key such as "optim.lr"
    runs: list[str]  # the two run_ids
    values: list[Any]  # their values of the field, in the order of `runs` (None: not recorded)


class LrSweep(TypedDict):
    """How each optimizer's lr was chosen (scripts/lr_sweep.py; compare --lr-sweep): the mean held-out loss of its
    sweep runs at every lr tried (None: they diverged), and the lr of the lowest."""

    optimizers: list[str]
    lrs: list[float]
    seeds: list[int]
    steps: int  # every sweep run's length
    metric: str
    mean: dict[str, dict[str, float | None]]  # optimizer → lr (as written) → mean loss over the seeds
    chosen: dict[str, float]


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
    lr_sweep: NotRequired[LrSweep]  # compare --lr-sweep: how each optimizer's lr was chosen
    # Written since the noise, curves and geometry-over-seeds sections; absent in older files (then not shown).
    noise: NotRequired[NoiseRecord]
    loss_curves: NotRequired[LossCurves]
    geometry_seeds: NotRequired[list[GeometrySeedRow]]
