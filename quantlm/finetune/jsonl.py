"""Labelled examples as JSON Lines: export from a store, read with validation, fine-tune a trader on them.

One example per line (UTF-8; blank lines are skipped; a ``.gz`` suffix means gzip):

    {"symbol": "600000.SH", "ts": "2021-03-05",
     "bars": [{"ts": "2021-01-04", "open": 10.1, "high": 10.4, "low": 10.0, "close": 10.3,
               "volume": 1200000, "amount": 12300000.0}, ...],
     "text": "report / news text visible at ts",
     "signal": "buy",
     "returns": {"1": 0.012, "5": -0.004, "10": 0.031}}

- ``symbol`` (string, required, non-empty); ``ts`` (string, required): the decision time, exchange-local
  without a time zone ("2021-03-05" for daily bars, "2021-03-05 10:30:00" intraday). The decision is
  taken after the close of the bar at ts; a trade fills at the next bar's open.
- ``bars`` (list, required): the symbol's bars up to and including ts, oldest first, strictly increasing
  ``ts`` (same format as above), the last bar's ts equal to the example's ts. Per bar ``open``, ``high``,
  ``low``, ``close`` (prices > 0, in currency; high >= max(open, close), low <= min(open, close)),
  ``volume`` (shares, >= 0) are required numbers; ``amount`` (traded value, >= 0) and ``adj_factor``
  (cumulative adjustment factor, > 0; adjusted price = price * adj_factor) are optional numbers or null.
  Inputs are computed causally *within* the example: the tokenizer's volatility and volume levels are
  EWMAs (half-life 20 bars by default) started at the example's first bar, so give every example
  warm-up bars before its model window: the model reads the last ``sft.window_bars`` bars, and
  ``export_jsonl`` writes 2 x the tokenizer's half-life (40) extra bars in front of them.
- ``text`` (string or null, optional): text visible at ts (published before ts's decision cut-off).
- ``signal`` (required): "buy", "hold" or "sell", the label (the output).
- ``returns`` (object, optional): {horizon in bars as a string: simple return as a fraction, or null},
  ret_h = open(t+1+h) / open(t+1) - 1 as in `quantlm.features.targets`; values must be > -1.
- ``meta`` (anything, optional): ignored. Any other field is an error (typos do not pass silently).

(symbol, ts) must be unique. `read_jsonl` reports the first problem of the file as
"FILE, line N, field 'bars[3].high': what is wrong" (a `DataValidationError`, exit code 2 in the CLI).

`train_sft_jsonl` fine-tunes with the targets at each example's last bar only: direction from
``signal``, returns where given, and cross-sectional ranks of the returns among the examples that share
a ts (when at least 5 do; NaN otherwise). Text is embedded with the offline MiniLM (`load_embedder`) and
enters at the last bar. The latest ``valid_fraction`` of the distinct example timestamps is held out
to pick the best step; the 1 + max(horizon) timestamps before it are purged from training (their
labels overlap the held-out period).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.data.schema import DataValidationError
from quantlm.finetune.data import FinetuneDataError

SIGNALS = {"sell": 0, "hold": 1, "buy": 2}
SIGNAL_NAMES = ("sell", "hold", "buy")
FIELDS = ("symbol", "ts", "bars", "text", "signal", "returns", "meta")
REQUIRED = ("symbol", "ts", "bars", "signal")
BAR_FIELDS = ("ts", "open", "high", "low", "close", "volume", "amount", "adj_factor")
BAR_REQUIRED = frozenset(BAR_FIELDS[:6])
_NUM = (int, float)


class JsonlError(DataValidationError):
    """A bad example line: file, 1-based line number, field path (e.g. bars[3].high) and the problem."""

    def __str__(self) -> str:
        where = [str(x) for x in (self.file, f"line {self.row}" if self.row is not None else None) if x]
        if self.column:
            where.append(f"field '{self.column}'")
        return f"{', '.join(where)}: {self.problem}" if where else self.problem


@dataclass
class JsonlExamples:
    """Validated examples; bars of example i are rows offsets[i]:offsets[i+1] of `bars`."""

    path: str
    line: np.ndarray  # int64 [n]: 1-based line of each example
    symbol: np.ndarray  # object [n]
    ts: pd.DatetimeIndex  # [n] decision times
    offsets: np.ndarray  # int64 [n + 1]
    bars: pd.DataFrame  # ts, open, high, low, close, volume, amount, adj_factor (NaN = unknown)
    text: list[str | None]
    signal: np.ndarray  # int64 [n]: 0 sell, 1 hold, 2 buy (the direction codes of finetune.data)
    returns: dict[int, np.ndarray]  # horizon (bars) -> float64 [n], NaN where not given

    def __len__(self) -> int:
        return len(self.line)

    def example_bars(self, i: int) -> pd.DataFrame:
        return self.bars.iloc[self.offsets[i]:self.offsets[i + 1]].reset_index(drop=True)


def _open(path: Path, mode: str):
    return gzip.open(path, mode, encoding="utf-8") if path.suffix == ".gz" else path.open(mode, encoding="utf-8")


def _is_num(v) -> bool:
    return type(v) in _NUM


def _check_line(obj, name: str, no: int) -> tuple[str, str, list, str | None, int, dict[int, float]]:
    """Structure of one example (types and keys); raises JsonlError."""
    def err(problem: str, field: str | None = None) -> JsonlError:
        return JsonlError(problem, file=name, row=no, column=field)

    if not isinstance(obj, dict):
        raise err(f"an example must be a JSON object, got {type(obj).__name__}")
    for k in obj:
        if k not in FIELDS:
            raise err(f"unknown field (expected {', '.join(FIELDS)})", k)
    for k in REQUIRED:
        if obj.get(k) is None:
            raise err("missing" if k not in obj else "is null", k)
    sym, ts, bars, signal = obj["symbol"], obj["ts"], obj["bars"], obj["signal"]
    if not isinstance(sym, str) or not sym.strip():
        raise err(f"must be a non-empty string, got {sym!r}", "symbol")
    if not isinstance(ts, str):
        raise err(f"must be a date string such as \"2021-03-05\", got {ts!r}", "ts")
    if not isinstance(signal, str) or signal not in SIGNALS:
        raise err(f"unknown signal {signal!r} (expected buy, hold or sell)", "signal")
    text = obj.get("text")
    if text is not None and not isinstance(text, str):
        raise err(f"must be a string or null, got {type(text).__name__}", "text")
    rets: dict[int, float] = {}
    raw = obj.get("returns")
    if raw is not None:
        if not isinstance(raw, dict):
            raise err("must be an object {\"horizon\": return}", "returns")
        for k, v in raw.items():
            if not (k.isdigit() and int(k) >= 1):
                raise err("a horizon must be a whole number of bars >= 1 written as a string, e.g. \"5\"",
                          f"returns.{k}")
            if v is None:
                continue
            if not _is_num(v) or not math.isfinite(v):
                raise err(f"must be a finite number or null, got {v!r}", f"returns.{k}")
            if v <= -1:
                raise err(f"a simple return (fraction) must be > -1, got {v!r}", f"returns.{k}")
            rets[int(k)] = float(v)
    if not isinstance(bars, list) or not bars:
        raise err("must be a non-empty list of bars", "bars")
    for j, b in enumerate(bars):
        if type(b) is not dict:
            raise err(f"a bar must be an object, got {type(b).__name__}", f"bars[{j}]")
        keys = b.keys()
        if not keys <= set(BAR_FIELDS):
            raise err(f"unknown field (expected {', '.join(BAR_FIELDS)})", f"bars[{j}].{sorted(keys - set(BAR_FIELDS))[0]}")
        if not keys >= BAR_REQUIRED:
            raise err("missing", f"bars[{j}].{sorted(BAR_REQUIRED - keys)[0]}")
    return sym.strip(), ts, bars, text, SIGNALS[signal], rets


def _parse_ts(values: list, lines: np.ndarray, name: str, field) -> np.ndarray:
    """int64 ns of ISO date / datetime strings; JsonlError at the first bad one (field(i) names value i)."""
    def bad(i: int, why: str) -> JsonlError:
        return JsonlError(why, file=name, row=int(lines[i]), column=field(i))

    for i, v in enumerate(values):
        if type(v) is not str:
            raise bad(i, f"must be a date string such as \"2021-03-05\", got {v!r}")
    try:
        ts = pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601", errors="coerce")
        if getattr(ts.dt, "tz", None) is not None:
            raise ValueError("tz")
    except (ValueError, TypeError):  # mixed or aware time zones: find the culprit
        for i, v in enumerate(values):
            try:
                t = pd.Timestamp(v)
            except ValueError:
                raise bad(i, f"unparseable timestamp {v!r}") from None
            if t.tz is not None:
                raise bad(i, f"timestamp {v!r} has a time zone: write exchange-local times without one") from None
        raise
    nat = ts.isna().to_numpy()
    if nat.any():
        i = int(np.flatnonzero(nat)[0])
        raise bad(i, f"unparseable timestamp {values[i]!r}")
    return ts.to_numpy(dtype="datetime64[ns]").astype(np.int64)


def read_jsonl(path: str | Path) -> JsonlExamples:
    """Read and validate a JSON Lines file of examples (schema in the module docstring).

    Raises JsonlError (a DataValidationError) for the first problem of the file: bad JSON, a missing,
    unknown or mistyped field, an unknown signal, non-increasing bar ts, last bar ts != ts, NaN /
    infinite / non-positive prices, high < max(open, close), low > min(open, close), negative volume,
    a duplicate (symbol, ts). FileNotFoundError if the file does not exist.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON Lines file not found: {path}")
    lines, symbols, ts_raw, texts, signals, rets, counts = [], [], [], [], [], [], []
    cols: dict[str, list] = {f: [] for f in BAR_FIELDS}
    pending: JsonlError | None = None
    with _open(path, "rt") as fh:
        for no, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                sym, ts, bars, text, signal, ret = _check_line(obj, name, no)
            except json.JSONDecodeError as e:
                pending = JsonlError(f"not valid JSON: {e.msg} (character {e.colno})", file=name, row=no)
                break
            except JsonlError as e:
                pending = e
                break
            lines.append(no), symbols.append(sym), ts_raw.append(ts), texts.append(text)
            signals.append(signal), rets.append(ret), counts.append(len(bars))
            for f in BAR_FIELDS:
                cols[f].extend([b.get(f) for b in bars])
    if not lines:
        raise pending or JsonlError("no examples", file=name)
    line = np.asarray(lines, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    bar_line = np.repeat(line, counts)
    bar_j = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts)
    candidates: list[tuple[int, int, JsonlError]] = [] if pending is None else [(pending.row, -1, pending)]

    def first(mask: np.ndarray, field: str, why) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            candidates.append((int(bar_line[i]), int(bar_j[i]), JsonlError(
                why(i), file=name, row=int(bar_line[i]), column=f"bars[{bar_j[i]}].{field}")))

    try:
        ex_ts = _parse_ts(ts_raw, line, name, lambda i: "ts")
        bar_ts = _parse_ts(cols["ts"], bar_line, name, lambda i: f"bars[{bar_j[i]}].ts")
    except JsonlError as e:
        candidates.append((e.row, 0, e))
        raise min(candidates, key=lambda c: c[:2])[2] from None
    frame = {"ts": bar_ts.view("datetime64[ns]")}
    for f in BAR_FIELDS[1:]:
        values, optional = cols[f], f in ("amount", "adj_factor")
        if not set(map(type, values)) <= ({int, float, type(None)} if optional else {int, float}):
            i = next(i for i, v in enumerate(values) if not (_is_num(v) or (optional and v is None)))
            first(np.arange(len(values)) == i, f, lambda i, v=values[i], o=optional: f"must be a number"
                  f"{' or null' if o else ''}, got {v!r}")
            values = [v if _is_num(v) else None for v in values]
        frame[f] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    o, h, lo, c, v = (frame[k] for k in ("open", "high", "low", "close", "volume"))
    amount, adj = frame["amount"], frame["adj_factor"]
    for f in ("open", "high", "low", "close"):
        first(~np.isfinite(frame[f]), f, lambda i, f=f: f"price is {float(frame[f][i])!r}")
        first(frame[f] <= 0, f, lambda i, f=f: f"price must be positive, got {float(frame[f][i])!r}")
    with np.errstate(invalid="ignore"):
        first(h < np.maximum(o, c), "high",
              lambda i: f"high {float(h[i])!r} is below max(open, close) = {float(max(o[i], c[i]))!r}")
        first(lo > np.minimum(o, c), "low",
              lambda i: f"low {float(lo[i])!r} is above min(open, close) = {float(min(o[i], c[i]))!r}")
        first(~np.isfinite(v) | (v < 0), "volume", lambda i: f"volume must be a finite number >= 0, got {float(v[i])!r}")
        first(np.isinf(amount) | (amount < 0), "amount", lambda i: f"amount must be >= 0 or null, got {float(amount[i])!r}")
        first(np.isinf(adj) | (adj <= 0), "adj_factor", lambda i: f"adj_factor must be > 0 or null, got {float(adj[i])!r}")
    step_ok = np.diff(bar_ts) > 0
    inner = np.ones(len(bar_ts), dtype=bool)
    inner[offsets[:-1]] = False
    first(np.r_[False, ~step_ok] & inner, "ts", lambda i: f"bar ts {cols['ts'][i]!r} is not after the previous bar's "
          f"{cols['ts'][i - 1]!r} (bars must be oldest first, strictly increasing)")
    last = offsets[1:] - 1
    off = np.flatnonzero(bar_ts[last] != ex_ts)
    if len(off):
        k = int(off[0])
        candidates.append((int(line[k]), int(bar_j[last[k]]), JsonlError(
            f"the last bar's ts {cols['ts'][last[k]]!r} must equal the example's ts {ts_raw[k]!r} (bars up to ts only)",
            file=name, row=int(line[k]), column=f"bars[{bar_j[last[k]]}].ts")))
    key = pd.DataFrame({"s": symbols, "t": ex_ts})
    dup = key.duplicated(keep="first").to_numpy()
    if dup.any():
        k = int(np.flatnonzero(dup)[0])
        earlier = int(line[np.flatnonzero((key["s"] == symbols[k]).to_numpy() & (ex_ts == ex_ts[k]))[0]])
        candidates.append((int(line[k]), -1, JsonlError(f"duplicate example ({symbols[k]}, {ts_raw[k]}): "
                                                        f"line {earlier} has the same symbol and ts",
                                                        file=name, row=int(line[k]), column="ts")))
    if candidates:
        raise min(candidates, key=lambda c: c[:2])[2]
    horizons = sorted({h for r in rets for h in r})
    returns = {h: np.array([r.get(h, np.nan) for r in rets], dtype=np.float64) for h in horizons}
    return JsonlExamples(name, line, np.asarray(symbols, dtype=object), pd.DatetimeIndex(ex_ts.view("datetime64[ns]")),
                         offsets, pd.DataFrame(frame), texts, np.asarray(signals, dtype=np.int64), returns)


