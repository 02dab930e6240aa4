"""Training recipes: one TOML file (train/*.toml), read into plain dataclasses; unknown or mistyped keys are errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus_eval.errors import RecipeError
from nexus_eval.io import SAFE_NAME_RULE, is_safe_name
from nexus_eval.training.model import PRESETS

SCHEDULES = ("wsd", "cosine")
STRATEGIES = ("auto", "none", "ddp", "fsdp")  # auto: ddp under torchrun with more than one process, else none
DEVICES = ("auto", "cpu", "cuda", "mps")  # auto: cuda when there is one, else cpu
COMPILE = ("auto", True, False)  # auto: compile on CUDA only


@dataclass(frozen=True)
class ModelSpec:
    preset: str = "tiny"
    context: int = 128


@dataclass(frozen=True)
class DataSpec:
    dir: str = "data"
    mixture: dict[str, float] = field(default_factory=lambda: {"text": 1.0, "math": 1.0, "code": 1.0})


@dataclass(frozen=True)
class OptimSpec:
    lr: float = 3e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    micro_batch: int = 16
    accum: int = 4  # K: micro-batches per outer step = Nexus inner steps
    inner_lr_ratio: float = 1.0  # Nexus inner lr γ_t = inner_lr_ratio × outer lr at step t
    normalize: bool = True  # False: un-normalized inner steps (Reptile-style; the `reptile` optimizer forces it)
    grad_clip: float = 1.0  # AdamW's accumulated gradient; Nexus' inner steps are normalized already
    schedule: str = "wsd"  # warmup-stable-decay or cosine
    warmup_steps: int = 10
    decay_fraction: float = 0.2  # wsd: share of steps in the final linear decay
    min_lr_ratio: float = 0.1
    fish_meta_lr: float = 0.5  # fish: meta step θ ← θ0 + ε(θK − θ0), ε constant (DomainBed's default; optim/fish.py)
    # Nexus' inner loop (optim/nexus.py, "Numerics"): "exact" moves the weights, "linear" keeps them at θ0 and
    # corrects each inner gradient to first order (a Hessian-vector product); "auto": linear under bf16 autocast,
    # whose forwards cannot see the inner steps, exact otherwise (fp32, and FSDP2, where linear cannot run)
    inner_loop: str = "auto"
    # [optim."NAME"] tables: each optimizer's own settings ([optim.muon], a plug-in's [optim."pkg.mod:factory"]), by
    # optimizer name; read by that optimizer's builder, which refuses keys it does not know
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)

    def table(self, name: str) -> dict[str, Any]:
        """Optimizer `name`'s own settings (empty when the recipe has no table for it)."""
        return dict(self.tables.get(name, {}))


# [optim] keys only an ablation of Nexus reads, added after runs were recorded: at their default they are left out of
# the recipe dict and its hash, so that every recipe (and run) recorded before them keeps its hash and stays
# resumable and comparable; a non-default value is recorded like any key.
VARIANT_ONLY_DEFAULTS = {"fish_meta_lr": OptimSpec.fish_meta_lr, "inner_loop": OptimSpec.inner_loop}
INNER_LOOPS = ("auto", "exact", "linear")


@dataclass(frozen=True)
class TrainSpec:
    steps: int = 100
    eval_interval: int = 10
    eval_windows: int = 16  # held-out windows of `context` tokens per source / OOD domain
    checkpoint_interval: int = 50
    target_losses: tuple[float, ...] = ()  # checkpoint when the held-out mixture loss first drops below each
    target_watch: float = 0.1  # within this many nats of a target, measure held-out loss every step
    keep_state: str = "latest"  # optimizer state beside the newest checkpoint only, or "all" (resume from any)
    # lm-eval tasks evaluated at each checkpoint as it is written (cached as `nexus-eval eval` caches them). What is
    # measured, not what is trained: outside the recipe dict and hash, like [parallel].
    eval_tasks: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParallelSpec:
    """[parallel]: HOW a run executes, not WHAT it trains. None of it is part of the recipe's identity (to_dict,
    hash): the same recipe trained on a laptop CPU or on 8 GPUs with FSDP is the same run, up to float rounding.
    run.json records it apart, under "execution"."""

    strategy: str = "auto"  # one of STRATEGIES; `--strategy` overrides
    device: str = "auto"  # one of DEVICES; `--device` overrides
    compile: str | bool = "auto"  # torch.compile of each decoder layer
    device_batch: int = 0  # rows per forward/backward on one process (gradient accumulation); 0: all of its share
    activation_checkpointing: bool = False  # recompute each decoder layer's activations in backward


