"""The torch side of the optimizers (nexus_eval/optimizer_registry.py): each entry's builder and the hyperparameters
it records, all from the recipe's [optim] table and the optimizer's own [optim."NAME"] table. AdamW, Nexus around
AdamW or any other outer optimizer (nexus:OUTER), the ablations of Nexus, Muon, and a user's own optimizer
(package.module:factory), each a named optimizer run exactly like the others (`--optimizer NAME`).

A plug-in optimizer, `--optimizer package.module:factory`: the module is imported (from the installed packages or the
working directory's import path) and the factory called once per run, as

    factory(named_parameters, optim, total_steps, **settings) -> torch.optim.Optimizer | Sequence[Optimizer]

named_parameters: the trainable (name, parameter) pairs of the model; optim: the recipe's [optim] values (an OptimSpec:
optim.lr, optim.weight_decay, optim.beta1, optim.beta2, ...); total_steps: the run's outer steps; settings: the recipe's
[optim."package.module:factory"] table, as keyword arguments (a key the factory does not take is refused before the
run starts). It returns one torch optimizer, or several over a split of the parameters; together they must hold every
trainable parameter once. The harness steps it as AdamW is stepped (the K micro-batch gradients accumulated, clipped at
optim.grad_clip, one step) and schedules every group's lr as a multiple of the lr the factory gave it: lr_at(step) /
optim.lr. An optimizer with train()/eval() (Schedule-Free) is put in eval mode for held-out loss and checkpoints.
nexus:package.module:factory wraps it in Nexus. README, "Your own optimizer", has a complete example.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from nexus_eval.errors import RecipeError
from nexus_eval.optim import Fish, Nexus, OptimizerSplit
from nexus_eval.optimizer_registry import REGISTRY, OptimizerEntry
from nexus_eval.schema import OptimizerSource
from nexus_eval.training.parallel import Execution
from nexus_eval.training.recipe import OptimSpec

Optimizer = torch.optim.Optimizer | Nexus | OptimizerSplit


def resolve_inner_loop(optim: OptimSpec, ex: Execution) -> str:
    """The Nexus inner loop this run uses (optim.inner_loop; optim/nexus.py, "Numerics"). "auto": linear under bf16
    autocast, whose forwards round away inner steps below bf16's resolution, exact in fp32. FSDP2 reduces gradients
    in its hooks on a plain backward, which the linear loop's double backward bypasses: linear is refused there, and
    "auto" keeps exact (train warns; `nexus-eval optim check` measures what that costs)."""
    if optim.inner_loop == "auto":
        return "linear" if ex.mixed_precision and ex.strategy != "fsdp" else "exact"
    if optim.inner_loop == "linear" and ex.strategy == "fsdp":
        raise RecipeError(
            'optim.inner_loop = "linear" needs whole parameters for its double backward: use --strategy ddp, or '
            '"exact" under fsdp'
        )
    return optim.inner_loop


def build_optimizer(
    model: torch.nn.Module,
    optim: OptimSpec,
    name: str,
    fused: bool = False,
    inner_loop: str = "exact",
    total_steps: int = 0,
) -> Optimizer:
    """The optimizer named `name`, built by its entry's builder. `fused`: the one-kernel AdamW (CUDA); the CPU default
    (foreach) is what every CPU result of this harness was made with. Each group's lr as built is its base lr, which
    set_lr schedules ("initial_lr", as torch's lr schedulers name it)."""
    entry = REGISTRY.chosen(name)
    opt = entry.build.load()(model, optim, entry, fused=fused, inner_loop=inner_loop, total_steps=total_steps)
    for group in opt.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return opt


def optimizer_hparams(optim: OptimSpec, name: str, inner_loop: str = "exact") -> dict[str, Any]:
    """The settings that define the update, as recorded in run.json and every nexus.json."""
    entry = REGISTRY.chosen(name)
    return entry.hparams.load()(optim, entry, inner_loop)


def check_optimizer(optim: OptimSpec, name: str, strategy: str = "none") -> OptimizerEntry:
    """Everything about optimizer `name` that can be refused before a run starts, in one line each: an unknown name,
    a plug-in module that does not import or lacks its factory, a key of its table (or its outer optimizer's) that
    it does not take, and Muon's whole matrices under FSDP."""
    entry = REGISTRY.chosen(name)
    if entry.whole_matrices and strategy == "fsdp":
        raise RecipeError(
            f"--optimizer {name}: Muon orthogonalizes whole weight matrices, FSDP2 shards them: use --strategy ddp"
        )
    for part in (entry, REGISTRY.chosen(entry.outer) if entry.outer is not None else None):
        if part is None:
            continue
        if part.settings is not None:
            part.settings.load()(optim, part.name)
        elif optim.tables.get(part.name):
            raise RecipeError(f"[optim.{part.name}]: {part.name} has no settings of its own (its keys are [optim]'s)")
    return entry


def optimizer_source(name: str) -> OptimizerSource:
    """Where the update's code came from, as recorded in run.json and every nexus.json."""
    return REGISTRY.chosen(name).source_record()


# ---- the built-in optimizers' builders ----------------------------------------------------------------------------


def param_groups(model: torch.nn.Module, optim: OptimSpec) -> list[dict[str, Any]]:
    """Weight decay on matrices, none on norms (1-D params): the groups every built-in optimizer steps."""
    return decay_groups(list(model.parameters()), optim.weight_decay)


def decay_groups(params: list[torch.Tensor], weight_decay: float) -> list[dict[str, Any]]:
    """`params` as two groups: the matrices with `weight_decay`, the norms and biases (1-D) without."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(
    model: torch.nn.Module, optim: OptimSpec, entry: OptimizerEntry, *, fused: bool = False, **_: Any
) -> torch.optim.AdamW:
    """AdamW with no weight decay on norms."""
    extra = {"fused": True} if fused else {}
    return torch.optim.AdamW(param_groups(model, optim), lr=optim.lr, betas=(optim.beta1, optim.beta2), **extra)


def build_nexus(
    model: torch.nn.Module,
    optim: OptimSpec,
    entry: OptimizerEntry,
    *,
    fused: bool = False,
    inner_loop: str = "exact",
    total_steps: int = 0,
) -> Nexus:
    """Nexus (and its AdamW-outer ablations) wrapping exactly the AdamW that adamw trains with; nexus:OUTER wrapping
    exactly the optimizer OUTER trains with."""
    if entry.outer is None:
        outer: torch.optim.Optimizer | OptimizerSplit = build_adamw(model, optim, entry, fused=fused)
    else:
        inner = REGISTRY.chosen(entry.outer)
        outer = inner.build.load()(model, optim, inner, fused=fused, total_steps=total_steps)
    normalize = entry.update.normalized(optim.normalize)
    return Nexus(outer, inner_lr_ratio=optim.inner_lr_ratio, normalize=normalize, inner_loop=inner_loop)


@dataclasses.dataclass(frozen=True)
class MuonSettings:
    """[optim.muon]: Muon's own settings (torch.optim.Muon's, its defaults but adjust_lr).

    adjust_lr "match_rms_adamw" (Moonlight, Liu et al. 2025) scales each matrix's lr by 0.2·√max(rows, cols), so that
    its update has AdamW's RMS: the recipe's one optim.lr and optim.weight_decay then serve the Muon matrices and the
    AdamW rest alike, and the schedule is the same. "original" is Keller Jordan's √max(1, rows/cols), which wants a
    Muon lr some 10-50× AdamW's."""

    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    adjust_lr: str = "match_rms_adamw"


