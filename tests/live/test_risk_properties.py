"""Property tests of the live risk manager: no generated sequence of orders, prices and clock steps
gets an order past an enabled rule.

Hypothesis draws a config (each rule off or tight) and a sequence of steps. The test plays the engine:
accepted orders are submitted (active), held orders wait in review, and fills, cancels, state changes,
kills, manual resumes, restarts (state_dict through JSON) and new sessions happen in between. It keeps
its own book (positions, active orders, counters, trading state, pause latches) and checks every
accepted or held order against it.
"""

from __future__ import annotations

import json
import math

import pandas as pd
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from quantlm.live.risk import RiskConfig, RiskManager
from quantlm.live.types import AccountView, MarketView, Order, TradingState

SYMBOLS = ("600000.SH", "000001.SZ", "688001.SH")
PREV = (10.0, 50.0, 120.0)
EQUITY = 10_000_000.0
SLACK = 1e-9
DIR = {"buy": 1, "cover": 1, "sell": -1, "short": -1}


def _cfg(kw: dict) -> RiskConfig:
    if kw["resume_move"] is not None and kw["pause_move"] is not None:
        kw["resume_move"] = min(kw["resume_move"], kw["pause_move"], kw["market_pause_move"] or 1.0)
    return RiskConfig(**kw)


configs = st.fixed_dictionaries({
    "review_threshold": st.sampled_from([None, 200_000.0, 1_000_000.0]),
    "max_order_value": st.sampled_from([None, 3_000_000.0]),
    "max_order_shares": st.sampled_from([None, 20_000.0, 50_000.0]),
    "price_collar": st.sampled_from([None, 0.02, 0.05]),
    "pause_move": st.sampled_from([None, 0.03, 0.05]),
    "market_pause_move": st.sampled_from([None, 0.03, 0.05]),
    "resume_move": st.sampled_from([None, 0.0, 0.01]),
    "pause_allows_reducing": st.booleans(),
    "max_position_fraction": st.sampled_from([None, 0.05, 0.2]),
    "max_daily_turnover": st.sampled_from([None, 0.1, 0.3]),
    "max_orders_per_second": st.sampled_from([None, 2, 5]),
    "max_active_orders": st.sampled_from([None, 2, 4]),
    "max_cancels_per_symbol_day": st.sampled_from([None, 1, 3]),
    "max_daily_orders": st.sampled_from([None, 4, 10]),
    "max_daily_trades": st.sampled_from([None, 2, 6]),
    "duplicate_window_s": st.sampled_from([None, 0.5, 2.0]),
}).map(_cfg)

sym = st.integers(0, len(SYMBOLS) - 1)
order_step = st.tuples(st.just("order"), sym, st.sampled_from(["buy", "sell", "short", "cover"]),
                       st.sampled_from(["shares", "value", "position"]),  # position: a fraction of it
                       st.one_of(st.integers(1, 50), st.integers(1, 700)),  # lots of 100 (shares-sized)
                       st.one_of(st.floats(10_000, 300_000), st.floats(10_000, 4_000_000)),  # currency
                       st.floats(0.2, 1.2),  # fraction of the position (position-sized)
                       st.one_of(st.none(), st.floats(-0.07, 0.07)))  # limit offset from the last price
STEPS = {
    "order": order_step,
    "again": st.tuples(st.just("again")),  # the previous order's request under a new client id
    "price": st.tuples(st.just("price"), sym, st.floats(-0.1, 0.1)),
    "bench": st.tuples(st.just("bench"), st.floats(-0.08, 0.08)),
    "tick": st.tuples(st.just("tick"), st.integers(0, 1500)),  # milliseconds of the engine clock
    "fill": st.tuples(st.just("fill"), st.integers(0, 9), st.floats(0.1, 1.0)),
    "cancel": st.tuples(st.just("cancel"), st.integers(0, 9)),
    "state": st.tuples(st.just("state"), st.sampled_from([*[TradingState.ACTIVE] * 3, TradingState.REDUCING,
                                                          TradingState.REDUCING, TradingState.HALTED, "kill"])),
    "resume": st.tuples(st.just("resume"), st.one_of(st.none(), sym)),
    "restart": st.tuples(st.just("restart")),
    "session": st.tuples(st.just("session")),
}
WEIGHTS = {"order": 12, "again": 2, "price": 2, "bench": 1, "tick": 4, "fill": 4, "cancel": 2, "state": 1,
           "resume": 1, "restart": 1, "session": 1}


