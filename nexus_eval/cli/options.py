"""What several commands share: option declarations (declared once, with one help text), flag parsing helpers, and
the error boundary that turns a NexusError into one line on stderr and its exit code."""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from nexus_eval.display import is_log_output, quiet_library_progress
from nexus_eval.errors import NexusError
from nexus_eval.signals import Interrupted, interruption, signals_raise

# ---- evaluation settings: `eval` and `compare` ---------------------------------------------------------------------
Tasks = Annotated[str | None, typer.Option("--tasks", help="Comma-separated task names (or task YAML paths)")]
Suite = Annotated[
    str | None, typer.Option("--suite", help="Task suite: reasoning, reasoning-real, gsm8k, ood, pairs, all")
]
Backend = Annotated[str, typer.Option("--backend", help="hf (transformers, CPU) or vllm")]
Limit = Annotated[int | None, typer.Option("--limit", help="First N items per task (a smoke test, not a result)")]
NumFewshot = Annotated[int | None, typer.Option("--num-fewshot", help="Override the tasks' few-shot count")]
BatchSize = Annotated[
    str | None, typer.Option("--batch-size", help="N or auto (default: 8 for hf; vllm gets every request at once)")
]
Device = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N, mps (default: a GPU if any)")]
Devices = Annotated[
    str | None,
    typer.Option(
        "--devices",
        help="Spread the checkpoints that need evaluating over one worker per device, in contiguous shares of the "
        "series: cuda:0,cuda:1 (cpu may repeat), or auto (every visible CUDA device); not with --device or with "
        "tensor/data parallelism. Results and table as with one engine",
    ),
]
ModelArgs = Annotated[
    str | None,
    typer.Option(
        "--model-args",
        help="More arguments of lm-eval's model class, k=v,k2=v2 (vllm: tensor_parallel_size, gpu_memory_utilization, "
        "max_model_len, dtype, ...; hf: dtype, attn_implementation, ...); part of the cache key",
    ),
]
EvalCache = Annotated[Path, typer.Option("--cache", help="Cache dir of eval result JSONs")]
LossCache = Annotated[Path, typer.Option("--cache", help="Cache dir of measured losses (JSON per checkpoint)")]

# ---- common to most commands -----------------------------------------------------------------------------------------
DataDir = Annotated[Path, typer.Option("--data", help="Data dir built by `nexus-eval data build`")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result dicts as JSON instead of a table")]
LeaderboardDir = Annotated[Path, typer.Option("--dir", help="Leaderboards directory")]


def batch_size_value(text: str | None) -> int | str | None:
    """--batch-size: a positive number or "auto"; None (not given) stays None (the backend's default)."""
    if text is None or text == "auto":
        return text
    if not text.isdigit() or int(text) <= 0:
        raise NexusError(f"--batch-size {text}: expected a positive number or auto")
    return int(text)


def comma_list(text: str | None) -> list[str] | None:
    """`a, b,c` → ["a", "b", "c"]; None (flag not given) stays None."""
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def float_list(text: str | None, flag: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise NexusError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def stop_children() -> None:
    """Stop the child processes still running (a data loader worker, an engine whose owner could not unwind)."""
    from nexus_eval.evaluation.engine import child_pids, stop_processes

    stop_processes(sorted(child_pids()))


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn NexusError (and its per-stage subclasses) into `error: message` on stderr and the error's exit code,
    instead of a traceback; Ctrl-C or SIGTERM into one line and exit 130 or 143, no child process left
    (nexus_eval/signals.py). In a log (display.is_log_output) or with --quiet, the libraries' bars are off from the
    start."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if is_log_output() or kwargs.get("quiet"):
            # Before any stage runs: a model loaded before a progress display opens (a training resume) would
            # otherwise draw transformers' "Loading weights" bar into the log.
            quiet_library_progress()
        try:
            with signals_raise():
                return fn(*args, **kwargs)
        except KeyboardInterrupt as e:  # Interrupted (SIGINT/SIGTERM), or Ctrl-C before our handler was installed
            stopped = interruption(e) or Interrupted(signal.SIGINT)
        except Exception as e:
            if (found := interruption(e)) is None:  # an error of its own
                if isinstance(e, NexusError):
                    typer.echo(f"error: {e}", err=True)
                    raise typer.Exit(e.exit_code) from None
                raise
            stopped = found  # a signal a library turned into its own error: still what ended the command
        stop_children()
        typer.echo(stopped.line(), err=True)
        raise typer.Exit(stopped.exit_code) from None

    return wrapper
