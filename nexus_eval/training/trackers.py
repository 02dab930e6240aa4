"""Training curves in the tools people already use: TensorBoard event files and Weights & Biases offline runs,
written beside metrics.jsonl (which stays the record every stage reads; these are views of it).

`train --report-to` chooses them, as transformers' `report_to` does: `auto` (the default: TensorBoard when it is
installed, else one line saying how to install it), `none`, `all`, or a comma list of `tensorboard`, `wandb`. A tracker
named explicitly but not installed is a one-line error before anything trains: hours of a run without the curves it
was asked for are worse than a refusal. W&B only when asked, and offline unless WANDB_MODE says otherwise: training
never touches the network on its own.

Each tracker is one small class with open(run_dir, run) / log(step, scalars) / flush() / close(); Trackers drives
them for the loop, on rank 0 only. They get the rows metrics.jsonl gets, flattened to tags (`scalars`), and are
flushed before every checkpoint (not every step), so that the curve up to a checkpoint is on disk when it exists. A
resumed run must not show a step twice: TensorBoard hides the killed process' events after the resumed step
(purge_step), as metrics.jsonl drops its rows. W&B cannot resume an offline run: each process writes its own
offline-run-* directory under the run's id (kept in wandb/run_id), synced in order with `wandb sync --append`; W&B
drops steps below a run's latest, and as resume is exact a step logged twice carries the same losses.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from nexus_eval.display import console
from nexus_eval.errors import RecipeError
from nexus_eval.io import write_text_atomic
from nexus_eval.schema import MetricsRow

TRACKERS = ("tensorboard", "wandb")
INSTALL = {name: f"pip install 'nexus-eval[{name}]'" for name in TRACKERS}
TENSORBOARD_DIR = "tensorboard"  # <run_dir>/tensorboard/: `tensorboard --logdir runs/` finds every run's
WANDB_DIR = "wandb"  # <run_dir>/wandb/: wandb's offline-run-* directories, and run_id
WANDB_PROJECT = "nexus-eval"


@dataclass(frozen=True)
class ReportTo:
    """Where a run's curves go besides metrics.jsonl: the resolved `--report-to` (every name installed)."""

    trackers: tuple[str, ...] = ()  # of TRACKERS
    wandb_project: str = WANDB_PROJECT  # WANDB_PROJECT in the environment wins, as wandb users expect
    # auto without TensorBoard: the one line saying how to get it, printed when the loop starts (not before: a run
    # refused earlier gives its one-line error alone)
    hint: str | None = None


def resolve_report_to(text: str) -> ReportTo:
    """`--report-to TEXT` → what to write. auto: TensorBoard when installed (else nothing, and a hint saying how to
    install it); none; all; or a comma list of TRACKERS, each of which must be installed (a RecipeError naming the
    flag otherwise)."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if names == ["auto"]:
        if (why := unavailable("tensorboard")) is None:
            return ReportTo(("tensorboard",))
        fix = f"{INSTALL['tensorboard']} to get them" if why == NOT_INSTALLED else f"tensorboard {why}"
        return ReportTo(hint=f"warning: no TensorBoard curves ({fix}; --report-to none)")
    if names == ["none"]:
        return ReportTo()
    if names == ["all"]:
        names = list(TRACKERS)
    unknown = [n for n in names if n not in TRACKERS]
    if not names or unknown:
        got = unknown[0] if unknown else text
        raise RecipeError(f"--report-to {got!r}: expected auto, none, all or a comma list of {', '.join(TRACKERS)}")
    for name in names:
        if (why := unavailable(name)) is not None:
            raise RecipeError(f"--report-to {name}: the {name} package {why} ({INSTALL[name]})")
    return ReportTo(tuple(dict.fromkeys(names)))


NOT_INSTALLED = "is not installed"


def unavailable(name: str) -> str | None:
    """Why a tracker cannot be written, or None when its package imports (TensorBoard through torch's writer, what
    we use). An install that fails to import for another reason says so: e.g. protobuf older than the one
    tensorboard's generated code needs, which pip allows when another package caps protobuf."""
    try:
        if name == "tensorboard":
            import torch.utils.tensorboard  # noqa: F401
        else:
            import wandb  # noqa: F401
    except ImportError:  # also what `sys.modules[name] = None` raises (the tests' "not installed")
        return NOT_INSTALLED
    except Exception as e:
        return f"is installed but fails to import ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    return None


def installed(name: str) -> bool:
    return unavailable(name) is None


