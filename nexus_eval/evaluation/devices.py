"""A checkpoint series spread over several devices: `nexus-eval eval --devices cuda:0,cuda:1` (or `auto`: every
visible CUDA device).

The checkpoints that still lack a result are dealt to one worker per device in contiguous shares, in series order
(so each worker's engine swaps weights between neighbouring checkpoints, as one engine would). Each worker is a child
process (multiprocessing "spawn": a CUDA context does not survive a fork) that runs `evaluate_with_status` on its
share through its own engine on its device, writing into the same cache under the same per-checkpoint locks. The
parent then reads every result back from the cache and returns the rows a one-engine run returns, in its order.

    parent: checks, hashes, deals ──► worker cuda:0: ckpt-1, ckpt-2 (one engine) ─┐
                                  └─► worker cuda:1: ckpt-3, ckpt-4 (one engine) ─┴─► cache ──► parent: the table

The cache key holds the device's kind (backends.device_kind), not its index, so the results of every worker are the
ones a later one-engine `eval` or `compare` finds; the provenance of each result names the device it ran on. Devices
of one kind only: results computed on a CPU and on a GPU differ in the last digits.

Failures follow the one-engine rules: a worker that fails (its engine died or hung, or the worker process itself was
killed) ends the command with that one error (exit 3 for an engine, a bad checkpoint's own exit code otherwise); the
other workers are stopped (SIGTERM: they unwind, closing their engines; SIGKILL after engine.STOP_GRACE_S), results
already written stay cached, and no process is left: while workers run this process adopts their orphaned
descendants (Linux PR_SET_CHILD_SUBREAPER), so that the processes of a killed worker's engine are stopped too. A
signal to this process (Ctrl-C, SIGTERM) stops the workers the same way on its way out (nexus_eval/signals.py).

Progress: the workers send their stage changes through a pipe; the parent shows one bar per worker (in a log, one
line per stage), each labelled with its device.
"""

from __future__ import annotations

import ctypes
import sys
import traceback
from dataclasses import dataclass, replace
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from nexus_eval.display import ProgressBar, checkpoint_label, progress_display, quiet_library_progress
from nexus_eval.errors import EngineError, EvalError, NexusError
from nexus_eval.evaluation import backends
from nexus_eval.evaluation.engine import STOP_GRACE_S, child_pids, how_ended, stop_processes
from nexus_eval.evaluation.runner import (
    EvalSettings,
    cache_slots,
    checked_inputs,
    checkpoint_hash,
    evaluate_with_status,
)
from nexus_eval.schema import EvalResult
from nexus_eval.signals import Interrupted, interruption, signals_raise

AUTO = "auto"
# vLLM arguments with which one engine spans several devices itself: a worker per device would fight it for them.
PARALLEL_ARGS = ("tensor_parallel_size", "data_parallel_size")
POLL_S = 0.5  # how often the parent looks at its workers when none has spoken: a death is noticed within this
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


# ---- what a worker gets and what it says ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Share:
    """One worker's part of the series: its device and the checkpoints it evaluates, in series order."""

    label: str  # the device, with #N when the device is named more than once (cpu#1, cpu#2): prefixes its lines
    device: str
    checkpoints: tuple[Path, ...]


@dataclass(frozen=True)
class Stage:
    """A worker's progress: results done so far (None: unchanged) and what it does now (None: unchanged)."""

    completed: int | None
    description: str | None


@dataclass(frozen=True)
class Finished:
    """A worker's share is done: (checkpoint, task, from the cache) per result, in the order a one-engine run
    returns them."""

    rows: tuple[tuple[str, str, bool], ...]


@dataclass(frozen=True)
class Failed:
    """A worker's share failed with this error (re-raised by the parent as it is: same line, same exit code)."""

    error: NexusError


Message = Stage | Finished | Failed


