"""Walk-forward evaluation: retrain per fold, score the next period, backtest it; many seeds.

Folds are laid on the dataset's session calendar (its dates). Fold k trains on bars in
[train_start_k, train_end_k] and is tested on [test_start_k, test_end_k]:

- expanding: train_start is the first session for every fold; rolling: train_start is
  `train_years` before test_start.
- test windows are `test_months` long and start `step_months` (default: test_months) apart, so by
  default the test periods tile the sample without overlap.
- embargo: `embargo_sessions` sessions (default 2 = lag + horizon of the evaluation label
  open(t+2)/open(t+1) - 1) lie between train_end and test_start and belong to neither.
  The model only ever sees bars up to train_end, so every training label ends by train_end (labels
  that need later bars are NaN and dropped) and no training label overlaps the test period.
- intraday calendars (several time stamps per date): folds split on **dates**, so a day is never
  split between training, embargo and test; a fold's bounds are the first bar of its first date
  and the last bar of its last date. The embargo must cover `embargo_bars` bars (default
  `embargo_sessions` = 2, the label's lag + horizon counted in bars: entry at bar t+1, exit at
  t+2) and is rounded up to whole sessions (one day for any intraday frequency with >= 2 bars a
  day). `min_test_sessions` counts dates; `lookback_sessions` counts bars of the calendar.

`model_fn(train_bars, seed) -> scorer` trains a model; `scorer(bars) -> Scores` must be causal. The
scorer gets bars from `lookback_sessions` before test_start up to test_end (the history its
features need); scores are kept for the test sessions only and backtested with
`quantlm.backtest.engine.run_backtest` on [test_start, test_end].

Parallelism: each fold (with all its seeds) is an independent task. n_jobs=1 runs them inline; n_jobs > 1 uses
a ProcessPoolExecutor with the "spawn" start method (safe with threaded libraries such as
LightGBM and numba), so model_fn must be picklable: a module-level function or a
functools.partial of one. Results do not depend on n_jobs.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd


class WalkForwardError(ValueError):
    """Folds or settings that cannot work (shown to CLI users as a plain message)."""

    user_facing = True


ModelFn = Callable[[pd.DataFrame, int], Callable[[pd.DataFrame], pd.DataFrame]]


@dataclass(frozen=True)
class Fold:
    """One train/test split; bounds are inclusive time stamps of the calendar (sessions for daily data;
    for intraday data the first bar of train_start's / test_start's date and the last bar of
    train_end's / test_end's date)."""

    index: int
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp


@dataclass(frozen=True)
class WalkForwardConfig:
    """How to lay folds on the calendar (see the module docstring)."""

    mode: Literal["rolling", "expanding"] = "expanding"
    train_years: float = 3.0
    test_months: int = 6
    step_months: int | None = None
    embargo_sessions: int = 2  # sessions between train_end and test_start (daily calendars)
    min_test_sessions: int = 5  # dates
    embargo_bars: int | None = None  # intraday: bars the embargo must cover (None = embargo_sessions)


def _embargo_days(bars_per_day: np.ndarray, i_test: int, config: WalkForwardConfig, intraday: bool) -> int:
    """Whole sessions before session i_test that the embargo takes (see the module docstring)."""
    if not intraday:
        return config.embargo_sessions
    need = config.embargo_sessions if config.embargo_bars is None else config.embargo_bars
    k = covered = 0
    while covered < need and i_test - k - 1 >= 0:
        k += 1
        covered += int(bars_per_day[i_test - k])
    return k


def make_folds(calendar: Sequence | pd.DatetimeIndex, config: WalkForwardConfig) -> list[Fold]:
    """Folds over `calendar` (time stamps: sessions, or intraday bars). Raises ValueError if none fits."""
    if config.mode not in ("rolling", "expanding"):
        raise WalkForwardError(f"mode must be 'rolling' or 'expanding', got '{config.mode}'")
    if config.train_years <= 0 or config.test_months < 1:
        raise WalkForwardError("train_years must be > 0 and test_months >= 1")
    if config.embargo_sessions < 0 or (config.embargo_bars is not None and config.embargo_bars < 0):
        raise WalkForwardError("embargo_sessions and embargo_bars must be >= 0")
    stamps = pd.DatetimeIndex(np.unique(pd.DatetimeIndex(calendar)))
    if len(stamps) == 0:
        raise WalkForwardError("empty calendar: no sessions to split")
    days_of_stamps = stamps.normalize()
    intraday = bool(days_of_stamps.has_duplicates)
    cal, bars_per_day = np.unique(days_of_stamps, return_counts=True) if intraday else (stamps, np.ones(len(stamps)))
    cal = pd.DatetimeIndex(cal)
    first_bar = stamps[np.r_[0, np.cumsum(bars_per_day)[:-1]].astype(int)] if intraday else cal
    last_bar = stamps[np.cumsum(bars_per_day).astype(int) - 1] if intraday else cal
    train_span = pd.DateOffset(months=max(1, round(config.train_years * 12)))
    step = pd.DateOffset(months=config.step_months or config.test_months)
    test_span = pd.DateOffset(months=config.test_months)
    folds: list[Fold] = []
    boundary = cal[0] + train_span
    while True:
        i_test = int(cal.searchsorted(boundary))
        if i_test >= len(cal):
            break
        i_end = min(int(cal.searchsorted(boundary + test_span)) - 1, len(cal) - 1)
        i_train_end = i_test - 1 - _embargo_days(bars_per_day, i_test, config, intraday)
        if i_train_end < 1:
            boundary = boundary + step
            continue
        i_train_start = 0 if config.mode == "expanding" else int(cal.searchsorted(boundary - train_span))
        if i_end - i_test + 1 >= config.min_test_sessions:
            folds.append(Fold(len(folds), first_bar[i_train_start], last_bar[i_train_end], first_bar[i_test],
                              last_bar[i_end]))
        boundary = boundary + step
    if not folds:
        raise WalkForwardError(
            f"no walk-forward fold fits {cal[0]:%Y-%m-%d}..{cal[-1]:%Y-%m-%d} with {config.train_years} training "
            f"years and {config.test_months} test months; shorten them or use more data"
        )
    return folds


@dataclass
class FoldRun:
    """The outcome of one (fold, seed): its out-of-sample scores, backtest and metrics."""

    fold: Fold
    seed: int
    scores: pd.DataFrame
    result: Any
    metrics: dict[str, float]


@dataclass
class WalkForwardResult:
    """Every (fold, seed) run plus per-run and aggregated metrics."""

    folds: list[Fold]
    seeds: list[int]
    runs: list[FoldRun] = field(default_factory=list)

    @property
    def table(self) -> pd.DataFrame:
        """One row per (fold, seed) with every metric."""
        rows = [{"fold": r.fold.index, "seed": r.seed, "test_start": r.fold.test_start, "test_end": r.fold.test_end,
                 **r.metrics} for r in self.runs]
        return pd.DataFrame(rows)

    @property
    def summary(self) -> pd.DataFrame:
        """Mean, std (ddof=1), min and max of each metric across all folds and seeds."""
        t = self.table.drop(columns=["fold", "seed", "test_start", "test_end"])
        return t.agg(["mean", "std", "min", "max"]).T

    def scores(self, seed: int | None = None) -> pd.DataFrame:
        """Out-of-sample scores of one seed (default: the first), all folds concatenated."""
        seed = self.seeds[0] if seed is None else seed
        parts = [r.scores for r in self.runs if r.seed == seed]
        return pd.concat(parts, ignore_index=True).sort_values(["symbol", "ts"]).reset_index(drop=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view: folds, seeds, per-run metrics and the summary."""
        return {
            "folds": [dataclasses.asdict(f) for f in self.folds],
            "seeds": list(self.seeds),
            "runs": self.table.to_dict(orient="records"),
            "summary": {m: row.to_dict() for m, row in self.summary.iterrows()},
        }


