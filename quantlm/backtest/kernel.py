"""The numba-compiled session loop of the backtest engine (the fast path of `engine.run_backtest`).

It does, per session t, exactly what the reference path (strategies -> orders -> Exchange ->
Portfolio, in plain Python) does; `tests/backtest/test_engine.py` checks the two agree. Arrays are
[n_sessions, n_symbols]; NaN price = no bar, NaN limit = no limit, NaN score = no signal.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from quantlm.backtest.costs import affordable_shares, fill_costs, round_down

BUY, SELL, SHORT, COVER = 0, 1, 2, 3
SIDES = ("buy", "sell", "short", "cover")
FILLED, PARTIAL, REJECTED = 0, 1, 2
STATUSES = ("filled", "partial", "rejected")
REASONS = ("", "suspended", "limit_up", "limit_down", "t+1", "lot", "cash", "volume", "short_not_allowed", "leverage")
R_NONE, R_SUSPENDED, R_LIMIT_UP, R_LIMIT_DOWN, R_T1, R_LOT, R_CASH, R_VOLUME, R_NO_SHORT, R_LEVERAGE = range(10)
TOPK, THRESHOLD, WEIGHTS = 0, 1, 2
# trade record columns
(C_T, C_J, C_SIDE, C_REQ, C_FILLED, C_PRICE, C_VALUE, C_COMM, C_STAMP, C_TRANSFER, C_SEC, C_SLIP, C_IMPACT,
 C_TOTAL, C_STATUS, C_REASON, C_VALUE_REQ) = range(17)
N_COLS = 17
# float parameter vector
(P_CASH, P_PARTICIPATION, P_LOT, P_SELL_STEP, P_TICK, P_LEVERAGE, P_RISK, P_LONG_THR, P_SHORT_THR, P_COMM_RATE,
 P_MIN_COMM, P_TRANSFER, P_SLIP, P_IMPACT, P_BORROW, P_SLEEVE) = range(16)
# int parameter vector
I_STRATEGY, I_TOPK, I_NDROP, I_HOLD, I_ALLOW_SHORT, I_T_PLUS, I_ODD_LOT = range(7)


@njit(cache=True)
def rolling_std(x, window, min_periods):
    """Sample standard deviation over the last `window` rows of each column, skipping NaN."""
    n_t, n = x.shape
    out = np.full((n_t, n), np.nan)
    for j in range(n):
        s = 0.0
        ss = 0.0
        k = 0
        for t in range(n_t):
            v = x[t, j]
            if v == v:
                s += v
                ss += v * v
                k += 1
            if t >= window:
                old = x[t - window, j]
                if old == old:
                    s -= old
                    ss -= old * old
                    k -= 1
            if k >= min_periods and k > 1:
                mean = s / k
                out[t, j] = math.sqrt(max((ss - k * mean * mean) / (k - 1), 0.0))
    return out


@njit(cache=True)
def _neg_key(x):
    return -x if x == x else math.inf


@njit(cache=True)
def topk_targets(score, shares, held_days, cash, last_price, equity, topk, n_drop, hold_thresh, risk_degree,
                 w, seq):
    """TopkDropout (Qlib semantics) -> target weights `w` (NaN = keep) and generation order `seq`; returns len."""
    n = score.shape[0]
    key = np.empty(n)
    for j in range(n):
        key[j] = _neg_key(score[j])
    order = np.argsort(key, kind="mergesort")  # best first; NaN last; ties by symbol index
    n_held = 0
    for j in range(n):
        if shares[j] > 0:
            n_held += 1
    n_today = max(n_drop + topk - n_held, 0)
    is_today = np.zeros(n, dtype=np.bool_)
    today = np.empty(n, dtype=np.int64)
    k_today = 0
    for i in range(n):
        j = order[i]
        if k_today >= n_today:
            break
        if shares[j] <= 0 and score[j] == score[j]:
            is_today[j] = True
            today[k_today] = j
            k_today += 1
    # comb = held + today sorted by score; the held names among its last n_drop are sold
    comb = np.empty(n, dtype=np.int64)
    k_comb = 0
    for i in range(n):
        j = order[i]
        if shares[j] > 0 or is_today[j]:
            comb[k_comb] = j
            k_comb += 1
    k = 0
    n_sell = 0
    sell_value = 0.0
    if n_drop > 0:
        for i in range(max(k_comb - n_drop, 0), k_comb):
            j = comb[i]
            if shares[j] > 0:
                n_sell += 1
                if held_days[j] >= hold_thresh:
                    w[j] = 0.0
                    seq[k] = j
                    k += 1
                    sell_value += shares[j] * last_price[j]
    n_buy = min(max(n_sell + topk - n_held, 0), k_today)
    if n_buy > 0 and equity > 0:
        value = (cash + sell_value) * risk_degree / n_buy
        for i in range(n_buy):
            j = today[i]
            w[j] = value / equity
            seq[k] = j
            k += 1
    return k


@njit(cache=True)
def threshold_targets(score, shares, long_thr, short_thr, allow_short, sleeve, w, seq):
    """Long above long_thr, short below short_thr (if allowed), else flat; unchanged sides are kept."""
    k = 0
    for j in range(score.shape[0]):
        s = score[j]
        if s != s:
            continue
        want = 0
        if s > long_thr:
            want = 1
        elif short_thr == short_thr and allow_short and s < short_thr:
            want = -1
        have = 1 if shares[j] > 0 else (-1 if shares[j] < 0 else 0)
        if want != have:
            w[j] = want * sleeve
            seq[k] = j
            k += 1
    return k


@njit(cache=True)
def orders_from_targets(w, seq, k, shares, last_price, equity, sell_step, o_j, o_side, o_shares, o_value):
    """The shared order generator: targets - current -> orders (sells in shares, buys/shorts in value)."""
    m = 0
    for i in range(k):
        j = seq[i]
        target = w[j]
        cur = shares[j]
        p = last_price[j]
        if target == 0.0:
            if cur > 0:
                o_j[m], o_side[m], o_shares[m], o_value[m] = j, SELL, cur, 0.0
                m += 1
            elif cur < 0:
                o_j[m], o_side[m], o_shares[m], o_value[m] = j, COVER, -cur, 0.0
                m += 1
            continue
        tv = target * equity
        if target > 0:
            if cur < 0:
                o_j[m], o_side[m], o_shares[m], o_value[m] = j, COVER, -cur, 0.0
                m += 1
                cur = 0.0
            delta = tv - cur * p if cur != 0.0 else tv
            if cur == 0.0 or delta > 0:
                o_j[m], o_side[m], o_shares[m], o_value[m] = j, BUY, 0.0, delta
                m += 1
            elif delta < 0:
                q = round_down(-delta / p, sell_step)
                if q >= cur:
                    q = cur
                if q > 0:
                    o_j[m], o_side[m], o_shares[m], o_value[m] = j, SELL, q, 0.0
                    m += 1
        else:
            if cur > 0:
                o_j[m], o_side[m], o_shares[m], o_value[m] = j, SELL, cur, 0.0
                m += 1
                cur = 0.0
            delta = -tv + cur * p if cur != 0.0 else -tv  # extra short value wanted (cur <= 0)
            if cur == 0.0 or delta > 0:
                o_j[m], o_side[m], o_shares[m], o_value[m] = j, SHORT, 0.0, delta
                m += 1
            elif delta < 0:
                q = round_down(-delta / p, sell_step)
                if q >= -cur:
                    q = -cur
                if q > 0:
                    o_j[m], o_side[m], o_shares[m], o_value[m] = j, COVER, q, 0.0
                    m += 1
    return m


@njit(cache=True)
def _gross_equity(cash, shares, mark):
    gross = 0.0
    net = 0.0
    for j in range(shares.shape[0]):
        if shares[j] != 0.0:
            v = shares[j] * mark[j]
            net += v
            gross += abs(v)
    return gross, cash + net


@njit(cache=True)
def run_kernel(fill_price, close, volume, limit_up, limit_down, sigma, score, has_score, new_date, stamp_rate,
               sec_rate, borrow_years, fp, ip, capacity):
    """Simulate all sessions. Returns (equity, cash, costs, traded, gross, positions, trades, n_trades)."""
    n_t, n = close.shape
    cash = fp[P_CASH]
    shares = np.zeros(n)
    sellable = np.zeros(n)
    held_days = np.zeros(n, dtype=np.int64)
    last_price = np.full(n, np.nan)
    equity_out = np.zeros(n_t)
    cash_out = np.zeros(n_t)
    cost_out = np.zeros(n_t)
    traded_out = np.zeros(n_t)
    gross_out = np.zeros(n_t)
    positions = np.zeros((n_t, n))
    trades = np.zeros((capacity, N_COLS))
    n_trades = 0
    o_j = np.zeros(2 * n + 1, dtype=np.int64)
    o_side = np.zeros(2 * n + 1, dtype=np.int64)
    o_shares = np.zeros(2 * n + 1)
    o_value = np.zeros(2 * n + 1)
    n_orders = 0
    w = np.full(n, np.nan)
    mark = np.full(n, np.nan)
    seq = np.zeros(n, dtype=np.int64)
    lot, sell_step, tick = fp[P_LOT], fp[P_SELL_STEP], fp[P_TICK]
    leverage, participation = fp[P_LEVERAGE], fp[P_PARTICIPATION]
    for t in range(n_t):
        if ip[I_T_PLUS] == 0 or new_date[t]:
            for j in range(n):
                sellable[j] = shares[j] if shares[j] > 0 else 0.0
        day_cost = 0.0
        day_traded = 0.0
        # borrow fee on shorts held overnight, at the previous marks
        if t > 0 and fp[P_BORROW] > 0:
            for j in range(n):
                if shares[j] < 0:
                    fee = -shares[j] * last_price[j] * fp[P_BORROW] * borrow_years[t]
                    cash -= fee
                    day_cost += fee
        # execute yesterday's orders: sells, covers, shorts, buys
        if n_orders > 0:
            mark[:] = last_price  # prices for exposure checks: last closes, then today's fills
        for side_pass in (SELL, COVER, SHORT, BUY):
            for i in range(n_orders):
                if o_side[i] != side_pass:
                    continue
                j = o_j[i]
                side = o_side[i]
                is_sell = side == SELL or side == SHORT
                price = fill_price[t, j]
                vol = volume[t, j]
                ref = price if price == price else last_price[j]
                value_req = o_value[i]
                step = lot if side == BUY else sell_step
                if side == BUY:  # the value covers the shares and their costs
                    req = affordable_shares(value_req, ref, step, fp[P_COMM_RATE], fp[P_MIN_COMM], fp[P_TRANSFER],
                                            fp[P_SLIP], fp[P_IMPACT], sigma[t, j], vol) if ref == ref else 0.0
                elif side == SHORT:
                    req = round_down(value_req / ref, step) if ref == ref and ref > 0 else 0.0
                else:
                    req = o_shares[i]
                q = req
                reason = R_NONE
                if side == SHORT and ip[I_ALLOW_SHORT] == 0:
                    reason = R_NO_SHORT
                elif price != price or vol <= 0:
                    reason = R_SUSPENDED
                elif not is_sell and limit_up[t, j] == limit_up[t, j] and price >= limit_up[t, j] - 0.5 * tick:
                    reason = R_LIMIT_UP
                elif is_sell and limit_down[t, j] == limit_down[t, j] and price <= limit_down[t, j] + 0.5 * tick:
                    reason = R_LIMIT_DOWN
                if reason != R_NONE:
                    q = 0.0
                else:
                    if side == SELL:
                        whole = shares[j]
                        if q > sellable[j]:
                            q = sellable[j]
                            reason = R_T1
                        if q < whole or ip[I_ODD_LOT] == 0:
                            q2 = round_down(q, sell_step)
                            if q2 < q and reason == R_NONE:
                                reason = R_LOT
                            q = q2
                        if q <= 0 and reason == R_NONE:
                            reason = R_LOT
                    elif q <= 0:
                        reason = R_LOT
                    if q > 0 and participation > 0 and q > participation * vol:
                        q = round_down(participation * vol, step)
                        reason = R_VOLUME
                    if q > 0 and (side == BUY or side == COVER):
                        if side == BUY:
                            gross, eq = _gross_equity(cash, shares, mark)
                            budget = leverage * eq - gross
                            if leverage <= 1.0 and cash < budget:
                                budget = cash
                        else:
                            budget = cash if leverage <= 1.0 else math.inf
                        if budget < math.inf:
                            afford = affordable_shares(budget, price, step, fp[P_COMM_RATE], fp[P_MIN_COMM],
                                                       fp[P_TRANSFER], fp[P_SLIP], fp[P_IMPACT], sigma[t, j], vol)
                            if afford < q:
                                q = afford
                                reason = R_CASH
                    elif q > 0 and side == SHORT:
                        gross, eq = _gross_equity(cash, shares, mark)
                        room = round_down(max(leverage * eq - gross, 0.0) / price, step)
                        if room < q:
                            q = room
                            reason = R_LEVERAGE
                rec = trades[min(n_trades, capacity - 1)]
                if q > 0:
                    c = fill_costs(q, price, is_sell, fp[P_COMM_RATE], fp[P_MIN_COMM], stamp_rate[t], fp[P_TRANSFER],
                                   sec_rate[t], fp[P_SLIP], fp[P_IMPACT], sigma[t, j], vol)
                    total = c[0] + c[1] + c[2] + c[3] + c[4] + c[5]
                    v = q * price
                    if is_sell:
                        cash += v - total
                        shares[j] -= q
                        if side == SELL:
                            sellable[j] -= q
                    else:
                        cash -= v + total
                        shares[j] += q
                        if side == BUY and ip[I_T_PLUS] == 0:
                            sellable[j] += q
                    if shares[j] == 0.0:
                        held_days[j] = 0
                    mark[j] = price
                    day_cost += total
                    day_traded += v
                    if n_trades < capacity:
                        rec[C_COMM], rec[C_STAMP], rec[C_TRANSFER], rec[C_SEC] = c[0], c[1], c[2], c[3]
                        rec[C_SLIP], rec[C_IMPACT], rec[C_TOTAL], rec[C_VALUE] = c[4], c[5], total, v
                        rec[C_STATUS] = FILLED if reason == R_NONE else PARTIAL
                else:
                    if n_trades < capacity:
                        rec[C_COMM] = rec[C_STAMP] = rec[C_TRANSFER] = rec[C_SEC] = 0.0
                        rec[C_SLIP] = rec[C_IMPACT] = rec[C_TOTAL] = rec[C_VALUE] = 0.0
                        rec[C_STATUS] = REJECTED
                if n_trades < capacity:
                    rec[C_T], rec[C_J], rec[C_SIDE], rec[C_REQ], rec[C_FILLED] = t, j, side, req, q
                    rec[C_PRICE], rec[C_REASON], rec[C_VALUE_REQ] = price, reason, value_req
                n_trades += 1
        n_orders = 0
        # mark to market at the close; suspended holdings keep their last price
        for j in range(n):
            if close[t, j] == close[t, j]:
                last_price[j] = close[t, j]
            if shares[j] != 0.0:
                held_days[j] += 1
            positions[t, j] = shares[j]
        gross, eq = _gross_equity(cash, shares, last_price)
        equity_out[t], cash_out[t], cost_out[t], traded_out[t], gross_out[t] = eq, cash, day_cost, day_traded, gross
        # decide on t's scores; the orders fill on t + 1
        if t + 1 < n_t and has_score[t]:
            for j in range(n):
                w[j] = np.nan
            if ip[I_STRATEGY] == TOPK:
                k = topk_targets(score[t], shares, held_days, cash, last_price, eq, ip[I_TOPK], ip[I_NDROP],
                                 ip[I_HOLD], fp[P_RISK], w, seq)
            elif ip[I_STRATEGY] == THRESHOLD:
                k = threshold_targets(score[t], shares, fp[P_LONG_THR], fp[P_SHORT_THR], ip[I_ALLOW_SHORT] != 0,
                                      fp[P_SLEEVE], w, seq)
            else:
                k = 0
                for j in range(n):
                    wj = score[t, j]
                    if wj != wj:
                        wj = 0.0
                    if wj != 0.0 or shares[j] != 0.0:
                        w[j] = wj
                        seq[k] = j
                        k += 1
            n_orders = orders_from_targets(w, seq, k, shares, last_price, eq, sell_step, o_j, o_side, o_shares,
                                           o_value)
    return equity_out, cash_out, cost_out, traded_out, gross_out, positions, trades, n_trades
