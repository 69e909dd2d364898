"""The plain-Python reference backtest loop over the objects live trading uses.

Slow (tens of thousands of bars/s) but obviously correct: corporate actions -> `Strategy.targets ->
orders_from_targets -> Exchange.execute -> Portfolio`. The numba kernel in `kernel.py` must give the
same results (tested). It runs over the same chunks of whole dates as the kernel, carrying the
portfolio, strategy and pending orders from one chunk to the next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from quantlm.backtest.exchange import TRADE_COLUMNS, Exchange, LotRule
from quantlm.backtest.kernel import CA_MODES
from quantlm.backtest.portfolio import Portfolio
from quantlm.backtest.strategies import TargetWeights, Threshold, TopkDropout, orders_from_targets

if TYPE_CHECKING:
    from quantlm.backtest.engine import BacktestConfig, _Outputs
    from quantlm.backtest.prepare import Chunk, Prepared


class ReferenceRunner:
    """Strategy -> orders -> Exchange -> Portfolio, bar by bar, one chunk at a time."""

    def __init__(self, p: Prepared, config: BacktestConfig) -> None:
        rules = config.market_rules()
        n = len(p.symbols)
        self.p, self.config, self.rules = p, config, rules
        self.strategy = {"topk": lambda: TopkDropout(config.topk, config.n_drop, config.hold_thresh, config.risk_degree),
                         "threshold": lambda: Threshold(config.long_threshold, config.short_threshold,
                                                        config.shorting(), config.leverage / n),
                         "weights": TargetWeights}[config.strategy]()
        lots = {s: LotRule(p.buy_min[j], p.buy_step[j], p.sell_min[j], p.sell_step[j]) for j, s in enumerate(p.symbols)}
        self.exchange = Exchange(rules, config.cost_model_used(), config.participation, config.leverage,
                                 config.allow_short, lots=lots)
        self.sell_steps = {s: float(p.sell_step[j]) for j, s in enumerate(p.symbols)}
        self.portfolio = Portfolio(config.cash, t_plus=rules.t_plus)
        self.borrow_rate = rules.borrow_fee_rate if config.costs else 0.0
        self.ca_mode = CA_MODES.index(config.corporate_actions)
        self.whole = {s: bool(p.buy_step[j] >= 1.0) for j, s in enumerate(p.symbols)}
        self.orders = pd.DataFrame(columns=["symbol", "side", "shares", "value"])
        self.index = pd.Index(p.symbols)

    def run_chunk(self, ch: Chunk, out: _Outputs) -> None:
        """Simulate the chunk's bars, appending per-bar series, positions and trade records to `out`."""
        pf, symbols = self.portfolio, np.asarray(self.p.symbols, dtype=object)
        n_t, n = ch.close.shape
        series = np.zeros((6, n_t))
        pos = np.zeros((n_t, n))
        records: list[dict] = []
        for t, ts in enumerate(ch.sessions):
            ca_cash = 0.0
            if self.ca_mode:
                for j in np.flatnonzero(np.isfinite(ch.ca_ratio[t]) & (ch.ca_ratio[t] != 1.0)):
                    sym = symbols[j]
                    ca_cash += pf.apply_corporate_action(sym, float(ch.ca_ratio[t, j]), self.ca_mode, self.whole[sym])
                    self.orders = _scale_share_orders(self.orders, sym, pf, float(ch.ca_ratio[t, j]), self.ca_mode,
                                                      self.whole[sym])
            if self.rules.t_plus == 0 or ch.new_date[t]:
                pf.settle()
            day_cost = pf.charge_borrow(self.borrow_rate, ch.borrow_years[t]) if ch.borrow_years[t] > 0 else 0.0
            day_traded = 0.0
            if len(self.orders):
                j = self.index.get_indexer(self.orders["symbol"])
                bars = pd.DataFrame({"price": ch.fill_price[t, j], "volume": ch.volume[t, j],
                                     "limit_up": ch.limit_up[t, j], "limit_down": ch.limit_down[t, j],
                                     "sigma": ch.sigma[t, j]}, index=self.orders["symbol"])
                bars = bars[~bars.index.duplicated()]
                for rec in self.exchange.execute_records(self.orders, bars, pf, ts):
                    day_cost += rec["total_cost"]
                    day_traded += rec["value"]
                    records.append(rec)
            live = np.isfinite(ch.close[t])
            pf.mark(dict(zip(symbols[live], ch.close[t, live])), day_end=bool(ch.day_end[t]))
            for s, q in pf.shares.items():
                pos[t, self.index.get_loc(s)] = q
            gross, equity = pf.gross_and_equity()
            series[:, t] = equity, pf.cash, day_cost, day_traded, gross, ca_cash
            self.orders = self.orders.iloc[:0]
            if (t + 1 < n_t or not ch.last) and ch.has_score[t]:
                targets = self.strategy.targets(pd.Series(ch.score[t], index=self.p.symbols), pf)
                self.orders = orders_from_targets(targets, pf, self.sell_steps)
        for lst, v in zip((out.equity, out.cash, out.costs, out.traded, out.gross, out.ca_cash), series):
            lst.append(v)
        out.add_positions(ch, pos)
        out.trades.append(pd.DataFrame(records, columns=list(TRADE_COLUMNS)))


def _scale_share_orders(orders: pd.DataFrame, symbol: str, pf: Portfolio, ratio: float, mode: int,
                        whole: bool) -> pd.DataFrame:
    """Pending sells / covers of `symbol` (in shares) follow a corporate action, as in the kernel."""
    from quantlm.backtest.kernel import _scaled_quantity, corporate_action_split

    hit = (orders["symbol"] == symbol) & orders["side"].isin(["sell", "cover"])
    if not hit.any():
        return orders
    share, _ = corporate_action_split(ratio, mode)
    orders = orders.copy()
    old = pf.last_corporate_action.get(symbol)
    for i in np.flatnonzero(hit.to_numpy()):
        q = float(orders["shares"].iat[i])
        if old is not None and old[0] != 0.0 and abs(q - abs(old[0])) < 1e-9:
            orders.iloc[i, orders.columns.get_loc("shares")] = abs(old[1])
        else:
            orders.iloc[i, orders.columns.get_loc("shares")] = _scaled_quantity(q, share, whole)
    return orders
