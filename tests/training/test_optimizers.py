"""Any optimizer at equal loss, on the tiny real data build: Muon (torch.optim.Muon on the hidden matrices, AdamW on
the rest), Nexus around another optimizer (nexus:OUTER), a user's optimizer from a module outside the package
(package.module:factory, README's example), each optimizer's [optim."NAME"] table, and an optimizer with a
train/eval mode (Schedule-Free's protocol). Bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from nexus_eval.errors import RecipeError
from nexus_eval.optim import Nexus, OptimizerSplit
from nexus_eval.optimizer_registry import REGISTRY, run_label
from nexus_eval.training import RunState, load_recipe, set_up, train, train_step
from nexus_eval.training.optimizer import check_optimizer, hidden_matrices
from nexus_eval.training.recipe import lr_at
from tests.conftest import REPO_ROOT, TINY_RECIPE, write_recipe
from tests.training.test_train import adamw_reference_grad, relative_error

TIMEOUT_S = 600


def recipe_with(tmp_path: Path, data_dir: Path, extra: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(TINY_RECIPE.format(data=data_dir, lr=3e-3) + extra)
    return path


def readme_plugin() -> str:
    """README's complete example of a user's optimizer module (my_optimizers.py), as a newcomer copies it."""
    text = (REPO_ROOT / "README.md").read_text()
    found = re.search(r"```python\n(# my_optimizers\.py.*?)```", text, re.S)
    assert found, "README lost its plug-in example"
    return found.group(1)


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`nexus-eval ...` in `cwd`, as a user runs it beside their own module (the package is not touched)."""
    env = {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PATH"] = "/usr/bin:/bin"
    return subprocess.run(
        [sys.executable, "-m", "nexus_eval.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=TIMEOUT_S,
    )  # fmt: skip


# ---- Muon -----------------------------------------------------------------------------------------------------------


def test_muon_steps_the_hidden_matrices_and_adamw_the_rest(tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, tiny_data_dir))
    c = set_up(recipe, "muon", 0, tiny_data_dir)
    assert isinstance(c.opt, OptimizerSplit)
    muon, adamw = c.opt.parts
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in c.model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_muon and in_muon.isdisjoint(in_adamw) and in_muon | in_adamw == set(names.values())
    assert all(re.search(r"layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$", n) for n in in_muon), in_muon
    assert "model.embed_tokens.weight" in in_adamw and any("norm" in n for n in in_adamw)
    assert {g["adjust_lr_fn"] for g in muon.param_groups} == {"match_rms_adamw"}


def test_muon_is_torch_muon_and_adamw_on_the_accumulated_clipped_gradient(tiny_data_dir: Path, tmp_path: Path) -> None:
    """Two trainer steps against torch's Muon and AdamW built by hand on a copy of the model, each stepped on the
    hand-computed clipped mean micro-batch gradient with the recipe's scheduled lr: the same update, up to the bf16
    rounding of Muon's Newton-Schulz iteration (which turns the float rounding of two ways of computing one gradient
    into ~1e-3 of the update; a wrong lr, split, clip or decay is a difference of 10% or more)."""
    import copy

    recipe = load_recipe(write_recipe(tmp_path, tiny_data_dir))
    o = recipe.optim
    c = set_up(recipe, "muon", 0, tiny_data_dir)
    twin = copy.deepcopy(c.model)
    matrices, rest = hidden_matrices(twin)
    ref_muon = torch.optim.Muon(matrices, lr=o.lr, weight_decay=o.weight_decay, adjust_lr_fn="match_rms_adamw")
    groups = [
        {"params": [p for p in rest if p.ndim >= 2], "weight_decay": o.weight_decay},
        {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0},
    ]
    ref_adamw = torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2))
    state = RunState.start(recipe)
    for step in range(2):
        batches = c.schedule.step_batches(step, o.accum)
        start = [p.detach().clone() for p in c.model.parameters()]
        grads = adamw_reference_grad(twin, batches, o.grad_clip)
        for p, g in zip(twin.parameters(), grads, strict=True):
            p.grad = g
        for opt in (ref_muon, ref_adamw):
            for group in opt.param_groups:
                group["lr"] = lr_at(o, step, state.total_steps)
            opt.step()
        twin.zero_grad(set_to_none=True)
        train_step(c, state)
        got = [p.detach() - s for p, s in zip(c.model.parameters(), start, strict=True)]
        want = [p.detach() - s for p, s in zip(twin.parameters(), start, strict=True)]
        assert relative_error(got, want) < 1e-2, step
        with torch.no_grad():  # the next step from the same weights: the comparison does not drift
            for p, q in zip(twin.parameters(), c.model.parameters(), strict=True):
                p.copy_(q)