@dataclass(frozen=True)
class Recipe:
    name: str
    model: ModelSpec
    data: DataSpec
    optim: OptimSpec
    train: TrainSpec
    path: str = ""
    parallel: ParallelSpec = field(default_factory=ParallelSpec)  # execution only: outside to_dict and hash

    def tokens_per_step(self) -> int:
        return self.optim.accum * self.optim.micro_batch * self.model.context

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("path")
        out.pop("parallel")  # how it runs is not what it trains: every recipe hash stays what it was
        out["train"].pop("eval_tasks")  # what is measured along the way, likewise
        # an optimizer's table where the TOML file has it, [optim.NAME]; no key at all without one, so that every
        # recipe without tables keeps its hash
        out["optim"].update(out["optim"].pop("tables"))
        for key, default in VARIANT_ONLY_DEFAULTS.items():
            if out["optim"][key] == default:
                del out["optim"][key]
        return out

    def with_execution(self, strategy: str | None = None, device: str | None = None) -> Recipe:
        """This recipe with `--strategy` / `--device` overriding its [parallel] table (None: keep the recipe's)."""
        spec = self.parallel
        changes = {k: v for k, v in {"strategy": strategy, "device": device}.items() if v is not None}
        for key, value in changes.items():
            allowed = STRATEGIES if key == "strategy" else DEVICES
            if value not in allowed:
                raise RecipeError(f"--{key} must be one of {', '.join(allowed)}, got {value!r}")
        return dataclasses.replace(self, parallel=dataclasses.replace(spec, **changes))

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def with_steps(self, steps: int) -> Recipe:
        """This recipe training `steps` outer steps: a `--steps` override is part of the recipe a run records, so
        its recipe dict and hash say how long it was really trained (the lr schedule depends on it)."""
        return dataclasses.replace(self, train=dataclasses.replace(self.train, steps=steps))


SECTIONS: dict[str, type] = {"model": ModelSpec, "data": DataSpec, "optim": OptimSpec, "train": TrainSpec}


