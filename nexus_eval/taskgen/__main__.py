"""`python -m nexus_eval.taskgen [TASKS_DIR]`: regenerate the committed synthetic suites."""

import sys
from pathlib import Path

from nexus_eval.taskgen import generate

if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "tasks"):
        print(path)