class ForwardedProgress:
    """The part of a progress display ProgressBar drives, sending each update to the parent instead of drawing it."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def update(self, task: int, completed: float | None = None, description: str | None = None, **fields: Any) -> None:
        self.conn.send(Stage(None if completed is None else int(completed), description))


# ---- the worker (a child process) -----------------------------------------------------------------------------------
def worker_settings(settings: EvalSettings, device: str) -> EvalSettings:
    """The settings of the worker on `device`. vLLM takes no device argument: a worker on one GPU sees only that GPU
    (CUDA_VISIBLE_DEVICES, set by run_worker) and runs on its "cuda"."""
    if settings.backend == "vllm" and device.startswith("cuda:"):
        return replace(settings, device="cuda")
    return replace(settings, device=device)


def run_worker(share: Share, settings: EvalSettings, hashes: dict[Path, str], conn: Connection) -> None:
    """A worker's life: evaluate its share through one engine, say how it went, exit (128 + signal when stopped)."""
    with signals_raise():  # a stop from the parent (or a signal to the group) unwinds the engine, then exits
        _run_share(share, settings, hashes, conn)


def _run_share(share: Share, settings: EvalSettings, hashes: dict[Path, str], conn: Connection) -> None:
    import os

    if settings.backend == "vllm" and share.device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = share.device.partition(":")[2]  # before anything touches CUDA
    elif share.device.startswith("cuda:"):
        import torch

        # What a library puts on "the current GPU" (a CUDA context, a stray tensor) then lands on this worker's GPU,
        # not on cuda:0 beside another worker's model.
        torch.cuda.set_device(share.device)
    quiet_library_progress()  # the parent draws the progress; bars of lm-eval here would cut through its display
    chosen = worker_settings(settings, share.device)
    total = len(share.checkpoints) * len(chosen.task_specs())
    bar = ProgressBar(ForwardedProgress(conn), 0, total, counts=True)  # type: ignore[arg-type]  (the part it uses)
    try:
        rows = evaluate_with_status(list(share.checkpoints), chosen, hashes=hashes, bar=bar)
        conn.send(Finished(tuple((result["checkpoint"], result["task"], cached) for result, cached in rows)))
    except Interrupted as stopped:
        sys.exit(stopped.exit_code)  # stopped by the parent (or a signal to the group): it says why
    except Exception as e:
        if (stopped := interruption(e)) is not None:  # a signal a library turned into its own error: still a stop
            sys.exit(stopped.exit_code)
        if isinstance(e, NexusError):
            conn.send(Failed(e))
            return
        traceback.print_exc()  # a bug: its traceback in the log, and the run ends as if the engine had died
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        conn.send(Failed(EngineError(f"{settings.backend} worker on {share.label} failed: {reason} (traceback above)")))


# ---- the parent ------------------------------------------------------------------------------------------------------
def parse_devices(text: str, backend: str) -> tuple[str, ...]:
    """--devices: `auto` (every visible CUDA device) or a comma-separated list; EvalError naming the flag."""
    if text.strip() == AUTO:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise EvalError("--devices auto: no CUDA device here; name the devices (e.g. --devices cpu,cpu)")
        return tuple(f"cuda:{index}" for index in range(count))
    devices = tuple(part.strip() for part in text.split(",") if part.strip())
    if not devices:
        raise EvalError(f"--devices {text!r}: expected auto or devices separated by commas (cuda:0,cuda:1; cpu,cpu)")
    return devices


def check_devices(devices: tuple[str, ...], settings: EvalSettings) -> None:
    """EvalError naming --devices and the value at fault, before anything is loaded or cached."""
    shown = ",".join(devices)
    if settings.device is not None:
        raise EvalError(f"--devices {shown}: give --device or --devices, not both")
    for name, value in settings.model_args:
        if name in PARALLEL_ARGS and isinstance(value, int) and value > 1:
            raise EvalError(
                f"--devices {shown} with --model-args {name}={value}: the engine spans the devices itself; "
                "give one or the other"
            )
    if len({backends.device_kind(device) for device in devices}) > 1:
        raise EvalError(f"--devices {shown}: devices of one kind only (results on a CPU and a GPU differ slightly)")
    repeated = sorted({d for d in devices if devices.count(d) > 1 and backends.device_kind(d) != "cpu"})
    if repeated:
        raise EvalError(f"--devices {shown}: {repeated[0]} named twice (one worker per device; cpu may repeat)")
    for device in devices:
        indexed_gpu = settings.backend == "vllm" and device.startswith("cuda:")
        # vLLM's own check knows its platform, not GPU indices: an indexed GPU is checked as torch sees it
        backends.check_device("hf" if indexed_gpu else settings.backend, device, "--devices")
        if indexed_gpu and backends.available_device("vllm") != "cuda":
            raise EvalError(f"--devices {device}: the installed vLLM runs on {backends.available_device('vllm')} only")


