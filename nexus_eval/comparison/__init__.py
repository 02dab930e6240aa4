"""Comparison: loss-matched AdamW/Nexus pairs, their eval results (through nexus_eval.evaluation), paired
statistics, tables, plots and leaderboards. Depends on every stage below it; never on the CLI.

Modules, each importing only those before it: stats (bootstrap and t intervals), match (runs → pairs), guards
(the runs were trained alike but for the optimizer), settings (CompareSettings, CompareOptions), curves (score and
OOD loss against held-out loss with seed bands), noise (the seed SDs of loss and scores; `--tolerance auto`),
geometry_seeds (geometry at the pairs over seeds), plots (PNG figures), provenance (what each run row records of how
it was made), report (Markdown and terminal tables), leaderboard (leaderboards/NAME.{json,md,png}), disagreements
(the items a pair scores differently, from the eval samples),
pipeline (compare(): the entry point), reproduce (`leaderboard reproduce`: a leaderboard redone from its JSON),
series (checkpoint series of any origin: harness runs, HF checkpoint dirs, GGUF, series files; the loss unit) and
series_show (`series show`: each series' checkpoints with their measured, cached loss).
"""

from nexus_eval.comparison.leaderboard import check, load, refresh, write_leaderboard
from nexus_eval.comparison.pipeline import compare
from nexus_eval.comparison.settings import CompareOptions, CompareSettings

__all__ = ["CompareOptions", "CompareSettings", "check", "compare", "load", "refresh", "write_leaderboard"]