ADJUST_LR = ("match_rms_adamw", "original")


def muon_settings(optim: OptimSpec, name: str) -> MuonSettings:
    """The recipe's [optim.muon] table (`name`: Muon's), checked: a RecipeError naming the key for an unknown key or a
    bad value."""
    table, defaults = optim.table(name), MuonSettings()
    fields = {f.name: f for f in dataclasses.fields(MuonSettings)}
    for key, value in table.items():
        if key not in fields:
            raise RecipeError(f"[optim.{name}]: unknown key {key!r} (known: {', '.join(fields)})")
        default = getattr(defaults, key)
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        ok = isinstance(value, bool) if isinstance(default, bool) else numeric if isinstance(default, float) else None
        if isinstance(default, int) and not isinstance(default, bool):
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        if isinstance(default, str):
            ok = value in ADJUST_LR
        if not ok:
            raise RecipeError(f"[optim.{name}].{key}: expected {_expected(default)}, got {value!r}")
    settings = dataclasses.replace(defaults, **table)
    if not 0 <= settings.momentum < 1:
        raise RecipeError(f"[optim.{name}].momentum: expected a number in [0, 1), got {settings.momentum!r}")
    return dataclasses.replace(settings, momentum=float(settings.momentum))


def _expected(default: Any) -> str:
    if isinstance(default, str):
        return " or ".join(ADJUST_LR)
    return {bool: "true or false", int: "a positive integer", float: "a number"}[type(default)]


def hidden_matrices(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(the 2-D weights of the hidden layers, every other trainable parameter): the input embedding and the output
    head are 2-D but a lookup table and a classifier, which Muon's authors leave to AdamW, as norms and biases."""
    io_weights = set()
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):  # type: ignore[operator]
        if module is not None:
            io_weights.add(id(module.weight))
    params = [p for p in model.parameters() if p.requires_grad]
    matrices = [p for p in params if p.ndim == 2 and id(p) not in io_weights]
    chosen = {id(p) for p in matrices}
    return matrices, [p for p in params if id(p) not in chosen]


