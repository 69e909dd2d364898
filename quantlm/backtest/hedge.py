"""Hedged books: a long book with a short benchmark future (overlay), and long-short books.

`hedge: benchmark` (`BacktestConfig.hedge`): the long book the kernel ran (TopkDropout picks) is
held with a short position in a future (or ETF) on the benchmark. The overlay is computed after the
kernel run from the long book's end-of-bar equity, its net stock value and the benchmark's closes;
the kernel and the reference loop are untouched. The model, per bar t (all amounts currency):

- Two accounts: the long book L (a scaled copy of the kernel's book: its return is the kernel's
  return E_t / E_{t-1} - 1) and the futures account M (margin cash) holding a short of notional N.
- At each session close the desk re-sizes: hedged equity H = L + M, long fraction
  a = 1 / (1 + margin_rate * ratio * x_t) with x_t = the kernel book's net stock value / its equity,
  so L = a * H (the long book is scaled down to leave the margin: with a fully invested book,
  long notional = H / (1 + margin_rate) at ratio 1), N = ratio * x_t * L (the short hedges the
  stock value, not the book's idle cash) and M = H - L = margin_rate * N.
- Over the next bar: L grows by the book's return r_t; the short earns -N * (b_t + basis * dt_t)
  (b_t = benchmark close-to-close return, basis = annualised carry the short pays, dt_t = calendar
  days / 365 since the previous bar's date); M earns cash_rate * dt_t; N moves with the benchmark.
- Costs, deducted from M when incurred: futures commission on the notional traded at each re-size
  (|N_new - N|), roll_cost * N at each roll session (contract expiries, `roll_sessions`), and the
  sweep between the accounts (|L_new - L| moved in or out of the stock book) at `sweep_cost` per
  unit moved (default: the long book's own realised cost per unit traded in this run).

With zero costs, zero margin, ratio 1 and a fully invested book (x = 1) the hedged return is exactly
r_t - b_t (tested). Intraday bars: the accounts re-size at each date's last bar only; with a
daily-only benchmark (each bar carries its date's close) a date's futures P&L is booked at its first
bar, so the hedged equity is exact at each date's last bar (the per-session metrics) but not inside a day.

Hedged and long-short books are measured against cash (`cash_benchmark`: 0% a year), not the index:
the short leg already subtracts the market, so their annual_excess_return is their own annual
return (index against index would count the index's move twice).

`hedge: long_short` (us, crypto; refused where shares cannot be shorted, e.g. cn): the kernel itself
runs a dollar-neutral book through its `weights` strategy (shorts and daily borrow fees are the
kernel's): long the top `topk` names and short the bottom `topk`, each side leverage / 2 of equity in
equal weights, rebalanced every session; names are replaced with TopkDropout's rule on each side
(at most `n_drop` per side per session; `long_short_weights`).

Cost assumptions of the presets (`hedge_preset`), user-settable in `HedgeConfig`:
- cn (IF/IH/IC/IM-style CFFEX index futures): commission 0.23 bp of notional per side (CFFEX's
  fee for positions not closed the same day, 0.23 / 10,000 of turnover; closing the same day costs
  more and is not modelled); margin 12% of notional (exchange margins for IF were 8-12% in 2019-2023,
  brokers add a little); monthly contracts expiring the third Friday (postponed to the next session
  when that is not one), rolled at the close of the expiry session at 1 bp of notional (two legs of
  commission plus the calendar spread's bid-ask); basis 0 by default: IF traded near fair value, but
  IC/IM traded at a discount of roughly 5-10% a year in 2015-2023, a carry the short hedger pays
  (set basis: 0.08 to hedge small caps with IC-style futures).
- us (E-mini-style): 0.1 bp per side, margin 6%, quarterly expiries (Mar, Jun, Sep, Dec), 0.5 bp roll.
- crypto (perpetual swap): 5 bp per side (taker fee), margin 10%, no expiry; funding is the basis.
- Margin cash earns cash_rate (default 0, as the kernel's idle cash earns nothing).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import pandas as pd
from numba import njit
from pydantic import BaseModel, ConfigDict, Field, ValidationError

HEDGES = ("none", "benchmark", "long_short")


class HedgeConfigError(ValueError):
    """Bad hedge settings (shown to CLI users without a traceback)."""

    user_facing = True


class HedgeConfig(BaseModel):
    """Settings of the short benchmark hedge. Rates are fractions (0.12 = 12%), annual where marked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instrument: Literal["future", "etf"] = "future"  # what is shorted (a label: costs come from the fields)
    ratio: float = Field(1.0, ge=0.0)  # short notional / the long book's net stock value
    commission: float = Field(0.23e-4, ge=0.0)  # per side, fraction of the notional traded
    margin_rate: float = Field(0.12, ge=0.0, lt=1.0)  # cash set aside per unit of short notional
    cash_rate: float = 0.0  # annual interest on the margin cash (simple, calendar days / 365)
    roll_months: tuple[int, ...] = tuple(range(1, 13))  # contract months; () = no expiry (ETF, perpetual)
    roll_cost: float = Field(1e-4, ge=0.0)  # fraction of the notional paid at each roll
    basis: float = 0.0  # annual carry the short pays (a futures discount converging to spot); may be < 0
    sweep_cost: float | None = Field(None, ge=0.0)  # per unit moved between stock book and margin; None = the book's own

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None, market: str = "cn", source: str = "hedge") -> HedgeConfig:
        """The market preset updated with `data` (e.g. YAML); errors name the source and the bad key."""
        base = hedge_preset(market).model_dump()
        if not data:
            return cls(**base)
        if not isinstance(data, dict):
            raise HedgeConfigError(f"{source}: expected a mapping of hedge settings, got {type(data).__name__}")
        try:
            return cls(**{**base, **data})
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(root)'}: "
                                 f"{'unknown setting' if err['type'] == 'extra_forbidden' else err['msg']}"
                                 for err in e.errors())
            raise HedgeConfigError(f"{source}: {problems} (known settings: {', '.join(cls.model_fields)})") from None


