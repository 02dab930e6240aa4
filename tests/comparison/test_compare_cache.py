"""compare() takes eval results only under the full cache key: a result for another eval seed, task version or task
definition (YAML hash) never enters a comparison, even when it is the newest file in the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nexus_eval.comparison import CompareOptions, CompareSettings, compare
from nexus_eval.evaluation import DEFAULT_SEED
from nexus_eval.schema import CompareResults
from tests.comparison.synthetic_runs import TASK, EvaluationBlocked, block_evaluation, make_study, write_result

# One key field changed at a time: what a stale or foreign cache entry differs in.
STALE = {
    "seed": {"seed": DEFAULT_SEED + 1},
    "task_version": {"task_version": 99.0},
    "yaml_hash": {"yaml_hash": "0" * 64},
}


@pytest.fixture(autouse=True)
def no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    block_evaluation(monkeypatch)


def run_compare(tmp_path: Path, runs: list[Path], out: str) -> CompareResults:
    settings = CompareSettings(tasks=(TASK,), bootstrap_resamples=200)
    options = CompareOptions(cache_dir=tmp_path / "cache", out=tmp_path / out, show=False, progress=False)
    return compare(runs, settings, options)


def write_stale(cache: Path, runs: list[Path], stale: dict[str, object]) -> int:
    """A newer entry with perfect scores beside every checkpoint's current one, differing only in `stale`."""
    written = 0
    for run in runs:
        for ckpt in sorted(run.glob("ckpt-*")):
            write_result(cache, ckpt, TASK, np.ones(150), created="2030-01-01T00:00:00", **stale)
            written += 1
    return written


@pytest.mark.parametrize("field", sorted(STALE))
def test_entries_under_another_key_do_not_change_the_results(tmp_path: Path, field: str) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache", seeds=(0,), bonus=1.0)
    before = run_compare(tmp_path, runs, "before")
    assert write_stale(tmp_path / "cache", runs, STALE[field]) == 10
    after = run_compare(tmp_path, runs, "after")
    assert after == before  # pairs, statistics and the metric-vs-loss points of every checkpoint
    assert all(p["value"] < 1.0 for p in after["points"])  # no perfect score taken from the stale entries
    for name in ("results.json", "report.md"):
        assert (tmp_path / "after" / name).read_bytes() == (tmp_path / "before" / name).read_bytes()


@pytest.mark.parametrize("field", sorted(STALE))
def test_a_pair_with_only_stale_results_goes_to_the_evaluator(tmp_path: Path, field: str) -> None:
    runs = make_study(tmp_path / "runs", tmp_path / "cache", seeds=(0,), tasks=())  # runs, no current results
    write_stale(tmp_path / "cache", runs, STALE[field])
    with pytest.raises(EvaluationBlocked, match="ckpt-000020"):
        run_compare(tmp_path, runs, "out")