def build_muon(model: torch.nn.Module, optim: OptimSpec, entry: OptimizerEntry, **_: Any) -> OptimizerSplit:
    """torch.optim.Muon on the hidden weight matrices, AdamW (as adamw's: decay on matrices, none on norms) on the
    embedding, head, norms and biases; one lr and weight decay for both (MuonSettings.adjust_lr)."""
    settings = muon_settings(optim, entry.name)
    matrices, rest = hidden_matrices(model)
    muon = torch.optim.Muon(
        matrices,
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        momentum=settings.momentum,
        nesterov=settings.nesterov,
        ns_steps=settings.ns_steps,
        adjust_lr_fn=settings.adjust_lr,
    )
    groups = [g for g in decay_groups(rest, optim.weight_decay) if g["params"]]
    adamw = torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2))
    return OptimizerSplit([muon, adamw])


# ---- a user's own optimizer: package.module:factory ---------------------------------------------------------------


def load_factory(name: str) -> Any:
    """The factory `package.module:factory` names, imported; a RecipeError in one line when the module does not
    import or has no such callable. The working directory is on the import path, as for `python -m`."""
    module_name, _, attribute = name.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any error of the user's module is theirs to fix: said in one line, no traceback
        raise RecipeError(
            f"--optimizer {name}: module {module_name!r} does not import ({type(e).__name__}: {e})"
        ) from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise RecipeError(f"--optimizer {name}: {module_name} has no callable {attribute!r}")
    return factory


def bind_factory(factory: Any, optim: OptimSpec, name: str) -> dict[str, Any]:
    """The factory's settings, the recipe's [optim."NAME"] table, once the factory is known to take every key."""
    settings = optim.table(name)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: called as it is
        return settings
    try:
        signature.bind([], optim, 0, **settings)
    except TypeError as e:
        call = f'factory(named_parameters, optim, total_steps, **[optim."{name}"])'
        raise RecipeError(f"--optimizer {name}: {call} does not bind ({e})") from None
    return settings


def plugin_settings(optim: OptimSpec, name: str) -> dict[str, Any]:
    """A plug-in's settings: its module imported, its factory found and known to take every key of its table."""
    return bind_factory(load_factory(name), optim, name)


def build_plugin(
    model: torch.nn.Module, optim: OptimSpec, entry: OptimizerEntry, *, total_steps: int = 0, **_: Any
) -> torch.optim.Optimizer | OptimizerSplit:
    """The user's optimizer, from its factory; a RecipeError when it returns no torch optimizer or its optimizers do
    not hold every trainable parameter exactly once."""
    factory = load_factory(entry.name)
    settings = bind_factory(factory, optim, entry.name)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    try:
        built = factory(named, optim, total_steps, **settings)
    except RecipeError:
        raise
    except Exception as e:  # the factory's own refusal: one line naming it
        raise RecipeError(f"--optimizer {entry.name}: the factory failed ({type(e).__name__}: {e})") from None
    parts = list(built) if isinstance(built, Sequence) else [built]
    if not parts or not all(isinstance(part, torch.optim.Optimizer) for part in parts):
        raise RecipeError(f"--optimizer {entry.name}: the factory returned {built!r}, not a torch optimizer")
    counts: dict[int, int] = {}
    for part in parts:
        for group in part.param_groups:
            for p in group["params"]:
                counts[id(p)] = counts.get(id(p), 0) + 1
    left_out = [n for n, p in named if counts.get(id(p), 0) == 0]
    if left_out:
        shown = ", ".join(left_out[:3]) + (f" and {len(left_out) - 3} more" if len(left_out) > 3 else "")
        raise RecipeError(f"--optimizer {entry.name}: the factory's optimizer leaves out {shown}")
    if twice := [n for n, p in named if counts.get(id(p), 0) > 1]:
        raise RecipeError(f"--optimizer {entry.name}: {twice[0]} is in more than one of the factory's optimizers")
    return parts[0] if len(parts) == 1 else OptimizerSplit(parts)


def build_fish(
    model: torch.nn.Module,
    optim: OptimSpec,
    entry: OptimizerEntry,
    *,
    fused: bool = False,
    inner_loop: str = "exact",
    **_: Any,
) -> Fish:
    """Fish: plain SGD over the same groups as AdamW's, its meta step ε = optim.fish_meta_lr."""
    groups = param_groups(model, optim)
    ratio = optim.inner_lr_ratio
    return Fish(groups, lr=optim.lr, meta_lr=optim.fish_meta_lr, inner_lr_ratio=ratio, inner_loop=inner_loop)


