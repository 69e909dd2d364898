"""The backtest engine: scores -> strategy -> orders -> exchange -> portfolio, over sessions.

Timing: the score at session t is known after t's close (its decision cut-off). Orders generated
from it fill on the next session t+1: at its open (`fill="open"`, default), its close (`"close"`), or
a VWAP proxy (`"vwap"`: amount / volume when amount is known, else (open + high + low + close) / 4).
Whether a fill is at the price limit is judged at the fill price, never at a later price.

`run_backtest` precomputes [n_sessions, n_symbols] arrays (fill prices, limit prices, volumes,
volatility) and runs the numba kernel (`engine="numba"`, default) or the plain-Python reference
loop over the same objects live trading uses (`engine="python"`); the two give the same results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantlm.backtest import kernel as K
from quantlm.backtest.costs import CostModel, cost_model
from quantlm.backtest.reference import run_reference
from quantlm.backtest.rules import MarketRules, limit_price_arrays, market_rules

STRATEGIES = ("topk", "threshold", "weights")
FILLS = ("open", "close", "vwap")
SIGMA_WINDOW = 20


class BacktestConfigError(ValueError):
    """A bad backtest setting or input (shown to CLI users without a traceback)."""

    user_facing = True


@dataclass
class BacktestConfig:
    """How to run a backtest. Fractions, not percent; cash in currency units."""

    market: str = "cn"  # preset: cn | us | crypto
    strategy: str = "topk"  # topk | threshold | weights
    topk: int = 50
    n_drop: int = 5
    hold_thresh: int = 1  # TopkDropout (Qlib semantics)
    long_threshold: float = 0.0
    short_threshold: float | None = None  # score > long -> long, < short -> short if allowed, else flat
    cash: float = 1_000_000.0  # initial cash, currency units
    fill: str = "open"  # open (next bar's open) | close | vwap
    costs: bool = True  # False = --no-costs: every cost, fee, slippage and impact zero
    participation: float = 0.1  # max fraction of the bar's volume an order may take (0 = no cap)
    benchmark: str | None = None  # benchmark symbol in the store/bars
    start: str | None = None
    end: str | None = None
    allow_short: bool | None = None  # None = market default (cn: no; us, crypto: yes, with borrow fee)
    leverage: float = 1.0  # max gross exposure / equity
    risk_degree: float = 0.95  # TopkDropout: fraction of available cash spent on buys
    rules: MarketRules | None = None  # override the market preset's rules
    cost_model: CostModel | None = None  # override the market preset's costs (ignored when costs=False)

    def market_rules(self) -> MarketRules:
        return self.rules if self.rules is not None else market_rules(self.market)

    def cost_model_used(self) -> CostModel:
        if not self.costs:
            return CostModel.zero()
        return self.cost_model if self.cost_model is not None else cost_model(self.market)

    def shorting(self) -> bool:
        return self.market_rules().allow_short if self.allow_short is None else bool(self.allow_short)

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise BacktestConfigError(msg)

        if self.market not in ("cn", "us", "crypto") and self.rules is None:
            bad(f"unknown market '{self.market}' (expected cn, us or crypto)")
        if self.strategy not in STRATEGIES:
            bad(f"unknown strategy '{self.strategy}' (expected one of {', '.join(STRATEGIES)})")
        if self.fill not in FILLS:
            bad(f"unknown fill '{self.fill}' (expected one of {', '.join(FILLS)})")
        if self.topk < 1 or self.n_drop < 0 or self.hold_thresh < 0:
            bad("topk must be >= 1, n_drop >= 0 and hold_thresh >= 0")
        if not self.cash > 0:
            bad(f"cash must be positive, got {self.cash}")
        if not 0 <= self.participation <= 1:
            bad(f"participation must be in [0, 1], got {self.participation}")
        if not self.leverage > 0:
            bad(f"leverage must be positive, got {self.leverage}")


@dataclass
class BacktestResult:
    """What a backtest did, per session (index: session ts) and per order.

    trades columns: ts (fill session), symbol, side (buy/sell/short/cover), shares_requested,
    shares_filled, price (fill price; NaN if the symbol had no bar), value = shares_filled * price, the
    costs commission, stamp_duty, transfer_fee, sec_fee, slippage, impact and their total_cost
    (currency), status (filled/partial/rejected), reason ('' or suspended, limit_up, limit_down, t+1,
    lot, cash, volume, short_not_allowed, leverage) and value_requested (currency, for buys/shorts).
    Borrow fees are charged daily on open shorts, not per order: they are in `costs` and `borrow_fees`;
    trades.borrow_fee is kept for the schema and is 0.
    """

    config: BacktestConfig
    equity: pd.Series  # index: session ts; cash + positions at close, currency
    cash: pd.Series
    benchmark: pd.Series | None  # benchmark closes aligned to equity.index
    positions: pd.DataFrame  # ts, symbol, shares, value, weight
    trades: pd.DataFrame  # TRADE_COLUMNS, one row per order (fills, partials, rejections); see below
    turnover: pd.Series  # traded value / previous equity (fraction)
    costs: pd.Series  # trade costs + borrow fees per session (currency)
    exposure: pd.Series  # gross exposure / equity (fraction)
    borrow_fees: pd.Series = field(default_factory=lambda: pd.Series(dtype="float64"))  # included in costs
    warnings: list[str] = field(default_factory=list)

    def returns(self) -> pd.Series:
        """Simple session returns of equity (the first session against the initial cash)."""
        prev = self.equity.shift(1)
        prev.iloc[:1] = self.config.cash
        return (self.equity / prev - 1.0).rename("returns")


@dataclass
class _Arrays:
    symbols: list[str]
    sessions: pd.DatetimeIndex
    fill_price: np.ndarray
    close: np.ndarray
    mark: np.ndarray  # last close known at each session's close (forward-filled)
    volume: np.ndarray
    limit_up: np.ndarray
    limit_down: np.ndarray
    sigma: np.ndarray
    score: np.ndarray
    has_score: np.ndarray
    new_date: np.ndarray
    stamp_rate: np.ndarray
    sec_rate: np.ndarray
    borrow_years: np.ndarray
    warnings: list[str]


def _ffill(a: np.ndarray) -> np.ndarray:
    """Forward-fill NaNs down each column."""
    idx = np.where(np.isfinite(a), np.arange(a.shape[0])[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    return a[idx, np.arange(a.shape[1])[None, :]]


def _shift(a: np.ndarray) -> np.ndarray:
    out = np.full_like(a, np.nan)
    out[1:] = a[:-1]
    return out


def prepare_arrays(scores: pd.DataFrame, bars: pd.DataFrame, config: BacktestConfig,
                   instruments: pd.DataFrame | None = None, flags: pd.DataFrame | None = None) -> _Arrays:
    """Dense [session, symbol] arrays for the loop (see the module docstring)."""
    value_col = "weight" if config.strategy == "weights" else "score"
    for col in ("symbol", "ts", value_col):
        if col not in scores.columns:
            raise BacktestConfigError(f"signals: missing column '{col}' (strategy '{config.strategy}')")
    for col in ("symbol", "ts", "open", "high", "low", "close", "volume"):
        if col not in bars.columns:
            raise BacktestConfigError(f"bars: missing column '{col}'")
    warnings: list[str] = []
    s_codes, s_uniques = pd.factorize(scores["symbol"])
    b_codes, b_uniques = pd.factorize(bars["symbol"])
    score_syms, bar_syms = pd.Index(np.asarray(s_uniques, dtype=str)), pd.Index(np.asarray(b_uniques, dtype=str))
    symbols = sorted(score_syms.intersection(bar_syms))
    if not symbols:
        raise BacktestConfigError("no symbol of the signals has bars")
    missing = score_syms.difference(bar_syms)
    if len(missing):
        warnings.append(f"{len(missing)} signal symbol(s) have no bars and are ignored, e.g. {missing[0]}")
    sym_index = pd.Index(symbols)
    bj = np.where(b_codes >= 0, sym_index.get_indexer(bar_syms)[b_codes], -1)  # symbol column of each bar
    in_universe = bj >= 0
    b = bars[in_universe]
    ji = bj[in_universe]
    ts = pd.DatetimeIndex(b["ts"])
    all_sessions = pd.DatetimeIndex(np.unique(ts.to_numpy()))
    n_all, n = len(all_sessions), len(symbols)
    ti = all_sessions.searchsorted(ts)

    def dense(col: str, fill=np.nan) -> np.ndarray:
        a = np.full((n_all, n), fill)
        if col in b.columns:
            a[ti, ji] = pd.to_numeric(b[col], errors="coerce").to_numpy(dtype="float64")
        return a

    o, h, lo, c, vol = dense("open"), dense("high"), dense("low"), dense("close"), dense("volume", 0.0)
    vol = np.nan_to_num(vol, nan=0.0)
    has_bar = np.isfinite(c)
    if config.fill == "open":
        fill = o
    elif config.fill == "close":
        fill = c
    else:
        amount = dense("amount")
        with np.errstate(invalid="ignore", divide="ignore"):
            vwap = amount / vol
        fill = np.where(np.isfinite(vwap) & (vwap > 0), vwap, (o + h + lo + c) / 4.0)
    mark = _ffill(c)
    # limit reference: the last close of the previous date (the previous bar for daily data)
    days_all = all_sessions.normalize()
    prev_i = days_all.searchsorted(days_all, side="left") - 1
    prev_close = np.where((prev_i >= 0)[:, None], mark[np.maximum(prev_i, 0)], np.nan)
    adj = _ffill(dense("adj_factor"))
    ratio = np.where((prev_i >= 0)[:, None], adj[np.maximum(prev_i, 0)], np.nan) / adj  # ex-rights reference
    prev_ref = np.where(np.isfinite(ratio), prev_close * ratio, prev_close)
    rules, costs = config.market_rules(), config.cost_model_used()
    if rules.price_limits:
        up, down = limit_price_arrays(symbols, all_sessions, has_bar, prev_ref, instruments, flags, rules.price_tick)
    else:
        up = down = np.full((n_all, n), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        logret = np.where(has_bar, np.log(mark / _shift(mark)), np.nan)
    sigma = _shift(K.rolling_std(logret, SIGMA_WINDOW, 5))  # known at the previous close
    sigma = np.where(np.isfinite(sigma), sigma, costs.default_sigma)

    sj = np.where(s_codes >= 0, sym_index.get_indexer(score_syms)[s_codes], -1)
    sts = all_sessions.searchsorted(pd.DatetimeIndex(scores["ts"]), side="right") - 1  # last session <= ts
    keep = (sts >= 0) & (sj >= 0)
    score = np.full((n_all, n), np.nan)
    score[sts[keep], sj[keep]] = pd.to_numeric(scores[value_col], errors="coerce").to_numpy(dtype="float64")[keep]

    lo_i = 0 if config.start is None else all_sessions.searchsorted(pd.Timestamp(config.start))
    hi_i = n_all if config.end is None else all_sessions.searchsorted(pd.Timestamp(config.end), side="right")
    if hi_i - lo_i < 1:
        raise BacktestConfigError(f"no sessions between start={config.start} and end={config.end}")
    w = slice(lo_i, hi_i)
    sessions = all_sessions[w]
    days = sessions.normalize()
    new_date = np.ones(len(sessions), dtype=bool)
    new_date[1:] = days[1:] != days[:-1]
    gaps = np.zeros(len(sessions))
    gaps[1:] = np.diff(sessions.asi8) / (86_400e9 * 365.0)
    return _Arrays(symbols, sessions, fill[w], c[w], mark[w], vol[w], up[w], down[w], sigma[w], score[w],
                   np.isfinite(score[w]).any(axis=1), new_date, costs.stamp_duty_rates(sessions),
                   costs.sec_fee_rates(sessions), gaps, warnings)


def _params(config: BacktestConfig, n_symbols: int) -> tuple[np.ndarray, np.ndarray]:
    r, c = config.market_rules(), config.cost_model_used()
    fp = np.zeros(16)
    fp[K.P_CASH], fp[K.P_PARTICIPATION], fp[K.P_LOT], fp[K.P_SELL_STEP] = config.cash, config.participation, r.lot_size, r.sell_step
    fp[K.P_TICK], fp[K.P_LEVERAGE], fp[K.P_RISK] = r.price_tick, config.leverage, config.risk_degree
    fp[K.P_LONG_THR] = config.long_threshold
    fp[K.P_SHORT_THR] = np.nan if config.short_threshold is None else config.short_threshold
    fp[K.P_COMM_RATE], fp[K.P_MIN_COMM], fp[K.P_TRANSFER] = c.commission_rate, c.min_commission, c.transfer_fee_rate
    fp[K.P_SLIP], fp[K.P_IMPACT] = c.slippage, c.impact_coef
    fp[K.P_BORROW] = r.borrow_fee_rate if config.costs else 0.0
    fp[K.P_SLEEVE] = config.leverage / n_symbols
    ip = np.zeros(7, dtype=np.int64)
    ip[K.I_STRATEGY] = STRATEGIES.index(config.strategy)
    ip[K.I_TOPK], ip[K.I_NDROP], ip[K.I_HOLD] = config.topk, config.n_drop, config.hold_thresh
    ip[K.I_ALLOW_SHORT], ip[K.I_T_PLUS], ip[K.I_ODD_LOT] = int(config.shorting()), r.t_plus, int(r.odd_lot_sell)
    return fp, ip


def run_backtest(scores: pd.DataFrame, bars: pd.DataFrame, config: BacktestConfig | None = None,
                 instruments: pd.DataFrame | None = None, flags: pd.DataFrame | None = None,
                 benchmark_bars: pd.DataFrame | None = None, engine: str = "numba") -> BacktestResult:
    """Backtest `scores` (symbol, ts, score | weight) on `bars` (canonical schema) under `config`."""
    config = config or BacktestConfig()
    config.validate()
    a = prepare_arrays(scores, bars, config, instruments, flags)
    if engine == "numba":
        out = _run_numba(a, config)
    elif engine == "python":
        out = run_reference(a, config)
    else:
        raise BacktestConfigError(f"unknown engine '{engine}' (expected numba or python)")
    return _result(a, config, *out, benchmark=_benchmark(config, a.sessions, bars, benchmark_bars))


def run_signal_grid(signals: pd.DataFrame, bars: pd.DataFrame, config: BacktestConfig) -> pd.DataFrame:
    """Equity curves [session x variant] of many score variants for ONE symbol (parameter grids).

    `signals` is wide: index = ts, one column of scores per variant; `bars` holds that symbol's bars.
    Each column is exactly `run_backtest` of that column (checked in tests), sharing the prepared arrays.
    """
    config.validate()
    symbols = pd.unique(bars["symbol"].astype(str))
    if len(symbols) != 1:
        raise BacktestConfigError(f"run_signal_grid needs bars of exactly one symbol, got {len(symbols)}")
    long = pd.DataFrame({"symbol": symbols[0], "ts": pd.DatetimeIndex(signals.index), "score": 0.0})
    a = prepare_arrays(long, bars, config)
    fp, ip = _params(config, 1)
    all_ts = pd.DatetimeIndex(np.unique(pd.DatetimeIndex(bars["ts"]).to_numpy()))
    pos = all_ts.searchsorted(pd.DatetimeIndex(signals.index), side="right") - 1
    in_window = pos - all_ts.searchsorted(a.sessions[0])
    keep = (in_window >= 0) & (in_window < len(a.sessions))
    values = signals.to_numpy(dtype="float64")
    out = np.empty((len(a.sessions), values.shape[1]))
    score = np.full((len(a.sessions), 1), np.nan)
    for k in range(values.shape[1]):
        score[:] = np.nan
        score[in_window[keep], 0] = values[keep, k]
        eq, *_ = K.run_kernel(a.fill_price, a.close, a.volume, a.limit_up, a.limit_down, a.sigma, score,
                              np.isfinite(score[:, 0]), a.new_date, a.stamp_rate, a.sec_rate, a.borrow_years, fp, ip,
                              1)  # trades are only counted, not recorded
        out[:, k] = eq
    return pd.DataFrame(out, index=pd.DatetimeIndex(a.sessions, name="ts"), columns=signals.columns)


def _run_numba(a: _Arrays, config: BacktestConfig):
    fp, ip = _params(config, len(a.symbols))
    n_t, n = a.close.shape
    per_day = n if config.strategy != "topk" else min(n, config.topk + 2 * config.n_drop)
    capacity = max(64, n_t * per_day // 4)
    while True:
        eq, cash, cost, traded, gross, pos, rec, n_rec = K.run_kernel(
            a.fill_price, a.close, a.volume, a.limit_up, a.limit_down, a.sigma, a.score, a.has_score, a.new_date,
            a.stamp_rate, a.sec_rate, a.borrow_years, fp, ip, capacity)
        if n_rec <= capacity:
            break
        capacity = n_rec
    rec = rec[:n_rec]
    trades = pd.DataFrame({
        "ts": a.sessions[rec[:, K.C_T].astype(np.int64)],
        "symbol": np.asarray(a.symbols, dtype=object)[rec[:, K.C_J].astype(np.int64)],
        "side": np.asarray(K.SIDES, dtype=object)[rec[:, K.C_SIDE].astype(np.int64)],
        "shares_requested": rec[:, K.C_REQ], "shares_filled": rec[:, K.C_FILLED], "price": rec[:, K.C_PRICE],
        "value": rec[:, K.C_VALUE], "commission": rec[:, K.C_COMM], "stamp_duty": rec[:, K.C_STAMP],
        "transfer_fee": rec[:, K.C_TRANSFER], "sec_fee": rec[:, K.C_SEC], "slippage": rec[:, K.C_SLIP],
        "impact": rec[:, K.C_IMPACT], "borrow_fee": 0.0, "total_cost": rec[:, K.C_TOTAL],
        "status": np.asarray(K.STATUSES, dtype=object)[rec[:, K.C_STATUS].astype(np.int64)],
        "reason": np.asarray(K.REASONS, dtype=object)[rec[:, K.C_REASON].astype(np.int64)],
        "value_requested": rec[:, K.C_VALUE_REQ],
    })
    return eq, cash, cost, traded, gross, pos, trades


def _benchmark(config: BacktestConfig, sessions: pd.DatetimeIndex, bars: pd.DataFrame,
               benchmark_bars: pd.DataFrame | None) -> pd.Series | None:
    if config.benchmark is None and benchmark_bars is None:
        return None
    src = benchmark_bars if benchmark_bars is not None else bars
    if config.benchmark is not None:
        src = src[src["symbol"].astype(str) == config.benchmark]
    if len(src) == 0:
        raise BacktestConfigError(f"benchmark '{config.benchmark}' has no bars")
    s = pd.Series(src["close"].to_numpy(dtype="float64"), index=pd.DatetimeIndex(src["ts"])).sort_index()
    s = s[~s.index.duplicated(keep="last")]
    return s.reindex(s.index.union(sessions)).ffill().reindex(sessions).rename("benchmark")


def _result(a: _Arrays, config: BacktestConfig, eq, cash, cost, traded, gross, pos, trades, benchmark) -> BacktestResult:
    idx = pd.DatetimeIndex(a.sessions, name="ts")
    equity = pd.Series(eq, index=idx, name="equity")
    prev_equity = np.r_[config.cash, eq[:-1]]
    with np.errstate(invalid="ignore", divide="ignore"):
        turnover = traded / prev_equity
        exposure = gross / eq
    stale = np.flatnonzero((pos[-1] != 0) & ~np.isfinite(a.close[-20:]).any(axis=0))
    if len(stale):
        a.warnings.append(f"{len(stale)} position(s) end in symbols without a bar in the last 20 sessions (delisted or "
                          f"long suspended, e.g. {a.symbols[stale[0]]}); they stay marked at their last close")
    ti, ji = np.nonzero(pos)
    shares = pos[ti, ji]
    value = shares * a.mark[ti, ji]
    positions = pd.DataFrame({"ts": idx[ti], "symbol": np.asarray(a.symbols, dtype=object)[ji], "shares": shares,
                              "value": value, "weight": value / eq[ti]})
    borrow = np.asarray(cost) - trades.groupby("ts")["total_cost"].sum().reindex(idx, fill_value=0.0).to_numpy()
    return BacktestResult(
        config=config, equity=equity, cash=pd.Series(cash, index=idx, name="cash"), benchmark=benchmark,
        positions=positions, trades=trades.reset_index(drop=True), turnover=pd.Series(turnover, index=idx, name="turnover"),
        costs=pd.Series(cost, index=idx, name="costs"), exposure=pd.Series(exposure, index=idx, name="exposure"),
        borrow_fees=pd.Series(np.maximum(borrow, 0.0), index=idx, name="borrow_fees"), warnings=a.warnings)


def load_from_store(scores: pd.DataFrame, store, config: BacktestConfig) -> dict:
    """Bars (with 60 days of history before `config.start`), instruments, flags and benchmark bars for
    `scores`, read from `store`; fills `config.benchmark` from the store meta when unset."""
    symbols = sorted(pd.unique(scores["symbol"].astype(str)))
    start = None if config.start is None else pd.Timestamp(config.start) - pd.Timedelta(days=60)
    bars = store.bars(symbols, start=start, end=config.end)
    if len(bars) == 0:
        raise BacktestConfigError(f"the store at {store.root} has no daily bars for the signals' symbols")
    if config.benchmark is None and store.meta().get("benchmark"):
        config.benchmark = store.meta()["benchmark"]
    bench = None
    if config.benchmark:
        bench = store.bars([config.benchmark], start=start, end=config.end)
        if len(bench) == 0:
            raise BacktestConfigError(f"benchmark '{config.benchmark}' has no bars in the store at {store.root}")
    instruments, flags = store.instruments(), store.flags()
    return {"bars": bars, "instruments": instruments if len(instruments) else None,
            "flags": flags if len(flags) else None, "benchmark_bars": bench}


def backtest_from_store(scores: pd.DataFrame, store, config: BacktestConfig) -> BacktestResult:
    """`run_backtest` with bars, instruments, flags and the benchmark read from `store`."""
    return run_backtest(scores, config=config, **load_from_store(scores, store, config))
