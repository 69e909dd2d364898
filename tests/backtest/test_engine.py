"""Engine: numba kernel == Python reference path, no look-ahead, result contract, signals files, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from quantlm.backtest.engine import BacktestConfig, BacktestConfigError, run_backtest
from quantlm.backtest.signals import read_signals
from quantlm.data.schema import DataValidationError
from tests.conftest import make_bars

SYMBOLS = [f"{c:06d}.SZ" for c in range(1, 15)] + ["300001.SZ", "300002.SZ", "688001.SH", "600001.SH"]


def rough_market(seed=1, periods=70):
    """Random bars with limit-hitting opens, suspensions, an ST stock and a fresh IPO."""
    bars = make_bars(SYMBOLS, start="2023-07-03", periods=periods, seed=seed)
    rng = np.random.default_rng(seed)
    jump = rng.random(len(bars)) < 0.05
    bars.loc[jump, "open"] *= rng.choice([0.88, 1.12], jump.sum())
    bars["high"] = np.maximum(bars["high"], bars["open"])
    bars["low"] = np.minimum(bars["low"], bars["open"])
    bars = bars.drop(index=rng.choice(len(bars), 50, replace=False)).reset_index(drop=True)
    sig = bars[["symbol", "ts"]].copy()
    sig["score"] = rng.normal(size=len(sig))
    sig["weight"] = rng.uniform(-0.08, 0.12, len(sig))
    flags = pd.DataFrame({"symbol": ["600001.SH"], "flag": ["st"], "start": [pd.Timestamp("2023-01-01")], "end": [pd.NaT]})
    inst = pd.DataFrame({"symbol": ["300002.SZ"], "board": ["chinext"], "list_date": [pd.Timestamp("2023-07-20")]})
    return bars, sig, flags, inst


CONFIGS = [
    dict(topk=6, n_drop=2),
    dict(topk=4, n_drop=1, hold_thresh=3, fill="close", participation=0.002),
    dict(market="us", strategy="threshold", long_threshold=0.3, short_threshold=-0.3),
    dict(market="us", strategy="weights", leverage=1.6, fill="vwap"),
    dict(strategy="weights"),
    dict(market="crypto", strategy="threshold", short_threshold=-0.5, participation=0.0005),
    dict(topk=5, n_drop=2, costs=False, start="2023-07-20", end="2023-09-15"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_numba_kernel_matches_python_reference(cfg):
    bars, sig, flags, inst = rough_market()
    config = BacktestConfig(**cfg)
    a = run_backtest(sig, bars, config, instruments=inst, flags=flags, engine="numba")
    b = run_backtest(sig, bars, config, instruments=inst, flags=flags, engine="python")
    np.testing.assert_allclose(a.equity.to_numpy(), b.equity.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(a.cash.to_numpy(), b.cash.to_numpy(), rtol=1e-9, atol=1e-6)
    assert len(a.trades) == len(b.trades) > 0
    for col in ("ts", "symbol", "side", "status", "reason"):
        assert a.trades[col].tolist() == b.trades[col].tolist(), col
    for col in ("shares_requested", "shares_filled", "value", "total_cost", "stamp_duty"):
        np.testing.assert_allclose(a.trades[col].to_numpy(), b.trades[col].to_numpy(), rtol=1e-9, atol=1e-9)
    pd.testing.assert_frame_equal(a.positions, b.positions, check_exact=False, rtol=1e-9)


def test_rough_market_exercises_the_rules():
    bars, sig, flags, inst = rough_market()
    r = run_backtest(sig, bars, BacktestConfig(topk=6, n_drop=2), instruments=inst, flags=flags)
    reasons = set(r.trades["reason"])
    assert {"", "suspended", "limit_up"} <= reasons
    assert (r.cash >= -1e-6).all() and (r.exposure <= 1.0 + 1e-9).all()


def test_no_look_ahead_future_bars_do_not_change_the_past():
    bars, sig, flags, inst = rough_market()
    k = pd.Timestamp("2023-08-15")
    base = run_backtest(sig, bars, BacktestConfig(topk=6, n_drop=2), instruments=inst, flags=flags)
    future = bars["ts"] > k
    moved = bars.copy()
    rng = np.random.default_rng(7)
    f = np.exp(rng.normal(0, 0.1, future.sum()))
    for col in ("open", "high", "low", "close"):
        moved.loc[future, col] *= f
    moved.loc[future, "volume"] *= 3
    other = run_backtest(sig, moved, BacktestConfig(topk=6, n_drop=2), instruments=inst, flags=flags)
    pd.testing.assert_series_equal(base.equity[:k], other.equity[:k])
    pd.testing.assert_frame_equal(base.trades[base.trades["ts"] <= k], other.trades[other.trades["ts"] <= k])
    assert not base.equity[k:].equals(other.equity[k:])


def test_result_contract_and_benchmark():
    bars = make_bars(["600000.SH", "000001.SZ", "000300.SH"], periods=30)
    sig = bars[bars["symbol"] != "000300.SH"][["symbol", "ts"]].assign(score=1.0)
    r = run_backtest(sig, bars, BacktestConfig(topk=2, n_drop=0, benchmark="000300.SH"))
    assert list(r.trades.columns[:17]) == ["ts", "symbol", "side", "shares_requested", "shares_filled", "price", "value",
                                           "commission", "stamp_duty", "transfer_fee", "sec_fee", "slippage", "impact",
                                           "borrow_fee", "total_cost", "status", "reason"]
    assert list(r.positions.columns) == ["ts", "symbol", "shares", "value", "weight"]
    assert set(r.positions["symbol"]) == {"600000.SH", "000001.SZ"}  # the benchmark is not traded
    close = bars[bars["symbol"] == "000300.SH"].set_index("ts")["close"]
    np.testing.assert_allclose(r.benchmark.to_numpy(), close.reindex(r.equity.index).to_numpy())
    rets = r.returns()
    assert rets.iloc[0] == 0.0 and rets.iloc[2] == pytest.approx(r.equity.iloc[2] / r.equity.iloc[1] - 1)
    w = r.positions.groupby("ts")["weight"].sum().reindex(r.equity.index, fill_value=0.0)
    np.testing.assert_allclose(w.to_numpy(), r.exposure.to_numpy(), rtol=1e-12)
    traded = r.trades.groupby("ts")["value"].sum().reindex(r.equity.index, fill_value=0.0)
    np.testing.assert_allclose(r.turnover.iloc[1:].to_numpy(), (traded / r.equity.shift(1)).iloc[1:].to_numpy())
    np.testing.assert_allclose(r.costs.sum(), r.trades["total_cost"].sum())


def test_config_errors():
    bars = make_bars(periods=5)
    sig = bars[["symbol", "ts"]].assign(score=1.0)
    for bad in (dict(strategy="magic"), dict(fill="noon"), dict(cash=0), dict(market="mars"), dict(topk=0)):
        with pytest.raises(BacktestConfigError):
            run_backtest(sig, bars, BacktestConfig(**bad))
    with pytest.raises(BacktestConfigError, match="no symbol"):
        run_backtest(sig.assign(symbol="X"), bars, BacktestConfig())
    with pytest.raises(BacktestConfigError, match="weight"):
        run_backtest(sig, bars, BacktestConfig(strategy="weights"))


def test_read_signals(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("instrument,datetime,score\n000001.SZ,2023-01-03,0.5\n600000.SH,2023-01-03,\n")
    df = read_signals(p)
    assert df.to_dict("list") == {"symbol": ["000001.SZ"], "ts": [pd.Timestamp("2023-01-03")], "score": [0.5]}
    df.to_parquet(tmp_path / "s.parquet")
    assert read_signals(tmp_path / "s.parquet").equals(df)
    cases = {
        "symbol,ts\nA,2023-01-03\n": ("score", None),
        "symbol,ts,score\nA,2023-01-03,1\nB,notadate,2\n": ("ts", 2),
        "symbol,ts,score\nA,2023-01-03,1\nB,2023-01-03,abc\n": ("score", 2),
        "symbol,ts,score\nA,2023-01-03,1\nA,2023-01-03,2\n": ("ts", 2),
        "symbol,ts,score\n,2023-01-03,1\n": ("symbol", 1),
    }
    for text, (column, row) in cases.items():
        p.write_text(text)
        with pytest.raises(DataValidationError) as e:
            read_signals(p)
        assert e.value.column == column and e.value.row == row and str(p) in str(e.value)


@pytest.fixture
def cli_store(tmp_path):
    from quantlm.data.store import Store

    bars = make_bars(["600000.SH", "000001.SZ", "300001.SZ", "000300.SH"], periods=40)
    store = Store(tmp_path / "store")
    store.write_bars(bars, market="cn")
    with store.transaction() as tx:
        tx.set_meta("benchmark", "000300.SH")
        tx.set_meta("market", "cn")
    sig = bars[bars["symbol"] != "000300.SH"][["symbol", "ts"]].assign(score=np.arange(120) % 7 - 3.0)
    sig.to_csv(tmp_path / "signals.csv", index=False)
    return tmp_path


def test_cli_backtest_writes_outputs(cli_store):
    from quantlm.cli import app

    out = cli_store / "out"
    res = CliRunner().invoke(app, ["backtest", "--signals", str(cli_store / "signals.csv"), "--store",
                                   str(cli_store / "store"), "--topk", "2", "--n-drop", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert {"metrics.json", "equity.csv", "trades.csv", "report.html"} <= {p.name for p in out.iterdir()}
    eq = pd.read_csv(out / "equity.csv")
    assert len(eq) == 40 and eq["benchmark"].notna().all()
    assert "status" in pd.read_csv(out / "trades.csv").columns
    assert json.loads((out / "metrics.json").read_text())["config"]["benchmark"] == "000300.SH"


def test_cli_backtest_bad_signals_fail_cleanly(cli_store):
    from quantlm.cli import app

    bad = cli_store / "bad.csv"
    bad.write_text("symbol,ts,score\n600000.SH,2023-01-03,1\n600000.SH,2023-01-04,oops\n")
    out = cli_store / "out_bad"
    res = CliRunner().invoke(app, ["backtest", "--signals", str(bad), "--store", str(cli_store / "store"),
                                   "--out", str(out)])
    assert res.exit_code == 2
    assert "row 2" in res.output and "score" in res.output
    assert not out.exists()
    res = CliRunner().invoke(app, ["backtest", "--signals", str(cli_store / "signals.csv"), "--store",
                                   str(cli_store / "store"), "--fill", "noon", "--out", str(out)])
    assert res.exit_code == 2 and "fill" in res.output and not out.exists()
