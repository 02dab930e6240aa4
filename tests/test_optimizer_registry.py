"""The optimizer registry (nexus_eval/optimizer_registry.py) is the one place an optimizer is said: registering an
entry makes it trainable, estimated, recorded, accepted by load_run, paired by the guards on its own fields and named
in the report, with no other change; and no other module lists the optimizers' names."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.cli.train import optimizer_help
from nexus_eval.comparison import CompareOptions, CompareSettings, compare
from nexus_eval.comparison.guards import check_runs
from nexus_eval.comparison.match import load_run, load_runs
from nexus_eval.errors import ComparisonError, RecipeError
from nexus_eval.optimizer_registry import BUILT_IN, REGISTRY, CodeRef, OptimizerEntry, Update
from nexus_eval.training import load_recipe
from nexus_eval.training.memory import estimate
from nexus_eval.training.optimizer import param_groups
from nexus_eval.training.recipe import OptimSpec, recipe_keys
from tests.comparison.synthetic_runs import TASK, block_evaluation
from tests.comparison.test_compare_variants import set_optim, variant_runs
from tests.conftest import write_recipe
from tests.test_architecture import PACKAGE_DIR

TOY = "toy-sgd"


def build_toy_sgd(model: torch.nn.Module, optim: OptimSpec, entry: OptimizerEntry, **_: Any) -> torch.optim.SGD:
    return torch.optim.SGD(param_groups(model, optim), lr=optim.lr)


def toy_hparams(optim: OptimSpec, entry: OptimizerEntry, inner_loop: str = "exact") -> dict[str, Any]:
    return {"outer": entry.update.outer, "lr": optim.lr, "grad_clip": optim.grad_clip}


@pytest.fixture
def toy_sgd() -> Iterator[OptimizerEntry]:
    """A plain-SGD optimizer registered for one test: AdamW's clipped accumulated step with SGD's update. Its code
    lives here, not in nexus_eval: nothing else is told about it."""
    entry = OptimizerEntry(
        TOY,
        "Toy SGD",
        Update("none", None, "SGD"),
        own_fields=frozenset({"optim.grad_clip"}),  # it clips, as AdamW does; the inner loop's fields are not its
        build=CodeRef.of(build_toy_sgd),
        step=CodeRef("nexus_eval.training.step", "accumulated_step"),
        hparams=CodeRef.of(toy_hparams),
        source=CodeRef("torch.optim", "SGD"),
        outer_state_copies=0,
    )
    REGISTRY.register(entry)
    try:
        yield entry
    finally:
        REGISTRY.unregister(TOY)


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_a_registered_optimizer_trains_and_records_itself(
    toy_sgd: OptimizerEntry, tiny_data_dir: Path, tmp_path: Path
) -> None:
    recipe = write_recipe(tmp_path, tiny_data_dir)
    code, out = cli("train", str(recipe), "--optimizer", TOY, "--dry-run")
    assert code == 0 and TOY in out, out
    tiny = load_recipe(recipe)
    assert estimate(tiny, TOY, 512).state_bytes < estimate(tiny, "adamw", 512).state_bytes  # no moments

    code, out = cli("train", str(recipe), "--optimizer", TOY, "--out", str(tmp_path / "runs"), "--quiet")
    assert code == 0, out
    run = tmp_path / "runs" / f"t-{TOY}-s0"
    info = json.loads((run / "run.json").read_text())
    assert info["optimizer"] == TOY
    assert info["optimizer_hparams"] == {"outer": "SGD", "lr": tiny.optim.lr, "grad_clip": tiny.optim.grad_clip}
    assert info["optimizer_source"] == {"module": "torch.optim", "name": "SGD", "version": torch.__version__}
    final = json.loads(sorted(run.glob("ckpt-*"))[-1].joinpath("nexus.json").read_text())
    assert final["optimizer_source"] == info["optimizer_source"] and final["heldout_loss"] > 0
    assert load_run(run).label == TOY  # accepted by compare as a series of its own


def test_a_built_in_optimizer_records_where_its_code_came_from(tiny_data_dir: Path, tmp_path: Path) -> None:
    from nexus_eval import __version__
    from nexus_eval.training import set_up

    c = set_up(load_recipe(write_recipe(tmp_path, tiny_data_dir)), "nexus", 0, tiny_data_dir)
    source = c.identity("t-nexus-s0")["optimizer_source"]
    assert source == {"module": "nexus_eval.optim.nexus", "name": "Nexus", "version": __version__}


def test_a_registered_optimizer_is_compared_named_and_guarded(
    toy_sgd: OptimizerEntry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs recorded without optimizer_source (as every run before the registry) load and compare as before."""
    block_evaluation(monkeypatch)
    runs = variant_runs(tmp_path / "runs", tmp_path / "cache", ("adamw", "nexus", TOY))
    assert all("optimizer_source" not in json.loads((r / "run.json").read_text()) for r in runs)
    settings = CompareSettings(tasks=(TASK,), bootstrap_resamples=200)
    options = CompareOptions(cache_dir=tmp_path / "cache", out=tmp_path / "out", show=False, progress=False)
    results = compare(runs, settings, options)
    assert results["settings"]["series"] == ["adamw", "nexus", TOY]
    assert sorted(p["target"] for p in results["pairs"] if p["series"] == TOY) == [4.5, 5.0]
    assert "Toy SGD" in (tmp_path / "out" / "report.md").read_text()

    adamw, nexus, toy = runs
    set_optim(toy, grad_clip=0.5, inner_lr_ratio=5.0)  # its own field, and one only Nexus reads
    set_optim(nexus, grad_clip=0.5)
    with pytest.raises(ComparisonError, match=rf"tiny-adamw-s0 and tiny-{TOY}-s0 differ in optim.grad_clip"):
        check_runs(load_runs([adamw, toy]))  # both clip: compared
    assert check_runs(load_runs([nexus, toy])) == []  # Nexus does not clip, the toy has no inner loop


