"""The demo job: embedded data -> store -> health check -> baselines in the backtester -> summary.

Each step calls the same library functions as the CLI commands; nothing here is demo-only logic
except choosing sizes that finish in a few minutes on two CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from quantlm.data.store import Store


class DemoError(ValueError):
    """A demo input problem, shown to CLI users as a plain message."""

    user_facing = True


def build_demo_data(store: Store, n_symbols: int, seed: int, console: Console) -> dict:
    """Generate the synthetic market (skipped when the store already holds the same one) and the S&P 500 sample."""
    from quantlm.data.samples import load_sp500_sample
    from quantlm.data.synth import SynthConfig, write_market

    config = SynthConfig(n_symbols=n_symbols, seed=seed)
    wanted = config.model_dump_json()
    stored = store.meta().get("synth_config")
    if stored == wanted:
        console.print(f"synthetic market already in {store.root} (same config): reusing it")
    elif stored is not None:
        raise DemoError(f"the store at {store.root} already holds a synthetic market made with another config; "
                        "use a fresh --store (or delete that one) to generate this one")
    else:
        console.print(f"generating the synthetic A-share market ({n_symbols} stocks, seed {seed}) into {store.root} ...")
        write_market(store, config)
    report = load_sp500_sample(store)
    console.print(f"imported the S&P 500 sample: {report}")
    return {"synth_config": wanted}


def summarise_store(store: Store, console: Console) -> None:
    """Print symbols, rows and ranges per (market, freq)."""
    listing = store.listing()
    table = Table(title=f"store {store.root}")
    for col in ("market", "freq", "symbols", "rows", "first", "last"):
        table.add_column(col)
    for (market, freq), g in listing.groupby(["market", "freq"]):
        table.add_row(market, freq, str(len(g)), f"{int(g['rows'].sum()):,}", str(g["first_ts"].min().date()),
                      str(g["last_ts"].max().date()))
    console.print(table)


def health(store: Store, console: Console) -> dict:
    """Run the data health check and print the counts per warning kind."""
    from quantlm.data.health import check_store

    report = check_store(store)
    counts = report.summary if hasattr(report, "summary") else {}
    table = Table(title="data health (warnings)")
    table.add_column("kind")
    table.add_column("count", justify="right")
    for kind, n in dict(counts).items():
        table.add_row(str(kind), f"{int(n):,}")
    console.print(table)
    return {str(k): int(v) for k, v in dict(counts).items()}


def evaluate_baselines(store: Store, out_dir: Path, console: Console, jobs: int = 2) -> dict:
    """Benchmark, momentum, reversal, LightGBM (walk-forward) and the oracle through one backtester."""
    from quantlm.baselines.compare import EvaluateOptions, run_evaluation

    options = EvaluateOptions(market="cn", seeds=[0], jobs=jobs, test_months=12, num_boost_round=100)
    console.print("evaluating baselines out of sample (expanding walk-forward, 12-month test folds) ...")
    summary = run_evaluation(store, out_dir, options)
    metrics = {name: run["metrics"] for name, run in summary["runs"].items()}
    print_runs(metrics, console, title=f"out of sample {summary['period']} (cn rules, costs on)")
    console.print(f"report: {out_dir / 'report.html'}")
    return metrics


def pretrain_and_forecast(store: Store, out_dir: Path, console: Console, steps: int = 300, origins: int = 4) -> dict:
    """Pretrain the `mini` market GPT on every daily series in the store, then score its forecasts on the
    validation period beside the persistence and historical-volatility baselines."""
    from quantlm.predict.evaluate import evaluate_model, metrics_table
    from quantlm.train.config import load_config
    from quantlm.train.loop import pretrain

    config_path = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "mini.yaml"
    cfg = load_config(config_path)
    console.print(f"pretraining the mini market GPT for {steps} steps on CPU ...")
    run_dir = pretrain(cfg, store=store.root, out=out_dir / "pretrain", max_steps=steps, progress=False)
    console.print(f"evaluating sampled 5-bar forecasts at {origins} origins in the validation period ...")
    res = evaluate_model(run_dir / "model", store, out_dir / "forecast", horizon=5, n_samples=16, n_origins=origins)
    console.print(metrics_table(res))
    return {"run_dir": str(run_dir), "forecast": str(out_dir / "forecast" / "forecast_metrics.json")}


RUN_COLUMNS = (("annual_excess_return", "excess/yr", "{:+.1%}"), ("sharpe", "Sharpe", "{:.2f}"),
               ("max_drawdown", "max DD", "{:.1%}"), ("ic", "IC", "{:.4f}"), ("rank_ic", "RankIC", "{:.4f}"),
               ("turnover", "turnover", "{:.2f}"))


def print_runs(runs: dict, console: Console, title: str) -> None:
    """One row per run, the headline metrics as columns."""
    table = Table(title=title)
    table.add_column("run")
    for _, header, _ in RUN_COLUMNS:
        table.add_column(header, justify="right")
    for name, m in runs.items():
        cells = []
        for key, _, fmt in RUN_COLUMNS:
            v = m.get(key)
            cells.append("-" if v is None or v != v else fmt.format(v))
        table.add_row(name, *cells)
    console.print(table)


def run_demo(store: Store, out_dir: Path, n_symbols: int = 200, seed: int = 0, console: Console | None = None,
             pretrain_steps: int = 300, forecast_origins: int = 4, jobs: int = 2) -> dict:
    """The main job of `make demo`; returns the summary it also writes to `out_dir/summary.json`."""
    console = console or Console()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    summary["data"] = build_demo_data(store, n_symbols, seed, console)
    summarise_store(store, console)
    summary["health"] = health(store, console)
    summary["evaluation"] = evaluate_baselines(store, out_dir / "evaluate", console, jobs=jobs)
    summary["model"] = pretrain_and_forecast(store, out_dir, console, steps=pretrain_steps, origins=forecast_origins)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
