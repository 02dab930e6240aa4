"""`nexus-eval geometry`: measure checkpoints (or every checkpoint of runs) and print one table row each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nexus_eval.checkpoints import resolve_checkpoints
from nexus_eval.display import checkpoint_label, console
from nexus_eval.geometry.measure import geometry


def _number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _mean_offdiag(matrix: list[list[float]]) -> float | None:
    values = [row[j] for i, row in enumerate(matrix) for j in range(len(row)) if i != j]
    return sum(values) / len(values) if values else None


def measure_and_show(paths: list[Path], data_dir: Path, as_json: bool = False, **settings: Any) -> list[dict[str, Any]]:
    """geometry() of every checkpoint the paths stand for (run dirs expand to their checkpoints), then a rich table
    (or the result dicts as JSON on stdout)."""
    from rich import box
    from rich.table import Table

    results = [geometry(ckpt, data_dir, progress=not as_json, **settings) for ckpt in resolve_checkpoints(paths)]
    if as_json:
        print(json.dumps(results, indent=2))
        return results
    title = f"Geometry ({', '.join(results[0]['sources'])})" if results else "Geometry"
    table = Table(box=box.SIMPLE_HEAD, title=title)
    table.add_column("checkpoint", overflow="fold", min_width=16)
    # Σ_{i≠j}(1 − cos) is S(S−1)(1 − cos): no column of its own
    for column in ("step", "loss", "cos", "λ", "RHS", "MSD", "dist", "xloss"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in results:
        table.add_row(
            checkpoint_label(r["checkpoint"]),
            str(r["step"]) if r["step"] is not None else "—",
            _number(r["heldout_loss"]),
            _number(r["grad_cos_mean_offdiag"]),
            _number(r["hessian_lambda"]),
            _number(r["theorem_rhs"]),
            _number(r["minima_msd"]),
            _number(r["minima_pairwise_mean"]),
            _number(_mean_offdiag(r["cross_loss"])),
        )
    shown = console()
    shown.print(table)
    shown.print(
        "loss: held-out loss from nexus.json; cos: mean off-diagonal cosine of per-source gradients; RHS: "
        "Σ(1−cos)·G²/(K·λ²), λ the dominant Hessian eigenvalue; MSD: mean ‖θ−θ_k*‖² after each per-source "
        "fine-tune; dist: mean ‖θ_i*−θ_j*‖; xloss: mean loss of source j at source i's endpoint (i≠j).",
        style="dim",
    )
    return results
