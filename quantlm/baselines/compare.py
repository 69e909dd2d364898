"""Evaluate the baselines, model runs and a user's signals through the same backtest, on the same periods.

`run_evaluation(store, out_dir, options, signals_path)` is what `quantlm evaluate` runs (and what
`quantlm run` calls with its models as `extra_scores`):

1. bars of the store's market at one frequency (`EvaluateOptions.freq`; default: the store's only
   frequency when it holds one, else 1d); the benchmark symbol (store meta `benchmark`) and
   index-board instruments are kept out of the tradable universe and used as the benchmark;
2. walk-forward folds on the calendar (`quantlm.backtest.walkforward.make_folds`; intraday folds
   split on dates, never inside a day); the evaluation period is every test period together
   (first test_start to last test_end), so every run is judged out of sample on the same sessions
   (`evaluation_setup`);
3. runs: benchmark (buy and hold), momentum-20, reversal-5 (windows in bars of the frequency: 20
   and 5 bars), LightGBM on Alpha158 (factors per bar, rolling windows in bars) retrained per fold
   and seed (the out-of-sample scores of the first seed are stitched into one run; per-fold,
   per-seed metrics and their mean/std go to metrics.json under `walk_forward`), the oracle when
   the store has one (`baseline_scores`; a `BaselineScores` computed earlier can be passed in), the
   user's signals, and `extra_scores` (model runs, optionally one Scores table per seed: the report
   shows the first seed, `seed_metrics` holds every seed's metrics);
4. each Scores run goes through `run_backtest` with the same BacktestConfig; outputs are written
   with `quantlm.backtest.outputs.write_outputs` (primary run: `primary` if given, else the signals,
   else the extra run with the best mean RankIC over seeds, else LightGBM).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
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
    freq: str | None = None  # bar frequency (1d, 1h, 30min, ...); None = the store's only one, else 1d
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
    hedge: str = "none"  # none | benchmark | long_short: the book deployed and gated (quantlm.backtest.hedge)
    hedge_settings: dict[str, Any] | None = None  # HedgeConfig settings over the market's preset (hedge benchmark)


@dataclass
class EvaluationSetup:
    """What every run of one evaluation shares: market, bars, benchmark, folds, period, backtest config."""

    market: str
    bars: pd.DataFrame  # tradable bars (benchmark and index symbols removed)
    bench_bars: pd.DataFrame | None
    instruments: pd.DataFrame
    flags: pd.DataFrame
    folds: list  # list[quantlm.backtest.walkforward.Fold]
    start: pd.Timestamp  # first test session
    end: pd.Timestamp  # last test session
    config: Any  # BacktestConfig over [start, end]
    labels: pd.DataFrame  # evaluation labels of the tradable bars under the config's fill (evaluation_labels)
    freq: str = "1d"  # bar frequency of `bars`
    timing: bool = False  # strategy "timing": scores are causally z-scored per symbol (backtest.timing)

    def in_period(self, scores: pd.DataFrame) -> pd.DataFrame:
        """The rows of a Scores table with start <= ts <= end."""
        ts = pd.DatetimeIndex(scores["ts"])
        return scores[(ts >= self.start) & (ts <= self.end)].reset_index(drop=True)

    def backtest(self, scores: pd.DataFrame):
        """run_backtest of `scores` with the shared config, instruments, flags and benchmark."""
        from quantlm.backtest.engine import run_backtest

        if self.timing:
            from quantlm.backtest.timing import causal_zscore

            scores = causal_zscore(scores)
        return run_backtest(scores, self.bars, self.config, instruments=self.instruments, flags=self.flags,
                            benchmark_bars=self.bench_bars)


@dataclass
class BaselineScores:
    """The Scores tables of the baselines (restricted to the evaluation period), computed once.

    scores: {run name: Scores}; seed_scores: {run name: {seed: Scores}} for seeded baselines
    (LightGBM); walk_forward: LightGBM's walk-forward dict for metrics.json; wf_summary: its
    mean/std/min/max table for the report.
    """

    scores: dict[str, pd.DataFrame] = field(default_factory=dict)
    seed_scores: dict[str, dict[int, pd.DataFrame]] = field(default_factory=dict)
    walk_forward: dict[str, Any] | None = None
    wf_summary: pd.DataFrame | None = None
    wf_caption: str = ""

    def save(self, directory: str | Path) -> None:
        """Write scores as Parquet and the walk-forward data as JSON / CSV into `directory`."""
        from quantlm.backtest.outputs import to_jsonable

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        index = {"scores": list(self.scores), "seed_scores": {k: list(v) for k, v in self.seed_scores.items()},
                 "wf_caption": self.wf_caption}
        for name, df in self.scores.items():
            df.to_parquet(d / f"scores.{name}.parquet", index=False)
        for name, by_seed in self.seed_scores.items():
            for seed, df in by_seed.items():
                df.to_parquet(d / f"seed_scores.{name}.{seed}.parquet", index=False)
        if self.walk_forward is not None:
            (d / "walk_forward.json").write_text(json.dumps(to_jsonable(self.walk_forward), allow_nan=False))
        if self.wf_summary is not None:
            self.wf_summary.to_csv(d / "walk_forward_summary.csv")
        (d / "baselines.json").write_text(json.dumps(index, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> BaselineScores:
        """Read what `save` wrote."""
        d = Path(directory)
        index = json.loads((d / "baselines.json").read_text())
        out = cls(wf_caption=index.get("wf_caption", ""))
        for name in index["scores"]:
            out.scores[name] = pd.read_parquet(d / f"scores.{name}.parquet")
        for name, seeds in index["seed_scores"].items():
            out.seed_scores[name] = {int(s): pd.read_parquet(d / f"seed_scores.{name}.{s}.parquet") for s in seeds}
        if (d / "walk_forward.json").exists():
            out.walk_forward = json.loads((d / "walk_forward.json").read_text())
        if (d / "walk_forward_summary.csv").exists():
            out.wf_summary = pd.read_csv(d / "walk_forward_summary.csv", index_col=0)
        return out


def split_benchmark(bars: pd.DataFrame, benchmark: str | None, instruments: pd.DataFrame | None
                    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(tradable bars, benchmark bars or None): the benchmark and index symbols are not traded.

    An index is a symbol whose instruments row says board=index or, without a board, whose code is an
    index code (000xxx.SH, 399xxx.SZ: `rules.board_from_code`)."""
    from quantlm.backtest.rules import symbol_boards

    not_traded = {benchmark} if benchmark else set()
    symbols = [str(s) for s in pd.unique(bars["symbol"])]
    not_traded |= {s for s, b in zip(symbols, symbol_boards(symbols, instruments)) if b == "index"}
    bench = bars[bars["symbol"] == benchmark].reset_index(drop=True) if benchmark else None
    if bench is not None and len(bench) == 0:
        bench = None
    return bars[~bars["symbol"].isin(not_traded)].reset_index(drop=True), bench


