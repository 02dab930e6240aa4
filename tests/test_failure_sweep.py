"""The failure sweep: bad inputs a new user meets, across every command, each answered the same way.

Each case sets up one bad input in tmp_path (copies of the session's tiny data build and runs, corrupted), runs the
CLI in-process and asserts: a non-zero exit (2: a NexusError), one line on the output that starts with "error:" and
names the file or flag at fault, no traceback, and nothing new (above all no *.tmp file or half-written output)
left in tmp_path.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nexus_eval.cli import app
from nexus_eval.comparison.leaderboard import REQUIRED
from tests.conftest import GSM8K_DIR, write_recipe


@dataclass
class Sandbox:
    """tmp_path plus the session's tiny data build and runs; copy before corrupting (the originals are shared)."""

    root: Path
    data_dir: Path
    runs: dict[str, Path]

    def data_copy(self) -> Path:
        return Path(shutil.copytree(self.data_dir, self.root / "data"))

    def run_copy(self, optimizer: str = "adamw") -> Path:
        source = self.runs[optimizer]
        return Path(shutil.copytree(source, self.root / "runs" / source.name))

    def ckpt_copy(self, optimizer: str = "adamw", step: int = 6) -> Path:
        """One checkpoint of a run, alone in its own directory."""
        return Path(shutil.copytree(self.runs[optimizer] / f"ckpt-{step:06d}", self.root / "ckpt" / f"ckpt-{step:06d}"))

    def recipe(self, data_dir: Path | None = None, edits: dict[str, str] | None = None) -> Path:
        """The tiny test recipe (tests/conftest.py) on `data_dir`, with each `old: new` text edit made."""
        path = write_recipe(self.root, data_dir or self.data_dir)
        text = path.read_text()
        for old, new in (edits or {}).items():
            assert old in text, old
            text = text.replace(old, new)
        path.write_text(text)
        return path

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def train(self, recipe: Path, *extra: str) -> list[str]:
        return ["train", str(recipe), "--optimizer", "adamw", "--out", str(self.root / "runs"), "--quiet", *extra]


def truncate(path: Path, size: int) -> Path:
    with path.open("r+b") as fh:
        fh.truncate(size)
    return path


