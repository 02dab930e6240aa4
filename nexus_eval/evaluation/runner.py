"""Evaluation: checkpoints × lm-eval tasks × backend → one cached result JSON per combination, with per-item scores.

Everything goes through lm-eval's `simple_evaluate` with the tasks in tasks/ (TaskManager(include_path=...)) and
`log_samples=True`: the per-item scores are what the paired statistics downstream resample, and the logged samples
are stored beside each result (samples.py, `nexus-eval samples`). A model is loaded once per checkpoint and only when
at least one of its results is missing from the cache.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus_eval.checkpoints import content_hash, non_finite_weights, resolve_checkpoints
from nexus_eval.display import ProgressBar, checkpoint_label, progress_bar
from nexus_eval.errors import EvalError
from nexus_eval.evaluation import backends
from nexus_eval.evaluation import cache as evalcache
from nexus_eval.evaluation.backends import DEFAULT_SEED, BackendSpec
from nexus_eval.evaluation.engine import Engine
from nexus_eval.evaluation.samples import item_samples
from nexus_eval.io import SAFE_NAME_RULE, file_lock, is_safe_name
from nexus_eval.provenance import environment
from nexus_eval.schema import EvalKey, EvalProvenance, EvalResult, ItemSample
from nexus_eval.tasks import registry

BOOTSTRAP_ITERS = 1000  # stderr of non-mean aggregations (e.g. corpus bits per byte); lm-eval's 100k is minutes
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's hf and vllm classes
# Per-item values that lm-eval aggregates as corpus ratios: (log-likelihood, units) → a per-document score, and the
# units kept as weights. For bits per byte the weighted mean of the item scores is the corpus figure; a perplexity is
# exp of the corpus ratio, so its figure is exp of the weighted mean of the items' log scores (comparison.stats), not
# the weighted mean of the item perplexities.
PERPLEXITY_METRICS = ("byte_perplexity", "word_perplexity")
RATIO_METRICS = ("bits_per_byte", *PERPLEXITY_METRICS)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    version: Any
    yaml_hash: str
    include_dir: Path
    max_gen_toks: int | None = None  # generate_until tasks: tokens generated at most (lm-eval's default 256)


def _max_gen_toks(config: dict[str, Any]) -> int | None:
    if config.get("output_type") != "generate_until":
        return None
    return int((config.get("generation_kwargs") or {}).get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))


def _yaml_task(path: Path) -> TaskSpec:
    """A task given as a YAML file outside tasks/ (its directory becomes an extra include path)."""
    if not path.is_file():
        raise EvalError(f"{path}: no such task YAML")
    config = registry.read_task_yaml(path)
    if not is_safe_name(config["task"]):  # it names the result file in the cache
        raise EvalError(f"{path}: task name {config['task']!r}: {SAFE_NAME_RULE}")
    digest = hashlib.sha256(path.read_bytes())
    for helper in sorted(path.parent.glob("*.py")):  # `!function` helpers beside it
        digest.update(helper.read_bytes())
    version = (config.get("metadata") or {}).get("version")
    return TaskSpec(config["task"], version, digest.hexdigest(), path.parent, _max_gen_toks(config))


def _is_yaml(task: str) -> bool:
    return task.endswith((".yaml", ".yml"))


def resolve_task_specs(tasks: list[str] | None, suite: str | None) -> list[TaskSpec]:
    """Task names (tasks/ registry) or YAML paths, else a suite's tasks; their data materialized."""
    if tasks and suite:
        raise EvalError("give --tasks or --suite, not both")
    names = [t for t in tasks or [] if not _is_yaml(t)]
    named = registry.resolve_tasks(names or None, suite) if names or not tasks else []  # validates the names
    registry.ensure_prepared(named)
    specs = []
    for name in tasks or named:  # in the order given
        if _is_yaml(name):
            specs.append(_yaml_task(Path(name)))
        else:
            info = registry.task_info(name)
            limit = _max_gen_toks(registry.read_task_yaml(info["path"]))
            specs.append(TaskSpec(name, info["version"], info["yaml_hash"], registry.include_path(), limit))
    return list({spec.name: spec for spec in specs}.values())


