"""The live risk manager: every order passes `RiskManager.check` before it reaches the broker.

Units: shares are shares (never lots: 50_000 shares = 500 lots of 100); values, prices and equity are
in the account currency; moves, collars and position / turnover limits are fractions (0.05 = 5%).

Order of checks (the first rule that fails decides; `RiskDecision.rule` names it):

 0. `invalid`      unknown side, NaN size or no size (`check_validity`)
 1. `halted`       state HALTED rejects every order;
    `reducing`     state REDUCING rejects orders that do not shrink a position (`is_reducing`)
 2. `market_pause` the benchmark moved >= `market_pause_move` from its previous close;
    `pause_move`   the symbol moved >= `pause_move` (both exempt reducing orders when `pause_allows_reducing`)
 3. `price_collar` a limit price more than `price_collar` away from the last price
 4. `order_shares` more than `max_order_shares` shares
 5. `order_value`  value above the hard cap `max_order_value`
 6. `position`     |position + same-direction active orders + this order| x price / equity above
                   `max_position_fraction` (reducing orders are exempt)
 7. `turnover`     traded value today + active orders + this order above `max_daily_turnover` x the
                   equity at the start of the session
 8. `rate`         `max_orders_per_second` orders already passed in the last second of the engine clock
 9. `active_orders` `max_active_orders` orders already active
10. `daily_orders`, `daily_trades`, `cancels` vn.py's daily counters (all symbols; cancels per symbol)
11. `duplicate`    same symbol, side, shares, value and limit price as an active order submitted within
                   `duplicate_window_s` seconds
12. `review`       value >= `review_threshold`: HOLD for manual review (last, so that only orders that
                   pass every other rule are held)

An order is valued at its reference price: its limit price, else the market's last price
(`risk_rules.reference_price`); a value-sized order's shares are value / that price. "Reducing" means a
sell of a long or a cover of a short no larger than the position left after the same-side active
orders of the symbol (`RiskManager.reducing`); buys and shorts never reduce.

Pauses are latches with hysteresis, fed by every market view `check` (or `on_market`) sees: a symbol
pauses when |last / prev_close - 1| >= `pause_move` and stays paused until its move falls below
`resume_move` (default half the pause move; 0 = no automatic resume); the benchmark latch does the same
for all symbols. `resume(symbol)` lifts a pause by hand for the rest of the session (`resume()` lifts
the market pause and every symbol pause in force); `new_session` clears latches and manual resumes
(the move is measured from the new previous close).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import pandas as pd

from quantlm.live.risk_rules import (
    DIRECTION,
    EPS,
    MARKET,
    ActiveOrder,
    RiskConfig,
    check_validity,
    finite_pos,
    fmt,
    is_reducing,
    latch,
    move,
    order_shares,
    order_value,
    pct,
    reference_price,
)
from quantlm.live.types import AccountView, MarketView, Order, RiskDecision, TradingState

__all__ = ["RiskConfig", "RiskManager", "is_reducing"]

def _secs(ts: pd.Timestamp) -> float:
    return pd.Timestamp(ts).value / 1e9


class RiskManager:
    """Decides accept / hold / reject for each order and keeps the counters the rules need.

    `check()` is a decision from the manager's state; it changes only (a) the per-second window,
    which records every order it accepts or holds (keyed by client id, so re-checking an order does
    not count twice; rejected orders do not count, so a flood of bad orders cannot lock out exits),
    and (b) the pause latches, which follow the market views it is shown (`on_market` does the same
    without an order). The engine reports what happens next through the hooks: `on_submitted`
    (sent to the broker: active), `on_fill`, `on_cancel` (a confirmed cancel), `on_order_done`
    (terminal: leaves the active set), and `new_session` at each session start.
    `state_dict()` / `load_state_dict()` carry everything across restarts (HALTED stays HALTED).
    Approving or rejecting held orders is the engine's job (`config.review_mode` in replay).
    """

    def __init__(self, config: RiskConfig | None = None, clock: Callable[[], pd.Timestamp] | None = None) -> None:
        self.config = config if config is not None else RiskConfig()
        self.clock = clock
        self.state = TradingState.ACTIVE
        self.session: str | None = None
        self.start_equity: float = math.nan  # equity at the session start (currency)
        self.active: dict[str, ActiveOrder] = {}
        self._by_symbol: dict[str, list[ActiveOrder]] = {}  # the same records by symbol
        self._ref_total: float | None = None  # unfilled value of all active orders at their ref prices
        self._last: dict[str, float] = {}  # last price seen per symbol (values market orders on submit)
        self._window: deque[tuple[float, str]] = deque()  # (engine seconds, client id) passed checks
        self._window_ids: set[str] = set()
        self._paused: dict[str, bool] = {}  # symbol (or MARKET) -> paused
        self._resumed: set[str] = set()  # manual overrides until the session ends
        self.daily_orders = 0
        self.daily_trades = 0
        self.traded_today = 0.0  # currency, from on_fill
        self.cancels: dict[str, int] = {}
        self._cancelled: set[str] = set()
        self.events: list[dict] = []

    # -- state -----------------------------------------------------------------------------------
    def _now(self, now: pd.Timestamp | None) -> pd.Timestamp:
        if now is not None:
            return pd.Timestamp(now)
        if self.clock is None:
            raise ValueError("RiskManager needs `now` (or a clock)")
        return pd.Timestamp(self.clock())

    def _event(self, kind: str, detail: str, symbol: str = "", now: pd.Timestamp | None = None) -> None:
        self.events.append({"ts": None if now is None else str(now), "kind": kind, "symbol": symbol,
                            "detail": detail})

    def drain_events(self) -> list[dict]:
        """Pause / resume / state events since the last call (for the engine's journal)."""
        out, self.events = self.events, []
        return out

    def set_state(self, state: TradingState | str, now: pd.Timestamp | None = None) -> None:
        """Set the trading state (admins; HALTED persists through `state_dict`)."""
        state = TradingState(state)
        if state != self.state:
            self._event("state", f"{self.state.value} -> {state.value}", now=now)
        self.state = state

    def kill(self, now: pd.Timestamp | None = None) -> list[str]:
        """Kill switch: HALT, and return the client ids of the active orders for the engine to cancel
        (held orders live in the engine's review queue: it rejects those itself)."""
        self.set_state(TradingState.HALTED, now)
        return list(self.active)

    def resume(self, symbol: str | None = None, now: pd.Timestamp | None = None) -> None:
        """Lift a pause by hand until the session ends: one symbol, or (None) the market pause and every
        symbol pause in force now (symbols not paused now can still pause later in the session)."""
        keys = [symbol] if symbol is not None else [MARKET, *(k for k, v in self._paused.items() if v)]
        for k in keys:
            self._resumed.add(k)
            if self._paused.get(k):
                self._event("resume", "manual", "" if k == MARKET else k, now)
            self._paused[k] = False

    def paused(self, symbol: str) -> bool:
        """Whether new orders in `symbol` pause now (its own latch or the market's)."""
        return bool(self._paused.get(symbol) or self._paused.get(MARKET))

    def new_session(self, date: pd.Timestamp | str, start_equity: float | None = None) -> None:
        """Start a session: reset the daily counters, pause latches and manual resumes. The turnover
        base is `start_equity`, else the account equity at the first check of the session.
        Active orders stay (expiring them is the engine's job, through `on_order_done`)."""
        self.session = str(pd.Timestamp(date).date())
        self.start_equity = float(start_equity) if start_equity is not None else math.nan
        self.daily_orders = self.daily_trades = 0
        self.traded_today = 0.0
        self.cancels.clear()
        self._cancelled.clear()
        self._paused.clear()
        self._resumed.clear()

    # -- market ----------------------------------------------------------------------------------
    def _update_latch(self, key: str, view: MarketView | None, pause_at: float | None,
                      now: pd.Timestamp | None) -> None:
        if not pause_at or key in self._resumed:
            return
        m = move(view)
        was = self._paused.get(key, False)
        is_ = latch(was, m, pause_at, self.config.resume_at(pause_at))
        if is_ != was:
            self._paused[key] = is_
            what = f"move {pct(m)} {'>=' if is_ else '<'} {pct(pause_at if is_ else self.config.resume_at(pause_at))}"
            self._event("pause" if is_ else "resume", what, "" if key == MARKET else key, now)

    def on_market(self, symbol: str | None, market: MarketView | None, now: pd.Timestamp | None = None,
                  benchmark: MarketView | None = None) -> None:
        """Update the pause latches from a new bar (optional; `check` does it too)."""
        if symbol is not None:
            if market is not None:
                self._last[symbol] = market.last_price
            self._update_latch(symbol, market, self.config.pause_move, now)
        if benchmark is not None:
            self._update_latch(MARKET, benchmark, self.config.market_pause_move, now)

    # -- the check -------------------------------------------------------------------------------
    def _pending(self, symbol: str, direction: float, price: float) -> float:
        """Unfilled shares of active orders in `symbol` whose side moves the position in `direction`."""
        return sum(a.remaining_shares(price) for a in self._by_symbol.get(symbol, ())
                   if DIRECTION[a.side] == direction)

    def _pending_value(self, symbol: str, price: float) -> float:
        """Unfilled value of all active orders: `symbol`'s at `price`, the others at their ref prices."""
        if self._ref_total is None:
            self._ref_total = sum(a.remaining_value(math.nan) for a in self.active.values())
        mine = self._by_symbol.get(symbol, ())
        return (self._ref_total - sum(a.remaining_value(math.nan) for a in mine)
                + sum(a.remaining_value(price) for a in mine))

    def reducing(self, order: Order, position_shares: float, price: float) -> bool:
        """`is_reducing`, counting the same-side active orders of the symbol as already filled."""
        if order.side not in ("sell", "cover"):
            return False
        pending = sum(a.remaining_shares(price) for a in self._by_symbol.get(order.symbol, ())
                      if a.side == order.side)
        return is_reducing(order, position_shares, price, pending)

    def check(self, order: Order, market: MarketView, account: AccountView, now: pd.Timestamp | None = None,
              benchmark: MarketView | None = None) -> RiskDecision:
        """Accept, hold (manual review) or reject `order`, in the documented order of rules."""
        now = self._now(now)
        c = self.config
        self.on_market(order.symbol, market, now, benchmark)
        if c.check_validity and (bad := check_validity(order)):
            return RiskDecision("reject", "invalid", bad)
        price = reference_price(order, market)
        pos = float(account.positions.get(order.symbol, 0.0))
        reduce = self.reducing(order, pos, price)

        if self.state == TradingState.HALTED:
            return RiskDecision("reject", "halted", "trading is HALTED (kill switch): no new orders")
        if self.state == TradingState.REDUCING and not reduce:
            return RiskDecision("reject", "reducing", f"trading is REDUCING: {order.side} "
                                f"{fmt(order_shares(order, price))} {order.symbol} does not shrink position {fmt(pos)}")

        exempt = reduce and c.pause_allows_reducing
        if c.market_pause_move and self._paused.get(MARKET) and not exempt:
            return RiskDecision("reject", "market_pause", f"market paused: benchmark moved {pct(move(benchmark))} "
                                f"(pause at {pct(c.market_pause_move)}, resume below {pct(c.resume_at(c.market_pause_move))})")
        if c.pause_move and self._paused.get(order.symbol) and not exempt:
            return RiskDecision("reject", "pause_move", f"{order.symbol} paused: moved {pct(move(market))} from "
                                f"previous close (pause at {pct(c.pause_move)}, resume below {pct(c.resume_at(c.pause_move))})")

        if c.price_collar and finite_pos(order.limit_price):
            last = market.last_price
            if not finite_pos(last):
                return RiskDecision("reject", "price_collar", f"no last price for {order.symbol} to collar the limit")
            dist = abs(order.limit_price / last - 1)
            if dist > c.price_collar * (1 + EPS):
                return RiskDecision("reject", "price_collar", f"limit {order.limit_price:g} is {pct(dist)} from last "
                                    f"price {last:g} > collar {pct(c.price_collar)}")

        needs_price = any((c.max_order_shares and order.shares <= 0, c.max_order_value and order.value <= 0,
                           c.max_position_fraction and not reduce, c.max_daily_turnover,
                           c.review_threshold and order.value <= 0))
        if needs_price and not finite_pos(price):
            return RiskDecision("reject", "no_price", f"no price for {order.symbol} to value the order")
        shares = order_shares(order, price)
        value = order_value(order, price)
        if c.max_order_shares and shares > c.max_order_shares * (1 + EPS):
            return RiskDecision("reject", "order_shares",
                                f"order {fmt(shares)} shares > limit {fmt(c.max_order_shares)} shares")
        if c.max_order_value and value > c.max_order_value:
            return RiskDecision("reject", "order_value", f"order value {fmt(value)} > hard cap {fmt(c.max_order_value)}")
        if c.max_position_fraction and not reduce:
            d = DIRECTION[order.side]
            after = pos + d * (self._pending(order.symbol, d, price) + shares)
            eq = account.equity
            if not finite_pos(eq):
                return RiskDecision("reject", "position", f"equity {fmt(eq)} <= 0: no position limit room")
            frac = abs(after) * price / eq
            if frac > c.max_position_fraction * (1 + EPS):
                return RiskDecision("reject", "position", f"{order.symbol} position after the order {fmt(after)} "
                                    f"shares x {price:g} = {pct(frac)} of equity {fmt(eq)} > {pct(c.max_position_fraction)}")
        if c.max_daily_turnover:
            if math.isnan(self.start_equity):
                self.start_equity = float(account.equity)
            base = self.start_equity
            traded = max(self.traded_today, float(account.traded_today))
            pending = self._pending_value(order.symbol, price)
            total = traded + pending + value
            if not finite_pos(base) or total > c.max_daily_turnover * base * (1 + EPS):
                return RiskDecision("reject", "turnover", f"turnover today {fmt(traded)} + active {fmt(pending)} + "
                                    f"order {fmt(value)} = {fmt(total)} > {c.max_daily_turnover:g} x start equity {fmt(base)}")

        t = _secs(now)
        if c.max_orders_per_second:
            while self._window and self._window[0][0] <= t - 1.0:
                self._window_ids.discard(self._window.popleft()[1])
            if order.client_id not in self._window_ids and len(self._window) >= c.max_orders_per_second:
                return RiskDecision("reject", "rate", f"{len(self._window)} orders in the last second >= "
                                    f"limit {c.max_orders_per_second} per second")
        if c.max_active_orders and order.client_id not in self.active and len(self.active) >= c.max_active_orders:
            return RiskDecision("reject", "active_orders", f"{len(self.active)} active orders >= limit {c.max_active_orders}")
        if c.max_daily_orders and self.daily_orders >= c.max_daily_orders:
            return RiskDecision("reject", "daily_orders", f"{self.daily_orders} orders today >= limit {c.max_daily_orders}")
        if c.max_daily_trades and self.daily_trades >= c.max_daily_trades:
            return RiskDecision("reject", "daily_trades", f"{self.daily_trades} trades today >= limit {c.max_daily_trades}")
        n_cancel = self.cancels.get(order.symbol, 0)
        if c.max_cancels_per_symbol_day and n_cancel >= c.max_cancels_per_symbol_day:
            return RiskDecision("reject", "cancels", f"{n_cancel} cancels in {order.symbol} today >= limit "
                                f"{c.max_cancels_per_symbol_day}")
        if c.duplicate_window_s:
            for a in self._by_symbol.get(order.symbol, ()):
                if a.client_id != order.client_id and a.same_request(order) and t - a.submitted < c.duplicate_window_s:
                    return RiskDecision("reject", "duplicate", f"same as active order {a.client_id} submitted "
                                        f"{t - a.submitted:.3f} s ago (window {c.duplicate_window_s:g} s)")

        if c.max_orders_per_second and order.client_id not in self._window_ids:
            self._window.append((t, order.client_id))
            self._window_ids.add(order.client_id)
        if c.review_threshold and value >= c.review_threshold:
            return RiskDecision("hold", "review", f"order value {fmt(value)} >= review threshold {fmt(c.review_threshold)}")
        return RiskDecision("accept")

    # -- hooks -----------------------------------------------------------------------------------
    def on_submitted(self, order: Order, now: pd.Timestamp | None = None, price: float = math.nan) -> None:
        """The order went to the broker: it is active and counts toward today's orders (idempotent).
        `price` (currency) values it when it has no limit price (default: the last price `check` saw)."""
        if order.client_id in self.active:
            return
        now = self._now(now)
        if not finite_pos(price):
            price = self._last.get(order.symbol, math.nan)
        ref = float(order.limit_price) if finite_pos(order.limit_price) else float(price)
        self._add(ActiveOrder(order.client_id, order.symbol, order.side, float(order.shares), float(order.value),
                              float(order.limit_price), _secs(now), ref, float(order.filled_shares), 0.0))
        self.daily_orders += 1

    def on_fill(self, order: Order, shares: float, price: float, now: pd.Timestamp | None = None) -> None:
        """A fill of `shares` at `price`: one trade, shares x price traded today."""
        self.daily_trades += 1
        self.traded_today += abs(shares) * price
        a = self.active.get(order.client_id)
        if a is not None:
            a.filled_shares += abs(shares)
            a.filled_value += abs(shares) * price
            self._ref_total = None

    def on_cancel(self, order: Order, now: pd.Timestamp | None = None) -> None:
        """A confirmed cancel: counts toward the symbol's daily cancels (once per client id)."""
        if order.client_id not in self._cancelled:
            self._cancelled.add(order.client_id)
            self.cancels[order.symbol] = self.cancels.get(order.symbol, 0) + 1

    def on_order_done(self, order: Order) -> None:
        """The order reached a terminal state: it leaves the active set."""
        a = self.active.pop(order.client_id, None)
        if a is not None:
            self._by_symbol[a.symbol].remove(a)
            self._ref_total = None

    def _add(self, a: ActiveOrder) -> None:
        self.active[a.client_id] = a
        self._by_symbol.setdefault(a.symbol, []).append(a)
        self._ref_total = None

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed after a restart, JSON-serialisable (the engine journals it)."""
        return {"version": 1, "state": self.state.value, "session": self.session,
                "start_equity": None if math.isnan(self.start_equity) else self.start_equity,
                "active": [a.to_dict() for a in self.active.values()],
                "window": [list(w) for w in self._window],
                "paused": sorted(k for k, v in self._paused.items() if v), "resumed": sorted(self._resumed),
                "daily_orders": self.daily_orders, "daily_trades": self.daily_trades,
                "traded_today": self.traded_today, "cancels": dict(self.cancels),
                "cancelled": sorted(self._cancelled)}

    def load_state_dict(self, d: dict) -> None:
        """Restore `state_dict()` output (a HALTED manager comes back HALTED)."""
        self.state = TradingState(d["state"])
        self.session = d.get("session")
        se = d.get("start_equity")
        self.start_equity = math.nan if se is None else float(se)
        self.active, self._by_symbol = {}, {}
        for a in d.get("active", []):
            self._add(ActiveOrder.from_dict(a))
        self._window = deque((float(t), str(cid)) for t, cid in d.get("window", []))
        self._window_ids = {cid for _, cid in self._window}
        self._paused = dict.fromkeys(d.get("paused", []), True)
        self._resumed = set(d.get("resumed", []))
        self.daily_orders = int(d.get("daily_orders", 0))
        self.daily_trades = int(d.get("daily_trades", 0))
        self.traded_today = float(d.get("traded_today", 0.0))
        self.cancels = {k: int(v) for k, v in d.get("cancels", {}).items()}
        self._cancelled = set(d.get("cancelled", []))
