"""Reading signal files (any model's Scores: CSV or Parquet, Qlib predictions included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.data.schema import DataValidationError


def read_signals(path: str | Path) -> pd.DataFrame:
    """Read a signals file: CSV or Parquet with symbol, ts and score and/or weight.

    Qlib prediction columns (instrument, datetime) are accepted as symbol, ts. Empty scores mean "no
    signal" and are dropped. Raises DataValidationError naming file, 1-based data row and column for
    a missing column, an empty symbol, an unparseable timestamp or number, an infinite value, or a
    duplicate (symbol, ts). Returns symbol (str), ts (datetime64[ns]) and the value column(s).
    """
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise FileNotFoundError(f"signals file not found: {path}")
    suffix = "".join(path.suffixes[-2:]).lower()
    if suffix.endswith((".parquet", ".pq")):
        df = pd.read_parquet(path)
    elif suffix.endswith((".csv", ".csv.gz", ".txt")):
        try:
            df = pd.read_csv(path, dtype={"symbol": str, "instrument": str})
        except pd.errors.EmptyDataError:
            raise DataValidationError("empty file", file=name) from None
    else:
        raise DataValidationError(f"unsupported signals file type '{path.suffix}' (expected .csv or .parquet)", file=name)
    df = df.rename(columns=lambda c: str(c).strip().lower())
    df = df.rename(columns={k: v for k, v in {"instrument": "symbol", "datetime": "ts", "date": "ts"}.items()
                            if k in df.columns and v not in df.columns})
    for col in ("symbol", "ts"):
        if col not in df.columns:
            raise DataValidationError(f"missing column '{col}'; found {', '.join(map(str, df.columns))}", file=name, column=col)
    values = [c for c in ("score", "weight") if c in df.columns]
    if not values:
        raise DataValidationError("missing column 'score' (or 'weight')", file=name, column="score")
    if len(df) == 0:
        raise DataValidationError("no rows", file=name)
    sym = df["symbol"].astype("string").str.strip()
    bad = (sym.fillna("") == "").to_numpy(dtype=bool)
    if bad.any():
        raise DataValidationError("empty symbol", file=name, row=int(np.flatnonzero(bad)[0]) + 1, column="symbol")
    ts = pd.to_datetime(df["ts"], errors="coerce", format="mixed")
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_localize(None)
    bad = ts.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataValidationError(f"unparseable timestamp {df['ts'].iloc[i]!r}", file=name, row=i + 1, column="ts")
    out = pd.DataFrame({"symbol": sym.to_numpy(dtype=object).astype(str), "ts": ts.to_numpy().astype("datetime64[ns]")})
    for col in values:
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype="float64")
        raw = df[col].to_numpy()
        text = pd.Series(raw).astype("string").str.strip().fillna("")
        bad = np.isnan(v) & (text != "").to_numpy(dtype=bool)
        bad |= np.isinf(v)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataValidationError(f"not a finite number: {raw[i]!r}", file=name, row=i + 1, column=col)
        out[col] = v
    dup = out.duplicated(["symbol", "ts"]).to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataValidationError(f"duplicate (symbol, ts) = ({out['symbol'].iloc[i]}, {out['ts'].iloc[i]})",
                                  file=name, row=i + 1, column="ts")
    out = out[out[values].notna().any(axis=1)]
    return out.sort_values(["ts", "symbol"], kind="stable").reset_index(drop=True)