# ---------------------------------------------------------------------- export
def _tokenizer_info(source) -> tuple[int, int | None]:
    """(warm-up bars = 2 x the tokenizer's longest half-life, the model's context in bars or None)."""
    from quantlm.model.hf import model_size
    from quantlm.tokenize import KlineTokenizer

    if source is None:
        return 40, None
    if isinstance(source, KlineTokenizer):
        return 2 * max(source.vol_halflife, source.volume_halflife), None
    d = Path(source)
    if not (d / "tokenizer").is_dir():
        raise FinetuneDataError(f"{d}: not a pretrained model or trader folder (no tokenizer/ inside)")
    tok = KlineTokenizer.load(d / "tokenizer")
    size = model_size(d)  # quantlm.model.hf: either folder layout
    max_bars = size.get("max_bars") if size else None
    return 2 * max(tok.vol_halflife, tok.volume_halflife), max_bars


def _stamp(t) -> str:
    t = pd.Timestamp(t)
    return str(t.date()) if t == t.normalize() else str(t)


def _ts_strings(ts: np.ndarray) -> list[str]:
    idx = pd.DatetimeIndex(ts)
    return list(idx.strftime("%Y-%m-%d" if (idx == idx.normalize()).all() else "%Y-%m-%d %H:%M:%S"))


