"""Curves (comparison.curves): each seed interpolated in held-out loss, bands over seeds at a grid of losses, Δ per
seed; the report's curve tables and PNG; geometry over seeds; older results render as before."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nexus_eval.comparison import CompareOptions, CompareSettings, check, compare
from nexus_eval.comparison.curves import OOD, OOD_METRIC, TASK, SeedCurve, default_grid, loss_curves
from nexus_eval.comparison.geometry_seeds import geometry_over_seeds
from nexus_eval.comparison.report import render_markdown
from nexus_eval.comparison.stats import t_quantile_975
from nexus_eval.schema import CompareResults, MetricPoint
from tests.comparison.synthetic_runs import TASK as TASK_NAME
from tests.comparison.synthetic_runs import EvaluationBlocked, block_evaluation, make_run, make_study, write_result

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMMITTED = Path(__file__).resolve().parents[2] / "leaderboards"


# ---- interpolation, grid and bands on hand-computable inputs --------------------------------------------------


def test_a_seed_is_interpolated_linearly_in_loss_and_never_extrapolated() -> None:
    curve = SeedCurve.of([(4.0, 0.6), (5.0, 0.2), (5.0, 0.4), (4.5, 0.5)])  # two checkpoints at 5.0: averaged
    assert list(curve.losses) == [4.0, 4.5, 5.0] and curve.at(5.0) == pytest.approx(0.3)
    assert curve.at(4.75) == pytest.approx(0.4) and curve.at(4.25) == pytest.approx(0.55)
    assert curve.at(5.01) is None and curve.at(3.99) is None
    assert curve.nearest(5.04, 0.05) == pytest.approx(0.3) and curve.nearest(5.06, 0.05) is None


def test_the_default_grid_lies_inside_the_range_every_seed_covers() -> None:
    assert default_grid((4.12345, 5.98765), 3) == pytest.approx([5.9876, 5.0556, 4.1235])
    assert default_grid((5.0, 5.00001), 8) == [] and default_grid(None, 8) == []


def points(series: str, seed: int, values: dict[float, float]) -> list[MetricPoint]:
    return [
        {
            "series": series,
            "seed": seed,
            "run_id": f"{series}-s{seed}",
            "checkpoint": f"{series}-s{seed}/c{loss}",
            "loss": loss,
            "task": TASK_NAME,
            "metric": "acc,none",
            "value": value,
        }
        for loss, value in values.items()
    ]


def t_band(values: list[float]) -> tuple[float, float, float]:
    mean = float(np.mean(values))
    half = t_quantile_975(len(values) - 1) * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def test_bands_over_seeds_and_the_delta_paired_by_seed() -> None:
    # Reference seeds: 0.2 → 0.6 and 0.3 → 0.7 from loss 5 to 4; candidate seeds 0.1 and 0.14 above their own seed.
    pts = points("adamw", 0, {5.0: 0.2, 4.0: 0.6}) + points("adamw", 1, {5.0: 0.3, 4.0: 0.7})
    pts += points("nexus", 0, {5.0: 0.3, 4.0: 0.7}) + points("nexus", 1, {5.0: 0.44, 4.0: 0.84})
    pts += points("nexus", 2, {4.6: 0.9, 4.2: 0.9})  # covers only 4.6..4.2: left out elsewhere, never extrapolated
    curves = loss_curves([TASK_NAME], pts, [], ["adamw", "nexus"], {TASK_NAME: True}, points=3, given=[4.5, 4.8])
    assert [b["series"] for b in curves["bands"]] == ["adamw", "nexus"]
    (row_48, row_45) = curves["deltas"]
    assert (row_48["loss"], row_45["loss"]) == (4.8, 4.5)  # the given grid, highest first
    reference = t_band([0.28, 0.38])  # each seed at 4.8
    assert [row_48["reference"][k] for k in ("mean", "low", "high")] == pytest.approx(reference)
    assert row_48["candidate"]["n"] == 2 and row_45["candidate"]["n"] == 3  # the third seed only inside its range
    delta = t_band([0.1, 0.14])
    assert [row_48["delta"][k] for k in ("mean", "low", "high")] == pytest.approx(delta) and row_48["delta"]["n"] == 2
    assert row_48["kind"] == TASK and row_48["metric"] == "acc,none" and row_48["higher_is_better"]
    # The default grid spans only what every seed covers: 4.6..4.2 here (the third Nexus seed).
    default = loss_curves([TASK_NAME], pts, [], ["adamw", "nexus"], {}, points=3)
    assert [p["loss"] for p in default["bands"][0]["points"]] == pytest.approx([4.6, 4.4, 4.2])


def test_one_seed_has_a_mean_but_no_band() -> None:
    pts = points("adamw", 0, {5.0: 0.2, 4.0: 0.6}) + points("nexus", 0, {5.0: 0.3, 4.0: 0.7})
    curves = loss_curves([TASK_NAME], pts, [], ["adamw", "nexus"], {}, points=2)
    first = curves["deltas"][0]
    assert first["delta"]["mean"] == pytest.approx(0.1) and first["delta"]["low"] is None
    assert first["reference"]["n"] == 1 and first["reference"]["high"] is None


def test_geometry_over_seeds_per_target_and_measure() -> None:
    rows: list[dict[str, Any]] = [
        {"target": 5.0, "seed": "0", "series": "nexus", "reference_grad_cos": 0.1, "candidate_grad_cos": 0.2,
         "reference_minima_msd": 0.001, "candidate_minima_msd": 0.002},
        {"target": 5.0, "seed": "1", "series": "nexus", "reference_grad_cos": 0.3, "candidate_grad_cos": 0.5,
         "reference_minima_msd": 0.003, "candidate_minima_msd": None},
        {"target": 4.5, "seed": "0", "series": "nexus", "reference_grad_cos": 0.1, "candidate_grad_cos": 0.1,
         "reference_minima_msd": 0.001, "candidate_minima_msd": 0.001},
    ]  # fmt: skip
    found = geometry_over_seeds(rows)
    assert [(r["target"], r["measure"]) for r in found] == [(5.0, "grad_cos"), (5.0, "minima_msd")]  # 4.5: one seed
    cos, msd = found
    assert [cos["delta"][k] for k in ("mean", "low", "high")] == pytest.approx(t_band([0.1, 0.2]))
    assert cos["reference"]["mean"] == pytest.approx(0.2) and cos["candidate"]["mean"] == pytest.approx(0.35)
    assert msd["candidate"]["n"] == 1 and msd["delta"]["n"] == 1 and msd["delta"]["low"] is None


# ---- compare end to end on synthetic runs -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CompareResults, Path]]:
    """compare() on three seeds per optimizer, every checkpoint with a cached result, with a leaderboard."""
    root = tmp_path_factory.mktemp("curves")
    with pytest.MonkeyPatch.context() as patch:
        block_evaluation(patch)
        runs = make_study(root / "runs", root / "cache", seeds=(0, 1, 2), bonus=0.5, items=60)
        options = CompareOptions(
            cache_dir=root / "cache", out=root / "out", leaderboard="board", leaderboard_dir=root / "lb",
            show=False, progress=False,
        )  # fmt: skip
        results = compare(runs, CompareSettings(tasks=(TASK_NAME,), bootstrap_resamples=200), options)
        yield results, root


def test_compare_writes_curves_for_every_task_and_ood_domain(study: tuple[CompareResults, Path]) -> None:
    results, root = study
    curves = results["loss_curves"]
    families = {(b["kind"], b["name"], b["series"]) for b in curves["bands"]}
    panels = ((TASK, TASK_NAME), (OOD, "legal"), (OOD, "poetry"))
    assert families == {(kind, name, series) for kind, name in panels for series in ("adamw", "nexus")}
    assert all(len(b["points"]) == 8 and all(p["n"] == 3 for p in b["points"]) for b in curves["bands"])
    assert len(curves["deltas"]) == 3 * 8 and len(curves["ood_points"]) == 6 * 5 * 2
    ood = [d for d in curves["deltas"] if d["kind"] == OOD]
    assert all(d["metric"] == OOD_METRIC and d["delta"]["mean"] == pytest.approx(-0.05) for d in ood)  # 0.45 vs 0.5
    task = [d for d in curves["deltas"] if d["kind"] == TASK]
    assert all(d["delta"]["low"] is not None and d["delta"]["n"] == 3 for d in task)
    assert json.loads((root / "out" / "results.json").read_text())["loss_curves"] == curves


def test_the_report_tables_and_png(study: tuple[CompareResults, Path]) -> None:
    _, root = study
    assert (root / "out" / "loss_curves.png").read_bytes().startswith(PNG_MAGIC)
    report = (root / "out" / "report.md").read_text()
    downstream = report.index("## Downstream vs held-out loss (curves)")
    figure = report.index("![score and OOD loss vs held-out loss: mean and 95% t band over seeds](loss_curves.png)")
    assert downstream < figure < report.index("## OOD loss vs held-out loss (curves)")
    assert "Δ 95% CI, t over seeds" in report[downstream:] and "OOD loss, nats/token (↓ better)" in report


def test_the_leaderboard_links_its_curves_png_and_checks(study: tuple[CompareResults, Path]) -> None:
    _, root = study
    board = root / "lb"
    assert (board / "board.curves.png").read_bytes().startswith(PNG_MAGIC)
    assert "](board.curves.png)" in (board / "board.md").read_text()
    assert check(board) == []


def test_the_geometry_over_seeds_table(study: tuple[CompareResults, Path]) -> None:
    results, _ = study
    rows = [
        {"target": 5.0, "seed": str(s), "series": "nexus", "reference_grad_cos": 0.1 * s, "candidate_grad_cos": 0.2,
         "reference_minima_msd": 0.001, "candidate_minima_msd": 0.0005}
        for s in range(3)
    ]  # fmt: skip
    md = render_markdown({**results, "geometry": rows, "geometry_seeds": geometry_over_seeds(rows)}, "geometry")
    seeds, per_pair = md.index("## Geometry across seeds"), md.index("## Geometry\n")
    assert seeds < per_pair
    (cos,) = [line for line in md[seeds:per_pair].splitlines() if "grad cos" in line]
    assert "0.1000 [" in cos and "+0.1000" in cos and "3 seeds" in cos  # AdamW mean 0.1, Δ 0.2 − 0.1


def test_results_without_the_new_sections_render_as_before(study: tuple[CompareResults, Path]) -> None:
    results, _ = study
    old = {k: v for k, v in results.items() if k not in ("noise", "loss_curves", "geometry_seeds")}
    md = render_markdown(old, "old")  # type: ignore[arg-type]
    assert "(curves)" not in md and "## Noise" not in md and "Geometry across seeds" not in md


def test_the_committed_leaderboards_still_match_their_json() -> None:
    """The committed leaderboards/*.json predate the noise and curves: they must render exactly as committed."""
    assert check(COMMITTED) == []


def test_evaluate_all_evaluates_checkpoints_outside_the_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block_evaluation(monkeypatch)
    runs = [make_run(tmp_path / "runs", opt, 0, [5.5, 4.5], crossings={1: 4.5}) for opt in ("adamw", "nexus")]
    for run in runs:  # only the paired checkpoints (at 4.5) have results
        write_result(tmp_path / "cache", sorted(run.glob("ckpt-*"))[-1], TASK_NAME, np.ones(4))
    settings = CompareSettings(tasks=(TASK_NAME,), targets=(4.5,), bootstrap_resamples=200)
    options = CompareOptions(cache_dir=tmp_path / "cache", out=tmp_path / "out", show=False, progress=False)
    assert compare(runs, settings, options)["pairs"]
    with pytest.raises(EvaluationBlocked, match="ckpt-000010"):
        compare(runs, settings, CompareOptions(**{**options.__dict__, "evaluate_all": True}))
