"""Provenance: what training, evaluation and comparison record about the code, libraries and device behind a result,
and how differences between runs are found and shown."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from nexus_eval import provenance
from nexus_eval.checkpoints import list_checkpoints
from nexus_eval.data import load_manifest
from nexus_eval.provenance import differences, environment, flatten


def test_environment_records_code_libraries_and_the_cpu_kernels() -> None:
    env = environment()
    assert env["libraries"]["torch"] == torch.__version__ and env["libraries"]["lm_eval"]
    assert env["device"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["device"]["threads"] == torch.get_num_threads() and env["device"]["cpu"]
    assert env["world_size"] == 1 and env["code"]["version"]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True
    )


def test_dirty_means_a_change_to_the_code_not_to_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    (repo / "nexus_eval").mkdir(parents=True)
    (repo / "nexus_eval" / "m.py").write_text("x = 1\n")
    (repo / "leaderboards").mkdir()
    (repo / "leaderboards" / "demo.json").write_text("{}\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "c")
    monkeypatch.setattr(provenance, "PACKAGE_DIR", repo / "nexus_eval")
    measure = provenance.code_version.__wrapped__  # uncached
    clean = measure()
    assert clean["git_sha"] and len(clean["git_sha"]) == 40 and clean["dirty"] is False
    (repo / "leaderboards" / "demo.json").write_text('{"regenerated": 1}\n')
    assert measure()["dirty"] is False  # a regenerated leaderboard is not a code change
    (repo / "nexus_eval" / "m.py").write_text("x = 2\n")
    assert measure()["dirty"] is True
    assert provenance.code_version_label(measure()).endswith(f"+{clean['git_sha'][:7]}.dirty")


def test_differences_name_dotted_fields() -> None:
    a = {"device": {"cpu": "A", "threads": 2}, "python": "3.11"}
    b = {"device": {"cpu": "B", "threads": 2}, "python": "3.11", "extra": 1}
    assert flatten(a) == {"device.cpu": "A", "device.threads": 2, "python": "3.11"}
    assert differences(a, b) == {"device.cpu": ("A", "B"), "extra": (None, 1)}
    assert differences(a, b, ignore=("device",)) == {"extra": (None, 1)}


def test_runs_record_their_data_build_and_environment(tiny_runs: dict[str, Path], tiny_data_dir: Path) -> None:
    manifest = load_manifest(tiny_data_dir)
    for run_dir in tiny_runs.values():
        info = json.loads((run_dir / "run.json").read_text())
        assert info["data_build"]["hash"] == manifest["hash"] and info["data_build"]["params"] == manifest["params"]
        assert info["data_build"]["tokenizer_hash"] and info["environment"]["libraries"]["torch"]
        for ckpt in list_checkpoints(run_dir):
            meta = json.loads((ckpt / "nexus.json").read_text())
            assert meta["environment"]["device"]["cpu_capability"] == info["environment"]["device"]["cpu_capability"]
            assert meta["code_version"] == provenance.code_version_label()