def evaluation_freq(store, options: EvaluateOptions) -> str:
    """options.freq, else the store's only bar frequency when it holds exactly one, else 1d."""
    if options.freq:
        return options.freq
    freqs = store.freqs()
    return freqs[0] if len(freqs) == 1 else "1d"


def evaluation_setup(store, options: EvaluateOptions) -> EvaluationSetup:
    """Bars, benchmark, walk-forward folds and the shared backtest config of an evaluation."""
    from quantlm.backtest.engine import BacktestConfig
    from quantlm.backtest.walkforward import WalkForwardConfig, make_folds
    from quantlm.features.labels import evaluation_labels

    meta = store.meta()
    market = options.market or meta.get("market") or "cn"
    freq = evaluation_freq(store, options)
    all_bars = store.bars(freq=freq, market=market)
    if len(all_bars) == 0:
        held = ", ".join(store.freqs()) or "none"
        raise FileNotFoundError(f"store {store.root} holds no {freq} bars for market '{market}' "
                                f"(frequencies in the store: {held}; choose one with --freq)")
    instruments = store.instruments()
    flags = store.flags()
    bars, bench_bars = split_benchmark(all_bars, meta.get("benchmark"), instruments)
    calendar = pd.DatetimeIndex(sorted(bars["ts"].unique()))
    wf_config = WalkForwardConfig(mode=options.mode, train_years=options.train_years, test_months=options.test_months)
    folds = make_folds(calendar, wf_config)
    start, end = folds[0].test_start, folds[-1].test_end
    from quantlm.backtest.hedge import HedgeConfig

    settings = (HedgeConfig.from_mapping(options.hedge_settings, market=market, source="hedge settings")
                if options.hedge == "benchmark" else None)
    from quantlm.backtest.timing import resolve_strategy

    strategy = resolve_strategy(options.strategy, int(bars["symbol"].nunique()))
    config = BacktestConfig(market=market, strategy="threshold" if strategy == "timing" else strategy,
                            topk=options.topk, n_drop=options.n_drop,
                            cash=options.cash, fill=options.fill, costs=options.costs,
                            benchmark=meta.get("benchmark") if bench_bars is not None else None, start=start, end=end,
                            hedge=options.hedge, hedge_settings=settings)
    config.validate()
    return EvaluationSetup(market, bars, bench_bars, instruments, flags, folds, start, end, config,
                           evaluation_labels(bars, options.fill), freq, timing=strategy == "timing")


