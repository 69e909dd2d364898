"""Labels and Alpha158 factors: exact definitions, cross-checks against pandas, and causality."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlm.features import alpha158, alpha158_columns, forward_returns
from quantlm.testing import assert_causal
from tests.conftest import make_bars


def _hand_bars() -> pd.DataFrame:
    ts = pd.bdate_range("2024-01-01", periods=5)
    opens = [10.0, 11.0, 12.1, 13.31, 14.0]
    return pd.DataFrame({"symbol": "A", "ts": ts, "open": opens, "high": [x * 1.1 for x in opens],
                         "low": [x * 0.9 for x in opens], "close": opens, "volume": 1000.0})


def test_forward_returns_definition():
    lab = forward_returns(_hand_bars())
    assert list(lab.columns) == ["symbol", "ts", "label"]
    # label(t) = open(t+2) / open(t+1) - 1
    np.testing.assert_allclose(lab["label"].to_numpy()[:3], [12.1 / 11 - 1, 13.31 / 12.1 - 1, 14.0 / 13.31 - 1])
    assert lab["label"].iloc[3:].isna().all()
    close = forward_returns(_hand_bars(), horizon=2, price="close", lag=0)
    assert close["label"].iloc[0] == pytest.approx(12.1 / 10 - 1)


def test_forward_returns_gap_is_nan_not_longer_span():
    bars = make_bars(symbols=("A", "B"), periods=10)
    bars = bars[~((bars["symbol"] == "A") & (bars["ts"] == bars["ts"].unique()[5]))]
    lab = forward_returns(bars).set_index(["symbol", "ts"])["label"]
    t3, t4 = bars["ts"].unique()[3], bars["ts"].unique()[4]
    assert np.isnan(lab[("A", t3)]) and np.isnan(lab[("A", t4)])  # entry or exit on the missing session
    assert np.isfinite(lab[("B", t4)])


def test_forward_returns_uses_adj_factor():
    bars = _hand_bars()
    bars["adj_factor"] = [1.0, 1.0, 2.0, 2.0, 2.0]  # a 2:1 split before session 2: raw prices halve
    bars.loc[2:, ["open", "high", "low", "close"]] /= 2
    lab = forward_returns(bars)
    assert lab["label"].iloc[0] == pytest.approx(12.1 / 11 - 1)


def test_forward_returns_errors():
    with pytest.raises(ValueError, match="horizon"):
        forward_returns(_hand_bars(), horizon=0)
    with pytest.raises(ValueError, match="price"):
        forward_returns(_hand_bars(), price="mid")
    with pytest.raises(ValueError, match="lack column"):
        forward_returns(_hand_bars().drop(columns="open"))
    with pytest.raises(ValueError, match="duplicate"):
        forward_returns(pd.concat([_hand_bars(), _hand_bars()]))


@pytest.mark.parametrize("horizon,price,lag", [(1, "open", 1), (5, "open", 1), (1, "close", 0), (2, "vwap", 1)])
def test_forward_returns_causal_up_to_horizon(horizon, price, lag):
    bars = make_bars(symbols=("A", "B", "C"), periods=40)
    fn = lambda b: forward_returns(b, horizon=horizon, price=price, lag=lag)  # noqa: E731
    assert_causal(fn, bars, horizon_bars=lag + horizon)
    with pytest.raises(AssertionError, match="look-ahead"):
        assert_causal(fn, bars, horizon_bars=lag + horizon - 1)


@pytest.fixture(scope="module")
def panel():
    bars = make_bars(symbols=("A", "B", "C"), periods=130, seed=3)
    return bars, alpha158(bars)


def test_alpha158_shape(panel):
    bars, f = panel
    assert f.shape == (len(bars), 158)
    assert list(f.columns) == alpha158_columns()
    assert (f.dtypes == np.float32).all()
    assert f.index.names == ["symbol", "ts"]
    assert f.iloc[-1].notna().all()  # after 61 bars every feature is defined
    assert f.loc["A"].iloc[:4]["MA5"].isna().all() and np.isfinite(f.loc["A"].iloc[4]["MA5"])


def test_alpha158_is_causal():
    bars = make_bars(symbols=("A", "B", "C"), periods=90, seed=5)
    assert_causal(alpha158, bars, cutoffs=3)
    assert_causal(lambda b: alpha158(b, windows=(5, 10)), make_bars(periods=30), cutoffs=2)


def _pandas_reference(one: pd.DataFrame, d: int) -> dict[str, pd.Series]:
    c, h, lo, v = one["close"], one["high"], one["low"], one["volume"]
    x = np.arange(d, dtype=float)

    def fit(y, what):
        slope, intercept = np.polyfit(x, y, 1)
        if what == "slope":
            return slope
        resid = y - (slope * x + intercept)
        return resid[-1] if what == "resi" else 1 - (resid @ resid) / ((y - y.mean()) @ (y - y.mean()))

    dc = c.diff()
    return {
        f"ROC{d}": c.shift(d) / c,
        f"MA{d}": c.rolling(d).mean() / c,
        f"STD{d}": c.rolling(d).std() / c,
        f"BETA{d}": c.rolling(d).apply(lambda y: fit(y, "slope"), raw=True) / c,
        f"RSQR{d}": c.rolling(d).apply(lambda y: fit(y, "rsq"), raw=True),
        f"RESI{d}": c.rolling(d).apply(lambda y: fit(y, "resi"), raw=True) / c,
        f"QTLU{d}": c.rolling(d).quantile(0.8) / c,
        f"RANK{d}": c.rolling(d).rank(pct=True),
        f"RSV{d}": (c - lo.rolling(d).min()) / (h.rolling(d).max() - lo.rolling(d).min() + 1e-12),
        f"IMAX{d}": h.rolling(d).apply(lambda w: np.argmax(w) + 1, raw=True) / d,
        f"CORR{d}": c.rolling(d).corr(np.log(v + 1)),
        f"CNTP{d}": (dc > 0).astype(float).where(dc.notna()).rolling(d).mean(),
        f"SUMP{d}": dc.clip(lower=0).rolling(d).sum() / (dc.abs().rolling(d).sum() + 1e-12),
        f"VMA{d}": v.rolling(d).mean() / (v + 1e-12),
        f"WVMA{d}": (c.pct_change().abs() * v).rolling(d).std() / ((c.pct_change().abs() * v).rolling(d).mean() + 1e-12),
    }


@pytest.mark.parametrize("d", [5, 20])
def test_alpha158_matches_pandas_reference(panel, d):
    bars, f = panel
    one = bars[bars["symbol"] == "B"].reset_index(drop=True)
    ours = f.loc["B"].reset_index(drop=True)
    for name, ref in _pandas_reference(one, d).items():
        np.testing.assert_allclose(ours[name].to_numpy(), ref.to_numpy(dtype="float64"), rtol=2e-5, atol=2e-6,
                                   equal_nan=True, err_msg=name)


def test_alpha158_kbar_definitions(panel):
    bars, f = panel
    row, feat = bars.iloc[7], f.iloc[7]
    o, h, lo, c = row["open"], row["high"], row["low"], row["close"]
    assert feat["KMID"] == pytest.approx((c - o) / o, rel=1e-6)
    assert feat["KSFT2"] == pytest.approx((2 * c - h - lo) / (h - lo), rel=1e-5)
    assert feat["VWAP0"] == pytest.approx(row["amount"] / row["volume"] / c, rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), periods=st.integers(6, 40))
def test_alpha158_bounded_features(seed, periods):
    f = alpha158(make_bars(symbols=("A",), periods=periods, seed=seed), windows=(5,))
    for col, lo, hi in [("KMID2", -1, 1), ("RSV5", 0, 1), ("RANK5", 0, 1), ("RSQR5", 0, 1), ("IMAX5", 0, 1),
                        ("CNTD5", -1, 1), ("SUMP5", 0, 1), ("CORR5", -1, 1)]:
        x = f[col].dropna().to_numpy()
        assert ((x >= lo - 1e-5) & (x <= hi + 1e-5)).all(), col


def test_alpha158_errors():
    with pytest.raises(ValueError, match="lack column"):
        alpha158(make_bars().drop(columns="volume"))
    with pytest.raises(ValueError, match="windows"):
        alpha158(make_bars(), windows=(1,))


@settings(max_examples=30, deadline=None)
@given(opens=st.lists(st.floats(1.0, 100.0), min_size=4, max_size=30), horizon=st.integers(1, 3))
def test_forward_returns_property(opens, horizon):
    n = len(opens)
    bars = pd.DataFrame({"symbol": "A", "ts": pd.bdate_range("2024-01-01", periods=n), "open": opens,
                         "high": [x * 1.01 for x in opens], "low": [x * 0.99 for x in opens], "close": opens,
                         "volume": 1.0})
    label = forward_returns(bars, horizon=horizon)["label"].to_numpy()
    o = np.asarray(opens)
    expected = np.full(n, np.nan)
    expected[: max(0, n - 1 - horizon)] = o[1 + horizon :] / o[1 : n - horizon] - 1
    np.testing.assert_allclose(label, expected, rtol=1e-12, equal_nan=True)
