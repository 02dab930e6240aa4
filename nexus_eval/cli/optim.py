"""`nexus-eval optim`: checks of an optimizer before it is trained with."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from nexus_eval.cli.options import AsJson, one_line_errors

app = typer.Typer(no_args_is_help=True, help="Checks of the optimizer before spending GPU hours on it.")


@app.command("check")
@one_line_errors
def check_command(
    recipe: Path = typer.Argument(..., help="Training recipe, e.g. train/130m.toml"),
    data: Path | None = typer.Option(None, "--data", help="Data dir (default: the recipe's data.dir)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (auto: cuda if any)"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, or bf16 (autocast over fp32 master weights)"),
    inner_loop: str = typer.Option(
        "auto", "--inner-loop", help="exact, linear, or auto: what train uses (linear under bf16, else exact)"
    ),
    inner_lr_ratio: float | None = typer.Option(
        None, "--inner-lr-ratio", help="γ = ratio × optim.lr (default: the recipe's optim.inner_lr_ratio)"
    ),
    rows: int = typer.Option(4, "--rows", help="Sequences per micro-batch"),
    context: int = typer.Option(128, "--context", help="Tokens per sequence (at most the recipe's model.context)"),
    warmup_steps: int = typer.Option(20, "--warmup-steps", help="AdamW steps from the initial weights first"),
    as_json: AsJson = False,
) -> None:
    """How much Nexus' inner loop changes the update (second-order share ‖S‖/‖N‖) and how faithfully a precision
    computes it (fidelity cos(S, S_fp64)), on K real micro-batches of the recipe's data build."""
    from nexus_eval.errors import RecipeError
    from nexus_eval.training.fidelity import CheckSettings, check_recipe, check_settings
    from nexus_eval.training.parallel import resolve_device
    from nexus_eval.training.recipe import DEVICES, load_recipe

    settings = CheckSettings(dtype, inner_loop, inner_lr_ratio, rows, context, warmup_steps)
    check_settings(settings)  # bad flags before the recipe is even read
    if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise RecipeError(f"--device must be one of {', '.join(DEVICES)} (or cuda:N), got {device!r}")
    plan = load_recipe(recipe)
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") and device[5:].isdigit() else 0
    report = check_recipe(plan, data or Path(plan.data.dir), settings, resolve_device(device.split(":")[0], index))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    for line in report.lines():
        typer.echo(line)
    for warning in report.warnings():
        typer.echo(f"warning: {warning}", err=True)
