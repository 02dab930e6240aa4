"""Command-level entry points of the data stage: parse NAME=DIR specs, build, and show a manifest as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from nexus_eval.data.build import build_data
from nexus_eval.data.spec import DataSpec, SourceSpec, load_spec, parse_cli_source
from nexus_eval.data.store import load_manifest
from nexus_eval.display import console
from nexus_eval.errors import DataError


def parse_specs(flag: str, specs: list[str]) -> list[SourceSpec]:
    """--source/--ood NAME=PATH[:FIELD] values as SourceSpecs; a name given twice is refused."""
    parsed: list[SourceSpec] = []
    for text in specs:
        spec = parse_cli_source(flag, text)
        if spec.name in {p.name for p in parsed}:
            raise DataError(f"{flag} {text!r}: name {spec.name} given twice")
        parsed.append(spec)
    return parsed


def build_and_show(
    out_dir: Path,
    source_specs: list[str],
    ood_specs: list[str],
    spec_file: Path | None = None,
    builtin: bool | None = None,
    tokenizer: str | None = None,
    **params: Any,
) -> dict:
    """`nexus-eval data build`: build from CLI-style specs and an optional TOML spec, then print the summary table.

    --source/--ood alone add to the built-in sources (as they always did); a --spec file decides for itself
    (`builtin`, default false when it names sources); --builtin/--no-builtin overrides both."""
    cli_sources = parse_specs("--source", source_specs) + parse_specs("--ood", ood_specs)
    spec = load_spec(spec_file) if spec_file is not None else DataSpec()
    if builtin is None:
        builtin = spec.builtin if spec.builtin is not None else (not spec.sources if spec_file else True)
    manifest = build_data(
        out_dir,
        sources=cli_sources + spec.sources,
        builtin=builtin,
        tokenizer=tokenizer if tokenizer is not None else spec.tokenizer,
        **params,
    )
    show_manifest(out_dir, manifest)
    return manifest


def summary_table(manifest: dict, title: str) -> Table:
    table = Table(title=title)
    for column in ("name", "split", "docs", "chars", "tokens", "origin"):
        table.add_column(column, justify="right" if column in ("docs", "chars", "tokens") else "left")
    for group in ("sources", "ood"):
        for name, entry in manifest[group].items():
            origin = ", ".join(
                o.get("package") or Path(o.get("path", o.get("kind", "?"))).name for o in entry["origin"]
            )
            for split in entry["docs"]:
                row = [f"{entry['docs'][split]:,}", f"{entry['chars'][split]:,}", f"{entry['tokens'][split]:,}"]
                table.add_row(name, split, *row, origin)
    return table


def show_manifest(data_dir: Path, manifest: dict | None = None) -> None:
    """`nexus-eval data info`: one row per (source, split), then vocab, hash and contamination summary."""
    manifest = manifest or load_manifest(data_dir)
    shown = console()
    shown.print(summary_table(manifest, f"{data_dir}/manifest.json"))
    dropped = sum(manifest["contamination"]["dropped_docs"].values())
    reference = manifest["contamination"]["reference"] or "no GSM8k test file found: not checked"
    tokenizer = manifest.get("tokenizer", {}).get("location", "byte-level BPE trained on the train split")
    shown.print(
        f"vocab {manifest['vocab_size']} ({tokenizer}), eos id {manifest['eos_id']}, pad id {manifest['pad_id']}, "
        f"tokens stored as {manifest.get('token_dtype', 'uint16')}"
    )
    shown.print(f"contamination: {dropped} documents dropped ({reference})")
    overlaps = manifest["contamination"].get("overlaps") or {}
    per_task: dict[str, int] = {}
    for counts in overlaps.values():
        for task, count in counts.items():
            per_task[task] = per_task.get(task, 0) + count
    if manifest["contamination"].get("tasks") or per_task:
        listed = ", ".join(f"{task} {count}" for task, count in sorted(per_task.items())) or "none"
        shown.print(f"13-gram overlaps with evaluation items, documents per task: {listed}")
    shown.print(f"hash {manifest['hash']}")
