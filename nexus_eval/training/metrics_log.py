"""metrics.jsonl: one MetricsRow per eval interval, appended as training goes; cut back to the resumed step.
What a step costs goes with it: tokens/s, MFU (when the device's peak FLOP/s is known) and peak memory."""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from nexus_eval.io import write_text_atomic
from nexus_eval.schema import MetricsRow
from nexus_eval.training.flops import device_peak_flops, mfu, model_flops_per_token

METRICS_FILE = "metrics.jsonl"
MIB = 1 << 20
PROC_STATUS = Path("/proc/self/status")
# The keys of a metrics row that are measurements of the machine, not of the training: they differ between two
# runs of the same recipe and seed (tests comparing loss curves leave them out).
MEASURED_KEYS = frozenset({"tokens_per_s", "mfu", "peak_memory_mib"})


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


class StepCost(TypedDict):
    """The cost fields of a MetricsRow (schema.MetricsRow names the same keys)."""

    peak_memory_mib: float
    mfu: NotRequired[float]


def peak_memory_bytes(device: Any) -> int:
    """Peak memory of this process so far: torch.cuda.max_memory_allocated on a CUDA device, else the peak RSS."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process' peak resident memory since it started its program. Linux: VmHWM of /proc/self/status, because
    getrusage's ru_maxrss also counts the parent's RSS at the fork before exec (a child of a 600 MiB process reports
    600 MiB before it allocates anything: the old benchmark's identical peaks). Elsewhere: ru_maxrss."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


@dataclass(frozen=True)
class CostMeter:
    """MFU and peak memory of a training run on `devices` devices of `device`'s kind (peak_flops: one device's
    peak FLOP/s; None: unknown, no MFU)."""

    flops_per_token: int
    peak_flops: float | None
    device: Any  # torch.device of the model's parameters
    devices: int = 1

    @classmethod
    def for_model(cls, model: Any, context: int, peak_flops: float | None = None, devices: int = 1) -> CostMeter:
        """The meter of `model` trained at sequence length `context`; `peak_flops` overrides the device table."""
        device = next(model.parameters()).device
        return cls(model_flops_per_token(model, context), device_peak_flops(device, peak_flops), device, devices)

    def measure(self, tokens_per_s: float) -> StepCost:
        cost: StepCost = {"peak_memory_mib": round(peak_memory_bytes(self.device) / MIB, 1)}
        if self.peak_flops is not None:
            cost["mfu"] = round(mfu(tokens_per_s, self.flops_per_token, self.peak_flops, self.devices), 4)
        return cost

    def describe(self, tokens_per_s: float) -> str:
        """For the progress bar: "MFU 41.3% 1.2 GiB" (no MFU when the peak is unknown)."""
        cost = self.measure(tokens_per_s)
        shown = f"MFU {cost['mfu']:.1%} " if "mfu" in cost else ""
        return f"{shown}{cost['peak_memory_mib'] / 1024:.1f} GiB"
