"""The suite's time budget (tests/budget.py): a run over NEXUS_TEST_BUDGET_S fails and names its slowest tests; one
within it, or without the variable, passes as before."""

from __future__ import annotations

import pytest

from tests.conftest import REPO_ROOT

SLOW_SUITE = """
import time

def test_quick():
    pass

def test_slow_one():
    time.sleep(0.3)
"""


def run_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.RunResult:
    """SLOW_SUITE in a pytest of its own (a subprocess: the budget is read when pytest starts) with the plugin."""
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))  # `-p tests.budget` imports this checkout's plugin
    pytester.makepyfile(test_suite=SLOW_SUITE)
    return pytester.runpytest_subprocess("-p", "tests.budget")


@pytest.mark.parametrize(("budget", "fails"), [("0.1", True), ("600", False), (None, False)])
def test_a_suite_over_its_budget_fails_naming_its_slowest_tests(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, budget: str | None, fails: bool
) -> None:
    if budget is None:
        monkeypatch.delenv("NEXUS_TEST_BUDGET_S", raising=False)
    else:
        monkeypatch.setenv("NEXUS_TEST_BUDGET_S", budget)
    result = run_suite(pytester, monkeypatch)
    result.assert_outcomes(passed=2)  # every test passed: only the budget can fail the run
    assert result.ret == (pytest.ExitCode.TESTS_FAILED if fails else pytest.ExitCode.OK)
    said = "\n".join(result.outlines)
    if fails:
        assert "over its budget of 0.1 s (NEXUS_TEST_BUDGET_S)" in said, said
        listed = [line for line in result.outlines if line.strip().endswith(("::test_slow_one", "::test_quick"))]
        assert listed[0].endswith("test_suite.py::test_slow_one"), said  # the slowest first
    else:
        assert "over its budget" not in said and "test-time budget" not in said


def test_a_budget_that_is_not_a_number_is_one_line(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXUS_TEST_BUDGET_S", "ten minutes")
    result = run_suite(pytester, monkeypatch)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "NEXUS_TEST_BUDGET_S='ten minutes' is not a number of seconds" in "\n".join(result.errlines)