def recipe_keys() -> list[str]:
    """Every key a recipe has, as flat_recipe names them: "name", then "section.key" ("optim.lr", ...)."""
    fields = [(section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    return ["name"] + [f"{section}.{name}" for section, name in fields if name != "tables"]


def flat_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe dict (Recipe.to_dict(), or as read back from run.json) as "section.key" → value, JSON-normalized
    (tuples as lists), so that a recipe in memory and one read from a file compare key by key."""
    normalized = json.loads(json.dumps(recipe))
    flat: dict[str, Any] = {}
    for key, value in normalized.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat


def _optim_section(raw: dict[str, Any], where: str) -> OptimSpec:
    """[optim]: its keys, and a sub-table per optimizer with settings of its own ([optim.muon]): a table whose name is
    no optimizer is an error, as an unknown key is."""
    from nexus_eval.optimizer_registry import REGISTRY

    tables = {key: value for key, value in raw.items() if isinstance(value, dict)}
    for name, table in tables.items():
        if name not in REGISTRY:
            raise RecipeError(
                f"{where}: [optim.{name}] names no optimizer (a registered name, nexus:OUTER or package.module:factory)"
            )
        try:  # plain data, as run.json records it (TOML dates are not)
            tables[name] = json.loads(json.dumps(table))
        except (TypeError, ValueError):
            raise RecipeError(f"{where}: [optim.{name}] holds a value JSON cannot record (a date?)") from None
    keys = {key: value for key, value in raw.items() if key not in tables}
    return dataclasses.replace(_section(OptimSpec, keys, where), tables=tables)


def _section(cls: type, raw: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls) if f.name != "tables"}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    values: dict[str, Any] = {}
    defaults = cls()
    for key, value in raw.items():
        default = getattr(defaults, key)
        if key == "eval_tasks":  # names, not numbers like the other lists
            names = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
            converted = tuple(value) if names else None
        else:
            converted = _typed(default, value)
        if converted is None:
            expected = "a list of task names" if key == "eval_tasks" else _type_name(default)
            raise RecipeError(f"{where}.{key}: expected {expected}, got {value!r}")
        values[key] = converted
    return cls(**values)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _typed(default: Any, value: Any) -> Any:
    """`value` as the type of the field whose default is `default`, or None when it is not of that type (checked
    before any conversion: float("fast") would be a traceback, not a message naming the key)."""
    if isinstance(default, bool):
        return value if isinstance(value, bool) else None
    if isinstance(default, float):
        return float(value) if _is_number(value) else None
    if isinstance(default, int):
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(default, tuple):  # target losses: numbers, stored largest first
        if not isinstance(value, list) or not all(_is_number(v) for v in value):
            return None
        return tuple(sorted((float(v) for v in value), reverse=True))
    if isinstance(default, dict):  # the mixture: source name → weight ≥ 0
        if not isinstance(value, dict) or not all(_is_number(v) and v >= 0 for v in value.values()):
            return None
        return {k: float(v) for k, v in value.items()}
    return value if isinstance(value, str) else None


def _type_name(default: Any) -> str:
    if isinstance(default, tuple):
        return "a list of numbers"
    if isinstance(default, dict):
        return "a table of source = weight ≥ 0"
    return type(default).__name__


def _parallel_section(raw: Any, where: str) -> ParallelSpec:
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: [parallel] must be a table")
    compile_ = raw.get("compile", "auto")
    if compile_ not in COMPILE or isinstance(compile_, int | float) and not isinstance(compile_, bool):
        raise RecipeError(f'{where} [parallel].compile: expected true, false or "auto", got {compile_!r}')
    spec = _section(ParallelSpec, {k: v for k, v in raw.items() if k != "compile"}, f"{where} [parallel]")
    spec = dataclasses.replace(spec, compile=compile_)
    choices = {"strategy": (spec.strategy, STRATEGIES), "device": (spec.device, DEVICES)}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise RecipeError(f"{where}: parallel.{key} must be one of {', '.join(allowed)}, got {value!r}")
    if spec.device_batch < 0:
        raise RecipeError(f"{where}: parallel.device_batch must be 0 (all rows at once) or positive")
    return spec


def parse_recipe(raw: dict[str, Any], where: str) -> Recipe:
    unknown = sorted(set(raw) - set(SECTIONS) - {"name", "parallel"})
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r} (known: name, {', '.join(SECTIONS)}, parallel)")
    parts = {}
    for key, cls in SECTIONS.items():
        value = raw.get(key, {})
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: [{key}] must be a table")
        where_key = f"{where} [{key}]"
        parts[key] = _optim_section(value, where_key) if cls is OptimSpec else _section(cls, value, where_key)
    name = str(raw.get("name", Path(where).stem))
    if not is_safe_name(name):  # it names the run directory under --out: no "..", "/" or absolute paths
        raise RecipeError(f"{where}: name {name!r}: {SAFE_NAME_RULE} (it names the run directory)")
    parallel = _parallel_section(raw.get("parallel", {}), where)
    recipe = Recipe(name=name, path=where, parallel=parallel, **parts)
    check(recipe, where)
    return recipe


def check(recipe: Recipe, where: str) -> None:
    o, t = recipe.optim, recipe.train
    if recipe.model.preset not in PRESETS:
        raise RecipeError(f"{where}: model.preset must be one of {', '.join(PRESETS)}, got {recipe.model.preset!r}")
    positive = {
        "optim.lr": o.lr,
        "optim.micro_batch": o.micro_batch,
        "optim.accum": o.accum,
        "optim.inner_lr_ratio": o.inner_lr_ratio,
        "optim.fish_meta_lr": o.fish_meta_lr,
        "model.context": recipe.model.context,
        "train.steps": t.steps,
        "train.eval_interval": t.eval_interval,
        "train.eval_windows": t.eval_windows,
        "train.checkpoint_interval": t.checkpoint_interval,
    }
    for key, value in positive.items():
        if value <= 0:
            raise RecipeError(f"{where}: {key} must be positive, got {value}")
    if o.inner_loop not in INNER_LOOPS:
        raise RecipeError(f"{where}: optim.inner_loop must be one of {', '.join(INNER_LOOPS)}, got {o.inner_loop!r}")
    if o.schedule not in SCHEDULES:
        raise RecipeError(f"{where}: optim.schedule must be one of {', '.join(SCHEDULES)}, got {o.schedule!r}")
    if t.keep_state not in ("latest", "all"):
        raise RecipeError(f"{where}: train.keep_state must be 'latest' or 'all', got {t.keep_state!r}")
    if not recipe.data.mixture or sum(recipe.data.mixture.values()) <= 0:
        raise RecipeError(f"{where}: data.mixture needs at least one source with positive weight")
    if not 0 <= o.decay_fraction <= 1 or not 0 <= o.min_lr_ratio <= 1:
        raise RecipeError(f"{where}: optim.decay_fraction and optim.min_lr_ratio must lie in [0, 1]")


def load_recipe(path: Path) -> Recipe:
    if path.is_dir():
        raise RecipeError(f"{path}: is a directory, not a recipe file (e.g. train/tiny.toml)")
    if not path.is_file():
        raise RecipeError(f"{path}: recipe not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: malformed TOML ({e})") from None
    return parse_recipe(raw, str(path))


def lr_at(optim: OptimSpec, step: int, total_steps: int) -> float:
    """Outer learning rate at an outer step: linear warmup, then constant + linear decay (wsd) or cosine."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    floor = optim.lr * optim.min_lr_ratio
    if optim.schedule == "cosine":
        progress = (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps)
        return floor + (optim.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    decay_start = total_steps - int(optim.decay_fraction * total_steps)
    if step < decay_start:
        return optim.lr
    progress = (step - decay_start) / max(1, total_steps - decay_start)
    return optim.lr + (floor - optim.lr) * min(1.0, progress)
