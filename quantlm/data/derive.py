"""What an A-share vendor file implies beyond its bars: adj_factor, ST spans, listing dates, instruments.

- **adj_factor from the previous close** (前收盘价 / Baostock `preclose`), for files without a factor:
  `adj_factor(t) = adj_factor(t-1) * close(t-1) / preclose(t)` per symbol in time order, starting at
  1.0 on the symbol's first imported bar (or continuing from the stored bar just before it). It is
  forward-cumulative: adjusted price = raw price x adj_factor, and uses only bars <= t (no look-ahead).
  A ratio counts as a corporate action only when |close(t-1) / preclose(t) - 1| > 1e-6 and the two
  prices differ by at least half a tick (0.005 CNY); otherwise it is taken as exactly 1.
- **ST spans** from names carrying ST / *ST (e.g. "*ST康美", "ST中天", "S*ST前锋") or Baostock's
  `isST = 1`: each contiguous run of flagged bars of a symbol becomes a `flags` row
  (symbol, flag="st", start, end) with inclusive session dates.
- **Listing date**: the symbol's first imported bar when its name carries the new-listing marker "N"
  (e.g. "N中芯"). "C" (later no-limit days), "XR" / "XD" / "DR" (ex-rights / ex-dividend days) are
  markers too, never names: an instrument's name is its latest name without a marker.
- **Board**: `index` for 000xxx.SH, 399xxx.SZ or a name containing 指数, else
  `quantlm.backtest.rules.board_from_code`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantlm.data.schema import INSTRUMENT_COLUMNS
from quantlm.data.symbols import is_index

HALF_TICK = 0.005  # CNY
_RATIO_TOL = 1e-6
_MARKER = re.compile(r"^(?:N|C|XR|XD|DR)(?=[^\x00-\x7f])")
_ST = re.compile(r"^(?:XR|XD|DR)?S?\*?ST")
_CN_CODE = re.compile(r"^\d{6}\.(SH|SZ|BJ)$")


def st_from_names(names: pd.Series) -> np.ndarray:
    """Per row: 1.0 if the name marks an ST / *ST stock, 0.0 if not, NaN where the name is missing."""
    text = names.astype("str").str.strip()
    flagged = text.str.contains(_ST).to_numpy(dtype=bool)
    return np.where(names.notna().to_numpy() & (text != "").to_numpy(), flagged.astype(float), np.nan)


def adj_factor_from_preclose(symbol: np.ndarray, close: np.ndarray, preclose: np.ndarray,
                             start: dict[str, tuple[float, float]] | None = None) -> tuple[np.ndarray, int]:
    """(adj_factor per row, number of corporate-action days) for rows sorted by (symbol, ts), one per bar.

    `start` maps a symbol to (close, adj_factor) of its stored bar just before the first row here;
    without it the symbol starts at 1.0. A missing or non-positive preclose counts as no action.
    """
    n = len(close)
    first = np.r_[True, symbol[1:] != symbol[:-1]] if n else np.zeros(0, dtype=bool)
    prev_close = np.r_[np.nan, close[:-1]] if n else np.zeros(0)
    base = np.ones(n)
    for i in np.flatnonzero(first):
        prev = (start or {}).get(symbol[i])
        prev_close[i] = prev[0] if prev is not None else np.nan
        base[i] = prev[1] if prev is not None and np.isfinite(prev[1]) else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = prev_close / np.where(preclose > 0, preclose, np.nan)
    action = np.isfinite(ratio) & (np.abs(ratio - 1.0) > _RATIO_TOL) & (np.abs(prev_close - preclose) >= HALF_TICK)
    ratio = np.where(action, ratio, 1.0)
    group = np.cumsum(first) - 1
    log_cum = np.cumsum(np.log(ratio))
    offset = log_cum[first][group] - np.log(ratio[first])[group]  # cumulative log before each symbol's first row
    factor = base[first][group] * np.exp(log_cum - offset)
    return factor, int(action.sum())


def st_spans(symbol: np.ndarray, ts: np.ndarray, st: np.ndarray) -> pd.DataFrame:
    """Contiguous runs of st == 1 (rows sorted by symbol, ts) as flags rows with inclusive session dates."""
    on = st == 1.0
    new_sym = np.r_[True, symbol[1:] != symbol[:-1]]
    starts = on & (new_sym | ~np.r_[False, on[:-1]])
    last_sym = np.r_[symbol[1:] != symbol[:-1], True]
    ends = on & (last_sym | ~np.r_[on[1:], False])
    days = pd.DatetimeIndex(ts).normalize()
    return pd.DataFrame({"symbol": symbol[starts], "flag": "st", "start": days[starts], "end": days[ends]})


def replace_st_spans(old: pd.DataFrame, new: pd.DataFrame, ranges: pd.DataFrame) -> pd.DataFrame:
    """Flags table with, for each symbol of `ranges` (symbol, lo, hi), its st spans inside [lo, hi]
    replaced by `new` (old spans are clipped to the parts outside the range; other flags are kept)."""
    if len(old) == 0:
        return new.reset_index(drop=True)
    old = old.copy()
    old["start"], old["end"] = pd.to_datetime(old["start"]), pd.to_datetime(old["end"])
    hit = old.merge(ranges, on="symbol", how="left")
    touched = (hit["flag"] == "st").to_numpy() & hit["lo"].notna().to_numpy()
    end = hit["end"].fillna(pd.Timestamp.max)
    overlaps = touched & (hit["start"] <= hit["hi"]).to_numpy() & (end >= hit["lo"]).to_numpy()
    keep = hit[~overlaps]
    clipped = hit[overlaps]
    before = clipped[clipped["start"] < clipped["lo"]].assign(end=lambda d: d["lo"] - pd.Timedelta(days=1))
    after = clipped[end[overlaps] > clipped["hi"]].assign(start=lambda d: d["hi"] + pd.Timedelta(days=1))
    cols = list(old.columns)
    out = pd.concat([keep[cols], before[cols], after[cols], new.reindex(columns=cols)], ignore_index=True)
    return out.sort_values(["symbol", "flag", "start"], kind="stable").reset_index(drop=True)


def instrument_rows(symbol: np.ndarray, ts: np.ndarray, names: pd.Series | None) -> pd.DataFrame:
    """One instruments row per A-share symbol (rows sorted by symbol, ts): board, latest unmarked name,
    list date from an N-marked first bar. Symbols that are not A-share codes are skipped."""
    from quantlm.backtest.rules import board_from_code

    frame = pd.DataFrame({"symbol": symbol, "ts": ts,
                          "name": names.to_numpy(dtype=object) if names is not None else None})
    frame = frame[frame["symbol"].astype("str").str.match(_CN_CODE).to_numpy()]
    text = frame["name"].astype("str").str.strip()
    valid = frame["name"].notna() & (text != "")
    frame["name"] = text.where(valid)
    marked = valid & text.str.contains(_MARKER)
    plain = frame[valid & ~marked].groupby("symbol")["name"].last()
    fallback = frame[valid].groupby("symbol")["name"].last().str.replace(_MARKER, "", regex=True)
    first = frame.groupby("symbol", sort=True).head(1).set_index("symbol")
    listed = first["name"].fillna("").str.match(r"^N(?=[^\x00-\x7f])")
    named_index = set(frame.loc[valid & text.str.contains("指数"), "symbol"])
    out = pd.DataFrame({"symbol": first.index.to_numpy(dtype=object), "market": "cn"})
    out["name"] = plain.reindex(first.index).fillna(fallback.reindex(first.index)).to_numpy(dtype=object)
    out["board"] = ["index" if is_index(s) or s in named_index else board_from_code(s) for s in out["symbol"]]
    out["list_date"] = pd.DatetimeIndex(first["ts"]).normalize().where(listed.to_numpy())
    out["delist_date"] = pd.NaT
    return out.reindex(columns=list(INSTRUMENT_COLUMNS))


def merge_instruments(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Upsert derived rows by symbol, keeping a stored non-null board / list_date / delist_date, and a stored
    name where nothing was derived."""
    if len(old) == 0 or len(new) == 0:
        return (new if len(old) == 0 else old).reindex(columns=list(INSTRUMENT_COLUMNS)).reset_index(drop=True)
    prev = old.drop_duplicates("symbol", keep="last").set_index("symbol").reindex(new["symbol"])
    out = new.set_index("symbol").copy()
    for col in ("board", "list_date", "delist_date"):
        out[col] = prev[col].where(prev[col].notna(), out[col]).to_numpy()
    out["name"] = out["name"].where(out["name"].notna(), prev["name"]).to_numpy()
    out = out.reset_index()
    kept = old[~old["symbol"].isin(new["symbol"])]
    return pd.concat([kept, out], ignore_index=True).reindex(columns=list(INSTRUMENT_COLUMNS))


