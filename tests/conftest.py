"""Shared pytest fixtures. Keep each fixture small and say what it costs."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GSM8K_DIR = REPO_ROOT.parent / "shared" / "data" / "gsm8k"  # the original GSM8k release beside the checkout

# A real data build, small: ~2-3 s on 2 cores, vocab 512, a few hundred K characters per source.
TINY_DATA_PARAMS = dict(
    vocab_size=512,
    max_chars_per_source=300_000,
    max_chars_per_ood=100_000,
    math_generated=1_000,
    gsm8k_dir=GSM8K_DIR,
    progress=False,
)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir from `build_data` with TINY_DATA_PARAMS (text/math/code + OOD domains, tokenizer, manifest)."""
    from nexus_eval.data import build_data

    out = tmp_path_factory.mktemp("tiny_data") / "data"
    build_data(out, **TINY_DATA_PARAMS)
    return out
