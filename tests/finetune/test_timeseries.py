"""Time-series trader targets and factors for stores too small to rank (quantlm.finetune.timeseries)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from quantlm.finetune.timeseries import factor_time_ranks, is_timing_store, timing_rank_target


def test_the_rule_is_the_timing_books():
    from quantlm.backtest.timing import MIN_RANKED_SYMBOLS, resolve_strategy

    for n in (1, MIN_RANKED_SYMBOLS - 1, MIN_RANKED_SYMBOLS, 300):
        assert is_timing_store(n) == (resolve_strategy("auto", n) == "timing")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-0.5, 0.5), min_size=2, max_size=30), st.floats(-6.0, -2.0))
def test_rank_target_is_the_normal_cdf_of_the_vol_scaled_return(rets, log_sigma):
    ret = np.array(rets)[:, None]
    out = timing_rank_target(ret, np.full(len(rets), log_sigma), [5])
    z = ret[:, 0] / (np.exp(log_sigma) * np.sqrt(5))
    np.testing.assert_allclose(out[:, 0], 2 * norm.cdf(z) - 1, atol=1e-6)
    assert np.all(np.abs(out) <= 1)
    order = np.argsort(ret[:, 0], kind="stable")
    assert np.all(np.diff(out[order, 0]) >= 0)  # monotone in the return


def test_rank_target_keeps_missing_labels_missing():
    out = timing_rank_target(np.array([[np.nan, 0.01]]), np.array([-4.0]), [1, 5])
    assert np.isnan(out[0, 0]) and np.isfinite(out[0, 1])


def _raw(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, 3))
    values[:30, 2] = np.nan  # a factor with a long warm-up
    return pd.DataFrame(values, columns=["a", "b", "c"])


def test_factor_time_ranks_are_trailing_percentiles_within_each_symbol():
    raw = _raw(400)
    symbol = np.array(["X"] * 200 + ["Y"] * 200)
    out = factor_time_ranks(raw, symbol, window=50, min_history=20).astype(np.float64)
    assert out.shape == (400, 4)
    # row 120 of X: its value's place among X's rows 71..120
    window = raw["a"].to_numpy()[71:121]
    rank = (window < window[-1]).sum() + 1
    assert out[120, 0] == pytest.approx((rank - 0.5) / 50 * 2 - 1, abs=1e-3)
    assert np.all(out[:19, :3] == 0) and np.all(out[200:219, :3] == 0)  # under min_history: 0, per symbol
    assert out[0, 3] == pytest.approx(1 / 3, abs=1e-3) and out[399, 3] == 0  # share of missing factors
    assert np.all(np.abs(out[:, :3]) <= 1)


def test_factor_time_ranks_do_not_look_ahead():
    raw = _raw(300)
    symbol = np.array(["X"] * 300)
    base = factor_time_ranks(raw, symbol, window=60, min_history=20)
    moved = raw.copy()
    moved.iloc[200:] = moved.iloc[200:] * 5 + 3
    after = factor_time_ranks(moved, symbol, window=60, min_history=20)
    assert np.array_equal(base[:200], after[:200])
    assert not np.array_equal(base[200:], after[200:])


def test_one_series_store_gets_informative_targets_and_factors(ft_env):
    """On one symbol the cross-sectional rank target and factor ranks are all 0; the timing versions
    carry the return's sign and the factors' history, and inputs up to t ignore bars after t."""
    from quantlm.finetune.data import build_trader_data
    from quantlm.tokenize import KlineTokenizer

    tok = KlineTokenizer.load(ft_env.pretrained / "tokenizer")
    bars = ft_env.store.bars()
    one = bars[bars["symbol"] == bars["symbol"].iloc[0]].reset_index(drop=True)
    data = build_trader_data(None, tok, bars=one, text=False, factors="alpha158")
    known = np.isfinite(data.ret[:, 0])
    assert np.mean(np.sign(data.rank[known, 0]) == np.sign(data.ret[known, 0])) > 0.99
    assert np.abs(data.factors[100:, :158].astype(np.float32)).mean() > 0.2
    cut = one["ts"].iloc[300]
    moved = one.copy()
    late = moved["ts"] > cut
    moved.loc[late, ["open", "high", "low", "close"]] *= 1.7
    moved.loc[late, "volume"] *= 3
    again = build_trader_data(None, tok, bars=moved, text=False, factors="alpha158")
    assert np.array_equal(again.factors[:301], data.factors[:301])
    assert not np.array_equal(again.factors[301:], data.factors[301:])
    many = build_trader_data(None, tok, bars=bars, text=False, factors="alpha158")  # 12 symbols: ranked
    mid = many.session == int(np.median(many.session))
    assert mid.sum() == 12
    np.testing.assert_allclose(np.sort(many.rank[mid, 0]), (np.arange(1, 13) - 0.5) / 12 * 2 - 1, atol=1e-6)
