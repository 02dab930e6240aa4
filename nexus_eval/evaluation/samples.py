"""Per-item samples: what lm-eval logged for each item (`log_samples=True`) as one ItemSample record per doc_id, and
how a record reads in a table (the model's answer, the target).

lm-eval logs one sample per (item, filter); the records merge them: the raw responses once, the filtered answer per
filter, and the item's per-item scores taken from the result (so a record's scores are exactly the result's
item_scores). The shapes lm-eval logs, per output type:

    multiple_choice / loglikelihood   arguments [[context, continuation], ...], resps [[[loglik, is_greedy]], ...]
    loglikelihood_rolling             arguments [[text]], resps [[loglik]]
    generate_until                    arguments [[context, gen_kwargs]], resps [[text, ...]], filtered_resps [answer]

The records are stored and read by nexus_eval.evaluation.cache (the only module touching result files); this module
only builds and formats them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from nexus_eval.io import finite_json
from nexus_eval.schema import ChoiceScore, EvalResult, ItemSample

SCORED_CONTINUATIONS = ("multiple_choice", "loglikelihood")  # each request scores one continuation


def _output_type(config: dict[str, Any], logged: dict[str, Any]) -> str:
    """The task's output type from its config, else read off the first sample's request shape."""
    if isinstance(config.get("output_type"), str):
        return config["output_type"]
    first = (logged.get("arguments") or [[]])[0]
    if len(first) == 1:
        return "loglikelihood_rolling"
    if len(first) > 1 and isinstance(first[1], dict):
        return "generate_until"
    return "multiple_choice" if len(logged.get("arguments") or []) > 1 else "loglikelihood"


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _choices(logged: dict[str, Any]) -> list[ChoiceScore]:
    """Each request's continuation with its log-likelihood and is_greedy (resps[i] = [[loglik, is_greedy]])."""
    choices: list[ChoiceScore] = []
    for request, resp in zip(logged.get("arguments") or [], logged.get("resps") or [], strict=False):
        answer = resp[0] if isinstance(resp, list | tuple) and resp else resp
        pair = isinstance(answer, list | tuple) and len(answer) == 2
        loglik, greedy = (answer[0], answer[1]) if pair else (answer, None)
        text = request[1] if isinstance(request, list | tuple) and len(request) > 1 else ""
        choices.append({"text": str(text), "loglikelihood": _number(loglik), "is_greedy": greedy})
    return choices


def _record(doc_id: int, logged: list[dict[str, Any]], output_type: str, scores: dict[str, float | None]) -> ItemSample:
    first = logged[0]
    arguments = first.get("arguments") or [[""]]
    record: ItemSample = {
        "doc_id": doc_id,
        "output_type": output_type,
        "prompt": str(arguments[0][0]) if arguments and arguments[0] else "",
        "target": first.get("target"),
        "resps": list(first.get("resps") or []),
        "filtered_resps": {str(s.get("filter", "none")): s.get("filtered_resps") for s in logged},
        "choices": _choices(first) if output_type in SCORED_CONTINUATIONS else [],
        "scores": scores,
    }
    return finite_json(record)


def item_samples(output: dict[str, Any], task: str, result: EvalResult) -> list[ItemSample]:
    """One record per doc_id of `result` (in its order) from simple_evaluate's output for `task`."""
    logged_by_doc: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for logged in output["samples"][task]:
        logged_by_doc[int(logged["doc_id"])].append(logged)
    config = (output.get("configs") or {}).get(task) or {}
    output_type = _output_type(config, output["samples"][task][0]) if result["doc_ids"] else ""
    records = []
    for index, doc_id in enumerate(result["doc_ids"]):
        scores = {key: values[index] for key, values in result["item_scores"].items()}
        records.append(_record(doc_id, logged_by_doc[doc_id], output_type, scores))
    return records


# ---- how a record reads -----------------------------------------------------------------------------------------


def best_choice(item: ItemSample) -> int | None:
    """Index of the highest-likelihood continuation (lm-eval's `acc` pick: the first on a tie), None without scored
    choices."""
    scored = [(c["loglikelihood"], -i) for i, c in enumerate(item["choices"]) if c["loglikelihood"] is not None]
    return -max(scored)[1] if scored else None


def gold_index(item: ItemSample) -> int | None:
    """Index of the gold continuation of a multiple-choice item (its target as an index, or the matching text)."""
    target = item["target"]
    if isinstance(target, list) and len(target) == 1:
        target = target[0]
    if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(item["choices"]):
        return target
    if isinstance(target, str):
        texts = [c["text"].strip() for c in item["choices"]]
        return texts.index(target.strip()) if target.strip() in texts else None
    return None


def _choice_text(item: ItemSample, index: int) -> str:
    return f"({index}) {item['choices'][index]['text'].strip()}"


def target_text(item: ItemSample) -> str:
    """The target as a reader wants it: for multiple choice the gold choice's text, else lm-eval's target."""
    if item["output_type"] == "multiple_choice" and (gold := gold_index(item)) is not None:
        return _choice_text(item, gold)
    target = item["target"]
    return target if isinstance(target, str) else str(target)


def filtered_answer(item: ItemSample, metric: str = "") -> Any:
    """The filtered response of the metric's filter ("exact_match,flexible-extract" → "flexible-extract")."""
    filtered = item["filtered_resps"]
    filter_name = metric.partition(",")[2]
    answer = filtered.get(filter_name, next(iter(filtered.values()), None))
    while isinstance(answer, list) and len(answer) == 1:  # one request (and one repeat): its answer
        answer = answer[0]
    return answer


def answer_text(item: ItemSample, metric: str = "") -> str:
    """What the model answered: the chosen continuation (multiple choice), the log-likelihood of the target
    (loglikelihood, rolling), or the filtered answer of the metric's filter (generate_until)."""
    if item["output_type"] == "multiple_choice":
        best = best_choice(item)
        return "-" if best is None else _choice_text(item, best)
    if item["output_type"] == "loglikelihood" and item["choices"]:
        choice = item["choices"][0]
        greedy = ", greedy" if choice["is_greedy"] else ""
        return "-" if choice["loglikelihood"] is None else f"LL {choice['loglikelihood']:.3f}{greedy}"
    answer = filtered_answer(item, metric)
    if item["output_type"] == "loglikelihood_rolling":
        number = _number(answer)
        return "-" if number is None else f"LL {number:.3f}"
    if answer == "":
        return "(empty)"
    return answer if isinstance(answer, str) else str(answer)


def one_line(text: str, width: int | None = None) -> str:
    """Newlines and tabs shown as ⏎ and ⇥ (a table cell is one line), cut to `width` characters with an ellipsis."""
    flat = text.replace("\r\n", "\n").replace("\n", "⏎").replace("\t", "⇥")
    return flat if width is None or len(flat) <= width else flat[: width - 1] + "…"