def test_an_unregistered_optimizer_is_one_line_naming_the_registered_ones(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"--optimizer must be one of adamw, nexus, .*fish, .*, got 'toy-sgd'"):
        REGISTRY.chosen(TOY)
    (run,) = variant_runs(tmp_path / "runs", tmp_path / "cache", ("adamw",))
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "optimizer": TOY}))
    message = rf"{re.escape(str(run))}: optimizer '{TOY}' in run.json/nexus.json is not one of adamw, nexus, "
    with pytest.raises(ComparisonError, match=message):
        load_runs([run])


def test_every_built_in_entry_resolves_and_owns_only_recipe_keys() -> None:
    keys = set(recipe_keys())
    for entry in BUILT_IN:
        for ref in (entry.build, entry.step, entry.hparams, entry.source):
            assert callable(ref.load()), f"{entry.name}: {ref}"
        # the code an entry names lives where training may import it (tests/test_architecture.py)
        assert entry.build.module.startswith("nexus_eval.training."), entry.build
        assert entry.step.module.startswith("nexus_eval.training."), entry.step
        assert entry.own_fields - {entry.table} <= keys, entry.name  # and its own [optim."NAME"] table
        assert entry.table == f"optim.{entry.name}"
    with pytest.raises(ValueError, match="registered already"):
        REGISTRY.register(BUILT_IN[0])
    assert all(entry.name in optimizer_help() for entry in BUILT_IN)  # train --optimizer's help lists them


# ---- the registry is the only place the optimizers are listed --------------------------------------------------

REGISTRY_MODULE = PACKAGE_DIR / "optimizer_registry.py"
OLD_TABLES = {"VARIANTS", "OPTIMIZERS", "DISPLAY_NAMES", "OWN_FIELDS", "OWNED", "COLORS"}
# Where a built-in name stands as a string for something else: the geometry stage's fine-tune optimizer "adamw"
# (torch's AdamW for fine-tuning a checkpoint) and the key of Nexus' settings in a sharded optimizer state.
OTHER_MEANINGS = {
    ("geometry/minima.py", "adamw"),
    ("geometry/measure.py", "adamw"),
    ("cli/geometry.py", "adamw"),
    ("training/checkpointer.py", "nexus"),
}


def string_constants(tree: ast.AST) -> list[ast.Constant]:
    """The string literals of a module, its docstrings left out."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def listings(where: str, source: str, names: set[str]) -> list[str]:
    """What in one module's `source` lists optimizers: an old table's name assigned, a registered name as a string."""
    tree = ast.parse(source)
    targets = [
        target
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
    ]
    assigned = {target.id for target in targets if isinstance(target, ast.Name)}
    found = [f"{where}: assigns {name}" for name in sorted(assigned & OLD_TABLES)]
    return found + [
        f"{where}:{node.lineno}: {node.value!r}"
        for node in string_constants(tree)
        if node.value in names and (where, node.value) not in OTHER_MEANINGS
    ]


def test_no_module_but_the_registry_lists_the_optimizers() -> None:
    names = {entry.name for entry in BUILT_IN}
    found = [
        line
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        if path != REGISTRY_MODULE
        for line in listings(path.relative_to(PACKAGE_DIR).as_posix(), path.read_text(encoding="utf-8"), names)
    ]
    assert found == [], "optimizer names listed outside nexus_eval/optimizer_registry.py"


def test_the_listing_check_sees_a_table_and_a_name() -> None:
    """A table of display names in the report would be caught, a docstring naming an optimizer would not."""
    source = '"""Compares adamw with nexus."""\nDISPLAY_NAMES = {"fish": "Fish"}\nshown = label == "nexus-k1"\n'
    found = listings("comparison/report.py", source, {"fish", "nexus-k1", "adamw"})
    assert found == [
        "comparison/report.py: assigns DISPLAY_NAMES",
        "comparison/report.py:2: 'fish'",
        "comparison/report.py:3: 'nexus-k1'",
    ]
    assert listings("training/checkpointer.py", 'saved["nexus"]\n', {"nexus"}) == []  # another meaning