def steps_with(**weights: int) -> st.SearchStrategy:
    """Sequences of steps drawn with these weights (default WEIGHTS)."""
    w = {**WEIGHTS, **weights}
    step = st.sampled_from([k for k, n in w.items() for _ in range(n)]).flatmap(STEPS.__getitem__)
    return st.lists(step, min_size=30, max_size=150)


OFF = {k: None for k in ("review_threshold", "max_order_value", "max_order_shares", "price_collar", "pause_move",
                         "market_pause_move", "max_position_fraction", "max_daily_turnover", "max_orders_per_second",
                         "max_active_orders", "max_cancels_per_symbol_day", "max_daily_orders", "max_daily_trades",
                         "duplicate_window_s")}
# exposure rules alone, so that active orders pile up: position and turnover count them, REDUCING too
exposure_configs = st.fixed_dictionaries({
    "max_position_fraction": st.sampled_from([0.03, 0.05]),
    "max_daily_turnover": st.sampled_from([None, 0.1, 0.2]),
}).map(lambda kw: RiskConfig(**{**OFF, **kw}))
# pauses alone, with moves often near the thresholds
pause_configs = st.fixed_dictionaries({
    "pause_move": st.sampled_from([0.03, 0.05]),
    "market_pause_move": st.sampled_from([None, 0.03, 0.05]),
    "resume_move": st.sampled_from([None, 0.0, 0.01, 0.02]),
    "pause_allows_reducing": st.booleans(),
}).map(lambda kw: RiskConfig(**{**OFF, **kw}))


class Book:
    """The test's own record of what the engine did (independent of the manager's counters)."""

    def __init__(self, cfg: RiskConfig) -> None:
        self.cfg = cfg
        self.prev = dict(zip(SYMBOLS, PREV, strict=True))
        self.last = dict(self.prev)
        self.bench_prev = self.bench_last = 4000.0
        self.pos: dict[str, float] = {}
        self.active: dict[str, dict] = {}  # client id -> order, t, ref price, filled shares / value
        self.passed: list[float] = []  # clock of every accepted or held order
        self.t = self.traded = 0.0
        self.orders = self.trades = self.n = 0
        self.cancels: dict[str, int] = {}
        self.latch: dict[str, bool] = {}
        self.resumed: set[str] = set()
        self.state = TradingState.ACTIVE

    def now(self) -> pd.Timestamp:
        return pd.Timestamp("2024-03-04 09:30") + pd.Timedelta(seconds=self.t)

    def remaining_shares(self, a: dict, price: float) -> float:
        o = a["order"]
        return o.shares - a["filled_shares"] if o.shares > 0 else (o.value - a["filled_value"]) / price

    def pending(self, symbol: str, pred, price: float) -> float:
        return sum(self.remaining_shares(a, price) for a in self.active.values()
                   if a["order"].symbol == symbol and pred(a["order"].side))

    def update_latch(self, key: str, m: float, pause_at: float | None) -> None:
        if not pause_at or key in self.resumed:
            return
        resume_at = pause_at / 2 if self.cfg.resume_move is None else self.cfg.resume_move
        if m >= pause_at * (1 - SLACK):
            self.latch[key] = True
        elif m < resume_at:
            self.latch[key] = False


def reduces(book: Book, o: Order, price: float) -> bool:
    """Independent 'only shrinks a position' (same-side active orders count as filled)."""
    if o.side not in ("sell", "cover"):
        return False
    q = o.shares if o.shares > 0 else o.value / price
    pos = book.pos.get(o.symbol, 0.0)
    room = (pos if o.side == "sell" else -pos) - book.pending(o.symbol, lambda s: s == o.side, price)
    return room > 0 and q <= room * (1 + SLACK)


