"""The live risk manager's config and pure helpers (`quantlm.live.risk`): `RiskConfig`, order sizes,
reducing orders, moves, the pause latch and the manager's record of an active order.

Units: shares are shares (never lots); values and prices are in the account currency; moves and
fractions are fractions (0.05 = 5%), never percent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from quantlm.live.types import SIDES, MarketView, Order

EPS = 1e-9  # relative slack on fraction / value comparisons (float noise at the boundaries)
DIRECTION = {"buy": 1.0, "cover": 1.0, "sell": -1.0, "short": -1.0}  # sign of the position change
MARKET = "__market__"  # key of the market-wide (benchmark) pause latch


def finite_pos(x: float | None) -> bool:
    """True for a finite number > 0."""
    return x is not None and isinstance(x, int | float) and math.isfinite(x) and x > 0


def is_limit(order: Order) -> bool:
    """A limit order (finite limit price > 0); market orders carry a NaN limit price."""
    return finite_pos(order.limit_price)


def reference_price(order: Order, market: MarketView) -> float:
    """The price every rule values the order at: its limit price, else the last price (currency)."""
    return float(order.limit_price) if is_limit(order) else float(market.last_price)


def order_shares(order: Order, price: float) -> float:
    """Shares of an order: `shares`, or `value / price` for value-sized orders (NaN without a price)."""
    if order.shares > 0:
        return float(order.shares)
    return float(order.value) / price if finite_pos(price) else math.nan


def order_value(order: Order, price: float) -> float:
    """Currency value of an order at `price` (`value`, or shares x price)."""
    return float(order.value) if order.value > 0 else float(order.shares) * price


def is_reducing(order: Order, position_shares: float, price: float = math.nan,
                pending_shares: float = 0.0) -> bool:
    """True when `order` only shrinks the position: a sell of a long, or a cover of a short, no larger
    than the position.

    `position_shares` is signed (shares; short < 0). A value-sized sell / cover is converted to
    shares at `price`; without a price it counts as not reducing. `pending_shares` (>= 0) are the
    unfilled shares of other active orders of the same side in the symbol: they would shrink the
    position first, so the order must fit in what remains. Buys and shorts never reduce.
    """
    if order.side not in ("sell", "cover"):
        return False
    q = order_shares(order, price)
    if not (q > 0):
        return False
    room = position_shares if order.side == "sell" else -position_shares
    room -= pending_shares
    return room > 0 and q <= room * (1 + EPS)


def move(view: MarketView | None) -> float:
    """|last_price / prev_close - 1| (fraction); NaN when either price is missing or not positive."""
    if view is None or not (finite_pos(view.last_price) and finite_pos(view.prev_close)):
        return math.nan
    return abs(view.last_price / view.prev_close - 1.0)


def latch(paused: bool, m: float, pause_at: float, resume_below: float) -> bool:
    """The pause latch with hysteresis: pause when the move `m` >= `pause_at`; once paused, stay
    paused until `m` < `resume_below` (never, when `resume_below` <= 0). A NaN move keeps the latch.
    """
    if math.isnan(m):
        return paused
    if m >= pause_at * (1 - EPS):
        return True
    if paused and resume_below > 0 and m < resume_below:
        return False
    return paused


def check_validity(order: Order) -> str:
    """'' for a well-formed order, else what is wrong (unknown side, no size, NaN size)."""
    if order.side not in SIDES:
        return f"unknown side {order.side!r} (one of {', '.join(SIDES)})"
    if math.isnan(order.shares) or math.isnan(order.value):
        return "order size is NaN"
    if order.shares <= 0 and order.value <= 0:
        return f"order has no size (shares {order.shares:g}, value {order.value:g})"
    return ""


def fmt(x: float) -> str:
    """A currency or share number for reasons: thousands separators, at most 2 decimals."""
    if not math.isfinite(x):
        return str(x)
    return f"{x:,.2f}".rstrip("0").rstrip(".") if x != round(x) else f"{x:,.0f}"


def pct(x: float) -> str:
    """A fraction shown as percent in reasons (0.0512 -> '5.12%')."""
    return f"{100 * x:.2f}%" if math.isfinite(x) else str(x)


@dataclass
class ActiveOrder:
    """The risk manager's record of an order live at the broker (JSON-serialisable).

    `submitted` is the engine clock in seconds since the epoch; `ref_price` the price the order was
    valued at when submitted (currency); `filled_shares` / `filled_value` what has filled so far.
    """

    client_id: str
    symbol: str
    side: str
    shares: float
    value: float
    limit_price: float
    submitted: float
    ref_price: float = math.nan
    filled_shares: float = 0.0
    filled_value: float = 0.0

    def remaining_shares(self, price: float) -> float:
        """Unfilled shares (value-sized orders converted at `price`, else at the submit price)."""
        if self.shares > 0:
            return max(self.shares - self.filled_shares, 0.0)
        p = price if finite_pos(price) else self.ref_price
        if not finite_pos(p):
            return 0.0
        return max(self.value - self.filled_value, 0.0) / p

    def remaining_value(self, price: float) -> float:
        """Unfilled currency value at `price` (value-sized orders: value minus filled value)."""
        if self.shares > 0:
            p = price if finite_pos(price) else self.ref_price
            return self.remaining_shares(p) * p if finite_pos(p) else 0.0
        return max(self.value - self.filled_value, 0.0)

    def same_request(self, order: Order) -> bool:
        """Same symbol, side, shares, value and limit price (NaN limits equal)."""
        lp_same = (math.isnan(self.limit_price) and math.isnan(order.limit_price)) or \
            self.limit_price == order.limit_price
        return (self.symbol == order.symbol and self.side == order.side and self.shares == order.shares
                and self.value == order.value and lp_same)

    def to_dict(self) -> dict:
        # a plain field copy: dataclasses.asdict deep-copies and ran on every journalled risk state
        d = {f: getattr(self, f) for f in _ACTIVE_FIELDS}
        for k in ("limit_price", "ref_price"):  # JSON has no NaN
            d[k] = None if math.isnan(d[k]) else d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ActiveOrder:
        d = dict(d)
        for k in ("limit_price", "ref_price"):
            d[k] = math.nan if d.get(k) is None else float(d[k])
        return cls(**d)


class RiskConfig(BaseModel):
    """Every rule of the risk manager (`quantlm.live.risk`); None or 0 switches a rule off.

    Fields (units): `review_threshold` currency, orders valued AT OR ABOVE it are held for manual review;
    `review_mode` what stands in for the reviewer in replay (the engine applies it: hold = held until
    approved / rejected, expired at the session end; approve / reject = decided at once); `pause_move`
    / `market_pause_move` fractions of the previous close (symbol / benchmark) at which new orders pause;
    `resume_move` the move below which a pause lifts by itself (None = half the pause move; 0 = only by
    hand, `RiskManager.resume`, or at the next session); `pause_allows_reducing` lets orders that only
    shrink a position through a pause; `price_collar` fraction of the last price a limit price may be
    away; `max_order_shares` shares (50,000 = 500 lots of 100); `max_order_value` currency, hard cap
    (rejected, not held); `max_position_fraction` |position x price| / equity after the order and the
    symbol's active orders; `max_daily_turnover` (traded + active + order value) / equity at the session
    start; `max_orders_per_second` orders passed in a sliding 1 s of the engine clock; `max_active_orders`
    orders live at the broker; `max_cancels_per_symbol_day`, `max_daily_orders`, `max_daily_trades`
    (fills, not shares) daily counters; `duplicate_window_s` seconds of the engine clock in which an
    order equal to an active one is rejected; `check_validity` rejects unknown sides and size-less orders.

    Defaults follow the seed (review at 1,000,000; pause on a 5% move) and vn.py's
    vnpy_riskmanager 2.0 (`OrderSizeRule` 500 / 1,000,000, `ActiveOrderRule` 50, `DailyLimitRule`
    20,000 orders / 10,000 trades) and vn.py 1.x (`order_cancel_limit` 500 per symbol), with
    NautilusTrader's submit throttle (100 per second). vn.py's 1,000,000 value cap becomes the review
    threshold here; the hard value cap sits above it (5,000,000) so that the review rule is not dead.
    """

    model_config = ConfigDict(extra="forbid")

    check_validity: bool = True  # reject unknown sides and orders without a size
    # manual review: value >= threshold (currency) -> hold. review_mode is for the engine in replay:
    # hold = stays held until approved / rejected, expires at the session end; approve / reject = the
    # engine's stand-in reviewer decides at once. The risk manager itself only ever returns "hold".
    review_threshold: float | None = Field(default=1_000_000.0, ge=0)
    review_mode: Literal["hold", "approve", "reject"] = "hold"
    # pauses on moves (fractions of the previous close); resume_move None = half the pause move,
    # 0 = no automatic resume (manual `resume()` or the next session only)
    pause_move: float | None = Field(default=0.05, ge=0)
    market_pause_move: float | None = Field(default=0.05, ge=0)
    resume_move: float | None = Field(default=None, ge=0)
    pause_allows_reducing: bool = True
    price_collar: float | None = Field(default=0.05, ge=0)  # fraction of the last price
    max_order_shares: float | None = Field(default=50_000.0, ge=0)  # shares (500 lots of 100)
    max_order_value: float | None = Field(default=5_000_000.0, ge=0)  # currency, hard cap
    max_position_fraction: float | None = Field(default=0.2, ge=0)  # |position value| / equity
    max_daily_turnover: float | None = Field(default=2.0, ge=0)  # traded value / start-of-day equity
    max_orders_per_second: int | None = Field(default=100, ge=0)  # sliding 1 s of the engine clock
    max_active_orders: int | None = Field(default=50, ge=0)
    max_cancels_per_symbol_day: int | None = Field(default=500, ge=0)
    max_daily_orders: int | None = Field(default=20_000, ge=0)
    max_daily_trades: int | None = Field(default=10_000, ge=0)  # fills (executions), not shares
    duplicate_window_s: float | None = Field(default=1.0, ge=0)  # seconds of the engine clock

    @model_validator(mode="after")
    def _consistent(self) -> RiskConfig:
        if self.max_order_value and self.review_threshold and self.max_order_value <= self.review_threshold:
            raise ValueError(f"max_order_value {self.max_order_value:,.0f} must be above review_threshold "
                             f"{self.review_threshold:,.0f} (else no order is ever held for review); "
                             "set one of them to null to switch it off")
        for name in ("pause_move", "market_pause_move"):
            at = getattr(self, name)
            if self.resume_move and at and self.resume_move > at:
                raise ValueError(f"resume_move {self.resume_move} must not exceed {name} {at}")
        return self

    @classmethod
    def off(cls) -> RiskConfig:
        """Every extra rule off: the live engine then accepts what the backtest would (parity runs)."""
        return cls(check_validity=False, review_threshold=None, pause_move=None, market_pause_move=None,
                   price_collar=None, max_order_shares=None, max_order_value=None,
                   max_position_fraction=None, max_daily_turnover=None, max_orders_per_second=None,
                   max_active_orders=None, max_cancels_per_symbol_day=None, max_daily_orders=None,
                   max_daily_trades=None, duplicate_window_s=None)

    def resume_at(self, pause_at: float) -> float:
        """The move (fraction) below which a pause of `pause_at` lifts by itself (0 = never)."""
        if self.resume_move is None:
            return pause_at / 2
        return self.resume_move


_ACTIVE_FIELDS = tuple(f.name for f in fields(ActiveOrder))