def _bar_json(g: pd.DataFrame, ts_str: list[str]) -> list[str]:
    """One JSON object per bar (numbers exactly as stored; NaN amount / adj_factor -> null)."""
    cols = [c for c in ("open", "high", "low", "close", "volume", "amount", "adj_factor") if c in g.columns]
    values = {c: g[c].to_numpy(dtype=np.float64).tolist() for c in cols}
    out = []
    for i, t in enumerate(ts_str):
        bar = {"ts": t, **{c: values[c][i] for c in cols}}
        for c in ("amount", "adj_factor"):
            if c in bar and not math.isfinite(bar[c]):
                if c == "adj_factor":
                    del bar[c]
                else:
                    bar[c] = None
        out.append(json.dumps(bar))
    return out


def export_jsonl(store, path: str | Path, tokenizer_or_model_dir=None, start=None, end=None, window_bars: int = 64,
                 targets=None, text: bool = True, symbols=None, every: int = 1, warmup_bars: int | None = None,
                 text_sessions: int = 3) -> int:
    """Write the store's labelled examples with start <= ts <= end to `path` (JSON Lines); returns the count.

    Every `every`-th session of the store's calendar in [start, end] gives one example per tradable
    symbol with at least `window_bars` bars up to it and a known label (`make_targets(targets)`: signal
    from the direction, returns of every horizon). Bars: up to window_bars + warmup_bars bars ending at
    ts (warmup_bars None: 2 x the half-life of the tokenizer of `tokenizer_or_model_dir`, a
    KlineTokenizer or a model folder; 40 if None). Text: the symbol's texts visible at ts that became
    visible within its last `text_sessions` bars (title and body, oldest first, blank-line separated).
    Labels look ahead (the bars after ts are read for them); inputs never do. Written atomically
    (a temporary file renamed over `path`); lines are ordered by (ts, symbol).
    """
    from quantlm.data.store import Store
    from quantlm.data.text import align_texts, text_content
    from quantlm.features.targets import TargetConfig, make_targets
    from quantlm.finetune.data import market_bars

    if every < 1 or window_bars < 1 or text_sessions < 1:
        raise FinetuneDataError("every, window_bars and text_sessions must be >= 1")
    warm, max_bars = _tokenizer_info(tokenizer_or_model_dir)
    warm = warm if warmup_bars is None else int(warmup_bars)
    if max_bars is not None and window_bars > max_bars:
        raise FinetuneDataError(f"window_bars {window_bars} exceeds the model's context of {max_bars} bars")
    store = store if isinstance(store, Store) else Store(store)
    bars, market = market_bars(store)
    if symbols is not None:
        wanted = [symbols] if isinstance(symbols, str) else list(symbols)
        bars = bars[bars["symbol"].isin(wanted)].reset_index(drop=True)
        if len(bars) == 0:
            raise FinetuneDataError(f"store {store.root} has no tradable daily bars for {', '.join(wanted)}")
    cfg = targets or TargetConfig()
    tg = make_targets(bars, cfg, market=market)
    if not (tg["symbol"].astype(str).to_numpy() == bars["symbol"].astype(str).to_numpy()).all():
        raise RuntimeError("internal: targets and bars are not aligned")
    calendar = pd.DatetimeIndex(np.unique(bars["ts"].to_numpy()))
    lo = pd.Timestamp(start) if start is not None else calendar[0]
    hi = pd.Timestamp(end) if end is not None else calendar[-1]
    chosen = calendar[(calendar >= lo) & (calendar <= hi)][::every].asi8
    texts = store.texts(symbols=sorted(bars["symbol"].unique())) if text else pd.DataFrame()
    if len(texts):
        texts = align_texts(texts[texts["symbol"].astype(str) != ""].reset_index(drop=True), market)
        texts = texts.assign(content=text_content(texts)).sort_values(["session", "published_at", "text_id"])
    by_sym = {s: g for s, g in texts.groupby("symbol", sort=False)} if len(texts) else {}
    records: list[tuple[int, str, str]] = []
    bounds = np.flatnonzero(np.r_[True, bars["symbol"].to_numpy()[1:] != bars["symbol"].to_numpy()[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        g, t = bars.iloc[a:b], tg.iloc[a:b]
        sym = str(g["symbol"].iloc[0])
        ts = g["ts"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
        label = t["direction"].to_numpy()
        pos = np.flatnonzero(np.isin(ts, chosen) & (label >= 0) & (np.arange(len(ts)) >= window_bars - 1))
        if not len(pos):
            continue
        ts_str = _ts_strings(ts)
        bar_str = _bar_json(g, ts_str)
        rets = {h: t[f"ret_{h}"].to_numpy(dtype=np.float64) for h in cfg.horizons}
        tx = by_sym.get(sym)
        tx_ts = tx["session"].to_numpy(dtype="datetime64[ns]").astype(np.int64) if tx is not None else None
        for i in pos:
            first_bar = max(0, i - window_bars - warm + 1)
            head = (f'{{"symbol": {json.dumps(sym)}, "ts": "{ts_str[i]}", "bars": ['
                    + ", ".join(bar_str[first_bar:i + 1]) + "]")
            extra: dict = {}
            if tx is not None:
                k0 = np.searchsorted(tx_ts, ts[max(first_bar, i - text_sessions + 1)], side="left")
                k1 = np.searchsorted(tx_ts, ts[i], side="right")
                if k1 > k0:
                    extra["text"] = "\n\n".join(tx["content"].iloc[k0:k1])
            extra["signal"] = SIGNAL_NAMES[int(label[i])]
            r = {str(h): float(v[i]) for h, v in rets.items() if math.isfinite(v[i])}
            if r:
                extra["returns"] = r
            records.append((int(ts[i]), sym, head + ", " + json.dumps(extra)[1:]))
    if not records:
        raise FinetuneDataError(f"no labelled example with {window_bars} bars of history between "
                                f"{lo.date()} and {hi.date()} in store {store.root}")
    records.sort(key=lambda r: r[:2])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{'.gz' if path.suffix == '.gz' else ''}")
    try:
        with _open(tmp, "wt") as fh:
            for r in records:
                fh.write(r[2] + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(records)


# ---------------------------------------------------------------------- training
def examples_data(ex: JsonlExamples, tok, horizons: list[int], text_vectors: np.ndarray | None, text_dim: int = 0):
    """A TraderData whose "symbols" are the examples (targets at each example's last bar only).

    text_dim > 0: text inputs of that width, zero except at the last bar of the examples with text
    (`text_vectors`, one row per such example, or None: all zero)."""
    from quantlm.finetune.data import TraderData

    n = len(ex)
    keys = [f"{i:012d}" for i in range(n)]
    counts = np.diff(ex.offsets)
    frame = ex.bars.assign(symbol=np.repeat(np.asarray(keys, dtype=object), counts))
    enc, feats = tok.encode(frame), tok.features(frame)
    ids = np.concatenate([enc[k] for k in keys]).astype(np.int64)
    features = np.concatenate([feats[k] for k in keys]).astype(np.float32)
    ts = pd.DatetimeIndex(frame["ts"]).as_unit("ns")
    calendar = pd.DatetimeIndex(np.unique(ts.asi8)).as_unit("ns")
    session = np.searchsorted(calendar.asi8, ts.asi8).astype(np.int64)
    N, last = len(frame), ex.offsets[1:] - 1
    direction = np.full(N, -1, dtype=np.int64)
    direction[last] = ex.signal
    ret = np.full((N, len(horizons)), np.nan, dtype=np.float32)
    rank = np.full((N, len(horizons)), np.nan, dtype=np.float32)
    for j, h in enumerate(horizons):
        if h in ex.returns:
            r = ex.returns[h]
            ret[last, j] = r
            grp = pd.Series(r).groupby(ex.ts.asi8)
            cnt = grp.transform("count").to_numpy()
            rk = ((grp.rank(method="average") - 0.5) / cnt * 2 - 1).to_numpy()
            rank[last, j] = np.where(np.isfinite(r) & (cnt >= 5), rk, np.nan)
    text = weight = None
    if text_dim:
        text, weight = np.zeros((N, text_dim), dtype=np.float16), np.zeros(N, dtype=np.float32)
        if text_vectors is not None:
            has = last[[i for i, t in enumerate(ex.text) if t is not None and t.strip()]]
            text[has], weight[has] = text_vectors.astype(np.float16), 1.0
    return TraderData(keys, ex.offsets.copy(), calendar, session, ids, tok.calendar_ids(ts).astype(np.int64), features,
                      text, weight, ret, rank, direction, list(horizons), 1)


def time_split(ts: pd.DatetimeIndex, valid_fraction: float, purge: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(train, valid) example indices and the number purged: the latest valid_fraction of the distinct
    timestamps is held out and the `purge` timestamps before it are dropped from training."""
    uts = np.unique(ts.asi8)
    n_valid = max(1, math.ceil(valid_fraction * len(uts)))
    cut = len(uts) - n_valid
    if cut - purge < 1:
        raise FinetuneDataError(f"{len(uts)} distinct example timestamps are too few to hold out {n_valid} and "
                                f"purge {purge} before them: add examples or lower valid_fraction")
    pos = np.searchsorted(uts, ts.asi8)
    train, valid = np.flatnonzero(pos < cut - purge), np.flatnonzero(pos >= cut)
    return train, valid, int(len(ts) - len(train) - len(valid))


def train_sft_jsonl(cfg, path: str | Path, out: str | Path, init: str | Path, valid_fraction: float = 0.1,
                    seed: int = 0, market: str | None = None, embedder=None, progress: bool = False) -> Path:
    """Fine-tune `init` (pretrained or trader folder) on the examples of a JSON Lines file; returns `out`.

    The model reads the last cfg.window_bars bars of each example (earlier bars only warm up the causal
    features; every example needs >= window_bars bars); targets sit at the last bar. Text (cfg.text and
    some example has text) is embedded with `embedder` (default `load_embedder()`, offline). The file is
    validated before anything is written. Horizons are cfg.targets.horizons (a warm-started trader's
    own); returns of other horizons in the file are ignored. Run folder as `train_sft`: config.json, metrics.jsonl,
    metrics.json, model/. With no rank targets (no returns, or < 5 examples per ts) a "rank" score
    falls back to "direction".
    """
    import torch

    from quantlm.finetune.lora import apply_lora, freeze_bottom, merge_lora, trainable_parameters
    from quantlm.finetune.model import TraderModel
    from quantlm.finetune.score import predict_rows, rank_ic
    from quantlm.finetune.sft import build_trader, fit, load_init, save_trader

    t0 = time.time()
    if not 0 < valid_fraction < 1:
        raise FinetuneDataError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    ex = read_jsonl(path)
    W = cfg.window_bars
    short = np.flatnonzero(np.diff(ex.offsets) < W)
    if len(short):
        k = int(short[0])
        raise JsonlError(f"{int(np.diff(ex.offsets)[k])} bars; the model window needs {W} (lower sft.window_bars "
                         f"or export longer examples)", file=ex.path, row=int(ex.line[k]), column="bars")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    init_model, tok = load_init(init, cfg.from_scratch, seed)
    trunk = init_model.trunk if isinstance(init_model, TraderModel) else init_model
    if trunk.max_bars < W:
        raise FinetuneDataError(f"window_bars {W} exceeds the trunk's context of {trunk.max_bars} bars")
    warm_start = isinstance(init_model, TraderModel)
    horizons = list(init_model.spec.horizons) if warm_start else list(cfg.targets.horizons)
    wanted = [t for t in ex.text if t is not None and t.strip()]
    # A trader keeps its inputs (zero text where the file has none); a fresh one reads text if there is any.
    use_text = init_model.spec.d_text > 0 if warm_start else cfg.text and bool(wanted)
    vectors = None
    if use_text and wanted:
        if embedder is None:
            from quantlm.data.text import load_embedder

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            embedder = load_embedder()
        vectors = np.asarray(embedder.encode(wanted, batch_size=64), dtype=np.float32)
    dim = (init_model.spec.d_text if warm_start else vectors.shape[1]) if use_text else 0
    if vectors is not None and vectors.shape[1] != dim:
        raise FinetuneDataError(f"text embeddings have {vectors.shape[1]} dimensions, the init trader reads {dim}")
    data = examples_data(ex, tok, horizons, vectors, dim)
    train, valid, purged = time_split(ex.ts, valid_fraction, 1 + max(horizons))
    last = ex.offsets[1:] - 1
    last_train = int(data.session[last[train]].max())
    train_end = ex.ts.max()
    market = market or (init_model.spec.market if isinstance(init_model, TraderModel) else "cn")
    model = build_trader(init_model, data, cfg, last_train, train_end, market)
    if not warm_start:
        model.spec.window_bars = W
        if cfg.score in ("rank", "rank_vol") and not np.isfinite(data.rank).any():
            model.spec.score = "direction"
    freeze_bottom(model, cfg.freeze_bottom)
    peft_model = apply_lora(model, cfg.lora, cfg.freeze_bottom) if cfg.lora.enabled else None
    n_trainable, n_total = trainable_parameters(model)
    targets = {"ret": data.ret, "rank": data.rank, "direction": data.direction}
    bos = model.trunk.special_ids["bos"]
    y1 = data.ret[last[valid], horizons.index(1)] if 1 in horizons else np.full(len(valid), np.nan)
    sizes = pd.Series(np.isfinite(y1)).groupby(ex.ts.asi8[valid]).sum()
    select = "valid_rank_ic" if (sizes >= 5).any() else "valid_direction_accuracy"

    def next_batch(step: int) -> dict[str, np.ndarray]:
        k = train[np.random.default_rng([seed, step]).integers(0, len(train), cfg.batch_size)]
        return data.gather(ex.offsets[k + 1] - W, W, bos, targets)

    def evaluate() -> dict[str, float]:
        res = predict_rows(model, data, last[valid], warm=W - 1, window=W, keep=("direction",))
        acc = float((res["direction"].argmax(-1) == ex.signal[valid]).mean())
        return {"rank_ic": rank_ic(res["score"], y1, ex.ts.asi8[valid]), "direction_accuracy": acc}

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    best = fit(model, cfg, next_batch, evaluate, out, progress=progress, select=select)
    if peft_model is not None and cfg.lora.merge:  # merge: false keeps a peft adapter folder (model/adapter/)
        merge_lora(model, peft_model)
    save_trader(model, tok, out)
    summary = {"best_step": best["step"], "valid_rank_ic": best.get("valid_rank_ic"),
               "valid_direction_accuracy": best.get("valid_direction_accuracy"), "select": select,
               "steps": cfg.steps, "examples": len(ex), "train_examples": int(len(train)),
               "valid_examples": int(len(valid)), "purged_examples": purged,
               "last_train_ts": _stamp(ex.ts[train].max()), "valid_from": _stamp(ex.ts[valid].min()),
               "text_examples": 0 if vectors is None else len(wanted), "score": model.spec.score,
               "window_bars": W, "trainable_params": n_trainable, "total_params": n_total,
               "seconds": round(time.time() - t0, 1), "seed": seed, "source": str(path)}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "config.json").write_text(json.dumps({"sft": cfg.model_dump(), "init": str(init), "jsonl": str(path),
                                                 "valid_fraction": valid_fraction, "seed": seed}, indent=2, default=str))
    from quantlm.model.card import refresh_run_card

    refresh_run_card(out, "sft_jsonl")  # the model card records this stage's config and metrics
    return out
