"""The leakage harness catches look-ahead and accepts causal builders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlm.testing import assert_causal, synthetic_result
from tests.conftest import make_bars


def _per_symbol(bars: pd.DataFrame, fn) -> pd.DataFrame:
    bars = bars.sort_values(["symbol", "ts"]).reset_index(drop=True)
    out = bars[["symbol", "ts"]].copy()
    out["value"] = bars.groupby("symbol")["close"].transform(fn)
    return out


def causal_ma(bars):
    return _per_symbol(bars, lambda s: s.rolling(5).mean())


def leaky_shift(bars):
    return _per_symbol(bars, lambda s: s.shift(-1) / s - 1)


def leaky_centered(bars):
    return _per_symbol(bars, lambda s: s.rolling(5, center=True).mean())


def leaky_full_sample_zscore(bars):
    return _per_symbol(bars, lambda s: (s - s.mean()) / s.std())


def leaky_row_count(bars):
    """Depends on how many rows the future holds (caught by the drop/append perturbations)."""
    out = bars[["symbol", "ts"]].copy()
    out["value"] = float(len(bars))
    return out


def index_output(bars):
    return causal_ma(bars).set_index(["symbol", "ts"])


def test_causal_builder_passes():
    assert_causal(causal_ma, make_bars(periods=40))
    assert_causal(index_output, make_bars(periods=40))


@pytest.mark.parametrize("fn", [leaky_shift, leaky_centered, leaky_full_sample_zscore, leaky_row_count])
def test_leaky_builders_are_caught(fn):
    with pytest.raises(AssertionError, match="look-ahead|rows|cut-off"):
        assert_causal(fn, make_bars(periods=40))


def test_allowed_horizon():
    bars = make_bars(periods=40)
    assert_causal(leaky_shift, bars, horizon_bars=1)
    with pytest.raises(AssertionError, match="look-ahead in column 'value'"):
        assert_causal(leaky_shift, bars, horizon_bars=0)


def test_bad_inputs():
    bars = make_bars(periods=40)
    with pytest.raises(ValueError, match="no 'time' column"):
        assert_causal(causal_ma, bars, time_col="time")
    with pytest.raises(ValueError, match="sessions"):
        assert_causal(causal_ma, make_bars(periods=3))
    with pytest.raises(TypeError, match="DataFrame"):
        assert_causal(lambda b: b["close"], bars)


def test_synthetic_result_shape():
    idx = pd.bdate_range("2024-01-01", periods=30)
    r = pd.Series(np.full(30, 0.001), index=idx)
    res = synthetic_result(r, benchmark_returns=r * 0)
    assert np.isclose(res.equity.iloc[-1], 1e6 * 1.001**30)
    assert np.allclose(res.returns().to_numpy(), 0.001)
    assert (res.trades["status"] == "rejected").sum() == 3
