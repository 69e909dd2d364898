"""Output folder and prediction metrics: weights-only signals, intraday equity.csv, session mapping of
scores for IC, labels that follow the fill price."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from quantlm.backtest.metrics import compute_metrics, directional_accuracy, ic_series
from quantlm.backtest.outputs import NO_SCORE_NOTE, equity_table, write_outputs
from quantlm.features.labels import evaluation_labels, fill_vwap
from quantlm.testing import assert_causal, synthetic_result
from tests.conftest import make_bars

SYMBOLS = [f"{c:06d}.SZ" for c in range(1, 11)]


def _result_on(bars: pd.DataFrame, seed: int = 0):
    idx = pd.DatetimeIndex(sorted(bars["ts"].unique()))
    rng = np.random.default_rng(seed)
    return synthetic_result(pd.Series(rng.normal(5e-4, 0.01, len(idx)), index=idx))


# ------------------------------------------------------------------------------- weights-only signals
def test_weights_only_signals_skip_prediction_metrics_with_a_note(tmp_path):
    bars = make_bars(SYMBOLS, periods=30)
    weights = bars[["symbol", "ts"]].assign(weight=0.1)
    written = write_outputs(_result_on(bars), tmp_path / "out", scores=weights, bars=bars, report=False)
    assert written["notes"] == [NO_SCORE_NOTE]
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert data["notes"] == [NO_SCORE_NOTE]
    for key in ("ic", "rank_ic", "directional_accuracy"):
        assert data["metrics"][key] is None
    assert data["metrics"]["sharpe"] is not None
    # with a score column there is no note
    written = write_outputs(_result_on(bars), tmp_path / "out2", scores=weights.assign(score=1.0), bars=bars,
                            report=False)
    assert written["notes"] == [] and "notes" not in json.loads((tmp_path / "out2" / "metrics.json").read_text())


@pytest.fixture
def weights_store(tmp_path):
    from quantlm.data.store import Store

    bars = make_bars(["600000.SH", "000001.SZ", "300001.SZ"], periods=30)
    store = Store(tmp_path / "store")
    store.write_bars(bars, market="cn")
    with store.transaction() as tx:
        tx.set_meta("market", "cn")
    bars[["symbol", "ts"]].assign(weight=0.3).to_csv(tmp_path / "weights.csv", index=False)
    return tmp_path


def test_cli_backtest_weights_file(weights_store):
    from typer.testing import CliRunner

    from quantlm.cli import app

    out = weights_store / "out"
    res = CliRunner().invoke(app, ["backtest", "--signals", str(weights_store / "weights.csv"), "--store",
                                   str(weights_store / "store"), "--strategy", "weights", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert NO_SCORE_NOTE in res.output and "Traceback" not in res.output
    assert json.loads((out / "metrics.json").read_text())["notes"] == [NO_SCORE_NOTE]


# ------------------------------------------------------------------------------------- equity.csv
def test_equity_csv_keeps_intraday_times(tmp_path):
    idx = pd.DatetimeIndex(["2024-01-02 10:30", "2024-01-02 11:30", "2024-01-02 14:00", "2024-01-03 10:30"])
    res = synthetic_result(pd.Series([0.01, 0.0, -0.01, 0.02], index=idx))
    assert list(equity_table(res)["ts"]) == list(idx)
    write_outputs(res, tmp_path / "intraday", report=False)
    ts = pd.read_csv(tmp_path / "intraday" / "equity.csv", dtype={"ts": str})["ts"].tolist()
    assert ts == ["2024-01-02 10:30:00", "2024-01-02 11:30:00", "2024-01-02 14:00:00", "2024-01-03 10:30:00"]
    # daily sessions stay plain dates; one non-midnight stamp is enough to keep times for all
    days = pd.bdate_range("2024-01-02", periods=3)
    write_outputs(synthetic_result(pd.Series([0.01, 0.0, 0.01], index=days)), tmp_path / "daily", report=False)
    ts = pd.read_csv(tmp_path / "daily" / "equity.csv", dtype={"ts": str})["ts"].tolist()
    assert ts == ["2024-01-02", "2024-01-03", "2024-01-04"]
    mixed = pd.DatetimeIndex(["2024-01-02 00:00", "2024-01-02 13:00"])
    write_outputs(synthetic_result(pd.Series([0.01, 0.0], index=mixed)), tmp_path / "mixed", report=False)
    ts = pd.read_csv(tmp_path / "mixed" / "equity.csv", dtype={"ts": str})["ts"].tolist()
    assert ts == ["2024-01-02 00:00:00", "2024-01-02 13:00:00"]


# ---------------------------------------------------------------- scores mapped to sessions as the engine does
def _scores(bars: pd.DataFrame, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = evaluation_labels(bars)
    return labels.assign(score=labels["label"].fillna(0.0) + rng.normal(0, 0.02, len(labels)))[["symbol", "ts", "score"]]


def test_scores_stamped_at_the_close_count_for_that_session():
    bars = make_bars(SYMBOLS, periods=40)
    labels = evaluation_labels(bars)
    midnight = _scores(bars)
    at_close = midnight.assign(ts=midnight["ts"] + pd.Timedelta(hours=15))  # the 15:00 decision cut-off
    a, b = ic_series(midnight, labels), ic_series(at_close, labels)
    assert len(a) > 30 and a["rank_ic"].mean() > 0.3
    pd.testing.assert_frame_equal(a, b)
    assert directional_accuracy(midnight, labels) == directional_accuracy(at_close, labels) > 0.5
    res = _result_on(bars)
    ma, mb = compute_metrics(res, midnight, labels), compute_metrics(res, at_close, labels)
    for key in ("ic", "rank_ic", "icir", "rank_icir", "directional_accuracy"):
        assert np.isfinite(ma[key]) and ma[key] == mb[key], key


def test_scores_at_close_give_the_same_backtest_and_ic():
    from quantlm.backtest.engine import BacktestConfig, run_backtest

    bars = make_bars(SYMBOLS, periods=40)
    midnight = _scores(bars)
    at_close = midnight.assign(ts=midnight["ts"] + pd.Timedelta(hours=15))
    config = BacktestConfig(topk=3, n_drop=1)
    a, b = run_backtest(midnight, bars, config), run_backtest(at_close, bars, config)
    pd.testing.assert_series_equal(a.equity, b.equity)
    labels = evaluation_labels(bars)
    ma, mb = compute_metrics(a, midnight, labels), compute_metrics(b, at_close, labels)
    assert np.isfinite(ma["rank_ic"]) and ma["ic"] == mb["ic"] and ma["rank_ic"] == mb["rank_ic"]


def test_latest_stamp_of_a_session_wins_and_stamps_past_the_data_are_dropped():
    bars = make_bars(SYMBOLS, periods=10)
    labels = evaluation_labels(bars)
    day = pd.Timestamp(sorted(bars["ts"].unique())[2])
    early = pd.DataFrame({"symbol": SYMBOLS, "ts": day, "score": np.arange(10.0)})
    late = early.assign(ts=day + pd.Timedelta(hours=15), score=-np.arange(10.0))
    ics = ic_series(pd.concat([early, late]), labels)
    ref = ic_series(late, labels)
    pd.testing.assert_frame_equal(ics, ref)
    last = pd.Timestamp(bars["ts"].max())
    beyond = early.assign(ts=last + pd.Timedelta(days=3))  # after the data: no session to give it
    assert len(ic_series(beyond, labels)) == 0


# --------------------------------------------------------------------------- labels follow the fill
def _hand_bars() -> pd.DataFrame:
    ts = pd.bdate_range("2024-01-02", periods=5)
    return pd.DataFrame({
        "symbol": "A", "ts": ts,
        "open": [10.0, 11.0, 12.0, 13.0, 14.0], "high": [12.0, 13.0, 14.0, 15.0, 16.0],
        "low": [9.0, 10.0, 11.0, 12.0, 13.0], "close": [11.0, 12.0, 12.5, 14.0, 15.0],
        "volume": [100.0, 100.0, 0.0, 100.0, 100.0], "amount": [1050.0, np.nan, 1250.0, 1380.0, 1450.0]})


def test_labels_follow_the_fill_price():
    bars = _hand_bars()
    o, c = bars["open"].to_numpy(), bars["close"].to_numpy()
    vw = np.array([10.5, (11 + 13 + 10 + 12) / 4, (12 + 14 + 11 + 12.5) / 4, 13.8, 14.5])  # no amount / no volume -> OHLC/4
    np.testing.assert_allclose(fill_vwap(bars), vw)
    expected = {"open": o[2:] / o[1:-1] - 1, "close": c[2:] / c[1:-1] - 1, "vwap": vw[2:] / vw[1:-1] - 1}
    for fill, want in expected.items():
        got = evaluation_labels(bars, fill)["label"].to_numpy()
        np.testing.assert_allclose(got[:3], want, err_msg=fill)
        assert np.isnan(got[3:]).all()
    no_amount = bars.drop(columns="amount")
    np.testing.assert_allclose(fill_vwap(no_amount), (bars["open"] + bars["high"] + bars["low"] + bars["close"]) / 4)
    with pytest.raises(ValueError, match="fill"):
        evaluation_labels(bars, "noon")


@pytest.mark.parametrize("fill", ["open", "close", "vwap"])
def test_fill_labels_use_adjusted_prices(fill):
    bars = _hand_bars()
    doubled = bars.assign(**{k: bars[k] * np.where(bars.index >= 2, 0.5, 1.0) for k in ("open", "high", "low", "close")},
                          amount=bars["amount"] * np.where(bars.index >= 2, 0.5, 1.0),
                          adj_factor=np.where(bars.index >= 2, 2.0, 1.0))  # a 2-for-1 split before session 2
    np.testing.assert_allclose(evaluation_labels(doubled, fill)["label"], evaluation_labels(bars, fill)["label"])


@pytest.mark.parametrize("fill", ["open", "close", "vwap"])
def test_fill_labels_are_causal(fill):
    assert_causal(lambda b: evaluation_labels(b, fill), make_bars(SYMBOLS[:4], periods=30), horizon_bars=2)


def test_write_outputs_labels_follow_the_config_fill(tmp_path):
    bars = make_bars(SYMBOLS, periods=40)
    close_labels = evaluation_labels(bars, "close")
    scores = close_labels.dropna().rename(columns={"label": "score"})  # knows the close-to-close return
    res = _result_on(bars)
    res.config.fill = "close"
    written = write_outputs(res, tmp_path / "close", scores=scores, bars=bars, report=False)
    assert written["metrics"]["ic"] == pytest.approx(1.0)
    res.config.fill = "open"
    written = write_outputs(res, tmp_path / "open", scores=scores, bars=bars, report=False)
    assert written["metrics"]["ic"] < 0.99
    assert written["metrics"]["ic"] == pytest.approx(ic_series(scores, evaluation_labels(bars, "open"))["ic"].mean())
