"""Loss matching: the right pairs, the tolerance, the no-pair message, seeds, and exact linear interpolation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nexus_eval.comparison import CompareOptions, CompareSettings, compare
from nexus_eval.comparison.match import bracket, load_runs, match, seed_groups
from nexus_eval.errors import NexusError
from tests.comparison.synthetic_runs import OTHER_TASK, block_evaluation, make_run, write_result


def two_runs(tmp_path: Path, targets: tuple[float, ...] = (5.0, 4.5)) -> list[Path]:
    adamw = make_run(tmp_path, "adamw", 0, [5.2, 4.99, 4.6, 4.495, 4.1], targets, crossings={1: 5.0, 3: 4.5})
    nexus = make_run(tmp_path, "nexus", 0, [5.1, 4.995, 4.7, 4.48, 4.2], targets, crossings={1: 5.0, 3: 4.5})
    return [adamw, nexus]


def test_picks_the_crossing_checkpoints_and_respects_tolerance(tmp_path: Path) -> None:
    runs = load_runs(two_runs(tmp_path))
    pairs, unmatched = match(runs, tolerance=0.01)
    assert [(p.target, p.reference.checkpoints[0].path.name, p.candidate.checkpoints[0].path.name) for p in pairs] == [
        (5.0, "ckpt-000020", "ckpt-000020")
    ]
    assert pairs[0].delta_loss == pytest.approx(0.005)
    assert [u.target for u in unmatched] == [4.5]  # Nexus' 4.48 is 0.02 from 4.5: farther than 0.01
    assert "tiny-nexus-s0 has no checkpoint within 0.01 of it (nearest 4.4800)" in unmatched[0].reason

    pairs, unmatched = match(runs, tolerance=0.02)
    assert [p.target for p in pairs] == [5.0, 4.5] and not unmatched
    assert pairs[1].delta_loss == pytest.approx(-0.015)


def test_prefers_the_smallest_gap_among_neighbours_of_the_target(tmp_path: Path) -> None:
    # AdamW's nearest checkpoint to 4.0 is just above it (4.004); its crossing one (3.985) matches Nexus' 3.984 better.
    adamw = make_run(tmp_path, "adamw", 1, [4.5, 4.004, 3.985, 3.7], crossings={2: 4.0})
    nexus = make_run(tmp_path, "nexus", 1, [4.4, 4.05, 3.984, 3.8], crossings={2: 4.0})
    (pair,), _ = match(load_runs([adamw, nexus]), tolerance=0.02, targets=[4.0])
    assert pair.reference.loss == 3.985 and pair.candidate.loss == 3.984


def test_a_pair_sits_within_the_tolerance_of_its_target(tmp_path: Path) -> None:
    """A Trainer-style series (checkpoints 80 steps apart) against AdamW at tolerance 0.05: at 2.5773 the two sides
    that are 0.02 apart (2.6517, 2.6712) are 0.07 and 0.09 above it, so they stand for 2.6712, not for 2.5773."""
    adamw = make_run(tmp_path, "adamw", 0, [3.1, 2.85, 2.6517, 2.55, 2.45])
    trainer = make_run(tmp_path, "nexus", 0, [3.2, 2.9, 2.6712, 2.50, 2.40], steps=[80, 160, 240, 320, 400])
    pairs, unmatched = match(load_runs([adamw, trainer]), tolerance=0.05, targets=[2.6712, 2.5773])
    assert [(p.target, p.reference.loss, p.candidate.loss) for p in pairs] == [(2.6712, 2.6517, 2.6712)]
    assert [u.target for u in unmatched] == [2.5773]
    assert "tiny-nexus-s0 has no checkpoint within 0.05 of it (nearest 2.5000)" in unmatched[0].reason


def test_two_sides_within_the_tolerance_of_the_target_but_not_of_each_other_are_no_pair(tmp_path: Path) -> None:
    """Each side 0.008 from 5.0 on opposite sides: both stand for 5.0, yet they are 0.016 apart, more than 0.01 (4.7
    pairs, so that the comparison has a pair at all)."""
    adamw = make_run(tmp_path, "adamw", 0, [5.3, 5.008, 4.703])
    nexus = make_run(tmp_path, "nexus", 0, [5.2, 4.992, 4.698])
    pairs, unmatched = match(load_runs([adamw, nexus]), tolerance=0.01, targets=[5.0, 4.7])
    assert [p.target for p in pairs] == [4.7] and [u.target for u in unmatched] == [5.0]
    assert "Δloss -0.01600" in unmatched[0].reason
    pairs, _ = match(load_runs([adamw, nexus]), tolerance=0.016, targets=[5.0, 4.7])
    assert [p.target for p in pairs] == [5.0, 4.7] and pairs[0].delta_loss == pytest.approx(-0.016)


def test_a_checkpoint_pairs_under_one_target_at_most(tmp_path: Path) -> None:
    """Two targets closer than twice the tolerance: the checkpoints within it of both stand for the nearer target only
    (one comparison is not counted twice); the other target is unmatched."""
    adamw = make_run(tmp_path, "adamw", 0, [3.2, 2.985, 2.8])
    nexus = make_run(tmp_path, "nexus", 0, [3.3, 2.988, 2.7])
    pairs, unmatched = match(load_runs([adamw, nexus]), tolerance=0.03, targets=[3.0, 2.96])
    assert [(p.target, p.reference.loss, p.candidate.loss) for p in pairs] == [(3.0, 2.985, 2.988)]
    assert [u.target for u in unmatched] == [2.96]
    assert "nearer target 3" in unmatched[0].reason
    # Equidistant from two targets: the higher one, reached first in training.
    pairs, _ = match(load_runs([adamw, nexus]), tolerance=0.03, targets=[3.0, 2.97])
    assert [p.target for p in pairs] == [3.0]


def test_the_checkpoint_written_for_a_target_pairs_only_within_the_tolerance(tmp_path: Path) -> None:
    """Written at the crossing of 4.0 but measured far below it (3.80, 3.81): it does not stand for 4.0."""
    adamw = make_run(tmp_path, "adamw", 0, [4.5, 4.2, 3.80], crossings={2: 4.0})
    nexus = make_run(tmp_path, "nexus", 0, [4.49, 4.3, 3.81], crossings={2: 4.0})
    pairs, unmatched = match(load_runs([adamw, nexus]), tolerance=0.02, targets=[4.5, 4.0])
    assert [p.target for p in pairs] == [4.5]
    assert [u.target for u in unmatched] == [4.0] and "within 0.02 of it" in unmatched[0].reason


def test_no_pair_names_the_closest_pair_and_the_fix(tmp_path: Path) -> None:
    adamw = make_run(tmp_path, "adamw", 0, [5.0, 4.5, 4.0])
    nexus = make_run(tmp_path, "nexus", 0, [4.9, 4.43, 3.8])
    with pytest.raises(NexusError) as err:
        match(load_runs([adamw, nexus]), tolerance=0.01, targets=[4.5])
    message = str(err.value)
    assert str(adamw / "ckpt-000020") in message and str(nexus / "ckpt-000020") in message
    assert "Δloss -0.07000" in message and "target_losses" in message and "\n" not in message


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    adamw, nexus = two_runs(tmp_path)
    with pytest.raises(NexusError, match="no nexus run"):
        seed_groups(load_runs([adamw]))
    with pytest.raises(NexusError, match="no run directories"):
        load_runs([])
    with pytest.raises(NexusError, match="nope"):
        load_runs([tmp_path / "nope"])
    with pytest.raises(NexusError, match="--tolerance"):
        match(load_runs([adamw, nexus]), tolerance=-1)


def test_seeds_pair_with_their_own_seed_and_a_parent_dir_expands(tmp_path: Path) -> None:
    for seed in (0, 1):
        make_run(tmp_path, "adamw", seed, [5.0 + seed, 4.5 + seed], crossings={0: 5.0 + seed})
        make_run(tmp_path, "nexus", seed, [5.003 + seed, 4.501 + seed], crossings={0: 5.0 + seed})
    pairs, _ = match(load_runs([tmp_path]), tolerance=0.01, targets=[5.0, 6.0])
    assert sorted(
        (p.target, p.seed, p.reference.checkpoints[0].run_id, p.candidate.checkpoints[0].run_id) for p in pairs
    ) == [
        (5.0, "0", "tiny-adamw-s0", "tiny-nexus-s0"),
        (6.0, "1", "tiny-adamw-s1", "tiny-nexus-s1"),
    ]


def test_default_targets_are_the_recipes_else_a_grid_over_the_common_range(tmp_path: Path) -> None:
    adamw = make_run(tmp_path / "a", "adamw", 0, [5.0, 4.0, 3.0])
    nexus = make_run(tmp_path / "a", "nexus", 0, [5.5, 4.5, 3.5])
    pairs, unmatched = match(load_runs([adamw, nexus]), tolerance=1.0)
    assert sorted({p.target for p in pairs} | {u.target for u in unmatched}) == [3.5, 3.875, 4.25, 4.625, 5.0]
    adamw = make_run(tmp_path / "b", "adamw", 0, [5.0, 4.49, 4.0], targets=(4.5,))
    nexus = make_run(tmp_path / "b", "nexus", 0, [5.5, 4.495, 3.5], targets=(4.5,))
    pairs, unmatched = match(load_runs([adamw, nexus]), tolerance=0.01)
    assert [p.target for p in pairs] == [4.5] and not unmatched


def test_bracket_weights_reproduce_the_target(tmp_path: Path) -> None:
    (run,) = load_runs([make_run(tmp_path, "adamw", 0, [5.0, 4.6, 4.2, 4.3, 3.9])])
    side = bracket(run, 4.5)
    assert [c.loss for c in side.checkpoints] == [4.6, 4.2]
    assert sum(w * c.loss for w, c in zip(side.weights, side.checkpoints, strict=True)) == pytest.approx(4.5)
    assert bracket(run, 3.0) is None and bracket(run, 6.0) is None


def test_interpolation_is_exact_on_linear_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Metrics and item scores linear in loss: interpolated values at the targets are the line's values exactly."""
    block_evaluation(monkeypatch)  # everything must come from the cache
    cache = tmp_path / "cache"
    slopes = np.linspace(-0.2, -0.05, 40)

    def item_scores(loss: float, bonus: float) -> np.ndarray:
        return 1.2 + slopes * loss + bonus

    run_dirs = []
    for optimizer, losses, bonus in (("adamw", [5.3, 4.7, 4.1, 3.6], 0.0), ("nexus", [5.1, 4.9, 4.2, 3.3], 0.03)):
        run = make_run(tmp_path / "runs", optimizer, 0, losses)
        run_dirs.append(run)
        for ckpt, loss in zip(sorted(run.glob("ckpt-*")), losses, strict=True):
            write_result(cache, ckpt, OTHER_TASK, item_scores(loss, bonus))
    results = compare(
        run_dirs,
        CompareSettings(mode="interpolate", targets=(4.8, 4.0), tasks=(OTHER_TASK,), bootstrap_resamples=200),
        CompareOptions(cache_dir=cache, out=tmp_path / "out", show=False, progress=False),
    )
    rows = {r["target"]: r for r in results["tasks"]}
    for target in (4.8, 4.0):
        assert rows[target]["reference"] == pytest.approx(item_scores(target, 0.0).mean(), abs=1e-12)
        assert rows[target]["candidate"] == pytest.approx(item_scores(target, 0.03).mean(), abs=1e-12)
        assert rows[target]["mean"] == pytest.approx(0.03, abs=1e-12)  # item-by-item difference, exact too
    assert all(p["delta_loss"] == 0 for p in results["pairs"])
