"""nexus-eval: same pretraining loss, different downstream? AdamW vs Nexus, loss-matched, through lm-eval."""

__version__ = "0.1.0"

# `nexus_eval.evaluate(...)` is the Python API mirroring `nexus-eval eval`. Binding the function after importing its
# module keeps the name pointing at the function (the module stays reachable as sys.modules["nexus_eval.evaluate"]).
from nexus_eval.evaluate import evaluate  # noqa: E402

__all__ = ["__version__", "evaluate"]
