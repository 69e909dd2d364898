"""KlineTokenizer: vocabulary layout, causality, reconstruction, state recursion, persistence."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlm.testing import assert_causal
from quantlm.tokenize import FEATURE_NAMES, KlineTokenizer
from quantlm.tokenize._bins import default_shape, fit_edges
from quantlm.tokenize.evaluate import free_running_errors, teacher_forced_errors
from quantlm.tokenize.simulate import simulate_bars

FIT_END = "2016-06-30"


@pytest.fixture(scope="module")
def daily() -> pd.DataFrame:
    return simulate_bars(n_symbols=12, n_bars=800, seed=3)  # 2015-01-05 .. 2018-01-26


@pytest.fixture(scope="module")
def tok(daily) -> KlineTokenizer:
    return KlineTokenizer().fit(daily, end=FIT_END)


def test_vocabulary_layout(tok):
    ids = [tok.pad_id, tok.bos_id, tok.eos_id, tok.sep_id, tok.buy_id, tok.hold_id, tok.sell_id, tok.text_id]
    assert len(set(ids)) == 8 and max(ids) < tok.n_special
    assert tok.coarse_offset == tok.n_special
    assert tok.fine_offset == tok.n_special + tok.n_coarse
    assert tok.vocab_size == tok.n_special + tok.n_coarse + tok.n_fine == 16 + 256 + 256
    assert tok.tokens_per_bar == 2 and tok.n_weekdays == 7 and tok.n_slots == 1 and tok.freq == "1d"
    assert default_shape(256, 256) == (64, 4, 2, 2, 4, 4, 4)
    assert np.prod(default_shape(1024, 1024)) == 1024 * 1024


def test_encode_shapes_blocks_and_symbol_agreement(tok, daily):
    ids = tok.encode(daily)
    assert sorted(ids) == sorted(daily["symbol"].unique())
    for sym, x in ids.items():
        one = daily[daily["symbol"] == sym]
        assert x.dtype == np.int64 and x.shape == (len(one), 2)
        assert ((x[:, 0] >= tok.coarse_offset) & (x[:, 0] < tok.fine_offset)).all()
        assert ((x[:, 1] >= tok.fine_offset) & (x[:, 1] < tok.vocab_size)).all()
        np.testing.assert_array_equal(tok.encode_symbol(one), x)
    # row order of the input does not matter
    shuffled = daily.sample(frac=1.0, random_state=0)
    for sym, x in tok.encode(shuffled).items():
        np.testing.assert_array_equal(x, ids[sym])
    feats = tok.features(daily)
    assert all(f.dtype == np.float32 and f.shape[1] == len(FEATURE_NAMES) for f in feats.values())


def test_coarse_and_fine_are_used(tok, daily):
    ids = np.concatenate(list(tok.encode(daily).values()))
    assert len(np.unique(ids[:, 0])) > 0.8 * tok.n_coarse
    assert len(np.unique(ids[:, 1])) > 0.5 * tok.n_fine


def test_first_bar_definitions(tok, daily):
    one = daily[daily["symbol"] == daily["symbol"].iloc[0]]
    f = tok.features(one)[one["symbol"].iloc[0]]
    o, h, lo, c = (one[k].iloc[0] for k in ("open", "high", "low", "close"))
    sigma = np.log(h / lo) / np.sqrt(4 * np.log(2))
    assert f[0, FEATURE_NAMES.index("gap")] == 0.0 and f[0, FEATURE_NAMES.index("vol")] == 0.0
    np.testing.assert_allclose(f[0, FEATURE_NAMES.index("ret")], np.log(c / o) / sigma, rtol=1e-5)


def _frame(fn):
    """Wrap a symbol -> [n, k] output as a (symbol, ts, c0..) frame for assert_causal."""
    def run(bars: pd.DataFrame) -> pd.DataFrame:
        out = fn(bars)
        frames = []
        for sym, x in out.items():
            ts = bars.loc[bars["symbol"] == sym, "ts"].sort_values().to_numpy()
            frames.append(pd.DataFrame({"symbol": sym, "ts": ts, **{f"c{j}": x[:, j] for j in range(x.shape[1])}}))
        return pd.concat(frames, ignore_index=True)
    return run


def test_tokens_and_features_are_causal(tok, daily):
    small = daily[daily["symbol"].isin(daily["symbol"].unique()[:4])]
    assert_causal(_frame(tok.encode), small, cutoffs=3, seed=1)
    assert_causal(_frame(tok.features), small, cutoffs=3, seed=2)


def test_fit_uses_only_the_training_period(daily):
    a = KlineTokenizer().fit(daily, end=FIT_END)
    future = daily["ts"] > pd.Timestamp(FIT_END)
    changed = daily.copy()
    changed.loc[future, ["open", "high", "low", "close"]] *= 3.0
    changed.loc[future, "high"] *= 1.5
    changed.loc[future, "volume"] *= 0.1
    b = KlineTokenizer().fit(changed, end=FIT_END)
    for axis in a.edges:
        np.testing.assert_array_equal(a.edges[axis], b.edges[axis])
        np.testing.assert_array_equal(a.reps[axis], b.reps[axis])


def test_reconstruction_error_on_held_out_data(tok, daily):
    e = free_running_errors(tok, daily, FIT_END)  # decode(encode(bars)) after the fit period
    assert e["ret"] < 0.04, e  # close-to-close log return MAE, in units of the return std
    assert e["gap"] < 0.15 and e["upper"] < 0.15 and e["lower"] < 0.15, e
    assert e["logvol"] < 0.2, e  # log volume MAE (natural log units)
    t = teacher_forced_errors(tok, daily, FIT_END)
    assert t["ret"] < 0.04 and t["ret"] < t["ret_coarse_only"] < 0.08, t


def test_decode_returns_matches_decode_and_is_vectorised(tok, daily):
    one = daily[daily["symbol"] == daily["symbol"].iloc[1]]
    state = tok.state(one.iloc[:500])
    ids = tok.encode_symbol(one)[500:530]
    r = tok.decode_returns(ids, state)
    np.testing.assert_allclose(r, tok.decode(ids, state)["log_return"].to_numpy(), rtol=1e-12)
    rng = np.random.default_rng(0)
    paths = np.stack([ids[rng.permutation(len(ids))] for _ in range(6)]).reshape(2, 3, len(ids), 2)
    rp = tok.decode_returns(paths, state)
    assert rp.shape == (2, 3, len(ids))
    np.testing.assert_allclose(rp[1, 2], tok.decode_returns(paths[1, 2], state), rtol=1e-12)
    with pytest.raises(ValueError):
        tok.decode_returns(np.array([[tok.bos_id, tok.fine_offset]]), state)


def test_state_recursion_matches_encoder(tok, daily):
    one = daily[daily["symbol"] == daily["symbol"].iloc[2]]
    s0, s1 = tok.state(one.iloc[:300]), tok.state(one.iloc[:301])
    r = np.log(one["close"].iloc[300] / one["close"].iloc[299])
    np.testing.assert_allclose(tok._advance_var(np.float64(s0.var), np.float64(r)), s1.var, rtol=1e-12)
    assert s1.n_bars == 301 and s1.last_close == one["close"].iloc[300]
    states = tok.states(daily)
    assert states[one["symbol"].iloc[0]].var == tok.state(one).var


def test_adj_factor_removes_split_jump(tok):
    bars = simulate_bars(n_symbols=1, n_bars=60, seed=5)
    bars["adj_factor"] = 1.0
    split = bars.copy()
    split.loc[30:, ["open", "high", "low", "close"]] /= 2.0
    split.loc[30:, "adj_factor"] = 2.0
    np.testing.assert_array_equal(tok.encode_symbol(split), tok.encode_symbol(bars))


def test_save_load_roundtrip(tok, daily, tmp_path):
    tok.save(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert meta["vocab_size"] == tok.vocab_size
    back = KlineTokenizer.load(tmp_path / "tok")
    a, b = tok.encode(daily), back.encode(daily)
    for sym in a:
        np.testing.assert_array_equal(a[sym], b[sym])
    assert back.n_slots == tok.n_slots and back.fit_end == tok.fit_end


def test_calendar_ids_daily_and_intraday():
    bars = simulate_bars(n_symbols=2, n_bars=480, freq="1min", seed=1)
    tok = KlineTokenizer(n_coarse=64, n_fine=64).fit(bars)
    assert tok.freq == "1min" and tok.n_slots == 1440
    cal = tok.calendar_ids(bars["ts"])
    ts = pd.DatetimeIndex(bars["ts"])
    np.testing.assert_array_equal(cal[:, 0], ts.dayofweek)
    np.testing.assert_array_equal(cal[:, 1], ts.hour * 60 + ts.minute)
    daily = KlineTokenizer(n_coarse=64, n_fine=64)
    np.testing.assert_array_equal(daily.calendar_ids(pd.bdate_range("2024-01-01", periods=5))[:, 1], 0)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=300), st.integers(2, 64))
def test_fit_edges_properties(xs, n_bins):
    x = np.array(xs)
    e = fit_edges(x, n_bins)
    assert len(e) <= n_bins - 1 and np.all(np.diff(e) > 0)
    b = np.searchsorted(e, x, side="left")
    assert b.min() >= 0 and b.max() < n_bins


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 40))
def test_decoded_bars_are_valid_ohlc(tok, seed, n):
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(tok.coarse_offset, tok.fine_offset, n),
                    rng.integers(tok.fine_offset, tok.vocab_size, n)], axis=1)
    state = tok.state(simulate_bars(n_symbols=1, n_bars=30, seed=seed))
    dec = tok.decode(ids, state)
    assert (dec["high"] >= np.maximum(dec["open"], dec["close"])).all()
    assert (dec["low"] <= np.minimum(dec["open"], dec["close"])).all()
    assert (dec["low"] > 0).all() and (dec["volume"] >= 0).all()