def half(path: Path) -> Path:
    return truncate(path, path.stat().st_size // 2)


# A case: its setup returns the command line and a substring the error line must contain (the file or flag).
Setup = Callable[[Sandbox], tuple[list[str], str]]


def _data_build_out_is_file(s: Sandbox) -> tuple[list[str], str]:
    out = s.write("not_a_dir", "x")
    return ["data", "build", "--out", str(out), "--quiet"], "--out"


def _data_build(flag: str, value: str) -> Setup:
    def setup(s: Sandbox) -> tuple[list[str], str]:
        args = ["data", "build", "--out", str(s.root / "d"), "--gsm8k-dir", str(GSM8K_DIR), "--quiet"]
        return [*args, flag, value], flag

    return setup


def _data_info_manifest(text: str) -> Setup:
    def setup(s: Sandbox) -> tuple[list[str], str]:
        data = s.data_copy()
        (data / "manifest.json").write_text(text)
        return ["data", "info", "--data", str(data)], "manifest.json"

    return setup


def _recipe(edits: dict[str, str], names: str, *flags: str) -> Setup:
    def setup(s: Sandbox) -> tuple[list[str], str]:
        return [*s.train(s.recipe(edits=edits)), *flags], names

    return setup


def _recipe_text(text: str, names: str) -> Setup:
    def setup(s: Sandbox) -> tuple[list[str], str]:
        return s.train(s.write("recipe.toml", text)), names

    return setup


def _train_corrupt_data(corrupt: Callable[[Path], object], file: str) -> Setup:
    def setup(s: Sandbox) -> tuple[list[str], str]:
        data = s.data_copy()
        corrupt(data / file)
        return s.train(s.recipe(data)), file

    return setup


def _flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _resume_corrupt(corrupt: Callable[[Path], object], file: str) -> Setup:
    def setup(s: Sandbox) -> tuple[list[str], str]:
        run = s.run_copy()
        corrupt(run / "ckpt-000006" / file)
        return s.train(s.recipe(), "--resume"), file

    return setup


def _eval_ckpt(corrupt: Callable[[Path], object], names: str) -> Setup:
    def setup(s: Sandbox) -> tuple[list[str], str]:
        ckpt = s.ckpt_copy()
        corrupt(ckpt)
        args = ["eval", str(ckpt), "--tasks", "arith_gold_bpb", "--limit", "2", "--cache", str(s.root / "cache")]
        return [*args, "--quiet"], names

    return setup


def _eval_flags(*flags: str, names: str) -> Setup:
    def setup(s: Sandbox) -> tuple[list[str], str]:
        args = ["eval", str(s.runs["adamw"] / "ckpt-000006"), "--cache", str(s.root / "cache"), "--quiet"]
        return [*args, *flags], names

    return setup


def _loss(corrupt_ckpt: Callable[[Path], object] | None, names: str, *flags: str) -> Setup:
    def setup(s: Sandbox) -> tuple[list[str], str]:
        ckpt = s.ckpt_copy()
        if corrupt_ckpt is not None:
            corrupt_ckpt(ckpt)
        return ["loss", str(ckpt), "--data", str(s.data_dir), "--windows", "1", "--docs", "1", *flags], names

    return setup


def _loss_corrupt_data(corrupt: Callable[[Path], object], file: str) -> Setup:
    def setup(s: Sandbox) -> tuple[list[str], str]:
        data = s.data_copy()
        corrupt(data / file)
        ckpt = str(s.runs["adamw"] / "ckpt-000006")
        return ["loss", ckpt, "--data", str(data), "--windows", "1", "--docs", "1"], file

    return setup


def _compare(corrupt: Callable[[Sandbox], object], names: str, *flags: str) -> Setup:
    def setup(s: Sandbox) -> tuple[list[str], str]:
        corrupt(s)
        runs = [
            str(s.root / "runs" / p.name) if (s.root / "runs" / p.name).exists() else str(p) for p in s.runs.values()
        ]
        args = ["compare", *runs, "--match-loss", "--targets", "6", "--tolerance", "1", "--tasks", "arith_gold_bpb"]
        args += ["--limit", "2"]
        return [*args, "--cache", str(s.root / "cache"), "--out", str(s.root / "report"), "--quiet", *flags], names

    return setup


def _leaderboard(command: str, name: str, text: str) -> Setup:
    def setup(s: Sandbox) -> tuple[list[str], str]:
        s.write(f"boards/{name}.json", text)
        return ["leaderboard", command, "--dir", str(s.root / "boards")], f"{name}.json"

    return setup


def _geometry(*flags: str, names: str, corrupt: Callable[[Path], object] | None = None) -> Setup:
    def setup(s: Sandbox) -> tuple[list[str], str]:
        ckpt = s.ckpt_copy()
        if corrupt is not None:
            corrupt(ckpt)
        args = ["geometry", str(ckpt), "--data", str(s.data_dir), "--batches", "1", "--batch-size", "1"]
        return [*args, "--finetune-steps", "1", "--hessian-iters", "0", "--cache", str(s.root / "geo"), *flags], names

    return setup


def _rm(name: str) -> Callable[[Path], None]:
    def corrupt(ckpt: Path) -> None:
        (ckpt / name).unlink()

    return corrupt


def _write_in(name: str, text: str) -> Callable[[Path], None]:
    def corrupt(ckpt: Path) -> None:
        (ckpt / name).write_text(text)

    return corrupt


def _truncate_in(name: str, size: int) -> Callable[[Path], None]:
    def corrupt(ckpt: Path) -> None:
        truncate(ckpt / name, size)

    return corrupt


def _run_file(name: str, text: str) -> Callable[[Sandbox], None]:
    def corrupt(s: Sandbox) -> None:
        (s.run_copy() / name).write_text(text)

    return corrupt


BOARD_WITHOUT_TASKS = json.dumps({key: kind() for key, kind in REQUIRED.items() if key != "tasks"})

CASES: dict[str, Setup] = {
    # ---- data ----------------------------------------------------------------------------------------------------
    "data-build-out-is-a-file": _data_build_out_is_file,
    "data-build-vocab-size-too-large": _data_build("--vocab-size", "70000"),
    "data-build-vocab-size-zero": _data_build("--vocab-size", "0"),
    "data-build-source-without-dir": _data_build("--source", "poems"),
    "data-build-source-dir-missing": _data_build("--source", "poems=/nonexistent/poems"),
    "data-build-gsm8k-dir-missing": lambda s: (
        ["data", "build", "--out", str(s.root / "d"), "--gsm8k-dir", str(s.root / "g"), "--quiet"],
        "--gsm8k-dir",
    ),
    "data-build-val-fraction-out-of-range": _data_build("--val-fraction", "0.9"),
    "data-build-max-chars-too-small": _data_build("--max-chars-per-source", "10"),
    "data-info-no-build": lambda s: (["data", "info", "--data", str(s.root / "nowhere")], "manifest.json"),
    "data-info-manifest-corrupt-json": _data_info_manifest("{"),
    "data-info-manifest-not-an-object": _data_info_manifest("[]"),
    "data-info-manifest-missing-keys": _data_info_manifest('{"version": 1}'),
    # ---- train: the recipe ---------------------------------------------------------------------------------------
    "recipe-lr-is-a-string": _recipe({"lr = 0.003": 'lr = "fast"'}, "optim].lr"),
    "recipe-micro-batch-float": _recipe({"micro_batch = 4": "micro_batch = 4.5"}, "micro_batch"),
    "recipe-micro-batch-zero": _recipe({"micro_batch = 4": "micro_batch = 0"}, "optim.micro_batch"),
    "recipe-lr-negative": _recipe({"lr = 0.003": "lr = -0.003"}, "optim.lr"),
    "recipe-unknown-section": _recipe({"[train]": "[training]"}, "'training'"),
    "recipe-unknown-key": _recipe({"micro_batch": "microbatch"}, "'microbatch'"),
    "recipe-section-not-a-table": _recipe_text('name = "t"\nmodel = 3\n', "[model]"),
    "recipe-malformed-toml": _recipe_text("[model\n", "recipe.toml"),
    "recipe-missing": lambda s: (s.train(s.root / "nope.toml"), "nope.toml"),
    "recipe-is-a-directory": lambda s: (s.train(s.root), "is a directory"),
    "recipe-unknown-preset": _recipe({'preset = "tiny"': 'preset = "huge"'}, "model.preset"),
    "recipe-mixture-not-a-table": _recipe(
        {"mixture = { text = 1.0, math = 1.0, code = 1.0 }": 'mixture = "all"'}, "mixture"
    ),
    "recipe-mixture-negative-weight": _recipe({"text = 1.0": "text = -1.0"}, "mixture"),
    "recipe-mixture-unknown-source": _recipe({"code = 1.0": "poetry = 1.0"}, "'poetry'"),
    "recipe-target-losses-strings": _recipe(
        {"target_losses = [100.0, 0.5]": 'target_losses = ["low"]'}, "target_losses"
    ),
    "recipe-keep-state-unknown": _recipe({'keep_state = "all"': 'keep_state = "some"'}, "keep_state"),
    "recipe-context-too-large-for-memory": _recipe(
        {"context = 32": "context = 100000", "micro_batch = 4": "micro_batch = 64"},
        "GiB is available",
        "--allow-repeat",  # its token budget is also far over the data: the memory check is the one tested
    ),
    "recipe-budget-over-the-data": _recipe({"steps = 6": "steps = 6000"}, "--allow-repeat"),
    "recipe-context-longer-than-the-data": _recipe(
        {"context = 32": "context = 20000", "micro_batch = 4": "micro_batch = 1"}, "val/"
    ),
    # ---- train: flags, data, resume -------------------------------------------------------------------------------
    "train-unknown-optimizer": lambda s: ([*s.train(s.recipe())[:2], "--optimizer", "sgd"], "--optimizer"),
    "train-data-dir-missing": lambda s: (s.train(s.recipe(), "--data", str(s.root / "nowhere")), "manifest.json"),
    "train-tokenizer-missing": _train_corrupt_data(lambda p: p.unlink(), "tokenizer/tokenizer.json"),
    "train-token-file-odd-size": _train_corrupt_data(lambda p: truncate(p, p.stat().st_size - 1), "train/text.bin"),
    "train-token-file-200-bytes": _train_corrupt_data(lambda p: truncate(p, 200), "train/text.bin"),
    "train-token-file-half": _train_corrupt_data(half, "train/math.bin"),
    "train-token-file-changed": _train_corrupt_data(_flip_a_byte, "train/code.bin"),
    "train-val-token-file-half": _train_corrupt_data(half, "val/text.bin"),
    "train-existing-run-without-resume": lambda s: (s.run_copy() and s.train(s.recipe()), "--resume"),
    "resume-weights-truncated": _resume_corrupt(half, "model.safetensors"),
    "resume-weights-200-bytes": _resume_corrupt(lambda p: truncate(p, 200), "model.safetensors"),
    "resume-optimizer-state-truncated": _resume_corrupt(half, "optimizer/state.pt"),
    "resume-optimizer-state-garbage": _resume_corrupt(lambda p: p.write_text("not a torch file"), "optimizer/state.pt"),
    # ---- eval ----------------------------------------------------------------------------------------------------
    "eval-weights-truncated": _eval_ckpt(_truncate_in("model.safetensors", 1000), "model.safetensors"),
    "eval-weights-half": _eval_ckpt(lambda c: half(c / "model.safetensors"), "model.safetensors"),
    "eval-config-corrupt": _eval_ckpt(_write_in("config.json", "{"), "config.json"),
    "eval-tokenizer-missing": _eval_ckpt(_rm("tokenizer.json"), "tokenizer"),
    "eval-unknown-task": _eval_flags("--tasks", "no_such_task", names="no_such_task"),
    "eval-unknown-suite": _eval_flags("--suite", "no_such_suite", names="no_such_suite"),
    "eval-tasks-and-suite": _eval_flags("--tasks", "arith_gold_bpb", "--suite", "reasoning", names="--suite"),
    "eval-unknown-backend": _eval_flags("--backend", "tpu", names="--backend"),
    "eval-limit-zero": _eval_flags("--limit", "0", names="--limit"),
    "eval-num-fewshot-negative": _eval_flags("--num-fewshot", "-1", names="--num-fewshot"),
    "eval-batch-size-zero": _eval_flags("--batch-size", "0", names="--batch-size"),
    "eval-task-yaml-missing": lambda s: _eval_flags("--tasks", str(s.root / "t.yaml"), names="t.yaml")(s),
    "eval-task-yaml-malformed": lambda s: _eval_flags(
        "--tasks", str(s.write("bad.yaml", "task: [\n")), names="bad.yaml"
    )(s),
    "eval-cache-is-a-file": lambda s: (
        [
            "eval",
            str(s.runs["adamw"] / "ckpt-000006"),
            "--tasks",
            "arith_gold_bpb",
            "--quiet",
            "--cache",
            str(s.write("cache_file", "x")),
        ],
        "--cache",
    ),  # fmt: skip
    "eval-path-missing": lambda s: (["eval", str(s.root / "nope"), "--quiet"], "nope"),
    "eval-empty-run-dir": lambda s: ((s.root / "empty").mkdir() or ["eval", str(s.root / "empty")], "empty"),
    "eval-plain-file": lambda s: (["eval", str(s.write("notes.txt", "hello"))], "notes.txt"),
    # ---- loss ----------------------------------------------------------------------------------------------------
    "loss-weights-truncated": _loss(lambda c: half(c / "model.safetensors"), "model.safetensors"),
    "loss-windows-zero": _loss(None, "--windows", "--windows", "0"),
    "loss-data-missing": lambda s: (["loss", str(s.runs["adamw"] / "ckpt-000006"), "--data", str(s.root)], "manifest"),
    "loss-checkpoint-missing": lambda s: (["loss", str(s.root / "nope"), "--data", str(s.data_dir)], "nope"),
    "loss-val-token-file-odd-size": _loss_corrupt_data(lambda p: truncate(p, p.stat().st_size - 1), "val/math.bin"),
    "loss-val-docs-missing": _loss_corrupt_data(lambda p: p.unlink(), "val/code.jsonl"),  # read first
    # ---- tasks ---------------------------------------------------------------------------------------------------
    "tasks-list-unknown-suite": lambda s: (["tasks", "list", "--suite", "nope"], "nope"),
    "tasks-prepare-gsm8k-dir-missing": lambda s: (
        ["tasks", "prepare", "--gsm8k-dir", str(s.root / "g")],
        "--gsm8k-dir",
    ),
    "tasks-generate-out-is-a-file": lambda s: (["tasks", "generate", "--out", str(s.write("f", "x"))], "--out"),
    # ---- compare -------------------------------------------------------------------------------------------------
    "compare-without-match-loss": lambda s: (["compare", str(s.runs["adamw"])], "--match-loss"),
    "compare-targets-not-numbers": _compare(lambda s: None, "--targets", "--targets", "3.0,low"),
    "compare-run-missing": lambda s: (["compare", str(s.root / "nope"), "--match-loss"], "nope"),
    "compare-empty-dir": lambda s: ((s.root / "e").mkdir() or ["compare", str(s.root / "e"), "--match-loss"], "e"),
    "compare-run-json-corrupt": _compare(_run_file("run.json", "{"), "run.json"),
    "compare-nexus-json-corrupt": _compare(_run_file("ckpt-000003/nexus.json", "{"), "nexus.json"),
    "compare-nexus-json-no-loss": _compare(_run_file("ckpt-000003/nexus.json", "{}"), "nexus.json"),
    "compare-leaderboard-name-climbs-out": _compare(lambda s: None, "--leaderboard", "--leaderboard", "../x"),
    "compare-resamples-too-few": _compare(lambda s: None, "--resamples", "--resamples", "3"),
    "compare-unknown-task": _compare(lambda s: None, "no_such_task", "--tasks", "no_such_task"),
    "compare-out-is-a-file": lambda s: _compare(lambda s: None, "--out", "--out", str(s.write("o", "x")))(s),
    # ---- leaderboard ---------------------------------------------------------------------------------------------
    "leaderboard-refresh-corrupt-json": _leaderboard("refresh", "demo", "{"),
    "leaderboard-check-corrupt-json": _leaderboard("check", "demo", '{"schema": '),
    "leaderboard-check-not-an-object": _leaderboard("check", "demo", "[]"),
    "leaderboard-refresh-missing-keys": _leaderboard("refresh", "demo", BOARD_WITHOUT_TASKS),
    "leaderboard-refresh-no-dir": lambda s: (["leaderboard", "refresh", "--dir", str(s.root / "b")], "b"),
    # ---- geometry ------------------------------------------------------------------------------------------------
    "geometry-not-a-checkpoint": lambda s: (
        ["geometry", str(s.write("w.txt", "x")), "--data", str(s.data_dir)],
        "w.txt",
    ),
    "geometry-weights-truncated": _geometry(names="model.safetensors", corrupt=lambda c: half(c / "model.safetensors")),
    "geometry-batches-zero": _geometry("--batches", "0", names="--batches"),
    "geometry-unknown-finetune-optimizer": _geometry("--finetune-optimizer", "lion", names="--finetune-optimizer"),
    "geometry-unknown-source": _geometry("--sources", "text,poetry", names="poetry"),
    "geometry-context-too-long": _geometry("--context", "100000", names="--context"),
    "geometry-data-missing": lambda s: _geometry("--data", str(s.root / "nowhere"), names="nowhere")(s),
}


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.fixture
def sandbox(
    tmp_path: Path, tiny_data_dir: Path, tiny_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> Sandbox:
    monkeypatch.chdir(tmp_path)  # default output paths (results/, reports/, leaderboards/) land in tmp_path
    return Sandbox(tmp_path, tiny_data_dir, tiny_runs)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_gives_one_line_naming_it(case: str, sandbox: Sandbox) -> None:
    args, names = CASES[case](sandbox)
    before = files_under(sandbox.root)
    result = CliRunner().invoke(app, args)
    output = result.output.strip()
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        f"{case}: uncaught {type(result.exception).__name__}: {result.exception}"
    )
    assert result.exit_code == 2, f"{case}: exit {result.exit_code}: {output}"
    assert "Traceback" not in output
    assert len(output.splitlines()) == 1 and output.startswith("error: "), f"{case}: {output}"
    assert names in output, f"{case}: {names!r} not in {output!r}"
    left = sorted(str(p.relative_to(sandbox.root)) for p in files_under(sandbox.root) - before)
    assert not left, f"{case}: left {left}"
    assert not [p for p in sandbox.root.rglob("*") if ".tmp" in p.name or ".building" in p.name]
