"""Model presets: plain `transformers.LlamaForCausalLM`, so checkpoints load in HF, lm-eval and vLLM unchanged."""

from __future__ import annotations

from typing import Any

from nexus_eval.errors import RecipeError

# head_dim 32 for the CPU presets: small enough to train in minutes, and a size vLLM's CPU attention accepts.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 344},
    "small": {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 688},
    "130m": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 2048},
    "1b": {"hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 16, "intermediate_size": 5632},
}


def llama_config(preset: str, vocab_size: int, context: int, bos_id: int, eos_id: int, **overrides: Any) -> Any:
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise RecipeError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    shape = {**PRESETS[preset], **overrides}
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=context,
        num_key_value_heads=shape["num_attention_heads"],
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        rms_norm_eps=1e-5,
        **shape,
    )


def build_model(config: Any, seed: int) -> Any:
    """Same seed → same initial weights, so AdamW and Nexus runs start from one point."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def count_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def causal_lm_loss(model: Any, inputs: Any, targets: Any) -> Any:
    """Mean next-token cross-entropy (nats/token); targets are the inputs shifted by one, already aligned.
    The one training loss: the trainer and the geometry measurements both differentiate this."""
    import torch.nn.functional as F

    device = next(model.parameters()).device
    # use_cache=False: otherwise transformers fills a KV cache on every training forward, which costs memory, and
    # under torch.compile of each decoder layer its per-layer state forces a recompile per layer until dynamo's
    # recompile limit leaves the last layers eager (seen on an H200: 12 layers, limit 8)
    logits = model(input_ids=inputs.to(device), use_cache=False).logits
    return F.cross_entropy(logits.float().flatten(0, 1), targets.to(device).flatten())
