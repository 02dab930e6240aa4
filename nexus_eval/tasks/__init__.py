"""Tasks are data: lm-eval YAMLs and JSONL in the repository's tasks/ directory. This stage finds and names them
(registry), materializes the benchmark data they read (prepare), regenerates the seeded synthetic suites
(synthetic/) and prints them (show). It depends on data (OOD tasks come from a data build) and nothing higher.
"""

from nexus_eval.tasks.materialize import TASKS_DIR, prepare, write_ood_tasks
from nexus_eval.tasks.registry import (
    DEFAULT_SUITE,
    PRIMARY_METRIC,
    SUITES,
    ensure_prepared,
    include_path,
    missing_data,
    primary_metric,
    read_task_yaml,
    refresh,
    resolve_tasks,
    task_info,
)

__all__ = [
    "DEFAULT_SUITE",
    "PRIMARY_METRIC",
    "SUITES",
    "TASKS_DIR",
    "ensure_prepared",
    "include_path",
    "missing_data",
    "prepare",
    "primary_metric",
    "read_task_yaml",
    "refresh",
    "resolve_tasks",
    "task_info",
    "write_ood_tasks",
]
