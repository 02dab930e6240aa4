"""Offline multi-source training data: build it once (`nexus-eval data build`), then read it from the data dir.

Layout of a data dir: manifest.json, tokenizer/ (PreTrainedTokenizerFast), {train,val}/<source>.bin and
ood/<domain>.bin (uint16 tokens, documents separated by eos), {val,ood}/<name>.jsonl (raw documents).
"""

from nexus_eval.data.build import DEFAULT_GSM8K_DIR, build_data, content_hash
from nexus_eval.data.store import load_manifest, load_tokenizer, ood_names, open_tokens, read_docs, train_source_names

__all__ = [
    "DEFAULT_GSM8K_DIR",
    "build_data",
    "content_hash",
    "load_manifest",
    "load_tokenizer",
    "ood_names",
    "open_tokens",
    "read_docs",
    "train_source_names",
]