def hedge_preset(market: str) -> HedgeConfig:
    """The default hedge of `market` (assumptions in the module docstring)."""
    presets = {
        "cn": HedgeConfig(),
        "us": HedgeConfig(commission=0.1e-4, margin_rate=0.06, roll_months=(3, 6, 9, 12), roll_cost=0.5e-4),
        "crypto": HedgeConfig(commission=5e-4, margin_rate=0.10, roll_months=(), roll_cost=0.0),
    }
    if market not in presets:
        raise HedgeConfigError(f"unknown market '{market}' for a hedge (expected cn, us or crypto)")
    return presets[market]


def roll_sessions(dates: pd.DatetimeIndex, market: str, months: tuple[int, ...]) -> pd.DatetimeIndex:
    """Roll sessions among `dates` (midnights): for each contract month, the first exchange session on
    or after its third Friday (CFFEX postpones an expiry on a holiday to the next session), mapped to
    the first of `dates` on or after it. exchange_calendars sessions via `quantlm.data.calendars`."""
    from quantlm.data.calendars import sessions as exchange_sessions

    dates = pd.DatetimeIndex(dates).normalize().unique().sort_values()
    if len(dates) == 0 or not months:
        return pd.DatetimeIndex([])
    out = []
    for month in pd.period_range(dates[0], dates[-1], freq="M"):
        if month.month not in months:
            continue
        first = month.start_time
        third_friday = first + pd.Timedelta(days=(4 - first.dayofweek) % 7 + 14)
        if third_friday > dates[-1]:
            continue
        ex = exchange_sessions(market, third_friday, third_friday + pd.Timedelta(days=20))
        expiry = ex[0] if len(ex) else third_friday
        i = dates.searchsorted(expiry)
        if i < len(dates):
            out.append(dates[i])
    return pd.DatetimeIndex(sorted(set(out)))


