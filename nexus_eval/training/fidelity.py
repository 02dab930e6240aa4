"""How faithfully a precision computes Nexus, and how much Nexus' inner loop changes the update: `nexus-eval optim
check` and the check `train` runs at start.

Nexus' pseudo-gradient P = Σ_k n_k(θ_{k−1}) (optim/nexus.py) is its first-order part N = Σ_k n_k(θ0), what
normalized gradient accumulation gives, plus S = P − N = O(γ), the part that carries the method. Two numbers:

- second_order_share = ‖S‖/‖N‖ in float64: how much the inner loop changes the update (0: Nexus is AdamW on
  normalized gradients);
- fidelity = cos(S, S_fp64): how faithfully the run's precision (fp32, or fp32 master weights under bf16 autocast)
  and inner loop compute S, against the exact algorithm in float64 on the same weights and micro-batches.

S is measured as P(γ) − P(γ ≈ 0) through the training step itself (step.nexus_step): P(γ ≈ 0) takes every gradient
by the same code path at θ0, so the rounding both share cancels and only the inner loop's contribution remains.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from nexus_eval.errors import RecipeError
from nexus_eval.optim import Nexus
from nexus_eval.training.components import check_sources, recipe_model
from nexus_eval.training.model import causal_lm_loss, count_params
from nexus_eval.training.parallel import Execution
from nexus_eval.training.recipe import Recipe
from nexus_eval.training.schedule import MicroBatch, MicroBatchSchedule
from nexus_eval.training.step import nexus_step

DTYPES = ("fp32", "bf16")
FIDELITY_FLOOR = 0.99  # below it the run's precision does not compute the method's part of the update
# Below it Nexus' update is within 1% of normalized gradient accumulation (optim/nexus.py): too small to test
SHARE_FLOOR = 0.01
# The share the tiny study's recipe has at the inner step its sweep chose (0.0575 at γ = 10 × lr, this check's
# defaults; docs/training.md "Nexus at scale"): GPU recipes set their inner step so that their share matches it
TARGET_SHARE = 0.06
NEGLIGIBLE_GAMMA = 1e-30  # P at this γ takes every gradient at θ0 (θ0 − γu rounds to θ0): the first-order part N


@dataclass(frozen=True)
class FidelityReport:
    """One check: the recipe's model and micro-batches, one precision and inner loop."""

    recipe: str
    preset: str
    params: int
    device: str
    dtype: str  # "fp32" or "bf16" (fp32 master weights, bf16 autocast)
    inner_loop: str  # "exact" or "linear" (optim/nexus.py)
    micro_batches: int  # K
    rows: int  # sequences per micro-batch
    context: int  # tokens per sequence
    warmup_steps: int  # AdamW steps from the initial weights before measuring
    inner_lr_ratio: float
    gamma: float  # the inner lr γ = inner_lr_ratio × optim.lr
    per_element_step: float  # γ/√#params: the inner step's size per weight, what rounding is measured against
    second_order_share: float  # ‖S_fp64‖/‖N_fp64‖
    fidelity: float  # cos(S, S_fp64)
    relative_error: float  # ‖S − S_fp64‖/‖S_fp64‖
    suggested_inner_lr_ratio: float  # the ratio whose share is TARGET_SHARE (S ∝ γ to first order)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def warnings(self) -> list[str]:
        """What a user should know before spending GPU hours on this setting, naming the setting to change."""
        out = []
        if self.fidelity < FIDELITY_FLOOR:
            other = "linear" if self.inner_loop == "exact" else "exact with --dtype fp32"
            out.append(
                f"Nexus fidelity {self.fidelity:.3f} < {FIDELITY_FLOOR}: {self.dtype} with the {self.inner_loop} inner "
                f"loop does not compute the inner loop's part of the update; try optim.inner_loop {other}"
            )
        if self.second_order_share < SHARE_FLOOR:
            out.append(
                f"Nexus second-order share {self.second_order_share:.4f} < {SHARE_FLOOR}: at inner_lr_ratio "
                f"{self.inner_lr_ratio:g} Nexus is AdamW on normalized gradients; optim.inner_lr_ratio "
                f"{self.suggested_inner_lr_ratio:.3g} gives a share of {TARGET_SHARE}"
            )
        return out

    def lines(self) -> list[str]:
        return [
            f"{self.recipe}: {self.preset} ({self.params / 1e6:.1f}M parameters) on {self.device}, {self.dtype}, "
            f"{self.inner_loop} inner loop; K={self.micro_batches} micro-batches of {self.rows}x{self.context} "
            f"tokens after {self.warmup_steps} AdamW steps; γ = {self.gamma:.3g} (inner_lr_ratio "
            f"{self.inner_lr_ratio:g}), {self.per_element_step:.2g} per element",
            f"second-order share ‖S‖/‖N‖ (float64): {self.second_order_share:.4f}"
            f"   (inner_lr_ratio for {TARGET_SHARE}: {self.suggested_inner_lr_ratio:.3g})",
            f"fidelity cos(S, S_fp64): {self.fidelity:.4f}   (relative error {self.relative_error:.3f})",
        ]