def check_context(ckpt: Path, specs: list[TaskSpec]) -> None:
    """lm-eval keeps max_gen_toks of the model's context free for the answer: the prompt needs some room too."""
    context = backends.context_length(ckpt)
    for spec in specs:
        if context is not None and spec.max_gen_toks is not None and spec.max_gen_toks >= context:
            raise EvalError(
                f"{ckpt}: context of {context} tokens leaves no room for a prompt in task {spec.name}, which "
                f"generates up to {spec.max_gen_toks} tokens; evaluate it on a model with a longer context"
            )


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate and how: the flags of `nexus-eval eval`. Every field but cache_dir and timeout is part of
    each result's cache key (with the checkpoint's content hash and the task's version and definition); batch_size,
    device and model_args only where they differ from the backend's defaults (BackendSpec.key)."""

    tasks: tuple[str, ...] | None = None  # task names from tasks/ or task YAML paths; None: the suite's tasks
    suite: str | None = None  # None: tasks.DEFAULT_SUITE (when no tasks are given)
    backend: str = "hf"
    limit: int | None = None
    num_fewshot: int | None = None
    batch_size: int | str | None = None  # None: the backend's default (hf 8, vllm "auto"); "auto": lm-eval picks
    cache_dir: Path = Path("results/eval")
    seed: int = DEFAULT_SEED
    timeout: float | None = None  # seconds one task may run before the engine counts as hung (not in the cache key)
    device: str | None = None  # None: the first GPU when there is one, else the CPU
    model_args: tuple[tuple[str, Any], ...] = ()  # --model-args: more arguments of lm-eval's model class

    def backend_spec(self) -> BackendSpec:
        return BackendSpec(self.backend, self.batch_size, self.device, self.model_args, self.seed)

    def check(self) -> None:
        """EvalError naming the flag at fault; the backend's engine must import here."""
        if self.limit is not None and self.limit <= 0:
            raise EvalError(f"--limit must be a positive number of items per task (got {self.limit})")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise EvalError(f"--num-fewshot must be ≥ 0 (got {self.num_fewshot})")
        if self.timeout is not None and not self.timeout > 0:
            raise EvalError(f"--timeout must be a positive number of seconds per task (got {self.timeout:g})")
        if self.cache_dir.exists() and not self.cache_dir.is_dir():  # found before the work whose result it would keep
            raise EvalError(f"--cache {self.cache_dir}: is a file, not a directory")
        self.backend_spec().check()

    def task_specs(self) -> list[TaskSpec]:
        return resolve_task_specs(list(self.tasks) if self.tasks else None, self.suite)


def _item_value(metric: str, value: Any) -> tuple[float | None, float | None] | None:
    """(per-item score, weight or None) of one logged sample's metric; None when it has no per-item meaning."""
    if isinstance(value, bool | int | float):
        return float(value), None
    if metric in RATIO_METRICS and isinstance(value, list | tuple) and len(value) == 2:
        loglik, units = float(value[0]), float(value[1])
        if units <= 0:
            return None, units
        if metric == "bits_per_byte":
            return -loglik / (units * 0.6931471805599453), units
        import math

        return math.exp(-loglik / units), units
    return None


def per_item_scores(samples: list[dict[str, Any]]) -> tuple[list[int], dict[str, list], dict[str, list]]:
    """doc_ids (sorted) and, per "metric,filter" key, the per-item scores and ratio weights aligned with them."""
    by_key: dict[str, dict[int, float | None]] = {}
    weights: dict[str, dict[int, float | None]] = {}
    for sample in samples:
        for metric in sample["metrics"]:
            item = _item_value(metric, sample.get(metric))
            if item is None:
                continue
            key = f"{metric},{sample['filter']}"
            by_key.setdefault(key, {})[sample["doc_id"]] = item[0]
            if item[1] is not None:
                weights.setdefault(key, {})[sample["doc_id"]] = item[1]
    doc_ids = sorted({sample["doc_id"] for sample in samples})
    scores = {key: [values.get(i) for i in doc_ids] for key, values in by_key.items()}
    return doc_ids, scores, {key: [values.get(i) for i in doc_ids] for key, values in weights.items()}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def eval_provenance(ckpt: Path, settings: EvalSettings) -> EvalProvenance:
    """How this process evaluates `ckpt`: the backend's arguments (its path left out: the content hash is the
    identity) and the environment."""
    spec = settings.backend_spec()
    args = spec.lm_args(ckpt)
    recorded = {k: v for k, v in args.items() if k not in ("pretrained", "gguf_file")}
    return {
        "model_args": recorded,
        "dtype": str(args.get("dtype", "")),
        "batch_size": spec.resolved_batch_size,
        "device": spec.resolved_device,
        "environment": environment(spec.resolved_device),
    }


