"""Ctrl-C and SIGTERM during any command, or in an `eval --devices` worker: the signal raises Interrupted, so the
process unwinds (every `with` closes: the eval engine stops, temp files are removed) and exits 128 + the signal number
(130 for SIGINT, 143 for SIGTERM). cli.options.one_line_errors then stops any child process left and prints one line;
evaluation.devices' worker exits with the code, which its parent reads.

Every write is atomic (io.atomic_path), so an interrupted command leaves complete files or none, and the next run
resumes from what is there (training from its last checkpoint, eval from its cache).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A signal asked us to stop. A KeyboardInterrupt, so that libraries that clean up on Ctrl-C do so for SIGTERM
    too, and no `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def line(self) -> str:
        name = signal.Signals(self.signum).name
        return f"error: interrupted by {name}; finished work is kept, run the same command again to resume"


_received: list[int] = []  # the signal that arrived while signals_raise was active (at most one: then ignored)


def received_signal() -> int | None:
    """The signal number that interrupted the block of the last signals_raise, if one did."""
    return _received[0] if _received else None


def interruption(error: BaseException) -> Interrupted | None:
    """The Interrupted that ended a signals_raise block, if a signal did: `error` itself, or, when a library caught it
    and raised an error of its own (safetensors' get_tensor: "ValueError: could not determine the shape ..."; a caught
    OSError turned into a CheckpointError), one for the signal that arrived. None: an error of its own."""
    if isinstance(error, Interrupted):
        return error
    signum = received_signal()
    return None if signum is None else Interrupted(signum)


def _raise_once(signum: int, frame: FrameType | None) -> None:
    # A second signal while we clean up (engine shutdown takes seconds) must not abort the cleanup half way.
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_IGN)
    _received.append(signum)
    raise Interrupted(signum)


@contextmanager
def signals_raise() -> Iterator[None]:
    """While the block runs (main thread only), SIGINT and SIGTERM raise Interrupted; the old handlers after."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {sig: signal.signal(sig, _raise_once) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
