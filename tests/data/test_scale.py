"""Streaming build at scale, in miniature: token shards and their reader, worker processes, resuming a killed build,
decontamination against the evaluation tasks, and the default build's bytes against the integration checkout's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.data import build_data, load_manifest, open_tokens, read_docs
from nexus_eval.data import shards as shards_module
from nexus_eval.data.collect import SeenHashes, doc_hash
from nexus_eval.data.contamination import Documents, NgramIndex, TaskNgrams
from nexus_eval.data.info import parse_specs
from nexus_eval.data.store import ShardedTokens
from nexus_eval.tasks.materialize import prepare
from tests.conftest import GSM8K_DIR, REPO_ROOT, TINY_DATA_PARAMS, needs_olmo
from tests.data.test_sources import USER_ONLY, make_rows, write_jsonl

SHARDED = dict(USER_ONLY, shard_tokens=700)  # a few thousand tokens per source: several shards each


def build_rows(out: Path, corpus: Path, **params) -> dict:
    return build_data(out, sources=parse_specs("--source", [f"mine={corpus}:body"]), **{**SHARDED, **params})


def token_files(data_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data_dir)): p.read_bytes() for p in sorted(data_dir.rglob("*.bin"))}


def die_after_shards(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """The build "dies" (KeyboardInterrupt) right after its `count`-th shard is renamed into place, before the
    journal records it."""
    close, closed = shards_module._ShardBuffer.close, []

    def close_then_die(self, next_doc: int, next_offset: int):
        record = close(self, next_doc, next_offset)
        closed.append(record)
        if len(closed) == count:
            raise KeyboardInterrupt
        return record

    monkeypatch.setattr(shards_module._ShardBuffer, "close", close_then_die)


def test_shards_read_as_one_stream(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(200))
    manifest = build_rows(tmp_path / "d", corpus)
    shards = manifest["sources"]["mine"]["shards"]["train"]
    assert len(shards) >= 3 and all(s["tokens"] == 700 for s in shards[:-1])
    assert shards[0]["file"] == "train/mine.bin" and shards[1]["file"] == "train/mine.00001.bin"
    whole = np.concatenate([np.fromfile(tmp_path / "d" / s["file"], dtype=np.uint16) for s in shards])
    tokens = open_tokens(tmp_path / "d", "train", "mine")
    assert (
        isinstance(tokens, ShardedTokens)
        and len(tokens) == len(whole) == manifest["sources"]["mine"]["tokens"]["train"]
    )
    for start, stop in [(0, 10), (690, 710), (650, 2150), (len(whole) - 5, len(whole) + 9), (700, 700)]:
        assert np.array_equal(tokens[start:stop], whole[start:stop]), (start, stop)
    assert tokens[701] == whole[701] and tokens[-1] == whole[-1] == manifest["eos_id"]
    assert np.array_equal(np.asarray(tokens), whole)
    (tmp_path / "d" / shards[1]["file"]).write_bytes(b"\0\0")
    with pytest.raises(Exception, match="mine.00001.bin: 2 bytes"):
        open_tokens(tmp_path / "d", "train", "mine")


def test_worker_processes_write_the_same_bytes(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(200))
    one = build_rows(tmp_path / "one", corpus, num_proc=1)
    two = build_rows(tmp_path / "two", corpus, num_proc=2)
    assert one["hash"] == two["hash"]
    assert token_files(tmp_path / "one") == token_files(tmp_path / "two")
    assert len(token_files(tmp_path / "one")) >= 5


def test_killed_build_resumes_at_the_last_completed_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(200))
    reference = build_rows(tmp_path / "ref", corpus)
    die_after_shards(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        build_rows(tmp_path / "d", corpus)
    monkeypatch.undo()
    building = tmp_path / ".d.building"
    journal = json.loads((building / "journal.json").read_text())
    assert journal["read"] and journal["tokenizer"] and not (tmp_path / "d").exists()
    # The 2nd shard was renamed into place but not recorded: the journal holds the 1st, the resume rewrites the 2nd.
    assert [s["file"] for s in journal["written"]["train/mine"]["shards"]] == ["train/mine.bin"]
    first_shard = (building / "train" / "mine.bin").stat().st_mtime_ns
    resumed = build_rows(tmp_path / "d", corpus)
    assert resumed["hash"] == reference["hash"]
    assert token_files(tmp_path / "d") == token_files(tmp_path / "ref")
    assert (tmp_path / "d" / "train" / "mine.bin").stat().st_mtime_ns == first_shard, "a completed shard was rewritten"
    assert not building.exists()


def test_a_pretrained_tokenizer_encodes_while_reading_into_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pretrained tokenizer is known before reading, so documents are encoded as they are read (TokenSpill) and
    only cut into shards afterwards: the same token files as encoding the kept text after reading (the path of a
    trained BPE, here given that build's own tokenizer back), with 1 or 2 workers, and after a kill while cutting."""
    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(200))
    from_text = build_rows(tmp_path / "text", corpus)
    tokenizer = str(tmp_path / "text" / "tokenizer")
    one = build_rows(tmp_path / "one", corpus, tokenizer=tokenizer, num_proc=1)
    assert token_files(tmp_path / "one") == token_files(tmp_path / "text")
    assert one["sources"] == from_text["sources"] and one["tokenizer"]["kind"] == "pretrained"
    two = build_rows(tmp_path / "two", corpus, tokenizer=tokenizer, num_proc=2)
    assert two["hash"] == one["hash"]

    die_after_shards(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        build_rows(tmp_path / "d", corpus, tokenizer=tokenizer)
    monkeypatch.undo()
    journal = json.loads((tmp_path / ".d.building" / "journal.json").read_text())
    assert len(journal["written"]["train/mine"]["shards"]) == 2 and not (tmp_path / "d").exists()
    assert build_rows(tmp_path / "d", corpus, tokenizer=tokenizer)["hash"] == one["hash"]
    assert token_files(tmp_path / "d") == token_files(tmp_path / "one")
    assert not (tmp_path / "d" / "spill").exists()

    budget = [replace(spec, max_tokens=1500) for spec in parse_specs("--source", [f"mine={corpus}:body"])]
    from_text = build_data(tmp_path / "b-text", sources=budget, **SHARDED)
    spilled = build_data(
        tmp_path / "b-one", sources=budget, **SHARDED, tokenizer=str(tmp_path / "b-text" / "tokenizer")
    )
    assert spilled["sources"] == from_text["sources"] and 1500 <= spilled["sources"]["mine"]["tokens"]["train"] < 1600
    assert token_files(tmp_path / "b-one") == token_files(tmp_path / "b-text")


def test_resume_with_other_inputs_starts_over(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(80))
    stale = tmp_path / ".d.building"
    stale.mkdir()
    (stale / "journal.json").write_text(json.dumps({"key": "other inputs", "read": {"mine": {}}}))
    (stale / "leftover.bin").write_bytes(b"x")
    manifest = build_rows(tmp_path / "d", corpus)
    assert "leftover.bin" not in manifest["files"] and not stale.exists()


@needs_olmo
def test_planted_task_item_is_caught_and_counted(tmp_path: Path) -> None:
    """An ARC-Easy test question (materialized as `tasks prepare` does) planted in a user document is dropped and
    counted per task. Only arc_easy is indexed: the other tasks would only make the index slower to build."""
    prepare(tasks_dir=tmp_path / "prepared")  # a fresh clone has no tasks/data before `make demo`
    tasks = tmp_path / "tasks"
    (tasks / "data").mkdir(parents=True)
    (tasks / "data" / "arc_easy").symlink_to(tmp_path / "prepared" / "data" / "arc_easy")
    item = json.loads((tasks / "data" / "arc_easy" / "test.jsonl").read_text().splitlines()[5])
    rows = make_rows(80)
    planted = f"Homework notes. {item['question']} {' '.join(item['choices']['text'])} End of notes."
    rows[7]["body"] = planted
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    manifest = build_rows(tmp_path / "d", corpus, tasks_dir=tasks)
    contamination = manifest["contamination"]
    assert contamination["overlaps"]["mine"] == {"arc_easy": 1}
    assert contamination["dropped_docs"]["mine"] == 1 and "arc_easy" in contamination["tasks"]
    assert planted not in read_docs(tmp_path / "d", "val", "mine")
    assert manifest["sources"]["mine"]["docs"]["train"] + manifest["sources"]["mine"]["docs"]["val"] == 79
    result = CliRunner().invoke(app, ["data", "info", "--data", str(tmp_path / "d")])
    assert result.exit_code == 0 and "arc_easy 1" in result.output


def test_dedup_table_grows_and_keeps_every_hash() -> None:
    seen = SeenHashes(capacity=4)
    digests = [doc_hash(f"document {i}") for i in range(1000)]
    assert all(seen.add(d) for d in digests)
    assert not any(seen.add(d) for d in digests[::7])
    assert seen.count == 1000 and len(seen.table) >= 2000


@pytest.mark.slow
def test_default_build_bytes_equal_the_integration_checkout(tmp_path: Path) -> None:
    """The default build (no source options), small budget: this code and /work/main's write the same token files,
    tokenizer and manifest hash (~20 s: two builds)."""
    main = REPO_ROOT.parent / "main"
    if not (main / "nexus_eval" / "data" / "build.py").is_file():
        pytest.skip("no integration checkout beside this one")
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in TINY_DATA_PARAMS.items()}
    script = (
        "import sys, json; from pathlib import Path; from nexus_eval.data import build_data; "
        "p = json.loads(sys.argv[2]); p['gsm8k_dir'] = Path(p['gsm8k_dir']); "
        "print(build_data(Path(sys.argv[1]), **p)['hash'])"
    )
    env = dict(os.environ, PYTHONPATH=str(main))
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "main"), json.dumps(params)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    mine = build_data(tmp_path / "mine", **{**TINY_DATA_PARAMS, "gsm8k_dir": GSM8K_DIR})
    assert mine["hash"] == out.stdout.strip()
    theirs = load_manifest(tmp_path / "main")
    assert mine["files"] == theirs["files"]
    assert token_files(tmp_path / "mine") == token_files(tmp_path / "main")


