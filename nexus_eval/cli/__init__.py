"""nexus-eval's command line (`nexus-eval = nexus_eval.cli:app`): thin Typer commands, one module per command group,
shared options declared once in options.py."""

from nexus_eval.cli.app import app

__all__ = ["app"]
