"""Strategies (scores -> target weights) and the shared order generator (targets - current -> orders).

One interface, used by the backtest reference path and, later, live trading:
`Strategy.targets(scores_at_t, portfolio) -> pd.Series` of target weights (signed fraction of equity,
0 = exit, NaN or absent = keep the position as it is), in the order orders should be generated.
`orders_from_targets` turns them into orders: sells/covers in shares, buys/shorts in currency value
(converted to whole lots at the fill price by the exchange, as Qlib and vectorbt size orders).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from quantlm.backtest.costs import round_down
from quantlm.backtest.portfolio import Portfolio

ORDER_COLUMNS = ("symbol", "side", "shares", "value")


class Strategy(Protocol):
    def targets(self, scores: pd.Series, portfolio: Portfolio) -> pd.Series: ...


@dataclass
class TopkDropout:
    """Qlib's TopkDropoutStrategy: hold `topk` names; each day sell up to `n_drop` held names ranked
    worst and buy the best-ranked names not held, splitting cash * risk_degree equally among the buys.

    A position is sold only after it has been held `hold_thresh` sessions. Held names without a score
    rank last. Sizing uses the decision prices (the last closes).
    """

    topk: int = 50
    n_drop: int = 5
    hold_thresh: int = 1
    risk_degree: float = 0.95

    def targets(self, scores: pd.Series, portfolio: Portfolio) -> pd.Series:
        held = {s for s, q in portfolio.shares.items() if q > 0}
        names = [str(s) for s in scores.index]
        values = scores.to_numpy(dtype="float64")
        extra = sorted(held.difference(names))
        if extra:
            names += extra
            values = np.r_[values, np.full(len(extra), np.nan)]
        # best first, NaN last, ties in symbol order (the kernel's order), with numpy argsorts
        by_name = np.argsort(np.asarray(names, dtype=object), kind="stable")
        key = np.where(np.isfinite(values), -values, np.inf)[by_name]
        order = by_name[np.argsort(key, kind="stable")]
        ranked = [names[i] for i in order]
        finite = np.isfinite(values)
        n_today = max(self.n_drop + self.topk - len(held), 0)
        today = [names[i] for i in order if finite[i] and names[i] not in held][:n_today]
        today_set = set(today)
        comb = [s for s in ranked if s in held or s in today_set]
        worst = comb[max(len(comb) - self.n_drop, 0):] if self.n_drop > 0 else []
        sell = [s for s in worst if s in held]
        out: dict[str, float] = {}
        sell_value = 0.0
        for s in sell:
            if portfolio.held_days.get(s, 0) >= self.hold_thresh:
                out[s] = 0.0
                sell_value += portfolio.shares[s] * portfolio.last_price[s]
        buy = today[: max(len(sell) + self.topk - len(held), 0)]
        equity = portfolio.equity()
        if buy and equity > 0:
            value = (portfolio.cash + sell_value) * self.risk_degree / len(buy)
            for s in buy:
                out[s] = value / equity
        return pd.Series(out, dtype="float64")


@dataclass
class Threshold:
    """Long when score > long_threshold, short when score < short_threshold (if allowed), else flat.

    Each symbol has a fixed sleeve (`sleeve`, fraction of equity; the engine uses leverage / number of
    symbols). Positions whose side does not change are kept, not rebalanced; symbols without a score
    that day are kept too.
    """

    long_threshold: float = 0.0
    short_threshold: float | None = None
    allow_short: bool = False
    sleeve: float = 1.0

    def targets(self, scores: pd.Series, portfolio: Portfolio) -> pd.Series:
        out: dict[str, float] = {}
        for symbol, s in scores.sort_index().items():
            if not np.isfinite(s):
                continue
            want = 0
            if s > self.long_threshold:
                want = 1
            elif self.short_threshold is not None and self.allow_short and s < self.short_threshold:
                want = -1
            q = portfolio.position(symbol)
            have = 1 if q > 0 else (-1 if q < 0 else 0)
            if want != have:
                out[symbol] = want * self.sleeve
        return pd.Series(out, dtype="float64")


@dataclass
class TargetWeights:
    """User-given target weights (the signals' `weight` column), rebalanced on every day that has any;
    a held symbol without a weight that day is sold."""

    def targets(self, scores: pd.Series, portfolio: Portfolio) -> pd.Series:
        weights = scores.dropna()
        symbols = sorted(set(weights.index) | set(portfolio.shares))
        out = {s: float(weights.get(s, 0.0)) for s in symbols}
        return pd.Series({s: w for s, w in out.items() if w != 0.0 or portfolio.position(s) != 0.0}, dtype="float64")


def orders_from_targets(targets: pd.Series, portfolio: Portfolio,
                        sell_step: float | Mapping[str, float] = 1.0) -> pd.DataFrame:
    """Orders that move `portfolio` to `targets` (weights of equity at the last prices).

    Exits sell/cover the whole position; a flip (long -> short) is a sell then a short; a partial
    reduction is rounded down to `sell_step` shares (one step for all, or per symbol). Buys and shorts
    carry a currency `value`.
    """
    steps = sell_step if isinstance(sell_step, Mapping) else None
    default_step = 1.0 if steps is not None else float(sell_step)
    equity = portfolio.equity()
    rows: list[tuple[str, str, float, float]] = []
    for symbol, target in targets.items():
        if not np.isfinite(target):
            continue
        cur = portfolio.position(symbol)
        price = portfolio.last_price.get(symbol, np.nan)
        sell_step = steps.get(symbol, default_step) if steps is not None else default_step
        if target == 0.0:
            if cur > 0:
                rows.append((symbol, "sell", cur, 0.0))
            elif cur < 0:
                rows.append((symbol, "cover", -cur, 0.0))
            continue
        target_value = target * equity
        if target > 0:
            if cur < 0:
                rows.append((symbol, "cover", -cur, 0.0))
                cur = 0.0
            delta = target_value - cur * price if cur else target_value
            if cur == 0.0 or delta > 0:
                rows.append((symbol, "buy", 0.0, delta))
            elif delta < 0:
                q = min(round_down(-delta / price, sell_step), cur)
                if q > 0:
                    rows.append((symbol, "sell", q, 0.0))
        else:
            if cur > 0:
                rows.append((symbol, "sell", cur, 0.0))
                cur = 0.0
            delta = -target_value + cur * price if cur else -target_value
            if cur == 0.0 or delta > 0:
                rows.append((symbol, "short", 0.0, delta))
            elif delta < 0:
                q = min(round_down(-delta / price, sell_step), -cur)
                if q > 0:
                    rows.append((symbol, "cover", q, 0.0))
    return pd.DataFrame(rows, columns=list(ORDER_COLUMNS))
