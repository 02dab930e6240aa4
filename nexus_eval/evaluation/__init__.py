"""Evaluation: checkpoints × lm-eval tasks × backend → cached results with per-item scores, and held-out loss of any
checkpoint. Modules: runner (evaluate), cache (the only reader/writer of result and sample files), samples (per-item
records from lm-eval's logged samples), backends (hf, vllm), loss (`nexus-eval loss`, the measured-loss cache),
devices (a series spread over one worker per device: `eval --devices`), show (the eval table), show_samples
(`nexus-eval samples`). Depends on data, training (held-out loss), tasks; never on comparison.
"""

from nexus_eval.evaluation.backends import parse_model_args
from nexus_eval.evaluation.cache import read_samples
from nexus_eval.evaluation.devices import checked_devices, evaluate_on_devices, evaluate_series
from nexus_eval.evaluation.runner import (
    DEFAULT_SEED,
    EvalSettings,
    cached_results,
    evaluate,
    evaluate_with_status,
)

__all__ = [
    "DEFAULT_SEED",
    "EvalSettings",
    "cached_results",
    "checked_devices",
    "evaluate",
    "evaluate_on_devices",
    "evaluate_series",
    "evaluate_with_status",
    "parse_model_args",
    "read_samples",
]
