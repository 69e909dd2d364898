"""Shared live-trading types: orders, their states, fills, risk decisions and trading states.

Units: shares are shares (never lots); `value` and prices are in the account currency. An order
either carries `shares` (sells, covers, and buys sized by a user) or a currency `value` (buys and
shorts from a strategy: converted to whole lots at the fill price, as in the backtest).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum

import pandas as pd

SIDES = ("buy", "sell", "short", "cover")


class OrderStatus(StrEnum):
    """Order states. Terminal: FILLED, CANCELLED, REJECTED, EXPIRED.

    NEW -> RISK_CHECKED -> SENT -> PARTIAL -> FILLED; RISK_CHECKED -> HELD (manual review) -> SENT |
    REJECTED | EXPIRED; NEW -> REJECTED (risk); SENT -> UNKNOWN (the broker did not answer: in flight
    until a broker query resolves it) -> SENT | PARTIAL | FILLED | CANCELLED | REJECTED; SENT / PARTIAL
    -> CANCELLED | REJECTED | EXPIRED.
    """

    NEW = "new"
    RISK_CHECKED = "risk_checked"
    HELD = "held"
    SENT = "sent"
    PARTIAL = "partial"
    UNKNOWN = "unknown"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def active(self) -> bool:
        """Live at the broker or about to be (counts toward the active-order limit)."""
        return self in (OrderStatus.SENT, OrderStatus.PARTIAL, OrderStatus.UNKNOWN)


TERMINAL = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED})
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.NEW: frozenset({OrderStatus.RISK_CHECKED, OrderStatus.REJECTED}),
    OrderStatus.RISK_CHECKED: frozenset({OrderStatus.HELD, OrderStatus.SENT, OrderStatus.REJECTED,
                                         OrderStatus.CANCELLED}),
    OrderStatus.HELD: frozenset({OrderStatus.SENT, OrderStatus.REJECTED, OrderStatus.EXPIRED, OrderStatus.CANCELLED}),
    OrderStatus.SENT: frozenset({OrderStatus.PARTIAL, OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED,
                                 OrderStatus.EXPIRED, OrderStatus.UNKNOWN}),
    OrderStatus.PARTIAL: frozenset({OrderStatus.PARTIAL, OrderStatus.FILLED, OrderStatus.CANCELLED,
                                    OrderStatus.EXPIRED, OrderStatus.UNKNOWN}),
    OrderStatus.UNKNOWN: frozenset({OrderStatus.SENT, OrderStatus.PARTIAL, OrderStatus.FILLED, OrderStatus.CANCELLED,
                                    OrderStatus.REJECTED, OrderStatus.EXPIRED}),
}
for _s in TERMINAL:
    TRANSITIONS[_s] = frozenset()


class TradingState(StrEnum):
    """ACTIVE: all orders; REDUCING: only orders that shrink a position; HALTED: none (kill switch)."""

    ACTIVE = "active"
    REDUCING = "reducing"
    HALTED = "halted"


@dataclass
class Order:
    """One order. `client_id` is unique forever (never reused after a restart)."""

    client_id: str
    symbol: str
    side: str  # buy | sell | short | cover
    shares: float = 0.0  # shares for sells / covers (and buys sized in shares)
    value: float = 0.0  # currency for buys / shorts sized by value
    limit_price: float = math.nan  # NaN = market order at the bar's fill price
    created: pd.Timestamp | None = None  # decision time (the bar whose scores made it)
    reason: str = ""  # why it exists: 'strategy', 'manual', 'exit' ...
    model: str = ""  # the model whose scores made it
    score: float = math.nan
    status: OrderStatus = OrderStatus.NEW
    filled_shares: float = 0.0
    avg_price: float = math.nan
    actor: str = "engine"  # who submitted it (engine or a user name)

    def reference_value(self, price: float) -> float:
        """Currency value of the order at `price` (value for value-sized orders, else shares x price)."""
        return self.value if self.value > 0 else self.shares * price

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.value
        d["created"] = None if self.created is None else str(self.created)
        return d


@dataclass
class Fill:
    """A (partial) execution. `fill_id` is unique: applying the same fill twice is a no-op."""

    fill_id: str
    client_id: str
    symbol: str
    side: str
    shares: float
    price: float
    ts: pd.Timestamp
    commission: float = 0.0
    stamp_duty: float = 0.0
    transfer_fee: float = 0.0
    sec_fee: float = 0.0
    slippage: float = 0.0
    impact: float = 0.0
    total_cost: float = 0.0


@dataclass
class RiskDecision:
    """What the risk manager decided for one order: accept, hold (manual review) or reject, and why."""

    action: str  # accept | hold | reject
    rule: str = ""  # the rule that decided ('' when accepted)
    reason: str = ""  # human-readable, with the numbers

    @property
    def accepted(self) -> bool:
        return self.action == "accept"


@dataclass
class MarketView:
    """What the risk manager may look at for one symbol at decision time (all known at that time)."""

    last_price: float  # last close (or last trade) known
    prev_close: float  # the previous date's close, ex-rights adjusted (the limit reference)
    limit_up: float = math.nan
    limit_down: float = math.nan


@dataclass
class AccountView:
    """The account at decision time: cash, positions (shares), equity and today's traded value (currency)."""

    cash: float
    equity: float
    positions: dict[str, float] = field(default_factory=dict)
    traded_today: float = 0.0
