"""Files received from elsewhere stay data: a run directory's trainer state, a data build's manifest and a
leaderboard JSON are read, never run. Each hostile input is refused with one line naming the file, exit 2, and
nothing written or imported."""

from __future__ import annotations

import functools
import io
import json
import math
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from nexus_eval.checkpoints import STATE_FILE
from nexus_eval.cli import app
from nexus_eval.optim import Nexus
from nexus_eval.optim.fish import Fish
from nexus_eval.training.checkpointer import load_trainer_state
from tests.conftest import REPO_ROOT, write_recipe


class CreatesFile:
    """Unpickled, it creates `path`: what any code a pickle could run would be able to do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.path), "w")


def one_line(output: str) -> bool:
    return len(output.strip().splitlines()) == 1 and "Traceback" not in output


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# ---- a run directory: optimizer/state.pt ----


def saved_and_loaded(state: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "state.pt"
    torch.save(state, path)
    return dict(load_trainer_state(path))


def trainer_state_with(optimizer: dict[str, Any]) -> dict[str, Any]:
    return {
        "optimizer": optimizer,
        "step": 3,
        "tokens": 384,
        "targets_left": [0.5],
        "last_val": math.inf,
        "recipe_hash": "0" * 64,
        "optimizer_name": "nexus",
        "total_steps": 6,
        "torch_rng": torch.get_rng_state(),
        "cosine_grads": {"text": torch.ones(3), "code": torch.zeros(3)},
    }


@pytest.mark.parametrize("kind", ["adamw", "nexus", "fish"])
def test_every_optimizers_trainer_state_loads_as_plain_data(kind: str, tmp_path: Path) -> None:
    """What the trainer saves (the optimizer's state_dict, Nexus' and Fish's θ0 inside an outer step, the RNG
    state, the gradient-cosine sums) is tensors, numbers, strings, lists and dicts: it loads without running
    pickled code."""
    model = torch.nn.Linear(3, 2)
    if kind == "adamw":
        opt: Any = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    elif kind == "nexus":
        opt = Nexus(torch.optim.AdamW(model.parameters(), lr=1e-3), inner_lr_ratio=10.0)
    else:
        opt = Fish(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    if kind == "adamw":
        opt.step()
    else:
        opt.inner_step()  # a save inside an outer step: θ0 is part of the state
    state = trainer_state_with(opt.state_dict())
    loaded = saved_and_loaded(state, tmp_path)
    assert torch.equal(loaded["torch_rng"], state["torch_rng"]) and loaded["last_val"] == math.inf
    buffer = io.BytesIO()
    torch.save(loaded["optimizer"], buffer)
    again = io.BytesIO()
    torch.save(state["optimizer"], again)
    assert buffer.getvalue() == again.getvalue()  # the same state, byte for byte once saved again
    opt.load_state_dict(loaded["optimizer"])


def test_a_state_file_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "state.pt"
    torch.save({**trainer_state_with({}), "optimizer": CreatesFile(marker)}, path)
    from nexus_eval.errors import CheckpointError

    with pytest.raises(CheckpointError, match="io.open") as caught:
        load_trainer_state(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists()


def test_resume_from_a_run_whose_state_would_run_code(
    tiny_runs: dict[str, Path], tiny_data_dir: Path, tmp_path: Path
) -> None:
    """`train --resume` over a run directory from elsewhere: its optimizer/state.pt is a pickle whose loading
    would create a file. One line naming it, exit 2, and the file is not created."""
    out = tmp_path / "runs"
    run = out / tiny_runs["adamw"].name
    shutil.copytree(tiny_runs["adamw"], run)
    shutil.rmtree(run / "ckpt-000006")  # a run to continue from its step-3 checkpoint
    state = run / "ckpt-000003" / STATE_FILE
    marker = tmp_path / "ran"
    torch.save({**torch.load(state, weights_only=True), "optimizer": CreatesFile(marker)}, state)
    recipe = write_recipe(tmp_path, tiny_data_dir)
    result = CliRunner().invoke(app, ["train", str(recipe), "--optimizer", "adamw", "--out", str(out), "--resume"])
    assert result.exit_code == 2 and one_line(result.output), result.output
    assert str(state) in result.output and not marker.exists(), result.output


def test_a_sharded_state_whose_metadata_or_values_would_run_code(tmp_path: Path) -> None:
    """A torchrun run's optimizer state (torch.distributed.checkpoint): torch reads its .metadata with a plain
    pickle.load and its non-tensor values with weights_only=False. The metadata is read first through an allow-list
    and the values as plain data, so a hostile one is refused before torch unpickles it."""
    import torch.distributed.checkpoint as dcp

    from nexus_eval.errors import CheckpointError
    from nexus_eval.training.checkpointer import check_sharded_metadata, plain_data_planner

    marker = tmp_path / "ran"
    good, bad = tmp_path / "good", tmp_path / "bad"
    with warnings.catch_warnings():  # "torch.distributed is disabled": one process, as a resume without torchrun
        warnings.simplefilter("ignore")
        dcp.save({"optimizer": {"lr": 0.1, "exp_avg": torch.ones(3)}}, checkpoint_id=good, no_dist=True)
        dcp.save({"optimizer": {"lr": CreatesFile(marker), "exp_avg": torch.ones(3)}}, checkpoint_id=bad, no_dist=True)
        check_sharded_metadata(good)
        loaded: dict[str, Any] = {"optimizer": {"lr": None, "exp_avg": torch.zeros(3)}}
        dcp.load(loaded, checkpoint_id=good, planner=plain_data_planner(good), no_dist=True)
        assert loaded["optimizer"]["lr"] == 0.1 and torch.equal(loaded["optimizer"]["exp_avg"], torch.ones(3))
        with pytest.raises(dcp.api.CheckpointException) as caught:
            template = {"optimizer": {"lr": None, "exp_avg": torch.zeros(3)}}
            dcp.load(template, checkpoint_id=bad, planner=plain_data_planner(bad), no_dist=True)
    refusal = next(iter(caught.value.failures.values()))[0]
    assert isinstance(refusal, CheckpointError) and "io.open" in str(refusal) and not marker.exists()
    (bad / ".metadata").write_bytes(pickle.dumps(CreatesFile(marker)))  # names no DCP metadata class
    with pytest.raises(CheckpointError, match=r"\.metadata: refused: GLOBAL io\.open"):
        check_sharded_metadata(bad)
    assert not marker.exists()


# ---- a data build: manifest.json ----


def hostile_data_dir(root: Path, domain: str) -> Path:
    """A data directory whose manifest passes the shape checks and names an OOD domain `domain`."""
    data = root / "received-data"
    (data / "ood").mkdir(parents=True)
    (data / "ood" / "x.jsonl").write_text(json.dumps({"text": "a document"}) + "\n")
    entry = {"files": {"ood_jsonl": "ood/x.jsonl"}, "tokens": {"ood": 0}}
    manifest = {"version": 2, "vocab_size": 512, "eos_id": 0, "tokenizer_dir": "tokenizer", "hash": "f" * 64}
    manifest |= {"sources": {}, "ood": {domain: entry}, "files": {}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    return data


def test_a_manifest_naming_a_domain_that_would_write_yaml_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The domain name holds `../` (the YAML file would land outside tasks/generated/) and a newline (a line of its
    own in the YAML text: here a `!function` that lm-eval would import). `tasks prepare --data` refuses the manifest
    before it writes anything, with one line."""
    from nexus_eval.tasks import materialize, show

    domain = "../../../escaped\ndataset_kwargs: !function evil.load"
    data = hostile_data_dir(tmp_path, domain)
    tasks_dir = tmp_path / "checkout" / "tasks"
    tasks_dir.mkdir(parents=True)
    monkeypatch.setattr(show, "prepare", functools.partial(materialize.prepare, tasks_dir=tasks_dir))
    before = files_under(tmp_path)
    result = CliRunner().invoke(app, ["tasks", "prepare", "--data", str(data)])
    assert result.exit_code == 2 and one_line(result.output), result.output
    assert "manifest.json" in result.output and "OOD domain" in result.output, result.output
    assert files_under(tmp_path) == before


