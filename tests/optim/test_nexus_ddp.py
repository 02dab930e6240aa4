"""Nexus under torchrun + DDP (2 gloo processes) equals one process on the same global micro-batches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.optim.test_nexus_optimizer import tiny_mlp

ROOT = Path(__file__).resolve().parents[2]


def run_worker(args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_process_ddp_equals_single_process(tmp_path: Path) -> None:
    worker = str(ROOT / "tests" / "optim" / "ddp_nexus_worker.py")
    run_worker([sys.executable, worker, str(tmp_path / "single.pt")])
    run_worker(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            worker,
            str(tmp_path / "ddp.pt"),
        ]
    )
    single = torch.load(tmp_path / "single.pt")
    ranks = torch.load(tmp_path / "ddp.pt")
    for name, value in single.items():
        # Replicas stay identical to each other exactly, and equal the single process up to reduction order.
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        torch.testing.assert_close(ranks[0][name], value, atol=1e-5, rtol=0)
    start = tiny_mlp(1).state_dict()
    assert max((single[n] - start[n]).abs().max().item() for n in start) > 1e-3  # training moved the weights
