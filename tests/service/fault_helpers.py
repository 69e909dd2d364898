"""Helpers of the fault and metrics tests: a paper broker that loses messages, scorers that score nothing
or raise, and an in-process service with a backup model (on the conftest `market`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.live.gateway import PaperBroker
from quantlm.live.types import Order


class LossyBroker(PaperBroker):
    """A PaperBroker whose messages to the engine can be lost, one order at a time.

    - `timeout_after_send`: client ids whose `send_order` reaches the broker (queued, it will execute)
      but whose acknowledgement is lost: `send_order` raises TimeoutError;
    - `timeout_before_send`: client ids whose `send_order` never reaches it (raises TimeoutError, nothing queued);
    - `drop_fill`: client ids whose execution report `on_bar` does not return (the broker filled the
      order and knows it: `query_orders` / `query_fills` say so; the engine is not told).
    """

    name = "lossy-paper"

    def __init__(self, exchange, timeout_after_send=(), timeout_before_send=(), drop_fill=()) -> None:
        super().__init__(exchange)
        self.timeout_after_send, self.timeout_before_send = set(timeout_after_send), set(timeout_before_send)
        self.drop_fill = set(drop_fill)
        self.dropped: list[dict] = []

    def send_order(self, order: Order) -> None:
        if order.client_id in self.timeout_before_send:
            raise TimeoutError(f"broker did not answer the order {order.client_id} (never received)")
        super().send_order(order)
        if order.client_id in self.timeout_after_send:
            raise TimeoutError(f"broker did not acknowledge the order {order.client_id} (acknowledgement lost)")

    def on_bar(self, ts, fields, account) -> list[dict]:
        records = super().on_bar(ts, fields, account)
        kept = [r for r in records if r["client_id"] not in self.drop_fill]
        self.dropped += [r for r in records if r["client_id"] in self.drop_fill]
        return kept


class Silent:
    """A scorer that scores nothing (NaN): the strategy places no orders, only manual ones trade."""

    name = "silent"

    def start(self, history: pd.DataFrame, symbols: list[str]) -> None:
        self.n = len(symbols)

    def update(self, bars, ts, **kw) -> np.ndarray:
        return np.full(self.n, np.nan)


class Raising:
    """A scorer that raises from its `fail_at`-th update on (`fail_at` = 0: never)."""

    def __init__(self, inner, fail_at: int = 0) -> None:
        self.inner, self.fail_at, self.calls = inner, fail_at, 0
        self.name = getattr(inner, "name", "raising")

    def start(self, history, symbols) -> None:
        self.inner.start(history, symbols)

    def update(self, bars, ts, **kw):
        self.calls += 1
        if self.fail_at and self.calls >= self.fail_at:
            raise RuntimeError("primary model crashed")
        return self.inner.update(bars, ts, **kw)


# ---------------------------------------------------------------------- a service with a backup model
def fallback_config(market: Path, folder: Path) -> Path:
    """A live config on the shared test market (conftest `market`) with a primary ("student", the
    market's scores) and a backup ("teacher", other random scores); strategy buys (~1.9M) pass risk,
    orders >= 2.5M are held for review, > 5M rejected; pauses off (the synthetic benchmark jumps); the
    backup, once serving, stays (no recovery within a test)."""
    import yaml

    backup = folder / "teacher.csv"
    if not backup.exists():
        scores = pd.read_csv(market / "scores.csv")
        rng = np.random.default_rng(1)
        scores.assign(score=rng.normal(size=len(scores))).to_csv(backup, index=False)
    cfg = {"cash": 10_000_000.0, "history_days": 40,
           "primary": {"signals": str(market / "scores.csv"), "name": "student"},
           "backup": {"signals": str(backup), "name": "teacher"},
           "strategy": {"topk": 5, "n_drop": 1},
           "risk": {"review_threshold": 2_500_000.0, "max_order_value": 5_000_000.0, "max_position_fraction": 0.5,
                    "max_order_shares": 1_000_000, "pause_move": None, "market_pause_move": None},
           "monitor": {"recover_sessions": 1000}}
    path = folder / "live-fallback.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def open_client(market: Path, config: Path, keys_path: Path, out: Path, **service_kwargs):
    """A started in-process TestClient around a fresh LiveService (replay from 2022-03-01); close with
    `client.__exit__(None, None, None)`. `client.service` is the LiveService."""
    from fastapi.testclient import TestClient

    from quantlm.data.store import Store
    from quantlm.live.config import load_live_config
    from quantlm.service.app import create_app
    from quantlm.service.state import LiveService

    service_kwargs.setdefault("start", "2022-03-01")
    service_kwargs.setdefault("end", "2022-06-30")
    svc = LiveService(load_live_config(config), Store(market / "store"), out, **service_kwargs)
    app = create_app(svc, keys_path, secret=b"test-secret")
    client = TestClient(app, client=("127.0.0.1", 50000))
    client.__enter__()
    client.service = svc
    return client


def on_worker(client, fn, *args):
    """Run `fn(*args)` on the service's engine worker thread (the journal's thread) and return its result."""
    return client.service._executor.submit(fn, *args).result(timeout=60)


def shares_worth(client, symbol: str, value: float) -> int:
    """Whole lots of `symbol` worth about `value` at its last price."""
    price = on_worker(client, lambda: float(client.service.session.engine.portfolio.last_price[symbol]))
    return int(value / price / 100 + 1) * 100
