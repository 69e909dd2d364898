"""Cost functions: minimum commission, monotonicity, stamp duty switch, SEC fee, affordable size."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlm.backtest.costs import (
    CostModel,
    affordable_shares,
    commission,
    cost_model,
    fill_costs,
    round_down,
    total_fill_cost,
)

CN = cost_model("cn")
values = st.floats(1.0, 1e8, allow_nan=False)


@settings(deadline=None)
@given(values, st.floats(0.0, 0.003), st.floats(0.0, 20.0))
def test_commission_at_least_minimum(value, rate, minimum):
    c = commission(value, rate, minimum)
    assert c >= minimum and c >= value * rate - 1e-12


@settings(deadline=None)
@given(values, values)
def test_costs_monotone_in_value(a, b):
    lo, hi = sorted((a, b))
    args = (CN.commission_rate, CN.min_commission, 0.0005, CN.transfer_fee_rate, 0.0, CN.slippage, CN.impact_coef, 0.02, 1e7)
    for is_sell in (False, True):
        assert total_fill_cost(lo / 10.0, 10.0, is_sell, *args) <= total_fill_cost(hi / 10.0, 10.0, is_sell, *args) + 1e-9


def test_minimum_commission_small_order():
    comm, *_ = fill_costs(100.0, 10.0, False, 0.0003, 5.0, 0.0, 0.00001, 0.0, 0.0, 0.0, 0.02, 1e6)
    assert comm == 5.0  # 1,000 CNY x 0.03% = 0.3 < 5


def test_stamp_duty_switches_on_2023_08_28():
    assert CN.stamp_duty_rate("2023-08-25") == 0.001
    assert CN.stamp_duty_rate("2023-08-27") == 0.001
    assert CN.stamp_duty_rate("2023-08-28") == 0.0005
    rates = CN.stamp_duty_rates(pd.DatetimeIndex(["2023-08-25", "2023-08-28"]))
    assert rates.tolist() == [0.001, 0.0005]
    buy = fill_costs(1000.0, 10.0, False, 0.0, 0.0, 0.001, 0.0, 0.0, 0.0, 0.0, 0.02, 1e6)
    sell = fill_costs(1000.0, 10.0, True, 0.0, 0.0, 0.001, 0.0, 0.0, 0.0, 0.0, 0.02, 1e6)
    assert buy[1] == 0.0 and sell[1] == pytest.approx(10.0)


def test_sec_fee_and_crypto():
    us = cost_model("us")
    assert us.commission_rate == 0.0 and us.sec_fee_rate("2024-06-03") == pytest.approx(0.0000278)
    assert us.sec_fee_rate("2025-06-02") == 0.0
    assert cost_model("crypto").commission_rate == 0.001


def test_zero_model():
    z = CostModel.zero()
    assert total_fill_cost(1000.0, 10.0, True, z.commission_rate, z.min_commission, z.stamp_duty_rate("2020-01-01"),
                           z.transfer_fee_rate, z.sec_fee_rate("2020-01-01"), z.slippage, z.impact_coef, 0.02, 1e6) == 0.0


def test_impact_square_root_law():
    c1 = fill_costs(1000.0, 10.0, False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.02, 100_000.0)[5]
    c4 = fill_costs(4000.0, 10.0, False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.02, 100_000.0)[5]
    assert c1 == pytest.approx(10_000 * 0.1 * 0.02 * 0.1)
    assert c4 / c1 == pytest.approx(4 * 2)  # value x4, impact fraction x2


@settings(max_examples=60, deadline=None)
@given(st.floats(100.0, 1e7), st.floats(0.5, 300.0), st.sampled_from([100.0, 1.0, 0.0]))
def test_affordable_shares_fit_budget_and_are_maximal(budget, price, step):
    args = (CN.commission_rate, CN.min_commission, CN.transfer_fee_rate, CN.slippage, CN.impact_coef, 0.02, 1e6)
    q = affordable_shares(budget, price, step, *args)
    cost = total_fill_cost(q, price, False, args[0], args[1], 0.0, args[2], 0.0, args[3], args[4], args[5], args[6])
    assert q >= 0
    if q > 0:
        assert q * price + cost <= budget * (1 + 1e-12)
    if step > 0:
        assert round_down(q, step) == q
        more = q + step
        cost_more = total_fill_cost(more, price, False, args[0], args[1], 0.0, args[2], 0.0, args[3], args[4], args[5], args[6])
        assert more * price + cost_more > budget


def test_round_down():
    assert round_down(1599.99, 100.0) == 1500.0
    assert round_down(1599.9999999999998, 100.0) == 1600.0  # float noise is not a lost lot
    assert round_down(1600.0, 100.0) == 1600.0
    assert round_down(0.123456, 0.0) == 0.123456
