"""`quantlm evaluate`: the baselines and your signals through the same backtest, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantlm.cli.common import StoreOption, console, fail, store_from, user_errors

BASELINE_NAMES = ("benchmark", "momentum", "reversal", "lightgbm", "oracle")


class EvaluateError(ValueError):
    """A bad evaluate invocation or input (shown as a plain message)."""

    user_facing = True


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; raises EvaluateError on anything else."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise EvaluateError(f"--seeds must be comma-separated integers, got '{text}'") from None
    if not seeds:
        raise EvaluateError("--seeds must name at least one seed")
    return seeds


def register(app: typer.Typer) -> None:
    """Add `quantlm evaluate` to `app`."""

    @app.command("evaluate")
    @user_errors
    def evaluate(
        out: Annotated[Path, typer.Option("--out", help="Output folder (metrics.json, report.html, equity.csv, trades.csv).")],
        store: StoreOption = None,
        signals: Annotated[Path | None, typer.Option("--signals", help="Your Scores table (CSV/Parquet: symbol, ts, score).")] = None,
        market: Annotated[str | None, typer.Option("--market", help="cn, us or crypto (default: the store's).")] = None,
        freq: Annotated[str | None, typer.Option("--freq", help="Bar frequency: 1d, 1h, 30min, 15min, 5min or 1min (default: the store's only frequency, else 1d).")] = None,
        strategy: Annotated[str, typer.Option(
            "--strategy", help="topk, threshold, timing (each symbol alone, on causally z-scored scores) "
                               "or auto (timing under 10 symbols).")] = "topk",
        topk: Annotated[int, typer.Option("--topk", help="Stocks held by topk.")] = 50,
        n_drop: Annotated[int, typer.Option("--n-drop", help="Stocks swapped per session by topk.")] = 5,
        fill: Annotated[str, typer.Option("--fill", help="Fill price: open, close or vwap.")] = "open",
        costs: Annotated[bool, typer.Option("--costs/--no-costs", help="Charge commissions, taxes and impact.")] = True,
        cash: Annotated[float, typer.Option("--cash", help="Starting cash, currency.")] = 1_000_000.0,
        walk_forward_mode: Annotated[str, typer.Option("--walk-forward", help="rolling or expanding training window.")] = "expanding",
        train_years: Annotated[float, typer.Option("--train-years", help="Training window, years.")] = 3.0,
        test_months: Annotated[int, typer.Option("--test-months", help="Test window per fold, months.")] = 6,
        seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds for LightGBM.")] = "0",
        jobs: Annotated[int, typer.Option("--jobs", help="Worker processes for the walk-forward folds.")] = 1,
        gates_file: Annotated[Path | None, typer.Option("--gates", help="YAML file of gate thresholds.")] = None,
        baselines: Annotated[str, typer.Option("--baselines", help="Comma-separated subset of " + ",".join(BASELINE_NAMES) + ".")] = ",".join(BASELINE_NAMES),
        num_boost_round: Annotated[int, typer.Option("--num-boost-round", help="LightGBM trees.")] = 200,
        hedge: Annotated[str, typer.Option("--hedge", help="Book deployed and gated: none (long-only topk), benchmark "
                                           "(long the picks, short a future on the benchmark) or long_short (us/crypto). "
                                           "The report shows the long-only and the hedged book.")] = "none",
        hedge_config: Annotated[Path | None, typer.Option("--hedge-config", help="YAML mapping of HedgeConfig settings "
                                                          "over the market's preset (quantlm.backtest.hedge).")] = None,
    ) -> None:
        """Run the baselines (benchmark, momentum-20, reversal-5, LightGBM on Alpha158 walk-forward, oracle)
        and your --signals through the same backtest over the walk-forward test periods, and write a
        comparison: metrics.json (a `runs` map), report.html (baselines side by side), equity.csv, trades.csv."""
        from quantlm.baselines.compare import EvaluateOptions, run_evaluation

        wanted = [b.strip() for b in baselines.split(",") if b.strip()]
        unknown = [b for b in wanted if b not in BASELINE_NAMES]
        if unknown:
            fail(f"unknown baseline(s) {', '.join(unknown)} (choose from {', '.join(BASELINE_NAMES)})")
        if strategy == "weights":
            fail("evaluate compares Scores tables: use --strategy topk or threshold ('quantlm backtest' runs weights)")
        if walk_forward_mode not in ("rolling", "expanding"):
            fail(f"--walk-forward must be rolling or expanding, got '{walk_forward_mode}'")
        opts = EvaluateOptions(market=market, freq=freq, strategy=strategy, topk=topk, n_drop=n_drop, fill=fill, costs=costs,
                               cash=cash, mode=walk_forward_mode, train_years=train_years, test_months=test_months,
                               seeds=parse_seeds(seeds), jobs=jobs, gates_file=gates_file, baselines=wanted,
                               num_boost_round=num_boost_round, hedge=hedge, hedge_settings=_hedge_mapping(hedge_config))
        summary = run_evaluation(store_from(store), out, opts, signals_path=signals)
        _print_summary(summary)


def _hedge_mapping(path: Path | None) -> dict | None:
    """The settings mapping of a --hedge-config YAML file (optionally under a top-level `hedge:` key)."""
    if path is None:
        return None
    from quantlm.backtest.hedge import HedgeConfigError
    from quantlm.config import read_yaml_mapping

    data = read_yaml_mapping(path, HedgeConfigError, what="hedge config") or {}
    return data.get("hedge", data) if set(data) == {"hedge"} else data


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    from quantlm.backtest.report import fmt

    book = summary.get("book", "long_only")
    table = Table(title=f"evaluation {summary['period']} (primary: {summary['primary']}; gates judge the {book} book)")
    columns = {"annual_return": "ann.ret", "annual_excess_return": "excess", "sharpe": "Sharpe",
               "max_drawdown": "maxDD", "rank_ic": "rankIC"}
    keys = list(columns)
    table.add_column("run", no_wrap=True)
    for k in keys:
        table.add_column(columns[k], justify="right", no_wrap=True)
    table.add_column("book", no_wrap=True, min_width=6)
    table.add_column("gates", justify="right")
    for name, run in summary["runs"].items():
        passed = sum(g["passed"] for g in run["gates"].values())
        books = run.get("books") or {"long_only": run["metrics"]}
        for i, (b, m) in enumerate(books.items()):
            gated = b == list(books)[-1]
            label = {"long_only": "long", "long_short": "l/s"}.get(b, b)
            table.add_row(name if i == 0 else "", *[fmt(k, m.get(k)) for k in keys], label,
                          f"{passed}/{len(run['gates'])}" if gated else "")
    console.print(table)
    console.print(f"wrote {summary['out']}")