def scalars(row: MetricsRow) -> dict[str, float]:
    """A metrics row as tracker tags: train/loss, train/lr, train/tokens, heldout/mixture, heldout/<source>,
    ood/<domain>, perf/tokens_per_s|mfu|peak_memory_mib, grad_cosine/mean_offdiag and grad_cosine/<a>-<b>. A numeric
    field this table does not name goes under train/ (a dict of numbers under its own name), so that a field added
    to the row later shows up without a change here."""
    named = {
        "train_loss": "train/loss",
        "lr": "train/lr",
        "tokens": "train/tokens",
        "val_loss": "heldout/mixture",
        "tokens_per_s": "perf/tokens_per_s",
        "mfu": "perf/mfu",
        "peak_memory_mib": "perf/peak_memory_mib",
    }
    groups = {"val_loss_per_source": "heldout", "ood_loss": "ood"}
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "step":
            continue
        if key == "grad_cosine" and isinstance(value, dict):
            out["grad_cosine/mean_offdiag"] = float(value["mean_offdiag"])
            sources, matrix = value["sources"], value["matrix"]
            for i, a in enumerate(sources):
                for j in range(i + 1, len(sources)):
                    out[f"grad_cosine/{a}-{sources[j]}"] = float(matrix[i][j])
        elif isinstance(value, dict):
            prefix = groups.get(key, key)
            out.update({f"{prefix}/{k}": float(v) for k, v in value.items() if is_number(v)})
        elif is_number(value):
            out[named.get(key, f"train/{key}")] = float(value)
    return out


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Tracker(Protocol):
    """One place curves go. open() before the first log; resumed_from: the step the run resumed from (0: fresh)."""

    def open(self, run_dir: Path, run: dict[str, Any], resumed_from: int) -> None: ...

    def log(self, step: int, values: dict[str, float]) -> None: ...

    def flush(self) -> None: ...

    def close(self, failed: bool) -> None: ...


class TensorBoardTracker:
    """Event files under <run_dir>/tensorboard/ (torch.utils.tensorboard.SummaryWriter). Each process writes its own
    file; on resume, purge_step hides the earlier files' events after the resumed step (TensorBoard's own rule)."""

    def __init__(self) -> None:
        self.writer: Any = None

    def open(self, run_dir: Path, run: dict[str, Any], resumed_from: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # flush_secs: the writer thread's own flush; the loop flushes at checkpoints, this bounds a slow interval.
        purge = resumed_from + 1 if resumed_from else None  # metrics.jsonl keeps the rows up to resumed_from too
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=purge, flush_secs=60)
        if not resumed_from:  # the run's identity, once: what it trained, with what, on which data
            self.writer.add_text("run.json", f"```json\n{json.dumps(run, indent=2, sort_keys=True)}\n```", 0)

    def log(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, failed: bool) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run in <run_dir>/wandb/, offline unless WANDB_MODE is set (then wandb's own rules: WANDB_MODE=online
    syncs as it goes). Named after the run directory, configured with run.json (recipe, optimizer and its
    hyperparameters, seed, hashes, execution); its id is kept in wandb/run_id so that a resumed run continues it."""

    def __init__(self, project: str = WANDB_PROJECT) -> None:
        self.project = project
        self.run: Any = None

    def open(self, run_dir: Path, run: dict[str, Any], resumed_from: int) -> None:
        import wandb

        id_file = run_dir / WANDB_DIR / "run_id"
        run_id = id_file.read_text().strip() if resumed_from and id_file.is_file() else None
        if run_id is None:
            run_id = secrets.token_hex(4)  # 8 characters of [0-9a-f], as W&B's own ids
            id_file.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(id_file, run_id + "\n")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", self.project),
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),  # wandb adds its wandb/ below
            config=run,
            mode=None if "WANDB_MODE" in os.environ else "offline",
            # console "off": wandb would otherwise wrap stdout/stderr, under the progress bar and the one-line errors
            settings=wandb.Settings(console="off", quiet=True),
        )

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def flush(self) -> None:
        pass  # wandb's service process writes the offline run file as records arrive

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class Trackers:
    """The trackers of one run, for the loop: a context manager that opens them (reading run.json, which the loop
    has written) and closes them however the loop ends; prints the ReportTo's hint first. Empty (every call a no-op)
    without a ReportTo: off, and on every rank but 0."""

    def __init__(self, report_to: ReportTo | None, run_dir: Path, resumed_from: int = 0):
        self.run_dir = run_dir
        self.resumed_from = resumed_from
        self.hint = report_to.hint if report_to is not None else None
        self.trackers: list[Tracker] = []
        if report_to is not None:
            for name in report_to.trackers:
                tracker = TensorBoardTracker() if name == "tensorboard" else WandbTracker(report_to.wandb_project)
                self.trackers.append(tracker)

    def __enter__(self) -> Trackers:
        if self.hint is not None:
            console(stderr=True).print(self.hint, markup=False, highlight=False, soft_wrap=True)
        if self.trackers:
            run = json.loads((self.run_dir / "run.json").read_text())
            opened: list[Tracker] = []
            try:
                for tracker in self.trackers:
                    tracker.open(self.run_dir, run, self.resumed_from)
                    opened.append(tracker)
            except BaseException:
                for tracker in opened:
                    tracker.close(failed=True)
                raise
        return self

    def log(self, row: MetricsRow) -> None:
        if self.trackers:
            values = scalars(row)
            for tracker in self.trackers:
                tracker.log(row["step"], values)

    def flush(self) -> None:
        for tracker in self.trackers:
            tracker.flush()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for tracker in self.trackers:
            tracker.close(failed=kind is not None)
