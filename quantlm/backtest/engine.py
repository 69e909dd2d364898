"""The backtest engine: scores -> strategy -> orders -> exchange -> portfolio, bar by bar.

Timing: the score at bar t is known after t's close (its decision cut-off). Orders generated from it
fill on the next bar t+1: at its open (`fill="open"`, default), its close (`"close"`), or a VWAP proxy
(`"vwap"`: amount / volume when amount is known, else (open + high + low + close) / 4). Whether a
fill is at the price limit is judged at the fill price, never at a later price. Bars are daily or
intraday: T+1, the IPO window and `hold_thresh` count dates (sessions), not bars.

Corporate actions: when a symbol's adj_factor steps between two of its bars, holdings follow the
action before the bar trades (`config.corporate_actions`: "cash" = bonus shares as shares and the
rest as a cash dividend, "reinvest" = all as shares, "off" = raw shares as before; see
`kernel.corporate_action_split`). Buy-and-hold then earns the adjusted-close return.

`run_backtest` computes per-bar inputs on the long bar rows (`prepare`), then runs the numba kernel
(`engine="numba"`, default) or the plain-Python reference loop over the same objects live trading
uses (`engine="python"`) over chunks of whole dates; the two give the same results (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantlm.backtest import kernel as K
from quantlm.backtest.costs import CostModel, cost_model
from quantlm.backtest.exchange import TRADE_COLUMNS
from quantlm.backtest.hedge import HEDGES, HedgeConfig, attach_hedge
from quantlm.backtest.prepare import MAX_CHUNK_CELLS, Prepared, PrepareError, _ns, iter_chunks, prepare
from quantlm.backtest.reference import ReferenceRunner
from quantlm.backtest.rules import MarketRules, market_rules
from quantlm.data.schema import FREQS

STRATEGIES = ("topk", "threshold", "weights")
FILLS = ("open", "close", "vwap")
CORPORATE_ACTIONS = K.CA_MODES


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
    corporate_actions: str = "cash"  # cash | reinvest | off: how adj_factor steps reach holdings (kernel docstring)
    freq: str | None = None  # bar frequency read from a store (None: the signals' and store's, see load_from_store)
    hedge: str = "none"  # none | benchmark (short benchmark future, overlay) | long_short (us/crypto); see backtest.hedge
    hedge_settings: HedgeConfig | None = None  # benchmark hedge costs/margin/rolls (None: hedge_preset(market))

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
        if self.freq is not None and self.freq not in FREQS:
            bad(f"unknown freq '{self.freq}' (expected one of {', '.join(FREQS)})")
        if self.hedge not in HEDGES:
            bad(f"unknown hedge '{self.hedge}' (expected one of {', '.join(HEDGES)})")
        if self.hedge == "long_short" and (self.strategy != "topk" or not self.market_rules().allow_short):
            bad("hedge long_short needs strategy topk and a market that allows shorting (us, crypto); "
                f"'{self.market}' does not (A-shares cannot be shorted in general: use hedge benchmark)"
                if self.strategy == "topk" else f"hedge long_short needs strategy topk, got '{self.strategy}'")
        if self.corporate_actions not in CORPORATE_ACTIONS:
            bad(f"unknown corporate_actions '{self.corporate_actions}' (expected one of {', '.join(CORPORATE_ACTIONS)})")


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
    # cash credited (dividends, cash in lieu of fractional bonus shares) or paid (shorts) at adj_factor steps
    corporate_action_cash: pd.Series = field(default_factory=lambda: pd.Series(dtype="float64"))
    warnings: list[str] = field(default_factory=list)
    book: str = "long_only"  # long_only | hedged (benchmark overlay) | long_short
    hedged: BacktestResult | None = None  # the hedged book when config.hedge != "none" (backtest.hedge)
    hedge_detail: pd.DataFrame | None = None  # hedged books: per-bar accounts (long value, margin, notional, ...)

    def deployed(self) -> BacktestResult:
        """The book the config deploys: the hedged book when there is one, else this one."""
        return self.hedged if self.hedged is not None else self

    def returns(self) -> pd.Series:
        """Simple session returns of equity (the first session against the initial cash)."""
        prev = self.equity.shift(1)
        prev.iloc[:1] = self.config.cash
        return (self.equity / prev - 1.0).rename("returns")


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
    ip = np.zeros(8, dtype=np.int64)
    ip[K.I_STRATEGY] = STRATEGIES.index(config.strategy)
    ip[K.I_TOPK], ip[K.I_NDROP], ip[K.I_HOLD] = config.topk, config.n_drop, config.hold_thresh
    ip[K.I_ALLOW_SHORT], ip[K.I_T_PLUS], ip[K.I_ODD_LOT] = int(config.shorting()), r.t_plus, int(r.odd_lot_sell)
    ip[K.I_CA_MODE] = CORPORATE_ACTIONS.index(config.corporate_actions)
    return fp, ip


@dataclass
class _Outputs:
    """Per-bar series and per-order records of a run, filled chunk by chunk."""

    equity: list = field(default_factory=list)
    cash: list = field(default_factory=list)
    costs: list = field(default_factory=list)
    traded: list = field(default_factory=list)
    gross: list = field(default_factory=list)
    ca_cash: list = field(default_factory=list)
    pos_t: list = field(default_factory=list)
    pos_j: list = field(default_factory=list)
    pos_shares: list = field(default_factory=list)
    pos_value: list = field(default_factory=list)
    trades: list = field(default_factory=list)
    mark: np.ndarray | None = None  # last close per symbol carried across chunks

    def add_positions(self, chunk, positions: np.ndarray) -> None:
        """Record the non-zero positions of a chunk, valued at the last close known at each bar."""
        n = positions.shape[1]
        close = np.vstack([np.full((1, n), np.nan) if self.mark is None else self.mark[None, :], chunk.close])
        marks = _ffill(close)[1:]
        self.mark = marks[-1].copy()
        ti, ji = np.nonzero(positions)
        self.pos_t.append(ti + chunk.start)
        self.pos_j.append(ji)
        self.pos_shares.append(positions[ti, ji])
        self.pos_value.append(positions[ti, ji] * marks[ti, ji])


def _ffill(a: np.ndarray) -> np.ndarray:
    """Forward-fill NaNs down each column."""
    idx = np.where(np.isfinite(a), np.arange(a.shape[0])[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    return a[idx, np.arange(a.shape[1])[None, :]]


def run_backtest(scores: pd.DataFrame, bars: pd.DataFrame, config: BacktestConfig | None = None,
                 instruments: pd.DataFrame | None = None, flags: pd.DataFrame | None = None,
                 benchmark_bars: pd.DataFrame | None = None, engine: str = "numba",
                 max_chunk_cells: int = MAX_CHUNK_CELLS) -> BacktestResult:
    """Backtest `scores` (symbol, ts, score | weight) on `bars` (canonical schema) under `config`.

    Daily or intraday bars; the bar loop runs over chunks of whole dates of at most `max_chunk_cells`
    bars x symbols, so memory does not grow with a dense bars x all-symbols grid.
    """
    config = config or BacktestConfig()
    config.validate()
    try:
        p = prepare(scores, bars, config, instruments, flags)
    except PrepareError as e:
        raise BacktestConfigError(str(e)) from None
    if engine == "numba":
        out = _run_numba(p, config, max_chunk_cells)
    elif engine == "python":
        out = _Outputs()
        runner = ReferenceRunner(p, config)
        for chunk in iter_chunks(p, max_chunk_cells):
            runner.run_chunk(chunk, out)
    else:
        raise BacktestConfigError(f"unknown engine '{engine}' (expected numba or python)")
    result = _result(p, config, out, benchmark=_benchmark(config, p.sessions, bars, benchmark_bars))
    attach_hedge(result, scores, lambda s, c: run_backtest(s, bars, c, instruments, flags, benchmark_bars, engine,
                                                           max_chunk_cells))
    return result


def run_signal_grid(signals: pd.DataFrame, bars: pd.DataFrame, config: BacktestConfig) -> pd.DataFrame:
    """Equity curves [session x variant] of many score variants for ONE symbol (parameter grids).

    `signals` is wide: index = ts, one column of scores per variant; `bars` holds that symbol's bars.
    Each column is exactly `run_backtest` of that column (checked in tests), sharing the prepared inputs.
    """
    config.validate()
    symbols = pd.unique(bars["symbol"].astype(str))
    if len(symbols) != 1:
        raise BacktestConfigError(f"run_signal_grid needs bars of exactly one symbol, got {len(symbols)}")
    long = pd.DataFrame({"symbol": symbols[0], "ts": pd.DatetimeIndex(signals.index), "score": 0.0})
    p = prepare(long, bars, config)
    values = signals.to_numpy(dtype="float64")
    out = np.empty((len(p.sessions), values.shape[1]))
    base_t = p.score_t.copy()
    keep_rows = _grid_rows(long, p, bars)
    for k in range(values.shape[1]):
        v = values[keep_rows, k]
        ok = np.isfinite(v)
        p.score_t, p.score_j, p.score = base_t[ok], np.zeros(int(ok.sum()), dtype=np.int64), v[ok]
        res = _run_numba(p, config, MAX_CHUNK_CELLS, record=False)
        out[:, k] = np.concatenate(res.equity)
    return pd.DataFrame(out, index=pd.DatetimeIndex(p.sessions, name="ts"), columns=signals.columns)


def _grid_rows(long: pd.DataFrame, p: Prepared, bars: pd.DataFrame) -> np.ndarray:
    """Rows of `long` (one per signal timestamp) that `prepare` kept, in its score order."""
    all_ts = np.unique(_ns(bars["ts"]))
    st = np.searchsorted(all_ts, _ns(long["ts"]), side="right") - 1
    lo = np.searchsorted(all_ts, p.sessions.asi8[0])
    rows = np.flatnonzero((st >= lo) & (st < lo + len(p.sessions)))
    return rows[np.argsort(st[rows], kind="stable")]


class KernelState:
    """The account and pending orders carried from one kernel chunk to the next (numpy arrays)."""

    def __init__(self, n: int, cash: float) -> None:
        self.scal = np.array([cash, 0.0])
        self.shares, self.sellable = np.zeros(n), np.zeros(n)
        self.held_days = np.zeros(n, dtype=np.int64)
        self.last_price = np.full(n, np.nan)
        self.o_j, self.o_side = np.zeros(2 * n + 1, dtype=np.int64), np.zeros(2 * n + 1, dtype=np.int64)
        self.o_shares, self.o_value = np.zeros(2 * n + 1), np.zeros(2 * n + 1)

    def copy(self) -> KernelState:
        other = KernelState.__new__(KernelState)
        other.__dict__ = {k: v.copy() for k, v in self.__dict__.items()}
        return other


def _run_numba(p: Prepared, config: BacktestConfig, max_chunk_cells: int = MAX_CHUNK_CELLS,
               record: bool = True) -> _Outputs:
    fp, ip = _params(config, len(p.symbols))
    n = len(p.symbols)
    per_bar = n if config.strategy != "topk" else min(n, config.topk + 2 * config.n_drop)
    state = KernelState(n, config.cash)
    out = _Outputs()
    for ch in iter_chunks(p, max_chunk_cells):
        n_t = len(ch.sessions)
        capacity = max(64, n_t * per_bar // 4) if record else 1
        while True:
            before = state.copy() if record else state
            eq, cash, cost, traded, gross, ca, pos, rec, n_rec = K.run_kernel(
                ch.fill_price, ch.close, ch.volume, ch.limit_up, ch.limit_down, ch.sigma, ch.score, ch.has_score,
                ch.new_date, ch.day_end, ch.ca_ratio, ch.stamp_rate, ch.sec_rate, ch.transfer_rate, ch.borrow_years,
                p.buy_step, p.buy_min, p.sell_step, p.sell_min, fp, ip, capacity, state.scal, state.shares,
                state.sellable, state.held_days, state.last_price, state.o_j, state.o_side, state.o_shares,
                state.o_value, ch.last)
            if not record or n_rec <= capacity:
                break
            state, capacity = before, n_rec
        for lst, v in zip((out.equity, out.cash, out.costs, out.traded, out.gross, out.ca_cash),
                          (eq, cash, cost, traded, gross, ca)):
            lst.append(v)
        if record:
            out.add_positions(ch, pos)
            out.trades.append(_trades_frame(rec[:n_rec], ch.sessions, p.symbols))
    return out


def _trades_frame(rec: np.ndarray, sessions: pd.DatetimeIndex, symbols: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "ts": sessions[rec[:, K.C_T].astype(np.int64)],
        "symbol": np.asarray(symbols, dtype=object)[rec[:, K.C_J].astype(np.int64)],
        "side": np.asarray(K.SIDES, dtype=object)[rec[:, K.C_SIDE].astype(np.int64)],
        "shares_requested": rec[:, K.C_REQ], "shares_filled": rec[:, K.C_FILLED], "price": rec[:, K.C_PRICE],
        "value": rec[:, K.C_VALUE], "commission": rec[:, K.C_COMM], "stamp_duty": rec[:, K.C_STAMP],
        "transfer_fee": rec[:, K.C_TRANSFER], "sec_fee": rec[:, K.C_SEC], "slippage": rec[:, K.C_SLIP],
        "impact": rec[:, K.C_IMPACT], "borrow_fee": 0.0, "total_cost": rec[:, K.C_TOTAL],
        "status": np.asarray(K.STATUSES, dtype=object)[rec[:, K.C_STATUS].astype(np.int64)],
        "reason": np.asarray(K.REASONS, dtype=object)[rec[:, K.C_REASON].astype(np.int64)],
        "value_requested": rec[:, K.C_VALUE_REQ],
    })


def _benchmark(config: BacktestConfig, sessions: pd.DatetimeIndex, bars: pd.DataFrame,
               benchmark_bars: pd.DataFrame | None) -> pd.Series | None:
    """Benchmark closes on the backtest's bars (last close at or before each bar; a daily benchmark on
    intraday bars gives each bar its date's close, so per-date metrics compare like with like)."""
    if config.benchmark is None and benchmark_bars is None:
        return None
    src = benchmark_bars if benchmark_bars is not None else bars
    if config.benchmark is not None:
        src = src[src["symbol"].astype(str) == config.benchmark]
    if len(src) == 0:
        raise BacktestConfigError(f"benchmark '{config.benchmark}' has no bars")
    s = pd.Series(src["close"].to_numpy(dtype="float64"), index=pd.DatetimeIndex(src["ts"])).sort_index()
    s = s[~s.index.duplicated(keep="last")]
    daily_on_intraday = (s.index == s.index.normalize()).all() and (sessions != sessions.normalize()).any()
    if daily_on_intraday:
        return pd.Series(s.reindex(sessions.normalize()).to_numpy(), index=sessions, name="benchmark").ffill()
    return s.reindex(s.index.union(sessions)).ffill().reindex(sessions).rename("benchmark")