@dataclass(frozen=True)
class _Task:
    fold: Fold
    seeds: tuple[int, ...]
    model_fn: ModelFn
    train_bars: pd.DataFrame
    score_bars: pd.DataFrame
    labels: pd.DataFrame | None
    config: Any
    instruments: pd.DataFrame | None
    flags: pd.DataFrame | None
    benchmark_bars: pd.DataFrame | None


def _run_task(task: _Task) -> list[FoldRun]:
    """For each seed: train, score the test sessions, backtest them, compute metrics (runs in a worker).

    One task per fold keeps a fold's seeds in one process, so a model_fn may cache work that does
    not depend on the seed (e.g. factors of the same training bars).
    """
    from quantlm.backtest.engine import run_backtest
    from quantlm.backtest.metrics import compute_metrics

    fold = task.fold
    config = dataclasses.replace(task.config, start=fold.test_start, end=fold.test_end)
    runs = []
    for seed in task.seeds:
        scorer = task.model_fn(task.train_bars, seed)
        scores = scorer(task.score_bars)
        ts = pd.DatetimeIndex(scores["ts"])
        scores = scores[(ts >= fold.test_start) & (ts <= fold.test_end)].reset_index(drop=True)
        result = run_backtest(scores, task.score_bars, config, instruments=task.instruments, flags=task.flags,
                              benchmark_bars=task.benchmark_bars)
        metrics = compute_metrics(result, scores, task.labels, market=config.market)
        runs.append(FoldRun(fold, seed, scores, result, metrics))
    return runs


