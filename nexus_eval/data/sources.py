"""Offline source readers: each yields documents (str) in a fixed order and describes where they came from.

Debian-packaged sources read exactly the files their package installed (dpkg's file list), so a build on another
Debian machine with the same package versions reads the same bytes. A missing package is a DataError that names the
apt-get line to run.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nexus_eval.data import prose
from nexus_eval.data.mathgen import generate_problems
from nexus_eval.data.rdata import read_lazyload_vectors
from nexus_eval.errors import DataError

DPKG_INFO = Path("/var/lib/dpkg/info")
DPKG_STATUS = Path("/var/lib/dpkg/status")
APT_PACKAGES = (
    "r-cran-janeaustenr",
    "python3.11-doc",
    "fortunes",
    "manpages",
    "manpages-dev",
    "libc6-dev",
    "linux-libc-dev",
)
INSTALL_HINT = "apt-get install -y --no-install-recommends " + " ".join(APT_PACKAGES)


@dataclass
class Part:
    """One origin of documents inside a source (a package, a file, a generator)."""

    origin: dict
    docs: Callable[[], Iterator[str]]


@dataclass
class Source:
    """A named stream of documents, made of parts that are interleaved so a size cap keeps every part."""

    name: str
    parts: list[Part] = field(default_factory=list)


def debian_files(package: str, pattern: str) -> tuple[dict, list[Path]]:
    """(origin, files) for the regular files of an installed Debian package whose path matches `pattern`."""
    lists = [DPKG_INFO / f"{package}.list", *sorted(DPKG_INFO.glob(f"{package}:*.list"))]
    found = [p for p in lists if p.is_file()]
    if not found:
        raise DataError(f"Debian package {package} is not installed (no {lists[0]}): run `{INSTALL_HINT}`")
    regex = re.compile(pattern)
    files = sorted(
        Path(line)
        for line in found[0].read_text().splitlines()
        if regex.search(line) and Path(line).is_file() and not Path(line).is_symlink()
    )
    if not files:
        raise DataError(f"Debian package {package} lists no files matching {pattern!r} in {found[0]}")
    origin = {"kind": "debian", "package": package, "version": _debian_version(package), "files": len(files)}
    copyright_file = Path(f"/usr/share/doc/{package}/copyright")
    origin["license"] = f"see {copyright_file}" if copyright_file.is_file() else "unknown"
    return origin, files


def _debian_version(package: str) -> str:
    if not DPKG_STATUS.is_file():
        return "unknown"
    for stanza in DPKG_STATUS.read_text(errors="replace").split("\n\n"):
        if f"Package: {package}\n" in stanza + "\n":
            match = re.search(r"^Version: (.+)$", stanza, re.M)
            if match and "Status: install ok installed" in stanza:
                return match.group(1)
    return "unknown"


def hash_order(paths: list[Path]) -> list[Path]:
    """A fixed pseudo-random order (by path hash), so a size cap samples across a tree instead of its first folder."""
    return sorted(paths, key=lambda p: hashlib.sha256(str(p).encode()).hexdigest())


# ---- text ------------------------------------------------------------------------------------------------------


def austen_part() -> Part:
    origin, files = debian_files("r-cran-janeaustenr", r"/data/Rdata\.rdx$")
    origin |= {"what": "Jane Austen's 6 novels, one document per chapter", "license": "MIT (text: public domain)"}

    def docs() -> Iterator[str]:
        novels = read_lazyload_vectors(files[0])
        for name in sorted(novels):
            yield from prose.chapters([line or "" for line in novels[name]])

    return Part(origin, docs)


def python_docs_part() -> Part:
    origin, files = debian_files("python3.11-doc", r"/html/_sources/.*\.rst\.txt$")
    origin |= {"what": "Python 3.11 documentation (reST sources), prose only: code blocks removed, one doc per section"}
    origin["license"] = "PSF-2.0"

    def docs() -> Iterator[str]:
        for path in hash_order(files):
            yield from prose.rst_sections(path.read_text(encoding="utf-8", errors="replace"))

    return Part(origin, docs)


# ---- math ------------------------------------------------------------------------------------------------------


def gsm8k_train_part(gsm8k_dir: Path) -> Part:
    path = gsm8k_dir / "train.jsonl"
    if not path.is_file():
        raise DataError(f"{path} missing: pass --gsm8k-dir DIR holding GSM8k's train.jsonl (original release, MIT)")
    origin = {
        "kind": "file",
        "path": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "what": "GSM8k TRAIN split (never test), as 'Question: ...\\nAnswer: ...' with <<calc>> notes removed",
        "license": "MIT",
    }

    def docs() -> Iterator[str]:
        for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question, answer = row["question"], row["answer"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{line_number}: not a GSM8k row with question/answer ({e})") from None
            yield f"Question: {question.strip()}\nAnswer: {re.sub(r'<<[^>]*>>', '', answer).strip()}"

    return Part(origin, docs)


def generated_math_part(count: int, seed: int) -> Part:
    origin = {
        "kind": "generator",
        "what": "nexus_eval.data.mathgen: seeded arithmetic/algebra word problems with worked steps",
        "count": count,
        "seed": seed,
        "license": "Apache-2.0 (this project)",
    }
    return Part(origin, lambda: generate_problems(count, seed))


def gsm8k_test_questions(gsm8k_dir: Path) -> tuple[Path, list[str]] | None:
    """The GSM8k test questions, when the test file is there (used only to check contamination)."""
    path = gsm8k_dir / "test.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return path, [row["question"] for row in rows]


# ---- code ------------------------------------------------------------------------------------------------------

# Tests are excluded (brief), encodings are codec tables and pydoc_data is the documentation again (trained as text).
_STDLIB_SKIP = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "encodings",
    "pydoc_data",
}


def stdlib_code_part() -> Part:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        p
        for p in root.rglob("*.py")
        if not _STDLIB_SKIP.intersection(p.relative_to(root).parts[:-1]) and not p.name.startswith("test_")
    ]
    if not files:
        raise DataError(f"no Python standard library source under {root}: install a CPython with its Lib/ sources")
    version = ".".join(map(str, sys.version_info[:3]))
    origin = {
        "kind": "directory",
        "path": str(root),
        "what": f"CPython {version} standard library source (*.py), without tests, encodings and pydoc_data",
        "files": len(files),
        "license": "PSF-2.0",
    }

    def docs() -> Iterator[str]:
        for path in hash_order(files):
            yield path.read_text(encoding="utf-8", errors="replace")

    return Part(origin, docs)


# ---- OOD -------------------------------------------------------------------------------------------------------


def c_headers_part() -> list[Part]:
    parts = []
    for package in ("libc6-dev", "linux-libc-dev"):
        origin, files = debian_files(package, r"^/usr/include/.*\.h$")
        origin["what"] = "C headers"
        parts.append(Part(origin, lambda files=files: (p.read_text(errors="replace") for p in hash_order(files))))
    return parts


def man_pages_parts() -> list[Part]:
    parts = []
    for package in ("manpages", "manpages-dev"):
        origin, files = debian_files(package, r"^/usr/share/man/man\d/.*\.gz$")
        origin["what"] = "Linux man pages, roff markup stripped to plain text"

        def docs(files: list[Path] = files) -> Iterator[str]:
            for path in hash_order(files):
                text = prose.roff_to_text(gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace"))
                if text:  # `.so` alias pages render empty
                    yield text

        parts.append(Part(origin, docs))
    return parts


def fortunes_part() -> Part:
    origin, files = debian_files("fortunes", r"^/usr/share/games/fortunes/[^/.]+$")
    origin["what"] = "fortune cookies (quotes, jokes, verse), one document per fortune"

    def docs() -> Iterator[str]:
        for path in files:
            for fortune in re.split(r"^%$", path.read_text(encoding="utf-8", errors="replace"), flags=re.M):
                yield fortune.strip("\n")

    return Part(origin, docs)


# ---- user directories --------------------------------------------------------------------------------------------


def text_dir_part(spec_flag: str, directory: Path) -> Part:
    """Every text file under `directory` (recursively; binary files, with a NUL byte, skipped), one document per
    file. A text file that is not UTF-8 is an error naming it: silently dropping it would shrink the corpus."""
    if not directory.is_dir():
        raise DataError(f"{spec_flag}: directory {directory} does not exist")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))
    origin = {"kind": "directory", "path": str(directory.resolve()), "what": "user text files", "license": "user"}

    def docs() -> Iterator[str]:
        read = 0
        for path in files:
            raw = path.read_bytes()
            if b"\0" in raw:
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{spec_flag}: {path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
            read += 1
            yield text
        if not read:
            raise DataError(f"{spec_flag}: no UTF-8 text files in {directory}")

    return Part(origin | {"files": len(files)}, docs)


def default_sources(gsm8k_dir: Path, math_generated: int, seed: int) -> list[Source]:
    return [
        Source("text", [austen_part(), python_docs_part()]),
        Source("math", [gsm8k_train_part(gsm8k_dir), generated_math_part(math_generated, seed)]),
        Source("code", [stdlib_code_part()]),
    ]


def default_ood() -> list[Source]:
    return [
        Source("c_headers", c_headers_part()),
        Source("man_pages", man_pages_parts()),
        Source("fortunes", [fortunes_part()]),
    ]
