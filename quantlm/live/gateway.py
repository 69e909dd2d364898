"""Broker gateways in vn.py's `BaseGateway` shape: connect, send_order, cancel_order, queries, fills.

- `PaperBroker`: fills with the backtest's exchange rules and costs (`backtest.exchange.Exchange`) at
  the next bar's fill price: orders sent after bar t's close execute on bar t+1, in the backtest's
  side order (sells, covers, shorts, buys), against the paper account. Its fills carry deterministic
  ids (client id + bar time), so replaying a bar after a crash cannot apply a fill twice.
- `FileBroker`: writes the next session's orders for manual entry or a broker's upload, as CSV and
  JSON (symbol, side, shares in whole lots, limit price, reason, model, score); it never fills.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from quantlm.backtest.costs import round_down
from quantlm.backtest.exchange import Exchange
from quantlm.backtest.portfolio import Portfolio
from quantlm.backtest.rules import round_to_tick
from quantlm.live.types import Fill, Order, OrderStatus

ORDER_FILE_COLUMNS = ("client_id", "symbol", "side", "shares", "limit_price", "reason", "model", "score")


class BaseGateway(Protocol):
    """What the engine needs from a broker."""

    name: str

    def connect(self) -> None: ...

    def send_order(self, order: Order) -> None: ...

    def cancel_order(self, client_id: str) -> bool: ...

    def query_orders(self) -> dict[str, tuple[OrderStatus, float]]: ...

    def query_fills(self) -> list[Fill]: ...


class PaperBroker:
    """Paper trading with the backtest's exchange: `on_bar` executes the queued orders at that bar."""

    name = "paper"

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.queue: list[Order] = []
        self.status: dict[str, tuple[OrderStatus, float]] = {}
        self.fills: list[Fill] = []

    def connect(self) -> None:
        return None

    def send_order(self, order: Order) -> None:
        self.queue.append(order)
        self.status[order.client_id] = (OrderStatus.SENT, 0.0)

    def cancel_order(self, client_id: str) -> bool:
        before = len(self.queue)
        self.queue = [o for o in self.queue if o.client_id != client_id]
        if len(self.queue) < before:
            self.status[client_id] = (OrderStatus.CANCELLED, 0.0)
            return True
        return False

    def query_orders(self) -> dict[str, tuple[OrderStatus, float]]:
        return dict(self.status)

    def query_fills(self) -> list[Fill]:
        return list(self.fills)

    def scale_orders(self, symbol: str, old_position: float, new_position: float, share_ratio: float,
                     whole: bool) -> None:
        """A corporate action: queued sells / covers of `symbol` follow it (as in the backtest kernel)."""
        for o in self.queue:
            if o.symbol == symbol and o.side in ("sell", "cover") and o.shares > 0:
                if old_position != 0 and abs(o.shares - abs(old_position)) < 1e-9:
                    o.shares = abs(new_position)
                else:
                    q = o.shares * share_ratio
                    o.shares = math.floor(q + 1e-9) if whole else q

    def on_bar(self, ts: pd.Timestamp, fields: pd.DataFrame, account: Portfolio) -> list[dict]:
        """Execute every queued order at this bar; returns the exchange's records (one per order, with
        client_id and fill_id added). `fields` is indexed by symbol: price, volume, limit_up, limit_down, sigma."""
        if not self.queue:
            return []
        orders = pd.DataFrame({"symbol": [o.symbol for o in self.queue], "side": [o.side for o in self.queue],
                               "shares": [float(o.shares) for o in self.queue],
                               "value": [float(o.value) for o in self.queue]})
        by_side = {side: [o for o in self.queue if o.side == side] for side in ("sell", "cover", "short", "buy")}
        records = self.exchange.execute_records(orders, fields, account, ts)
        out = []
        ordered = [o for side in ("sell", "cover", "short", "buy") for o in by_side[side]]
        for order, rec in zip(ordered, records):
            rec = dict(rec, client_id=order.client_id, fill_id=f"{order.client_id}@{pd.Timestamp(ts).isoformat()}")
            filled = float(rec["shares_filled"])
            if filled > 0:
                status = OrderStatus.FILLED if rec["status"] == "filled" else OrderStatus.PARTIAL
                self.fills.append(fill_from_record(rec))
            else:
                status = OrderStatus.REJECTED
            self.status[order.client_id] = (status, filled)
            out.append(rec)
        self.queue = []
        return out


