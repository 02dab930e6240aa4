"""nexus-eval: same pretraining loss, different downstream? AdamW vs Nexus, loss-matched, through lm-eval.

One package per pipeline stage, lower stages never importing higher ones:

    optim (torch only) · errors, io, display, schema, checkpoints (shared by every stage)
    data → training → evaluation → comparison → cli
           tasks ───↗    geometry ───↗

`nexus_eval.evaluate(...)` is the Python API mirroring `nexus-eval eval`; it is imported on first use, so that
`import nexus_eval.optim` (or any lower stage) does not pull in the evaluation stack.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "evaluate"]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from nexus_eval.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'nexus_eval' has no attribute {name!r}")
