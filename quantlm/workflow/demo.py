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


def build_demo_data(store: Store, n_symbols: int, seed: int, console: Console) -> dict:
    """Generate the synthetic market (skipped when the store already holds the same one) and the S&P 500 sample."""
    from quantlm.data.samples import load_sp500_sample
    from quantlm.data.synth import SynthConfig, write_market

    config = SynthConfig(n_symbols=n_symbols, seed=seed)
    wanted = config.model_dump_json() if hasattr(config, "model_dump_json") else json.dumps(config.__dict__, default=str)
    if store.meta().get("synth_config") == wanted:
        console.print(f"synthetic market already in {store.root} (same config): reusing it")
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


def run_demo(store: Store, out_dir: Path, n_symbols: int = 200, seed: int = 0, console: Console | None = None) -> dict:
    """The main job of `make demo`; returns the summary it also writes to `out_dir/summary.json`."""
    console = console or Console()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    summary["data"] = build_demo_data(store, n_symbols, seed, console)
    summarise_store(store, console)
    summary["health"] = health(store, console)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
