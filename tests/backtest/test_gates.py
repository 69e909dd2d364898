"""Gates: defaults, directions, missing metrics, YAML loading and errors."""

from __future__ import annotations

import pytest

from quantlm.backtest.gates import GateConfigError, Gates, all_passed, evaluate_gates

GOOD = {"annual_excess_return": 0.2, "max_drawdown": -0.05, "max_consecutive_losing_days": 3.0, "sharpe": 2.5,
        "directional_accuracy": 0.7, "latency_p99_ms": 1.2}


def test_defaults_pass_and_fail():
    table = evaluate_gates(GOOD)
    assert set(table) == set(GOOD) and all_passed(table)
    bad = dict(GOOD, max_drawdown=-0.09, max_consecutive_losing_days=4.0)
    table = evaluate_gates(bad)
    assert not table["max_drawdown"]["passed"] and not table["max_consecutive_losing_days"]["passed"]
    assert table["max_drawdown"] == {"value": -0.09, "threshold": -0.08, "op": ">=", "passed": False}
    assert table["sharpe"]["passed"]


def test_missing_metric_fails_with_none():
    table = evaluate_gates({k: v for k, v in GOOD.items() if k != "latency_p99_ms"} | {"sharpe": float("nan")})
    assert table["latency_p99_ms"] == {"value": None, "threshold": 5.0, "op": "<=", "passed": False}
    assert table["sharpe"]["value"] is None and not table["sharpe"]["passed"]


def test_yaml_and_unknown_keys(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text("gates:\n  sharpe: 1.0\n  latency_p99_ms: null\n  rank_ic: 0.03\n")
    g = Gates.from_yaml(path)
    assert g.sharpe == 1.0 and "latency_p99_ms" not in g.active() and g.active()["rank_ic"] == 0.03
    path.write_text("sharp: 1.0\n")
    with pytest.raises(GateConfigError, match="sharp: unknown gate"):
        Gates.from_yaml(path)
    path.write_text("sharpe: high\n")
    with pytest.raises(GateConfigError, match="sharpe"):
        Gates.from_yaml(path)
    with pytest.raises(FileNotFoundError):
        Gates.from_yaml(tmp_path / "nope.yaml")
    assert getattr(GateConfigError("x"), "user_facing", False)