def walk_forward(bars: pd.DataFrame, model_fn: ModelFn, folds: list[Fold] | WalkForwardConfig,
                 seeds: Sequence[int] = (0,), n_jobs: int = 1, config: Any = None,
                 benchmark_bars: pd.DataFrame | None = None, instruments: pd.DataFrame | None = None,
                 flags: pd.DataFrame | None = None, lookback_sessions: int = 250,
                 labels: pd.DataFrame | None = None, executor: Any = None) -> WalkForwardResult:
    """Retrain per fold and seed, backtest each test period, and collect the metrics.

    bars: canonical bars of the tradable universe; folds: explicit folds or a WalkForwardConfig
    laid on the bars' calendar; seeds: one run per seed per fold; n_jobs: worker processes;
    config: a BacktestConfig (start/end are set per fold; default BacktestConfig());
    labels: evaluation labels for IC and accuracy (default forward_returns(bars)); executor: an object
    whose `map(fn, items)` runs the fold tasks in input order (`quantlm.workflow.executor`, e.g. Ray
    tasks) instead of n_jobs processes.
    """
    from quantlm.backtest.engine import BacktestConfig
    from quantlm.features.labels import forward_returns

    if n_jobs < 1:
        raise WalkForwardError(f"n_jobs must be >= 1, got {n_jobs}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise WalkForwardError("seeds must hold at least one seed")
    calendar = pd.DatetimeIndex(np.unique(pd.DatetimeIndex(bars["ts"])))
    fold_list = make_folds(calendar, folds) if isinstance(folds, WalkForwardConfig) else list(folds)
    config = config if config is not None else BacktestConfig()
    labels = labels if labels is not None else forward_returns(bars)
    ts = pd.DatetimeIndex(bars["ts"])
    tasks = []
    for fold in fold_list:
        lookback_start = calendar[max(0, int(calendar.searchsorted(fold.test_start)) - lookback_sessions)]
        train_bars = bars[(ts >= fold.train_start) & (ts <= fold.train_end)].reset_index(drop=True)
        score_bars = bars[(ts >= lookback_start) & (ts <= fold.test_end)].reset_index(drop=True)
        lt = pd.DatetimeIndex(labels["ts"])
        fold_labels = labels[(lt >= fold.test_start) & (lt <= fold.test_end)]
        bench = None
        if benchmark_bars is not None:
            bt = pd.DatetimeIndex(benchmark_bars["ts"])
            bench = benchmark_bars[(bt >= lookback_start) & (bt <= fold.test_end)].reset_index(drop=True)
        tasks.append(_Task(fold, tuple(seeds), model_fn, train_bars, score_bars, fold_labels, config, instruments,
                           flags, bench))
    if executor is not None:
        per_fold = executor.map(_run_task, tasks)
    elif n_jobs == 1 or len(tasks) == 1:
        per_fold = [_run_task(t) for t in tasks]
    else:
        try:
            pickle.dumps(model_fn)
        except Exception as e:
            raise ValueError(f"model_fn must be picklable for n_jobs > 1 (a module-level function): {e}") from e
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(n_jobs, len(tasks)), mp_context=context) as pool:
            per_fold = list(pool.map(_run_task, tasks))
    return WalkForwardResult(folds=fold_list, seeds=seeds, runs=[run for runs in per_fold for run in runs])


__all__ = ["WalkForwardError", "Fold", "WalkForwardConfig", "WalkForwardResult", "FoldRun", "make_folds", "walk_forward"]
