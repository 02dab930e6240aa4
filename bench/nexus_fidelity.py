"""Nexus at scale: the tables of docs/training.md "Nexus at scale", from one command.

1. Fidelity, cos(S, S_fp64): how faithfully a precision computes S = P − N, the part of Nexus' pseudo-gradient that
   carries the method (training/fidelity.py), at a recipe's inner step and at the 1b recipe's per-element step
   (γ/√#params = 1.8e-8), in fp32 and in bf16 autocast over fp32 master weights (CPU autocast stands in for CUDA's):
   - before: the arithmetic Nexus had until this table was made, Δ = θ0 − θ_K recovered from the float32 weights
     after the inner steps were applied to them one by one (written out below, as a reference loop);
   - exact: today's exact inner loop (u accumulated apart, θ_k = θ0 − γ·u_k);
   - linear: today's linear inner loop (weights at θ0, inner gradients corrected by Hessian-vector products).
2. Second-order share ‖S‖/‖N‖ against the inner lr γ for several presets: S ∝ γ to first order, so each preset has
   a slope share/γ, and a recipe's inner_lr_ratio follows from the share it should have (fidelity.TARGET_SHARE).

Everything is `nexus-eval optim check`'s computation (same seed, warm-up and micro-batches: its figures for one
setting are the row's), sharing the warm-up and the float64 reference between rows.
    python bench/nexus_fidelity.py [--data data] [--json results/nexus_fidelity.json]
    python bench/nexus_fidelity.py --fidelity-recipe train/130m.toml --share-presets tiny,small,130m
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nexus_eval.training import fidelity  # noqa: E402
from nexus_eval.training.model import causal_lm_loss, count_params  # noqa: E402
from nexus_eval.training.parallel import Execution  # noqa: E402
from nexus_eval.training.recipe import load_recipe  # noqa: E402
from nexus_eval.training.schedule import MicroBatch  # noqa: E402

CPU = torch.device("cpu")
ONE_B_PER_ELEMENT_STEP = 1.8e-8  # γ/√N of train/1b.toml at inner_lr_ratio 1 (lr 6e-4, 1.14B parameters)


def execution(bf16: bool) -> Execution:
    return Execution(CPU, "none", 0, 1, 0, False, 0, False, bf16=bf16)


def before_pseudo_gradient(model: torch.nn.Module, batches: list[MicroBatch], gamma: float, bf16: bool) -> torch.Tensor:
    """The old arithmetic: θ ← θ − γ g/‖g‖ applied to the float32 weights, P = (θ0 − θ_K)/γ."""
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    for mb in batches:
        with execution(bf16).autocast():
            loss = causal_lm_loss(model, mb.inputs, mb.labels)
        grads = torch.autograd.grad(loss, params)
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(grads))))
        with torch.no_grad():
            torch._foreach_sub_(params, torch._foreach_div(list(grads), norm / gamma))
    with torch.no_grad():
        out = torch.cat([((s - p) / gamma).double().flatten() for s, p in zip(start, params, strict=True)])
        torch._foreach_copy_(params, start)
    return out


def fidelity_rows(recipe_path: Path, data: Path, settings: fidelity.CheckSettings) -> list[dict]:
    recipe = load_recipe(recipe_path)
    model, batches = fidelity.prepare(recipe, data, settings, CPU)
    params = count_params(model)
    wide = model.to(torch.float64)
    ratios = {
        "recipe": recipe.optim.inner_lr_ratio,
        "1b-like": ONE_B_PER_ELEMENT_STEP * math.sqrt(params) / recipe.optim.lr,
    }
    n64 = fidelity.pseudo_gradient(wide, batches, fidelity.NEGLIGIBLE_GAMMA, "exact", execution(False))
    references = {
        name: fidelity.pseudo_gradient(wide, batches, ratio * recipe.optim.lr, "exact", execution(False)) - n64
        for name, ratio in ratios.items()
    }
    model = wide.to(torch.float32)
    rows = []
    for dtype in ("fp32", "bf16"):
        ex = execution(dtype == "bf16")
        first = {
            loop: fidelity.pseudo_gradient(model, batches, fidelity.NEGLIGIBLE_GAMMA, loop, ex)
            for loop in ("exact", "linear")
        }
        for name, ratio in ratios.items():
            gamma = ratio * recipe.optim.lr
            s64 = references[name]
            row = {
                "recipe": str(recipe_path),
                "preset": recipe.model.preset,
                "params": params,
                "step": name,
                "inner_lr_ratio": ratio,
                "gamma": gamma,
                "per_element_step": gamma / math.sqrt(params),
                "second_order_share": float(s64.norm() / n64.norm()),
                "dtype": dtype,
            }
            t = time.perf_counter()
            row["before"] = fidelity.agreement(
                before_pseudo_gradient(model, batches, gamma, dtype == "bf16") - first["exact"], s64
            )[0]
            for loop in ("exact", "linear"):
                s = fidelity.pseudo_gradient(model, batches, gamma, loop, ex) - first[loop]
                row[loop] = fidelity.agreement(s, s64)[0]
            row["seconds"] = time.perf_counter() - t
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def share_rows(
    recipe_path: Path, data: Path, presets: list[str], ratios: list[float], settings: fidelity.CheckSettings
) -> list[dict]:
    base = load_recipe(recipe_path)
    rows = []
    for preset in presets:
        recipe = dataclasses.replace(base, model=dataclasses.replace(base.model, preset=preset))
        model, batches = fidelity.prepare(recipe, data, settings, CPU)
        wide = model.to(torch.float64)
        n64 = fidelity.pseudo_gradient(wide, batches, fidelity.NEGLIGIBLE_GAMMA, "exact", execution(False))
        for ratio in ratios:
            gamma = ratio * recipe.optim.lr
            s64 = fidelity.pseudo_gradient(wide, batches, gamma, "exact", execution(False)) - n64
            share = float(s64.norm() / n64.norm())
            row = {
                "preset": preset,
                "params": count_params(model),
                "lr": recipe.optim.lr,
                "inner_lr_ratio": ratio,
                "gamma": gamma,
                "second_order_share": share,
                "share_per_gamma": share / gamma,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def markdown(fid: list[dict], share: list[dict]) -> str:
    out = [
        "| preset, step | γ | γ/√N | ‖S‖/‖N‖ | dtype | before | exact | linear |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in fid:
        out.append(
            f"| {r['preset']}, {r['step']} (ratio {r['inner_lr_ratio']:.3g}) | {r['gamma']:.3g} | "
            f"{r['per_element_step']:.2g} | {r['second_order_share']:.3g} | {r['dtype']} | {r['before']:.3f} | "
            f"{r['exact']:.4f} | {r['linear']:.4f} |"
        )
    out += ["", "| preset | params | inner_lr_ratio | γ | ‖S‖/‖N‖ | share/γ |", "|---|---|---|---|---|---|"]
    for r in share:
        out.append(
            f"| {r['preset']} | {r['params'] / 1e6:.1f}M | {r['inner_lr_ratio']:g} | {r['gamma']:.3g} | "
            f"{r['second_order_share']:.3g} | {r['share_per_gamma']:.3g} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--fidelity-recipes", default="train/130m.toml", help="comma-separated; '' for none")
    parser.add_argument("--share-recipe", type=Path, default=Path("train/tiny.toml"), help="lr and K of the share rows")
    parser.add_argument("--share-presets", default="tiny,small", help="comma-separated; '' for none")
    parser.add_argument("--share-ratios", default="1,3,10,30")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    settings = fidelity.CheckSettings(rows=args.rows, context=args.context, warmup_steps=args.warmup_steps)
    fid = [row for r in args.fidelity_recipes.split(",") if r for row in fidelity_rows(Path(r), args.data, settings)]
    presets = [p for p in args.share_presets.split(",") if p]
    ratios = [float(r) for r in args.share_ratios.split(",")]
    share = share_rows(args.share_recipe, args.data, presets, ratios, settings) if presets else []
    print(markdown(fid, share))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "fidelity": fid,
                    "share": share,
                    "settings": vars(args)
                    | {"data": str(args.data), "share_recipe": str(args.share_recipe), "json": str(args.json)},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
