"""`python -m nexus_eval.cli ...`, same as `nexus-eval ...`."""

import sys

from nexus_eval.cli.app import app

if __name__ == "__main__":  # vLLM spawns processes: keep the guard
    sys.exit(app())