def baseline_scores(store, setup: EvaluationSetup, options: EvaluateOptions, executor=None) -> BaselineScores:
    """Scores of the Scores-table baselines in `options.baselines` (LightGBM walk-forward, momentum-20,
    reversal-5, the oracle when the store has one), each restricted to the evaluation period.

    executor: where the LightGBM folds run, one unit per fold with all its seeds
    (`quantlm.workflow.executor`; default `ProcessExecutor(options.jobs)`: inline for 1 job, else
    spawned processes; a `RayExecutor` runs them as Ray tasks). Results do not depend on it."""
    from quantlm.backtest.walkforward import walk_forward
    from quantlm.baselines.lgbm import lightgbm_model
    from quantlm.baselines.simple import momentum, oracle, reversal
    from quantlm.workflow.executor import ProcessExecutor

    out = BaselineScores()
    if "lightgbm" in options.baselines:
        model_fn = functools.partial(lightgbm_model, num_boost_round=options.num_boost_round, num_threads=1)
        wf = walk_forward(setup.bars, model_fn, setup.folds, seeds=options.seeds, config=setup.config,
                          benchmark_bars=setup.bench_bars, instruments=setup.instruments, flags=setup.flags,
                          labels=setup.labels, executor=executor or ProcessExecutor(options.jobs))
        out.scores["lightgbm"] = setup.in_period(wf.scores(options.seeds[0]))
        if len(options.seeds) > 1:
            out.seed_scores["lightgbm"] = {s: setup.in_period(wf.scores(s)) for s in options.seeds}
        out.walk_forward = {"mode": options.mode, "train_years": options.train_years,
                            "test_months": options.test_months, **wf.to_dict()}
        out.wf_summary = wf.summary
        out.wf_caption = (f"LightGBM, {len(wf.folds)} {options.mode} folds x {len(wf.seeds)} seed(s), each fold's "
                          "test period backtested on its own")
    if "momentum" in options.baselines:
        out.scores["momentum-20"] = setup.in_period(momentum(setup.bars, 20))
    if "reversal" in options.baselines:
        out.scores["reversal-5"] = setup.in_period(reversal(setup.bars, 5))
    if "oracle" in options.baselines and store.has_table("oracle"):
        out.scores["oracle"] = setup.in_period(oracle(store))
    return out


# runs that lead the report only when named: a stack needs every input (LightGBM too) at decision time
NOT_PRIMARY_BY_DEFAULT = ("stack",)


