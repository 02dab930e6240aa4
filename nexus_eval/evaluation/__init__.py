"""Evaluation: checkpoints × lm-eval tasks × backend → cached results with per-item scores, and held-out loss of any
checkpoint. Modules: runner (evaluate), cache (the only reader/writer of result files), backends (hf, vllm), loss
(`nexus-eval loss`), show (the eval table). Depends on data, training (held-out loss), tasks; never on comparison.
"""

from nexus_eval.evaluation.runner import (
    DEFAULT_SEED,
    EvalSettings,
    cached_results,
    evaluate,
    evaluate_with_status,
)

__all__ = ["DEFAULT_SEED", "EvalSettings", "cached_results", "evaluate", "evaluate_with_status"]
