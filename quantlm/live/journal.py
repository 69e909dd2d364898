"""The live journal: every order state, fill, risk and model decision, durable before it is acknowledged.

One SQLite file (stdlib `sqlite3`) in WAL mode with `synchronous=FULL`: a commit returns only after
the WAL is fsynced, so a committed write survives kill -9 and power loss. Every public write is one
transaction; `with journal.batch():` groups several writes into one (commit at exit, rollback on an
exception; a nested batch is a savepoint of the outer one). A write that cannot be made (disk full,
locked by another writer for longer than `busy_timeout` seconds, a read-only file) raises `JournalError`:
the caller must refuse the order, never acknowledge it.

Threads: one connection per `Journal`, usable from the thread that opened it only (sqlite3's check).
Other threads or processes open their own `Journal` on the same file: WAL readers never block the
writer, and a second writer waits up to `busy_timeout`.

Schema (`PRAGMA user_version` = 1). Timestamps are ISO strings (`str(pd.Timestamp)`, exchange-local
unless the caller passes otherwise); `wall` columns are Unix seconds of the write; shares in shares,
prices, values and costs in the account currency; NaN is stored as NULL.

- orders(client_id PK, symbol, side, shares, value, limit_price, created, reason, model, score, status,
  filled_shares, avg_price, actor, updated): the current state of each order.
- order_events(seq PK autoincrement, client_id, ts, status, reason, actor, wall): every state an order
  entered (the first one is its insertion), in order.
- fills(fill_id PK, client_id, symbol, side, shares, price, ts, commission, stamp_duty, transfer_fee,
  sec_fee, slippage, impact, total_cost, wall).
- risk_events(seq PK, ts, client_id, symbol, rule, action, reason, wall).
- model_events(seq PK, ts, event, model_from, model_to, reason, detail JSON, wall).
- state(key PK, value JSON): engine state (trading state, kill switch, the client id counter ...).
- equity(ts PK, equity, cash, gross, net, costs, turnover, extra JSON): one row per mark; re-recording a
  ts replaces it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from quantlm.live.types import TERMINAL, TRANSITIONS, Fill, Order, OrderStatus

SCHEMA_VERSION = 1
COUNTER_KEY = "client_id_counter"
ID_BLOCK = 1000  # client ids reserved per committed counter write
ORDER_COLUMNS = ("client_id", "symbol", "side", "shares", "value", "limit_price", "created", "reason", "model",
                 "score", "status", "filled_shares", "avg_price", "actor", "updated")
FILL_COSTS = ("commission", "stamp_duty", "transfer_fee", "sec_fee", "slippage", "impact", "total_cost")
EQUITY_COLUMNS = ("equity", "cash", "gross", "net", "costs", "turnover")
# columns a transition may change besides status (e.g. a limit price amended, the broker's fill totals)
TRANSITION_FIELDS = frozenset({"shares", "value", "limit_price", "filled_shares", "avg_price"})
_EPS = 1e-9

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS orders (client_id TEXT PRIMARY KEY, symbol TEXT NOT NULL, side TEXT NOT NULL,
  shares REAL, value REAL, limit_price REAL, created TEXT, reason TEXT, model TEXT, score REAL,
  status TEXT NOT NULL, filled_shares REAL NOT NULL DEFAULT 0, avg_price REAL, actor TEXT, updated TEXT);
CREATE INDEX IF NOT EXISTS orders_status ON orders(status);
CREATE TABLE IF NOT EXISTS order_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, client_id TEXT NOT NULL,
  ts TEXT, status TEXT NOT NULL, reason TEXT, actor TEXT, wall REAL);
CREATE INDEX IF NOT EXISTS order_events_client ON order_events(client_id);
CREATE TABLE IF NOT EXISTS fills (fill_id TEXT PRIMARY KEY, client_id TEXT NOT NULL, symbol TEXT, side TEXT,
  shares REAL, price REAL, ts TEXT, {", ".join(c + " REAL" for c in FILL_COSTS)}, wall REAL);
CREATE INDEX IF NOT EXISTS fills_client ON fills(client_id);
CREATE TABLE IF NOT EXISTS risk_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT, client_id TEXT,
  symbol TEXT, rule TEXT, action TEXT, reason TEXT, wall REAL);
CREATE TABLE IF NOT EXISTS model_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT, event TEXT,
  model_from TEXT, model_to TEXT, reason TEXT, detail TEXT, wall REAL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS equity (ts TEXT PRIMARY KEY, {", ".join(c + " REAL" for c in EQUITY_COLUMNS)},
  extra TEXT);
"""