def to_result(
    output: dict[str, Any], spec: TaskSpec, key: EvalKey, ckpt: Path, provenance: EvalProvenance
) -> EvalResult:
    """Our result JSON from simple_evaluate's output for one task."""
    import lm_eval

    task_metrics = output["results"][spec.name]
    metrics: dict[str, float | None] = {}
    stderr: dict[str, float | None] = {}
    for name, value in task_metrics.items():
        metric, sep, filter_name = name.partition(",")
        if not sep:  # "alias" and other non-metric fields
            continue
        if metric.endswith("_stderr"):
            stderr[f"{metric.removesuffix('_stderr')},{filter_name}"] = _number(value)
        else:
            metrics[name] = _number(value)
    better = output.get("higher_is_better", {}).get(spec.name, {})
    doc_ids, item_scores, item_weights = per_item_scores(output["samples"][spec.name])
    return {
        "schema": evalcache.SCHEMA,
        "checkpoint": str(ckpt),
        **key,
        "metrics": metrics,
        "stderr": {name: stderr.get(name) for name in metrics},
        "higher_is_better": {name: bool(better.get(name.partition(",")[0], True)) for name in metrics},
        "doc_ids": doc_ids,
        "item_scores": item_scores,
        **({"item_weights": item_weights} if item_weights else {}),
        "n": len(doc_ids),
        "lm_eval_version": lm_eval.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "provenance": provenance,
        "samples": evalcache.samples_name(key),
    }


def run_tasks(
    lm: Any,
    specs: list[TaskSpec],
    task_manager: Any,
    num_fewshot: int | None,
    limit: int | None,
    seed: int,
    gen_kwargs: dict[str, Any] | None = None,
) -> Any:
    from lm_eval import simple_evaluate

    return simple_evaluate(
        model=lm,
        tasks=[spec.name for spec in specs],
        task_manager=task_manager,
        num_fewshot=num_fewshot,
        limit=limit,
        log_samples=True,
        bootstrap_iters=BOOTSTRAP_ITERS,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        gen_kwargs=gen_kwargs,
    )


