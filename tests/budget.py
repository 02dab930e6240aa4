"""The test suite's time budget, as a pytest plugin (README "Development"): with NEXUS_TEST_BUDGET_S set (CI sets it),
a session that runs longer fails after its summary, naming its slowest tests, so that a regression is seen in the
run that brings it, not when CI outgrows its limit. Without the variable it only keeps the durations."""

from __future__ import annotations

import os
import time

import pytest

BUDGET_ENV = "NEXUS_TEST_BUDGET_S"
SLOWEST = 15  # as many as `--durations=15` prints


class Budget:
    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.started = time.monotonic()
        self.took: dict[str, float] = {}  # test id → setup + call + teardown seconds (xdist: as workers report)
        self.over: float | None = None

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.took[report.nodeid] = self.took.get(report.nodeid, 0.0) + report.duration

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        elapsed = time.monotonic() - self.started
        if self.seconds is not None and elapsed > self.seconds:
            self.over = elapsed
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.over is None:
            return
        terminalreporter.section("test-time budget", red=True)
        terminalreporter.line(
            f"the suite took {self.over:.0f} s, over its budget of {self.seconds:g} s ({BUDGET_ENV}); "
            f"the {SLOWEST} slowest tests:",
            red=True,
        )
        for nodeid, seconds in sorted(self.took.items(), key=lambda kv: -kv[1])[:SLOWEST]:
            terminalreporter.line(f"{seconds:8.1f} s  {nodeid}")


def pytest_configure(config: pytest.Config) -> None:
    text = os.environ.get(BUDGET_ENV, "").strip()
    try:
        seconds = float(text) if text else None
    except ValueError:
        raise pytest.UsageError(f"{BUDGET_ENV}={text!r} is not a number of seconds") from None
    config.pluginmanager.register(Budget(seconds), "nexus-test-budget")
