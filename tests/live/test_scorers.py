"""Model scorers in the live engine: new listings and short histories never poison the scores."""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantlm.live.scorers import pad_history


def test_pad_history_fills_short_and_missing_symbols_with_flat_bars():
    ts = pd.bdate_range("2024-01-02", periods=5)
    hist = pd.DataFrame({"symbol": "A", "ts": ts, "open": [10.0, 10.5, 10.2, 10.8, 11.0], "high": 11.5, "low": 9.5,
                         "close": [10.2, 10.4, 10.6, 10.9, 11.1], "volume": 1e5, "amount": 1e6})
    out = pad_history(hist, ["A", "B"], 8)
    a, b = out[out["symbol"] == "A"], out[out["symbol"] == "B"]
    assert len(a) == 8 and len(b) == 8
    pad = a.iloc[:3]
    assert (pad["close"] == 10.0).all() and (pad["volume"] == 0).all() and pad["ts"].max() < ts[0]
    assert a["ts"].is_monotonic_increasing and (a.iloc[3:]["close"].to_numpy() == hist["close"].to_numpy()).all()
    assert (b["close"] == 1.0).all() and b["ts"].max() < ts[0]
    assert np.isfinite(out[["open", "high", "low", "close", "volume"]].to_numpy()).all()
    assert pad_history(hist, ["A"], 5) is hist  # nothing to pad
