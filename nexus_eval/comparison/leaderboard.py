"""Leaderboards: leaderboards/<name>.md (+ .png, and .curves.png when the results have curves) generated from the
compare results stored beside it (<name>.json).

The Markdown is a pure function of the JSON (fixed number formatting, no timestamps), so `check` can tell whether a
committed .md is exactly what its .json produces; `refresh` rewrites every .md and .png from the JSON.

<name>.disagreements.md (`compare --leaderboard NAME --disagreements`) is generated from the eval samples, not from
the JSON: `check` accepts it beside its <name>.json without comparing it, and `refresh` leaves it alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nexus_eval.comparison.plots import curve_panels, write_loss_curves, write_overview
from nexus_eval.comparison.report import render_markdown
from nexus_eval.comparison.results_schema import upgraded
from nexus_eval.errors import ComparisonError
from nexus_eval.io import SAFE_NAME_RULE, is_safe_name, write_json_atomic, write_text_atomic
from nexus_eval.schema import COMPARE_RESULTS_KIND, COMPARE_RESULTS_READABLE, CompareResults

LEADERBOARD_DIR = Path("leaderboards")
REQUIRED = {
    "schema": int,
    "kind": str,
    "settings": dict,
    "runs": list,
    "pairs": list,
    "unmatched": list,
    "tasks": list,
    "overlap": list,
    "ood": list,
    "points": list,
    "curves": list,
}
# Keys added since schema 1 was first written: older results lack them, so they are checked only when present.
OPTIONAL = {"allowed_mismatches": list, "noise": dict, "loss_curves": dict, "geometry_seeds": list}
SETTINGS = ("mode", "tasks", "backend", "bootstrap_resamples")
DISAGREEMENTS_SUFFIX = ".disagreements.md"


def check_name(name: str) -> str:
    if not is_safe_name(name):
        raise ComparisonError(f"--leaderboard {name!r}: {SAFE_NAME_RULE} (it names leaderboards/NAME.md)")
    return name


def disagreements_path(name: str, directory: Path = LEADERBOARD_DIR) -> Path:
    """leaderboards/NAME.disagreements.md: the items each pair of the leaderboard scores differently."""
    return directory / f"{check_name(name)}{DISAGREEMENTS_SUFFIX}"


def validate(results: Any, where: str) -> CompareResults:
    """The results dict, or ComparisonError naming the file and the first thing wrong with it."""
    if not isinstance(results, dict):
        raise ComparisonError(f"{where}: expected a JSON object of compare results")
    for key, kind in REQUIRED.items():
        if not isinstance(results.get(key), kind):
            raise ComparisonError(f"{where}: malformed compare results (key {key!r} missing or not a {kind.__name__})")
    for key, kind in OPTIONAL.items():
        if key in results and not isinstance(results[key], kind):
            raise ComparisonError(f"{where}: malformed compare results (key {key!r} not a {kind.__name__})")
    if results["kind"] != COMPARE_RESULTS_KIND or results["schema"] not in COMPARE_RESULTS_READABLE:
        readable = " or ".join(map(str, COMPARE_RESULTS_READABLE))
        raise ComparisonError(f"{where}: not compare results of schema {readable} (kind {results['kind']!r})")
    if missing := [k for k in SETTINGS if k not in results["settings"]]:
        raise ComparisonError(f"{where}: malformed compare results (settings lack {missing[0]!r})")
    try:
        return upgraded(results)
    except (KeyError, TypeError, AttributeError) as e:
        raise ComparisonError(f"{where}: malformed compare results ({type(e).__name__}: {e})") from None


def load(path: Path) -> CompareResults:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ComparisonError(f"{path}: unreadable leaderboard JSON ({e})") from None
    return validate(data, str(path))


def curves_path(name: str, directory: Path = LEADERBOARD_DIR) -> Path:
    """leaderboards/NAME.curves.png: score and OOD loss against held-out loss with seed bands."""
    return directory / f"{name}.curves.png"


def render(name: str, results: CompareResults) -> str:
    preamble = (
        f"> Generated from `{name}.json` by `nexus-eval leaderboard refresh` (first written by "
        f"`nexus-eval compare --leaderboard {name}`). Do not edit by hand: `nexus-eval leaderboard check` fails when "
        "this file differs from what its JSON produces."
    )
    try:
        curves = curves_path(name).name if curve_panels(results) else None
        return render_markdown(results, f"Leaderboard: {name}", preamble, [("overview", f"{name}.png")], curves)
    except (KeyError, TypeError, ValueError) as e:
        raise ComparisonError(
            f"leaderboards/{name}.json: malformed compare results ({type(e).__name__}: {e})"
        ) from None


def write_files(name: str, results: CompareResults, directory: Path) -> list[Path]:
    md, png = directory / f"{name}.md", directory / f"{name}.png"
    write_text_atomic(md, render(name, results))
    write_overview(results, png)
    written = [md, png]
    if write_loss_curves(results, curves_path(name, directory)):
        written.append(curves_path(name, directory))
    return written


def write_leaderboard(results: CompareResults, name: str, directory: Path = LEADERBOARD_DIR) -> list[Path]:
    """leaderboards/NAME.json (the results as given) + the .md and .png generated from it."""
    check_name(name)
    validate(results, f"--leaderboard {name}")  # what a reader would refuse is never written
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    write_json_atomic(path, results)
    return [path, *write_files(name, load(path), directory)]


def refresh(directory: Path = LEADERBOARD_DIR) -> list[Path]:
    """Rebuild every leaderboard's .md and .png from its .json."""
    if not directory.is_dir():
        raise ComparisonError(f"{directory}: no leaderboards directory")
    written = []
    for path in sorted(directory.glob("*.json")):
        written += write_files(path.stem, load(path), directory)
    return written


def check(directory: Path = LEADERBOARD_DIR) -> list[str]:
    """One line per leaderboard whose Markdown is not exactly what its JSON produces (or lacks one side)."""
    if not directory.is_dir():
        raise ComparisonError(f"{directory}: no leaderboards directory")
    problems = []
    jsons = {p.stem: p for p in directory.glob("*.json")}
    for name, path in sorted(jsons.items()):
        md, expected = directory / f"{name}.md", render(name, load(path))
        if not md.exists():
            problems.append(f"{md}: missing (its JSON {path} exists); run `nexus-eval leaderboard refresh`")
        elif md.read_text() != expected:
            problems.append(f"{md}: differs from what {path} produces; run `nexus-eval leaderboard refresh`")
    for md in sorted(directory.glob("*.md")):
        name = md.name.removesuffix(DISAGREEMENTS_SUFFIX) if md.name.endswith(DISAGREEMENTS_SUFFIX) else md.stem
        if name not in jsons and md.name.lower() != "readme.md":
            problems.append(f"{md}: no {name}.json beside it to generate it from")
    return problems
