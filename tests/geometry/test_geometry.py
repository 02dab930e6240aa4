"""Geometry diagnostics: exact answers on a toy quadratic problem, then one fast end-to-end run on a tiny Llama."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from nexus_eval.errors import NexusError
from nexus_eval.geometry import (
    cosine_matrix,
    geometry,
    gradient_cosines,
    minima_closeness,
    top_hessian_eigenvalue,
)
from nexus_eval.provenance import code_version

DIM = 6


class Linear(nn.Module):
    """θ ∈ R^d; with x = A_i and y = A_i c_i, quadratic_loss is L_i(θ) = ½‖A_i(θ − c_i)‖², minimized exactly at c_i."""

    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.theta


def quadratic_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(x) - y).pow(2).sum()


def well_conditioned(generator: torch.Generator) -> torch.Tensor:
    """A random A with singular values in [1, 2]: Hessian AᵀA has eigenvalues in [1, 4]."""
    q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=generator, dtype=torch.float64))
    r, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=generator, dtype=torch.float64))
    return q @ torch.diag(torch.linspace(1.0, 2.0, DIM, dtype=torch.float64)) @ r


@pytest.fixture
def toy() -> dict:
    generator = torch.Generator().manual_seed(3)
    a = {s: well_conditioned(generator) for s in ("left", "right")}
    c = {s: torch.randn(DIM, generator=generator, dtype=torch.float64) * 2 for s in a}
    theta = torch.randn(DIM, generator=generator, dtype=torch.float64)
    batches = {s: [(a[s], a[s] @ c[s])] for s in a}
    return {"a": a, "c": c, "theta": theta, "batches": batches, "model": Linear(theta).double()}


@pytest.mark.parametrize(("optimizer", "lr", "steps", "tol"), [("sgd", 0.2, 300, 1e-6), ("adamw", 0.05, 2000, 1e-3)])
def test_minima_closeness_recovers_known_minima(toy: dict, optimizer: str, lr: float, steps: int, tol: float) -> None:
    a, c, theta = toy["a"], toy["c"], toy["theta"]
    result = minima_closeness(toy["model"], toy["batches"], steps, lr, optimizer, loss_fn=quadratic_loss)

    assert result["sources"] == ["left", "right"]
    for s in result["sources"]:
        assert result["minima_sq_dist"][s] == pytest.approx(float((theta - c[s]).pow(2).sum()), rel=tol, abs=tol)
    expected_msd = sum(float((theta - c[s]).pow(2).sum()) for s in c) / 2
    assert result["minima_msd"] == pytest.approx(expected_msd, rel=tol)
    distance = float((c["left"] - c["right"]).norm())
    assert result["minima_pairwise"][0][1] == pytest.approx(distance, rel=tol)
    assert result["minima_pairwise"][1][0] == result["minima_pairwise"][0][1]
    assert result["minima_pairwise"][0][0] == 0.0
    for i, endpoint in enumerate(result["sources"]):
        for j, measured in enumerate(result["sources"]):
            expected = 0.5 * float((a[measured] @ (c[endpoint] - c[measured])).pow(2).sum())
            assert result["cross_loss"][i][j] == pytest.approx(expected, rel=tol, abs=tol)
    assert result["base_loss"]["left"] == pytest.approx(0.5 * float((a["left"] @ (theta - c["left"])).pow(2).sum()))
    # the measurement leaves the model where it found it
    assert torch.equal(toy["model"].theta.detach(), theta)


def test_gradient_cosines_match_closed_form(toy: dict) -> None:
    a, c, theta = toy["a"], toy["c"], toy["theta"]
    result = gradient_cosines(toy["model"], toy["batches"], hessian_iters=60, loss_fn=quadratic_loss)

    grads = {s: a[s].T @ a[s] @ (theta - c[s]) for s in a}
    cos = float(torch.dot(grads["left"], grads["right"]) / (grads["left"].norm() * grads["right"].norm()))
    matrix = result["grad_cos_matrix"]
    assert matrix[0][1] == pytest.approx(cos, abs=1e-9)
    assert matrix[1][0] == matrix[0][1]
    assert matrix[0][0] == matrix[1][1] == 1.0
    assert result["grad_cos_mean_offdiag"] == pytest.approx(cos, abs=1e-9)
    assert result["grad_G"] == pytest.approx(max(float(g.norm()) for g in grads.values()))
    # mixture Hessian = mean of AᵢᵀAᵢ; power iteration finds its largest eigenvalue
    hessian = sum(a[s].T @ a[s] for s in a) / 2
    top = float(torch.linalg.eigvalsh(hessian).max())
    assert result["hessian_lambda"] == pytest.approx(top, rel=1e-3)
    assert result["theorem_cos_term"] == pytest.approx(2 * (1 - cos), abs=1e-9)
    expected_rhs = 2 * (1 - cos) * result["grad_G"] ** 2 / (2 * result["hessian_lambda"] ** 2)
    assert result["theorem_rhs"] == pytest.approx(expected_rhs)
    assert torch.equal(toy["model"].theta.detach(), theta)

    no_hessian = gradient_cosines(toy["model"], toy["batches"], hessian_iters=0, loss_fn=quadratic_loss)
    assert no_hessian["hessian_lambda"] is None and no_hessian["theorem_rhs"] is None
    assert no_hessian["theorem_cos_term"] == result["theorem_cos_term"]


def test_finite_difference_eigenvalue_matches_exact_hessian() -> None:
    """Off the quadratic, the finite-difference power iteration agrees with the dominant eigenvalue of the exact
    (double-backward) Hessian of a small tanh network."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    batches = {s: [(torch.randn(16, 3), torch.randn(16, 1))] for s in ("a", "b")}

    def mse(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (m(x) - y).pow(2).mean()

    params = list(model.parameters())
    flat = torch.nn.utils.parameters_to_vector(params).detach()

    def mixture(vector: torch.Tensor) -> torch.Tensor:
        out, offset = {}, 0
        for name, p in model.named_parameters():
            out[name] = vector[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        losses = [
            (torch.func.functional_call(model, out, (b[0][0],)) - b[0][1]).pow(2).mean() for b in batches.values()
        ]
        return sum(losses) / len(losses)

    eigenvalues = torch.linalg.eigvalsh(torch.autograd.functional.hessian(mixture, flat))
    dominant = float(eigenvalues[eigenvalues.abs().argmax()])
    estimate = top_hessian_eigenvalue(model, batches, iters=300, loss_fn=mse)
    assert estimate == pytest.approx(dominant, rel=1e-2)
    assert torch.equal(torch.nn.utils.parameters_to_vector(params).detach(), flat)


def test_cosine_matrix_agrees_with_direct_computation() -> None:
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(1000, generator=generator)
    grads = {
        "code": base + 0.5 * torch.randn(1000, generator=generator),
        "text": torch.randn(1000, generator=generator),
        "math": -base + 0.3 * torch.randn(1000, generator=generator),
    }
    result = cosine_matrix(grads)
    assert result["sources"] == ["code", "math", "text"]
    for i, a in enumerate(result["sources"]):
        for j, b in enumerate(result["sources"]):
            direct = float(nn.functional.cosine_similarity(grads[a], grads[b], dim=0))
            assert result["matrix"][i][j] == pytest.approx(direct, abs=1e-6)
            assert result["matrix"][i][j] == result["matrix"][j][i]
        assert result["matrix"][i][i] == 1.0
    offdiag = [result["matrix"][i][j] for i in range(3) for j in range(3) if i != j]
    assert result["mean_offdiag"] == pytest.approx(sum(offdiag) / 6)
    assert result["matrix"][0][1] < -0.5  # code and math were built anti-aligned

    # per-parameter lists (no flattening by the caller) give the same matrix as flat vectors
    as_lists = {s: [g[:300].view(10, 30), g[300:]] for s, g in grads.items()}
    from_lists = cosine_matrix(as_lists)["matrix"]
    assert all(
        row == pytest.approx(expected, abs=1e-12) for row, expected in zip(from_lists, result["matrix"], strict=True)
    )

    degenerate = cosine_matrix({"a": torch.zeros(5), "b": torch.ones(5)})
    assert math.isnan(degenerate["matrix"][0][1]) and degenerate["matrix"][1][1] == 1.0
    assert math.isnan(cosine_matrix({"only": torch.ones(3)})["mean_offdiag"])


# ---- end to end: a tiny random-init Llama on the tiny data build ----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from nexus_eval.checkpoints import save_checkpoint
    from nexus_eval.data import load_tokenizer

    tokenizer = load_tokenizer(tiny_data_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=len(tokenizer),
        max_position_embeddings=32,
    )
    ckpt = tmp_path_factory.mktemp("geometry") / "ckpt-000001"
    meta = {"step": 1, "optimizer": "adamw", "heldout_loss": None}
    return save_checkpoint(ckpt, LlamaForCausalLM(config), tokenizer, meta, None)


FAST = {"n_batches": 2, "batch_size": 2, "finetune_steps": 3, "hessian_iters": 2}


@pytest.mark.slow
def test_geometry_end_to_end_is_cached_and_deterministic(
    tiny_checkpoint: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    result = geometry(tiny_checkpoint, tiny_data_dir, cache_dir=tmp_path, **FAST)

    sources = result["sources"]
    assert len(sources) >= 2 and sources == sorted(sources)
    n = len(sources)
    for key in ("grad_cos_matrix", "minima_pairwise", "cross_loss"):
        assert len(result[key]) == n and all(len(row) == n for row in result[key])
    matrix = result["grad_cos_matrix"]
    assert all(matrix[i][i] == 1.0 for i in range(n))
    assert all(matrix[i][j] == matrix[j][i] and -1 <= matrix[i][j] <= 1 for i in range(n) for j in range(n))
    assert result["minima_msd"] > 0 and all(result["minima_pairwise"][i][i] == 0 for i in range(n))
    # fine-tuning on a source lowers that source's loss below the checkpoint's
    assert all(result["cross_loss"][i][i] < result["base_loss"][s] for i, s in enumerate(sources))
    assert result["settings"]["context"] == 32  # the model's max_position_embeddings
    assert result["environment"]["code"] == code_version() and result["environment"]["device"]["type"] == "cpu"

    cached = list(tmp_path.glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text()) == result
    assert geometry(tiny_checkpoint, tiny_data_dir, cache_dir=tmp_path, **FAST) == result  # served from the cache

    again = geometry(tiny_checkpoint, tiny_data_dir, cache_dir=tmp_path, refresh=True, **FAST)
    volatile = ("seconds", "created")
    assert {k: v for k, v in again.items() if k not in volatile} == {
        k: v for k, v in result.items() if k not in volatile
    }

    other_seed = geometry(tiny_checkpoint, tiny_data_dir, cache_dir=tmp_path, seed=1, **FAST)
    assert other_seed["grad_cos_matrix"] != result["grad_cos_matrix"]
    assert len(list(tmp_path.glob("*.json"))) == 2


@pytest.mark.slow
def test_geometry_cli(tiny_checkpoint: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nexus_eval.cli import app

    fast = ["--batches", "1", "--batch-size", "2", "--finetune-steps", "2", "--hessian-iters", "0"]
    common = [str(tiny_checkpoint), "--data", str(tiny_data_dir), "--cache", str(tmp_path), *fast]
    shown = CliRunner().invoke(app, ["geometry", *common])
    assert shown.exit_code == 0, shown.output
    assert "xloss" in shown.output and "ckpt-000001" in shown.output

    as_json = CliRunner().invoke(app, ["geometry", *common, "--json"])
    assert as_json.exit_code == 0, as_json.output
    (result,) = json.loads(as_json.output)
    assert result["theorem_rhs"] is None and result["hessian_lambda"] is None

    bad = CliRunner().invoke(app, ["geometry", *common, "--sources", "nonsense"])
    assert bad.exit_code == 2 and "--sources" in bad.output and "nonsense" in bad.output


def test_geometry_rejects_bad_input(tiny_checkpoint: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NexusError, match="no such data directory"):
        geometry(tiny_checkpoint, tmp_path / "missing", cache_dir=tmp_path)
    with pytest.raises(NexusError, match="--finetune-steps"):
        geometry(tiny_checkpoint, tiny_data_dir, cache_dir=tmp_path, finetune_steps=0)
    with pytest.raises(NexusError, match="--finetune-optimizer"):
        geometry(tiny_checkpoint, tiny_data_dir, cache_dir=tmp_path, finetune_optimizer="lion")
