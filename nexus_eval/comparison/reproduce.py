"""`nexus-eval leaderboard reproduce NAME`: redo what leaderboards/NAME.json records and say what came out differently.

The JSON's run rows hold each run's provenance (schema 2): the data build's parameters and hash, the recipe, the
optimizer and seed, and the evaluation settings. Reproducing builds the data, trains every run, evaluates and compares
again with the recorded settings, in a scratch directory whose parts are reused when they are already there (so after
`make demo`, `--out .` reuses the demo's data, runs and eval cache and redoes only the comparison):

    OUT/data            the data build        OUT/runs/<run_id>     each run (resumed if present)
    OUT/results/eval    the eval cache        OUT/reports/reproduce-NAME   the reproduced results and report

The verdict: `equal` when every number is the same; `provenance differs` when numbers differ and so does some
provenance field (a different CPU, library or code version; printed, not a failure); `not deterministic` when
numbers differ with identical provenance, which only nondeterministic code can cause.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus_eval.comparison.leaderboard import LEADERBOARD_DIR, check_name, load
from nexus_eval.comparison.pipeline import compare
from nexus_eval.comparison.provenance import comparable
from nexus_eval.comparison.settings import CompareOptions, CompareSettings
from nexus_eval.data import build_data, load_manifest
from nexus_eval.data.build import RECORDED_PARAMS
from nexus_eval.display import console
from nexus_eval.errors import ComparisonError, NexusError
from nexus_eval.io import is_safe_name
from nexus_eval.provenance import differences
from nexus_eval.schema import CompareResults, DataBuild, RunProvenance, RunRow
from nexus_eval.tasks.pairs import PAIRS_PREFIX
from nexus_eval.tasks.registry import SUITES, available_tasks
from nexus_eval.training import parse_recipe, run_dir_for, train
from nexus_eval.training.recipe import VARIANT_ONLY_DEFAULTS

EQUAL, PROVENANCE_DIFFERS, NOT_DETERMINISTIC = "equal", "provenance differs", "not deterministic"
# Two numbers are "the same" when they agree to this relative precision (the JSON stores full float64 values, so
# deterministic code reproduces them exactly; the slack only absorbs a last-bit difference of a summation order).
REL_TOL = 1e-9
# Fields of a task/OOD row that are numbers a reader sees.
NUMBER_FIELDS = ("reference", "candidate", "mean", "low", "high")


@dataclass(frozen=True)
class NumberDiff:
    """One number of the leaderboard, committed and reproduced."""

    where: str  # e.g. "target 5.5 · seed 0 · arith_steps1_mc · mean"
    committed: Any
    reproduced: Any

    @property
    def same(self) -> bool:
        a, b = self.committed, self.reproduced
        if isinstance(a, int | float) and isinstance(b, int | float):
            return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)
        return a == b

    @property
    def difference(self) -> float | None:
        a, b = self.committed, self.reproduced
        numbers = isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool)
        return float(b - a) if numbers else None


@dataclass
class Reproduction:
    name: str
    numbers: list[NumberDiff]  # every compared number, same or not
    provenance: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)  # run → field → (then, now)
    reproduced: CompareResults | None = None
    out: Path | None = None

    @property
    def differing(self) -> list[NumberDiff]:
        return [n for n in self.numbers if not n.same]

    @property
    def verdict(self) -> str:
        if not self.differing:
            return EQUAL
        return PROVENANCE_DIFFERS if any(self.provenance.values()) else NOT_DETERMINISTIC


def recorded_provenance(results: CompareResults, where: str) -> dict[str, RunProvenance]:
    """run_id → provenance of every run row; ComparisonError when a row has none (a leaderboard of schema 1)."""
    found = {}
    for row in results["runs"]:
        if row.get("external"):
            raise ComparisonError(
                f"{where}: series {row['series']} was not trained by this harness: only comparisons of the harness's "
                "own runs can be reproduced"
            )
        provenance = row.get("provenance")
        if not provenance or not provenance.get("recipe") or not provenance.get("data_build"):
            raise ComparisonError(
                f"{where}: run {row['run_id']} records no provenance (recipe, data build): regenerate the leaderboard "
                "with `nexus-eval compare ... --leaderboard NAME` before reproducing it"
            )
        found[row["run_id"]] = provenance
    return found


def refuse_unrecorded(results: CompareResults, provenance: dict[str, RunProvenance], where: str) -> None:
    """ComparisonError, before anything is built, unless the JSON asks for what a comparison records and nothing
    else: registry task names (never a task YAML by path: lm-eval imports the helpers beside it), a registry suite,
    the data build's recorded parameters (numbers, no path) and recipe keys a run records (not [parallel] or
    train.eval_tasks, which a recorded recipe never holds). A leaderboard may come from elsewhere."""
    settings = results["settings"]
    for task in settings.get("tasks") or []:
        if not registry_task(task):
            raise ComparisonError(
                f"{where}: settings.tasks names {task!r}, not a task of the registry (tasks/): refused, reproduce "
                "runs registry tasks only, never a task YAML by path (lm-eval imports the helpers beside it)"
            )
    if settings.get("suite") is not None and settings["suite"] not in SUITES:
        raise ComparisonError(f"{where}: settings.suite {settings['suite']!r} is not a suite of the registry: refused")
    recipe_keys = recorded_recipe_keys()
    for row in results["runs"]:
        run = f"{where}: run {row['run_id']!r}"
        if not is_safe_name(str(row["run_id"])) or not is_safe_name(str(row["series"])):
            raise ComparisonError(f"{run}: its run id or series label {row['series']!r} is not a plain name: refused")
        params = (provenance[row["run_id"]]["data_build"] or {}).get("params")
        if not isinstance(params, dict):
            raise ComparisonError(f"{run}: its data build records no parameters to build it again from")
        for key, value in params.items():
            kind = RECORDED_PARAMS.get(key)
            if kind is None or not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                raise ComparisonError(
                    f"{run}: data build parameter {key}={value!r} is not one `data build` records "
                    f"({', '.join(RECORDED_PARAMS)}: numbers, no path): refused"
                )
        recipe = provenance[row["run_id"]]["recipe"] or {}
        for section, value in recipe.items():
            allowed = recipe_keys.get(section)
            extra = sorted(set(value) - allowed) if isinstance(value, dict) and allowed is not None else []
            if section not in recipe_keys or extra:
                key = f"{section}.{extra[0]}" if extra else section
                raise ComparisonError(f"{run}: recipe key {key} is not one a run records: refused")


def registry_task(name: str) -> bool:
    """A task of tasks/, or one `tasks prepare --data` writes there (ood_<domain>, pairs_<family>): a name, not a
    path."""
    if re.fullmatch(rf"(ood_|{PAIRS_PREFIX})[a-z][a-z0-9_]*", name):  # written from a build's names (NAME_PATTERN)
        return True
    return is_safe_name(name) and not name.endswith((".yaml", ".yml")) and name in available_tasks()


def recorded_recipe_keys() -> dict[str, set[str] | None]:
    """The keys of a recipe as Recipe.to_dict writes it into a run (section → its keys; None: a plain value)."""
    written = parse_recipe({}, "recipe").to_dict()
    keys = {section: set(value) if isinstance(value, dict) else None for section, value in written.items()}
    keys["optim"] = (keys["optim"] or set()) | set(VARIANT_ONLY_DEFAULTS)  # recorded when not at their default
    return keys


def rebuild_data(build: DataBuild, data_dir: Path, progress: bool) -> str:
    """The data build at data_dir: the one already there, else one built from the recorded parameters; returns its
    hash. A hash other than the recorded one is not an error: the source texts come from system packages whose
    versions vary between machines, and the difference shows in the runs' provenance (data_hash), which the verdict
    reads."""
    if (data_dir / "manifest.json").is_file():
        found = str(load_manifest(data_dir)["hash"])
    else:
        try:
            found = str(build_data(data_dir, **build["params"], progress=progress)["hash"])
        except TypeError as e:  # parameters this version of `data build` does not take
            raise ComparisonError(f"recorded data build parameters {build['params']} cannot be rebuilt ({e})") from None
    if found != build["hash"]:
        console().print(
            f"[yellow]data build {data_dir}: hash {found[:12]}…, the leaderboard recorded {build['hash'][:12]}…[/]"
        )
    return found


def retrain(row: RunRow, provenance: RunProvenance, runs_dir: Path, data_dir: Path, where: str, progress: bool) -> Path:
    recipe = parse_recipe(dict(provenance["recipe"] or {}), f"{where} run {row['run_id']} recipe")
    seed = 0 if row["seed"] is None else int(row["seed"])
    optimizer = str(row["optimizer"])
    run_dir = run_dir_for(runs_dir, recipe, optimizer, seed)
    if run_dir.name != row["run_id"]:
        raise ComparisonError(f"{where}: run {row['run_id']} would be trained again as {run_dir.name}")
    return train(recipe, optimizer, seed, runs_dir, data_dir, resume=run_dir.is_dir(), progress=progress)


def settings_of(results: CompareResults) -> CompareSettings:
    """The comparison's settings as recorded (the resolved targets and task names)."""
    s = results["settings"]
    return CompareSettings(
        mode=s["mode"],
        tolerance=s["tolerance"] if s.get("tolerance") is not None else CompareSettings.tolerance,
        targets=tuple(s["targets"]) or None,
        suite=s.get("suite"),
        tasks=tuple(s["tasks"]) or None,
        backend=s["backend"],
        limit=s.get("limit"),
        num_fewshot=s.get("num_fewshot"),
        bootstrap_resamples=s["bootstrap_resamples"],
        bootstrap_seed=s.get("bootstrap_seed", 0),
        level=s.get("level", CompareSettings.level),
        allow_mismatch=tuple(sorted({m["field"] for m in results.get("allowed_mismatches") or []})),
        reference=s["reference"],
        loss_unit=s["loss_unit"],
        tolerance_auto=bool(s.get("tolerance_auto", False)),
        curve_points=s.get("curve_points", CompareSettings.curve_points),
        curve_losses=tuple(s["curve_losses"]) if s.get("curve_losses") else None,
    )


