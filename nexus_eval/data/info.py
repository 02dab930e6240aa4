"""Command-level entry points of the data stage: parse NAME=DIR specs, build, and show a manifest as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from nexus_eval.data.build import build_data
from nexus_eval.data.sources import parse_spec
from nexus_eval.data.store import load_manifest
from nexus_eval.display import console
from nexus_eval.errors import DataError


def parse_specs(flag: str, specs: list[str]) -> dict[str, Path]:
    parsed: dict[str, Path] = {}
    for spec in specs:
        name, directory = parse_spec(flag, spec)
        if name in parsed:
            raise DataError(f"{flag} {spec!r}: name {name} given twice")
        parsed[name] = directory
    return parsed


def build_and_show(out_dir: Path, source_specs: list[str], ood_specs: list[str], **params: Any) -> dict:
    """`nexus-eval data build`: build from CLI-style specs, then print the summary table."""
    manifest = build_data(
        out_dir,
        extra_sources=parse_specs("--source", source_specs),
        extra_ood=parse_specs("--ood", ood_specs),
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
    shown.print(f"vocab {manifest['vocab_size']}, eos id {manifest['eos_id']}, pad id {manifest['pad_id']}")
    shown.print(f"contamination: {dropped} documents dropped ({reference})")
    shown.print(f"hash {manifest['hash']}")