@dataclass(frozen=True)
class CheckSettings:
    dtype: str = "fp32"
    inner_loop: str = "auto"  # "auto": what train uses for this dtype (linear under bf16, exact in fp32)
    inner_lr_ratio: float | None = None  # None: the recipe's
    rows: int = 4
    context: int = 128
    warmup_steps: int = 20
    step: int = 0  # which step's micro-batches of the schedule (after the warm-up's)


def resolved_loop(settings: CheckSettings) -> str:
    if settings.inner_loop == "auto":
        return "linear" if settings.dtype == "bf16" else "exact"
    return settings.inner_loop


def check_settings(settings: CheckSettings) -> None:
    if settings.dtype not in DTYPES:
        raise RecipeError(f"--dtype must be one of {', '.join(DTYPES)}, got {settings.dtype!r}")
    if settings.inner_loop not in ("auto", "exact", "linear"):
        raise RecipeError(f"--inner-loop must be auto, exact or linear, got {settings.inner_loop!r}")
    for flag, value in (("--rows", settings.rows), ("--context", settings.context)):
        if value <= 0:
            raise RecipeError(f"{flag} must be positive, got {value}")
    if settings.warmup_steps < 0:
        raise RecipeError(f"--warmup-steps must be 0 or more, got {settings.warmup_steps}")
    if settings.inner_lr_ratio is not None and settings.inner_lr_ratio <= 0:
        raise RecipeError(f"--inner-lr-ratio must be positive, got {settings.inner_lr_ratio}")


class _Capture(torch.optim.Optimizer):
    """An outer optimizer that keeps the pseudo-gradient it is handed and leaves the weights alone."""

    def __init__(self, params: list[torch.Tensor], gamma: float):
        super().__init__(params, {"lr": gamma})
        self.captured: list[torch.Tensor] = []

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        self.captured = [p.grad.detach().double().flatten() for g in self.param_groups for p in g["params"]]


def pseudo_gradient(
    model: torch.nn.Module, batches: list[MicroBatch], gamma: float, inner_loop: str, ex: Execution
) -> torch.Tensor:
    """P = Σ_k n_k(θ_{k−1}) of one Nexus outer step at inner lr `gamma`, flat, in float64, computed by the
    training step (step.nexus_step) in `ex`'s precision. The weights are back at θ0 afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    capture = _Capture(params, gamma)
    opt = Nexus(capture, inner_lr_ratio=1.0, normalize=True, inner_loop=inner_loop)
    nexus_step(model, opt, batches, params, False, ex)
    return torch.cat(capture.captured)


def second_order_part(
    model: torch.nn.Module, batches: list[MicroBatch], gamma: float, inner_loop: str, ex: Execution
) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, N): S = P(γ) − P(≈0), N = P(≈0), both by the same code path (module docstring)."""
    first = pseudo_gradient(model, batches, NEGLIGIBLE_GAMMA, inner_loop, ex)
    full = pseudo_gradient(model, batches, gamma, inner_loop, ex)
    return full - first, first


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@contextlib.contextmanager
def exact_fp32_matmuls(device: torch.device) -> Iterator[None]:
    """fp32 means fp32: TF32 matmuls (10-bit mantissa) would round the inner steps away like bf16 does."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def reference(
    model: torch.nn.Module, batches: list[MicroBatch], gamma: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(S_fp64, N_fp64): the exact algorithm in float64 on a copy of `model`."""
    wide = copy.deepcopy(model).to(device=device, dtype=torch.float64)
    return second_order_part(wide, batches, gamma, "exact", _execution(device, bf16=False))