def checked_devices(text: str, settings: EvalSettings) -> tuple[str, ...]:
    """The devices --devices names, checked against the other settings (EvalError naming the flag otherwise)."""
    devices = parse_devices(text, settings.backend)
    check_devices(devices, settings)
    return devices


def deal(checkpoints: list[Path], devices: tuple[str, ...]) -> list[Share]:
    """Contiguous shares in series order, sizes differing by at most one; no worker without a checkpoint."""
    count = min(len(devices), len(checkpoints))
    size, extra = divmod(len(checkpoints), count) if count else (0, 0)
    shares, start = [], 0
    for index, device in enumerate(devices[:count]):
        end = start + size + (index < extra)
        numbered = sum(1 for d in devices[:count] if d == device) > 1
        label = f"{device}#{devices[: index + 1].count(device)}" if numbered else device
        shares.append(Share(label, device, tuple(checkpoints[start:end])))
        start = end
    return shares


def adopt_orphans(on: bool) -> None:
    """Make this process the parent of any orphaned descendant (Linux), so that a killed worker's engine processes
    stay ours to stop. Elsewhere nothing: a killed worker's engine may then outlive it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


@dataclass
class Worker:
    """The parent's view of one worker: its process, its end of the pipe, its bar, and how it ended."""

    share: Share
    process: Any  # multiprocessing's SpawnProcess
    conn: Connection
    bar: ProgressBar
    stage: str = ""  # what it said it does now: names the checkpoint and tasks when it dies
    outcome: Finished | Failed | None = None
    closed: bool = False  # the pipe ended: nothing more will come

    def receive(self) -> None:
        """Every message the worker has sent so far."""
        while not self.closed and self.outcome is None:
            try:
                if not self.conn.poll():
                    return
                message: Message = self.conn.recv()
            except (EOFError, OSError):  # the worker's end closed: it exited, or died mid-message
                self.closed = True
                return
            if isinstance(message, Stage):
                if message.description is not None:
                    self.stage = message.description
                    self.bar.describe(f"{self.share.label} {message.description}")
                if message.completed is not None:
                    self.bar.update(message.completed)
            else:
                self.outcome = message

    def death(self, backend: str) -> EngineError:
        """The error of a worker that ended without saying how its share went."""
        where = self.stage or f"{checkpoint_label(self.share.checkpoints[0])}: starting"
        how = how_ended(self.process.exitcode)
        return EngineError(
            f"{where}: {backend} worker on {self.share.label} (pid {self.process.pid}) {how}; "
            "nothing cached for its unfinished checkpoints"
        )


def run_workers(
    shares: list[Share], settings: EvalSettings, hashes: dict[Path, str], progress: bool
) -> dict[str, list[tuple[str, bool]]]:
    """Each share through its worker, until all are done or one fails (then the others are stopped and its error
    raised); checkpoint → (task, from the cache) in the order its worker returned them."""
    context = get_context("spawn")
    specs = settings.task_specs()
    before = child_pids()
    adopt_orphans(True)
    workers: list[Worker] = []
    try:
        with progress_display(progress) as display:
            for share in shares:
                total = len(share.checkpoints) * len(specs)
                bar = ProgressBar(display, display.add_task(f"eval {share.label}", total=total, info=""), total, True)
                bar.update(0)
                receiving, sending = context.Pipe(duplex=False)
                process = context.Process(
                    target=run_worker, args=(share, settings, hashes, sending), name=f"nexus-eval {share.label}"
                )
                process.start()
                sending.close()  # the worker holds the only writing end: its exit closes the pipe
                workers.append(Worker(share, process, receiving, bar))
            failure = watch(workers, settings.backend)
    finally:
        # Normal end, a failure or a signal: every worker and whatever it started is gone before we go on.
        stop_workers(workers)
        stop_processes(sorted(child_pids() - before))  # a killed worker's engine processes, adopted meanwhile
        adopt_orphans(False)
    if failure is not None:
        raise failure
    done: dict[str, list[tuple[str, bool]]] = {}
    for worker in workers:
        assert isinstance(worker.outcome, Finished)
        for ckpt, task, cached in worker.outcome.rows:
            done.setdefault(ckpt, []).append((task, cached))
    return done


