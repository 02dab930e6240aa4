"""nexus-eval: same pretraining loss, different downstream? AdamW vs Nexus, loss-matched, through lm-eval."""

from typing import Any

__version__ = "0.1.0"


def evaluate(*args: Any, **kwargs: Any) -> Any:
    """Python API mirroring `nexus-eval eval` (see nexus_eval.evaluate.evaluate)."""
    from nexus_eval.evaluate import evaluate as run

    return run(*args, **kwargs)
