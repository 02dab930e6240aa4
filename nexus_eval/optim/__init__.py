"""Optimizers: Nexus (torch only, usable on its own)."""

from nexus_eval.optim.nexus import Nexus

__all__ = ["Nexus"]
