"""Trading costs: commission, stamp duty, transfer fee, SEC fee, slippage and market impact.

Every rate is a fraction of traded value (0.0003 = 0.03% = 3 bp); every amount is in the
instrument's currency. The scalar functions here are plain arithmetic so the numba kernel compiles
the very same functions (numba dispatchers, callable from Python) that the tests exercise.

Defaults per market (`cost_model(market)`):

- cn: commission 0.03% per side, minimum 5 CNY per order; stamp duty on sells 0.1% until
  2023-08-27 and 0.05% from 2023-08-28 (Ministry of Finance / State Taxation Administration notice of
  2023-08-27 halving the stamp duty on securities trades); transfer fee 0.002% each side until
  2022-04-28 and 0.001% from 2022-04-29 (China Securities Depository and Clearing (CSDC) notice of
  2022-04 cutting the A-share transfer fee by half, effective 2022-04-29).
- us: zero commission; SEC Section 31 fee on sales by effective date (e.g. 0.00278% from
  2024-05-22, 0 from 2025-05-14).
- crypto: taker fee 0.1% per side.
- all: slippage 0.02% of price per side, and a square-root market impact
  `impact_coef * sigma * sqrt(shares / bar_volume)` (fraction of value) with impact_coef 0.1 and sigma
  the symbol's daily volatility known at the decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from numba import njit

STAMP_DUTY_CN = (("1900-01-01", 0.001), ("2023-08-28", 0.0005))  # MOF/STA notice, 2023-08-27
TRANSFER_FEE_CN = (("1900-01-01", 0.00002), ("2022-04-29", 0.00001))  # CSDC notice, effective 2022-04-29
# SEC Section 31 fee rates (fraction of sale value) by effective date; overridable via CostModel.
SEC_FEE_US = (
    ("1900-01-01", 0.0000231),
    ("2018-05-22", 0.0000130),
    ("2019-05-16", 0.0000207),
    ("2020-02-18", 0.0000221),
    ("2021-02-25", 0.0000051),
    ("2022-05-22", 0.0000229),
    ("2023-02-27", 0.0000080),
    ("2024-05-22", 0.0000278),
    ("2025-05-14", 0.0),
)


@dataclass(frozen=True)
class CostModel:
    """Costs of one market. Rates are fractions of traded value; amounts are currency.

    commission_rate / min_commission: broker commission per side, at least min_commission per filled order.
    stamp_duty: ((effective date, sell-side rate), ...) in date order.
    transfer_fee_rate: per side (cn), used when `transfer_fee` is empty.
    transfer_fee: ((effective date, per-side rate), ...) in date order; overrides transfer_fee_rate.
    sec_fee: ((effective date, sell-side rate), ...) (us).
    slippage: fraction of value lost per side (half-spread and the like).
    impact_coef: square-root impact coefficient; the cost fraction is impact_coef * sigma * sqrt(shares / volume).
    default_sigma: daily volatility used before a symbol has 5 returns of history.
    """

    commission_rate: float = 0.0
    min_commission: float = 0.0
    stamp_duty: tuple[tuple[str, float], ...] = ()
    transfer_fee_rate: float = 0.0
    transfer_fee: tuple[tuple[str, float], ...] = ()
    sec_fee: tuple[tuple[str, float], ...] = ()
    slippage: float = 0.0
    impact_coef: float = 0.0
    default_sigma: float = 0.02

    @classmethod
    def zero(cls) -> CostModel:
        """No costs at all (`--no-costs`)."""
        return cls()

    def with_(self, **changes) -> CostModel:
        return replace(self, **changes)

    def stamp_duty_rate(self, date) -> float:
        """Sell-side stamp duty rate in force on `date`."""
        return schedule_rate(self.stamp_duty, date)

    def transfer_fee_rate_on(self, date) -> float:
        """Per-side transfer fee rate in force on `date` (fraction of traded value)."""
        return schedule_rate(self.transfer_fee, date) if self.transfer_fee else self.transfer_fee_rate

    def transfer_fee_rates(self, sessions: pd.DatetimeIndex) -> np.ndarray:
        if not self.transfer_fee:
            return np.full(len(sessions), float(self.transfer_fee_rate))
        return schedule_rates(self.transfer_fee, sessions)

    def sec_fee_rate(self, date) -> float:
        """Sell-side SEC fee rate in force on `date`."""
        return schedule_rate(self.sec_fee, date)

    def stamp_duty_rates(self, sessions: pd.DatetimeIndex) -> np.ndarray:
        return schedule_rates(self.stamp_duty, sessions)

    def sec_fee_rates(self, sessions: pd.DatetimeIndex) -> np.ndarray:
        return schedule_rates(self.sec_fee, sessions)


COST_PRESETS: dict[str, CostModel] = {
    "cn": CostModel(commission_rate=0.0003, min_commission=5.0, stamp_duty=STAMP_DUTY_CN, transfer_fee_rate=0.00001,
                    transfer_fee=TRANSFER_FEE_CN,
                    slippage=0.0002, impact_coef=0.1),
    "us": CostModel(commission_rate=0.0, min_commission=0.0, sec_fee=SEC_FEE_US, slippage=0.0002, impact_coef=0.1),
    "crypto": CostModel(commission_rate=0.001, slippage=0.0002, impact_coef=0.1),
}


def cost_model(market: str) -> CostModel:
    """The default cost model of `market`."""
    try:
        return COST_PRESETS[market]
    except KeyError:
        raise ValueError(f"unknown market '{market}' (expected one of {', '.join(COST_PRESETS)})") from None


def schedule_rate(schedule: tuple[tuple[str, float], ...], date) -> float:
    """Rate of the last schedule entry effective on or before `date` (0 if none)."""
    date = pd.Timestamp(date)
    rate = 0.0
    for start, value in schedule:
        if pd.Timestamp(start) <= date:
            rate = float(value)
    return rate


def schedule_rates(schedule: tuple[tuple[str, float], ...], sessions: pd.DatetimeIndex) -> np.ndarray:
    """`schedule_rate` for every session, as a float64 array."""
    out = np.zeros(len(sessions))
    for start, value in schedule:
        out[sessions >= pd.Timestamp(start)] = float(value)
    return out


@njit(cache=True)
def commission(value: float, rate: float, minimum: float) -> float:
    """Broker commission on a fill of `value` currency: max(value * rate, minimum); 0 for no fill."""
    if value <= 0.0:
        return 0.0
    return max(value * rate, minimum)


@njit(cache=True)
def impact_fraction(shares: float, bar_volume: float, sigma: float, impact_coef: float) -> float:
    """Square-root market impact as a fraction of value: impact_coef * sigma * sqrt(shares / bar_volume)."""
    if impact_coef <= 0.0 or bar_volume <= 0.0 or shares <= 0.0:
        return 0.0
    return impact_coef * sigma * math.sqrt(shares / bar_volume)


@njit(cache=True)
def fill_costs(shares: float, price: float, is_sell: bool, commission_rate: float, min_commission: float,
               stamp_duty_rate: float, transfer_fee_rate: float, sec_fee_rate: float, slippage: float,
               impact_coef: float, sigma: float, bar_volume: float):
    """Costs of one fill of `shares` at `price` (currency each).

    Returns (commission, stamp_duty, transfer_fee, sec_fee, slippage, impact); stamp duty and SEC fee
    are charged on sells (and short sales) only.
    """
    value = shares * price
    if value <= 0.0:
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    comm = max(value * commission_rate, min_commission)
    stamp = value * stamp_duty_rate if is_sell else 0.0
    sec = value * sec_fee_rate if is_sell else 0.0
    transfer = value * transfer_fee_rate
    slip = value * slippage
    impact = value * impact_fraction(shares, bar_volume, sigma, impact_coef)
    return comm, stamp, transfer, sec, slip, impact


@njit(cache=True)
def total_fill_cost(shares: float, price: float, is_sell: bool, commission_rate: float, min_commission: float,
                    stamp_duty_rate: float, transfer_fee_rate: float, sec_fee_rate: float, slippage: float,
                    impact_coef: float, sigma: float, bar_volume: float) -> float:
    """Sum of `fill_costs` (currency)."""
    c = fill_costs(shares, price, is_sell, commission_rate, min_commission, stamp_duty_rate, transfer_fee_rate,
                   sec_fee_rate, slippage, impact_coef, sigma, bar_volume)
    return c[0] + c[1] + c[2] + c[3] + c[4] + c[5]


@njit(cache=True)
def round_down(quantity: float, step: float) -> float:
    """Largest multiple of `step` not above `quantity` (step 0 = continuous quantities)."""
    if step <= 0.0:
        return quantity
    n = math.floor(quantity / step + 1e-9)
    return n * step


@njit(cache=True)
def _fits(shares: float, budget: float, price: float, commission_rate: float, min_commission: float,
          transfer_fee_rate: float, slippage: float, impact_coef: float, sigma: float, bar_volume: float) -> bool:
    cost = total_fill_cost(shares, price, False, commission_rate, min_commission, 0.0, transfer_fee_rate, 0.0,
                           slippage, impact_coef, sigma, bar_volume)
    return shares * price + cost <= budget * (1.0 + 1e-12)


@njit(cache=True)
def affordable_shares(budget: float, price: float, step: float, commission_rate: float, min_commission: float,
                      transfer_fee_rate: float, slippage: float, impact_coef: float, sigma: float,
                      bar_volume: float) -> float:
    """Most shares (a multiple of `step`) whose buy value plus buy costs fits in `budget` currency.

    With step 0 (continuous) and no minimum commission or impact this is budget / (price * (1 + rates)),
    the same sizing vectorbt uses for an all-in order. Otherwise a bisection over whole steps.
    """
    if budget <= 0.0 or price <= 0.0:
        return 0.0
    linear = commission_rate + transfer_fee_rate + slippage
    guess = budget / (price * (1.0 + linear))
    args = (budget, price, commission_rate, min_commission, transfer_fee_rate, slippage, impact_coef, sigma, bar_volume)
    if step <= 0.0:
        if _fits(guess, *args):
            return guess
        lo, hi = 0.0, guess
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if _fits(mid, *args):
                lo = mid
            else:
                hi = mid
        return lo
    n = math.floor(guess / step + 1e-9)
    if _fits(n * step, *args):
        if not _fits((n + 1) * step, *args):
            return n * step
        lo, hi = n + 1, math.floor(budget / price / step) + 1  # hi: the value alone exceeds the budget
    else:
        lo, hi = 0, n
    while hi - lo > 1:  # invariant: lo fits (or is 0), hi does not
        mid = (lo + hi) // 2
        if _fits(mid * step, *args):
            lo = mid
        else:
            hi = mid
    return lo * step if lo > 0 and _fits(lo * step, *args) else 0.0
