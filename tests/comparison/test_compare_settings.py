"""CompareSettings: validation with one-line messages, and the record stored as results["settings"]."""

from __future__ import annotations

import dataclasses

import pytest

from nexus_eval.comparison import CompareOptions, CompareSettings
from nexus_eval.errors import ComparisonError


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "--limit must be positive"),
        ({"bootstrap_resamples": 99}, "bootstrap resamples must be ≥ 100"),
        ({"mode": "unmatched"}, "mode must be 'match-loss' or 'interpolate'"),
        ({"tolerance": -0.1}, "--tolerance must be ≥ 0"),
        ({"level": 0.9}, "confidence level must be 0.95"),
        ({"tolerance_auto": True, "mode": "interpolate"}, "--tolerance auto: only with --match-loss"),
        ({"curve_points": 1}, "--curve-points must be ≥ 2"),
        ({"curve_losses": [5.0, float("nan")]}, "--curve-losses: expected positive finite losses"),
    ],
)
def test_bad_settings_are_comparison_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ComparisonError, match=message):
        CompareSettings(**kwargs)


def test_record_of_resolved_settings() -> None:
    given = CompareSettings(tasks=["b", "a"], targets=[4.5], limit=10, bootstrap_resamples=500)
    assert given.tasks == ("b", "a") and given.targets == (4.5,)  # lists given are stored as tuples
    record = given.resolved(targets=[4.5, 5.0, 4.5], tasks=["b", "a"], series=["x", "y"], loss_unit="bpb").to_record()
    assert record == {
        "mode": "match-loss",
        "tolerance": 0.01,
        "targets": [5.0, 4.5],
        "suite": None,  # tasks were given
        "tasks": ["b", "a"],
        "backend": "hf",
        "limit": 10,
        "num_fewshot": None,
        "bootstrap_resamples": 500,
        "bootstrap_seed": 0,
        "level": 0.95,
        "reference": "x",  # the first series resolved
        "series": ["x", "y"],
        "loss_unit": "bpb",
        "tolerance_auto": False,
        "curve_points": 8,
        "curve_losses": None,
    }
    by_suite = CompareSettings(mode="interpolate", suite="gsm8k").resolved(
        targets=[3.0], tasks=["gsm8k"], series=["adamw", "nexus"], loss_unit="nats"
    )
    assert by_suite.to_record()["suite"] == "gsm8k" and by_suite.to_record()["tolerance"] is None


def test_settings_and_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CompareSettings().mode = "interpolate"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        CompareOptions().show = False  # type: ignore[misc]
