"""Functions the task YAMLs in this directory name with `!function utils.<name>` (lm-eval loads this file by path).

Standalone on purpose (no nexus_eval import), so `lm-eval run --include_path tasks --tasks <name>` works from any
working directory: data paths are resolved relative to this file, not to the caller's cwd.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import datasets

TASKS_DIR = Path(__file__).resolve().parent


def load_local(data: str | list[str], require: list[str] | None = None, **_metadata: object) -> datasets.DatasetDict:
    """Splits of local JSONL data: `<data>/<split>.jsonl` under tasks/ (a list of dirs is concatenated per split).

    lm-eval calls this as `custom_dataset` with the task's metadata and dataset_kwargs as keyword arguments.
    `require`: splits the task cannot run without (e.g. GSM8k's train split for its 5-shot prompt).
    """
    dirs = [data] if isinstance(data, str) else list(data)
    rows: dict[str, list[dict]] = {}
    for name in dirs:
        directory = TASKS_DIR / name
        files = sorted(directory.glob("*.jsonl"))
        if not files:
            raise FileNotFoundError(
                f"{directory}: no task data; run `nexus-eval tasks prepare` (see tasks/README.md) to materialize it"
            )
        for path in files:
            with path.open(encoding="utf-8") as f:
                rows.setdefault(path.stem, []).extend(json.loads(line) for line in f if line.strip())
    for split in require or []:
        if split not in rows:
            raise FileNotFoundError(
                f"{TASKS_DIR / dirs[0]}: no {split}.jsonl; run `nexus-eval tasks prepare` with a source that has it"
            )
    return datasets.DatasetDict({split: datasets.Dataset.from_list(docs) for split, docs in rows.items()})


# ---- gold-solution bits per byte (as OLMo's gsm8k gold_bpb) ----


def _bits_per_byte(loglikelihood: float, continuation: str) -> float:
    return -loglikelihood / (len(continuation.encode("utf-8")) * math.log(2))


def gold_continuation(doc: dict) -> str:
    """The scored continuation: " " + the worked solution (lm-eval adds no delimiter to loglikelihood targets)."""
    return " " + doc["answer"]


def gold_bits_per_byte(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
    return {"bits_per_byte": _bits_per_byte(results[0][0], gold_continuation(doc))}


def gsm8k_gold_continuation(doc: dict) -> str:
    """A space, then GSM8k's worked solution without its <<calc>> notes: the form the math training text uses."""
    return " " + re.sub(r"<<[^>]*>>", "", doc["answer"]).strip()


def gsm8k_gold_bits_per_byte(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
    return {"bits_per_byte": _bits_per_byte(results[0][0], gsm8k_gold_continuation(doc))}


# ---- HellaSwag: the same preprocessing as lm-eval's hellaswag/utils.py ----


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")  # brackets are WikiHow artifacts
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    def process(doc: dict) -> dict:
        context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {
            "query": _hellaswag_clean(doc["activity_label"] + ": " + context),
            "choices": [_hellaswag_clean(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(process)


# ---- Winogrande: partial scoring as lm-eval's winogrande/preprocess_winogrande.py ----
# The choices are the two contexts (sentence up to the blank, filled with each option); the target is the rest of
# the sentence, scored after each context. doc_to_text returns the index of the correct context.


def winogrande_doc_to_text(doc: dict) -> int:
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_doc_to_target(doc: dict) -> str:
    blank = doc["sentence"].index("_") + 1
    return doc["sentence"][blank:].strip()


def winogrande_doc_to_choice(doc: dict) -> list[str]:
    blank = doc["sentence"].index("_")
    return [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]