def _batch_size(provenance: dict[str, RunProvenance]) -> int | str | None:
    """The batch size the committed results were evaluated with: what lm-eval's model class got (its model_args;
    the settings' batch_size was recorded even where the vllm backend ignored it), None for the backend's default."""
    for entry in (e for p in provenance.values() for e in p.get("evaluation") or []):
        return entry["model_args"].get("batch_size", entry["batch_size"])
    return None


def _row_key(row: dict[str, Any], name_field: str) -> str:
    return f"{row['series']} · target {row['target']:g} · seed {row['seed']} · {row[name_field]}"


def number_diffs(committed: CompareResults, reproduced: CompareResults) -> list[NumberDiff]:
    """Every pair's checkpoints and losses, every task and OOD row's numbers: committed against reproduced."""
    diffs: list[NumberDiff] = []

    def pairs(results: CompareResults) -> dict[str, Any]:
        return {f"{p['series']} · target {p['target']:g} · seed {p['seed']}": p for p in results["pairs"]}

    before, after = pairs(committed), pairs(reproduced)
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        for side in ("reference", "candidate"):
            for part in ("checkpoint", "loss"):
                then = a[side][part] if a else None
                now = b[side][part] if b else None
                diffs.append(NumberDiff(f"{key} · {side} {part}", then, now))
    for table, name_field in (("tasks", "task"), ("ood", "domain")):
        rows_a = {_row_key(r, name_field): r for r in committed[table]}
        rows_b = {_row_key(r, name_field): r for r in reproduced[table]}
        for key in sorted(set(rows_a) | set(rows_b)):
            a, b = rows_a.get(key, {}), rows_b.get(key, {})
            for number in NUMBER_FIELDS:
                diffs.append(NumberDiff(f"{key} · {number}", a.get(number), b.get(number)))
    return diffs


