"""A-share intraday bars: bar-start labels, the lunch break and the opening call auction.

Canonical label: an intraday bar is stored under its START time (exchange-local). A-share sessions
run 09:30-11:30 and 13:00-15:00, so with bar length f every stored bar starts at 09:30 + k*f < 11:30
or 13:00 + k*f < 15:00 (1h: 09:30, 10:30, 13:00, 14:00).

Vendors label bars by start or by end (1h end labels: 10:30, 11:30, 14:00, 15:00). `bar_label`:

- `start` / `end`: as told (end labels are moved back by one bar length);
- `auto`: from the session anchors - a bar stamped 11:30 or 15:00 means end labels, one stamped
  09:30 or 13:00 means start labels; both or neither is refused (pass `--bar-label`). In 1-minute
  files a 09:30 bar next to end labels is the opening call auction (241 bars a day), not a start label.

Opening call auction: a 09:25 bar (any frequency) or, in end-labelled 1-minute files, the 09:30 bar,
is merged into the day's first continuous bar (09:30 start): open from the auction bar, high / low
the max / min, close from the continuous bar, volume and amount summed. A bar that still lies
outside the session grid is an error naming its row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantlm.data.schema import FREQ_TIMEDELTA, DataValidationError

BAR_LABELS = ("auto", "start", "end")
_MIN = 60 * 10**9  # one minute in ns
AM_OPEN, AM_CLOSE, PM_OPEN, PM_CLOSE, AUCTION = (h * 60 * _MIN + m * _MIN for h, m in
                                                 ((9, 30), (11, 30), (13, 0), (15, 0), (9, 25)))


def check_bar_label(label: str) -> str:
    """Return `label` if it is one of BAR_LABELS, else raise DataValidationError."""
    if label not in BAR_LABELS:
        raise DataValidationError(f"unknown --bar-label '{label}' (expected one of {', '.join(BAR_LABELS)})")
    return label


def _time_of_day(ts: np.ndarray) -> np.ndarray:
    t = ts.astype("datetime64[ns]").astype("int64")
    return t - (t // (86_400 * 10**9)) * (86_400 * 10**9)


def detect_label(tod: np.ndarray, freq: str, file: str, column: str) -> str:
    """'start' or 'end' from the session anchors (see the module docstring); refuses both or neither."""
    end = bool(np.isin(tod, (AM_CLOSE, PM_CLOSE)).any())
    start = bool((tod == PM_OPEN).any()) or (bool((tod == AM_OPEN).any()) and not (freq == "1min" and end))
    if start != end:
        return "start" if start else "end"
    found = "bars at 09:30/13:00 and at 11:30/15:00" if start else "no bar at 09:30, 11:30, 13:00 or 15:00"
    raise DataValidationError(f"cannot tell whether time stamps label bar starts or ends ({found}); "
                              "pass --bar-label start or --bar-label end", file=file, column=column)


def align_cn_intraday(frame: pd.DataFrame, freq: str, bar_label: str, file: str,
                      column: str) -> tuple[pd.DataFrame, str, int]:
    """(frame relabelled to bar starts with call-auction bars merged, label used, auction bars merged).

    `frame` holds canonical columns and `_row` (1-based data rows, kept for errors); extra columns
    (`_name`, `_preclose`, `_st`) take the continuous bar's value when bars merge.
    """
    step = FREQ_TIMEDELTA[freq].value
    ts = frame["ts"].to_numpy(dtype="datetime64[ns]")
    tod = _time_of_day(ts)
    label = detect_label(tod, freq, file, column) if bar_label == "auto" else bar_label
    auction = tod == AUCTION
    if label == "end" and freq == "1min":
        auction |= tod == AM_OPEN
    t = ts.astype("int64")
    day = t - tod
    new_t = np.where(auction, day + AM_OPEN, t - (step if label == "end" else 0))
    new_tod = new_t - day
    on_grid = (((new_tod >= AM_OPEN) & (new_tod < AM_CLOSE) & ((new_tod - AM_OPEN) % step == 0))
               | ((new_tod >= PM_OPEN) & (new_tod < PM_CLOSE) & ((new_tod - PM_OPEN) % step == 0)))
    if not on_grid.all():
        i = int(np.flatnonzero(~on_grid)[0])
        start = pd.Timestamp(int(new_t[i]))
        raise DataValidationError(
            f"bar at {pd.Timestamp(ts[i])} ({label} label: starts {start:%H:%M}) is outside the A-share sessions "
            f"for {freq} bars (starts 09:30 + k*{freq} before 11:30, or 13:00 + k*{freq} before 15:00)",
            file=file, row=int(frame["_row"].iat[i]), column=column)
    out = frame.copy()
    out["ts"] = new_t.astype("datetime64[ns]")
    n_auction = int(auction.sum())
    if n_auction == 0:
        return out, label, 0
    return _merge_auction(out, auction, t), label, n_auction


def _merge_auction(out: pd.DataFrame, auction: np.ndarray, raw_t: np.ndarray) -> pd.DataFrame:
    """Fold each auction row into the continuous bar with the same (symbol, start)."""
    out["_auction"] = auction
    out["_raw"] = raw_t
    key = out[auction][["symbol", "ts"]].drop_duplicates()
    hit = out.merge(key.assign(_hit=True), on=["symbol", "ts"], how="left")["_hit"].fillna(False).to_numpy(dtype=bool)
    part = out[hit].sort_values(["symbol", "ts", "_raw"], kind="stable")
    counts = part.groupby(["symbol", "ts"], sort=False)["_auction"].agg(["sum", "size"])
    if (counts["sum"] > 1).any() or (counts["size"] - counts["sum"] > 1).any():
        return out.drop(columns=["_auction", "_raw"])  # duplicate bars: validation names them
    g = part.groupby(["symbol", "ts"], sort=False)
    merged = g.last()
    merged["open"] = g["open"].first()
    merged["high"] = g["high"].max()
    merged["low"] = g["low"].min()
    merged["volume"] = g["volume"].sum(min_count=1)
    if "amount" in part.columns:
        merged["amount"] = g["amount"].sum(min_count=1)
    merged = merged.reset_index()[list(out.columns)]
    rest = out[~hit]
    return pd.concat([rest, merged], ignore_index=True).drop(columns=["_auction", "_raw"])
