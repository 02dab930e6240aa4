"""Model FLOPs per token and device peaks (nexus_eval.training.flops), and the cost fields of metrics rows."""

from __future__ import annotations

import pytest

from nexus_eval.errors import RecipeError
from nexus_eval.training.flops import (
    PEAK_TFLOPS,
    TERA,
    ModelShape,
    device_peak_flops,
    flops_per_token,
    gpu_key,
    mfu,
    model_flops_per_token,
    parse_peak,
)

# hidden 8, 2 layers of 2 heads (head size 4), MLP 16, vocab 32, context 4
SHAPE = ModelShape(hidden=8, layers=2, heads=2, kv_heads=2, intermediate=16, vocab=32)


def tiny_llama(attn_implementation: str = "eager"):  # noqa: ANN201 - LlamaForCausalLM
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=16, max_position_embeddings=4, tie_word_embeddings=True,
        attn_implementation=attn_implementation,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def test_flops_per_token_equals_a_hand_count() -> None:
    # per layer: q, k, v, o 4 × 8·8 = 256 weights, gate/up/down 3 × 8·16 = 384 → 640; 2 layers 1280; head 32·8 = 256
    matmul_weights = 1280 + 256
    assert SHAPE.matmul_params() == matmul_weights
    # 6 FLOPs per weight and token (2 forward, 4 backward); attention per layer and token: Q·Kᵀ and scores·V over 4
    # positions of 2 heads × 4 = 2·2·8·4 = 128 forward, 256 backward
    attention = 2 * (128 + 256)
    assert flops_per_token(SHAPE, context=4) == 6 * matmul_weights + attention == 9984


def test_flops_per_token_equals_torch_flop_counter_on_a_real_step() -> None:
    """torch's FlopCounterMode counts every matmul of one forward + backward of a real model (eager attention: its
    bmm are counted; the norms and the embedding lookup are not, as in the formula)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_llama()
    batch, context = 3, 4
    assert ModelShape.of(model.config) == SHAPE
    with FlopCounterMode(display=False) as counter:
        model(input_ids=torch.randint(0, 32, (batch, context))).logits.sum().backward()
    # Rotary position frequencies are a matmul too in some transformers releases (4.56: 16 FLOPs here); they are not
    # the model's work and the formula leaves them out, as does MFU's convention.
    counts = counter.get_flop_counts()
    rotary = sum(sum(counts[name].values()) for name in counts if name.endswith("rotary_emb"))
    assert counter.get_total_flops() - rotary == model_flops_per_token(model, context) * batch * context


def test_grouped_query_attention_counts_fewer_key_value_weights() -> None:
    gqa = ModelShape(hidden=8, layers=2, heads=2, kv_heads=1, intermediate=16, vocab=32)
    assert SHAPE.matmul_params() - gqa.matmul_params() == 2 * 2 * 8 * 4  # k and v lose one head of 4 per layer


@pytest.mark.parametrize(
    ("device_name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA A10G", "a10g"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("NVIDIA H200", "h200"),
        ("AMD Instinct MI300X", "mi300x"),
        ("NVIDIA GeForce GTX 1080", None),
    ],
)
def test_cuda_device_names_find_their_peak(device_name: str, key: str | None) -> None:
    assert gpu_key(device_name) == key


def test_peak_flag_takes_a_number_or_a_gpu_name() -> None:
    assert parse_peak("312")[0] == 312 * TERA
    assert parse_peak("H100-SXM")[0] == PEAK_TFLOPS["h100-sxm"] * TERA
    for bad in ("h900", "-5", "0", "nan", "inf"):
        with pytest.raises(RecipeError, match="--peak-tflops"):
            parse_peak(bad)


def test_mfu_is_model_flops_over_peak_and_none_on_cpu_unless_given() -> None:
    import torch

    assert mfu(tokens_per_s=1000, flops_per_token=1e9, peak_flops=1e13, devices=2) == pytest.approx(0.05)
    assert device_peak_flops(torch.device("cpu")) is None
    assert device_peak_flops(torch.device("cpu"), 5e12) == 5e12