def test_muon_settings_come_from_its_table_and_its_hash(tiny_data_dir: Path, tmp_path: Path) -> None:
    plain = load_recipe(write_recipe(tmp_path, tiny_data_dir))
    tuned = load_recipe(recipe_with(tmp_path, tiny_data_dir, '[optim.muon]\nmomentum = 0.9\nadjust_lr = "original"\n'))
    assert tuned.hash() != plain.hash() and tuned.to_dict()["optim"]["muon"] == {
        "momentum": 0.9,
        "adjust_lr": "original",
    }
    c = set_up(tuned, "muon", 0, tiny_data_dir)
    muon = c.opt.parts[0]
    assert {(g["momentum"], g["adjust_lr_fn"]) for g in muon.param_groups} == {(0.9, "original")}
    hparams = c.identity("t-muon-s0")["optimizer_hparams"]
    assert hparams["outer"] == "Muon" and hparams["momentum"] == 0.9 and hparams["rest"] == "AdamW"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[optim.muon]\nmomentun = 0.9\n", "[optim.muon]: unknown key 'momentun'"),
        ('[optim.muon]\nadjust_lr = "rms"\n', "[optim.muon].adjust_lr: expected match_rms_adamw or original"),
        ("[optim.nonesuch]\nx = 1\n", "[optim.nonesuch] names no optimizer"),
        ("[optim.adamw]\nx = 1\n", "[optim.adamw]: adamw has no settings of its own"),
    ],
)
def test_a_bad_optimizer_table_is_one_line(table: str, message: str, tiny_data_dir: Path, tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path, tiny_data_dir, table)
    optimizer = "adamw" if "adamw" in table else "muon"
    done = cli(tmp_path, "train", str(recipe), "--optimizer", optimizer, "--out", str(tmp_path / "runs"), "--quiet")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "runs").exists()


# ---- nexus:OUTER ----------------------------------------------------------------------------------------------------


def test_nexus_wraps_any_optimizer_without_inner_steps() -> None:
    assert REGISTRY.chosen("nexus:adamw") is REGISTRY["nexus"]
    entry = REGISTRY.chosen("nexus:muon")
    assert entry.outer == "muon" and entry.update.has_inner_steps and entry.whole_matrices
    assert {"optim.muon", "optim.inner_lr_ratio", "optim.normalize"} <= entry.own_fields
    assert "optim.grad_clip" not in entry.own_fields  # the inner steps are normalized: nothing clips
    assert REGISTRY.display_name("nexus:muon") == "Nexus∘Muon" and run_label("nexus:muon") == "nexus+muon"
    for name in ("nexus:nexus", "nexus:fish", "nexus:reptile", "nexus:nonesuch", "nexus:"):
        assert name not in REGISTRY
        with pytest.raises(RecipeError, match=re.escape(f"--optimizer {name}: Nexus wraps an optimizer")):
            REGISTRY.chosen(name)


def test_nexus_muon_hands_muon_the_inner_walk(tiny_data_dir: Path, tmp_path: Path) -> None:
    """Nexus∘Muon: the outer Muon (and the AdamW of the rest) step from θ0 on Δ/γ of K normalized inner steps."""
    import copy

    from tests.training.test_variants import _at, inner_walk_reference

    recipe = load_recipe(write_recipe(tmp_path, tiny_data_dir))
    o = recipe.optim
    c = set_up(recipe, "nexus:muon", 0, tiny_data_dir)
    assert isinstance(c.opt, Nexus) and isinstance(c.opt.outer, OptimizerSplit)
    params = list(c.model.parameters())
    seen: list[dict[str, Any]] = []
    c.opt.outer.parts[0].register_step_pre_hook(
        lambda *_: seen.append({"from": [p.detach().clone() for p in params], "grad": [p.grad.clone() for p in params]})
    )
    state = RunState.start(recipe)
    for step in range(2):
        batches = c.schedule.step_batches(step, o.accum)
        theta0 = [p.detach().clone() for p in params]
        train_step(c, state)
        gamma = o.inner_lr_ratio * c.opt.param_groups[0]["lr"]
        delta = inner_walk_reference(copy.deepcopy(_at(c.model, theta0)), batches, gamma, True)
        assert all(torch.equal(a, b) for a, b in zip(seen[-1]["from"], theta0, strict=True))
        assert relative_error(seen[-1]["grad"], [d / gamma for d in delta]) < 1e-4


