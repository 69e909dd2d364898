"""Shared fixtures of the service tests (API, auth, fuzz, dashboard, metrics, faults).

- `market` (session): a tiny synthetic store (12 symbols, 2022-01-04..2022-06-30) and a signals file of
  random scores at `market / "scores.csv"`; `STORE_START` / `REPLAY_START` / `REPLAY_END` bound it.
- `live_config_path` (session): a live config (YAML) replaying the signals file as the model, cash
  10,000,000, review threshold 1,000,000 (so a 1.2M order is HELD), position / share caps loose
  enough for such an order to pass every other rule, and participation 1.0 (an approved 1.2M order
  fills whole at the next bar instead of a 10%-of-volume slice).
- `keys` (session): a keys file with one key per role; `keys.path`, `keys.key[role]`, `keys.name[role]`,
  `keys.headers(role)` -> {"Authorization": "Bearer ..."}. Names: vera (viewer), tom (trader),
  rita (reviewer), ada (admin), and tara (a second trader).
- `make_client(mode="replay", **service_kwargs)`: a started FastAPI TestClient (in-process, peer
  127.0.0.1) around a fresh LiveService in a fresh out folder (`client.out`, `client.service`);
  replay mode starts at REPLAY_START (nothing traded until a step). Push mode warms up from the store.
- `client`: `make_client()` in replay mode; `push_client`: `make_client("push")`; `shared_client`: one
  replay client per test module (wrong-key limit raised); `build_client(...)` builds one by hand.
- helpers: `on_engine(client, fn, *args)` runs fn(service, *args) on the engine's thread (journal reads),
  `order_body(...)`, `big_buy(client)` (an order worth ~1.2M: held for review).
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

STORE_START, STORE_END = "2022-01-04", "2022-06-30"
REPLAY_START, REPLAY_END = "2022-03-01", "2022-06-30"
ROLE_NAMES = {"viewer": "vera", "trader": "tom", "reviewer": "rita", "admin": "ada"}


@pytest.fixture(scope="session")
def market(tmp_path_factory):
    """A tiny synthetic store at `market / "store"` and random scores at `market / "scores.csv"`."""
    from quantlm.data.store import Store
    from quantlm.data.synth import SynthConfig, write_market

    root = tmp_path_factory.mktemp("service-market")
    store = Store(root / "store")
    write_market(store, SynthConfig(n_symbols=12, start=STORE_START, end=STORE_END))
    bars = store.bars()
    rng = np.random.default_rng(0)
    bars[["symbol", "ts"]].assign(score=rng.normal(size=len(bars))).to_csv(root / "scores.csv", index=False)
    return root


@pytest.fixture(scope="session")
def live_config_path(market):
    cfg = {"cash": 10_000_000.0, "history_days": 40,
           "primary": {"signals": str(market / "scores.csv"), "name": "signals"},
           "strategy": {"topk": 3, "n_drop": 1, "participation": 1.0},
           "risk": {"review_threshold": 1_000_000.0, "review_mode": "hold", "max_position_fraction": 0.5,
                    "max_order_shares": 1_000_000, "max_order_value": 5_000_000.0}}
    path = market / "live.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Keys:
    """A keys file with one key per role (plaintext kept here, in the test, only)."""

    def __init__(self, path, key: dict[str, str], name: dict[str, str]) -> None:
        self.path, self.key, self.name = path, key, name

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key[role]}"}


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    from quantlm.service.auth import KeyStore

    path = tmp_path_factory.mktemp("service-keys") / "keys.json"
    ks = KeyStore(path)
    key = {role: ks.add(name, role) for role, name in ROLE_NAMES.items()}
    key["trader2"] = ks.add("tara", "trader")
    return Keys(path, key, dict(ROLE_NAMES, trader2="tara"))


def build_client(market, live_config_path, keys, out, mode: str = "replay", app_kwargs: dict | None = None,
                 **kwargs):
    """A started TestClient (peer 127.0.0.1) around a new LiveService writing to `out`; call
    `client.__exit__(None, None, None)` to stop it. `client.out`, `client.service` are set."""
    from fastapi.testclient import TestClient

    from quantlm.data.store import Store
    from quantlm.live.config import load_live_config
    from quantlm.service.app import create_app
    from quantlm.service.state import LiveService

    if mode == "replay":
        kwargs.setdefault("start", REPLAY_START)
        kwargs.setdefault("end", REPLAY_END)
    svc = LiveService(load_live_config(live_config_path), Store(market / "store"), out, mode=mode, **kwargs)
    app = create_app(svc, keys.path, secret=b"test-secret", **(app_kwargs or {}))
    c = TestClient(app, client=("127.0.0.1", 50000))
    c.__enter__()
    c.out, c.service = out, svc
    return c


@pytest.fixture
def make_client(market, live_config_path, keys, tmp_path):
    """Factory: make_client(mode="replay", app_kwargs=None, **LiveService kwargs) -> a started TestClient
    in a fresh out folder (stopped after the test). app_kwargs go to create_app (e.g. login_limit)."""
    opened = []

    def make(mode: str = "replay", app_kwargs: dict | None = None, **kwargs):
        c = build_client(market, live_config_path, keys, tmp_path / f"out-{len(opened)}", mode, app_kwargs, **kwargs)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def shared_client(market, live_config_path, keys, tmp_path_factory):
    """One replay-mode client for a whole test module (for tests that change nothing, or little);
    failed-key limits raised so that many wrong-key requests do not hit 429."""
    c = build_client(market, live_config_path, keys, tmp_path_factory.mktemp("shared-out"),
                     app_kwargs={"key_fail_limit": 100_000})
    yield c
    c.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture
def push_client(make_client):
    return make_client("push")


def on_engine(client, fn, *args):
    """fn(service, *args) on the service's engine worker thread (the only one that may read the journal),
    called from a test through the TestClient's event loop; returns its result."""
    async def go():
        return await client.service.call(fn, client.service, *args)

    return client.portal.call(go)


def order_body(symbol: str, side: str = "buy", shares: int = 100, **extra) -> dict:
    return {"symbol": symbol, "side": side, "shares": shares, **extra}


def symbol_and_price(client, keys) -> tuple[str, float]:
    """A traded symbol and its last price (from the account's engine, via the API's signals / positions)."""
    svc = client.service
    sym = svc.session.symbols[0]
    return sym, float(svc.session.engine.portfolio.last_price[sym])


def big_buy(client, keys, value: float = 1_200_000.0, **extra) -> dict:
    """Submit (as the trader) a buy worth about `value` (held when >= the review threshold); the response JSON."""
    sym, price = symbol_and_price(client, keys)
    shares = int(value / price / 100 + 1) * 100
    r = client.post("/api/v1/orders", json=order_body(sym, shares=shares, **extra), headers=keys.headers("trader"))
    assert r.status_code == 201, r.text
    return r.json()