def test_task_index_names_every_task_and_keeps_items_apart(tmp_path: Path) -> None:
    shared = "the quick brown fox jumps over the lazy dog while seven tired cats watch it quietly"
    first, second = " ".join(f"a{i}" for i in range(7)), " ".join(f"a{i}" for i in range(7, 13))
    for task, rows in {"one": [shared, first, second], "two": [shared], "three": ["unrelated words only here"]}.items():
        (tmp_path / "data" / task).mkdir(parents=True)
        lines = "".join(json.dumps({"question": q}) + "\n" for q in rows)
        (tmp_path / "data" / task / "test.jsonl").write_text(lines)
        (tmp_path / "data" / task / "train.jsonl").write_text(json.dumps({"question": f"train {shared}"}) + "\n")
    index = TaskNgrams(tmp_path)
    assert index.tasks == ["one", "three", "two"]
    assert index(f"Intro. {shared.upper()}! Outro.") == ["one", "two"]
    assert index(" ".join(f"a{i}" for i in range(13))) == [], "an n-gram across two items is no item's"
    assert index("the quick brown fox jumps over the lazy dog") == []
    # A batch is screened as one array: each document gets exactly what it gets alone, and an n-gram running from one
    # document into the next is neither's.
    halves = " ".join(shared.split()[:8]), " ".join(shared.split()[8:])
    batch = [f"Intro. {shared}", *halves, "", f"{shared} and " * 3, "short"]
    assert (
        index.found(Documents(batch))
        == [index(text) for text in batch]
        == [["one", "two"], [], [], [], ["one", "two"], []]
    )
    gsm8k = NgramIndex([shared, "five short words only here"])
    assert gsm8k.flags(Documents(batch)) == [gsm8k(text) for text in batch] == [True, False, False, False, True, False]
    assert gsm8k.flags(Documents(["here five short words only here too", "nothing"])) == [True, False]