def _result(p: Prepared, config: BacktestConfig, out: _Outputs, benchmark) -> BacktestResult:
    idx = pd.DatetimeIndex(p.sessions, name="ts")
    eq, cash, cost, traded, gross, ca = (np.concatenate(x) for x in (out.equity, out.cash, out.costs, out.traded,
                                                                     out.gross, out.ca_cash))
    prev_equity = np.r_[config.cash, eq[:-1]]
    with np.errstate(invalid="ignore", divide="ignore"):
        turnover = traded / prev_equity
        exposure = gross / eq
    ti, ji = np.concatenate(out.pos_t), np.concatenate(out.pos_j)
    shares, value = np.concatenate(out.pos_shares), np.concatenate(out.pos_value)
    final = ti == len(idx) - 1
    stale = np.flatnonzero(np.isin(np.arange(len(p.symbols)), ji[final]) & (p.last_bar < len(idx) - 20))
    warnings = list(p.warnings)
    if len(stale):
        warnings.append(f"{len(stale)} position(s) end in symbols without a bar in the last 20 sessions (delisted or "
                        f"long suspended, e.g. {p.symbols[stale[0]]}); they stay marked at their last close")
    positions = pd.DataFrame({"ts": idx[ti], "symbol": np.asarray(p.symbols, dtype=object)[ji], "shares": shares,
                              "value": value, "weight": value / eq[ti]})
    trades = pd.concat(out.trades, ignore_index=True) if out.trades else pd.DataFrame(columns=list(TRADE_COLUMNS))
    borrow = cost - trades.groupby("ts")["total_cost"].sum().reindex(idx, fill_value=0.0).to_numpy()
    return BacktestResult(
        config=config, equity=pd.Series(eq, index=idx, name="equity"), cash=pd.Series(cash, index=idx, name="cash"),
        benchmark=benchmark, positions=positions, trades=trades.reset_index(drop=True),
        turnover=pd.Series(turnover, index=idx, name="turnover"), costs=pd.Series(cost, index=idx, name="costs"),
        exposure=pd.Series(exposure, index=idx, name="exposure"),
        borrow_fees=pd.Series(np.maximum(borrow, 0.0), index=idx, name="borrow_fees"),
        corporate_action_cash=pd.Series(ca, index=idx, name="corporate_action_cash"), warnings=warnings)


# store reads live in backtest.store_inputs; re-exported here for existing imports
from quantlm.backtest.store_inputs import backtest_from_store, load_from_store, store_freq  # noqa: E402,F401