def _rank_ic_mean(metrics: list[dict[str, float]]) -> float:
    vals = [m.get("rank_ic") for m in metrics]
    vals = [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else -math.inf


def run_evaluation(store, out_dir: str | Path, options: EvaluateOptions, signals_path: Path | None = None,
                   extra_scores: Mapping[str, pd.DataFrame | Mapping[int, pd.DataFrame]] | None = None,
                   primary: str | None = None, baselines: BaselineScores | None = None, gates=None,
                   title: str | None = None, setup: EvaluationSetup | None = None, executor=None,
                   not_primary: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run every baseline, the signals and the extra runs; write the comparison to `out_dir`.

    extra_scores: {run name: Scores or {seed: Scores}} (e.g. trained models) backtested exactly like
    the baselines; primary: the run that leads the report and whose gates count (default: see the
    module docstring); baselines: precomputed `baseline_scores` (skips recomputing them); gates: a
    Gates object (default: options.gates_file or the default gates); title: the report's title;
    executor: where the LightGBM folds run when the baselines are computed here (see `baseline_scores`);
    not_primary: extra runs never chosen as the default primary (e.g. an RL run that was not promoted).
    Returns {"primary", "runs" (write_outputs' per-run metrics, book, books and gates), "seed_metrics"
    ({run: {seed: metrics of the deployed book}} for runs given per seed), "seed_books" ({run: {seed:
    {book: metrics}}}: long-only and hedged), "book" (the book gates judge:
    long_only, hedged or long_short), "out", "period"}.
    """
    from quantlm.backtest.gates import Gates
    from quantlm.backtest.outputs import benchmark_label_series, book_metrics, write_outputs
    from quantlm.baselines.simple import benchmark as benchmark_run

    if gates is None:
        gates = Gates.from_yaml(options.gates_file) if options.gates_file is not None else Gates()
    signals = None
    if signals_path is not None:
        from quantlm.backtest.signals import read_signals

        signals = read_signals(Path(signals_path), market=options.market or store.meta().get("market") or "cn")
        if "score" not in signals.columns:
            raise EvaluationError(f"{signals_path}: evaluate needs a 'score' column (weights files go to 'quantlm backtest')")
    setup = setup if setup is not None else evaluation_setup(store, options)
    start, end = setup.start, setup.end
    base = baselines if baselines is not None else baseline_scores(store, setup, options, executor=executor)

    runs: dict[str, tuple[Any, pd.DataFrame | None]] = {}
    seed_metrics: dict[str, dict[int, dict[str, float]]] = {}
    seed_books: dict[str, dict[int, dict[str, dict[str, float]]]] = {}  # run -> seed -> book -> metrics
    extra: dict[str, Any] = {"period": {"start": start, "end": end}, "market": setup.market, "freq": setup.freq}

    def add_seeded(name: str, by_seed: Mapping[int, pd.DataFrame]) -> None:
        first = None
        seed_metrics[name], seed_books[name] = {}, {}
        for seed, df in by_seed.items():
            s = setup.in_period(df)
            if len(s) == 0:
                raise EvaluationError(f"run {name} (seed {seed}): no scores between {start:%Y-%m-%d} and {end:%Y-%m-%d}")
            result = setup.backtest(s)
            bench_labels = benchmark_label_series(result, setup.bench_bars, setup.config.fill)
            books = book_metrics(result, s, setup.labels, setup.market, bench_labels)
            seed_metrics[name][int(seed)], seed_books[name][int(seed)] = books["metrics"], books["books"]
            if first is None:
                first = (result, s)
        runs[name] = first

    if signals is not None:
        s = setup.in_period(signals)
        if len(s) == 0:
            raise EvaluationError(f"{signals_path}: no scores between {start:%Y-%m-%d} and {end:%Y-%m-%d}")
        runs["signals"] = (setup.backtest(s), s)
    for name, value in (extra_scores or {}).items():
        add_seeded(name, value if isinstance(value, Mapping) else {0: value})
    for name, s in base.scores.items():
        if name in base.seed_scores:
            add_seeded(name, base.seed_scores[name])
        else:
            runs[name] = (setup.backtest(s), s)
    if base.walk_forward is not None:
        extra["walk_forward"] = base.walk_forward
    spread = (base.wf_caption, base.wf_summary) if base.wf_summary is not None else None
    if "benchmark" in options.baselines and setup.bench_bars is not None:
        runs["benchmark"] = (benchmark_run(setup.bench_bars, cash=options.cash, market=setup.market, start=start,
                                           end=end), None)
    if not runs:
        raise EvaluationError("nothing to evaluate: give --signals or at least one baseline")
    if primary is not None and primary not in runs:
        raise EvaluationError(f"primary run '{primary}' is not among the runs: {', '.join(runs)}")
    if primary is None:
        if signals is not None:
            primary = "signals"
        elif [n for n in (extra_scores or {}) if n not in (*NOT_PRIMARY_BY_DEFAULT, *not_primary)]:
            primary = max((n for n in extra_scores if n not in (*NOT_PRIMARY_BY_DEFAULT, *not_primary)),
                          key=lambda n: _rank_ic_mean(list(seed_metrics[n].values())))
        else:
            primary = next(iter(runs))
    result, scores = runs[primary]
    others = {k: v for k, v in runs.items() if k != primary}
    written = write_outputs(result, out_dir, scores=scores, labels=setup.labels, gates=gates, baselines=others,
                            name=primary, title=title or f"quantlm evaluation: {primary} vs baselines",
                            extra={"primary": primary, **extra, "seed_metrics": seed_metrics, "seed_books": seed_books},
                            walk_forward=spread,
                            benchmark_bars=setup.bench_bars)
    return {"primary": primary, "runs": written["runs"], "seed_metrics": seed_metrics, "seed_books": seed_books,
            "book": written["book"],
            "out": Path(out_dir),
            "period": f"{start:%Y-%m-%d}..{end:%Y-%m-%d}"}
