"""Training targets: hand-computed labels, triple-barrier cases, ranks, costs, properties and causality."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlm.backtest.costs import cost_model
from quantlm.features.labels import forward_returns
from quantlm.features.targets import (
    TargetConfig,
    _ewm_vol,
    _Panel,
    cross_sectional_rank,
    direction_labels,
    make_targets,
    multi_horizon_returns,
    round_trip_cost_for,
    triple_barrier_labels,
)
from quantlm.testing import assert_causal
from tests.conftest import make_bars

# ---------------------------------------------------------------- hand-computed 3 x 15 frame


def _three_symbols() -> pd.DataFrame:
    """A rises 1% a session, B falls 1%, C drifts +0.05% (inside the cost dead zone) and misses session 7."""
    ts = pd.bdate_range("2024-03-01", periods=15)
    rows = []
    for sym, growth in (("A", 1.01), ("B", 0.99), ("C", 1.0005)):
        for k, t in enumerate(ts):
            if sym == "C" and k == 7:
                continue
            p = 10.0 * growth**k
            rows.append((sym, t, p, p * 1.01, p * 0.99, p, 1e5))
    bars = pd.DataFrame(rows, columns=["symbol", "ts", "open", "high", "low", "close", "volume"])
    return bars.sample(frac=1.0, random_state=3).reset_index(drop=True)  # order must not matter


def _by(out: pd.DataFrame, sym: str, col: str) -> pd.Series:
    part = out[out["symbol"] == sym]
    return pd.Series(part[col].to_numpy(), index=part["ts"].dt.day.to_numpy())


def test_make_targets_hand_computed_fixed():
    bars = _three_symbols()
    out = make_targets(bars, TargetConfig(horizons=[1, 5], round_trip_cost=0.001))
    assert list(out.columns) == ["symbol", "ts", "ret_1", "ret_5", "rank_1", "rank_5", "direction"]
    assert len(out) == len(bars) == 44
    assert out["direction"].dtype == np.int8
    assert all(out[c].dtype == np.float64 for c in ("ret_1", "ret_5", "rank_1", "rank_5"))
    assert list(zip(out["symbol"], out["ts"], strict=True)) == sorted(zip(bars["symbol"], bars["ts"], strict=True))

    ts = pd.bdate_range("2024-03-01", periods=15)
    k_of = {t: k for k, t in enumerate(ts)}
    a = out[out.symbol == "A"].set_index(out[out.symbol == "A"]["ts"].map(k_of))
    b = out[out.symbol == "B"].set_index(out[out.symbol == "B"]["ts"].map(k_of))
    c = out[out.symbol == "C"].set_index(out[out.symbol == "C"]["ts"].map(k_of))
    assert 7 not in c.index and len(c) == 14

    # ret_1(t) = open(t+2)/open(t+1) - 1 needs t+2 <= 14
    np.testing.assert_allclose(a.loc[0:12, "ret_1"], 0.01, rtol=1e-12)
    np.testing.assert_allclose(b.loc[0:12, "ret_1"], -0.01, rtol=1e-12)
    assert a.loc[13:, "ret_1"].isna().all() and b.loc[13:, "ret_1"].isna().all()
    c_nan = {5, 6, 13, 14}  # C lacks session 7 (needed by t=5 as exit and t=6 as entry)
    assert set(c.index[c["ret_1"].isna()]) == c_nan
    np.testing.assert_allclose(c.loc[[k for k in c.index if k not in c_nan], "ret_1"], 0.0005, rtol=1e-9)

    # ret_5 = open(t+6)/open(t+1) - 1, valid for t <= 8; C: NaN where t+1 == 7 or t+6 == 7
    np.testing.assert_allclose(a.loc[0:8, "ret_5"], 1.01**5 - 1, rtol=1e-12)
    assert a.loc[9:, "ret_5"].isna().all()
    assert set(c.index[c["ret_5"].isna()]) == {1, 6} | set(range(9, 15))

    # ranks of ret_1: three values -> -2/3, 0, 2/3; two values -> -1/2, 1/2; none -> NaN
    for k in range(13):
        if k in (5, 6, 7):
            assert (a.loc[k, "rank_1"], b.loc[k, "rank_1"]) == (0.5, -0.5)
            assert k == 7 or math.isnan(c.loc[k, "rank_1"])
        else:
            assert a.loc[k, "rank_1"] == pytest.approx(2 / 3) and b.loc[k, "rank_1"] == pytest.approx(-2 / 3)
            assert c.loc[k, "rank_1"] == 0.0
    assert a.loc[13:, "rank_1"].isna().all()
    assert (a.loc[1, "rank_5"], a.loc[6, "rank_5"], a.loc[7, "rank_5"]) == (0.5, 0.5, 0.5)
    assert a.loc[2, "rank_5"] == pytest.approx(2 / 3) and c.loc[2, "rank_5"] == 0.0

    # direction from ret_1 against the 0.1% round trip: A buy, B sell, C hold, -1 where ret_1 is NaN
    assert list(a["direction"]) == [2] * 13 + [-1] * 2
    assert list(b["direction"]) == [0] * 13 + [-1] * 2
    assert list(c["direction"]) == [-1 if k in c_nan else 1 for k in c.index]


def test_band_widens_dead_zone_and_default_cost_is_cn():
    bars = _three_symbols()
    wide = make_targets(bars, TargetConfig(horizons=[1], round_trip_cost=0.001, band=0.0085))  # |r| > 0.0095
    assert set(wide.loc[wide.symbol.isin(["A", "B"]) & wide.ret_1.notna(), "direction"]) == {2, 0}
    wider = make_targets(bars, TargetConfig(horizons=[1], round_trip_cost=0.001, band=0.0095))
    assert set(wider.loc[wider.ret_1.notna(), "direction"]) == {1}  # |r| = 0.01 < 0.0105
    default = make_targets(bars, TargetConfig(horizons=[1]))  # cn 2024: 0.00152 > 0.0005 of C
    np.testing.assert_array_equal(default["direction"], make_targets(bars, TargetConfig(horizons=[1],
                                                                                      round_trip_cost=0.001))["direction"])


def test_default_cost_follows_the_session_date():
    """ret_1 = 0.18%: a hold while cn stamp duty was 0.1% (cost 0.202%), a buy from 2023-08-28 (0.152%)."""
    ts = pd.bdate_range("2023-08-21", periods=12)
    opens = 10.0 * 1.0018 ** np.arange(12)
    bars = pd.DataFrame({"symbol": "600000.SH", "ts": ts, "open": opens})
    out = make_targets(bars, TargetConfig(horizons=[1]), market="cn")
    before = out["ts"] < pd.Timestamp("2023-08-28")
    assert (out.loc[before, "direction"] == 1).all()
    assert (out.loc[~before & out.ret_1.notna(), "direction"] == 2).all()
    assert (out.loc[out.ret_1.isna(), "direction"] == -1).all()


# ---------------------------------------------------------------- costs


def test_round_trip_cost_for_matches_cost_model_fields():
    m = cost_model("cn")
    after = 2 * m.commission_rate + m.stamp_duty_rate("2024-01-02") + 2 * m.transfer_fee_rate + 2 * m.slippage
    assert after == pytest.approx(2 * 0.0003 + 0.0005 + 2 * 0.00001 + 2 * 0.0002)
    assert round_trip_cost_for("cn") == pytest.approx(after, abs=1e-15)
    assert round_trip_cost_for("cn", "2023-08-28") == pytest.approx(after, abs=1e-15)
    before = round_trip_cost_for("cn", "2023-08-25")
    assert before == pytest.approx(after + 0.0005, abs=1e-15) and round_trip_cost_for("cn", "2024-06-03") < before
    assert round_trip_cost_for("crypto") == pytest.approx(2 * 0.001 + 2 * 0.0002)
    assert round_trip_cost_for("us", "2024-06-03") == pytest.approx(2 * 0.0002 + 0.0000278)
    assert round_trip_cost_for("us") == pytest.approx(2 * 0.0002)  # SEC fee 0 from 2025-05-14
    with pytest.raises(ValueError, match="unknown market"):
        round_trip_cost_for("mars")


# ---------------------------------------------------------------- ranks and directions


def test_cross_sectional_rank_ties_nan_and_singletons():
    frame = pd.DataFrame({"ts": pd.to_datetime(["2024-01-02"] * 5 + ["2024-01-03"] * 2 + ["2024-01-04"]),
                          "x": [1.0, 2.0, 2.0, 3.0, np.nan, np.nan, 5.0, 7.0]}, index=list("abcdefgh"))
    r = cross_sectional_rank(frame, "x")
    assert r.dtype == np.float64 and list(r.index) == list("abcdefgh")
    # n = 4 non-NaN: ranks 1, 2.5, 2.5, 4 -> (rank - 0.5) / 4 * 2 - 1
    np.testing.assert_allclose(r.iloc[:4], [-0.75, 0.0, 0.0, 0.75])
    assert np.isnan(r["e"]) and np.isnan(r["f"])
    assert r["g"] == 0.0 and r["h"] == 0.0  # a single value per ts
    with pytest.raises(ValueError, match="lacks column"):
        cross_sectional_rank(frame, "y")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.one_of(st.none(), st.integers(-3, 3), st.floats(-1e6, 1e6))),
                min_size=1, max_size=40))
def test_rank_properties(rows):
    ts = pd.Timestamp("2024-01-01") + pd.to_timedelta([g for g, _ in rows], unit="D")
    x = np.array([np.nan if v is None else float(v) for _, v in rows])
    frame = pd.DataFrame({"ts": ts, "x": x})
    r = cross_sectional_rank(frame, "x").to_numpy()
    assert np.array_equal(np.isnan(r), np.isnan(x))
    ok = ~np.isnan(r)
    assert np.all((r[ok] > -1) & (r[ok] < 1))
    ref = frame.groupby("ts")["x"].rank(method="average")
    n = frame.groupby("ts")["x"].transform("count")
    np.testing.assert_allclose(r, ((ref - 0.5) / n * 2 - 1).to_numpy(), atol=1e-12)
    same_ts = ts.to_numpy()[:, None] == ts.to_numpy()[None, :]
    ri, rj = np.broadcast_arrays(r[:, None], r[None, :])
    less, equal = same_ts & (x[:, None] < x[None, :]), same_ts & (x[:, None] == x[None, :])
    assert np.all(ri[less] < rj[less]) and np.all(ri[equal] == rj[equal])  # strictly monotone in the value
    # a ts's ranks ignore every other ts
    first = frame["ts"] == frame["ts"].iloc[0]
    np.testing.assert_array_equal(cross_sectional_rank(frame[first], "x").to_numpy(), r[first.to_numpy()])


def test_direction_labels_dead_zone():
    r = np.array([0.0021, 0.002, -0.002, -0.0021, 0.0, np.nan, 0.5, -0.5])
    assert direction_labels(r, 0.002).tolist() == [2, 1, 1, 0, 1, -1, 2, 0]
    assert direction_labels(r, 0.001, band=0.0011).tolist() == [1, 1, 1, 1, 1, -1, 2, 0]
    assert direction_labels(r, 0.0).tolist() == [2, 2, 0, 0, 1, -1, 2, 0]
    assert direction_labels(r, 0.0).dtype == np.int8
    per_row = np.array([0.003, 0.001, 0.003, 0.001, 0, 0, 0, 0])
    assert direction_labels(r, per_row).tolist() == [1, 2, 1, 0, 1, -1, 2, 0]
    with pytest.raises(ValueError, match="round_trip_cost"):
        direction_labels(r, -0.001)
    with pytest.raises(ValueError, match="band"):
        direction_labels(r, 0.001, band=-1e-4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.floats(-0.2, 0.2), st.just(float("nan"))), max_size=30),
       st.floats(0, 0.01), st.floats(0, 0.01))
def test_direction_labels_symmetric(returns, cost, band):
    r = np.array(returns, dtype="float64")
    up, down = direction_labels(r, cost, band), direction_labels(-r, cost, band)
    swap = {2: 0, 0: 2, 1: 1, -1: -1}
    assert [swap[int(v)] for v in up] == down.tolist()
    assert np.array_equal(up == -1, np.isnan(r))
    assert np.all((up == 2) == (r > cost + band)) and np.all((up == 0) == (r < -(cost + band)))


# ---------------------------------------------------------------- multi-horizon returns


def _gappy_bars(seed: int, n_symbols: int = 4, periods: int = 40) -> pd.DataFrame:
    """Random bars with ~10% of rows missing, an adj_factor step and shuffled rows."""
    rng = np.random.default_rng(seed)
    bars = make_bars([f"{600000 + i}.SH" for i in range(n_symbols)], periods=periods, seed=seed)
    bars["adj_factor"] = np.where(bars["ts"] > bars["ts"].iloc[periods // 2], 1.25, 1.0)
    bars.loc[rng.random(len(bars)) < 0.05, "adj_factor"] = np.nan
    bars = bars[rng.random(len(bars)) > 0.1]
    return bars.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_multi_horizon_returns_equal_forward_returns(seed):
    bars = _gappy_bars(seed)
    out = multi_horizon_returns(bars, (10, 1, 5))
    assert list(out.columns) == ["symbol", "ts", "ret_1", "ret_5", "ret_10"]
    for h in (1, 5, 10):
        ref = forward_returns(bars, horizon=h, price="open", lag=1)
        assert (ref["symbol"].to_numpy() == out["symbol"].to_numpy()).all()
        assert (ref["ts"].to_numpy() == out["ts"].to_numpy()).all()
        np.testing.assert_array_equal(out[f"ret_{h}"].to_numpy(), ref["label"].to_numpy())  # bit-identical


# ---------------------------------------------------------------- triple barrier


def _barrier_case(name: str, overrides: dict[int, dict] | None = None, missing: tuple[int, ...] = ()) -> list:
    """Sessions 0..9. Closes 0..3 alternate by a log return of +-0.01 so sigma_3 = 0.01; t = 3 is the
    decision, the entry is open(4) = 100 and, with horizon 4 and widths 1, the barriers are 100 * (1 +- 0.02)."""
    ts = pd.bdate_range("2024-01-01", periods=10)
    rows = []
    for k, t in enumerate(ts):
        if k in missing:
            continue
        if k < 4:
            c = 100.0 * math.exp(0.01 * (k % 2))
            bar = dict(open=c, high=c, low=c, close=c)
        else:
            bar = dict(open=100.0, high=101.0, low=99.0, close=100.0)
        bar.update((overrides or {}).get(k, {}))
        rows.append(dict(symbol=name, ts=t, volume=1e5, **bar))
    return rows


def _barrier_bars() -> pd.DataFrame:
    cases = [
        _barrier_case("UP", {5: dict(high=102.5)}),
        _barrier_case("DN", {4: dict(low=97.5)}),
        _barrier_case("VB", {8: dict(open=100.5)}),
        _barrier_case("VH", {8: dict(open=100.05)}),
        _barrier_case("BU", {5: dict(high=102.5, low=97.5, close=101.0)}),
        _barrier_case("BD", {5: dict(high=102.5, low=97.5, close=99.0)}),
        _barrier_case("GP", {6: dict(open=104.0, high=105.0, low=97.0, close=99.0)}),
        _barrier_case("M1", missing=(4,)),
        _barrier_case("MV", {5: dict(high=102.5)}, missing=(8,)),
        _barrier_case("MP", {6: dict(high=102.5)}, missing=(5,)),
    ]
    return pd.DataFrame([row for case in cases for row in case])


def test_triple_barrier_hand_cases():
    out = triple_barrier_labels(_barrier_bars(), horizon=4, upper=1.0, lower=1.0, round_trip_cost=0.001,
                                vol_halflife=5)
    assert list(out.columns) == ["symbol", "ts", "direction", "barrier_return", "touch"]
    assert (out["direction"].dtype, out["barrier_return"].dtype, out["touch"].dtype) == (np.int8, np.float64,
                                                                                           np.int16)
    at3 = out[out["ts"] == pd.Timestamp("2024-01-04")].set_index("symbol")
    expected = {  # direction, barrier_return, touch (sessions after the entry session 4)
        "UP": (2, 0.02, 1), "DN": (0, -0.02, 0), "VB": (2, 0.005, 4), "VH": (1, 0.0005, 4),
        "BU": (2, 0.02, 1), "BD": (0, -0.02, 1), "GP": (2, 0.04, 2), "MP": (2, 0.02, 2),
    }
    for sym, (d, r, k) in expected.items():
        assert at3.loc[sym, "direction"] == d, sym
        assert at3.loc[sym, "barrier_return"] == pytest.approx(r, rel=1e-9), sym
        assert at3.loc[sym, "touch"] == k, sym
    for sym in ("M1", "MV"):  # missing entry bar / missing vertical-barrier bar
        assert (at3.loc[sym, "direction"], at3.loc[sym, "touch"]) == (-1, -1)
        assert np.isnan(at3.loc[sym, "barrier_return"])
    first = out[out["ts"] == out["ts"].min()]
    assert (first["direction"] == -1).all()  # no return yet -> no sigma
    tail = out[out["ts"] > pd.Timestamp("2024-01-09")]  # t + 1 + 4 past the data
    assert (tail["direction"] == -1).all() and tail["barrier_return"].isna().all()
    np.testing.assert_array_equal(out["direction"], direction_labels(out["barrier_return"].to_numpy(), 0.001))
    # wider barriers (3 sigma sqrt(h) = 6%) turn UP into a vertical-barrier hold
    wide = triple_barrier_labels(_barrier_bars(), horizon=4, upper=3.0, lower=3.0, round_trip_cost=0.001,
                                 vol_halflife=5).set_index(["symbol", "ts"])
    assert tuple(wide.loc[("UP", pd.Timestamp("2024-01-04"))]) == (1, 0.0, 4)


def test_ewm_vol_matches_pandas():
    bars = _gappy_bars(5, n_symbols=3, periods=60).sort_values(["symbol", "ts"])
    cal = np.sort(bars["ts"].unique())
    wide = bars.pivot(index="ts", columns="symbol", values="close").reindex(cal)
    got = _ewm_vol(wide.to_numpy(dtype="float64"), 7.0)
    for j, sym in enumerate(wide.columns):
        own = bars[bars["symbol"] == sym].set_index("ts")["close"]
        ref = np.sqrt((np.log(own).diff() ** 2).ewm(halflife=7, adjust=True).mean())
        np.testing.assert_allclose(got[:, j][wide[sym].notna().to_numpy()], ref.to_numpy(), rtol=1e-12)


def test_make_targets_triple_barrier_uses_cost_plus_band():
    bars = make_bars([f"{600000 + i}.SH" for i in range(5)], periods=50, seed=9)
    cfg = TargetConfig(horizons=[1, 3], direction="triple_barrier", round_trip_cost=0.002, band=0.003,
                       barrier_upper=1.0, barrier_lower=1.5, barrier_horizon=6, vol_halflife=10)
    out = make_targets(bars, cfg)
    tb = triple_barrier_labels(bars, horizon=6, upper=1.0, lower=1.5, round_trip_cost=0.005, vol_halflife=10)
    np.testing.assert_array_equal(out["direction"].to_numpy(), tb["direction"].to_numpy())
    assert set(out["direction"]) == {-1, 0, 1, 2}


# ---------------------------------------------------------------- validation


def test_config_and_input_validation():
    assert TargetConfig(horizons=[10, 1, 5, 5]).horizons == [1, 5, 10]
    for bad in (dict(horizons=[5, 10]), dict(horizons=[0, 1]), dict(round_trip_cost=-0.001), dict(band=-0.1),
                dict(band=float("nan")), dict(barrier_upper=0.0), dict(barrier_lower=-1.0), dict(barrier_horizon=0),
                dict(vol_halflife=0), dict(direction="up")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TargetConfig(**bad)
    with pytest.raises(ValueError):
        TargetConfig(horizon=[1])  # extra fields are forbidden
    bars = make_bars(periods=20)
    with pytest.raises(ValueError, match="lack column"):
        make_targets(bars.drop(columns="open"))
    with pytest.raises(ValueError, match="lack column.*high"):
        make_targets(bars.drop(columns="high"), TargetConfig(direction="triple_barrier"))
    make_targets(bars.drop(columns=["high", "low", "close"]))  # fixed targets need open only
    with pytest.raises(ValueError, match="duplicate"):
        make_targets(pd.concat([bars, bars.iloc[:1]]))
    with pytest.raises(ValueError, match="unknown market"):
        make_targets(bars, market="mars")
    with pytest.raises(ValueError, match="horizons"):
        multi_horizon_returns(bars, (0, 1))
    with pytest.raises(ValueError, match="barrier widths"):
        triple_barrier_labels(bars, upper=-1.0)
    with pytest.raises(TypeError):
        make_targets(bars, {"horizons": [1]})


def test_nothing_is_dropped():
    bars = _gappy_bars(2)
    index_board = make_bars(["000300.SH"], periods=40, seed=4)
    both = pd.concat([bars, index_board], ignore_index=True)
    out = make_targets(both, TargetConfig(direction="triple_barrier", barrier_horizon=5))
    assert len(out) == len(both) and (out["symbol"] == "000300.SH").sum() == 40
    assert out["direction"].isin([-1, 0, 1, 2]).all()


# ---------------------------------------------------------------- causality (mandatory)


def test_causality_multi_horizon_returns():
    bars = _gappy_bars(11)
    assert_causal(lambda b: multi_horizon_returns(b, (1, 5, 10)), bars, cutoffs=3, horizon_bars=11)
    with pytest.raises(AssertionError, match="look-ahead|rows"):  # the bound is tight: ret_10 reads t+11
        assert_causal(lambda b: multi_horizon_returns(b, (1, 5, 10)), bars, cutoffs=3, horizon_bars=10)


def test_causality_triple_barrier():
    bars = _gappy_bars(12, n_symbols=6)
    fn = lambda b: triple_barrier_labels(b, horizon=5, upper=1.0, lower=1.0, round_trip_cost=0.0015,  # noqa: E731
                                         vol_halflife=5)
    assert_causal(fn, bars, cutoffs=3, horizon_bars=6)
    with pytest.raises(AssertionError):
        assert_causal(fn, bars, cutoffs=3, horizon_bars=5)


def _sigma_frame(bars: pd.DataFrame) -> pd.DataFrame:
    """sigma_t exactly as triple_barrier_labels computes it, one row per bar."""
    panel = _Panel(bars, ("symbol", "ts", "close"))
    return panel.frame().assign(sigma=_ewm_vol(panel.wide("close"), 5.0)[panel.pos, panel.code])


def test_causality_barrier_volatility_uses_bars_up_to_t():
    """The barrier width must be known at the decision: the labels' t+1+h allowance would hide a peek at t+1."""
    bars = _gappy_bars(15, n_symbols=4)
    assert _sigma_frame(bars)["sigma"].notna().mean() > 0.9
    assert_causal(_sigma_frame, bars, cutoffs=4, horizon_bars=0)


