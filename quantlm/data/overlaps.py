"""Overlaps between imported files and the store, checked before anything is written (see importers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from quantlm.data.schema import INSTRUMENT_COLUMNS, DataValidationError
from quantlm.data.store import Store

if TYPE_CHECKING:
    from quantlm.data.convert import Source


def combine(checked: list[tuple[Source, pd.DataFrame]], store: Store, market: str, freq: str,
             replace: bool) -> tuple[pd.DataFrame, int]:
    """(rows to write, number of (symbol, ts) not yet stored): all sources as one frame, checked against
    each other and the store before anything is written.

    A (symbol, ts) present twice (in two files, or in a file and the store) must agree on prices and
    volume within a relative 1e-9 (the store's rule) unless `replace`, where the later file wins.
    """
    listing = store.listing() if store.exists() else pd.DataFrame(columns=["symbol", "freq", "market"])
    listing = listing[listing["freq"] == freq]
    sources_of: dict[str, list[int]] = {}
    for i, (_, bars) in enumerate(checked):
        for sym in bars["symbol"].unique():
            sources_of.setdefault(sym, []).append(i)
    other = listing[listing["symbol"].isin(list(sources_of)) & (listing["market"] != market)]
    if len(other):
        sym, where = other["symbol"].iloc[0], other["market"].iloc[0]
        src = checked[sources_of[sym][0]][0]
        raise DataValidationError(f"symbol {sym} is stored under market '{where}', not '{market}'",
                                  file=src.name, column=src.columns.get("symbol", "symbol"))
    allb = pd.concat([bars.assign(_src=i) for i, (_, bars) in enumerate(checked)], ignore_index=True)
    # Only symbols in two sources, or already stored, can overlap: the (costly) check runs on them alone.
    stored_syms = sorted(set(sources_of) & set(listing["symbol"]))
    shared = set(stored_syms) | {s for s, owners in sources_of.items() if len(owners) > 1}
    if not shared:
        return allb.drop(columns="_src"), len(allb)
    in_shared = allb["symbol"].isin(shared).to_numpy()
    part = allb[in_shared]
    if stored_syms:
        stored = store.bars(stored_syms, start=part["ts"].min(), end=part["ts"].max(), freq=freq)
        part = pd.concat([stored.assign(_src=-1), part], ignore_index=True)
    part, n_new = resolve_overlaps(part, checked, replace)
    out = pd.concat([allb[~in_shared], part], ignore_index=True).drop(columns="_src")
    return out, int((~in_shared).sum()) + n_new


def resolve_overlaps(part: pd.DataFrame, checked: list[tuple[Source, pd.DataFrame]],
                      replace: bool) -> tuple[pd.DataFrame, int]:
    """Rows of `part` (`_src` = source index, -1 = stored) to write, one per (symbol, ts), and how many are new."""
    part = part.sort_values(["symbol", "ts", "_src"], kind="stable").reset_index(drop=True)
    dup = part.duplicated(["symbol", "ts"], keep=False).to_numpy()
    if dup.any() and not replace:
        d = part[dup]
        cols = ["open", "high", "low", "close", "volume"]
        ref = d.groupby(["symbol", "ts"], sort=False)[cols].transform("first")
        bad = ~np.isclose(d[cols].to_numpy(), ref.to_numpy(), rtol=1e-9, atol=0.0)
        if bad.any():
            r, c = (int(x[0]) for x in np.nonzero(bad))
            row = d.iloc[r]
            src, col = checked[int(row["_src"])][0], cols[c]
            first = d[(d["symbol"] == row["symbol"]) & (d["ts"] == row["ts"])].iloc[0]
            where = "the stored bar" if first["_src"] < 0 else f"the bar in {checked[int(first['_src'])][0].name}"
            hit = src.frame[(src.frame["symbol"].astype("str").str.strip() == row["symbol"])
                            & (src.frame["ts"] == row["ts"])]["_row"]
            raise DataValidationError(
                f"{row['symbol']} at {row['ts']}: {col}={float(row[col])!r} disagrees with {where} "
                f"({col}={float(ref.iloc[r, c])!r}); use --replace to overwrite",
                file=src.name, row=int(hit.iloc[0]) if len(hit) else None, column=src.columns.get(col, col))
    stored_key = part.groupby(["symbol", "ts"], sort=False)["_src"].transform("min").to_numpy() < 0
    keep = ~part.duplicated(["symbol", "ts"], keep="last" if replace else "first").to_numpy()
    n_new = int((keep & ~stored_key).sum())
    return part[keep & (part["_src"] >= 0).to_numpy()], n_new


def upsert(old: pd.DataFrame, new: pd.DataFrame, key: str) -> pd.DataFrame:
    """Rows of `old` whose `key` is not in `new`, then `new` (a whole-table rewrite of a small table)."""
    if key == "symbol":
        new = new.reindex(columns=list(INSTRUMENT_COLUMNS))
    if len(old) == 0:
        return new.reset_index(drop=True)
    kept = old[~old[key].isin(new[key])]
    return pd.concat([kept, new], ignore_index=True)