def test_muon_is_refused_under_fsdp_in_one_line(tiny_data_dir: Path) -> None:
    recipe = load_recipe(write_recipe(Path(tiny_data_dir).parent, tiny_data_dir))
    for name in ("muon", "nexus:muon"):
        with pytest.raises(RecipeError, match="Muon orthogonalizes whole weight matrices.*--strategy ddp"):
            check_optimizer(recipe.optim, name, "fsdp")
    check_optimizer(recipe.optim, "muon", "ddp")


# ---- a user's own optimizer --------------------------------------------------------------------------------------

PLUGIN = "my_optimizers:lion"
PLUGIN_TABLE = '[optim."my_optimizers:lion"]\nlr_ratio = 0.2\n'


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory outside the package holding README's my_optimizers.py."""
    where = tmp_path_factory.mktemp("user")
    (where / "my_optimizers.py").write_text(readme_plugin())
    return where


@pytest.mark.slow  # ~40 s: three short CLI trainings and a compare
def test_a_users_optimizer_trains_resumes_and_compares(plugin_dir: Path, tiny_data_dir: Path) -> None:
    recipe = plugin_dir / "recipe.toml"
    recipe.write_text(TINY_RECIPE.format(data=tiny_data_dir, lr=3e-3) + PLUGIN_TABLE)
    for name in ("adamw", PLUGIN):
        done = cli(plugin_dir, "train", str(recipe), "--optimizer", name, "--out", "runs", "--quiet")
        assert done.returncode == 0, done.stderr[-3000:]
    run = plugin_dir / "runs" / "t-my_optimizers+lion-s0"
    info = json.loads((run / "run.json").read_text())
    assert info["optimizer"] == PLUGIN and info["optimizer_hparams"]["settings"] == {"lr_ratio": 0.2}
    source = info["optimizer_source"]
    assert source["module"] == "my_optimizers" and source["name"] == "lion" and source["version"] is None
    assert Path(source["file"]) == plugin_dir / "my_optimizers.py"
    assert source["sha256"] == __import__("hashlib").sha256((plugin_dir / "my_optimizers.py").read_bytes()).hexdigest()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert rows[0]["lr"] == pytest.approx(0.2 * lr_at(load_recipe(recipe).optim, 1, 6))  # its own lr, scheduled

    killed = plugin_dir / "killed" / run.name  # as if killed after step 3's checkpoint
    shutil.copytree(run, killed)
    shutil.rmtree(killed / "ckpt-000006")
    done = cli(plugin_dir, "train", str(recipe), "--optimizer", PLUGIN, "--out", "killed", "--resume", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    want, got = (
        load_file(run / "ckpt-000006" / "model.safetensors"),
        load_file(killed / "ckpt-000006" / "model.safetensors"),
    )
    assert all(torch.equal(want[k], got[k]) for k in want)

    adamw = plugin_dir / "runs" / "t-adamw-s0"
    done = cli(plugin_dir, "compare", str(adamw), str(run), "--match-loss", "--targets", "6", "--tolerance", "50",
               "--tasks", "arith_gold_bpb", "--limit", "2", "--data", str(tiny_data_dir), "--out", "report",
               "--resamples", "200", "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((plugin_dir / "report" / "results.json").read_text())
    assert results["settings"]["series"] == ["adamw", PLUGIN] and results["pairs"]


BAD_MODULES = {
    "raises": ("raise ImportError('no such backend')\n", "module 'bad_raises' does not import (ImportError: no such"),
    "none": ("def make(named, optim, total_steps):\n    return None\n", "the factory returned None, not a torch optim"),
    "partial": (
        "import torch\ndef make(named, optim, total_steps):\n    return torch.optim.SGD([named[0][1]], lr=optim.lr)\n",
        "the factory's optimizer leaves out",
    ),
    "twice": (
        "import torch\ndef make(named, optim, total_steps):\n    ps = [p for _, p in named]\n"
        "    return [torch.optim.SGD(ps, lr=1.0), torch.optim.SGD(ps[:1], lr=1.0)]\n",
        "is in more than one of the factory's optimizers",
    ),
    "keys": (
        "import torch\ndef make(named, optim, total_steps, momentum=0.0):\n"
        "    return torch.optim.SGD([p for _, p in named], lr=optim.lr, momentum=momentum)\n",
        "does not bind (got an unexpected keyword argument 'momentun')",
    ),
    "missing": ("x = 1\n", "bad_missing has no callable 'make'"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODULES))
def test_a_bad_plugin_is_one_line_and_writes_nothing(case: str, tiny_data_dir: Path, tmp_path: Path) -> None:
    source, message = BAD_MODULES[case]
    (tmp_path / f"bad_{case}.py").write_text(source)
    name = f"bad_{case}:make"
    table = f'[optim."{name}"]\nmomentun = 0.9\n' if case == "keys" else ""
    recipe = recipe_with(tmp_path, tiny_data_dir, table)
    done = cli(tmp_path, "train", str(recipe), "--optimizer", name, "--out", str(tmp_path / "runs"), "--quiet")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr and name in done.stderr
    assert not (tmp_path / "runs").exists()


# ---- an optimizer with a train/eval mode (Schedule-Free) -----------------------------------------------------------

AVERAGING = '''
import torch

EVALUATED = []  # the weights each eval() put in the model


class AveragedSGD(torch.optim.SGD):
    """SGD that evaluates the running average of its iterates, with Schedule-Free's train()/eval() protocol."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.mode = "train"

    @torch.no_grad()
    def step(self, closure=None):
        assert self.mode == "train", "stepped in eval mode"
        super().step()
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["n"] = state.get("n", 0) + 1
                avg = state.setdefault("avg", p.detach().clone())
                avg.lerp_(p, 1 / state["n"])

    @torch.no_grad()
    def eval(self):
        if self.mode == "eval":
            return
        self.mode = "eval"
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["z"] = p.detach().clone()
                p.copy_(self.state[p]["avg"])
        EVALUATED.append({id(p): p.detach().clone() for g in self.param_groups for p in g["params"]})

    @torch.no_grad()
    def train(self):
        if self.mode == "train":
            return
        self.mode = "train"
        for group in self.param_groups:
            for p in group["params"]:
                p.copy_(self.state[p].pop("z"))


def make(named, optim, total_steps):
    return AveragedSGD([p for _, p in named], lr=30 * optim.lr)
'''


def test_an_optimizer_with_an_eval_mode_is_evaluated_and_checkpointed_in_it(
    tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held-out loss and checkpoints are of the weights the optimizer evaluates (its averaged iterate), and training
    goes on from its own (the last checkpoint's weights are the average, not the iterate)."""
    (tmp_path / "averaging.py").write_text(textwrap.dedent(AVERAGING))
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = write_recipe(tmp_path, tiny_data_dir)
    run = train(recipe, "averaging:make", seed=0, out=tmp_path / "runs", progress=False)
    import averaging  # type: ignore[import-not-found]

    assert averaging.EVALUATED, "never put in eval mode"
    saved = load_file(run / "ckpt-000006" / "model.safetensors")
    evaluated = averaging.EVALUATED[-1]
    c = set_up(load_recipe(recipe), "averaging:make", 0, tiny_data_dir)  # the parameter names, in order
    names = [n for n, _ in c.model.named_parameters()]
    last = list(evaluated.values())
    assert all(torch.equal(saved[n], w) for n, w in zip(names, last, strict=True) if n in saved)
    loss = json.loads((run / "ckpt-000006" / "nexus.json").read_text())["heldout_loss"]
    c.model.load_state_dict({n: w for n, w in zip(names, last, strict=True)}, strict=False)
    assert c.heldout.mixture_loss(c.model)[0] == pytest.approx(loss, abs=1e-6)
