"""The live engine: the backtest's strategy, exchange rules and portfolio, one bar at a time, behind a
risk manager and an order manager with a durable journal.

Per bar t (the same order as the backtest kernel, so a replay with the paper broker and the extra
risk rules off equals `quantlm backtest` on the same scores):

1. `BarFeed.step`: limits, sigma, fill price and the corporate-action step of every symbol's new bar;
2. corporate actions move holdings and queued share orders; a new date settles T+1 and resets the
   risk manager's day counters; borrow fees;
3. the broker executes the orders sent after the previous bar (`PaperBroker.on_bar`), fills are
   journalled (idempotent ids) and reach the portfolio;
4. marks at the close; at a date's last bar held orders of earlier dates expire (review queue);
5. the scorer (with automatic fallback) scores the bar, the Strategy turns scores into targets,
   `orders_from_targets` into orders; each order is journalled NEW, checked by the RiskManager
   (accept / hold for review / reject, journalled with its rule and reason) and sent.

Each bar is ONE journal transaction that ends with the portfolio snapshot and the last bar's time:
a crash (kill -9) anywhere rolls the bar back, and a restart re-derives the market and scorer state
from the stored bars up to the last committed bar, restores the portfolio and the open orders from
the journal, reconciles them with the broker and carries on (start-up and recovery are one path).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantlm.backtest.engine import BacktestConfig
from quantlm.backtest.exchange import Exchange, LotRule
from quantlm.backtest.kernel import CA_MODES, corporate_action_split
from quantlm.backtest.portfolio import Portfolio
from quantlm.backtest.rules import lot_arrays, symbol_boards
from quantlm.backtest.strategies import TargetWeights, Threshold, TopkDropout, orders_from_targets
from quantlm.live.gateway import PaperBroker, fill_from_record
from quantlm.live.market import BarFeed, BarFields
from quantlm.live.types import AccountView, MarketView, Order, OrderStatus


@dataclass
class DecisionTiming:
    """Milliseconds of the last decision: scoring, then strategy + risk + orders."""

    score_ms: float = 0.0
    decide_ms: float = 0.0
    history: list[float] = field(default_factory=list)  # end-to-end ms per decision


def backtest_config(cfg, market: str) -> BacktestConfig:
    """The BacktestConfig equivalent of a LiveConfig (same strategy, costs and exchange settings)."""
    s = cfg.strategy
    return BacktestConfig(market=market, strategy=s.strategy, topk=s.topk, n_drop=s.n_drop, hold_thresh=s.hold_thresh,
                          long_threshold=s.long_threshold, short_threshold=s.short_threshold, cash=cfg.cash,
                          fill=s.fill, costs=s.costs, participation=s.participation, leverage=s.leverage,
                          allow_short=s.allow_short, risk_degree=s.risk_degree, corporate_actions=s.corporate_actions)


class LiveEngine:
    """One trading account driven bar by bar (see the module docstring)."""

    def __init__(self, bt: BacktestConfig, symbols: list[str], scorer, oms, journal, risk, broker=None,
                 instruments: pd.DataFrame | None = None, flags: pd.DataFrame | None = None,
                 first_bar: dict | None = None, benchmark: str | None = None, monitor=None,
                 review_mode: str = "hold") -> None:
        bt.validate()
        self.bt, self.symbols = bt, list(symbols)
        self.index = pd.Index(self.symbols, dtype=object)  # object, not Arrow strings: iterated every decision
        self.rules, self.costs = bt.market_rules(), bt.cost_model_used()
        n = len(self.symbols)
        boards = symbol_boards(self.symbols, instruments)
        bmin, bstep, smin, sstep = lot_arrays(self.rules, boards)
        self.lots = {s: LotRule(bmin[j], bstep[j], smin[j], sstep[j]) for j, s in enumerate(self.symbols)}
        self.sell_steps = {s: float(sstep[j]) for j, s in enumerate(self.symbols)}
        self.whole = {s: bool(bstep[j] >= 1.0) for j, s in enumerate(self.symbols)}
        self.strategy = {"topk": lambda: TopkDropout(bt.topk, bt.n_drop, bt.hold_thresh, bt.risk_degree),
                         "threshold": lambda: Threshold(bt.long_threshold, bt.short_threshold, bt.shorting(),
                                                        bt.leverage / n),
                         "weights": TargetWeights}[bt.strategy]()
        self.exchange = Exchange(self.rules, self.costs, bt.participation, bt.leverage, bt.allow_short, lots=self.lots)
        self.broker = broker if broker is not None else PaperBroker(self.exchange)
        self.feed = BarFeed(self.symbols, self.rules, bt.fill, self.costs.default_sigma, instruments, flags, first_bar)
        self.portfolio = Portfolio(bt.cash, t_plus=self.rules.t_plus)
        self.scorer, self.oms, self.journal, self.risk = scorer, oms, journal, risk
        self.monitor, self.benchmark, self.review_mode = monitor, benchmark, review_mode
        self.ca_mode = CA_MODES.index(bt.corporate_actions)
        self.borrow_rate = self.rules.borrow_fee_rate if bt.costs else 0.0
        self.last_ts: pd.Timestamp | None = None
        self.last_fields: BarFields | None = None
        self.timing = DecisionTiming()
        self.day_start_equity = bt.cash
        self.traded_today = 0.0
        self.bench_prev: float = np.nan
        self.bench_last: float = np.nan

    # ------------------------------------------------------------------ warm-up (no trading)
    def warm(self, ts: pd.Timestamp, bars: pd.DataFrame) -> None:
        """Advance market and scorer state over a bar without trading (history, or recovery)."""
        fields = self.feed.step(ts, bars)
        self._note_benchmark(bars)
        self.scorer.update(fields.as_dict(), ts)
        closes = fields.has_bar
        self.portfolio.last_price.update(dict(zip(np.asarray(self.symbols, dtype=object)[closes], fields.close[closes])))
        self.last_ts, self.last_fields = ts, fields

    def _note_benchmark(self, bars: pd.DataFrame) -> None:
        if self.benchmark is None:
            return
        row = bars[bars["symbol"].astype(str) == self.benchmark]
        if len(row):
            ts = self.last_ts
            new_day = ts is None or pd.Timestamp(row["ts"].iloc[0]).normalize() != pd.Timestamp(ts).normalize()
            if new_day:
                self.bench_prev = self.bench_last
            self.bench_last = float(row["close"].iloc[-1])

    # ------------------------------------------------------------------ one bar
    def on_bar(self, ts: pd.Timestamp, bars: pd.DataFrame, decide: bool = True, day_end: bool = True) -> list[dict]:
        """Process one bar (see the module docstring); returns the broker's execution records."""
        ts = pd.Timestamp(ts)
        new_date = self.last_ts is None or ts.normalize() != pd.Timestamp(self.last_ts).normalize()
        fields = self.feed.step(ts, bars)
        self._note_benchmark(bars)
        pf = self.portfolio
        ca_cash = 0.0
        if self.ca_mode:
            for j in np.flatnonzero(np.isfinite(fields.ca_ratio) & (fields.ca_ratio != 1.0)):
                sym = self.symbols[j]
                r = float(fields.ca_ratio[j])
                old = pf.position(sym)
                ca_cash += pf.apply_corporate_action(sym, r, self.ca_mode, self.whole[sym])
                share, _ = corporate_action_split(r, self.ca_mode)
                if isinstance(self.broker, PaperBroker):
                    self.broker.scale_orders(sym, old, pf.position(sym), share, self.whole[sym])
        if self.rules.t_plus == 0 or new_date:
            pf.settle()
        if new_date:
            self.day_start_equity = pf.equity()
            self.risk.new_session(ts.normalize(), start_equity=self.day_start_equity)
            self.traded_today = 0.0
        day_cost = pf.charge_borrow(self.borrow_rate, self._years_since(ts)) if self.last_ts is not None else 0.0
        records = []
        if isinstance(self.broker, PaperBroker):
            j = self.index.get_indexer([o.symbol for o in self.broker.queue])
            frame = pd.DataFrame({"price": fields.fill_price[j], "volume": fields.volume[j],
                                  "limit_up": fields.limit_up[j], "limit_down": fields.limit_down[j],
                                  "sigma": fields.sigma[j]}, index=[o.symbol for o in self.broker.queue])
            frame = frame[~frame.index.duplicated()]
            records = self.broker.on_bar(ts, frame, pf)
            for rec in records:
                self._book(rec, ts)
                day_cost += rec["total_cost"]
        live = fields.has_bar
        pf.mark(dict(zip(np.asarray(self.symbols, dtype=object)[live], fields.close[live])), day_end=day_end)
        gross, equity = pf.gross_and_equity()
        if day_end:
            self._expire_held(ts)
        self.journal.record_equity(ts, equity=equity, cash=pf.cash, gross=gross, costs=day_cost, dividends=ca_cash)
        if self.monitor is not None:
            self.monitor.record_prices(ts, self.symbols, fields.open)
        self.last_ts, self.last_fields = ts, fields
        if decide:
            self.decide(ts, fields)
        else:
            self.scorer.update(fields.as_dict(), ts)
        for e in self.risk.drain_events():  # pause / resume latches and state changes
            kind, symbol = e.get("kind", ""), e.get("symbol", "")
            rule = ("market_pause_move" if not symbol else "pause_move") if kind in ("pause", "resume") else kind
            self.journal.add_risk_event(ts=ts, client_id="", symbol=symbol, rule=rule, action=kind,
                                        reason=e.get("detail", ""))
        return records

    def _years_since(self, ts: pd.Timestamp) -> float:
        return (ts - pd.Timestamp(self.last_ts)).value / (86_400e9 * 365.0)

    def _book(self, rec: dict, ts: pd.Timestamp) -> None:
        """Journal one execution record: the fill (idempotent) and the order's final state. Orders are
        day orders, as in the backtest: a remainder the bar could not fill is cancelled."""
        cid = rec["client_id"]
        order = self.oms.order(cid)
        filled = float(rec["shares_filled"])
        reason = rec.get("reason") or ""
        if filled > 0:
            self.oms.apply_fill(fill_from_record(rec), complete=rec["status"] == "filled")
            self.traded_today += float(rec["value"])
            self.risk.on_fill(order, filled, float(rec["price"]), ts)
            if rec["status"] == "partial":
                self.oms.mark(cid, OrderStatus.CANCELLED, f"day order remainder cancelled ({reason})", "broker", ts)
        else:
            self.oms.mark(cid, OrderStatus.REJECTED, f"exchange: {reason}", "broker", ts)
        self.risk.on_order_done(order)

    def _expire_held(self, ts: pd.Timestamp) -> None:
        for order in list(self.oms.held()):
            created = pd.Timestamp(order.created) if order.created is not None else ts
            if created.normalize() < ts.normalize():
                self.oms.mark(order.client_id, OrderStatus.EXPIRED, "review not given before the session end",
                              "engine", ts)

    # ------------------------------------------------------------------ decisions
    def decide(self, ts: pd.Timestamp, fields: BarFields) -> list[Order]:
        """Score the bar and turn the scores into journalled, risk-checked, sent orders."""
        t0 = time.perf_counter()
        scores = np.asarray(self.scorer.update(fields.as_dict(), ts), dtype="float64")
        t1 = time.perf_counter()
        model = getattr(self.scorer, "active", None) or getattr(self.scorer, "name", "")
        if self.monitor is not None:
            self.monitor.record_scores(ts, self.symbols, scores)
        out: list[Order] = []
        if np.isfinite(scores).any():
            targets = self.strategy.targets(pd.Series(scores, index=self.index), self.portfolio)
            orders = orders_from_targets(targets, self.portfolio, self.sell_steps)
            self._account = self.account_view()  # one view per decision (the risk manager counts pending orders)
            for row in orders.itertuples(index=False):
                j = self.index.get_loc(row.symbol)
                order = Order(client_id=self.journal.next_client_id(), symbol=row.symbol, side=row.side,
                              shares=float(row.shares), value=float(row.value), created=ts, reason="strategy",
                              model=str(model), score=float(scores[j]))
                out.append(self.submit(order, ts))
            self._account = None
        t2 = time.perf_counter()
        self.timing.score_ms, self.timing.decide_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        self.timing.history.append((t2 - t0) * 1e3)
        if self.monitor is not None and hasattr(self.monitor, "record_latency"):
            self.monitor.record_latency((t2 - t0) * 1e3)
        if hasattr(self.scorer, "flush"):
            self.scorer.flush()  # the backup model's update, after the orders are out
        return out

    def market_view(self, symbol: str) -> MarketView:
        j = self.index.get_loc(symbol)
        f = self.last_fields
        last = self.portfolio.last_price.get(symbol, np.nan)
        if f is None:
            return MarketView(last_price=last, prev_close=np.nan)
        return MarketView(last_price=last, prev_close=float(f.prev_ref[j]), limit_up=float(f.limit_up[j]),
                          limit_down=float(f.limit_down[j]))

    def account_view(self) -> AccountView:
        pf = self.portfolio
        return AccountView(cash=pf.cash, equity=pf.equity(), positions=dict(pf.shares), traded_today=self.traded_today)

    def benchmark_view(self) -> MarketView | None:
        if self.benchmark is None or not np.isfinite(self.bench_last):
            return None
        return MarketView(last_price=self.bench_last, prev_close=self.bench_prev)

    def submit(self, order: Order, ts: pd.Timestamp) -> Order:
        """Journal NEW, risk-check, then send / hold / reject (each step journalled). Idempotent by client id."""
        stored, is_new = self.oms.submit(order)
        if not is_new:
            return stored
        account = getattr(self, "_account", None) or self.account_view()
        decision = self.risk.check(order, self.market_view(order.symbol), account, ts, self.benchmark_view())
        if decision.action == "reject":
            self.journal.add_risk_event(ts=ts, client_id=order.client_id, symbol=order.symbol, rule=decision.rule,
                                        action="reject", reason=decision.reason)
            self.oms.mark(order.client_id, OrderStatus.REJECTED, f"risk: {decision.rule}: {decision.reason}", "risk",
                          ts)
            return self.oms.order(order.client_id)
        self.oms.mark(order.client_id, OrderStatus.RISK_CHECKED, "", "risk", ts)
        if decision.action == "hold":
            self.journal.add_risk_event(ts=ts, client_id=order.client_id, symbol=order.symbol, rule=decision.rule,
                                        action="hold", reason=decision.reason)
            self.oms.mark(order.client_id, OrderStatus.HELD, f"review: {decision.reason}", "risk", ts)
            if self.review_mode == "approve":
                return self.approve(order.client_id, "replay", ts)
            if self.review_mode == "reject":
                return self.reject(order.client_id, "replay", ts)
            return self.oms.order(order.client_id)
        return self._send(order.client_id, ts)

    def _send(self, client_id: str, ts: pd.Timestamp, actor: str = "engine") -> Order:
        """Send to the broker. A send that times out is ambiguous (the broker may have the order): it is
        journalled SENT then UNKNOWN and stays in flight until a broker query (`oms.reconcile`) resolves
        it; it is never guessed."""
        order = self.oms.order(client_id)
        try:
            self.broker.send_order(order)
        except TimeoutError as e:
            self.oms.mark(client_id, OrderStatus.SENT, "", actor, ts)
            self.oms.mark(client_id, OrderStatus.UNKNOWN, f"send timed out: {e}", "broker", ts)
            self.risk.on_submitted(order, ts)
            return self.oms.order(client_id)
        self.oms.mark(client_id, OrderStatus.SENT, "", actor, ts)
        self.risk.on_submitted(order, ts)
        return self.oms.order(client_id)

    def approve(self, client_id: str, actor: str, ts: pd.Timestamp | None = None) -> Order:
        """A reviewer approves a held order: it is sent for the next bar."""
        order = self.oms.order(client_id)
        if order is None or order.status != OrderStatus.HELD:
            raise ValueError(f"order {client_id} is not held for review")
        return self._send(client_id, ts or self.last_ts, actor=actor)

    def reject(self, client_id: str, actor: str, ts: pd.Timestamp | None = None) -> Order:
        order = self.oms.order(client_id)
        if order is None or order.status != OrderStatus.HELD:
            raise ValueError(f"order {client_id} is not held for review")
        self.oms.mark(client_id, OrderStatus.REJECTED, "rejected by the reviewer", actor, ts or self.last_ts)
        return self.oms.order(client_id)

    def kill(self, actor: str, ts: pd.Timestamp | None = None) -> list[str]:
        """Kill switch: halt trading (persisted) and cancel every open order."""
        ts = ts or self.last_ts
        ids = list(self.risk.kill())
        for order in list(self.oms.open_orders()):
            if order.client_id not in ids:
                ids.append(order.client_id)
        for cid in ids:
            order = self.oms.order(cid)
            if order is None or OrderStatus(order.status).terminal:
                continue
            self.broker.cancel_order(cid)
            self.oms.mark(cid, OrderStatus.CANCELLED, "kill switch", actor, ts)
            self.risk.on_cancel(order, ts)
            self.risk.on_order_done(order)
        self.journal.add_risk_event(ts=ts, client_id="", symbol="", rule="kill_switch", action="halt",
                                    reason=f"kill switch by {actor}")
        self.journal.set_state("risk", self.risk.state_dict())
        return ids

    # ------------------------------------------------------------------ persistence
    def snapshot(self) -> dict:
        pf = self.portfolio
        return {"cash": pf.cash, "shares": pf.shares, "sellable": pf.sellable, "held_days": pf.held_days,
                "last_price": {k: v for k, v in pf.last_price.items() if np.isfinite(v)},
                "last_corporate_action": {k: list(v) for k, v in pf.last_corporate_action.items()},
                "day_start_equity": self.day_start_equity, "traded_today": self.traded_today}

    def restore(self, snap: dict) -> None:
        pf = self.portfolio
        pf.cash = float(snap["cash"])
        pf.shares = {k: float(v) for k, v in snap["shares"].items()}
        pf.sellable = {k: float(v) for k, v in snap["sellable"].items()}
        pf.held_days = {k: int(v) for k, v in snap["held_days"].items()}
        pf.last_price.update({k: float(v) for k, v in snap["last_price"].items()})
        pf.last_corporate_action = {k: (float(a), float(b)) for k, (a, b) in snap["last_corporate_action"].items()}
        self.day_start_equity = float(snap.get("day_start_equity", pf.equity()))
        self.traded_today = float(snap.get("traded_today", 0.0))

    def reconcile(self, ts: pd.Timestamp | None = None):
        """Query the broker and reconcile the journal with it (`OrderManager.reconcile`); fills and final
        states it resolves reach the risk manager too (active orders, exposure). Returns the report."""
        fills = list(self.broker.query_fills())
        report = self.oms.reconcile(self.broker.query_orders(), fills, ts)
        by_id = {f.fill_id: f for f in fills}
        for fid in report.applied_fills:
            f = by_id.get(fid)
            order = self.oms.order(f.client_id) if f is not None else None
            if order is not None:
                self.risk.on_fill(order, f.shares, f.price, ts or self.last_ts)
        for cid, _, to in report.transitions:
            order = self.oms.order(cid)
            if order is not None and OrderStatus(to).terminal:
                self.risk.on_order_done(order)
        return report

    def requeue_open_orders(self) -> None:
        """After a restart: orders SENT to the paper broker and not yet executed go back in its queue."""
        if not isinstance(self.broker, PaperBroker):
            return
        sent = [o for o in self.oms.open_orders() if o.status in (OrderStatus.SENT, OrderStatus.UNKNOWN)]
        for o in sorted(sent, key=lambda o: (len(o.client_id), o.client_id)):
            self.broker.send_order(o)
            if o.status == OrderStatus.UNKNOWN:
                self.oms.mark(o.client_id, OrderStatus.SENT, "reconciled with the paper broker", "engine", self.last_ts)