class JournalError(ValueError):
    """The journal cannot be opened or written: the order must be refused, never acknowledged."""

    user_facing = True


class InvalidTransition(ValueError):
    """An order state change that `types.TRANSITIONS` forbids (nothing was changed)."""

    user_facing = True


class UnknownOrder(ValueError):
    """A client order id the journal has never seen."""

    user_facing = True


def _ts(ts: object | None) -> str:
    """ISO text of a timestamp (now, local wall clock, when None)."""
    return str(ts if isinstance(ts, pd.Timestamp) else pd.Timestamp.now() if ts is None else pd.Timestamp(ts))


def _num(x: object) -> float:
    """A stored REAL back to float (NULL -> NaN)."""
    return math.nan if x is None else float(x)


def _json(value: object) -> str:
    return json.dumps(value, default=str, sort_keys=True)


class Journal:
    """Durable store of the live engine's orders, fills and decisions (see the module docstring)."""

    def __init__(self, path: str | Path, busy_timeout: float = 5.0) -> None:
        """Open (creating if needed) the journal at `path`; `busy_timeout` in seconds."""
        self.path = Path(path)
        self.busy_timeout = float(busy_timeout)
        self._depth = 0  # batch nesting depth
        self._aborted = False  # SQLite rolled back the open batch (an error inside was caught by the caller)
        self._rollback_hooks: list[Callable[[], None]] = []
        self._next_id: int | None = None  # next counter value to hand out (in memory, never decreases)
        self._limit = 0  # end of the reserved block of counter values
        self._reserved_in_batch = False  # the block was reserved inside the open batch (undone by a rollback)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise JournalError(f"cannot open journal {self.path}: {e}") from e
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"journal {self.path} cannot use WAL mode (got {mode!r}); is it on a network disk?")
            self._conn.execute("PRAGMA synchronous = FULL")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(f"journal {self.path} has schema version {version}, newer than this quantlm "
                                   f"({SCHEMA_VERSION}); upgrade quantlm")
            with self.batch():
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    self._conn.execute(stmt)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._reserve_ids()  # committed now: even ids handed out in the first batch are durable
        except sqlite3.Error as e:
            self._conn.close()
            raise self._error(e, "open") from e
        except JournalError:
            self._conn.close()
            raise

    # -- transactions -------------------------------------------------------------------------------------

    def _error(self, e: sqlite3.Error, what: str) -> JournalError:
        """A clear JournalError for a failed SQLite operation."""
        code = getattr(e, "sqlite_errorcode", 0) & 0xFF
        where = f"journal {self.path}"
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(e):
            msg = f"{where} is locked by another writer (waited {self.busy_timeout:g} s)"
        elif code == sqlite3.SQLITE_READONLY or "readonly" in str(e):
            msg = f"{where} is read-only (check the file's and its folder's permissions)"
        elif code == sqlite3.SQLITE_FULL or "full" in str(e):
            msg = f"{where}: the disk is full"
        elif code == sqlite3.SQLITE_CORRUPT or code == sqlite3.SQLITE_NOTADB:
            msg = f"{where} is damaged or not a journal"
        else:
            msg = f"{where}: {e}"
        return JournalError(f"cannot {what}: {msg}; nothing was written, the order (if any) is refused")

    def on_rollback(self, hook: Callable[[], None]) -> None:
        """Call `hook()` after a transaction rolls back (e.g. to rebuild state kept in memory)."""
        self._rollback_hooks.append(hook)

    @contextmanager
    def batch(self) -> Iterator[Journal]:
        """Group every write inside into one transaction (a nested batch is a savepoint of the outer one)."""
        if self._depth:
            if not self._conn.in_transaction:  # SQLite rolled the whole transaction back (e.g. disk full)
                self._aborted = True
                raise JournalError(f"cannot write: journal {self.path}: this batch was already rolled back by an "
                                   "earlier error; nothing was written, the order (if any) is refused")
            name = f"b{self._depth}"
            self._conn.execute(f"SAVEPOINT {name}")
            self._depth += 1
            try:
                yield self
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute(f"ROLLBACK TO {name}")
                    self._conn.execute(f"RELEASE {name}")
                    self._after_rollback()
                else:
                    self._aborted = True
                raise
            else:
                self._conn.execute(f"RELEASE {name}")
            finally:
                self._depth -= 1
            return
        if self._next_id is not None and self._limit - self._next_id < ID_BLOCK // 2:
            self._reserve_ids()  # top up outside the batch: ids handed out inside it are durable already
        try:
            self._conn.execute("BEGIN IMMEDIATE")  # take the write lock now: waits happen here, not mid-way
        except sqlite3.Error as e:
            raise self._error(e, "start a transaction") from e
        self._depth, self._aborted = 1, False
        try:
            yield self
            if self._aborted or not self._conn.in_transaction:
                raise JournalError(f"cannot write: journal {self.path}: the batch was rolled back by an error "
                                   "inside it; nothing was written, the order (if any) is refused")
            self._conn.execute("COMMIT")
            self._reserved_in_batch = False
        except BaseException as e:
            self._rollback()
            if isinstance(e, sqlite3.Error):
                raise self._error(e, "write") from e
            raise
        finally:
            self._depth = 0

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite already rolled back (e.g. after SQLITE_FULL)
        self._after_rollback()

    def _after_rollback(self) -> None:
        if self._reserved_in_batch:
            self._limit = 0  # that reservation is undone: reserve again (this process's counter never goes back)
        for hook in self._rollback_hooks:
            hook()

    def _insert(self, table: str, row: dict, verb: str = "INSERT") -> int:
        """`verb` INTO `table` one row (column -> value); the number of rows written (0 when ignored)."""
        sql = f"{verb} INTO {table}({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
        return self._conn.execute(sql, list(row.values())).rowcount

    def _query(self, sql: str, args: Iterable = ()) -> list[sqlite3.Row]:
        try:
            cur = self._conn.execute(sql, tuple(args))
            return cur.fetchall()
        except sqlite3.Error as e:
            raise self._error(e, "read") from e

    def _frame(self, sql: str, args: Iterable = (), ts_cols: Iterable[str] = ("ts",)) -> pd.DataFrame:
        try:
            cur = self._conn.execute(sql, tuple(args))
            df = pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])
        except sqlite3.Error as e:
            raise self._error(e, "read") from e
        for c in ts_cols:
            if c in df:
                df[c] = pd.to_datetime(df[c], format="ISO8601")
        return df

    def close(self) -> None:
        """Close the connection (a no-op when already closed)."""
        self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state and ids ------------------------------------------------------------------------------------

    def get_state(self, key: str, default: object = None) -> object:
        """The JSON value stored under `key`, or `default`."""
        rows = self._query("SELECT value FROM state WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def set_state(self, key: str, value: object) -> None:
        """Store `value` (JSON-serialisable; timestamps become strings) under `key`."""
        with self.batch():
            self._insert("state", dict(key=key, value=_json(value)), "INSERT OR REPLACE")

    def next_client_id(self, prefix: str = "Q") -> str:
        """A client order id never handed out before, by this process or an earlier one: `{prefix}-{n:08d}`.

        `n` (shared by all prefixes) comes from a block of ID_BLOCK numbers reserved in `state` by a
        committed transaction (at open) before any is handed out; a batch tops the block up before it begins, so an
        id handed out inside a batch is already durable even if the process dies before the batch commits
        (only a batch handing out more than ID_BLOCK / 2 ids reserves inside itself). Restarts skip the
        rest of a block. Ids already in `orders` (e.g. typed by a user) are skipped.
        """
        while True:
            if self._next_id is None or self._next_id >= self._limit:
                self._reserve_ids()
            cid = f"{prefix}-{self._next_id:08d}"
            self._next_id += 1
            if not self._query("SELECT 1 FROM orders WHERE client_id = ?", (cid,)):
                return cid

    def _reserve_ids(self) -> None:
        """Reserve the next ID_BLOCK counter values (in the open batch, else in a committed transaction)."""
        own = self._depth == 0
        try:
            if own:
                self._conn.execute("BEGIN IMMEDIATE")
            rows = self._conn.execute("SELECT value FROM state WHERE key = ?", (COUNTER_KEY,)).fetchall()
            first = max(int(json.loads(rows[0][0])) if rows else 1, self._next_id or 1)
            self._insert("state", dict(key=COUNTER_KEY, value=_json(first + ID_BLOCK)), "INSERT OR REPLACE")
            if own:
                self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            if own and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise self._error(e, "reserve client order ids") from e
        self._next_id, self._limit, self._reserved_in_batch = first, first + ID_BLOCK, not own

    # -- orders -------------------------------------------------------------------------------------------

    def _event(self, client_id: str, ts: str, status: str, reason: str, actor: str) -> None:
        self._insert("order_events", dict(client_id=client_id, ts=ts, status=status, reason=reason, actor=actor,
                                          wall=time.time()))

    def add_order(self, order: Order) -> bool:
        """Insert `order` and its first event; False (nothing changed) when its client_id already exists."""
        d = {c: getattr(order, c) for c in ORDER_COLUMNS[:-1]}
        d["status"] = OrderStatus(order.status).value
        d["created"] = None if order.created is None else _ts(order.created)
        d["updated"] = _ts(order.created)
        with self.batch():
            if not self._insert("orders", d, "INSERT OR IGNORE"):
                return False
            self._event(order.client_id, d["updated"], d["status"], order.reason, order.actor)
        return True

    def order(self, client_id: str) -> Order | None:
        """The stored order, or None."""
        rows = self._query(f"SELECT {', '.join(ORDER_COLUMNS)} FROM orders WHERE client_id = ?", (client_id,))
        return _to_order(rows[0]) if rows else None

    def orders(self, status: str | OrderStatus | Iterable[str | OrderStatus] | None = None,
               last: int | None = None) -> list[Order]:
        """Stored orders (all, or those in `status`), in insertion order; only the `last` n when given."""
        sql = f"SELECT {', '.join(ORDER_COLUMNS)} FROM orders"
        args: list = []
        if status is not None:
            args = [OrderStatus(status).value] if isinstance(status, str) else [OrderStatus(s).value for s in status]
            sql += f" WHERE status IN ({', '.join('?' * len(args))})"
        if last is not None:
            rows = self._query(sql + " ORDER BY rowid DESC LIMIT ?", [*args, int(last)])[::-1]
        else:
            rows = self._query(sql + " ORDER BY rowid", args)
        return [_to_order(r) for r in rows]

    def open_orders(self) -> list[Order]:
        """Orders in a non-terminal state."""
        return self.orders([s for s in OrderStatus if s not in TERMINAL])

    def orders_frame(self) -> pd.DataFrame:
        """All orders as a DataFrame (the orders table)."""
        df = self._frame(f"SELECT {', '.join(ORDER_COLUMNS)} FROM orders ORDER BY rowid",
                         ts_cols=("created", "updated"))
        return df.astype({c: float for c in ("shares", "value", "limit_price", "score", "filled_shares", "avg_price")})

    def transition(self, client_id: str, status: str | OrderStatus, reason: str = "", actor: str = "engine",
                   ts: object | None = None, **fields: float) -> Order:
        """Move an order to `status` (checked against `types.TRANSITIONS`), optionally changing `fields`
        (shares, value, limit_price, filled_shares, avg_price); appends an order event. Returns the order."""
        new = OrderStatus(status)
        bad = set(fields) - TRANSITION_FIELDS
        if bad:
            raise ValueError(f"transition cannot change {sorted(bad)}; allowed: {sorted(TRANSITION_FIELDS)}")
        with self.batch():
            old = self.order(client_id)
            if old is None:
                raise UnknownOrder(f"order {client_id!r} is not in the journal {self.path}")
            if new not in TRANSITIONS[old.status]:
                allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old.status])) or "none (terminal)"
                raise InvalidTransition(f"order {client_id}: {old.status.value} -> {new.value} is not allowed "
                                        f"(from {old.status.value}: {allowed})")
            when = _ts(ts)
            fields = {k: float(v) for k, v in fields.items()}
            sets = {"status": new.value, "updated": when, **fields}
            self._conn.execute(f"UPDATE orders SET {', '.join(k + ' = ?' for k in sets)} WHERE client_id = ?",
                               [*sets.values(), client_id])
            self._event(client_id, when, new.value, reason, actor)
        return dataclasses.replace(old, status=new, **fields)

    # -- fills --------------------------------------------------------------------------------------------

    def add_fill(self, fill: Fill, complete: bool | None = None) -> bool:
        """Record `fill` and update its order's filled_shares, avg_price and status; False (nothing
        changed) for a fill_id already recorded.

        The status becomes FILLED when `complete`, PARTIAL when not; with `complete=None` a share-sized
        order is FILLED once its shares are filled and a value-sized order by its first fill (as in the
        backtest, the exchange converts the value to whole lots at once). A fill on an order whose state
        cannot move (e.g. already CANCELLED) is still recorded: the money moved; its event says so.
        """
        if not (math.isfinite(fill.shares) and fill.shares > 0 and math.isfinite(fill.price) and fill.price > 0):
            raise ValueError(f"fill {fill.fill_id}: shares and price must be positive, got {fill.shares} @ {fill.price}")
        with self.batch():
            order = self.order(fill.client_id)
            if order is None:
                raise UnknownOrder(f"fill {fill.fill_id}: order {fill.client_id!r} is not in the journal")
            row = dict(fill_id=fill.fill_id, client_id=fill.client_id, symbol=fill.symbol, side=fill.side,
                       shares=float(fill.shares), price=float(fill.price), ts=_ts(fill.ts),
                       **{c: float(getattr(fill, c)) for c in FILL_COSTS}, wall=time.time())
            if not self._insert("fills", row, "INSERT OR IGNORE"):
                return False
            filled = order.filled_shares + float(fill.shares)
            old_value = 0.0 if order.filled_shares <= 0 else order.avg_price * order.filled_shares
            avg = (old_value + float(fill.price) * float(fill.shares)) / filled if filled > 0 else math.nan
            if complete is None:
                complete = filled >= order.shares - _EPS if order.shares > 0 else True
            status = OrderStatus.FILLED if complete else OrderStatus.PARTIAL
            when = _ts(fill.ts)
            note = f"fill {fill.fill_id}: {fill.shares:g} @ {fill.price:g}"
            if status not in TRANSITIONS[order.status]:
                status, note = order.status, f"{note} on a {order.status.value} order (status kept)"
            self._conn.execute("UPDATE orders SET filled_shares = ?, avg_price = ?, status = ?, updated = ? "
                               "WHERE client_id = ?", (filled, avg, status.value, when, fill.client_id))
            self._event(fill.client_id, when, status.value, note, "broker")
        return True

    def has_fill(self, fill_id: str) -> bool:
        """Whether `fill_id` is recorded."""
        return bool(self._query("SELECT 1 FROM fills WHERE fill_id = ?", (fill_id,)))

    def fills(self, client_id: str | None = None) -> pd.DataFrame:
        """Recorded fills (of one order, or all), in the order they were recorded."""
        return self._rows("fills", client_id)

    def events(self, client_id: str | None = None) -> pd.DataFrame:
        """Order events (of one order, or all), oldest first."""
        return self._rows("order_events", client_id)

    def _rows(self, table: str, client_id: str | None = None) -> pd.DataFrame:
        where, args = ("WHERE client_id = ?", (client_id,)) if client_id is not None else ("", ())
        return self._frame(f"SELECT * FROM {table} {where} ORDER BY rowid", args)

    # -- risk, model and equity records -------------------------------------------------------------------

    def add_risk_event(self, ts: object | None, client_id: str, symbol: str, rule: str, action: str,
                       reason: str) -> None:
        """Record one risk decision (action: accept | hold | reject | pause | resume | kill ...)."""
        with self.batch():
            self._insert("risk_events", dict(ts=_ts(ts), client_id=client_id, symbol=symbol, rule=rule, action=action,
                                             reason=reason, wall=time.time()))

    def risk_events(self) -> pd.DataFrame:
        return self._rows("risk_events")

    def add_model_event(self, ts: object | None, event: str, model_from: str = "", model_to: str = "",
                        reason: str = "", detail: dict | None = None) -> None:
        """Record a model event (e.g. event='fallback', from the primary to the backup, and why)."""
        with self.batch():
            self._insert("model_events", dict(ts=_ts(ts), event=event, model_from=model_from, model_to=model_to,
                                              reason=reason, detail=_json(detail or {}), wall=time.time()))

    def model_events(self) -> pd.DataFrame:
        return self._rows("model_events")

    def record_equity(self, ts: object, **values: float) -> None:
        """Record the account at `ts` (currency): equity, cash, gross, net, costs, turnover; other keys
        go to the `extra` JSON column. Recording the same ts again replaces the row."""
        extra = _json({k: v for k, v in values.items() if k not in EQUITY_COLUMNS})
        with self.batch():
            self._insert("equity", dict(ts=_ts(ts), **{c: float(values[c]) for c in EQUITY_COLUMNS if c in values},
                                        extra=extra), "INSERT OR REPLACE")

    def equity(self) -> pd.DataFrame:
        """Equity rows by ts, with the `extra` keys as columns."""
        df = self._frame("SELECT * FROM equity ORDER BY ts").astype({c: float for c in EQUITY_COLUMNS})
        extra = pd.DataFrame([json.loads(x or "{}") for x in df.pop("extra")], index=df.index)
        return pd.concat([df, extra], axis=1)

    def export_csv(self, folder: str | Path) -> dict[str, Path]:
        """Write orders.csv, fills.csv, risk_events.csv, model_events.csv and equity.csv into `folder`."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        frames = {"orders": self.orders_frame(), "fills": self.fills(), "risk_events": self.risk_events(),
                  "model_events": self.model_events(), "equity": self.equity()}
        paths = {}
        for name, df in frames.items():
            paths[name] = out / f"{name}.csv"
            df.to_csv(paths[name], index=False)
        return paths


def _to_order(row: tuple) -> Order:
    d = dict(zip(ORDER_COLUMNS, row))
    return Order(client_id=d["client_id"], symbol=d["symbol"], side=d["side"], shares=_num(d["shares"]),
                 value=_num(d["value"]), limit_price=_num(d["limit_price"]),
                 created=None if d["created"] is None else pd.Timestamp(d["created"]), reason=d["reason"] or "",
                 model=d["model"] or "", score=_num(d["score"]), status=OrderStatus(d["status"]),
                 filled_shares=_num(d["filled_shares"]), avg_price=_num(d["avg_price"]), actor=d["actor"] or "")