def computed(
    model: torch.nn.Module, batches: list[MicroBatch], gamma: float, dtype: str, inner_loop: str, device: torch.device
) -> torch.Tensor:
    """S as a run in `dtype` with `inner_loop` computes it, on a float32 copy of `model`."""
    narrow = copy.deepcopy(model).to(device=device, dtype=torch.float32)
    with exact_fp32_matmuls(device):
        return second_order_part(narrow, batches, gamma, inner_loop, _execution(device, bf16=dtype == "bf16"))[0]


def agreement(s: torch.Tensor, s64: torch.Tensor) -> tuple[float, float]:
    """(fidelity, relative error) of S against S_fp64."""
    return _cos(s, s64), float((s - s64).norm() / s64.norm())


def measure(
    model: torch.nn.Module,
    batches: list[MicroBatch],
    gamma: float,
    dtype: str,
    inner_loop: str,
    device: torch.device,
) -> tuple[float, float, float]:
    """(second_order_share, fidelity, relative_error) of one outer step of Nexus from `model`'s weights (left
    unchanged) on `batches`: the float64 exact algorithm against `dtype` and `inner_loop` on `device`."""
    s64, n64 = reference(model, batches, gamma, device)
    s = computed(model, batches, gamma, dtype, inner_loop, device)
    return float(s64.norm() / n64.norm()), *agreement(s, s64)


def _execution(device: torch.device, bf16: bool) -> Execution:
    return Execution(device, "none", 0, 1, 0, False, 0, False, bf16=bf16)


def check_recipe(recipe: Recipe, data_dir: Path, settings: CheckSettings, device: torch.device) -> FidelityReport:
    """`nexus-eval optim check`: the recipe's model after a short AdamW warm-up on its micro-batch stream, then one
    Nexus outer step's K micro-batches (rows × context tokens each, from the recipe's data build)."""
    model, batches = prepare(recipe, data_dir, settings, device)
    ratio = settings.inner_lr_ratio if settings.inner_lr_ratio is not None else recipe.optim.inner_lr_ratio
    loop = resolved_loop(settings)
    return fidelity_report(recipe, model, batches, ratio, settings.dtype, loop, device, settings.warmup_steps)


def prepare(
    recipe: Recipe, data_dir: Path, settings: CheckSettings, device: torch.device
) -> tuple[torch.nn.Module, list[MicroBatch]]:
    """The recipe's model (seed 0) after settings.warmup_steps AdamW steps, and the K micro-batches measured on."""
    from nexus_eval.data import load_manifest, load_tokenizer, open_tokens

    check_settings(settings)
    if not (data_dir / "manifest.json").is_file():
        raise RecipeError(f"{recipe.path or recipe.name}: no data build at {data_dir} (run `nexus-eval data build`)")
    manifest = load_manifest(data_dir)
    check_sources(recipe, manifest, data_dir)
    tokenizer = load_tokenizer(data_dir)
    mixture = {s: w for s, w in recipe.data.mixture.items() if w > 0}
    context = min(settings.context, recipe.model.context)
    streams = {s: open_tokens(data_dir, "train", s) for s in mixture}
    schedule = MicroBatchSchedule(streams, mixture, settings.rows, context, seed=0)
    model = recipe_model(recipe, manifest, tokenizer, seed=0, on_cuda=device.type == "cuda").to(device)
    warm_up(model, schedule, recipe, settings.warmup_steps, device)
    return model, schedule.step_batches(settings.warmup_steps + settings.step, recipe.optim.accum)


