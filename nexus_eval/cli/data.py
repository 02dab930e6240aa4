"""`nexus-eval data build|info`."""

from __future__ import annotations

from pathlib import Path

import typer

from nexus_eval.cli.options import DataDir, Quiet, one_line_errors

app = typer.Typer(no_args_is_help=True, help="Build the offline multi-source training data.")


@app.command("build")
@one_line_errors
def data_build_command(
    out: Path = typer.Option(Path("data"), "--out", help="Data dir to (re)build; replaced atomically at the end"),
    vocab_size: int = typer.Option(4096, "--vocab-size", help="Byte-level BPE vocabulary size (≤ 65536)"),
    source: list[str] = typer.Option(
        [],
        "--source",
        help="NAME=PATH[:FIELD]: extra training source: a directory of text files, a save_to_disk directory, or a "
        "file/glob of .jsonl[.gz|.zst]/.parquet/.arrow (FIELD: the text column, default text)",
    ),
    ood: list[str] = typer.Option([], "--ood", help="NAME=PATH[:FIELD]: extra OOD domain, never trained on"),
    spec: Path | None = typer.Option(
        None, "--spec", help="TOML data spec ([data.sources.NAME] tables; see docs/data.md)"
    ),
    builtin: bool | None = typer.Option(
        None, "--builtin/--no-builtin", help="Also read the built-in offline sources (default: yes unless --spec)"
    ),
    tokenizer: str | None = typer.Option(
        None, "--tokenizer", help="Pretrained tokenizer: tokenizer dir, model dir or .gguf file (default: train BPE)"
    ),
    gsm8k_dir: Path = typer.Option(Path("../shared/data/gsm8k"), "--gsm8k-dir", help="Dir with GSM8k train.jsonl"),
    max_chars_per_source: int = typer.Option(12_000_000, "--max-chars-per-source", help="Cap per training source"),
    max_chars_per_ood: int = typer.Option(1_200_000, "--max-chars-per-ood", help="Cap per OOD domain"),
    val_fraction: float = typer.Option(0.08, "--val-fraction", help="Share of documents (by hash) held out"),
    math_generated: int = typer.Option(40_000, "--math-generated", help="Generated math problems (before dedupe)"),
    seed: int = typer.Option(0, "--seed", help="Seed of the math problem generator"),
    num_proc: int = typer.Option(1, "--num-proc", help="Tokenizer worker processes (same bytes for any number)"),
    shard_tokens: int = typer.Option(1 << 28, "--shard-tokens", help="Tokens per shard file of a token stream"),
    tasks_dir: Path = typer.Option(
        Path("tasks"), "--tasks-dir", help="Evaluation tasks whose items are looked for in the data (13-grams)"
    ),
    quiet: Quiet = False,
) -> None:
    """Build tokenizer, token streams and manifest from the offline sources (text, math, code + OOD domains)."""
    from nexus_eval.data.info import build_and_show

    build_and_show(
        out,
        source,
        ood,
        spec_file=spec,
        builtin=builtin,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        gsm8k_dir=gsm8k_dir,
        max_chars_per_source=max_chars_per_source,
        max_chars_per_ood=max_chars_per_ood,
        val_fraction=val_fraction,
        math_generated=math_generated,
        seed=seed,
        num_proc=num_proc,
        shard_tokens=shard_tokens,
        tasks_dir=tasks_dir,
        progress=not quiet,
    )


@app.command("info")
@one_line_errors
def data_info_command(data: DataDir = Path("data")) -> None:
    """Summarize a data build: documents, characters and tokens per source and split, vocab, hash."""
    from nexus_eval.data.info import show_manifest

    show_manifest(data)
