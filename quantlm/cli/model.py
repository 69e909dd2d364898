"""CLI for the market language model: `quantlm pretrain` and `quantlm forecast` (evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantlm.cli.common import StoreOption, console, user_errors


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app`."""
    app.command("pretrain")(pretrain_cmd)
    app.command("forecast")(forecast_cmd)


@user_errors
def pretrain_cmd(
    config: Annotated[Path, typer.Option("--config", help="Pretraining YAML (configs/pretrain/*.yaml).")],
    store: StoreOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default: run_dir in the config).")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Override train.max_steps.")] = None,
    stop_after: Annotated[int | None, typer.Option("--stop-after", min=1, help="Stop (with a checkpoint) at this step.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in the run dir.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Pretrain the market GPT on K-line tokens from the store (time-split train/valid)."""
    import json

    from quantlm.train.config import load_config
    from quantlm.train.loop import pretrain

    cfg = load_config(config)
    run = pretrain(cfg, store=store, out=out, max_steps=max_steps, resume=resume, stop_after=stop_after,
                   progress=progress)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if "valid_loss" in r]
    train = [r for r in rows if "loss" in r]
    msg = f"run: {run}"
    if train:
        msg += f"  step {train[-1]['step']}  loss {train[-1]['loss']:.4f}  {train[-1]['tokens_per_s']:,.0f} tok/s"
    if valid:
        msg += f"  valid loss {valid[-1]['valid_loss']:.4f}  valid acc {valid[-1]['valid_acc']:.3f}"
    console.print(msg, highlight=False)
    if (run / "model").exists():
        console.print(f"model: {run / 'model'}", highlight=False)


@user_errors
def forecast_cmd(
    model: Annotated[Path, typer.Option("--model", help="Model folder (run_dir/model).")],
    out: Annotated[Path, typer.Option("--out", help="Output directory for forecast_metrics.json.")],
    store: StoreOption = None,
    start: Annotated[str | None, typer.Option("--start", help="First forecast origin (default: after the tokenizer's fit end).")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Last forecast origin.")] = None,
    horizon: Annotated[int, typer.Option("--horizon", min=1, help="Bars ahead.")] = 5,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Sampled paths per forecast.")] = 16,
    origins: Annotated[int, typer.Option("--origins", min=1, help="Forecast origins, evenly spaced in the period.")] = 20,
    freq: Annotated[str, typer.Option("--freq", help="Bar frequency in the store.")] = "1d",
    temperature: Annotated[float, typer.Option("--temperature", min=0.0)] = 1.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 0.9,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Evaluate sampled forecasts on the validation period beside persistence and historical-vol baselines."""
    from quantlm.cli.common import store_from
    from quantlm.predict.evaluate import evaluate_model, metrics_table

    res = evaluate_model(model, store_from(store), out, start=start, end=end, horizon=horizon, n_samples=samples,
                         n_origins=origins, freq=freq, temperature=temperature, top_p=top_p, seed=seed)
    console.print(metrics_table(res))
    if res["in_training_period"]:
        console.print(f"[yellow]warning:[/] origins start on or before the training split ({res['fit_end']}): "
                      "these forecasts are in-sample", highlight=False)
    console.print(f"wrote {Path(out) / 'forecast_metrics.json'} ({res['n_forecasts']} forecasts, "
                  f"{res['n_origins']} origins)", highlight=False)