def stop_workers(workers: list[Worker]) -> None:
    """SIGTERM the workers that have not finished (they unwind, closing their engines), wait for every worker to end
    (engine.STOP_GRACE_S), SIGKILL those still there. Through multiprocessing, which reaps its own children."""
    for worker in workers:
        if not isinstance(worker.outcome, Finished) and worker.process.is_alive():
            worker.process.terminate()
    for worker in workers:
        worker.process.join(STOP_GRACE_S)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()


def watch(workers: list[Worker], backend: str) -> NexusError | None:
    """Wait until every worker finished (None) or the first one failed (its error)."""
    pending = list(workers)
    while pending:
        wait([w.conn for w in pending if not w.closed] + [w.process.sentinel for w in pending], POLL_S)
        for worker in list(pending):
            worker.receive()
            if worker.outcome is None and worker.process.exitcode is not None:
                worker.receive()  # what it sent just before it ended
                if worker.outcome is None:
                    return worker.death(backend)
            if isinstance(worker.outcome, Failed):
                return worker.outcome.error
            if isinstance(worker.outcome, Finished):
                pending.remove(worker)
    return None


def evaluate_on_devices(
    checkpoints: list[Path],
    settings: EvalSettings,
    devices: str,
    progress: bool = True,
    hashes: dict[Path, str] | None = None,
) -> list[tuple[EvalResult, bool]]:
    """What evaluate_with_status returns (the same rows, in the same order), the checkpoints that lack results
    spread over one worker per device (--devices: `auto` or a comma-separated list)."""
    chosen = checked_devices(devices, settings)
    # The workers' results carry the device's kind in their key: read them, and check the rest, with that kind.
    kind = replace(settings, device=backends.device_kind(chosen[0]))
    ckpts, specs = checked_inputs(checkpoints, kind)
    known = {ckpt: checkpoint_hash(ckpt, hashes) for ckpt in ckpts}
    before = {ckpt: cache_slots(known[ckpt], specs, kind) for ckpt in ckpts}
    todo = [ckpt for ckpt in ckpts if any(slot.result is None for slot in before[ckpt])]
    done = run_workers(deal(todo, chosen), settings, known, progress) if todo else {}
    rows: list[tuple[EvalResult, bool]] = []
    for ckpt in ckpts:
        if str(ckpt) not in done:  # all cached before the workers started
            rows.extend((slot.cached_for(ckpt), True) for slot in before[ckpt])
            continue
        slots = {slot.spec.name: slot for slot in cache_slots(known[ckpt], specs, kind)}
        for task, cached in done[str(ckpt)]:
            slot = slots[task]
            if slot.result is None:  # written by the worker, gone before we read it (removed by hand?)
                raise EvalError(f"{ckpt}: {task}: the worker's result is not in the cache {settings.cache_dir}")
            rows.append((slot.cached_for(ckpt), cached))
    return rows


def evaluate_series(
    checkpoints: list[Path],
    settings: EvalSettings,
    progress: bool = True,
    hashes: dict[Path, str] | None = None,
    devices: str | None = None,
) -> list[tuple[EvalResult, bool]]:
    """evaluate_with_status through one engine (devices None), else spread over the devices (evaluate_on_devices)."""
    if devices is None:
        return evaluate_with_status(checkpoints, settings, progress, hashes)
    return evaluate_on_devices(checkpoints, settings, devices, progress, hashes)