def provenance_diffs(
    committed: dict[str, RunProvenance], reproduced: CompareResults
) -> dict[str, dict[str, tuple[Any, Any]]]:
    """run → provenance field → (committed, reproduced), for the fields that differ."""
    now = {r["run_id"]: r.get("provenance") for r in reproduced["runs"]}
    return {
        run_id: differences(comparable(then), comparable(now[run_id])) if now.get(run_id) else {"run": (run_id, None)}
        for run_id, then in committed.items()
    }


def reproduce(name: str, out: Path, leaderboard_dir: Path = LEADERBOARD_DIR, progress: bool = True) -> Reproduction:
    """Data build → training → evaluation → comparison as leaderboards/NAME.json records them, under `out`."""
    check_name(name)
    where = str(leaderboard_dir / f"{name}.json")
    committed = load(leaderboard_dir / f"{name}.json")
    provenance = recorded_provenance(committed, where)
    refuse_unrecorded(committed, provenance, where)
    builds = {p["data_build"]["hash"]: p["data_build"] for p in provenance.values() if p["data_build"]}
    if len(builds) != 1:
        raise ComparisonError(f"{where}: runs record {len(builds)} data builds; reproduce needs exactly one")
    data_dir, runs_dir = out / "data", out / "runs"
    try:
        rebuild_data(next(iter(builds.values())), data_dir, progress)
        run_dirs = [
            retrain(row, provenance[row["run_id"]], runs_dir, data_dir, where, progress) for row in committed["runs"]
        ]
    except NexusError as e:
        raise ComparisonError(f"reproducing {where}: {e}") from None
    report_dir = out / "reports" / f"reproduce-{name}"
    options = CompareOptions(
        batch_size=_batch_size(provenance),
        cache_dir=out / "results" / "eval",
        out=report_dir,
        geometry_data_dir=data_dir if committed.get("geometry") else None,
        progress=progress,
        show=False,
        data_dir=data_dir,
        loss_cache_dir=out / "results" / "loss",
    )
    # Runs are labelled as recorded (a label other than the optimizer was given as LABEL=RUN_DIR).
    labelled = [f"{row['series']}={path}" for row, path in zip(committed["runs"], run_dirs, strict=True)]
    reproduced = compare(labelled, settings_of(committed), options)
    return Reproduction(
        name,
        number_diffs(committed, reproduced),
        provenance_diffs(provenance, reproduced),
        reproduced,
        report_dir,
    )


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "—" if value is None else str(value)