def check_invariants(book: Book, o: Order, action: str) -> None:
    """Every enabled rule holds for an order that was accepted (or held for review)."""
    c = book.cfg
    last = book.last[o.symbol]
    price = o.limit_price if math.isfinite(o.limit_price) else last
    shares = o.shares if o.shares > 0 else o.value / price
    value = o.value if o.value > 0 else o.shares * price
    red = reduces(book, o, price)
    assert book.state != TradingState.HALTED
    assert book.state != TradingState.REDUCING or red
    if action == "accept":
        assert not c.review_threshold or value < c.review_threshold, "at or above the threshold must be held"
    else:
        assert c.review_threshold and value >= c.review_threshold
    assert not c.max_order_value or value <= c.max_order_value
    assert not c.max_order_shares or shares <= c.max_order_shares * (1 + SLACK)
    if c.price_collar and math.isfinite(o.limit_price):
        assert abs(o.limit_price / last - 1) <= c.price_collar * (1 + SLACK)
    if not (red and c.pause_allows_reducing):
        assert not (c.pause_move and book.latch.get(o.symbol))
        assert not (c.market_pause_move and book.latch.get("market"))
        sym_move = abs(last / book.prev[o.symbol] - 1)
        bench_move = abs(book.bench_last / book.bench_prev - 1)
        assert not c.pause_move or o.symbol in book.resumed or sym_move < c.pause_move * (1 - SLACK)
        assert not c.market_pause_move or "market" in book.resumed or bench_move < c.market_pause_move * (1 - SLACK)
    if c.max_position_fraction and not red:
        d = DIR[o.side]
        after = book.pos.get(o.symbol, 0.0) + d * (book.pending(o.symbol, lambda s: DIR[s] == d, price) + shares)
        assert abs(after) * price <= c.max_position_fraction * EQUITY * (1 + SLACK)
    if c.max_daily_turnover:
        pending_value = sum(
            (a["order"].value - a["filled_value"]) if a["order"].shares <= 0
            else (a["order"].shares - a["filled_shares"]) * (price if a["order"].symbol == o.symbol else a["ref"])
            for a in book.active.values())
        assert book.traded + pending_value + value <= c.max_daily_turnover * EQUITY * (1 + SLACK)
    if c.max_orders_per_second:
        assert len([t for t in book.passed if t > book.t - 1.0]) < c.max_orders_per_second
    assert not c.max_active_orders or len(book.active) < c.max_active_orders
    assert not c.max_daily_orders or book.orders < c.max_daily_orders
    assert not c.max_daily_trades or book.trades < c.max_daily_trades
    assert not c.max_cancels_per_symbol_day or book.cancels.get(o.symbol, 0) < c.max_cancels_per_symbol_day
    for a in book.active.values() if c.duplicate_window_s else ():
        b = a["order"]
        same = (b.symbol, b.side, b.shares, b.value) == (o.symbol, o.side, o.shares, o.value) and (
            b.limit_price == o.limit_price or (math.isnan(b.limit_price) and math.isnan(o.limit_price)))
        assert not (same and book.t - a["t"] < c.duplicate_window_s)


def finish(book: Book, rm: RiskManager, cid: str, cancelled: bool) -> None:
    a = book.active.pop(cid)
    if cancelled:
        rm.on_cancel(a["order"], book.now())
        book.cancels[a["order"].symbol] = book.cancels.get(a["order"].symbol, 0) + 1
    rm.on_order_done(a["order"])


def place(book: Book, rm: RiskManager, s: tuple) -> None:
    _, k, side, sizing, lots, value, frac, off = s
    symbol = SYMBOLS[k]
    last = book.last[symbol]
    shares = lots * 100.0 if sizing == "shares" else 0.0
    if sizing == "position":
        shares = max(round(abs(book.pos.get(symbol, 0.0)) * frac), 100.0)
    book.n += 1
    o = Order(f"c{book.n}", symbol, side, shares=shares, value=value if sizing == "value" else 0.0,
              limit_price=math.nan if off is None else round(last * (1 + off), 2))
    acct = AccountView(cash=EQUITY, equity=EQUITY, positions=dict(book.pos), traded_today=book.traded)
    d = rm.check(o, MarketView(last, book.prev[symbol]), acct, book.now(), MarketView(book.bench_last, book.bench_prev))
    book.update_latch(symbol, abs(last / book.prev[symbol] - 1), book.cfg.pause_move)
    book.update_latch("market", abs(book.bench_last / book.bench_prev - 1), book.cfg.market_pause_move)
    event(f"{d.action} {d.rule}")
    assert d.action in ("accept", "hold", "reject") and (d.accepted or d.rule and d.reason)
    if d.action == "reject":
        return
    check_invariants(book, o, d.action)
    book.passed.append(book.t)
    if d.accepted:
        ref = o.limit_price if math.isfinite(o.limit_price) else last
        rm.on_submitted(o, book.now(), price=ref)
        book.active[o.client_id] = {"order": o, "t": book.t, "ref": ref, "filled_shares": 0.0, "filled_value": 0.0}
        book.orders += 1


