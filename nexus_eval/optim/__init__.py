"""Optimizers: Nexus and Fish, its older baseline (torch only, usable on their own)."""

from nexus_eval.optim.fish import Fish
from nexus_eval.optim.nexus import Nexus

__all__ = ["Fish", "Nexus"]