def test_task_yaml_is_written_by_a_yaml_library(tmp_path: Path) -> None:
    """A path or directory name holding a line break and a tag stays one string of the task, not a line of YAML."""
    from nexus_eval.tasks.materialize import ood_task_yaml
    from nexus_eval.tasks.registry import FunctionRef, read_task_yaml

    data_file = Path("/data\ndataset_kwargs: !function evil.load/ood.jsonl")
    path = tmp_path / "ood_x.yaml"
    path.write_text(ood_task_yaml(Path("/d\nprocess_docs: !function evil.docs"), "x", data_file, "h"))
    config = read_task_yaml(path)
    assert config["dataset_kwargs"] == {"data_files": {"test": str(data_file)}} and "process_docs" not in config
    assert not any(isinstance(value, FunctionRef) for value in config.values())


# ---- a leaderboard JSON: what `leaderboard reproduce` runs ----


def hostile_task_yaml(root: Path, marker: Path) -> Path:
    """A task YAML whose helper module, beside it, creates `marker` when imported (as lm-eval imports it)."""
    directory = root / "received-tasks"
    directory.mkdir()
    (directory / "utils.py").write_text(f"open({str(marker)!r}, 'w').close()\n\ndef docs(d):\n    return d\n")
    yaml_path = directory / "evil.yaml"
    yaml_path.write_text(
        "task: evil\ndataset_path: json\noutput_type: loglikelihood\ntest_split: test\n"
        "process_docs: !function utils.docs\n"
    )
    return yaml_path


def edit_settings_tasks(results: dict[str, Any], yaml_path: Path) -> None:
    results["settings"]["tasks"] = ["arith_gold_bpb", str(yaml_path)]


def edit_build_params(results: dict[str, Any], yaml_path: Path) -> None:
    for row in results["runs"]:
        row["provenance"]["data_build"]["params"]["tasks_dir"] = str(yaml_path.parent)


def edit_recipe_eval_tasks(results: dict[str, Any], yaml_path: Path) -> None:
    for row in results["runs"]:
        row["provenance"]["recipe"]["train"]["eval_tasks"] = [str(yaml_path)]


@pytest.mark.parametrize(
    ("edit", "refused"),
    [
        (edit_settings_tasks, "settings.tasks"),
        (edit_build_params, "tasks_dir"),
        (edit_recipe_eval_tasks, "eval_tasks"),
    ],
)
def test_a_leaderboard_naming_a_task_yaml_or_a_path_is_refused(edit: Any, refused: str, tmp_path: Path) -> None:
    """`leaderboard reproduce` runs registry tasks with the parameters a comparison records, nothing else: a task
    YAML path (whose helpers lm-eval imports), a build parameter naming a path, a recipe key no recipe records. One
    line saying what is refused, exit 2, nothing built, nothing imported."""
    marker = tmp_path / "imported"
    yaml_path = hostile_task_yaml(tmp_path, marker)
    results = json.loads((REPO_ROOT / "leaderboards" / "study.json").read_text())
    edit(results, yaml_path)
    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "received.json").write_text(json.dumps(results))
    out = tmp_path / "out"
    args = ["leaderboard", "reproduce", "received", "--dir", str(boards), "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and one_line(result.output), result.output
    assert refused in result.output and "received.json" in result.output, result.output
    assert not out.exists() and not marker.exists()