def fill_from_record(rec: dict) -> Fill:
    """A Fill from an exchange record (with client_id / fill_id)."""
    return Fill(fill_id=rec["fill_id"], client_id=rec["client_id"], symbol=rec["symbol"], side=rec["side"],
                shares=float(rec["shares_filled"]), price=float(rec["price"]), ts=pd.Timestamp(rec["ts"]),
                commission=float(rec["commission"]), stamp_duty=float(rec["stamp_duty"]),
                transfer_fee=float(rec["transfer_fee"]), sec_fee=float(rec["sec_fee"]),
                slippage=float(rec["slippage"]), impact=float(rec["impact"]), total_cost=float(rec["total_cost"]))


class FileBroker:
    """Writes orders to `<out>/orders_<session>.csv` and `.json` for manual entry; never fills.

    Buys sized by value become whole lots at the last close (at least the board minimum); the limit
    price is the last close x (1 + slack) for buys and x (1 - slack) for sells, kept inside the price
    limits and rounded to the tick.
    """

    name = "file"

    def __init__(self, out: str | Path, lot_rule, tick: float = 0.01, limit_slack: float = 0.01) -> None:
        self.out = Path(out)
        self.lot_rule = lot_rule  # symbol -> backtest.exchange.LotRule
        self.tick, self.limit_slack = tick, limit_slack
        self.rows: list[dict] = []

    def connect(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)

    def send_order(self, order: Order, last_price: float = math.nan, limit_up: float = math.nan,
                   limit_down: float = math.nan) -> dict | None:
        """Add the order to the session's list (None when it rounds to zero shares)."""
        lot = self.lot_rule(order.symbol)
        buy_like = order.side in ("buy", "cover")
        if order.shares > 0:
            shares = order.shares
        elif np.isfinite(last_price) and last_price > 0:
            shares = round_down(order.value / last_price, lot.buy_step)
            if shares < lot.buy_min:
                shares = 0.0
        else:
            shares = 0.0
        if shares <= 0:
            return None
        limit = order.limit_price
        if not np.isfinite(limit) and np.isfinite(last_price):
            limit = last_price * (1 + self.limit_slack if buy_like else 1 - self.limit_slack)
            if np.isfinite(limit_up):
                limit = min(limit, limit_up)
            if np.isfinite(limit_down):
                limit = max(limit, limit_down)
            limit = float(round_to_tick(limit, self.tick))
        row = {"client_id": order.client_id, "symbol": order.symbol, "side": order.side, "shares": float(shares),
               "limit_price": limit, "reason": order.reason, "model": order.model, "score": order.score}
        self.rows.append(row)
        return row

    def cancel_order(self, client_id: str) -> bool:
        before = len(self.rows)
        self.rows = [r for r in self.rows if r["client_id"] != client_id]
        return len(self.rows) < before

    def query_orders(self) -> dict[str, tuple[OrderStatus, float]]:
        return {r["client_id"]: (OrderStatus.SENT, 0.0) for r in self.rows}

    def query_fills(self) -> list[Fill]:
        return []

    def write(self, session: str, path: str | Path | None = None) -> Path:
        """Write the collected orders (CSV, and JSON beside it); returns the CSV path."""
        csv_path = Path(path) if path is not None else self.out / f"orders_{session}.csv"
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(self.rows, columns=list(ORDER_FILE_COLUMNS))
        tmp = csv_path.with_name(csv_path.name + ".tmp")
        frame.to_csv(tmp, index=False)
        tmp.replace(csv_path)
        json_path = csv_path.with_suffix(".json")
        json_path.write_text(json.dumps({"session": session, "orders": frame.to_dict(orient="records")}, indent=1,
                                        default=str))
        return csv_path
