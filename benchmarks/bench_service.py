"""Trading service under load: `quantlm serve` on 127.0.0.1 with an open-loop asyncio httpx client.

    .venv/bin/python benchmarks/bench_service.py [--seconds 60] [--read-rate 500] [--order-rate 50]

Set-up (all in a temporary folder, removed at the end unless --keep): a 60-symbol synthetic cn store, a
live config whose primary model replays a random Scores file, a keys file with one trader key
(`quantlm keys add`), and `quantlm serve` on a free port of 127.0.0.1 (never another interface) in a
subprocess. The client waits for `/api/v1/health`, then runs two phases:

1. baseline: `--read-rate` GET /api/v1/health per second (no engine access: the HTTP stack alone) for
   `--baseline-seconds` (default: a third of --seconds, at least 5 s);
2. load: `--read-rate` reads per second spread round-robin over the read routes (status, account,
   positions, orders, fills, review queue, models, signals: each goes through the engine's worker
   thread; orders, fills and signals ask for a dashboard page of 100 rows), and at the same time
   `--order-rate` order submissions per second (POST /api/v1/orders: buy 100 shares at market of a
   symbol listed before the replay starts, a fresh client id each, valid and through the risk
   manager), for `--seconds`.

Requests are sent on a fixed schedule (request i at t0 + i / rate), not in a closed loop: a slow
server does not slow the client down, and latency is measured from the scheduled send time (queueing
in the client counts, so coordinated omission does not flatter the numbers). Every request has a 10 s
timeout. The achieved rate is answers / (last answer - first scheduled send).

What counts (printed per class):
- ok: a 2xx answer;
- risk: an order answered 4xx whose body says the risk manager rejected it (an expected outcome of a
  valid order, e.g. a price pause on the symbol; not an error, but counted and shown);
- errors: everything else (other 4xx, any 5xx, timeouts, connection errors, and "late": an answer
  more than 10 s after the request's scheduled time, e.g. after waiting for a free connection in a
  saturated client). The issue's target is 0.

The service's risk limits are widened for the run (cash 1e10, position / turnover / rate / active-order
/ daily limits off, no review threshold) so that 50 small orders a second for a minute are all
acceptable; the per-order rules (price collar, order size and value caps, pauses) stay on.
Printed: per class achieved rate, p50 / p99 / max latency (ms) and the counts; the read p50 / p99
against the health baseline's (the cost of the engine hop). No assertion: figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from json import dumps as json_dumps
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HOST = "127.0.0.1"  # the load test never leaves this machine
API = "/api/v1"
# a dashboard-sized page of orders / fills / signals (the routes' default is 500 rows)
READ_ROUTES = ("status", "account", "positions", "orders?limit=100", "fills?limit=100", "review", "models",
               "signals?limit=100")
TIMEOUT_S = 10.0


# ---------------------------------------------------------------------- set-up
def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def make_setup(folder: Path, n_symbols: int = 60) -> tuple[Path, Path, str, list[str]]:
    """(config path, keys file, trader API key, tradable symbols) of a synthetic service set-up in `folder`."""
    import yaml

    from quantlm.data.store import Store
    from quantlm.data.synth import SynthConfig, write_market
    from quantlm.live.replay import tradable_symbols

    store = Store(folder / "store")
    write_market(store, SynthConfig(n_symbols=n_symbols, start="2022-01-04", end="2022-12-30", news=False))
    bars = store.bars()
    rng = np.random.default_rng(0)
    bars[["symbol", "ts"]].assign(score=rng.normal(size=len(bars))).to_csv(folder / "scores.csv", index=False)
    meta = store.meta()
    listed = store.listing()
    early = set(listed.loc[listed["first_ts"] <= "2022-02-01", "symbol"])  # priced when the replay starts
    symbols = [s for s in tradable_symbols(store, meta.get("market") or "cn", meta.get("benchmark")) if s in early]
    cfg = {"cash": 1e10, "history_days": 60,
           "primary": {"signals": str(folder / "scores.csv"), "name": "signals"},
           "strategy": {"topk": 10, "n_drop": 2},
           "risk": {"review_threshold": None, "max_position_fraction": None, "max_daily_turnover": None,
                    "max_orders_per_second": None, "max_active_orders": None, "max_daily_orders": None,
                    "max_daily_trades": None, "duplicate_window_s": None}}
    config = folder / "live.yaml"
    config.write_text(yaml.safe_dump(cfg))
    keys = folder / "keys.json"
    add_key(keys, "bench-admin", "admin")  # `quantlm serve` refuses to start without an admin key
    key = add_key(keys, "bench", "trader")
    return config, keys, key, symbols


def add_key(keys: Path, name: str, role: str) -> str:
    """`quantlm keys add`: the printed key (shown once, only its hash is stored)."""
    out = subprocess.run([sys.executable, "-m", "quantlm.cli", "keys", "add", "--name", name, "--role", role,
                          "--keys", str(keys)], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    tokens = re.findall(r"\bqlm_\S+", out)
    if not tokens:
        raise RuntimeError(f"no key in the output of `quantlm keys add`: {out!r}")
    return tokens[-1]


def start_server(folder: Path, config: Path, keys: Path, port: int, staleness_ms: float = 0.0) -> subprocess.Popen:
    """`quantlm serve` on 127.0.0.1:port (its log in folder/serve.log)."""
    cmd = [sys.executable, "-m", "quantlm.cli", "serve", "--config", str(config), "--store", str(folder / "store"),
           "--keys", str(keys), "--out", str(folder / "out"), "--host", HOST, "--port", str(port),
           "--read-staleness-ms", str(staleness_ms)]
    log = open(folder / "serve.log", "w")  # noqa: SIM115 - closed with the process
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


async def wait_ready(client, base: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    """Poll /api/v1/health until it answers 200 (the engine warmed up)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"quantlm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if (await client.get(f"{base}{API}/health")).status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"quantlm serve not ready after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


