"""`python -m nexus_eval.tasks.synthetic [TASKS_DIR]`: regenerate the committed synthetic suites."""

import sys
from pathlib import Path

from nexus_eval.tasks.materialize import TASKS_DIR
from nexus_eval.tasks.synthetic import generate

if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else TASKS_DIR):
        print(path)
