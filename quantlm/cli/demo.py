"""`quantlm demo`: the main job that `make demo` runs on the embedded data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from quantlm.cli.common import StoreOption, console, store_from, user_errors


def register(app: typer.Typer) -> None:
    """Add `quantlm demo` to `app`."""

    @app.command()
    @user_errors
    def demo(
        store: StoreOption = None,
        out: Annotated[Path, typer.Option(help="Run directory for reports.")] = Path("runs/demo"),
        symbols: Annotated[int, typer.Option(help="Synthetic stocks to generate.")] = 200,
        seed: Annotated[int, typer.Option(help="Seed of the synthetic market.")] = 0,
    ) -> None:
        """Build the synthetic A-share market, import the S&P 500 sample, check health, summarise."""
        from quantlm.workflow.demo import run_demo

        t0 = time.perf_counter()
        run_demo(store_from(store), out_dir=out, n_symbols=symbols, seed=seed, console=console)
        console.print(f"[bold green]demo finished[/] in {time.perf_counter() - t0:.1f} s; outputs in {out}")
