"""The order manager: the open order book in memory, rebuilt from the journal (crash-only design).

Constructing an `OrderManager` is both start-up and crash recovery: it reads the non-terminal orders
from the journal. Every change goes to the journal first and to memory only after the journal write
returned; when a journal batch rolls back, the book is rebuilt from the journal, so memory never holds
what the journal lost. Terminal orders leave memory (`order()` still finds them in the journal).

`reconcile` compares the book with the broker's view at start-up (and whenever an order's outcome is
unknown): it applies the fills the journal lacks, moves orders to the broker's status, leaves an order
the broker cannot answer for in UNKNOWN (never guessed), and reports every disagreement it cannot
resolve as a mismatch; `ReconcileReport.raise_if_mismatched()` raises `ReconcileError` for those.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from quantlm.live.journal import Journal
from quantlm.live.types import SIDES, TERMINAL, TRANSITIONS, Fill, Order, OrderStatus

_EPS = 1e-6  # shares


class InvalidOrder(ValueError):
    """An order that is malformed (unknown side, negative or missing quantity ...): refused, not journaled."""

    user_facing = True


class ReconcileError(RuntimeError):
    """The journal and the broker disagree in ways reconciliation cannot resolve: the engine must not start."""

    user_facing = True


@dataclass
class ReconcileReport:
    """What `OrderManager.reconcile` changed and what it could not resolve."""

    applied_fills: list[str] = field(default_factory=list)  # fill ids newly recorded
    transitions: list[tuple[str, str, str]] = field(default_factory=list)  # (client_id, from, to)
    unresolved: list[str] = field(default_factory=list)  # client ids left (or put) in UNKNOWN
    mismatches: list[str] = field(default_factory=list)  # human-readable disagreements

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        """One line per change and problem."""
        lines = [f"applied {len(self.applied_fills)} missing fill(s)"]
        lines += [f"{cid}: {a} -> {b}" for cid, a, b in self.transitions]
        lines += [f"{cid}: outcome unknown, left in flight" for cid in self.unresolved]
        lines += [f"mismatch: {m}" for m in self.mismatches]
        return "\n".join(lines)

    def raise_if_mismatched(self) -> None:
        if self.mismatches:
            raise ReconcileError("the journal and the broker disagree; refusing to start until resolved:\n  "
                                 + "\n  ".join(self.mismatches))


def validate_order(order: Order) -> None:
    """Raise `InvalidOrder` for a structurally bad order (risk limits are the risk manager's job)."""
    problems = []
    if not isinstance(order.client_id, str) or not order.client_id.strip():
        problems.append("client_id must be a non-empty string")
    if not isinstance(order.symbol, str) or not order.symbol.strip():
        problems.append("symbol must be a non-empty string")
    if order.side not in SIDES:
        problems.append(f"side {order.side!r} is not one of {', '.join(SIDES)}")
    for name in ("shares", "value"):
        x = getattr(order, name)
        if not isinstance(x, int | float) or not math.isfinite(x) or x < 0:
            problems.append(f"{name} must be a finite number >= 0, got {x!r}")
    if not problems and order.shares <= 0 and order.value <= 0:
        problems.append("one of shares or value must be positive")
    lp = order.limit_price
    if not isinstance(lp, int | float) or (not math.isnan(lp) and (not math.isfinite(lp) or lp <= 0)):
        problems.append(f"limit_price must be positive or NaN (market order), got {lp!r}")
    if OrderStatus(order.status) != OrderStatus.NEW:
        problems.append(f"a submitted order starts NEW, got {order.status}")
    if problems:
        raise InvalidOrder(f"order {order.client_id!r} refused: " + "; ".join(problems))


class OrderManager:
    """The open order book, backed by a `Journal` (one thread, like the journal)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._book: dict[str, Order] = {}
        self.reload()
        journal.on_rollback(self.reload)

    def reload(self) -> None:
        """Rebuild the book from the journal (start-up, recovery, and after a rolled-back batch)."""
        self._book = {o.client_id: o for o in self.journal.open_orders()}

    def _refresh(self, client_id: str) -> Order:
        order = self.journal.order(client_id)
        assert order is not None
        return self._keep(order)

    def _keep(self, order: Order) -> Order:
        """Put `order` (as the journal holds it) in the book, or take it out when terminal."""
        if order.status in TERMINAL:
            self._book.pop(order.client_id, None)
        else:
            self._book[order.client_id] = order
        return order

    # -- changes ------------------------------------------------------------------------------------------

    def submit(self, order: Order) -> tuple[Order, bool]:
        """Journal `order` as NEW (committed before this returns, unless inside a batch). A client_id
        already known returns the stored order and False: the same id twice makes one order."""
        if order.client_id in self._book:
            return self._book[order.client_id], False
        try:
            validate_order(order)
        except InvalidOrder:
            known = self.journal.order(order.client_id) if isinstance(order.client_id, str) else None
            if known is None:
                raise
            return known, False
        if not self.journal.add_order(order):
            return self._refresh(order.client_id), False
        return self._refresh(order.client_id), True

    def mark(self, client_id: str, status: str | OrderStatus, reason: str = "", actor: str = "engine",
             ts: object | None = None, **fields: float) -> Order:
        """Move an order to `status` (journaled; `InvalidTransition` when not allowed). Returns it."""
        return self._keep(self.journal.transition(client_id, status, reason=reason, actor=actor, ts=ts, **fields))

    def apply_fill(self, fill: Fill, complete: bool | None = None) -> bool:
        """Record `fill` once (False for a fill_id already recorded); see `Journal.add_fill`."""
        if not self.journal.add_fill(fill, complete=complete):
            return False
        self._refresh(fill.client_id)
        return True

    def expire_session(self, ts: object | None = None) -> list[Order]:
        """Close what a session end leaves open, in one batch, reason "session end": HELD, SENT and
        PARTIAL orders become EXPIRED; RISK_CHECKED ones (never sent) CANCELLED and NEW ones REJECTED, as
        TRANSITIONS allows. UNKNOWN orders stay in flight until the broker answers."""
        target = {OrderStatus.HELD: OrderStatus.EXPIRED, OrderStatus.SENT: OrderStatus.EXPIRED,
                  OrderStatus.PARTIAL: OrderStatus.EXPIRED, OrderStatus.RISK_CHECKED: OrderStatus.CANCELLED,
                  OrderStatus.NEW: OrderStatus.REJECTED}
        changed = []
        with self.journal.batch():
            for order in list(self._book.values()):
                if order.status in target:
                    changed.append(self.mark(order.client_id, target[order.status], "session end", "engine", ts))
        return changed

    # -- reads --------------------------------------------------------------------------------------------

    def order(self, client_id: str) -> Order | None:
        """An order by client id (open ones from memory, others from the journal)."""
        return self._book.get(client_id) or self.journal.order(client_id)

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        """Non-terminal orders (of one symbol), oldest first."""
        return [o for o in self._book.values() if symbol is None or o.symbol == symbol]

    def active_count(self) -> int:
        """Orders live at the broker or in flight (SENT, PARTIAL, UNKNOWN)."""
        return sum(o.status.active for o in self._book.values())

    def held(self) -> list[Order]:
        """Orders waiting for manual review."""
        return [o for o in self._book.values() if o.status == OrderStatus.HELD]

    def in_flight(self) -> list[Order]:
        """Orders whose outcome is unknown until a broker query resolves them."""
        return [o for o in self._book.values() if o.status == OrderStatus.UNKNOWN]

    # -- reconciliation -----------------------------------------------------------------------------------

    def reconcile(self, broker_orders: dict[str, tuple[str | OrderStatus, float]], broker_fills: Iterable[Fill],
                  ts: object | None = None) -> ReconcileReport:
        """Bring the journal in line with the broker, in one batch, and report what remains.

        `broker_orders` maps client_id -> (status, filled shares) for every order the broker knows this
        session (open and closed, as vn.py's order query returns them); `broker_fills` are its fills.
        Orders the broker has never heard of are left to the engine, except an open one at the broker
        (SENT / PARTIAL) or an UNKNOWN one, which becomes / stays UNKNOWN (never guessed).
        """
        rep = ReconcileReport()
        broker = {cid: (OrderStatus(st), float(filled)) for cid, (st, filled) in broker_orders.items()}
        with self.journal.batch():
            journal = {cid: self.order(cid) for cid in broker}
            for cid, order in journal.items():
                if order is None:
                    rep.mismatches.append(f"broker order {cid} ({broker[cid][0].value}) is not in the journal")
                elif order.status in (OrderStatus.RISK_CHECKED, OrderStatus.HELD):  # sent, crash before journaled
                    self._move(rep, order, OrderStatus.SENT, ts)
                elif order.status == OrderStatus.NEW:
                    rep.mismatches.append(f"order {cid} is at the broker but was never risk-checked (journal: new)")
            self._apply_fills(rep, broker, broker_fills, ts)
            for cid, (status, filled) in broker.items():
                order = self.order(cid)
                if order is None or order.status in (OrderStatus.NEW, OrderStatus.RISK_CHECKED, OrderStatus.HELD):
                    continue
                if abs(order.filled_shares - filled) > _EPS:  # status left alone: fills are missing
                    rep.mismatches.append(f"order {cid}: broker says {status.value} with {filled:g} shares filled, "
                                          f"the journal {order.status.value} with {order.filled_shares:g} "
                                          "(fills missing on one side)")
                    continue
                both_closed = order.status in TERMINAL and status in TERMINAL  # e.g. expired vs cancelled
                if order.status != status and not both_closed:
                    if status in TRANSITIONS[order.status]:
                        self._move(rep, order, status, ts)
                    else:
                        rep.mismatches.append(f"order {cid}: journal says {order.status.value}, broker says "
                                              f"{status.value}")
            for order in list(self._book.values()):
                if order.client_id in broker:
                    continue
                if order.status in (OrderStatus.SENT, OrderStatus.PARTIAL):
                    self._move(rep, order, OrderStatus.UNKNOWN, ts, "the broker has no record of it")
                if order.status in (OrderStatus.SENT, OrderStatus.PARTIAL, OrderStatus.UNKNOWN):
                    rep.unresolved.append(order.client_id)
        return rep

    def _move(self, rep: ReconcileReport, order: Order, status: OrderStatus, ts: object | None,
              why: str = "") -> Order:
        reason = f"reconcile: {why or 'broker status ' + status.value}"
        new = self.mark(order.client_id, status, reason, "reconcile", ts)
        rep.transitions.append((order.client_id, order.status.value, status.value))
        return new

    def _apply_fills(self, rep: ReconcileReport, broker: dict[str, tuple[OrderStatus, float]],
                     fills: Iterable[Fill], ts: object | None) -> None:
        for fill in fills:
            if self.journal.has_fill(fill.fill_id):
                continue
            order = self.order(fill.client_id)
            if order is None:
                rep.mismatches.append(f"broker fill {fill.fill_id} belongs to order {fill.client_id}, which is not "
                                      "in the journal")
                continue
            if order.status in (OrderStatus.NEW, OrderStatus.RISK_CHECKED, OrderStatus.HELD):
                rep.mismatches.append(f"broker fill {fill.fill_id} for order {fill.client_id}, which the journal "
                                      f"has as {order.status.value} (never sent)")
                continue
            # the broker's status (applied next) decides completion when it reports the order
            self.apply_fill(fill, complete=False if fill.client_id in broker else None)
            rep.applied_fills.append(fill.fill_id)