def fill(book: Book, rm: RiskManager, k: int, frac: float) -> None:
    cid = list(book.active)[k % len(book.active)]
    a = book.active[cid]
    rem = book.remaining_shares(a, a["ref"])
    q = rem if frac > 0.95 else rem * frac
    o = a["order"]
    book.pos[o.symbol] = book.pos.get(o.symbol, 0.0) + DIR[o.side] * q
    book.traded += q * a["ref"]
    book.trades += 1
    a["filled_shares"] += q
    a["filled_value"] += q * a["ref"]
    rm.on_fill(o, q, a["ref"], book.now())
    if q == rem:
        finish(book, rm, cid, cancelled=False)


PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(configs, steps_with())
def test_no_sequence_gets_past_a_rule(cfg, steps):
    play(cfg, steps)


@PROPS
@given(exposure_configs, steps_with(tick=1, again=0, cancel=1, state=2, fill=3, resume=0))
def test_active_orders_count_toward_exposure(cfg, steps):
    play(cfg, steps)


@PROPS
@given(pause_configs, steps_with(price=8, bench=4, again=0, tick=1))
def test_pauses_hold_until_the_resume_rule(cfg, steps):
    play(cfg, steps)


def play(cfg: RiskConfig, steps: list[tuple]) -> None:
    """Feed `steps` through a RiskManager(cfg) as the engine would, checking every passed order."""
    rm = RiskManager(cfg)
    book = Book(cfg)
    rm.new_session("2024-03-04", start_equity=EQUITY)
    prev_order = None
    for s in steps:
        kind = s[0]
        if kind == "again" and prev_order is not None:
            kind, s = "order", prev_order
        if kind == "order":
            prev_order = s
            place(book, rm, s)
        elif kind == "price":
            book.last[SYMBOLS[s[1]]] = book.prev[SYMBOLS[s[1]]] * (1 + s[2])
        elif kind == "bench":
            book.bench_last = book.bench_prev * (1 + s[1])
        elif kind == "tick":
            book.t += s[1] / 1000
        elif kind == "fill" and book.active:
            fill(book, rm, s[1], s[2])
        elif kind == "cancel" and book.active:
            finish(book, rm, list(book.active)[s[1] % len(book.active)], cancelled=True)
        elif kind == "state" and s[1] != "kill":
            rm.set_state(s[1], book.now())
            book.state = s[1]
        elif kind == "state":  # the kill switch: halt, the engine cancels what it returns
            ids = rm.kill(book.now())
            book.state = TradingState.HALTED
            assert set(ids) == set(book.active)
            for cid in ids:
                finish(book, rm, cid, cancelled=True)
        elif kind == "resume":
            key = None if s[1] is None else SYMBOLS[s[1]]
            rm.resume(key, book.now())
            book.resumed |= {"market", *(k for k, v in book.latch.items() if v)} if key is None else {key}
            for k in book.resumed:
                book.latch[k] = False
        elif kind == "restart":
            d = json.loads(json.dumps(rm.state_dict()))
            rm = RiskManager(cfg)
            rm.load_state_dict(d)
        elif kind == "session":
            for cid in list(book.active):  # the engine expires what is left at the session end
                finish(book, rm, cid, cancelled=False)
            book.prev, book.bench_prev = dict(book.last), book.bench_last
            book.t += 86_400.0
            book.traded, book.orders, book.trades = 0.0, 0, 0
            book.cancels.clear()
            book.latch.clear()
            book.resumed.clear()
            rm.new_session(book.now().normalize(), start_equity=EQUITY)
        assert len(rm.active) == len(book.active)
        assert not book.cfg.max_active_orders or len(book.active) <= book.cfg.max_active_orders
