"""Timing books and time-series IC for stores too small to rank (one index series)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlm.backtest.metrics import time_series_ic
from quantlm.backtest.timing import causal_zscore, resolve_strategy


def _scores(n: int = 300, symbols=("A", "B"), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.bdate_range("2020-01-01", periods=n)
    return pd.DataFrame({"symbol": np.repeat(symbols, n), "ts": np.tile(ts, len(symbols)),
                         "score": rng.normal(size=n * len(symbols)) + 5.0})


def test_causal_zscore_uses_only_earlier_scores():
    s = _scores()
    z = causal_zscore(s, window=50, min_history=20)
    cut = pd.Timestamp(s["ts"].iloc[150])
    bumped = s.copy()
    bumped.loc[bumped["ts"] > cut, "score"] += np.random.default_rng(1).normal(size=(bumped["ts"] > cut).sum()) * 10
    zb = causal_zscore(bumped, window=50, min_history=20)
    past = z["ts"] <= cut
    np.testing.assert_array_equal(z.loc[past, "score"].to_numpy(), zb.loc[past, "score"].to_numpy())
    assert not np.allclose(z.loc[~past, "score"].to_numpy(), zb.loc[~past, "score"].to_numpy(), equal_nan=True)
    # first 20 scores of each symbol have no history; then z = (s - mean(prev 50)) / std(prev 50)
    a = z[z["symbol"] == "A"].reset_index(drop=True)
    raw = s[s["symbol"] == "A"]["score"].to_numpy()
    assert a["score"].iloc[:20].isna().all()
    prev = raw[60:110]
    assert a["score"].iloc[110] == pytest.approx((raw[110] - prev.mean()) / prev.std(ddof=1))


def test_resolve_strategy():
    assert resolve_strategy("auto", 1) == "timing"
    assert resolve_strategy("auto", 300) == "topk"
    assert resolve_strategy("threshold", 1) == "threshold"


def test_time_series_ic_single_series():
    s = _scores(symbols=("^GSPC",))
    rng = np.random.default_rng(3)
    labels = s[["symbol", "ts"]].copy()
    labels["label"] = 0.01 * (s["score"] - 5.0) + 0.01 * rng.normal(size=len(s))
    got = time_series_ic(s, labels)
    assert got["rank_ic"] > 0.5 and got["ic"] > 0.5
    assert got["directional_accuracy"] > 0.65
    flipped = labels.assign(label=-labels["label"])
    assert time_series_ic(s, flipped)["rank_ic"] < -0.5


def test_single_series_evaluation_trades_timing(tmp_path):
    """On the S&P 500 sample (one series) strategy auto trades each model's timing: rules differ from
    buy-and-hold, and rank_ic is the time-series one."""
    pytest.importorskip("arch")
    from quantlm.baselines.compare import EvaluateOptions, run_evaluation
    from quantlm.data.samples import load_sp500_sample
    from quantlm.data.store import Store

    store = Store(tmp_path / "store")
    load_sp500_sample(store)
    assert store.meta()["market"] == "us"
    opts = EvaluateOptions(strategy="auto", baselines=["momentum", "reversal", "lightgbm"], train_years=12,
                           test_months=48, num_boost_round=5)
    res = run_evaluation(store, tmp_path / "out", opts)
    runs = res["runs"]
    mom, rev, lgb = (runs[n]["metrics"] for n in ("momentum-20", "reversal-5", "lightgbm"))
    for m in (mom, rev, lgb):  # LightGBM trains on a time-series target (no cross-section to demean)
        assert m["ic_time_series"] == 1.0
        assert np.isfinite(m["rank_ic"]) and np.isfinite(m["directional_accuracy"])
        assert m["n_trades"] > 10  # it times the market rather than holding it throughout
    assert mom["sharpe"] != pytest.approx(rev["sharpe"])
