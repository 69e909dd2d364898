"""Performance and prediction metrics of a backtest, with every definition stated.

Conventions
-----------
- Returns are **simple** daily returns, as fractions (0.01 = 1%), one per session (trading day).
  Daily bars: r_t = equity_t / equity_{t-1} - 1, the first session against the starting cash
  (`BacktestResult.returns()`).
- Intraday bars (several time stamps per date in `equity.index`; `ts` is exchange-local, bars are
  labelled by their start): the bar equity is sampled at each date's **last bar**, and
  r_d = last equity of date d / last equity of the previous date - 1, the first date against the
  starting cash (`session_returns`). Every return metric below is computed on these daily returns,
  so annualisation, streaks and win rates count days, never bars. Daily results are unchanged:
  for them the daily returns are the bar returns.
- Annualisation uses sessions per year by market: cn 242, us 252, crypto 365 (`ANNUALISATION_DAYS`).
  A crypto "session" is a calendar date of the (tz-naive) time stamps.
- Compounding: annual returns are geometric (CAGR): (prod(1 + r))^(days / n) - 1, n = sessions.
  This is empyrical's `annual_return`; the tests check ours against it.
- Volatility, Sharpe and information ratio use the sample standard deviation (ddof=1) and
  sqrt(days) scaling, as empyrical; the risk-free rate is 0.
- Max drawdown is measured on the **bar** equity (for intraday data the intraday trough counts:
  a fall and recovery inside one day is a real drawdown the daily closes would hide).

Definitions table (keys of `compute_metrics`; r = daily returns as above, rb = daily benchmark returns)
-----------------------------------------------------------------------------------------------------
| key | definition |
|---|---|
| total_return | prod(1 + r) - 1 over the backtest (the same on bars or days) |
| annual_return | CAGR of the strategy's daily returns |
| annual_volatility | std(r, ddof=1) * sqrt(days) |
| benchmark_return | CAGR of the benchmark's daily returns rb: close-to-close of each date's last benchmark close (the first date: its last close over its first bar's close; for daily data the first session counts 0) (NaN without a benchmark) |
| annual_excess_return | annual_return - benchmark_return (difference of CAGRs; NaN without a benchmark) |
| excess_return_arithmetic | mean(r - rb) * days: Qlib's "annualized_return" of excess returns, for comparison with Qlib's tables |
| sharpe | mean(r) / std(r, ddof=1) * sqrt(days) |
| information_ratio | mean(r - rb) / std(r - rb, ddof=1) * sqrt(days) (daily arithmetic excess) |
| max_drawdown | min over bars t of equity_t / max_{s<=t} equity_s - 1, with the starting cash as first peak: a **negative** fraction (-0.12 = a 12% fall from peak; 0 = never below a peak); on the bar equity (intraday troughs count) |
| calmar | annual_return / -max_drawdown |
| max_consecutive_losing_days | longest run of days with r < 0 (a zero return ends a run); losing bars inside one day count once, as that day |
| daily_win_rate | days with r > 0 / days with r != 0 |
| ic, rank_ic | mean over time stamps (sessions; bars for intraday data) of the cross-sectional Pearson / Spearman correlation of score and label |
| icir, rank_icir | mean / std (ddof=1) of those per-time-stamp series (not annualised, as Qlib) |
| ic_time_series | 1 when no session has a cross-section to rank (e.g. a single index series): ic / rank_ic are then the per-symbol time-series Pearson / Spearman correlations of score and label (>= 20 pairs) averaged over symbols, icir / rank_icir NaN, and directional_accuracy is the timing accuracy (score above the median of the symbol's earlier scores vs label > 0; `time_series_ic`); 0 otherwise |
| directional_accuracy | share of (symbol, time stamp) pairs whose predicted side of the cross-sectional median matches the label's: score above the session's median score and label above its median label, or both below (pairs exactly on a median left out; `directional_accuracy`, direction "relative"). It asks "did the stock beat its peers?", not "did it go up?"; 0.5 is a coin toss |
| pick_hit_rate | hit rate of the long picks against the benchmark: share of (session, pick) pairs, picks = the session's `topk` highest scores (ties by symbol; the candidates TopkDropout buys from), whose evaluation label beats the benchmark's return over the same holding period (> , the benchmark's evaluation label: the same fill prices at t+1 and t+2); pairs without a finite label or benchmark label left out (`pick_hit_rate`) |
| turnover | mean over days of traded value that day (buys + sells) / the previous day's last equity (the first day: the starting cash) |
| total_costs | sum of all transaction costs, currency |
| n_trades, n_rejected | orders with status filled/partial, and with status rejected |
| n_sessions | days (sessions) in the backtest |
| n_bars | bars (time stamps of the equity) in the backtest; = n_sessions for daily data |
| freq_minutes | bar length in minutes inferred from the time stamps (30 for 30min, 60 for 1h; 1440 for daily bars); `infer_freq` gives the name ("30min", "1h", "1d") |

Hedged books (`BacktestResult.hedged`, `quantlm.backtest.hedge`) are measured with the same
definitions on their own equity, against cash (0%) as their benchmark: the short leg already takes
the index out, so their annual_excess_return is their annual_return and their information_ratio
their sharpe. Their prediction metrics are the long book's (same scores).

Labels are the evaluation labels of docs/ARCHITECTURE.md (by default open(t+2)/open(t+1) - 1 for a
score at t, `quantlm.features.labels.forward_returns`). A session enters the IC series when it
has at least 3 (symbol) pairs with finite score and label and neither is constant across symbols.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from quantlm.backtest.sessions import (  # noqa: F401  (re-exported: report and outputs import them from here)
    bar_minutes,
    benchmark_returns,
    infer_freq,
    is_intraday,
    session_benchmark_returns,
    session_returns,
    session_turnover,
)

ANNUALISATION_DAYS = {"cn": 242, "us": 252, "crypto": 365}
MIN_CROSS_SECTION = 3


class ResultLike(Protocol):
    """What metrics need from `quantlm.backtest.engine.BacktestResult`."""

    equity: pd.Series
    benchmark: pd.Series | None
    trades: pd.DataFrame
    turnover: pd.Series
    costs: pd.Series

    def returns(self) -> pd.Series: ...


def annualisation_days(market: str) -> int:
    """Sessions per year used to annualise: cn 242, us 252, crypto 365."""
    if market not in ANNUALISATION_DAYS:
        raise ValueError(f"unknown market '{market}' (expected one of {', '.join(ANNUALISATION_DAYS)})")
    return ANNUALISATION_DAYS[market]


def _clean(returns: pd.Series | np.ndarray) -> np.ndarray:
    r = np.asarray(returns, dtype="float64")
    return r[np.isfinite(r)]


def total_return(returns: pd.Series | np.ndarray) -> float:
    """prod(1 + r) - 1 of simple returns (NaN for an empty series)."""
    r = _clean(returns)
    return float(np.prod(1.0 + r) - 1.0) if len(r) else float("nan")


def annual_return(returns: pd.Series | np.ndarray, days: int) -> float:
    """Compound annual growth rate: (prod(1 + r))^(days / n) - 1 for n sessions of simple returns."""
    r = _clean(returns)
    if len(r) == 0:
        return float("nan")
    growth = float(np.prod(1.0 + r))
    if growth <= 0:
        return -1.0
    return growth ** (days / len(r)) - 1.0


def annual_volatility(returns: pd.Series | np.ndarray, days: int) -> float:
    """std(r, ddof=1) * sqrt(days); NaN with fewer than 2 returns."""
    r = _clean(returns)
    return float(np.std(r, ddof=1) * np.sqrt(days)) if len(r) >= 2 else float("nan")


def sharpe_ratio(returns: pd.Series | np.ndarray, days: int) -> float:
    """mean(r) / std(r, ddof=1) * sqrt(days), risk-free rate 0; NaN if std <= 1e-12 (no dispersion) or n < 2."""
    r = _clean(returns)
    if len(r) < 2:
        return float("nan")
    std = np.std(r, ddof=1)
    return float(np.mean(r) / std * np.sqrt(days)) if std > 1e-12 else float("nan")  # 0 or rounding noise


def drawdown_series(returns: pd.Series) -> pd.Series:
    """equity_t / running peak - 1 (<= 0), with the starting value 1 as the first peak."""
    r = pd.Series(returns, dtype="float64").fillna(0.0)
    wealth = (1.0 + r).cumprod()
    peak = np.maximum(wealth.cummax(), 1.0)
    return wealth / peak - 1.0


def max_drawdown(returns: pd.Series | np.ndarray) -> float:
    """Largest fall from a running peak as a negative fraction (-0.12 = 12% below the peak); 0 if none."""
    r = pd.Series(_clean(returns))
    if len(r) == 0:
        return float("nan")
    return float(drawdown_series(r).min())


def max_consecutive_losses(returns: pd.Series | np.ndarray) -> int:
    """Longest run of consecutive returns < 0 (a zero or positive return ends the run)."""
    longest = current = 0
    for losing in _clean(returns) < 0:
        current = current + 1 if losing else 0
        longest = max(longest, current)
    return longest


def win_rate(returns: pd.Series | np.ndarray) -> float:
    """Sessions with r > 0 over sessions with r != 0 (NaN if every return is 0)."""
    r = _clean(returns)
    moved = r[r != 0]
    return float(np.mean(moved > 0)) if len(moved) else float("nan")


def information_ratio(returns: pd.Series, benchmark_returns: pd.Series, days: int) -> float:
    """mean(r - rb) / std(r - rb, ddof=1) * sqrt(days) on the sessions both series cover."""
    excess = (returns - benchmark_returns).dropna()
    return sharpe_ratio(excess, days)


def _merge_scores_labels(scores: pd.DataFrame, labels: pd.DataFrame,
                         sessions: pd.DatetimeIndex | None = None) -> pd.DataFrame:
    """Scores joined with labels on (symbol, session): columns symbol, ts (the session), score, label.

    A score stamped at ts belongs to the last label session <= ts, as the backtest engine maps it
    (`prepare_arrays`: a score stamped 15:00 on a daily session dated 00:00 is that session's);
    past the last label session only a stamp on the same calendar date maps to it. When several
    stamps of a symbol fall in one session the latest wins, as in the engine. sessions: keep only
    these sessions (e.g. the backtest's). Rows without a finite score and label are dropped.
    """
    for name, df, col in (("scores", scores, "score"), ("labels", labels, "label")):
        missing = [c for c in ("symbol", "ts", col) if c not in df.columns]
        if missing:
            raise ValueError(f"{name} lack column(s) {', '.join(missing)}")
    calendar = pd.DatetimeIndex(np.unique(pd.DatetimeIndex(labels["ts"]).to_numpy()))
    stamp = pd.DatetimeIndex(scores["ts"])
    pos = calendar.searchsorted(stamp, side="right") - 1
    keep = pos >= 0
    if len(calendar):
        past_end = stamp > calendar[-1]
        keep &= ~past_end | (stamp.normalize() == calendar[-1].normalize())
    s = pd.DataFrame({"symbol": scores["symbol"].to_numpy()[keep], "ts": calendar[pos[keep]],
                      "stamp": stamp[keep], "score": scores["score"].to_numpy()[keep]})
    s = s.sort_values("stamp", kind="stable").drop_duplicates(["symbol", "ts"], keep="last")
    if sessions is not None:
        s = s[s["ts"].isin(pd.DatetimeIndex(sessions))]
    both = s[["symbol", "ts", "score"]].merge(labels[["symbol", "ts", "label"]], on=["symbol", "ts"], how="inner")
    both["score"] = pd.to_numeric(both["score"], errors="coerce").astype("float64")
    both["label"] = both["label"].astype("float64")
    return both[np.isfinite(both["score"]) & np.isfinite(both["label"])].reset_index(drop=True)


def _pearson_by_session(df: pd.DataFrame, x: str, y: str) -> pd.Series:
    g = df.groupby("ts", sort=True)
    xc = df[x] - g[x].transform("mean")
    yc = df[y] - g[y].transform("mean")
    parts = pd.DataFrame({"ts": df["ts"], "xy": xc * yc, "xx": xc * xc, "yy": yc * yc})
    sums = parts.groupby("ts", sort=True).sum()
    count = g.size()
    den = np.sqrt(sums["xx"] * sums["yy"])
    ok = (den > 1e-300) & (count >= MIN_CROSS_SECTION)
    return (sums["xy"][ok] / den[ok]).astype("float64")


def ic_series(scores: pd.DataFrame, labels: pd.DataFrame, sessions: pd.DatetimeIndex | None = None) -> pd.DataFrame:
    """Per-session cross-sectional IC (Pearson) and rank IC (Spearman) of score vs label.

    Scores are mapped to sessions as the engine maps them (`_merge_scores_labels`); sessions: keep
    only these (default: all). Returns a frame indexed by session ts with columns ic, rank_ic and n
    (pairs used). Sessions with fewer than 3 finite pairs, or a constant score or label, are left out.
    """
    both = _merge_scores_labels(scores, labels, sessions)
    if len(both) == 0:
        return pd.DataFrame({"ic": pd.Series(dtype="float64"), "rank_ic": pd.Series(dtype="float64"),
                             "n": pd.Series(dtype="int64")}, index=pd.DatetimeIndex([], name="ts"))
    ic = _pearson_by_session(both, "score", "label")
    ranked = both.assign(score=both.groupby("ts")["score"].rank(), label=both.groupby("ts")["label"].rank())
    rank_ic = _pearson_by_session(ranked, "score", "label")
    out = pd.DataFrame({"ic": ic, "rank_ic": rank_ic.reindex(ic.index)})
    out["n"] = both.groupby("ts").size().reindex(out.index).astype("int64")
    out.index.name = "ts"
    return out


MIN_TIME_SERIES = 20  # pairs a symbol needs for its time-series IC


def time_series_ic(scores: pd.DataFrame, labels: pd.DataFrame, sessions: pd.DatetimeIndex | None = None
                   ) -> dict[str, float]:
    """IC of a store too small for cross-sections (e.g. one index series): per symbol, the Pearson and
    Spearman correlation over time of score and label (symbols with >= 20 pairs), averaged over symbols;
    and the timing accuracy: the share of pairs where the side of the score against the median of the
    symbol's EARLIER scores (strictly before t; the first 20 pairs left out) matches the sign of the label.
    Returns {"ic", "rank_ic", "directional_accuracy"} (NaN when no symbol qualifies)."""
    both = _merge_scores_labels(scores, labels, sessions).sort_values(["symbol", "ts"], kind="stable")
    ic, rank_ic, hits, decided = [], [], 0, 0
    for _, g in both.groupby("symbol", sort=True):
        if len(g) < MIN_TIME_SERIES or g["score"].nunique() < 2 or g["label"].nunique() < 2:
            continue
        ic.append(float(np.corrcoef(g["score"], g["label"])[0, 1]))
        rank_ic.append(float(g["score"].rank().corr(g["label"].rank())))
        past_median = g["score"].expanding().median().shift(1).to_numpy()
        pred = (g["score"].to_numpy() - past_median)[MIN_TIME_SERIES:]
        real = g["label"].to_numpy()[MIN_TIME_SERIES:]
        ok = (pred != 0) & (real != 0) & np.isfinite(pred)
        hits += int((np.sign(pred[ok]) == np.sign(real[ok])).sum())
        decided += int(ok.sum())
    nan = float("nan")
    return {"ic": float(np.mean(ic)) if ic else nan, "rank_ic": float(np.mean(rank_ic)) if rank_ic else nan,
            "directional_accuracy": hits / decided if decided else nan}


def _mean_and_ir(series: pd.Series) -> tuple[float, float]:
    s = series.dropna()
    if len(s) == 0:
        return float("nan"), float("nan")
    std = s.std(ddof=1) if len(s) > 1 else float("nan")
    return float(s.mean()), float(s.mean() / std) if std and np.isfinite(std) and std > 0 else float("nan")


Direction = Literal["relative", "absolute"]


def directional_accuracy(scores: pd.DataFrame, labels: pd.DataFrame, direction: Direction = "relative",
                         threshold: float = 0.0, sessions: pd.DatetimeIndex | None = None) -> float:
    """Share of (symbol, session) pairs whose predicted direction matches the realised one.

    direction="relative" (default; fits any score that ranks, including class probabilities):
        predicted up when score > the session's cross-sectional median score, realised up when
        label > the session's median label. It asks "did the stock beat its peers?", which is
        what a long-only top-k or long-short strategy trades on.
    direction="absolute": predicted up when score > threshold (0 for return forecasts, 0.5 for
        a probability of a positive return), realised up when label > 0.
    Pairs where the prediction or the outcome sits exactly on its threshold/median are left out;
    NaN if no pair is left. Scores are mapped to sessions as in `ic_series`; sessions: keep only these.
    """
    both = _merge_scores_labels(scores, labels, sessions)
    if len(both) == 0:
        return float("nan")
    if direction == "relative":
        pred = both["score"] - both.groupby("ts")["score"].transform("median")
        real = both["label"] - both.groupby("ts")["label"].transform("median")
    elif direction == "absolute":
        pred = both["score"] - threshold
        real = both["label"]
    else:
        raise ValueError(f"direction must be 'relative' or 'absolute', got '{direction}'")
    decided = (pred != 0) & (real != 0)
    if not decided.any():
        return float("nan")
    return float((np.sign(pred[decided]) == np.sign(real[decided])).mean())


def pick_hit_rate(scores: pd.DataFrame, labels: pd.DataFrame, benchmark_labels: pd.Series, topk: int,
                  sessions: pd.DatetimeIndex | None = None) -> float:
    """Share of (session, pick) pairs whose label beats the benchmark's label of that session.

    picks: the `topk` highest scores of each session (ties broken by symbol); benchmark_labels: the
    benchmark's evaluation label indexed by session (same holding period as `labels`). Pairs with a
    missing label or benchmark label are left out; NaN if none is left. Scores map to sessions as in
    `ic_series`; sessions: keep only these.
    """
    both = _merge_scores_labels(scores, labels, sessions)
    if len(both) == 0 or topk < 1:
        return float("nan")
    ranked = both.sort_values(["ts", "score", "symbol"], ascending=[True, False, True], kind="stable")
    picks = ranked.groupby("ts", sort=False).head(topk)
    bench = pd.Series(benchmark_labels, dtype="float64")
    bench = bench[~bench.index.duplicated(keep="last")]
    b = bench.reindex(pd.DatetimeIndex(picks["ts"])).to_numpy()
    ok = np.isfinite(b)
    if not ok.any():
        return float("nan")
    return float((picks["label"].to_numpy()[ok] > b[ok]).mean())


def _trade_counts(trades: pd.DataFrame | None) -> tuple[int, int]:
    if trades is None or len(trades) == 0 or "status" not in trades.columns:
        return 0, 0
    status = trades["status"].astype(str)
    return int(status.isin(["filled", "partial"]).sum()), int((status == "rejected").sum())


def compute_metrics(result: ResultLike, scores: pd.DataFrame | None = None, labels: pd.DataFrame | None = None,
                    market: str = "cn", direction: Direction = "relative", threshold: float = 0.0,
                    benchmark_labels: pd.Series | None = None, topk: int | None = None) -> dict[str, float]:
    """All metrics of one backtest (definitions in the module docstring), as plain floats.

    scores/labels: the Scores table that drove the backtest and the evaluation labels; without
    both, the prediction metrics (ic, rank_ic, icir, rank_icir, directional_accuracy, pick_hit_rate)
    are NaN. benchmark_labels: the benchmark's evaluation label by session (pick_hit_rate; NaN
    without); topk: picks per session (default: the result's config.topk, else 50).
    Scores and labels are restricted to the backtest's sessions.
    """
    days = annualisation_days(market)
    bar_r = result.returns().astype("float64")
    r = session_returns(result).astype("float64")
    out: dict[str, Any] = {
        "total_return": total_return(bar_r),
        "annual_return": annual_return(r, days),
        "annual_volatility": annual_volatility(r, days),
        "sharpe": sharpe_ratio(r, days),
        "max_drawdown": max_drawdown(bar_r),
        "max_consecutive_losing_days": float(max_consecutive_losses(r)),
        "daily_win_rate": win_rate(r),
    }
    mdd = out["max_drawdown"]
    out["calmar"] = out["annual_return"] / -mdd if mdd < 0 else float("nan")
    rb = session_benchmark_returns(result)
    if rb is not None:
        out["benchmark_return"] = annual_return(rb, days)
        out["annual_excess_return"] = out["annual_return"] - out["benchmark_return"]
        out["excess_return_arithmetic"] = float((r - rb).mean() * days)
        out["information_ratio"] = information_ratio(r, rb, days)
    else:
        for key in ("benchmark_return", "annual_excess_return", "excess_return_arithmetic", "information_ratio"):
            out[key] = float("nan")
    if scores is not None and labels is not None:
        sessions = pd.DatetimeIndex(result.equity.index) if len(result.equity) else None
        ics = ic_series(scores, labels, sessions)
        out["ic"], out["icir"] = _mean_and_ir(ics["ic"])
        out["rank_ic"], out["rank_icir"] = _mean_and_ir(ics["rank_ic"])
        out["directional_accuracy"] = directional_accuracy(scores, labels, direction, threshold, sessions)
        out["ic_time_series"] = 0.0
        if len(ics) == 0:  # no cross-section to rank (a single series): the time-series IC instead
            ts_ic = time_series_ic(scores, labels, sessions)
            out.update(ts_ic)
            out["ic_time_series"] = 1.0 if np.isfinite(ts_ic["rank_ic"]) else 0.0
        k = topk if topk is not None else int(getattr(getattr(result, "config", None), "topk", 50))
        out["pick_hit_rate"] = (pick_hit_rate(scores, labels, benchmark_labels, k, sessions)
                                if benchmark_labels is not None else float("nan"))
    else:
        for key in ("ic", "icir", "rank_ic", "rank_icir", "directional_accuracy", "pick_hit_rate", "ic_time_series"):
            out[key] = float("nan")
    turnover = session_turnover(result)
    costs = getattr(result, "costs", None)
    out["turnover"] = float(turnover.mean()) if turnover is not None and len(turnover) else float("nan")
    out["total_costs"] = float(costs.sum()) if costs is not None else float("nan")
    n_trades, n_rejected = _trade_counts(getattr(result, "trades", None))
    out["n_trades"], out["n_rejected"] = float(n_trades), float(n_rejected)
    out["n_sessions"] = float(len(r))
    out["n_bars"] = float(len(bar_r))
    out["freq_minutes"] = bar_minutes(result.equity.index) if len(bar_r) else float("nan")
    return {k: float(v) for k, v in out.items()}


__all__ = [
    "ANNUALISATION_DAYS", "annualisation_days", "total_return", "annual_return", "annual_volatility",
    "sharpe_ratio", "drawdown_series", "max_drawdown", "max_consecutive_losses", "win_rate",
    "information_ratio", "ic_series", "time_series_ic", "directional_accuracy", "pick_hit_rate", "benchmark_returns", "compute_metrics",
    "is_intraday", "bar_minutes", "infer_freq", "session_returns", "session_benchmark_returns", "session_turnover",
]
