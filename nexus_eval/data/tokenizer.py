"""The build's tokenizer: a byte-level BPE trained on the training split (the default), or a pretrained one (a
tokenizer directory, a model directory, or the tokenizer embedded in a GGUF file); both as PreTrainedTokenizerFast.
Token ids are stored as uint16 when the vocabulary fits, else uint32."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from nexus_eval.errors import DataError

if TYPE_CHECKING:  # transformers takes a second to import: only the functions that need it import it
    from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"  # also bos: documents in the token streams are separated by it
PAD_TOKEN = "<|pad|>"  # a separate id, so padding never hides a real end-of-document token
MIN_VOCAB, MAX_VOCAB = 300, 65536  # 256 bytes + specials + some merges; ids must fit uint16
UINT16_VOCAB = 1 << 16  # ids 0..65535 fit uint16; a larger vocabulary is stored as uint32
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def token_dtype(vocab_size: int) -> str:
    """The narrowest unsigned dtype holding every id of a vocabulary (recorded in the manifest as token_dtype)."""
    return "uint16" if vocab_size <= UINT16_VOCAB else "uint32"


def load_pretrained_tokenizer(location: str) -> PreTrainedTokenizerFast:
    """A tokenizer directory, a model directory (its tokenizer files), or a .gguf file (or a directory holding one
    .gguf and no tokenizer files): loaded offline as a fast tokenizer that defines an eos token."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(location).expanduser()
    flag = f"--tokenizer {location}"
    if not path.exists():
        raise DataError(f"{flag}: no such file or directory")
    kwargs: dict = {}
    if path.is_file():
        if path.suffix != ".gguf":
            raise DataError(f"{flag}: a file must be a .gguf model; otherwise give the tokenizer's directory")
        path, kwargs = path.parent, {"gguf_file": path.name}
    elif not any((path / name).is_file() for name in TOKENIZER_FILES):
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise DataError(f"{flag}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) nor a single .gguf in {path}")
        kwargs = {"gguf_file": ggufs[0].name}
    try:
        tokenizer = _from_pretrained(path, kwargs)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, ... for a broken tokenizer
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{flag}: cannot load a tokenizer from {path} ({first})") from None
    if not getattr(tokenizer, "is_fast", False) or not hasattr(tokenizer, "backend_tokenizer"):
        raise DataError(f"{flag}: {path} holds a slow (Python) tokenizer; a fast tokenizer (tokenizer.json) is needed")
    if tokenizer.eos_token_id is None:
        raise DataError(f"{flag}: the tokenizer defines no eos token, which separates documents in the token files")
    return tokenizer


def train_tokenizer(docs: Iterator[str], vocab_size: int, n_docs: int) -> PreTrainedTokenizerFast:
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise DataError(f"--vocab-size {vocab_size}: must be between {MIN_VOCAB} and {MAX_VOCAB} (uint16 token ids)")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(docs, trainer=trainer, length=n_docs)
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=None, pad_token=PAD_TOKEN
    )


def _from_pretrained(path: Path, kwargs: dict) -> PreTrainedTokenizerFast:
    """A tokenizer.json loads as it will be read back from the build (PreTrainedTokenizerFast, a light import);
    a GGUF, or a model with only slow-tokenizer files, goes through AutoTokenizer's conversion."""
    if not kwargs and (path / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, **kwargs)