@dataclass
class Derived:
    """What `derive_for_import` found: adj_factor filled into the bars in place, plus these."""

    st_spans: pd.DataFrame
    st_ranges: pd.DataFrame | None  # (symbol, lo, hi): dates whose st spans the import replaces; None = no ST info
    instruments: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)


def _start_points(store, symbols: list[str], first_ts: pd.Series, freq: str) -> dict[str, tuple[float, float]]:
    """symbol -> (close, adj_factor) of its last stored bar before its first imported bar."""
    if not store.exists():
        return {}
    listing = store.listing()
    listing = listing[(listing["freq"] == freq) & listing["symbol"].isin(symbols)]
    listing = listing[listing["first_ts"].to_numpy() < first_ts.reindex(listing["symbol"]).to_numpy()]
    if len(listing) == 0:
        return {}
    stored = store.bars(listing["symbol"].tolist(), end=first_ts.max(), freq=freq, fields=["close", "adj_factor"])
    stored = stored[stored["ts"].to_numpy() < first_ts.reindex(stored["symbol"]).to_numpy()]
    last = stored.groupby("symbol").tail(1)
    return {s: (float(c), float(f)) for s, c, f in zip(last["symbol"], last["close"], last["adj_factor"])}


def derive_for_import(bars_list: list[pd.DataFrame], extras: list[pd.DataFrame | None], store, market: str,
                      freq: str) -> Derived:
    """adj_factor (written into the bars of sources with a previous close and no factor), ST spans,
    listing dates and instruments rows for an A-share import (see the module docstring).

    `extras[k]` holds `_name` / `_preclose` / `_st` aligned row by row with `bars_list[k]` (or None).
    Bars present in two sources are derived once (the later source's row wins, as with --replace).
    """
    parts = []
    for k, (bars, ex) in enumerate(zip(bars_list, extras)):
        cols = {"symbol": bars["symbol"].to_numpy(), "ts": bars["ts"].to_numpy(), "close": bars["close"].to_numpy(),
                "_k": k, "_pos": np.arange(len(bars))}
        if ex is None:  # only what instruments need: one row per symbol
            first = np.r_[True, cols["symbol"][1:] != cols["symbol"][:-1]]
            cols = {c: (v[first] if isinstance(v, np.ndarray) else v) for c, v in cols.items()}
        else:
            needs = "_preclose" in ex and ex["_preclose"].notna().any() and bars["adj_factor"].isna().all()
            cols.update(name=ex["_name"].to_numpy(dtype=object) if "_name" in ex else None,
                        preclose=ex["_preclose"].to_numpy() if needs else np.nan,
                        st=ex["_st"].to_numpy(dtype=float) if "_st" in ex else np.nan, needs=needs)
        parts.append(pd.DataFrame(cols))
    allr = pd.concat(parts, ignore_index=True)
    for c, default in (("name", None), ("preclose", np.nan), ("st", np.nan), ("needs", False)):
        if c not in allr:
            allr[c] = default
    allr = allr.sort_values(["symbol", "ts", "_k"], kind="stable").reset_index(drop=True)
    key_new = ~allr.duplicated(["symbol", "ts"], keep="last").to_numpy()
    uniq = allr[key_new].reset_index(drop=True)
    counts: dict[str, int] = {}

    needs = uniq["needs"].fillna(False).to_numpy(dtype=bool)
    if needs.any() and freq == "1d":
        adj = uniq[needs].reset_index(drop=True)
        sym = adj["symbol"].to_numpy()
        first_ts = adj.groupby("symbol")["ts"].min()
        factor, n_actions = adj_factor_from_preclose(sym, adj["close"].to_numpy(), adj["preclose"].to_numpy(),
                                                     _start_points(store, sorted(set(sym)), first_ts, freq))
        got = pd.DataFrame({"symbol": sym, "ts": adj["ts"].to_numpy(), "_f": factor})
        rows = allr[allr["needs"].fillna(False).to_numpy(dtype=bool)].merge(got, on=["symbol", "ts"], how="left")
        for k, part in rows.groupby("_k"):
            col = bars_list[int(k)].columns.get_loc("adj_factor")
            bars_list[int(k)].iloc[part["_pos"].to_numpy(), col] = part["_f"].to_numpy()
        counts["adj_factor from previous close (symbols)"] = int(len(first_ts))
        counts["corporate-action days"] = n_actions

    known = uniq["st"].notna().to_numpy()
    spans, ranges = pd.DataFrame(columns=["symbol", "flag", "start", "end"]), None
    if known.any():
        st = uniq[known]
        spans = st_spans(st["symbol"].to_numpy(), st["ts"].to_numpy(), st["st"].to_numpy())
        days = pd.DatetimeIndex(st["ts"]).normalize()
        ranges = pd.DataFrame({"symbol": st["symbol"].to_numpy(), "d": days}).groupby("symbol")["d"].agg(
            lo="min", hi="max").reset_index()
        counts["st spans"] = len(spans)
    inst = instrument_rows(uniq["symbol"].to_numpy(), uniq["ts"].to_numpy(), uniq["name"])
    if len(inst):
        counts["instruments"] = len(inst)
        if inst["list_date"].notna().any():
            counts["list dates"] = int(inst["list_date"].notna().sum())
        if (inst["board"] == "index").any():
            counts["indices"] = int((inst["board"] == "index").sum())
    return Derived(st_spans=spans, st_ranges=ranges, instruments=inst, counts=counts)
