"""The plain-Python reference backtest loop over the objects live trading uses.

Slow (tens of thousands of bars/s) but obviously correct: `Strategy.targets -> orders_from_targets ->
Exchange.execute -> Portfolio`. The numba kernel in `kernel.py` must give the same results (tested).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from quantlm.backtest.exchange import TRADE_COLUMNS, Exchange
from quantlm.backtest.portfolio import Portfolio
from quantlm.backtest.strategies import TargetWeights, Threshold, TopkDropout, orders_from_targets

if TYPE_CHECKING:
    from quantlm.backtest.engine import BacktestConfig, _Arrays


def run_reference(a: _Arrays, config: BacktestConfig):
    """The reference loop: Strategy.targets -> orders_from_targets -> Exchange.execute -> Portfolio."""
    rules = config.market_rules()
    n_t, n = a.close.shape
    strategy = {"topk": lambda: TopkDropout(config.topk, config.n_drop, config.hold_thresh, config.risk_degree),
                "threshold": lambda: Threshold(config.long_threshold, config.short_threshold, config.shorting(),
                                               config.leverage / n),
                "weights": TargetWeights}[config.strategy]()
    exchange = Exchange(rules, config.cost_model_used(), config.participation, config.leverage, config.allow_short)
    pf = Portfolio(config.cash, t_plus=rules.t_plus)
    borrow_rate = rules.borrow_fee_rate if config.costs else 0.0
    symbols = np.asarray(a.symbols, dtype=object)
    out = np.zeros((5, n_t))
    pos = np.zeros((n_t, n))
    records: list[dict] = []
    orders = pd.DataFrame(columns=["symbol", "side", "shares", "value"])
    for t, ts in enumerate(a.sessions):
        if rules.t_plus == 0 or a.new_date[t]:
            pf.settle()
        day_cost = pf.charge_borrow(borrow_rate, a.borrow_years[t]) if t > 0 else 0.0
        day_traded = 0.0
        if len(orders):
            j = pd.Index(a.symbols).get_indexer(orders["symbol"])
            bars = pd.DataFrame({"price": a.fill_price[t, j], "volume": a.volume[t, j], "limit_up": a.limit_up[t, j],
                                 "limit_down": a.limit_down[t, j], "sigma": a.sigma[t, j]}, index=orders["symbol"])
            bars = bars[~bars.index.duplicated()]
            for rec in exchange.execute_records(orders, bars, pf, ts):
                day_cost += rec["total_cost"]
                day_traded += rec["value"]
                records.append(rec)
        live = np.isfinite(a.close[t])
        pf.mark(dict(zip(symbols[live], a.close[t, live])))
        for s, q in pf.shares.items():
            pos[t, a.symbols.index(s)] = q
        gross, equity = pf.gross_and_equity()
        out[:, t] = equity, pf.cash, day_cost, day_traded, gross
        orders = orders.iloc[:0]
        if t + 1 < n_t and a.has_score[t]:
            targets = strategy.targets(pd.Series(a.score[t], index=a.symbols), pf)
            orders = orders_from_targets(targets, pf, rules.sell_step)
    trades = pd.DataFrame(records, columns=list(TRADE_COLUMNS))
    return (*out, pos, trades)
