"""The simulated exchange: market rules and costs turn orders into fills and rejections.

`Exchange.execute(orders, bars, portfolio, ts)` is the readable per-order path (the engine's
reference, and what live paper trading reuses); the numba kernel in `kernel.py` does the same.

Checks, in order, for each order (sells, then covers, shorts, buys, so sale proceeds fund buys):
short not allowed -> no bar or zero volume ('suspended') -> a buy/cover at or above limit-up
('limit_up') or a sell/short at or below limit-down ('limit_down'), judged at the fill price (the
open for open fills: no look-ahead at the day's close) -> T+1 (only settled shares can be sold,
't+1') -> lots (buys in multiples of the lot; partial sells in multiples of the sell step; the whole
position may be sold as an odd lot) -> participation cap (at most `participation` x the bar's volume,
'volume') -> cash (buys never take cash below zero unless leverage > 1, 'cash') and gross exposure
(at most leverage x equity, 'leverage'). A cut quantity gives status 'partial', nothing 'rejected'.

Sizing: sells and covers carry shares; a strategy's buys carry a currency value that pays for the
shares and their costs, converted to whole lots at the fill price (a buy that carries shares, e.g. a
manual order, asks for those shares, rounded down to the lot); shorts carry a value converted at the
fill price.
The participation cap uses the whole bar's volume, also for open fills (opening-auction volume is
not in daily bars).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantlm.backtest.costs import CostModel, affordable_shares, fill_costs, round_down
from quantlm.backtest.portfolio import Portfolio
from quantlm.backtest.rules import MarketRules

TRADE_COLUMNS = ("ts", "symbol", "side", "shares_requested", "shares_filled", "price", "value", "commission",
                 "stamp_duty", "transfer_fee", "sec_fee", "slippage", "impact", "borrow_fee", "total_cost", "status",
                 "reason", "value_requested")
BAR_FIELDS = ("price", "volume", "limit_up", "limit_down", "sigma")
SIDE_ORDER = ("sell", "cover", "short", "buy")


@dataclass(frozen=True)
class LotRule:
    """Order sizes of one symbol, in shares: buys at least `buy_min` then multiples of `buy_step`;
    partial sells multiples of `sell_step` and at least `sell_min` (a whole position may always go)."""

    buy_min: float
    buy_step: float
    sell_min: float
    sell_step: float


@dataclass
class Exchange:
    """Fills orders under `rules` and `costs`.

    participation: max fraction of the bar's volume one order may take (0 = no cap).
    leverage: max gross exposure / equity. allow_short: None = the market's default.
    lots: per-symbol order sizes (STAR / BSE boards); symbols not in it use the rules' lot_size / sell_step.
    """

    rules: MarketRules
    costs: CostModel
    participation: float = 0.1
    leverage: float = 1.0
    allow_short: bool | None = None
    lots: Mapping[str, LotRule] | None = None

    def lot_rule(self, symbol: str) -> LotRule:
        if self.lots is not None and symbol in self.lots:
            return self.lots[symbol]
        r = self.rules
        return LotRule(float(r.lot_size), float(r.lot_size), 0.0, float(r.sell_step))

    @property
    def shorting(self) -> bool:
        return self.rules.allow_short if self.allow_short is None else bool(self.allow_short)

    def execute(self, orders: pd.DataFrame, bars: pd.DataFrame, portfolio: Portfolio, ts) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Execute `orders` (symbol, side, shares, value) against `bars` at session `ts`, updating `portfolio`.

        `bars` is indexed by symbol with columns price (the fill price), volume (shares), limit_up,
        limit_down (NaN = none) and sigma (daily volatility known at the decision). Returns
        (fills, rejections) in the trades schema; partial fills are among the fills.
        """
        records = self.execute_records(orders, bars, portfolio, ts)
        trades = pd.DataFrame(records, columns=list(TRADE_COLUMNS))
        rejected = trades["status"] == "rejected"
        return trades[~rejected].reset_index(drop=True), trades[rejected].reset_index(drop=True)

    def execute_records(self, orders: pd.DataFrame, bars: pd.DataFrame, portfolio: Portfolio, ts) -> list[dict]:
        """As `execute`, returning one record per order in execution order."""
        stamp = self.costs.stamp_duty_rate(ts)
        sec = self.costs.sec_fee_rate(ts)
        transfer = self.costs.transfer_fee_rate_on(ts)
        marks = dict(portfolio.last_price)
        out = []
        for side in SIDE_ORDER:
            for order in orders[orders["side"] == side].itertuples(index=False):
                bar = bars.loc[order.symbol] if order.symbol in bars.index else None
                out.append(self._one(order, bar, portfolio, marks, ts, stamp, sec, transfer))
        return out

    def _one(self, order, bar, portfolio: Portfolio, marks: dict, ts, stamp: float, sec: float, transfer: float) -> dict:
        r, c = self.rules, self.costs
        symbol, side = order.symbol, order.side
        is_sell = side in ("sell", "short")
        price = float(bar["price"]) if bar is not None else np.nan
        volume = float(bar["volume"]) if bar is not None else 0.0
        sigma = float(bar["sigma"]) if bar is not None else c.default_sigma
        ref = price if np.isfinite(price) else portfolio.last_price.get(symbol, np.nan)
        lot = self.lot_rule(symbol)
        step, q_min = (lot.buy_step, lot.buy_min) if side == "buy" else (lot.sell_step, lot.sell_min)
        if side == "buy" and float(order.shares) > 0:  # sized in shares (a manual order): whole steps of it
            req = round_down(float(order.shares), step)
            if req < q_min:
                req = 0.0
        elif side == "buy":  # a strategy's buy: the value covers the shares and their costs
            req = affordable_shares(float(order.value), ref, step, c.commission_rate, c.min_commission,
                                    transfer, c.slippage, c.impact_coef, sigma, volume) if np.isfinite(ref) else 0.0
            if req < q_min:
                req = 0.0
        elif side == "short":
            req = round_down(order.value / ref, step) if np.isfinite(ref) and ref > 0 else 0.0
        else:
            req = float(order.shares)
        q, reason = req, ""
        half_tick = 0.5 * r.price_tick
        if side == "short" and not self.shorting:
            reason = "short_not_allowed"
        elif not np.isfinite(price) or volume <= 0:
            reason = "suspended"
        elif not is_sell and np.isfinite(bar["limit_up"]) and price >= bar["limit_up"] - half_tick:
            reason = "limit_up"
        elif is_sell and np.isfinite(bar["limit_down"]) and price <= bar["limit_down"] + half_tick:
            reason = "limit_down"
        if reason:
            q = 0.0
        else:
            if side == "sell":
                whole = portfolio.position(symbol)
                if q > portfolio.sellable.get(symbol, 0.0):
                    q, reason = portfolio.sellable.get(symbol, 0.0), "t+1"
                if q < whole or not r.odd_lot_sell:
                    rounded = round_down(q, step)
                    if rounded < q_min and rounded < whole:
                        rounded = 0.0
                    if rounded < q and not reason:
                        reason = "lot"
                    q = rounded
                if q <= 0 and not reason:
                    reason = "lot"
            elif q <= 0:
                reason = "lot"
            if q > 0 and self.participation > 0 and q > self.participation * volume:
                q, reason = round_down(self.participation * volume, step), "volume"
                if q < q_min:
                    q = 0.0
            if q > 0 and side in ("buy", "cover"):
                budget = math.inf
                if side == "buy":
                    gross, equity = portfolio.gross_and_equity(marks)
                    budget = self.leverage * equity - gross
                    if self.leverage <= 1.0 and portfolio.cash < budget:
                        budget = portfolio.cash
                elif self.leverage <= 1.0:
                    budget = portfolio.cash
                if budget < math.inf:
                    afford = affordable_shares(budget, price, step, c.commission_rate, c.min_commission,
                                               transfer, c.slippage, c.impact_coef, sigma, volume)
                    if afford < q:
                        q, reason = (afford if afford >= q_min else 0.0), "cash"
            elif q > 0 and side == "short":
                gross, equity = portfolio.gross_and_equity(marks)
                room = round_down(max(self.leverage * equity - gross, 0.0) / price, step)
                if room < q:
                    q, reason = room, "leverage"
        rec = {"ts": ts, "symbol": symbol, "side": side, "shares_requested": req, "shares_filled": max(q, 0.0),
               "price": price, "value": 0.0, "commission": 0.0, "stamp_duty": 0.0, "transfer_fee": 0.0,
               "sec_fee": 0.0, "slippage": 0.0, "impact": 0.0, "borrow_fee": 0.0, "total_cost": 0.0,
               "status": "rejected", "reason": reason, "value_requested": float(order.value)}
        if q > 0:
            costs = fill_costs(q, price, is_sell, c.commission_rate, c.min_commission, stamp, transfer,
                               sec, c.slippage, c.impact_coef, sigma, volume)
            total = costs[0] + costs[1] + costs[2] + costs[3] + costs[4] + costs[5]
            portfolio.apply_fill(symbol, side, q, price, total)
            marks[symbol] = price
            rec.update(value=q * price, commission=costs[0], stamp_duty=costs[1], transfer_fee=costs[2],
                       sec_fee=costs[3], slippage=costs[4], impact=costs[5], total_cost=total,
                       status="filled" if not reason else "partial")
        else:
            rec["shares_filled"] = 0.0
        return rec
