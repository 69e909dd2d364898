"""Canonical schemas of quantlm's tables and the validation every write passes.

Units:
- prices (`open`, `high`, `low`, `close`) are float64 in the instrument's currency;
- `volume` is in shares (or coins for crypto), never lots;
- `amount` is traded value in currency units (optional, NaN where unknown);
- `adj_factor` is the cumulative adjustment factor (optional; adjusted price = price * adj_factor);
- `ts` is a tz-naive exchange-local timestamp; daily bars are dated by session (midnight).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MARKETS = ("cn", "us", "crypto")
FREQS = ("1d", "1h", "30min", "15min", "5min", "1min")
FREQ_TIMEDELTA = {
    "1d": pd.Timedelta(days=1),
    "1h": pd.Timedelta(hours=1),
    "30min": pd.Timedelta(minutes=30),
    "15min": pd.Timedelta(minutes=15),
    "5min": pd.Timedelta(minutes=5),
    "1min": pd.Timedelta(minutes=1),
}
PRICE_COLUMNS = ("open", "high", "low", "close")
REQUIRED_BAR_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume")
OPTIONAL_BAR_COLUMNS = ("amount", "adj_factor")
BAR_COLUMNS = REQUIRED_BAR_COLUMNS + OPTIONAL_BAR_COLUMNS

BOARDS = ("main", "chinext", "star", "bse", "index", "other")
INSTRUMENT_COLUMNS = ("symbol", "market", "board", "name", "list_date", "delist_date")
# Date-ranged flags (e.g. "st" for China ST / *ST periods); end is inclusive, NaT = open-ended.
FLAG_COLUMNS = ("symbol", "flag", "start", "end")
# Point-in-time universe membership spans, as Qlib's instruments/<universe>.txt; end inclusive.
UNIVERSE_COLUMNS = ("universe", "symbol", "start", "end")
# symbol is "" (empty string) for market-wide texts.
TEXT_COLUMNS = ("text_id", "symbol", "published_at", "source", "title", "body")


@dataclass
class DataValidationError(ValueError):
    """A problem in user data, located as precisely as we can.

    `row` is the 1-based data row in the source file (header excluded), or None when the problem
    concerns the whole file (e.g. a missing column).
    """

    problem: str
    file: str | None = None
    row: int | None = None
    column: str | None = None

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column:
            where.append(f"column '{self.column}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.problem}" if prefix else self.problem


def check_market(market: str) -> str:
    """Return `market` if it is known, else raise DataValidationError."""
    if market not in MARKETS:
        raise DataValidationError(f"unknown market '{market}' (expected one of {', '.join(MARKETS)})")
    return market


def check_freq(freq: str) -> str:
    """Return `freq` if it is known, else raise DataValidationError."""
    if freq not in FREQS:
        raise DataValidationError(f"unknown frequency '{freq}' (expected one of {', '.join(FREQS)})")
    return freq


def _source_rows(df: pd.DataFrame) -> np.ndarray:
    """1-based source rows: the `_row` column if an importer set one, else position + 1."""
    if "_row" in df.columns:
        return df["_row"].to_numpy()
    return np.arange(1, len(df) + 1)


# China A-share lunch break: the morning session ends 11:30, the afternoon starts 13:00 (ns of the day).
_NS_MIN = 60 * 10**9
CN_AM_OPEN, CN_AM_CLOSE, CN_PM_OPEN = 570 * _NS_MIN, 690 * _NS_MIN, 780 * _NS_MIN


def _cn_lunch_gap(prev_tod: np.ndarray, next_tod: np.ndarray, step: int) -> np.ndarray:
    """Same-day gaps across the A-share lunch break with both bars on the session grid of `step` ns.

    A bar before lunch at 09:30 + k*step (<= 11:30) followed by one at 13:00 + j*step: covers start
    labels (1h: 10:30 -> 13:00) and end labels (11:30 -> 14:00).
    """
    return ((prev_tod <= CN_AM_CLOSE) & (next_tod >= CN_PM_OPEN) & ((prev_tod - CN_AM_OPEN) % step == 0)
            & ((next_tod - CN_PM_OPEN) % step == 0))


def infer_freq(ts: pd.Series, market: str | None = None) -> str | None:
    """Most common spacing of sorted unique timestamps mapped to a known frequency (None if unknown).

    Daily data is recognised by midnight timestamps (weekends and holidays make spacing irregular).
    Intraday spacing is taken within days; for `market` "cn" (or None) a gap across the A-share lunch
    break (11:30 -> 13:00) does not count, so 1h bars at 09:30, 10:30, 13:00, 14:00 are 1h.
    """
    t = pd.DatetimeIndex(ts.drop_duplicates().sort_values()).as_unit("ns")
    if len(t) == 0:
        return None
    if (t == t.normalize()).all():
        return "1d"
    if len(t) < 2:
        return None
    v = t.asi8
    day = t.normalize().asi8
    same = day[1:] == day[:-1]
    gaps = v[1:] - v[:-1]
    if market in (None, "cn"):
        tod = v - day
        lunch = same & (tod[:-1] <= CN_AM_CLOSE) & (tod[1:] >= CN_PM_OPEN)
        same &= ~lunch
    candidates = gaps[same] if same.any() else gaps
    mode = pd.Timedelta(int(pd.Series(candidates).mode().iloc[0]))
    for name, delta in FREQ_TIMEDELTA.items():
        if name != "1d" and mode == delta:
            return name
    return None


def validate_bars(df: pd.DataFrame, file: str | None = None, freq: str | None = None,
                  market: str | None = None) -> pd.DataFrame:
    """Check a bars frame and return it in canonical form (sorted by symbol, ts; canonical dtypes).

    Raises DataValidationError naming file, row and column for: missing required columns,
    unparseable timestamps, duplicate (symbol, ts), NaN/inf or non-positive prices, high below
    max(open, close), low above min(open, close), NaN or negative volume, and a file whose
    timestamps mix frequencies (or do not match `freq` when given).
    If the frame has a `_row` column (1-based source rows set by an importer) errors use it.
    Intraday bars of `market` "cn" (or an unknown market, None) may skip the A-share lunch break.
    """
    missing = [c for c in REQUIRED_BAR_COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError(
            f"missing required column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}",
            file=file,
            column=missing[0],
        )
    if len(df) == 0:
        raise DataValidationError("no rows", file=file)
    rows = _source_rows(df)

    symbol = df["symbol"]
    bad = symbol.isna() | (symbol.astype(str).str.strip() == "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataValidationError("empty symbol", file=file, row=int(rows[i]), column="symbol")

    ts_raw = df["ts"]
    if pd.api.types.is_datetime64_any_dtype(ts_raw):
        ts = ts_raw
        if getattr(ts.dt, "tz", None) is not None:
            ts = ts.dt.tz_localize(None)
    else:
        ts = pd.to_datetime(ts_raw, errors="coerce", format="mixed")
    bad = ts.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"unparseable timestamp {ts_raw.iloc[i]!r}", file=file, row=int(rows[i]), column="ts"
        )
    ts = ts.astype("datetime64[ns]")

    out = pd.DataFrame({"symbol": symbol.astype(str).str.strip().to_numpy(), "ts": ts.to_numpy()})
    for col in PRICE_COLUMNS + ("volume",) + tuple(c for c in OPTIONAL_BAR_COLUMNS if c in df.columns):
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype="float64")
        raw = df[col].to_numpy()
        unparsed = np.isnan(values) & pd.notna(raw)
        if unparsed.any():
            i = int(np.flatnonzero(unparsed)[0])
            raise DataValidationError(
                f"not a number: {raw[i]!r}", file=file, row=int(rows[i]), column=col
            )
        out[col] = values
    for col in OPTIONAL_BAR_COLUMNS:
        if col not in out.columns:
            out[col] = np.nan

    for col in PRICE_COLUMNS:
        v = out[col].to_numpy()
        bad = ~np.isfinite(v)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataValidationError(
                f"price is {'NaN' if np.isnan(v[i]) else 'infinite'}", file=file, row=int(rows[i]), column=col
            )
        bad = v <= 0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataValidationError(
                f"price must be positive, got {float(v[i])!r}", file=file, row=int(rows[i]), column=col
            )
    o, h, lo, c = (out[k].to_numpy() for k in PRICE_COLUMNS)
    bad = h < np.maximum(o, c)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"high {float(h[i])!r} is below max(open, close) = {float(max(o[i], c[i]))!r}", file=file, row=int(rows[i]), column="high"
        )
    bad = lo > np.minimum(o, c)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"low {float(lo[i])!r} is above min(open, close) = {float(min(o[i], c[i]))!r}", file=file, row=int(rows[i]), column="low"
        )
    vol = out["volume"].to_numpy()
    bad = ~np.isfinite(vol)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataValidationError("volume is missing or infinite", file=file, row=int(rows[i]), column="volume")
    bad = vol < 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"volume must be >= 0, got {float(vol[i])!r}", file=file, row=int(rows[i]), column="volume"
        )
    for col in OPTIONAL_BAR_COLUMNS:
        v = out[col].to_numpy()
        bad = np.isinf(v) | (v < 0) if col == "amount" else np.isinf(v) | (v <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataValidationError(f"invalid {col} {float(v[i])!r}", file=file, row=int(rows[i]), column=col)

    dup = out.duplicated(["symbol", "ts"], keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(((out["symbol"] == out["symbol"].iloc[i]) & (out["ts"] == out["ts"].iloc[i])).to_numpy())[0])
        raise DataValidationError(
            f"duplicate (symbol, ts) = ({out['symbol'].iloc[i]}, {out['ts'].iloc[i]}); first seen at row {int(rows[first])}",
            file=file,
            row=int(rows[i]),
            column="ts",
        )

    _check_frequency(out, rows, file, freq, market)
    out = out.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    return out[list(BAR_COLUMNS)]


def _check_frequency(out: pd.DataFrame, rows: np.ndarray, file: str | None, freq: str | None,
                     market: str | None = None) -> None:
    """Daily files must be all-midnight; intraday files must keep one spacing within sessions.

    For cn (and market None, e.g. the store's own check) a same-day gap across the lunch break
    between two bars on the A-share session grid is allowed (1h: 10:30 -> 13:00 or 11:30 -> 14:00).
    """
    ts = pd.DatetimeIndex(out["ts"])
    midnight = (ts == ts.normalize())
    if freq is not None:
        check_freq(freq)
    is_daily = freq == "1d" if freq is not None else bool(midnight.all())
    if freq is None and midnight.any() and not midnight.all() and midnight.mean() > 0.5:
        is_daily = True
    if is_daily:
        bad = ~np.asarray(midnight)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataValidationError(
                f"mixed frequencies: intraday timestamp {ts[i]} in a daily file", file=file, row=int(rows[i]), column="ts"
            )
        return
    # Intraday: within each symbol and day, the spacing between consecutive bars must be a
    # multiple of the bar length (gaps such as a lunch break are allowed), and never shorter.
    codes = pd.factorize(out["symbol"])[0]  # integer codes: sorting object strings is ~10x slower
    order = np.lexsort((ts.asi8, codes))
    t = ts.asi8[order]
    sym = codes[order]
    day = ts.normalize().asi8[order]
    same = (sym[1:] == sym[:-1]) & (day[1:] == day[:-1])
    gaps = (t[1:] - t[:-1])[same]
    if len(gaps) == 0:
        return
    step = FREQ_TIMEDELTA[freq].value if freq is not None else int(np.min(gaps))
    bad = np.zeros(len(t) - 1, dtype=bool)
    bad[same] = (gaps % step) != 0
    if market in (None, "cn") and bad.any():
        tod = t - day
        bad &= ~_cn_lunch_gap(tod[:-1], tod[1:], step)
    if bad.any():
        j = int(np.flatnonzero(bad)[0]) + 1
        i = int(order[j])
        raise DataValidationError(
            f"mixed frequencies: bar at {ts[i]} is {pd.Timedelta(int(t[j] - t[j - 1]))} after the previous one, "
            f"expected multiples of {pd.Timedelta(step)}",
            file=file,
            row=int(rows[i]),
            column="ts",
        )
