"""Tiny checkpoints for the evaluation tests: random-init, or trained to recite chosen answers to chosen prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nexus_eval.checkpoints import save_checkpoint
from nexus_eval.training.model import build_model, llama_config

CONTEXT = 512  # GSM8k questions zero-shot fit; the tiny preset has head_dim 32, which vLLM's CPU attention accepts


def tiny_checkpoint(path: Path, tokenizer: Any, seed: int = 0, vocab_size: int | None = None) -> Path:
    """A random-init "tiny" preset LlamaForCausalLM saved like the trainer saves one."""
    config = llama_config("tiny", vocab_size or len(tokenizer), CONTEXT, tokenizer.bos_token_id, tokenizer.eos_token_id)
    model = build_model(config, seed)
    meta = {"run_id": path.parent.name, "optimizer": "adamw", "seed": seed, "step": 0, "tokens_seen": 0}
    return save_checkpoint(path, model, tokenizer, meta, None)


def reciting_checkpoint(path: Path, tokenizer: Any, pairs: list[tuple[str, str]], max_steps: int = 400) -> Path:
    """A tiny model trained until greedy decoding of each prompt yields its continuation (loss on continuations only).

    Near-certain next tokens make greedy decoding robust to the small numeric differences between backends.
    """
    config = llama_config("tiny", len(tokenizer), CONTEXT, tokenizer.bos_token_id, tokenizer.eos_token_id)
    model = build_model(config, seed=0)
    rows = []
    for prompt, continuation in pairs:
        context_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        target_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        rows.append((context_ids + target_ids, [-100] * len(context_ids) + target_ids))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [tokenizer.eos_token_id] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices this small: a second thread costs more in synchronization than it gives
    try:
        for _ in range(max_steps):
            loss = model(input_ids=input_ids, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if loss.item() < 0.005:  # mean next-token probability > 0.995
                break
    finally:
        torch.set_num_threads(threads)
    model.eval()
    meta = {"run_id": path.parent.name, "optimizer": "adamw", "seed": 0, "step": 0, "final_loss": loss.item()}
    return save_checkpoint(path, model, tokenizer, meta, None)
