"""Training memory, estimated before anything is allocated: a recipe that cannot fit is refused with the estimate and
the memory available, instead of swapping or being killed minutes later (`context = 100000` on the tiny model ran
for 10 minutes at 15.5 GB before it was killed).

The estimate, in fp32 bytes (training keeps everything in fp32):
- the runtime: torch + transformers + tokenizers once imported;
- per parameter: weights, gradients, AdamW's two moments (none for fish's SGD), Nexus' copy of θ0 (every variant with
  inner steps), and the gradient-cosine window's
  summed gradient per source;
- the activations that one micro-batch (micro_batch × context tokens) keeps for its backward: per token and layer
  ACTIVATION_FLOATS (LLaMA block with sdpa attention: no context × context matrix is kept), plus the logits
  LOGIT_COPIES times (logits, log-softmax, their gradients): at a large vocabulary the logits dominate;
- or, if larger, the held-out forward (no gradients) over up to HELDOUT_BATCH windows of `context` tokens.

Calibrated on CPU against the peak RSS of single training steps of the tiny preset (vocab 512 and 4096, 16K tokens
per micro-batch): the estimate lies within ±25% of the measured peak (tests/training/test_memory.py checks a real
run within a generous factor).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nexus_eval.errors import RecipeError
from nexus_eval.optimizer_registry import REGISTRY
from nexus_eval.training.model import PRESETS
from nexus_eval.training.recipe import Recipe

FLOAT_BYTES = 4
GIB = 1 << 30
RUNTIME_BYTES = 600 << 20  # python + torch + transformers + tokenizers after import, measured ≈ 0.55 GB on CPU
LOGIT_COPIES = 4  # training: logits, log-softmax, and the gradient of each
HELDOUT_LOGIT_COPIES = 3  # held-out forward: logits, log-softmax and the per-token losses' workspace
HELDOUT_BATCH = 16  # windows per held-out forward (training.heldout.mean_token_loss)
MEMINFO = Path("/proc/meminfo")


def activation_floats(hidden: int, intermediate: int) -> int:
    """fp32 values one token keeps per layer for the backward: ≈ 16 hidden-sized tensors (norms, q/k/v, rotary,
    attention output, residuals) and 5 intermediate-sized ones (gate, up, SiLU, product, its gradient)."""
    return 16 * hidden + 5 * intermediate


@dataclass(frozen=True)
class MemoryEstimate:
    params: int
    state_bytes: int  # weights, gradients, optimizer state, gradient-cosine sums
    activation_bytes: int  # one micro-batch forward + backward
    heldout_bytes: int  # one held-out forward batch
    runtime_bytes: int = RUNTIME_BYTES

    @property
    def total(self) -> int:
        return self.runtime_bytes + self.state_bytes + max(self.activation_bytes, self.heldout_bytes)

    def describe(self) -> str:
        parts = (
            f"{gib(self.state_bytes)} weights/gradients/optimizer state of {self.params:,} parameters",
            f"{gib(self.activation_bytes)} activations of one micro-batch",
            f"{gib(self.heldout_bytes)} held-out forward",
            f"{gib(self.runtime_bytes)} runtime",
        )
        return f"{gib(self.total)} ({', '.join(parts)})"


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.1f} GiB"


def parameter_count(preset: str, vocab: int) -> int:
    """Parameters of a preset (tied embeddings, as many key/value heads as query heads: see training.model)."""
    shape = PRESETS[preset]
    hidden, layers, inter = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"]
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    return vocab * hidden + layers * per_layer + hidden


def heldout_batch(recipe: Recipe, stream_tokens: list[int] | None = None) -> int:
    """Windows per held-out forward: up to HELDOUT_BATCH of the recipe's eval_windows, and no more than the longest
    held-out stream (`stream_tokens`: the val/OOD token counts, when known) holds (training.heldout.heldout_windows)."""
    windows = recipe.train.eval_windows
    if stream_tokens:
        context = recipe.model.context
        windows = min(windows, max(max(1, (n - context - 1) // (context + 1)) for n in stream_tokens))
    return min(HELDOUT_BATCH, windows)


def adam_copies(optimizer: str) -> int:
    """Parameter-sized copies the outer optimizer keeps, as its registry entry says: AdamW's two moments; Fish's
    plain SGD none."""
    return REGISTRY.chosen(optimizer).outer_state_copies


def theta0_copies(optimizer: str) -> int:
    """Parameter-sized copies the inner loop keeps, as its registry entry says: Nexus' θ0 and u, the inner steps' sum
    (optim/nexus.py: every optimizer with inner steps keeps both in its exact loop, u alone in the linear one, whose
    double backward needs activation memory instead); AdamW none."""
    return REGISTRY.chosen(optimizer).inner_state_copies


def estimate(recipe: Recipe, optimizer: str, vocab: int, stream_tokens: list[int] | None = None) -> MemoryEstimate:
    """Peak memory of training `recipe` with `optimizer` on a data build of `vocab` tokens whose held-out streams
    hold `stream_tokens` tokens (None: as many windows as the recipe asks for)."""
    shape = PRESETS[recipe.model.preset]
    hidden, layers, inter = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"]
    params = parameter_count(recipe.model.preset, vocab)
    sources = sum(1 for w in recipe.data.mixture.values() if w > 0)
    # weights + gradients + AdamW moments (2) + Nexus' θ0 and u + one summed gradient per source (gradient cosines)
    copies = 2 + adam_copies(optimizer) + theta0_copies(optimizer) + sources
    context = recipe.model.context
    tokens = recipe.optim.micro_batch * context
    per_token = layers * activation_floats(hidden, inter) + LOGIT_COPIES * vocab
    heldout_tokens = heldout_batch(recipe, stream_tokens) * context
    heldout_per_token = activation_floats(hidden, inter) + HELDOUT_LOGIT_COPIES * vocab  # one layer at a time
    return MemoryEstimate(
        params=params,
        state_bytes=copies * params * FLOAT_BYTES,
        activation_bytes=tokens * per_token * FLOAT_BYTES,
        heldout_bytes=heldout_tokens * heldout_per_token * FLOAT_BYTES,
    )


def available_memory(device: str = "cpu") -> tuple[int, str] | None:
    """(bytes available, where that figure comes from), or None where it cannot be read (no /proc: not checked)."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free, f"free on {device} (torch.cuda.mem_get_info)"
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, f"MemAvailable in {MEMINFO}"
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(recipe: Recipe, need: MemoryEstimate, available: tuple[int, str] | None) -> None:
    """RecipeError naming the estimate and the available figure when the run cannot fit."""
    if available is None or need.total <= available[0]:
        return
    have, where = available
    o = recipe.optim
    raise RecipeError(
        f"{recipe.path}: training needs about {need.describe()}, but only {gib(have)} is available ({where}); "
        f"lower model.context ({recipe.model.context}) or optim.micro_batch ({o.micro_batch})"
    )


