"""The declared lower bounds as requirements: pyproject.toml's dependencies (and the extras named on the command line),
one per line, each `name>=X` pinned to `name==X` and the others as declared, for `make test-floors`, which installs
them into a fresh virtual environment and runs the fast tests there, so that a floor that no longer holds fails CI
instead of a user's install.

torch is left out: PyPI has no CPU wheel of any torch release, and a CUDA one is several GB; its floor is the release
that added the newest API the code calls, named beside it in pyproject.toml.
    python scripts/floor_pins.py [EXTRA ...]
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

# torch (above); the linters run in `make lint` on the versions it installs, the tests never run them.
NOT_PINNED = {"torch", "ruff", "check-jsonschema", "zizmor"}  # installed as declared


def floor_pins(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    declared = list(project["dependencies"])
    for extra in extras:
        declared += project["optional-dependencies"][extra]
    pins = []
    for text in declared:
        requirement = Requirement(text)
        floors = [s.version for s in requirement.specifier if s.operator == ">="]
        if requirement.name in NOT_PINNED or not floors:
            pins.append(text)
        else:
            pins.append(f"{requirement.name}=={floors[0]}")
    return pins


if __name__ == "__main__":
    print("\n".join(floor_pins(Path(__file__).resolve().parents[1] / "pyproject.toml", sys.argv[1:])))
