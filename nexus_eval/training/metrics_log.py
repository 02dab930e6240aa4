"""metrics.jsonl: one MetricsRow per eval interval, appended as training goes; cut back to the resumed step."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from nexus_eval.io import write_text_atomic
from nexus_eval.schema import MetricsRow

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    def __init__(self, run_dir: Path):
        self.path = run_dir / METRICS_FILE

    def append(self, row: MetricsRow) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")

    def truncate(self, step: int) -> None:
        """Drop the lines after `step` (and a line half-written by a kill), atomically: the resumed run rewrites
        them."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", math.inf) <= step:
                kept.append(line)
        write_text_atomic(self.path, "".join(f"{line}\n" for line in kept))


class Throughput:
    """Training tokens per second since the last reset (the log's tokens_per_s, the progress bar's rate)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def rate(self) -> float:
        return self.tokens / max(1e-9, time.perf_counter() - self.start)
