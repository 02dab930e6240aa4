"""The exceptions the CLI turns into a one-line `error: ...` and an exit code, instead of a traceback.

NexusError is bad input or a state the user must fix; its message names the file or flag at fault. Each stage raises
its own subclass, so that a caller (or a later exit-code scheme) can tell which stage refused. Every class carries
its exit code; the CLI reads it in one place (nexus_eval.cli.app.one_line_errors).
"""

from __future__ import annotations


class NexusError(Exception):
    """Bad input or a state the user must fix: the message names the file or flag at fault."""

    exit_code = 2  # a usage error, as argparse/click report bad arguments


class DataError(NexusError):
    """A data build or data directory that cannot be built or read."""


class RecipeError(NexusError):
    """A training recipe (train/*.toml) or training flag that is invalid, or a training run that cannot go on."""


class CheckpointError(NexusError):
    """A checkpoint or run directory that is missing, incomplete or unreadable."""


class EvalError(NexusError):
    """A task, backend or evaluation setting that cannot be used."""


class ComparisonError(NexusError):
    """Runs that cannot be compared (no pair, mixed data builds, ...) or malformed compare results."""


class EngineError(EvalError):
    """The evaluation engine died (killed, out of memory) or hung past --timeout: not bad input, a failed run that a
    retry may pass. Its own exit code, so that CI can tell it from a usage error."""

    exit_code = 3
