"""`quantlm backtest`: run a signals file through the market-rule-aware backtester."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantlm.cli.common import StoreOption, console, fail, note, store_from, user_errors, warn


def register(app: typer.Typer) -> None:
    """Add `backtest` to `app`."""

    @app.command("backtest")
    @user_errors
    def backtest(
        signals: Annotated[Path, typer.Option("--signals", help="Signals file (CSV or Parquet): symbol, ts, score (or weight); "
                                              "ts as YYYY-MM-DD[ HH:MM], YYYYMMDD or YYYY/MM/DD, zone-aware stamps "
                                              "converted to the market's local time.")],
        out: Annotated[Path, typer.Option("--out", help="Output folder: metrics.json, equity.csv, trades.csv, report.html.")],
        store: StoreOption = None,
        market: Annotated[str | None, typer.Option("--market", help="cn | us | crypto (default: the store's market, else cn).")] = None,
        strategy: Annotated[str, typer.Option("--strategy", help="topk | threshold | weights.")] = "topk",
        topk: Annotated[int, typer.Option("--topk", help="TopkDropout: names held.")] = 50,
        n_drop: Annotated[int, typer.Option("--n-drop", help="TopkDropout: names replaced per session at most.")] = 5,
        hold_thresh: Annotated[int, typer.Option("--hold-thresh", help="TopkDropout: sessions held before a sale.")] = 1,
        long_threshold: Annotated[float, typer.Option("--long-threshold", help="threshold: long when score > this.")] = 0.0,
        short_threshold: Annotated[float | None, typer.Option("--short-threshold", help="threshold: short when score < this (if shorting is allowed).")] = None,
        fill: Annotated[str, typer.Option("--fill", help="Fill price on the next bar: open | close | vwap.")] = "open",
        benchmark: Annotated[str | None, typer.Option("--benchmark", help="Benchmark symbol (default: the store's meta 'benchmark').")] = None,
        cash: Annotated[float, typer.Option("--cash", help="Initial cash, currency units.")] = 1_000_000.0,
        no_costs: Annotated[bool, typer.Option("--no-costs", help="Zero every cost, fee, slippage and impact.")] = False,
        participation: Annotated[float, typer.Option("--participation", help="Max fraction of a bar's volume per order (0 = no cap).")] = 0.1,
        allow_short: Annotated[bool | None, typer.Option("--allow-short/--no-short", help="Override the market's shorting rule.")] = None,
        leverage: Annotated[float, typer.Option("--leverage", help="Max gross exposure / equity.")] = 1.0,
        start: Annotated[str | None, typer.Option("--start", help="First session (inclusive).")] = None,
        end: Annotated[str | None, typer.Option("--end", help="Last session (inclusive).")] = None,
        freq: Annotated[str | None, typer.Option("--freq", help="Bar frequency to read from the store (default: the "
                                                 "only one stored for the signals' symbols; with several, intraday when "
                                                 "the signals carry times of day, else 1d).")] = None,
        corporate_actions: Annotated[str, typer.Option("--corporate-actions", help="How adj_factor steps reach "
                                                       "holdings: cash (bonus shares as shares, dividends as cash), "
                                                       "reinvest (all as shares) or off (raw shares).")] = "cash",
        hedge: Annotated[str, typer.Option("--hedge", help="none | benchmark (long the picks, short a future on the "
                                           "benchmark; gates judge the hedged book) | long_short (us/crypto: long "
                                           "the top k, short the bottom k, dollar neutral).")] = "none",
        hedge_config: Annotated[Path | None, typer.Option("--hedge-config", help="YAML mapping of HedgeConfig settings "
                                                          "(ratio, commission, margin_rate, cash_rate, roll_months, "
                                                          "roll_cost, basis, sweep_cost) over the market's preset.")] = None,
        hedge_ratio: Annotated[float | None, typer.Option("--hedge-ratio", help="Short notional / long stock value (default 1).")] = None,
        hedge_basis: Annotated[float | None, typer.Option("--hedge-basis", help="Annual carry the short future pays (e.g. 0.08 for IC-style discounts).")] = None,
    ) -> None:
        """Backtest a signals file with market rules (lots, T+1, price limits, suspensions) and costs.

        The score at session t is traded on session t+1 (at its open by default). A signal stamped
        at or after session t's time (e.g. 15:00 for a daily session) and before t+1 counts for t.
        """
        from quantlm.backtest.engine import BacktestConfig, load_from_store, run_backtest
        from quantlm.backtest.signals import read_signals

        st = store_from(store)
        if not st.exists():
            fail(f"no quantlm store at {st.root} (create one with 'quantlm data import' or 'quantlm data synth')")
        meta = st.meta()
        config = BacktestConfig(
            market=config_market(market, meta), strategy=strategy, topk=topk, n_drop=n_drop,
            hold_thresh=hold_thresh, long_threshold=long_threshold, short_threshold=short_threshold, cash=cash,
            fill=fill, costs=not no_costs, participation=participation, benchmark=benchmark, start=start, end=end,
            allow_short=allow_short, leverage=leverage, freq=freq, corporate_actions=corporate_actions, hedge=hedge,
            hedge_settings=(hedge_settings(config_market(market, meta), hedge_config, hedge_ratio, hedge_basis)
                            if hedge == "benchmark" else None))
        config.validate()
        scores = read_signals(signals, market=config.market)
        inputs = load_from_store(scores, st, config)
        result = run_backtest(scores, config=config, **inputs)
        for w in result.warnings:
            warn(w)
        written = _write(result, out, scores, inputs["bars"], inputs["benchmark_bars"])
        books = written.get("books", {})
        trades = result.trades
        n_rej = int((trades["status"] == "rejected").sum()) if len(trades) else 0
        n_days = len(result.equity.index.normalize().unique())
        bars_note = f" ({len(result.equity):,} {config.freq} bars)" if config.freq not in (None, "1d") else ""
        console.print(f"backtest {config.market}/{config.strategy}: {n_days} sessions{bars_note}, "
                      f"{len(trades) - n_rej} fills, {n_rej} rejections; final equity {result.equity.iloc[-1]:,.2f}")
        for book, metrics in books.items():
            gated = " (gated)" if book == written.get("book") else ""
            if len(books) > 1:
                console.print(f" {book} book{gated}:")
            for key in ("annual_return", "sharpe", "max_drawdown", "annual_excess_return", "information_ratio"):
                if key in metrics and metrics[key] is not None:
                    console.print(f"  {key}: {metrics[key]:.4f}")
        for text in written.get("notes", []):
            note(text)
        console.print(f"wrote {out}")


def config_market(market: str | None, meta: dict) -> str:
    """The market a command runs on: --market, else the store's, else cn."""
    return market or meta.get("market") or "cn"


def hedge_settings(market: str, path: Path | None, ratio: float | None, basis: float | None):
    """The HedgeConfig of --hedge-config (YAML over the market preset) and --hedge-ratio / --hedge-basis."""
    from quantlm.backtest.hedge import HedgeConfig, HedgeConfigError
    from quantlm.config import read_yaml_mapping

    data = read_yaml_mapping(path, HedgeConfigError, what="hedge config") if path is not None else {}
    data = data.get("hedge", data) if isinstance(data, dict) and set(data) == {"hedge"} else data
    overrides = {k: v for k, v in (("ratio", ratio), ("basis", basis)) if v is not None}
    return HedgeConfig.from_mapping({**(data or {}), **overrides}, market=market, source=str(path or "--hedge-*"))


def _write(result, out: Path, scores, bars, benchmark_bars=None) -> dict:
    """Write metrics.json, equity.csv, trades.csv and report.html via quantlm.backtest.outputs; labels
    for IC follow the config's fill. Returns write_outputs' dict (metrics, books, notes, ...)."""
    from quantlm.backtest.outputs import write_outputs

    written = write_outputs(result, out, scores=scores, bars=bars, fill=result.config.fill,
                            benchmark_bars=benchmark_bars)
    return written if isinstance(written, dict) else {}
