"""`nexus-eval checkpoints import-gguf`: external checkpoints made usable by every backend."""

from __future__ import annotations

from pathlib import Path

import typer

from nexus_eval.cli.options import Quiet, one_line_errors

app = typer.Typer(no_args_is_help=True, help="External checkpoints: import a GGUF model as a Hugging Face directory.")


@app.command("import-gguf")
@one_line_errors
def import_gguf_command(
    gguf: Path = typer.Argument(..., help="A .gguf file (or a directory holding exactly one)"),
    out: Path = typer.Argument(..., help="Checkpoint directory to write (config.json, model.safetensors, tokenizer)"),
    force: bool = typer.Option(False, "--force", help="Replace OUT when it is an earlier import"),
    quiet: Quiet = False,
) -> None:
    """Dequantize a GGUF model to a float32 HF checkpoint that `eval --backend hf` and `--backend vllm` both load.

    gguf_import.json in it records the source file's sha256 and the library versions."""
    from nexus_eval.checkpoints_gguf import import_gguf
    from nexus_eval.display import console, quiet_library_progress

    if quiet:
        quiet_library_progress()
    record = import_gguf(gguf, out, force=force)
    console(stderr=True).print(
        f"imported {record['architecture']} ({record['tensors']} tensors, float32) from {Path(record['source']).name} "
        f"(sha256 {record['source_sha256'][:12]}…)"
    )
    typer.echo(str(out))
