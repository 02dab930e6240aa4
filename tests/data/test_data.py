"""The offline data build: determinism, splits, manifest integrity, tokenizer, bad input and contamination."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.data import (
    build_data,
    load_manifest,
    load_tokenizer,
    ood_names,
    open_tokens,
    read_docs,
    train_source_names,
)
from nexus_eval.data.collect import doc_hash
from nexus_eval.data.contamination import NgramIndex
from nexus_eval.data.info import parse_specs
from nexus_eval.data.mathgen import generate_problems
from nexus_eval.data.prose import roff_to_text, rst_sections
from nexus_eval.data.rdata import read_lazyload_vectors
from nexus_eval.errors import NexusError
from tests.conftest import GSM8K_DIR, TINY_DATA_PARAMS


def train_docs(data_dir: Path, name: str) -> list[str]:
    """Decode a training token stream back into its documents (split at eos)."""
    tokenizer = load_tokenizer(data_dir)
    tokens = np.asarray(open_tokens(data_dir, "train", name))
    ends = np.flatnonzero(tokens == tokenizer.eos_token_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokenizer.decode(tokens[s:e].tolist()) for s, e in zip(starts, ends, strict=True)]


def gsm8k_test_questions() -> list[str]:
    rows = (GSM8K_DIR / "test.jsonl").read_text().splitlines()
    return [json.loads(row)["question"] for row in rows if row]


def test_manifest_lists_every_file_with_its_sha256(tiny_data_dir: Path) -> None:
    manifest = load_manifest(tiny_data_dir)
    on_disk = {str(p.relative_to(tiny_data_dir)) for p in tiny_data_dir.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {"manifest.json"}
    for relative, digest in manifest["files"].items():
        assert hashlib.sha256((tiny_data_dir / relative).read_bytes()).hexdigest() == digest, relative
    assert train_source_names(manifest)[:3] == ["text", "math", "code"]
    assert len(ood_names(manifest)) >= 2
    for entry in [*manifest["sources"].values(), *manifest["ood"].values()]:
        assert entry["origin"] and all(origin.get("license") for origin in entry["origin"])


@pytest.mark.slow
def test_rebuild_gives_the_same_hash_and_a_change_gives_another(tiny_data_dir: Path, tmp_path: Path) -> None:
    first = load_manifest(tiny_data_dir)
    again = build_data(tmp_path / "again", **TINY_DATA_PARAMS)
    assert again["hash"] == first["hash"]
    assert again["files"] == first["files"]
    other = build_data(tmp_path / "other", **{**TINY_DATA_PARAMS, "seed": 1})
    assert other["hash"] != first["hash"]
    # only the generated math moved (the tokenizer, trained on all sources, moved with it)
    assert other["files"]["val/text.jsonl"] == first["files"]["val/text.jsonl"]
    assert other["files"]["val/math.jsonl"] != first["files"]["val/math.jsonl"]


def test_token_streams_match_the_manifest(tiny_data_dir: Path) -> None:
    manifest = load_manifest(tiny_data_dir)
    for split, group in (("train", "sources"), ("val", "sources"), ("ood", "ood")):
        for name, entry in manifest[group].items():
            tokens = open_tokens(tiny_data_dir, split, name)
            assert tokens.dtype == np.uint16 and len(tokens) == entry["tokens"][split]
            assert tokens[-1] == manifest["eos_id"]
            assert int((np.asarray(tokens) == manifest["eos_id"]).sum()) == entry["docs"][split]
            assert int(np.asarray(tokens).max()) < manifest["vocab_size"]


def test_splits_are_disjoint_and_decode_to_the_documents(tiny_data_dir: Path) -> None:
    manifest = load_manifest(tiny_data_dir)
    train_hashes: set[str] = set()
    for name in train_source_names(manifest):
        docs = train_docs(tiny_data_dir, name)
        assert len(docs) == manifest["sources"][name]["docs"]["train"]
        train_hashes |= {doc_hash(d) for d in docs}
    held_out: set[str] = set()
    for split, names in (("val", train_source_names(manifest)), ("ood", ood_names(manifest))):
        for name in names:
            hashes = {doc_hash(d) for d in read_docs(tiny_data_dir, split, name)}
            assert hashes and not hashes & train_hashes, f"{split}/{name} shares documents with train"
            assert not hashes & held_out, f"{split}/{name} shares documents with another held-out split"
            held_out |= hashes


def test_tokenizer_round_trips_text(tiny_data_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    tokenizer = load_tokenizer(tiny_data_dir)
    manifest = load_manifest(tiny_data_dir)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert len(tokenizer) == manifest["vocab_size"] == TINY_DATA_PARAMS["vocab_size"]
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == manifest["eos_id"]
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    for text in ["Question: 3 + 4 = ?\nAnswer: 7\n#### 7", "  def f(x):\n\treturn x ** 2  ", "naïve café — 東京 😀"]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.eos_token_id not in ids  # no special tokens added implicitly
        assert tokenizer.decode(ids) == text
    batch = tokenizer(["a", "a longer line"], padding=True)
    assert batch["input_ids"][0][-1] == tokenizer.pad_token_id


def test_math_training_data_holds_no_gsm8k_test_question(tiny_data_dir: Path) -> None:
    index = NgramIndex(gsm8k_test_questions())
    math_docs = train_docs(tiny_data_dir, "math") + read_docs(tiny_data_dir, "val", "math")
    assert any(d.startswith("Question: Natalia sold clips") for d in math_docs)  # GSM8k train is in
    assert not [d for d in math_docs if index(d)]


@pytest.mark.slow
def test_contaminated_user_documents_are_dropped(tmp_path: Path) -> None:
    question = gsm8k_test_questions()[7]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "leak.txt").write_text("Some lead-in text.\n" + question.replace(" ", "  ") + "\nThe answer is 3.")
    for i in range(60):
        (corpus / f"note_{i}.txt").write_text(
            f"Note {i}: a harmless remark about gardening in spring, number {i}. " * 20
        )
    (corpus / "binary.dat").write_bytes(b"\x00\x01\x02")
    manifest = build_data(tmp_path / "data", extra_sources={"mine": corpus}, **TINY_DATA_PARAMS)
    assert manifest["contamination"]["dropped_docs"]["mine"] == 1
    assert "mine" in manifest["contamination"]["checked_sources"]
    assert sum(manifest["sources"]["mine"]["docs"].values()) == 60
    kept = train_docs(tmp_path / "data", "mine") + read_docs(tmp_path / "data", "val", "mine")
    assert len(kept) == 60 and not any("lead-in" in d for d in kept)


def test_ngram_index_flags_only_shared_sequences() -> None:
    index = NgramIndex(["one two three four five six seven eight nine ten eleven twelve thirteen fourteen"])
    assert index("prefix ONE two, three four five six seven eight nine ten eleven twelve thirteen")
    assert not index("one two three four five six seven eight nine ten eleven twelve")
    assert not index("completely different words")


@pytest.mark.slow
def test_bad_specs_and_missing_inputs_raise_nexus_errors(tmp_path: Path) -> None:
    for bad in ["nodir", "=x", "Bad=x", "a b=x"]:
        with pytest.raises(NexusError, match="--source"):
            parse_specs("--source", [bad])
    with pytest.raises(NexusError, match="given twice"):
        parse_specs("--ood", [f"a={tmp_path}", f"a={tmp_path}"])
    with pytest.raises(NexusError, match="does not exist"):
        build_data(tmp_path / "d", extra_sources={"mine": tmp_path / "missing"}, **TINY_DATA_PARAMS)
    with pytest.raises(NexusError, match="already used"):
        build_data(tmp_path / "d", extra_ood={"text": tmp_path}, **TINY_DATA_PARAMS)
    with pytest.raises(NexusError, match="train.jsonl missing"):
        build_data(tmp_path / "d", **{**TINY_DATA_PARAMS, "gsm8k_dir": tmp_path})
    with pytest.raises(NexusError, match="--vocab-size"):
        build_data(tmp_path / "d", **{**TINY_DATA_PARAMS, "vocab_size": 70_000})
    with pytest.raises(NexusError, match=r"manifest\.json missing: run `nexus-eval data build`"):
        load_manifest(tmp_path)
    with pytest.raises(NexusError, match=r"manifest\.json missing"):
        open_tokens(tmp_path, "train", "text")
    assert not list(tmp_path.glob(".d.*")), "a failed build left its temporary directory"


@pytest.mark.slow
def test_failed_build_keeps_the_previous_build(tiny_data_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "binary.bin").write_bytes(b"\x00\xff")
    before = (tiny_data_dir / "manifest.json").read_bytes()
    with pytest.raises(NexusError, match="no UTF-8 text files"):
        build_data(tiny_data_dir, extra_sources={"mine": empty}, **TINY_DATA_PARAMS)
    assert (tiny_data_dir / "manifest.json").read_bytes() == before
    assert not list(tiny_data_dir.parent.glob(".data.*"))
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(NexusError, match="not a data build"):
        build_data(stranger, **TINY_DATA_PARAMS)


def test_cli_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "build", "--out", str(tmp_path / "d"), "--source", "oops"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: --source 'oops'") and len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["data", "info", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "manifest.json missing" in result.output


def test_unknown_names_are_rejected(tiny_data_dir: Path) -> None:
    with pytest.raises(NexusError, match="not a training source"):
        open_tokens(tiny_data_dir, "train", "c_headers")
    with pytest.raises(NexusError, match="split"):
        open_tokens(tiny_data_dir, "test", "text")


def test_cli_info_shows_every_source(tiny_data_dir: Path) -> None:
    result = CliRunner().invoke(app, ["data", "info", "--data", str(tiny_data_dir)])
    assert result.exit_code == 0, result.output
    for name in ("text", "math", "code", "c_headers", "man_pages", "fortunes", load_manifest(tiny_data_dir)["hash"]):
        assert name in result.output


def test_generated_math_steps_are_correct_arithmetic() -> None:
    problems = list(generate_problems(400, seed=3))
    assert problems == list(generate_problems(400, seed=3)) and problems[:50] == list(generate_problems(50, seed=3))
    equation = re.compile(r"(-?\d+(?:\s*[-+*/]\s*-?\d+)+)\s*=\s*\$?(-?\d+(?:\.\d+)?)(?![\d/])")
    checked = 0
    for problem in problems:
        assert problem.startswith("Question: ") and re.search(r"\n#### -?\d+(/\d+)?$", problem)
        for lhs, rhs in equation.findall(problem):
            assert abs(eval(lhs) - float(rhs)) < 0.006, f"{lhs} != {rhs} in {problem!r}"  # noqa: S307
            checked += 1
    assert checked > 400


def test_readers_of_marked_up_text() -> None:
    rst = (
        "Title\n=====\n\nSome *prose* with :func:`len` here::\n\n    code = 1\n\nMore prose.\n\n"
        ".. code-block:: python\n\n   x = 2\n"
    )
    (doc,) = list(rst_sections(rst))
    assert "prose with len here:" in doc and "More prose." in doc and "code = 1" not in doc and "x = 2" not in doc
    roff = ".TH X 1\n.SH NAME\nx \\- do things\n.SH DESCRIPTION\n.B x\nreads\n.I files\nfast.\n.TS\ntable\n.TE\n"
    assert roff_to_text(roff) == "NAME\n\nx - do things\n\nDESCRIPTION\n\nx reads files fast."
    assert roff_to_text(".so man3/other.3\n") == ""


def test_r_reader_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(NexusError, match="missing"):
        read_lazyload_vectors(tmp_path / "Rdata.rdx")