def check_training_memory(recipe: Recipe, optimizer: str, manifest: dict, device: str = "cpu") -> MemoryEstimate:
    """Refuse a recipe whose training cannot fit in the memory available now, on the data build of `manifest`;
    returns the estimate."""
    mixture = [s for s, w in recipe.data.mixture.items() if w > 0]
    heldout = [manifest["sources"][s]["tokens"]["val"] for s in mixture if s in manifest["sources"]]
    heldout += [entry["tokens"]["ood"] for entry in manifest["ood"].values()]
    need = estimate(recipe, optimizer, int(manifest["vocab_size"]), heldout)
    check_fits(recipe, need, available_memory(device))
    return need


# ---- per-rank memory at scale: `nexus-eval train --dry-run` ----------------------------------------------------------

STRATEGIES = ("none", "ddp", "fsdp")
MASTER_BYTES = 4  # fp32 master weights, gradients, optimizer state and θ0 (on every device)
BF16_BYTES = 2  # the compute copy of the weights and the activations under bf16 autocast
FSDP_GATHERED_LAYERS = 2  # unsharded at once: the layer computing and the next one, prefetched


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank holds while training, by what holds them. `strategy`: none (one process), ddp (every rank
    holds everything) or fsdp (FSDP2/ZeRO-3: weights, gradients, optimizer state and θ0 sharded over `ranks`)."""

    strategy: str
    ranks: int
    params: int  # fp32 master weights
    grads: int  # fp32 gradients
    optimizer_state: int  # the outer optimizer's (AdamW: its two moments)
    theta0: int  # Nexus' θ0 (the weights at the start of the outer step) and u (the inner steps' sum): 0 for AdamW
    grad_cosine: int  # one summed gradient per source, for the gradient-cosine log
    compute_copy: int  # bf16 weights the matmuls read: all of them (autocast's cache) or the gathered layers (fsdp)
    comm_buffers: int  # DDP's gradient buckets (a second copy of the gradients unless gradient_as_bucket_view)
    activations: int  # this rank's slice of one micro-batch, forward + backward
    state_kind: str = "AdamW moments"  # what the optimizer state is (its registry entry's state_kind)

    @property
    def state(self) -> int:
        return self.params + self.grads + self.optimizer_state + self.theta0 + self.grad_cosine

    @property
    def total(self) -> int:
        return self.state + self.compute_copy + self.comm_buffers + self.activations

    def rows(self) -> list[tuple[str, int]]:
        return [
            ("parameters (fp32 master)", self.params),
            ("gradients (fp32)", self.grads),
            (f"optimizer state ({self.state_kind})", self.optimizer_state),
            ("Nexus θ0 and u", self.theta0),
            ("gradient-cosine sums", self.grad_cosine),
            ("bf16 compute copy", self.compute_copy),
            ("DDP gradient buckets", self.comm_buffers),
            ("activations (one micro-batch slice)", self.activations),
        ]


def layer_params(preset: str) -> int:
    """Parameters of one decoder layer of a preset (as parameter_count counts them)."""
    shape = PRESETS[preset]
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    return 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden


def rank_memory(
    recipe: Recipe, optimizer: str, vocab: int, params: int, strategy: str = "none", ranks: int = 1
) -> RankMemory:
    """Per-rank training memory of `recipe` with `params` parameters on `ranks` ranks under `strategy`, with fp32
    master weights and optimizer state and bf16 compute (the CUDA set-up). Each rank takes micro_batch / ranks of
    every micro-batch (the caller checks that it divides)."""
    if strategy not in STRATEGIES:
        raise RecipeError(f"strategy {strategy!r}: must be one of {', '.join(STRATEGIES)}")
    shards = ranks if strategy == "fsdp" else 1
    per_copy = MASTER_BYTES * params // shards
    sources = sum(1 for w in recipe.data.mixture.values() if w > 0)
    shape = PRESETS[recipe.model.preset]
    if strategy == "fsdp":
        gathered = FSDP_GATHERED_LAYERS * layer_params(recipe.model.preset) + vocab * shape["hidden_size"]
        compute_copy = BF16_BYTES * gathered
    else:
        compute_copy = BF16_BYTES * params
    rows = recipe.optim.micro_batch // ranks  # the rank's slice of a micro-batch, run device_batch rows at a time
    if recipe.parallel.device_batch > 0:
        rows = min(rows, recipe.parallel.device_batch)
    tokens = rows * recipe.model.context
    one_layer = activation_floats(shape["hidden_size"], shape["intermediate_size"])
    if recipe.parallel.activation_checkpointing:  # each layer keeps its input; one layer's are recomputed at a time
        layer_floats = shape["num_hidden_layers"] * shape["hidden_size"] + one_layer
    else:
        layer_floats = shape["num_hidden_layers"] * one_layer
    # bf16 layer activations; the logits and their log-softmax in fp32 (causal_lm_loss upcasts them)
    activations = tokens * (BF16_BYTES * layer_floats + MASTER_BYTES * LOGIT_COPIES * vocab)
    return RankMemory(
        strategy=strategy,
        ranks=ranks,
        params=per_copy,
        grads=per_copy,
        optimizer_state=adam_copies(optimizer) * per_copy,
        theta0=theta0_copies(optimizer) * per_copy,
        grad_cosine=sources * per_copy,
        compute_copy=compute_copy,
        comm_buffers=per_copy if strategy == "ddp" else 0,
        activations=activations,
        state_kind=REGISTRY.chosen(optimizer).state_kind,
    )
