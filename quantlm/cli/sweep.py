"""`quantlm sweep CONFIG --grid FILE`: variants of a run config, one comparison table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from quantlm.cli.common import StoreOption, console, store_from, user_errors


def register(app: typer.Typer) -> None:
    """Add `quantlm sweep` to `app`."""

    @app.command("sweep")
    @user_errors
    def sweep(
        config: Annotated[Path, typer.Argument(help="Run config (YAML) the variants start from.")],
        grid: Annotated[Path, typer.Option("--grid", help="Grid YAML: dotted config keys -> lists of values "
                                           "(e.g. sft.lr: [3e-4, 1e-3]); optional mode: product | zip.")],
        store: StoreOption = None,
        out: Annotated[Path | None, typer.Option("--out", help="Sweep folder (default: the config's run_dir + "
                                                 "'-sweep').")] = None,
        executor: Annotated[str, typer.Option("--executor", help="process: variants one after the other here; "
                                              "ray: one Ray task per variant.")] = "process",
        ray_address: Annotated[str | None, typer.Option("--ray-address", help="With --executor ray: the cluster "
                                                        "(auto, HOST:6379); default: a local Ray.")] = None,
    ) -> None:
        """Run every variant of CONFIG the grid gives (a `quantlm run` each, sharing one stage cache so
        unchanged stages run once) and write sweep.csv, sweep.json and sweep.html: per variant its grid
        values, primary run, RankIC / Sharpe / excess return (mean and std over seeds) and gates."""
        from rich.table import Table

        from quantlm.backtest.report import fmt
        from quantlm.workflow.executor import EXECUTORS
        from quantlm.workflow.sweep import METRICS, SweepError, run_sweep

        if executor not in EXECUTORS:
            raise SweepError(f"--executor: unknown executor '{executor}' (choose from {', '.join(EXECUTORS)})")
        t0 = time.perf_counter()
        res = run_sweep(config, grid, store_from(store), out=out, executor=executor, ray_address=ray_address,
                        console=console)
        table = Table(title=f"sweep of {config} ({res['mode']} of {grid})")
        for col in ["variant", *res["keys"], "primary", *METRICS, "gates", "status"]:
            table.add_column(col)
        for r in res["variants"]:
            values = [str(r.get(k)) for k in res["keys"]]
            if r["status"] == "ok":
                metrics = [fmt(m, r[m]) + (f" ± {fmt(m, r[f'{m}_std'])}" if r[f"{m}_std"] is not None else "")
                           for m in METRICS]
                table.add_row(r["variant"], *values, r["primary"], *metrics,
                              "all passed" if r["all_gates_passed"] else f"failed: {r['gates_failed']}", "ok")
            else:
                table.add_row(r["variant"], *values, "-", *["-"] * len(METRICS), "-", r["error"])
        console.print(table)
        folder = Path(res["out"])
        console.print(f"best RankIC: {res['best']}; table: {folder / 'sweep.csv'}, report: {folder / 'sweep.html'}")
        failed = [r["variant"] for r in res["variants"] if r["status"] != "ok"]
        console.print(f"[bold {'red' if failed else 'green'}]sweep finished[/] in {time.perf_counter() - t0:.1f} s"
                      + (f"; failed: {', '.join(failed)}" if failed else ""))
        if failed:
            raise typer.Exit(1)
