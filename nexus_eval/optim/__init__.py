"""Optimizers: Nexus and Fish, its older baseline, and OptimizerSplit (several optimizers over a split of the
parameters, e.g. Muon and AdamW); torch only, usable on their own."""

from nexus_eval.optim.fish import Fish
from nexus_eval.optim.nexus import Nexus
from nexus_eval.optim.split import OptimizerSplit

__all__ = ["Fish", "Nexus", "OptimizerSplit"]