def _not_custom_kwargs_note(record: logging.LogRecord) -> bool:
    """lm-eval warns, once per task with a custom dataset function (all of ours), that "Custom kwargs can be passed
    to `--metadata`": advice for its own CLI, noise in ours."""
    return "Custom kwargs can be passed" not in record.getMessage()


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """lm-eval, datasets and transformers log every step at INFO; our progress display says what runs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    names = ("lm_eval", "lm-eval", "datasets", "transformers", "vllm")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    task_logger = logging.getLogger("lm_eval.api.task")  # a logger's filters see only the records logged on it
    task_logger.addFilter(_not_custom_kwargs_note)
    try:
        yield
    finally:
        task_logger.removeFilter(_not_custom_kwargs_note)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@dataclass(frozen=True)
class CacheSlot:
    """Where one checkpoint × task result lives in the cache, and what is there (None: missing or unusable)."""

    spec: TaskSpec
    key: EvalKey
    path: Path
    result: EvalResult | None

    def cached_for(self, ckpt: Path) -> EvalResult:
        """The cached result, labelled with the path it was asked for (the cache is keyed by content, not path)."""
        assert self.result is not None
        return EvalResult(**{**self.result, "checkpoint": str(ckpt)})


def checkpoint_hash(ckpt: Path, hashes: dict[Path, str] | None) -> str:
    """The content hash the caller already computed for `ckpt`, else computed now."""
    return (hashes or {}).get(ckpt) or content_hash(ckpt)


def cache_slots(ckpt_hash: str, specs: list[TaskSpec], settings: EvalSettings) -> list[CacheSlot]:
    """The cache entries of one checkpoint for these tasks and settings: the one place a result is looked up."""
    s = settings
    engine = s.backend_spec().key()
    slots = []
    for spec in specs:
        key = evalcache.cache_key(
            ckpt_hash, spec.name, spec.version, spec.yaml_hash, s.backend, s.num_fewshot, s.limit, s.seed, engine
        )
        path = evalcache.cache_path(s.cache_dir, key)
        slots.append(CacheSlot(spec, key, path, evalcache.read_cached(path, key)))
    return slots


def cached_results(
    checkpoints: list[Path], settings: EvalSettings, hashes: dict[Path, str] | None = None
) -> list[EvalResult]:
    """The results the cache already holds for these checkpoints, tasks and settings; evaluates nothing.

    hashes: content hashes the caller already computed (checkpoint path → hash), to avoid hashing twice."""
    specs = settings.task_specs()
    found = []
    for ckpt in resolve_checkpoints(checkpoints):
        for slot in cache_slots(checkpoint_hash(ckpt, hashes), specs, settings):
            if slot.result is not None:
                found.append(slot.cached_for(ckpt))
    return found


def take_cached(
    slots: list[CacheSlot], ckpt: Path, found: list[tuple[EvalResult, bool]], bar: ProgressBar
) -> list[CacheSlot]:
    """Move the slots the cache holds into `found` (flagged cached); return the ones still missing."""
    todo = []
    for slot in slots:
        if slot.result is not None:
            found.append((slot.cached_for(ckpt), True))
            bar.advance()
        else:
            todo.append(slot)
    return todo


def missing_work(
    ckpts: list[Path],
    specs: list[TaskSpec],
    settings: EvalSettings,
    hashes: dict[Path, str] | None,
    found: list[tuple[EvalResult, bool]],
    bar: ProgressBar,
) -> Iterator[tuple[Path, list[CacheSlot]]]:
    """(checkpoint, its cache slots still missing), yielded while holding that checkpoint's cache lock, so that a
    concurrent `eval` of the same checkpoint waits and then reuses these results instead of computing them again.
    Results the cache holds, before or after the wait, go to `found`."""
    for ckpt in ckpts:
        bar.describe(f"{checkpoint_label(ckpt)}: hashing")
        ckpt_hash = checkpoint_hash(ckpt, hashes)
        missing = take_cached(cache_slots(ckpt_hash, specs, settings), ckpt, found, bar)
        if not missing:
            continue
        with file_lock(evalcache.lock_path(settings.cache_dir, ckpt_hash)):
            evalcache.remove_partial(settings.cache_dir, ckpt_hash)  # what a killed eval was writing
            # Read the missing ones again under the lock: what another process wrote while we waited is reused.
            again = cache_slots(ckpt_hash, [slot.spec for slot in missing], settings)
            if todo := take_cached(again, ckpt, found, bar):
                yield ckpt, todo


def checked_inputs(checkpoints: list[Path], settings: EvalSettings) -> tuple[list[Path], list[TaskSpec]]:
    """The checkpoints (run dirs expanded) and tasks to evaluate, after the checks that need no model load: the
    settings, each checkpoint's files against the backend, each task's room in the model's context."""
    settings.check()
    ckpts = resolve_checkpoints(checkpoints)
    specs = settings.task_specs()
    for ckpt in ckpts:
        backends.check_checkpoint(ckpt, settings.backend)
        check_context(ckpt, specs)
    return ckpts, specs


def make_task_manager(specs: list[TaskSpec]) -> Any:
    """lm-eval's TaskManager over the include dirs of these tasks (tasks/ and the dirs of task YAMLs given by path)."""
    from lm_eval.tasks import TaskManager

    include = list(dict.fromkeys(str(spec.include_dir) for spec in specs))
    return TaskManager(include_path=include, include_defaults=False)


def run_slots(
    engine: Engine, ckpt: Path, slots: list[CacheSlot], settings: EvalSettings, task_manager: Any
) -> list[tuple[CacheSlot, EvalResult, list[ItemSample]]]:
    """The tasks of `slots` on the checkpoint the engine has loaded, in one lm-eval call (their requests batched and
    length-sorted together): result and per-item samples per slot, not cached."""
    s = settings
    names = [slot.spec.name for slot in slots]
    tasks = f"task{'s' if len(names) > 1 else ''} {', '.join(names)}"
    work = functools.partial(run_tasks, engine.lm, [slot.spec for slot in slots], task_manager, s.num_fewshot,
                             s.limit, s.seed)  # fmt: skip
    output = engine.run(tasks, work, count=len(slots))
    provenance = eval_provenance(ckpt, settings)
    computed = []
    for slot in slots:
        result = to_result(output, slot.spec, slot.key, ckpt, provenance)
        computed.append((slot, result, item_samples(output, slot.spec.name, result)))
    return computed