@pytest.mark.parametrize("cfg", [TargetConfig(), TargetConfig(horizons=[1, 3], direction="triple_barrier",
                                                              barrier_horizon=8, band=0.001, vol_halflife=5)])
def test_causality_make_targets(cfg):
    bars = _gappy_bars(13, n_symbols=5)
    horizon = max(max(cfg.horizons), cfg.barrier_horizon if cfg.direction == "triple_barrier" else 0)
    assert_causal(lambda b: make_targets(b, cfg), bars, cutoffs=3, horizon_bars=1 + horizon)


def test_causality_direction_and_rank_at_horizon_one():
    """direction (fixed) and rank_1 read only up to t + 2, like ret_1 (ranks use other symbols' ret_1 at t)."""
    bars = _gappy_bars(14, n_symbols=6)
    cfg = TargetConfig(horizons=[1], round_trip_cost=0.0005)
    assert_causal(lambda b: make_targets(b, cfg), bars, cutoffs=4, horizon_bars=2)
    assert_causal(lambda b: (lambda m: m.assign(r=cross_sectional_rank(m, "ret_1")))(multi_horizon_returns(b, (1,))),
                  bars, cutoffs=4, horizon_bars=2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.one_of(st.just(float("nan")), st.integers(-3, 3).map(float),
                                                         st.floats(-2, 2))), min_size=1, max_size=60))
def test_group_ranks_equal_pandas_average_ranks_per_column(rows):
    """Every column ranked within its group as pandas' average rank, scaled (rank - 0.5) / n * 2 - 1."""
    from quantlm.features.targets import group_ranks

    group = np.array([g for g, _ in rows])
    col = np.array([v for _, v in rows])
    values = np.stack([col, -col, np.where(np.isnan(col), 1.0, np.nan)], axis=1)
    frame = pd.DataFrame(values).assign(g=group)
    grouped = frame.groupby("g")
    expected = ((grouped.rank(method="average") - 0.5) / grouped.transform("count") * 2 - 1).to_numpy()
    np.testing.assert_allclose(group_ranks(group, values), expected, atol=1e-12, equal_nan=True)
