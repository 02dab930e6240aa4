"""The package's layering, checked on its source: one package per pipeline stage, lower stages never importing
higher ones, no import cycles, and the optimizer importable on its own.

Every import counts, including the ones inside functions (a lazy import is still a dependency), and the checks run
on the AST, so they see the code as written, not only what one test happened to import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "nexus_eval"

# The modules every stage may use: the package root (its version), the error types, file writes, terminal display,
# record types, the checkpoint format (the contract between training and everything that reads checkpoints),
# provenance (code, library and device records stored with every result), signals (SIGINT/SIGTERM raise, so a
# command or an eval worker unwinds) and the optimizer registry (the named optimizers as data: the code its entries
# name is imported only when a run is set up). "": the package root.
BASE = {"", "errors", "io", "display", "schema", "checkpoints", "provenance", "signals", "optimizer_registry"}
# What each unit may import (besides itself). Reading order: data → training → (tasks) → evaluation / geometry →
# comparison → cli. optim is torch-only: users import it into their own training code.
ALLOWED: dict[str, set[str]] = {
    "optim": set(),
    "errors": set(),
    "io": set(),
    "display": set(),
    "schema": set(),
    "checkpoints": {"errors", "io", "schema"},
    "provenance": {"schema"},
    "signals": set(),
    "optimizer_registry": {"errors", "io", "schema"},
    # GGUF → HF checkpoint import: the checkpoint format's one converter, used by the CLI (and benchmarks)
    "checkpoints_gguf": {"errors", "io", "schema", "checkpoints", "provenance"},
    "data": BASE,
    "training": BASE | {"optim", "data"},
    "tasks": BASE | {"data"},
    "evaluation": BASE | {"data", "training", "tasks"},
    "geometry": BASE | {"data", "training"},
    "comparison": BASE | {"data", "training", "tasks", "evaluation", "geometry"},
    "cli": BASE | {"checkpoints_gguf", "optim", "data", "training", "tasks", "evaluation", "geometry", "comparison"},
    # the package root only binds `nexus_eval.evaluate` lazily (module __getattr__), see nexus_eval/__init__.py
    "": {"evaluation"},
}


def module_name(path: Path, root: Path = PACKAGE_DIR) -> str:
    parts = ["nexus_eval", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path = PACKAGE_DIR) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imported_modules(name: str, source: str, known: set[str], is_package: bool) -> set[str]:
    """The nexus_eval modules that `source` (module `name`) imports anywhere in its body."""
    found: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "nexus_eval")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "nexus_eval":
                continue
            for alias in node.names:  # `from pkg import submodule` depends on the submodule, else on pkg itself
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m != name}


def import_graph(root: Path = PACKAGE_DIR, overrides: dict[str, str] | None = None) -> dict[str, set[str]]:
    """module → nexus_eval modules it imports; `overrides` replaces a module's source (to test the checks)."""
    modules = package_modules(root)
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        source = (overrides or {}).get(name) or path.read_text(encoding="utf-8")
        graph[name] = imported_modules(name, source, known, path.name == "__init__.py")
    return graph


def unit(module: str) -> str:
    """The stage (or base module) a module belongs to: nexus_eval.training.loop → training; the root → ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        own = unit(module)
        for target in sorted(targets):
            other = unit(target)
            if other != own and other not in ALLOWED.get(own, set()):
                problems.append(f"{module} imports {target}: {own or 'nexus_eval'} may not depend on {other}")
    return problems


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_every_module_belongs_to_a_known_stage() -> None:
    units = {unit(m) for m in package_modules()}
    assert units <= set(ALLOWED), f"modules outside the known stages: {sorted(units - set(ALLOWED))}"


def test_lower_stages_never_import_higher_ones() -> None:
    assert layering_violations(import_graph()) == []


def test_no_import_cycles() -> None:
    assert import_cycles(import_graph()) == []


def test_the_checks_catch_a_violation_and_a_cycle() -> None:
    """A data module importing the trainer must be flagged, and two modules importing each other must form a cycle."""
    graph = import_graph(overrides={"nexus_eval.data.store": "from nexus_eval.training import loop\n"})
    assert any(v.startswith("nexus_eval.data.store imports nexus_eval.training") for v in layering_violations(graph))
    lazy = "def f():\n    from nexus_eval.evaluation import runner\n"  # a lazy import is a dependency too
    graph = import_graph(overrides={"nexus_eval.evaluation.cache": lazy})
    assert any({"nexus_eval.evaluation.cache", "nexus_eval.evaluation.runner"} <= set(c) for c in import_cycles(graph))


def test_relative_imports_resolve() -> None:
    known = {"nexus_eval.training.loop", "nexus_eval.training.step", "nexus_eval.training"}
    got = imported_modules("nexus_eval.training.loop", "from .step import x\nfrom . import step\n", known, False)
    assert got == {"nexus_eval.training.step"}


@pytest.mark.parametrize("stage", ["nexus_eval.optim", "nexus_eval.data", "nexus_eval.training"])
def test_importing_a_stage_pulls_in_only_what_it_may(stage: str) -> None:
    """At run time too: `import nexus_eval.optim` loads nothing else of nexus_eval (users import it alone), and
    lower stages load no higher one."""
    code = f"import sys, {stage}; print(' '.join(sorted(m for m in sys.modules if m.startswith('nexus_eval'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    own = unit(stage)
    outside = sorted({unit(m) for m in loaded} - {own, ""} - ALLOWED[own])
    assert outside == [], f"import {stage} loaded {outside}"
    if stage == "nexus_eval.optim":
        assert all(m == "nexus_eval" or m.startswith("nexus_eval.optim") for m in loaded), loaded