# ---------------------------------------------------------------------- a lean client for small machines
class RawResponse:
    def __init__(self, status_code: int, text: str) -> None:
        self.status_code, self.text = status_code, text


class RawClient:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams (JSON bodies, Content-Length or chunked
    responses), for machines where httpx's own CPU cost would be the bottleneck (`--client raw`): the
    same requests as httpx sends, about 5x less client CPU per request. A pool of `size` connections;
    a request takes a free one (or waits), and a broken one is reopened."""

    def __init__(self, base: str, headers: dict[str, str], size: int) -> None:
        host, port = base.split("//", 1)[1].split(":")
        self.host, self.port = host, int(port)
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.size = size
        self.pool: asyncio.Queue = asyncio.Queue()
        for _ in range(size):
            self.pool.put_nowait(None)  # opened on first use

    async def request(self, method: str, url: str, json: dict | None = None, timeout: float = TIMEOUT_S):
        path = "/" + url.split("//", 1)[1].split("/", 1)[1] if "//" in url else url
        body = b"" if json is None else json_dumps(json).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.extra}"
                f"Content-Length: {len(body)}\r\n" + ("Content-Type: application/json\r\n" if json is not None else "")
                + "\r\n").encode()
        conn = await self.pool.get()
        try:
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout)
            reader, writer = conn
            writer.write(head + body)
            status, text = await asyncio.wait_for(self._read(reader), timeout)
        except BaseException:
            if conn is not None:
                conn[1].close()
            self.pool.put_nowait(None)
            raise
        self.pool.put_nowait(conn)
        return RawResponse(status, text)

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[int, str]:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
        if fields.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                n = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                chunks.append(await reader.readexactly(n + 2))
                if n == 0:
                    break
            data = b"".join(c[:-2] for c in chunks)
        else:
            data = await reader.readexactly(int(fields.get("content-length", "0")))
        return status, data.decode("utf-8", "replace")

    async def get(self, url: str, timeout: float = TIMEOUT_S):
        return await self.request("GET", url, timeout=timeout)

    async def aclose(self) -> None:
        while not self.pool.empty():
            conn = self.pool.get_nowait()
            if conn is not None:
                conn[1].close()


# ---------------------------------------------------------------------- load
@dataclass
class Stats:
    """Latencies (s, from the scheduled send time) and outcome counts of one request class."""

    name: str
    latency: list[float] = field(default_factory=list)
    ok: int = 0
    risk: int = 0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    first_error: str = ""

    def add(self, latency: float, outcome: str, status: str, detail: str = "") -> None:
        self.latency.append(latency)
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if outcome == "errors" and not self.first_error:
            self.first_error = f"{status}: {detail[:300]}"

    def line(self, seconds: float) -> str:
        x = np.asarray(self.latency) * 1e3
        p50, p99, mx = (np.percentile(x, 50), np.percentile(x, 99), x.max()) if len(x) else (np.nan,) * 3
        n = self.ok + self.risk + self.errors
        return (f"{self.name:<14} {n / seconds:8.1f}/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  max {mx:8.2f} ms  "
                f"ok {self.ok:6d}  risk {self.risk:4d}  errors {self.errors:4d}  {dict(sorted(self.statuses.items()))}")


def is_risk_rejection(status: int, body: str) -> bool:
    """A 4xx that says the risk manager rejected the order (expected for a valid order in some markets)."""
    return 400 <= status < 500 and status not in (401, 403, 404, 405) and "risk" in body.lower()


async def one(client, method: str, url: str, stats: Stats, scheduled: float, body: dict | None = None) -> None:
    try:
        r = await client.request(method, url, json=body, timeout=TIMEOUT_S)
        lat = time.perf_counter() - scheduled
        if lat > TIMEOUT_S:  # answered, but more than TIMEOUT_S after its scheduled time (queued in the client)
            stats.add(lat, "errors", "late", f"answered {lat:.1f} s after its scheduled time")
        elif 200 <= r.status_code < 300:
            stats.add(lat, "ok", str(r.status_code))
        elif body is not None and is_risk_rejection(r.status_code, r.text):
            stats.add(lat, "risk", str(r.status_code))
        else:
            stats.add(lat, "errors", str(r.status_code), r.text)
    except Exception as e:  # noqa: BLE001 - every failure is counted
        stats.add(time.perf_counter() - scheduled, "errors", type(e).__name__, str(e))


async def paced(rate: float, seconds: float, make, t0: float) -> list[asyncio.Task]:
    """Launch `make(i, scheduled)` for i = 0, 1, ... at t0 + i / rate until `seconds` are over (open loop)."""
    tasks = []
    for i in itertools.count():
        at = t0 + i / rate
        if at - t0 >= seconds:
            break
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(make(i, at)))
    return tasks


async def run_phase(client, base: str, seconds: float, read_rate: float, order_rate: float,
                    read_routes: tuple[str, ...], symbols: list[str], run_id: str) -> tuple[list[Stats], float]:
    """One phase: reads (and orders when order_rate > 0) on their schedules; (stats, wall seconds)."""
    reads = {r: Stats(f"GET {r}") for r in read_routes}
    orders = Stats("POST orders")

    def read(i: int, at: float):
        route = read_routes[i % len(read_routes)]
        return one(client, "GET", f"{base}{API}/{route}", reads[route], at)

    def order(i: int, at: float):
        body = {"symbol": symbols[i % len(symbols)], "side": "buy", "shares": 100, "client_id": f"bench-{run_id}-{i}"}
        return one(client, "POST", f"{base}{API}/orders", orders, at, body)

    t0 = time.perf_counter() + 0.05
    jobs = [paced(read_rate, seconds, read, t0)]
    if order_rate > 0:
        jobs.append(paced(order_rate, seconds, order, t0))
    launched = await asyncio.gather(*jobs)
    await asyncio.gather(*itertools.chain.from_iterable(launched))
    wall = time.perf_counter() - t0
    return [*reads.values(), *([orders] if order_rate > 0 else [])], wall


def merged(name: str, parts: list[Stats]) -> Stats:
    out = Stats(name)
    for p in parts:
        out.latency += p.latency
        out.ok, out.risk, out.errors = out.ok + p.ok, out.risk + p.risk, out.errors + p.errors
        for k, v in p.statuses.items():
            out.statuses[k] = out.statuses.get(k, 0) + v
        out.first_error = out.first_error or p.first_error
    return out


async def bench(args, base: str, key: str, symbols: list[str], proc, log: Path) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=args.connections, max_keepalive_connections=args.connections)
    headers = {"X-API-Key": key}
    async with httpx.AsyncClient(limits=limits, headers=headers, trust_env=False) as probe:
        await wait_ready(probe, base, proc, log)
    client = (RawClient(base, headers, args.connections) if args.client == "raw" else
              httpx.AsyncClient(limits=limits, headers=headers, trust_env=False))
    try:
        base_secs = args.baseline_seconds or max(5.0, args.seconds / 3)
        baseline, bwall = await run_phase(client, base, base_secs, args.read_rate, 0, ("health",), symbols, "b")
        load, lwall = await run_phase(client, base, args.seconds, args.read_rate, args.order_rate, READ_ROUTES,
                                      symbols, str(int(time.time())))
    finally:
        await client.aclose()
    print(f"client: {args.client}, {args.connections} connections; machine: {os.cpu_count()} CPUs, "
          f"load average before the run {args.load_before}")
    health = baseline[0]
    reads = merged("GET (all)", load[:-1])
    orders = load[-1]
    print(f"\nbaseline: GET /health alone, {base_secs:.0f} s")
    print("  " + health.line(bwall))
    print(f"load: {args.read_rate:g} reads/s + {args.order_rate:g} orders/s, {args.seconds:.0f} s")
    for s in load[:-1]:
        print("  " + s.line(lwall))
    print("  " + reads.line(lwall))
    print("  " + orders.line(lwall))
    if health.latency and reads.latency:
        h = np.percentile(np.asarray(health.latency) * 1e3, [50, 99])
        r = np.percentile(np.asarray(reads.latency) * 1e3, [50, 99])
        print(f"engine hop: read p50 {r[0]:.2f} ms vs health {h[0]:.2f} ms (x{r[0] / h[0]:.1f}), "
              f"p99 {r[1]:.2f} vs {h[1]:.2f} ms (x{r[1] / h[1]:.1f})")
    errors = health.errors + reads.errors + orders.errors
    for s in (health, reads, orders):
        if s.first_error:
            print(f"first error ({s.name}): {s.first_error}")
    print(f"errors: {errors} (health {health.errors}, reads {reads.errors}, orders {orders.errors}); "
          f"risk rejections {orders.risk}")
    return {"errors": errors, "health": health, "reads": reads, "orders": orders}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="load phase length (s)")
    ap.add_argument("--baseline-seconds", type=float, default=None, help="health-only phase (default: seconds/3, >= 5)")
    ap.add_argument("--read-rate", type=float, default=500.0, help="read requests per second")
    ap.add_argument("--order-rate", type=float, default=50.0, help="order submissions per second")
    ap.add_argument("--connections", type=int, default=64, help="client connection pool size")
    ap.add_argument("--client", choices=("httpx", "raw"), default="httpx",
                    help="httpx.AsyncClient, or a minimal asyncio HTTP/1.1 client (less client CPU, small machines)")
    ap.add_argument("--symbols", type=int, default=60, help="symbols in the synthetic store")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (store, journal, serve.log)")
    ap.add_argument("--read-staleness-ms", type=float, default=0.0,
                    help="quantlm serve --read-staleness-ms: reads may lag OTHER users' changes by this much "
                         "(0 = every read current); the order-submitting user always reads its own writes")
    args = ap.parse_args(argv)
    args.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    folder = Path(tempfile.mkdtemp(prefix="quantlm-bench-service-"))
    proc = None
    try:
        config, keys, key, symbols = make_setup(folder, args.symbols)
        port = free_port()
        proc = start_server(folder, config, keys, port, args.read_staleness_ms)
        print(f"reads may lag other users' changes by up to {args.read_staleness_ms:g} ms (--read-staleness-ms)")
        print(f"quantlm serve on {HOST}:{port} (pid {proc.pid}), folder {folder}")
        out = asyncio.run(bench(args, f"http://{HOST}:{port}", key, symbols, proc, folder / "serve.log"))
        (folder / "bench.json").write_text(json.dumps({k: v if isinstance(v, int) else v.__dict__ | {"latency": None}
                                                       for k, v in out.items()}, default=str))
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
