"""Time stamps of imported files -> tz-naive exchange-local datetime64[ns].

Accepted without options: ISO dates and date-times (`2024-01-02`, `2024-1-2`, `2024-01-02 09:30`,
`2024-01-02T09:30:00+08:00`), `2024/01/02` (year first), `20240102`. Day/month-ambiguous spellings
(`03/04/2024`, `3/4/24`, `03.04.2024`) are refused unless the user gives a strptime format
(`date_format`, CLI `--date-format`, e.g. `%d/%m/%Y`): nothing is read month-first silently.
Tz-aware values are converted to the market's zone and made naive.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantlm.data.calendars import TIMEZONES
from quantlm.data.schema import DataValidationError

_AMBIGUOUS = r"\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}(?:\D.*)?"


def parse_ts(raw: pd.Series, market: str, file: str, rows: np.ndarray, column: str,
             fmt: str | None = None, date_format: str | None = None) -> np.ndarray:
    """Timestamps as tz-naive exchange-local datetime64[ns] (see the module docstring).

    `fmt` is a format's own spelling (e.g. Tushare's `%Y%m%d`); `date_format`, the user's, wins over it.
    Errors name `file`, the 1-based data row (`rows`) and `column`.
    """
    if pd.api.types.is_datetime64_any_dtype(raw):
        ts = raw
    else:
        fmt = date_format or fmt
        text = raw.astype("str").str.strip().where(raw.notna())
        try:
            ts = pd.to_datetime(text, format=fmt or "ISO8601", errors="coerce")
        except ValueError:  # mixed UTC offsets: put them on one clock first, unless some have none
            has_tz = text.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True).fillna(False).to_numpy(dtype=bool)
            if not has_tz.all():
                i = int(np.flatnonzero(has_tz != has_tz[0])[0])
                raise DataValidationError(f"timestamp {raw.iloc[i]!r} {'has' if has_tz[i] else 'lacks'} a UTC offset "
                                          f"unlike row {int(rows[0])}", file=file, row=int(rows[i]), column=column) from None
            ts = pd.to_datetime(text, format=fmt or "ISO8601", errors="coerce", utc=True)
        if fmt == "%Y%m%d":  # strptime would also take 7-digit '2023014'; such dates are exactly 8 digits
            ts = ts.where(text.str.fullmatch(r"\d{8}").fillna(False).astype(bool))
        bad = (ts.isna() & text.notna()).to_numpy() | raw.isna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            value = text.iloc[i]
            if value is not None and fmt is None and pd.Series([value]).str.fullmatch(_AMBIGUOUS).iloc[0]:
                raise DataValidationError(
                    f"date {value!r} is ambiguous (day/month order); pass --date-format with its strptime "
                    "format, e.g. --date-format '%d/%m/%Y' or '%m/%d/%Y'", file=file, row=int(rows[i]), column=column)
            hint = f" (expected format {fmt!r})" if fmt else "; pass --date-format with its strptime format"
            raise DataValidationError(f"unparseable timestamp {raw.iloc[i]!r}{hint}", file=file, row=int(rows[i]),
                                      column=column)
    if ts.dt.tz is not None:
        ts = ts.dt.tz_convert(TIMEZONES[market]).dt.tz_localize(None)
    return ts.to_numpy(dtype="datetime64[ns]")
