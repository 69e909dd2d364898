"""The HTML report and the output folder (metrics.json, equity.csv, trades.csv, report.html)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantlm.backtest import outputs as outputs_module
from quantlm.backtest.gates import evaluate_gates
from quantlm.backtest.metrics import compute_metrics, ic_series
from quantlm.backtest.outputs import equity_table, write_outputs
from quantlm.backtest.report import monthly_returns, render_report
from quantlm.testing import synthetic_result

ROOT = Path(__file__).resolve().parents[2]


def _inputs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    idx = pd.bdate_range("2023-01-02", periods=n)
    res = synthetic_result(pd.Series(rng.normal(8e-4, 0.01, n), index=idx),
                           benchmark_returns=pd.Series(rng.normal(2e-4, 0.01, n), index=idx))
    rows = []
    for t in idx:
        s = rng.normal(size=20)
        lab = 0.003 * s + rng.normal(0, 0.01, 20)
        rows += [(f"S{i}", t, s[i], lab[i]) for i in range(20)]
    df = pd.DataFrame(rows, columns=["symbol", "ts", "score", "label"])
    return res, df[["symbol", "ts", "score"]], df[["symbol", "ts", "label"]]


@pytest.fixture(scope="module")
def page():
    res, scores, labels = _inputs()
    m = compute_metrics(res, scores, labels)
    base = synthetic_result(res.benchmark.pct_change().fillna(0.0), benchmark_returns=res.benchmark.pct_change())
    return render_report(res, m, evaluate_gates(m), {"benchmark": (base, compute_metrics(base))},
                         ic_series(scores, labels), title="unit <test>")


def test_report_is_self_contained_and_complete(page):
    assert page.startswith("<!DOCTYPE html>") and "unit &lt;test&gt;" in page
    for section in ("Gates", "Equity", "Returns by month", "Prediction quality", "Trading activity",
                    "Against the baselines", "fig-equity", "fig-drawdown", "fig-monthly", "fig-ic", "fig-baselines"):
        assert section in page, section
    # plotly.js is inlined once (works offline); no other script loads anything
    head, rest = page.split("<script type='text/javascript'>", 1)
    after_bundle = rest.split("</script>", 1)[1]
    assert len(rest) > 3_000_000 and "src=" not in head + after_bundle and "http" not in head + after_bundle
    assert after_bundle.count(">PASS<") + after_bundle.count(">FAIL<") == 6


def test_report_is_deterministic(page):
    res, scores, labels = _inputs()
    m = compute_metrics(res, scores, labels)
    base = synthetic_result(res.benchmark.pct_change().fillna(0.0), benchmark_returns=res.benchmark.pct_change())
    again = render_report(res, m, evaluate_gates(m), {"benchmark": (base, compute_metrics(base))},
                          ic_series(scores, labels), title="unit <test>")
    assert again == page


def test_monthly_returns_compound():
    idx = pd.to_datetime(["2024-01-30", "2024-01-31", "2024-02-01"])
    table = monthly_returns(pd.Series([0.1, 0.1, -0.05], index=idx))
    assert table.loc[2024, 1] == pytest.approx(0.21) and table.loc[2024, 2] == pytest.approx(-0.05)
    assert np.isnan(table.loc[2024, 3])


def test_write_outputs(tmp_path):
    res, scores, labels = _inputs(n=60)
    out = tmp_path / "run"
    written = write_outputs(res, out, scores=scores, labels=labels, gates={"sharpe": 0.5, "latency_p99_ms": None},
                            baselines={"bench": synthetic_result(res.returns() * 0.5)})
    assert sorted(p.name for p in out.iterdir()) == ["equity.csv", "metrics.json", "report.html", "trades.csv"]
    data = json.loads((out / "metrics.json").read_text())  # strict JSON: NaN written as null
    assert set(data) >= {"metrics", "gates", "gates_passed", "config", "runs"}
    assert "latency_p99_ms" not in data["gates"] and data["gates"]["sharpe"]["threshold"] == 0.5
    assert data["runs"]["bench"]["metrics"]["ic"] is None
    assert data["config"]["market"] == "cn"
    eq = pd.read_csv(out / "equity.csv")
    assert list(eq.columns) == ["ts", "equity", "cash", "benchmark", "excess", "drawdown", "exposure", "turnover", "costs"]
    assert (eq["drawdown"] <= 0).all() and len(eq) == 60
    trades = pd.read_csv(out / "trades.csv")
    assert (trades["status"] == "rejected").sum() == 6
    assert written["paths"]["report"] == out / "report.html"
    assert not list(tmp_path.glob(".run.tmp-*"))


def test_equity_table_excess():
    idx = pd.bdate_range("2024-01-01", periods=3)
    res = synthetic_result(pd.Series([0.1, 0.0, 0.0], index=idx), benchmark_returns=pd.Series([0.0, 0.1, 0.0], index=idx))
    eq = equity_table(res)
    # strategy grew 10% on day 1; the benchmark's first session counts as 0, then +10%
    np.testing.assert_allclose(eq["excess"].to_numpy(), [0.1, 0.0, 0.0], atol=1e-12)


def test_write_outputs_failure_leaves_nothing(tmp_path, monkeypatch):
    res, scores, labels = _inputs(n=30)
    out = tmp_path / "run"

    def boom(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr("quantlm.backtest.report.render_report", boom)
    with pytest.raises(RuntimeError, match="render failed"):
        write_outputs(res, out, scores=scores, labels=labels)
    assert not out.exists() and not list(tmp_path.iterdir())
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(RuntimeError):
        write_outputs(res, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert outputs_module.to_jsonable({"a": float("nan"), "t": pd.Timestamp("2024-01-02")}) == {
        "a": None, "t": "2024-01-02T00:00:00"}


def _screenshot_module():
    spec = importlib.util.spec_from_file_location("screenshot_report", ROOT / "scripts" / "screenshot_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["screenshot_report"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.browser
def test_report_renders_in_chromium(tmp_path, page):
    shot = _screenshot_module()
    if shot.find_chromium() is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium); report rendering not checked")
    report = tmp_path / "report.html"
    report.write_text(page, encoding="utf-8")
    png = shot.screenshot(report, tmp_path / "report.png", width=1400, height=2400)
    from PIL import Image

    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert image.shape[:2] == (2400, 1400)
    # not blank: many distinct colours, and plotted lines (the strategy's blue) are present
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 200
    blue = (np.abs(image - np.array([0x2C, 0x7F, 0xB8])).sum(axis=2) < 40).sum()
    assert blue > 2000
