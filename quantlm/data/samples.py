"""Real sample data that ships with dependencies (nothing is downloaded).

`load_sp500_sample`: the S&P 500 index, daily OHLCV from 1999-01-04 to 2018-12-31 (5,031 sessions),
as packaged by the `arch` library (`arch.data.sp500`, Yahoo-style columns). It is imported through
the same path as user files (`import_frame`, format "yahoo"), as symbol `^GSPC` on market `us`,
with an instruments row (board "index").
"""

from __future__ import annotations

import pandas as pd

from quantlm.data.importers import ImportReport, import_frame
from quantlm.data.store import Store

SP500_SYMBOL = "^GSPC"


def sp500_frame() -> pd.DataFrame:
    """arch's S&P 500 sample as a Yahoo-style frame (Date, Open, High, Low, Close, Adj Close, Volume)."""
    try:
        from arch.data import sp500
    except ImportError as e:  # optional dependency (extra "samples")
        raise ImportError("the S&P 500 sample needs the 'arch' package: pip install 'quantlm[samples]'") from e
    return sp500.load().reset_index()


def load_sp500_sample(store: Store, replace: bool = False) -> ImportReport:
    """Import the S&P 500 daily sample into `store` (prices in USD index points, volume in shares)."""
    df = sp500_frame()
    instruments = pd.DataFrame({
        "symbol": [SP500_SYMBOL],
        "market": ["us"],
        "board": ["other"],  # traded as an index fund proxy (SPY-like): the only tradable series of the sample
        "name": ["S&P 500"],
        "list_date": pd.to_datetime([df["Date"].min()]).astype("datetime64[ns]"),
        "delist_date": pd.Series([pd.NaT], dtype="datetime64[ns]"),
    })
    return import_frame(df, store, market="us", freq="1d", format="yahoo", replace=replace,
                        source="arch.data.sp500", symbol=SP500_SYMBOL, instruments=instruments)