def evaluate_with_status(
    checkpoints: list[Path],
    settings: EvalSettings,
    progress: bool = True,
    hashes: dict[Path, str] | None = None,
    engine: Engine | None = None,
    bar: ProgressBar | None = None,
) -> list[tuple[EvalResult, bool]]:
    """Every checkpoint × task result, read from the cache or computed (and cached), with a flag per result saying
    whether it came from the cache. A model is loaded only for a checkpoint with a result missing.

    hashes: content hashes the caller already computed (checkpoint path → hash), to avoid hashing twice.
    engine: an engine the caller keeps open across calls (checkpoint_evaluator); by default one for this call.
    bar: where progress goes (a worker of `eval --devices` forwards it to its parent); by default a display of its
    own, shown unless `progress` is False."""
    ckpts, specs = checked_inputs(checkpoints, settings)
    backend = settings.backend
    found: list[tuple[EvalResult, bool]] = []
    task_manager = None
    with (
        quiet_libraries(),
        progress_bar("eval", len(ckpts) * len(specs), enabled=progress) if bar is None else nullcontext(bar) as bar,
        Engine(settings.backend_spec(), settings.timeout) if engine is None else nullcontext(engine) as engine,
        closing(missing_work(ckpts, specs, settings, hashes, found, bar)) as missing,
    ):
        for ckpt, todo in missing:
            label = checkpoint_label(ckpt)
            if bad := non_finite_weights(ckpt):
                raise EvalError(f"{ckpt}: {len(bad)} weight tensors hold NaN or inf (e.g. {bad[0]}): a diverged run?")
            if task_manager is None:
                task_manager = make_task_manager(specs)
            bar.describe(f"{label}: loading ({backend})")
            engine.load(ckpt)
            bar.describe(f"{label}: {', '.join(slot.spec.name for slot in todo)}")
            for slot, result, samples in run_slots(engine, ckpt, todo, settings, task_manager):
                evalcache.write_result(slot.path, result, samples)
                found.append((result, False))
                bar.advance()
            # The model stays loaded until the next checkpoint or the end of the series (engine.close, above).
    return found


@contextmanager
def checkpoint_evaluator(settings: EvalSettings) -> Iterator[Callable[[Path], list[EvalResult]]]:
    """A function that evaluates one checkpoint at a time, as a training run writes them, through one engine kept
    open meanwhile (each next checkpoint's weights swapped in): results cached exactly as `nexus-eval eval` caches
    them, so that `eval` and `compare` later find them. The settings are checked before anything trains."""
    settings.check()
    settings.task_specs()
    with Engine(settings.backend_spec(), settings.timeout) as engine:

        def evaluate_checkpoint(ckpt: Path) -> list[EvalResult]:
            rows = evaluate_with_status([ckpt], settings, progress=False, engine=engine)
            return [result for result, _ in rows]

        yield evaluate_checkpoint


def evaluate(
    checkpoints: list[Path],
    tasks: list[str] | None = None,
    suite: str | None = None,
    backend: str = "hf",
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int | str | None = None,
    cache_dir: Path = Path("results/eval"),
    progress: bool = True,
    seed: int = DEFAULT_SEED,
    timeout: float | None = None,
    device: str | None = None,
    model_args: str | None = None,
) -> list[EvalResult]:
    """Result dicts (schema.EvalResult) for every checkpoint × task, computed or read from the cache: the Python API
    mirroring `nexus-eval eval`, its flags as keywords (see EvalSettings).

    checkpoints: checkpoint dirs, run dirs (all their checkpoints), external HF dirs or GGUF files/dirs.
    tasks: task names from tasks/ or paths of task YAMLs; else suite's tasks (default suite: tasks.DEFAULT_SUITE).
    """
    settings = EvalSettings(
        tuple(tasks) if tasks else None, suite, backend, limit, num_fewshot, batch_size, cache_dir, seed, timeout,
        device, backends.parse_model_args(model_args),
    )  # fmt: skip
    return [result for result, _ in evaluate_with_status(checkpoints, settings, progress)]