def print_reproduction(rep: Reproduction, limit: int = 40) -> None:
    """Committed vs reproduced: the numbers that differ (all of them compared), the provenance fields that differ per
    run, and the verdict."""
    from rich.table import Table

    shown = console()
    differing = rep.differing
    if differing:
        table = Table(title=f"leaderboard {rep.name}: numbers that differ", show_lines=False)
        for column in ("where", "committed", "reproduced", "difference"):
            table.add_column(column, overflow="fold")
        for n in differing[:limit]:
            table.add_row(n.where, _shown(n.committed), _shown(n.reproduced), _shown(n.difference))
        shown.print(table)
        if len(differing) > limit:
            shown.print(f"… and {len(differing) - limit} more (all in {rep.out / 'results.json'})")
    shown.print(f"{len(rep.numbers)} numbers compared, {len(differing)} differ")
    for run_id, fields in rep.provenance.items():
        for name, (then, now) in fields.items():
            shown.print(f"provenance of {run_id}: [bold]{name}[/] {_shown(then)[:60]} → {_shown(now)[:60]}")
    if not any(rep.provenance.values()):
        shown.print("provenance: identical for every run")
    color = {EQUAL: "green", PROVENANCE_DIFFERS: "yellow", NOT_DETERMINISTIC: "red"}[rep.verdict]
    shown.print(f"[{color}]verdict: {rep.verdict}[/]  (reproduced results: {rep.out})")