@njit(cache=True)
def _overlay_kernel(equity, cash, x, bench_r, dt, resize, roll, ratio, commission, margin_rate, cash_rate,
                    roll_cost, basis, sweep_cost):
    n = equity.shape[0]
    hedged = np.empty(n)
    long_v, margin, notional = np.empty(n), np.empty(n), np.empty(n)
    pnl_out, cost_out, scale = np.empty(n), np.empty(n), np.empty(n)
    L, M, N, prev_e = cash, 0.0, 0.0, cash
    for t in range(n):
        r = equity[t] / prev_e - 1.0 if prev_e > 0 else 0.0
        prev_e = equity[t]
        M += M * cash_rate * dt[t]
        pnl = -N * (bench_r[t] + basis * dt[t])
        M += pnl
        N *= 1.0 + bench_r[t]
        L *= 1.0 + r
        cost = roll_cost * N if roll[t] else 0.0
        if resize[t]:
            H = L + M
            a = 1.0 / (1.0 + margin_rate * ratio * x[t])
            new_l = a * H
            new_n = ratio * x[t] * new_l
            cost += commission * abs(new_n - N) + sweep_cost * abs(new_l - L)
            L, N = new_l, new_n
            M = H - L
        M -= cost
        hedged[t], long_v[t], margin[t], notional[t] = L + M, L, M, N
        pnl_out[t], cost_out[t] = pnl, cost
        scale[t] = L / equity[t] if equity[t] > 0 else 0.0
    return hedged, long_v, margin, notional, pnl_out, cost_out, scale


def hedge_overlay(equity: np.ndarray, cash: float, stock_fraction: np.ndarray, bench_returns: np.ndarray,
                  dt_years: np.ndarray, resize: np.ndarray, roll: np.ndarray, config: HedgeConfig,
                  sweep_cost: float = 0.0) -> dict[str, np.ndarray]:
    """The hedged book bar by bar (model in the module docstring); a pure function of its arrays.

    equity: the kernel book's equity at each bar's close (currency), starting from `cash`;
    stock_fraction: its net stock value / equity at each close; bench_returns: benchmark close-to-close
    returns (the first bar 0); dt_years: calendar days since the previous bar's date / 365 (0 within a
    date); resize: bars at which the accounts are re-sized (session closes); roll: roll bars (must be
    resize bars); sweep_cost: cost per unit moved between the accounts (config.sweep_cost overrides).
    Returns arrays: equity (hedged, currency), long_value, margin, notional (short, currency),
    futures_pnl, hedge_costs (commission + roll + sweep, currency) and long_scale (long value / kernel equity).
    Bar t uses inputs up to t only.
    """
    arrays = [np.ascontiguousarray(a, dtype=np.float64) for a in (equity, stock_fraction, bench_returns, dt_years)]
    n = len(arrays[0])
    if any(len(a) != n for a in (*arrays, resize, roll)):
        raise HedgeConfigError("hedge_overlay: every input array needs one value per bar")
    bad = [name for name, a in zip(("equity", "stock_fraction", "bench_returns", "dt_years"), arrays)
           if not np.isfinite(a).all()]
    if bad:
        raise HedgeConfigError(f"hedge_overlay: non-finite values in {', '.join(bad)}")
    sweep = config.sweep_cost if config.sweep_cost is not None else float(sweep_cost)
    out = _overlay_kernel(arrays[0], float(cash), arrays[1], arrays[2], arrays[3],
                          np.asarray(resize, dtype=np.bool_), np.asarray(roll, dtype=np.bool_) & np.asarray(resize),
                          config.ratio, config.commission, config.margin_rate, config.cash_rate, config.roll_cost,
                          config.basis, sweep)
    keys = ("equity", "long_value", "margin", "notional", "futures_pnl", "hedge_costs", "long_scale")
    return dict(zip(keys, out))


