"""Evaluate the baselines and a user's signals through the same backtest, on the same periods.

`run_evaluation(store, out_dir, options, signals_path)` is what `quantlm evaluate` runs:

1. bars of the store's market; the benchmark symbol (store meta `benchmark`) and index-board
   instruments are kept out of the tradable universe and used as the benchmark;
2. walk-forward folds on the calendar (`quantlm.backtest.walkforward.make_folds`); the evaluation
   period is every test period together (first test_start to last test_end), so every run is
   judged out of sample on the same sessions;
3. runs: benchmark (buy and hold), momentum-20, reversal-5, LightGBM on Alpha158 retrained per fold
   and seed (the out-of-sample scores of the first seed are stitched into one run; per-fold,
   per-seed metrics and their mean/std go to metrics.json under `walk_forward`), the oracle when
   the store has one, and the user's signals;
4. each Scores run goes through `run_backtest` with the same BacktestConfig; outputs are written
   with `quantlm.backtest.outputs.write_outputs` (primary run: the signals if given, else LightGBM).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


class EvaluationError(ValueError):
    """A bad evaluate input (shown to CLI users as a plain message)."""

    user_facing = True


@dataclass
class EvaluateOptions:
    """Options of `quantlm evaluate` (see the CLI help for meanings and units)."""

    market: str | None = None
    strategy: str = "topk"
    topk: int = 50
    n_drop: int = 5
    fill: str = "open"
    costs: bool = True
    cash: float = 1_000_000.0
    mode: str = "expanding"
    train_years: float = 3.0
    test_months: int = 6
    seeds: list[int] = field(default_factory=lambda: [0])
    jobs: int = 1
    gates_file: Path | None = None
    baselines: list[str] = field(default_factory=lambda: ["benchmark", "momentum", "reversal", "lightgbm", "oracle"])
    num_boost_round: int = 200


def split_benchmark(bars: pd.DataFrame, benchmark: str | None, instruments: pd.DataFrame | None
                    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(tradable bars, benchmark bars or None): the benchmark and index-board symbols are not traded."""
    not_traded = {benchmark} if benchmark else set()
    if instruments is not None and len(instruments) and "board" in instruments.columns:
        not_traded |= set(instruments.loc[instruments["board"] == "index", "symbol"].astype(str))
    bench = bars[bars["symbol"] == benchmark].reset_index(drop=True) if benchmark else None
    if bench is not None and len(bench) == 0:
        bench = None
    return bars[~bars["symbol"].isin(not_traded)].reset_index(drop=True), bench


def run_evaluation(store, out_dir: str | Path, options: EvaluateOptions, signals_path: Path | None = None
                   ) -> dict[str, Any]:
    """Run every baseline and the signals, write the comparison to `out_dir`; returns a summary."""
    from quantlm.backtest.engine import BacktestConfig, run_backtest
    from quantlm.backtest.gates import Gates
    from quantlm.backtest.outputs import write_outputs
    from quantlm.backtest.walkforward import WalkForwardConfig, make_folds, walk_forward
    from quantlm.baselines.lgbm import lightgbm_model
    from quantlm.baselines.simple import benchmark as benchmark_run
    from quantlm.baselines.simple import momentum, oracle, reversal
    from quantlm.features.labels import forward_returns

    meta = store.meta()
    market = options.market or meta.get("market") or "cn"
    gates = Gates.from_yaml(options.gates_file) if options.gates_file is not None else Gates()
    signals = None
    if signals_path is not None:
        from quantlm.backtest.signals import read_signals

        signals = read_signals(Path(signals_path))
        if "score" not in signals.columns:
            raise EvaluationError(f"{signals_path}: evaluate needs a 'score' column (weights files go to 'quantlm backtest')")
    all_bars = store.bars(freq="1d", market=market)
    if len(all_bars) == 0:
        raise FileNotFoundError(f"store {store.root} holds no daily bars for market '{market}'")
    instruments = store.instruments()
    flags = store.flags()
    bars, bench_bars = split_benchmark(all_bars, meta.get("benchmark"), instruments)
    calendar = pd.DatetimeIndex(sorted(bars["ts"].unique()))
    wf_config = WalkForwardConfig(mode=options.mode, train_years=options.train_years, test_months=options.test_months)
    folds = make_folds(calendar, wf_config)
    start, end = folds[0].test_start, folds[-1].test_end
    config = BacktestConfig(market=market, strategy=options.strategy, topk=options.topk, n_drop=options.n_drop,
                            cash=options.cash, fill=options.fill, costs=options.costs,
                            benchmark=meta.get("benchmark") if bench_bars is not None else None, start=start, end=end)
    labels = forward_returns(bars)

    def in_period(scores: pd.DataFrame) -> pd.DataFrame:
        ts = pd.DatetimeIndex(scores["ts"])
        return scores[(ts >= start) & (ts <= end)].reset_index(drop=True)

    def backtest(scores: pd.DataFrame):
        return run_backtest(scores, bars, config, instruments=instruments, flags=flags, benchmark_bars=bench_bars)

    runs: dict[str, tuple[Any, pd.DataFrame | None]] = {}
    spread = None
    extra: dict[str, Any] = {"period": {"start": start, "end": end}, "market": market}
    if signals is not None:
        s = in_period(signals)
        if len(s) == 0:
            raise EvaluationError(f"{signals_path}: no scores between {start:%Y-%m-%d} and {end:%Y-%m-%d}")
        runs["signals"] = (backtest(s), s)
    if "lightgbm" in options.baselines:
        model_fn = functools.partial(lightgbm_model, num_boost_round=options.num_boost_round, num_threads=1)
        wf = walk_forward(bars, model_fn, folds, seeds=options.seeds, n_jobs=options.jobs, config=config,
                          benchmark_bars=bench_bars, instruments=instruments, flags=flags, labels=labels)
        s = in_period(wf.scores(options.seeds[0]))
        runs["lightgbm"] = (backtest(s), s)
        extra["walk_forward"] = {"mode": options.mode, "train_years": options.train_years,
                                 "test_months": options.test_months, **wf.to_dict()}
        spread = (f"LightGBM, {len(wf.folds)} {options.mode} folds x {len(wf.seeds)} seed(s), each fold's "
                  f"test period backtested on its own", wf.summary)
    if "momentum" in options.baselines:
        s = in_period(momentum(bars, 20))
        runs["momentum-20"] = (backtest(s), s)
    if "reversal" in options.baselines:
        s = in_period(reversal(bars, 5))
        runs["reversal-5"] = (backtest(s), s)
    if "oracle" in options.baselines and store.has_table("oracle"):
        s = in_period(oracle(store))
        runs["oracle"] = (backtest(s), s)
    if "benchmark" in options.baselines and bench_bars is not None:
        runs["benchmark"] = (benchmark_run(bench_bars, cash=options.cash, market=market, start=start, end=end), None)
    if not runs:
        raise EvaluationError("nothing to evaluate: give --signals or at least one baseline")
    primary = next(iter(runs))
    result, scores = runs[primary]
    others = {k: v for k, v in runs.items() if k != primary}
    written = write_outputs(result, out_dir, scores=scores, labels=labels, gates=gates, baselines=others,
                            name=primary, title=f"quantlm evaluation: {primary} vs baselines",
                            extra={"primary": primary, **extra}, walk_forward=spread)
    return {"primary": primary, "runs": written["runs"], "out": Path(out_dir),
            "period": f"{start:%Y-%m-%d}..{end:%Y-%m-%d}"}
