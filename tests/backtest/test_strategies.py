"""Strategies (Qlib TopkDropout semantics, thresholds, target weights) and the order generator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlm.backtest.portfolio import Portfolio
from quantlm.backtest.strategies import TargetWeights, Threshold, TopkDropout, orders_from_targets


def book(cash=1000.0, **held):
    pf = Portfolio(cash=cash, shares={s: float(q) for s, q in held.items()},
                   last_price={s: 10.0 for s in "ABCDEFGH"}, held_days={s: 5 for s in held})
    return pf


def scores(**kw):
    return pd.Series(kw, dtype="float64")


def test_topk_fills_an_empty_book_with_the_best():
    t = TopkDropout(topk=3, n_drop=1, risk_degree=0.9).targets(scores(A=1, B=5, C=3, D=4, E=2), book(cash=900))
    assert list(t.index) == ["B", "D", "C"]  # best first
    assert np.allclose(t.to_numpy(), 900 * 0.9 / 3 / 900)


def test_topk_drops_the_worst_held_and_buys_the_best_new():
    pf = book(cash=0.0, A=10, B=10, C=10)
    t = TopkDropout(topk=3, n_drop=1, risk_degree=1.0).targets(scores(A=5, B=4, C=1, D=9, E=2), pf)
    assert t["C"] == 0.0 and list(t.index) == ["C", "D"]
    assert t["D"] * pf.equity() == pytest.approx(100.0)  # the sale's proceeds at the last price
    # a new name that ranks below every held one is not bought (Qlib: sell high, buy low filtered)
    t = TopkDropout(topk=3, n_drop=1).targets(scores(A=5, B=4, C=3, D=1), pf)
    assert t.empty


def test_topk_hold_thresh_and_unscored_holdings():
    pf = book(cash=0.0, A=10, B=10, C=10)
    pf.held_days["C"] = 0
    t = TopkDropout(topk=3, n_drop=1, hold_thresh=1).targets(scores(A=5, B=4, C=1, D=9), pf)
    assert "C" not in t.index and t["D"] == 0.0  # too fresh to sell; Qlib still sizes the buy (no cash here)
    t = TopkDropout(topk=3, n_drop=1).targets(scores(A=5, C=1, D=9), pf.__class__(
        cash=0.0, shares={"A": 10.0, "B": 10.0, "C": 10.0}, last_price=pf.last_price, held_days={"A": 3, "B": 3, "C": 3}))
    assert t.get("B") == 0.0  # held without a score ranks last


def test_threshold_long_short_flat_and_keep():
    pf = book(cash=1000.0, A=10)
    t = Threshold(long_threshold=0.5, short_threshold=-0.5, allow_short=True, sleeve=0.5).targets(
        scores(A=1.0, B=-1.0, C=0.0, D=np.nan), pf)
    assert t.to_dict() == {"B": -0.5}  # A stays long (kept), C stays flat, D has no signal
    t = Threshold(long_threshold=0.5, short_threshold=-0.5, allow_short=False, sleeve=0.5).targets(
        scores(A=0.0, B=-1.0), pf)
    assert t.to_dict() == {"A": 0.0}


def test_target_weights_exit_symbols_without_weight():
    pf = book(cash=0.0, A=10, B=10)
    t = TargetWeights().targets(scores(A=0.3, C=0.2), pf)
    assert t.to_dict() == {"A": 0.3, "B": 0.0, "C": 0.2}


def test_orders_from_targets():
    pf = book(cash=800.0, A=100, B=-10)
    pf.last_price.update(A=2.0, B=10.0)
    # equity = 800 + 200 - 100 = 900
    o = orders_from_targets(pd.Series({"A": -0.5, "B": 0.2, "C": 0.1, "D": np.nan}), pf, sell_step=1.0)
    assert o.values.tolist() == [
        ["A", "sell", 100.0, 0.0], ["A", "short", 0.0, pytest.approx(450.0)],
        ["B", "cover", 10.0, 0.0], ["B", "buy", 0.0, pytest.approx(180.0)], ["C", "buy", 0.0, pytest.approx(90.0)]]
    o = orders_from_targets(pd.Series({"A": 0.1}), pf, sell_step=100.0)
    assert o.empty  # reduce by 55 shares: less than one 100-share step
    o = orders_from_targets(pd.Series({"A": 0.05}), pf, sell_step=1.0)
    assert o.values.tolist() == [["A", "sell", 77.0, 0.0]]  # 200 - 45 = 155 CNY = 77.5 shares -> 77
