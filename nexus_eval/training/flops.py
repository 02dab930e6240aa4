"""Model FLOPs: what one training token costs, and what a device can do at peak, for the MFU in metrics.jsonl and
the time estimate of `nexus-eval train --dry-run`.

FLOPs per token (forward + backward), as in the PaLM paper (appendix B) and nanoGPT's estimate_mfu:

    6 · N_matmul + 12 · L · H · Q · T

- N_matmul: the weights that take part in a matrix multiply per token: every linear layer of every decoder layer
  (q, k, v, o; gate, up, down) and the output projection (vocab × hidden, whether tied to the embedding or not).
  The input embedding is a lookup (no FLOPs) and the norms' scales are elementwise (not counted). Each such weight
  costs 2 FLOPs forward (multiply + add) and 4 backward (the input's and the weight's gradient).
- 12 · L · H · Q · T: attention's two matrix products (scores Q·Kᵀ and scores·V) over the context T, with H heads of
  size Q on L layers: 2 · 2 · H · Q · T forward, twice that backward. The causal mask is not discounted (the
  convention; kernels that skip masked blocks then show a slightly higher MFU than the work they really do).

Peak FLOP/s: dense bf16 tensor-core figures from the vendors' datasheets (no 2:4 sparsity), per device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nexus_eval.errors import RecipeError

TERA = 1e12

# Dense bf16 (fp32 accumulate) peak TFLOP/s per device, vendor datasheets. Names as `--peak-tflops` accepts them.
PEAK_TFLOPS: dict[str, float] = {
    "a100": 312.0,  # A100 SXM4 and PCIe, 40 and 80 GB
    "h100-sxm": 989.4,
    "h100-pcie": 756.0,
    "h100-nvl": 835.0,
    "h200": 989.4,  # H200 SXM: the H100 SXM's tensor cores with more memory
    "l4": 121.0,
    "l40s": 362.1,
    "l40": 181.0,
    "a10g": 125.0,  # AWS publishes no bf16 figure: the A10's datasheet value (same GA102 chip); measure to be sure
    "rtx-4090": 165.2,  # bf16 with fp32 accumulate (the Ada whitepaper); 330 is with sparsity
    "mi300x": 1307.4,
}

# How torch.cuda.get_device_name() spells them ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA L40S",
# "AMD Instinct MI300X"): the first pattern the upper-cased name contains wins, so the longer ones come first.
DEVICE_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    ("H100 PCIE", "h100-pcie"),
    ("H100 NVL", "h100-nvl"),
    ("H100", "h100-sxm"),
    ("H200", "h200"),
    ("A100", "a100"),
    ("L40S", "l40s"),
    ("L40", "l40"),
    ("L4", "l4"),
    ("A10G", "a10g"),
    ("RTX 4090", "rtx-4090"),
    ("MI300X", "mi300x"),
)


@dataclass(frozen=True)
class ModelShape:
    """What the FLOPs count needs of a LlamaConfig."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        return cls(
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=config.num_attention_heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            intermediate=config.intermediate_size,
            vocab=config.vocab_size,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def matmul_params(self) -> int:
        """Weights used in a matrix multiply per token: the decoder layers' linear layers and the output head."""
        q_and_o = 2 * self.hidden * self.heads * self.head_dim
        k_and_v = 2 * self.hidden * self.kv_heads * self.head_dim
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (q_and_o + k_and_v + mlp) + self.vocab * self.hidden


def flops_per_token(shape: ModelShape, context: int) -> int:
    """Training FLOPs (forward + backward) per token at sequence length `context` (see the module doc)."""
    attention = 12 * shape.layers * shape.heads * shape.head_dim * context
    return 6 * shape.matmul_params() + attention


def model_flops_per_token(model: Any, context: int) -> int:
    """flops_per_token of a LlamaForCausalLM (or anything with a LlamaConfig as .config)."""
    return flops_per_token(ModelShape.of(model.config), context)


def gpu_key(device_name: str) -> str | None:
    """PEAK_TFLOPS key of a device name as torch reports it, or None for a device not in the table."""
    upper = device_name.upper()
    return next((key for pattern, key in DEVICE_NAME_PATTERNS if pattern in upper), None)


def parse_peak(text: str, flag: str = "--peak-tflops") -> tuple[float, str]:
    """`--peak-tflops` as (peak FLOP/s per device, what it is): a number of TFLOP/s or a GPU name of the table."""
    try:
        tflops = float(text)
    except ValueError:
        key = text.strip().lower()
        if key not in PEAK_TFLOPS:
            raise RecipeError(
                f"{flag} {text!r}: not a number of TFLOP/s nor a known GPU (known: {', '.join(PEAK_TFLOPS)})"
            ) from None
        return PEAK_TFLOPS[key] * TERA, f"{key} ({PEAK_TFLOPS[key]:g} TFLOP/s bf16 dense)"
    if not tflops > 0 or tflops == float("inf"):
        raise RecipeError(f"{flag} {text!r}: must be a positive number of TFLOP/s")
    return tflops * TERA, f"{tflops:g} TFLOP/s (given)"


def device_peak_flops(device: Any, override: float | None = None) -> float | None:
    """Peak FLOP/s of one `device` (a torch.device): `override` when given; else a CUDA device's from the table;
    else None (a CPU, or a GPU not in the table: no MFU is reported)."""
    if override is not None:
        return override
    if getattr(device, "type", str(device)) != "cuda":
        return None
    import torch

    key = gpu_key(torch.cuda.get_device_name(device))
    return PEAK_TFLOPS[key] * TERA if key else None


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float, devices: int = 1) -> float:
    """Model FLOPs utilization: the FLOP/s the model's arithmetic needs at this rate over the devices' peak."""
    return tokens_per_s * flops_per_token / (peak_flops * devices)