def _bar_calendar(index: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
    """(dt_years per bar: calendar days since the previous bar's date / 365; True at each date's last bar)."""
    dates = pd.DatetimeIndex(index).normalize()
    days = np.r_[0.0, np.diff(dates.asi8) / 86_400e9]
    last_of_date = np.r_[dates[1:] != dates[:-1], True]
    return days / 365.0, last_of_date


def stock_fraction(result) -> np.ndarray:
    """Net stock value / equity of a BacktestResult at each bar (0 when flat)."""
    idx = pd.DatetimeIndex(result.equity.index)
    pos = result.positions
    value = pos.groupby("ts")["value"].sum().reindex(idx, fill_value=0.0) if len(pos) else pd.Series(0.0, index=idx)
    eq = result.equity.to_numpy(dtype="float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(eq > 0, value.to_numpy(dtype="float64") / eq, 0.0)


def realised_cost_rate(result) -> float:
    """The book's total trade costs / traded value in its run (0 when nothing traded)."""
    trades = result.trades
    traded = float(trades["value"].sum()) if len(trades) else 0.0
    costs = float(trades["total_cost"].sum()) if len(trades) else 0.0
    return costs / traded if traded > 0 else 0.0


def benchmark_hedge(result, config: HedgeConfig, market: str):
    """The hedged BacktestResult of a long book `result` (see the module docstring).

    Equity, cash (the margin account), costs (the scaled long book's + the hedge's), turnover (the
    scaled stock book's traded value / hedged equity; futures trades are in costs, not turnover) and
    exposure (stock value + short notional, over hedged equity) are the hedged book's; positions and
    trades stay the kernel book's (at its size). `hedge_detail` has the per-bar accounts.
    """
    from quantlm.backtest.sessions import benchmark_returns

    rb = benchmark_returns(result)
    if rb is None:
        raise HedgeConfigError("hedge: benchmark needs a benchmark (set --benchmark or the store's meta 'benchmark')")
    idx = pd.DatetimeIndex(result.equity.index)
    closes = result.benchmark.reindex(idx).ffill()
    if closes.isna().any():
        first = pd.Timestamp(closes.index[closes.isna()][0])
        raise HedgeConfigError(f"hedge: benchmark '{result.config.benchmark}' has no close at or before {first} "
                               "(a bar of the backtest): the short leg cannot be valued there")
    dt, last_of_date = _bar_calendar(idx)
    rolls = roll_sessions(idx.normalize(), market, config.roll_months)
    roll = last_of_date & np.isin(idx.normalize(), rolls)
    cash = float(result.config.cash)
    arrays = hedge_overlay(result.equity.to_numpy(dtype="float64"), cash, stock_fraction(result), rb.to_numpy(),
                           dt, last_of_date, roll, config, sweep_cost=realised_cost_rate(result))
    equity = pd.Series(arrays["equity"], index=idx, name="equity")
    scale_prev = np.r_[1.0, arrays["long_scale"][:-1]]
    prev_h = np.r_[cash, arrays["equity"][:-1]]
    prev_e = np.r_[cash, result.equity.to_numpy()[:-1]]
    with np.errstate(invalid="ignore", divide="ignore"):
        turnover = result.turnover.to_numpy() * scale_prev * prev_e / prev_h
        stock_value = stock_fraction(result) * result.equity.to_numpy() * arrays["long_scale"]
        exposure = (np.abs(stock_value) + arrays["notional"]) / arrays["equity"]
    detail = pd.DataFrame({k: v for k, v in arrays.items() if k != "equity"}, index=idx)
    detail["roll"] = roll
    hedged = dataclasses.replace(
        result, equity=equity, cash=pd.Series(arrays["margin"], index=idx, name="cash"),
        costs=pd.Series(result.costs.to_numpy() * scale_prev + arrays["hedge_costs"], index=idx, name="costs"),
        turnover=pd.Series(turnover, index=idx, name="turnover"), exposure=pd.Series(exposure, index=idx, name="exposure"),
        benchmark=cash_benchmark(idx), book="hedged", hedged=None, hedge_detail=detail)
    return hedged


def cash_benchmark(index: pd.DatetimeIndex) -> pd.Series:
    """The benchmark of a hedged or long-short book: cash at 0% (a flat series of 1.0). The short leg
    already takes the index out, so measuring such a book against the index again would count the
    index's fall (or rise) a second time; its excess return is its own return."""
    return pd.Series(1.0, index=pd.DatetimeIndex(index), name="benchmark")


def _dropout_pick(ranked: list[str], held: list[str], k: int, n_drop: int) -> list[str]:
    """TopkDropout's replacement rule on one side: the names held after this session.

    ranked: today's scored names, best first; held: names held now. At most n_drop held names (the
    worst of held + best non-held candidates) are replaced by the best non-held names; held names
    without a score today rank last."""
    held_set = set(held)
    scored = set(ranked)
    n_today = max(n_drop + k - len(held), 0)
    today = [s for s in ranked if s not in held_set][:n_today]
    comb = [s for s in ranked if s in held_set or s in set(today)] + sorted(held_set - scored)
    worst = comb[max(len(comb) - n_drop, 0):] if n_drop > 0 else []
    sell = {s for s in worst if s in held_set}
    keep = [s for s in held if s not in sell]
    buy = today[: max(len(sell) + k - len(held), 0)]
    return keep + buy


def long_short_weights(scores: pd.DataFrame, topk: int, n_drop: int, gross: float = 1.0) -> pd.DataFrame:
    """Weights (symbol, ts, weight) of a dollar-neutral book: long the top `topk`, short the bottom `topk`.

    Each side is gross / 2 of equity in equal weights; per session (time stamp of the scores) each side
    replaces at most `n_drop` names (TopkDropout's rule, `_dropout_pick`); a name is never on both sides
    (a name held short is not a long candidate until the short side has dropped it).
    Uses each session's scores only (no look-ahead)."""
    if topk < 1:
        raise HedgeConfigError(f"long_short needs topk >= 1, got {topk}")
    s = scores[["symbol", "ts", "score"]].copy()
    s["score"] = pd.to_numeric(s["score"], errors="coerce")
    s = s[np.isfinite(s["score"])]
    longs: list[str] = []
    shorts: list[str] = []
    rows: list[tuple[str, pd.Timestamp, float]] = []
    w = gross / 2.0 / topk
    for ts, day in s.sort_values(["ts", "symbol"], kind="stable").groupby("ts", sort=True):
        best = day.sort_values(["score", "symbol"], ascending=[False, True], kind="stable")["symbol"].astype(str).tolist()
        held_short = set(shorts)
        longs = _dropout_pick([x for x in best if x not in held_short], longs, topk, n_drop)
        long_set = set(longs)
        shorts = _dropout_pick([x for x in reversed(best) if x not in long_set], shorts, topk, n_drop)
        rows += [(x, ts, w) for x in longs] + [(x, ts, -w) for x in shorts]
    return pd.DataFrame(rows, columns=["symbol", "ts", "weight"])


def attach_hedge(result, scores: pd.DataFrame, run: Any) -> None:
    """Set `result.hedged` to the hedged book `result.config.hedge` asks for (no-op for "none").

    run: callable(scores, config) -> BacktestResult running the kernel on the same bars (long_short).
    """
    config = result.config
    if config.hedge == "none":
        return
    if config.hedge == "benchmark":
        settings = config.hedge_settings or hedge_preset(config.market)
        result.hedged = benchmark_hedge(result, settings, config.market)
        return
    weights = long_short_weights(scores, config.topk, config.n_drop, gross=config.leverage)
    ls_config = dataclasses.replace(config, strategy="weights", hedge="none", allow_short=True)
    ls = run(weights, ls_config)
    ls.book = "long_short"
    ls.benchmark = cash_benchmark(ls.equity.index)
    result.hedged = ls


__all__ = ["HEDGES", "HedgeConfig", "HedgeConfigError", "hedge_preset", "roll_sessions", "hedge_overlay",
           "benchmark_hedge", "cash_benchmark", "long_short_weights", "attach_hedge", "stock_fraction", "realised_cost_rate"]