def fidelity_report(
    recipe: Recipe,
    model: torch.nn.Module,
    batches: list[MicroBatch],
    inner_lr_ratio: float,
    dtype: str,
    inner_loop: str,
    device: torch.device,
    warmup_steps: int,
) -> FidelityReport:
    """measure() on `model` and `batches` at γ = inner_lr_ratio × optim.lr, as a report."""
    gamma = inner_lr_ratio * recipe.optim.lr
    share, fidelity, error = measure(model, batches, gamma, dtype, inner_loop, device)
    params = count_params(model)
    return FidelityReport(
        recipe=recipe.path or recipe.name,
        preset=recipe.model.preset,
        params=params,
        device=device.type,
        dtype=dtype,
        inner_loop=inner_loop,
        micro_batches=len(batches),
        rows=len(batches[0].inputs),
        context=batches[0].inputs.shape[1],
        warmup_steps=warmup_steps,
        inner_lr_ratio=inner_lr_ratio,
        gamma=gamma,
        per_element_step=gamma / math.sqrt(params),
        second_order_share=share,
        fidelity=fidelity,
        relative_error=error,
        suggested_inner_lr_ratio=inner_lr_ratio * TARGET_SHARE / share if share > 0 else float("inf"),
    )


def warm_up(
    model: torch.nn.Module, schedule: MicroBatchSchedule, recipe: Recipe, steps: int, dev: torch.device
) -> None:
    """AdamW steps at the recipe's peak lr on the stream, in fp32: the weights and gradients of a model in training,
    not of its initialization (where every source's gradient points the same way)."""
    if steps == 0:
        return
    o = recipe.optim
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
    for step in range(steps):
        batches = schedule.step_batches(step, o.accum)
        for mb in batches:
            (causal_lm_loss(model, mb.inputs.to(dev), mb.labels.to(dev)) / len(batches)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)


START_ROWS, START_CONTEXT = 2, 128  # the check at the start of a run: a few rows of the first step's micro-batches


def start_of_run_check(
    model: torch.nn.Module, recipe: Recipe, batches: list[MicroBatch], opt: Nexus, ex: Execution
) -> list[str]:
    """The cheap form of `nexus-eval optim check` that `train` runs before a Nexus run's first step, on the initial
    weights and a few rows of the first step's micro-batches, in the run's precision and inner loop: its lines, and
    a warning naming the setting to change when the fidelity or the share is too low. Under DDP/FSDP it says how
    to run the full check instead (a whole float64 copy of a sharded model is what the run avoids)."""
    dtype = "bf16" if ex.mixed_precision else "fp32"
    command = f"nexus-eval optim check {recipe.path or recipe.name} --dtype {dtype}"
    if ex.distributed:
        lines = [f"Nexus fidelity is not checked under {ex.strategy}: run `{command}` on one device first"]
        if dtype == "bf16" and opt.inner_loop == "exact":
            lines.append(
                f"warning: the exact inner loop under bf16 rounds inner steps below bf16's resolution away (`{command} "
                f"--inner-loop exact` measures it); optim.inner_loop linear under --strategy ddp computes them"
            )
        return lines
    few = [
        MicroBatch(mb.source, mb.inputs[:START_ROWS, :START_CONTEXT], mb.labels[:START_ROWS, :START_CONTEXT])
        for mb in batches
    ]
    report = fidelity_report(recipe, model, few, opt.inner_lr_ratio, dtype, opt.inner_loop, ex.device, 0)
    line = (
        f"Nexus at the initial weights ({dtype}, {opt.inner_loop} inner loop): second-order share "
        f"{report.second_order_share:.3f}, fidelity {report.fidelity:.4f} (`{command}` measures after a warm-up)"
    )
    return [line] + [f"warning: {w}" for w in report.warnings()]