# ---- what the built-in optimizers record --------------------------------------------------------------------------


def batch_hparams(optim: OptimSpec) -> dict[str, Any]:
    """What every optimizer records of how its gradients are batched and its lr scheduled."""
    return {"accum": optim.accum, "micro_batch": optim.micro_batch, "schedule": optim.schedule}


def _outer_hparams(optim: OptimSpec, entry: OptimizerEntry) -> dict[str, Any]:
    if entry.outer is not None:  # nexus:OUTER: what OUTER records, but its clipping (the inner steps are normalized)
        outer = REGISTRY.chosen(entry.outer)
        hp = outer.hparams.load()(optim, outer)
        hp.pop("grad_clip", None)
        return hp
    hp: dict[str, Any] = {"outer": entry.update.outer, "lr": optim.lr}
    if entry.update.outer == "AdamW":
        hp.update(betas=[optim.beta1, optim.beta2], weight_decay=optim.weight_decay)
    else:  # Fish's meta step: plain SGD
        hp.update(meta_lr=optim.fish_meta_lr, momentum=0.0, weight_decay=0.0)
    hp.update(batch_hparams(optim))
    return hp


def adamw_hparams(optim: OptimSpec, entry: OptimizerEntry, inner_loop: str = "exact") -> dict[str, Any]:
    """The outer AdamW's settings and the clipping of its accumulated gradient."""
    return {**_outer_hparams(optim, entry), "grad_clip": optim.grad_clip}


def muon_hparams(optim: OptimSpec, entry: OptimizerEntry, inner_loop: str = "exact") -> dict[str, Any]:
    """Muon's settings on the hidden matrices, AdamW's on the rest, the shared lr and decay, and the clipping."""
    settings = muon_settings(optim, entry.name)
    hp: dict[str, Any] = {"outer": "Muon", "lr": optim.lr, "weight_decay": optim.weight_decay}
    hp.update(dataclasses.asdict(settings), rest="AdamW", betas=[optim.beta1, optim.beta2])
    hp.update(batch_hparams(optim), grad_clip=optim.grad_clip)
    return hp


def plugin_hparams(optim: OptimSpec, entry: OptimizerEntry, inner_loop: str = "exact") -> dict[str, Any]:
    """A plug-in's recipe settings: the shared [optim] values it is given and its own table."""
    hp: dict[str, Any] = {"outer": entry.name, "lr": optim.lr, "weight_decay": optim.weight_decay}
    hp.update(betas=[optim.beta1, optim.beta2], settings=optim.table(entry.name))
    hp.update(batch_hparams(optim), grad_clip=optim.grad_clip)
    return hp


def inner_loop_hparams(optim: OptimSpec, entry: OptimizerEntry, inner_loop: str = "exact") -> dict[str, Any]:
    """The outer optimizer's settings and the inner loop's: its lr ratio, normalization, steps and how computed."""
    hp = _outer_hparams(optim, entry)
    inner_steps = 1 if entry.update.inner == "one" else optim.accum
    normalize = entry.update.normalized(optim.normalize)
    hp.update(inner_lr_ratio=optim.inner_lr_ratio, normalize=normalize, inner_steps=inner_steps)
    hp.update(inner_loop=inner_loop)
    if entry.update.mixed_sources:
        hp.update(micro_batches="mixed sources")
    return hp


@contextlib.contextmanager
def weights_to_evaluate(opt: Optimizer) -> Iterator[None]:
    """Inside: an optimizer with an eval mode (Schedule-Free; Nexus and OptimizerSplit pass it on to their parts) in
    it, the model holding the weights it evaluates; after: back in train mode. Others are left as they are."""
    if not callable(getattr(opt, "eval", None)):
        yield
        return
    opt.eval()
    try:
        yield
    finally:
        opt.train()


def enter_train_mode(opt: Optimizer) -> None:
    """Train mode, for an optimizer that has one (after a resume: its state was saved in eval mode)."""
    if callable(getattr(opt, "train", None)):
        opt.train()


def set_lr(opt: Optimizer, lr: float, base_lr: float) -> None:
    """Every group's outer lr at the schedule's `lr` (of the recipe's `base_lr`): a group built at base_lr gets `lr`
    itself, one built at another lr (a plug-in's) that lr × lr/base_lr. Nexus' inner lr follows it: γ = inner_lr_ratio
    × lr; Fish's groups are its inner steps' and the meta step keeps its ε."""
    for group in opt.param_groups:
        initial = group.get("initial_lr", base_lr)  # none in a state saved before groups kept it: built at base_lr
        group["lr"] = lr if initial == base_lr else initial * lr / base_lr
