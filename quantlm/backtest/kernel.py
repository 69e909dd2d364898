"""The numba-compiled bar loop of the backtest engine (the fast path of `engine.run_backtest`).

It does, per bar t, exactly what the reference path (strategies -> orders -> Exchange -> Portfolio,
in plain Python) does; `tests/backtest/test_engine.py` checks the two agree. Arrays are
[n_bars, n_symbols] for one CHUNK of whole dates; NaN price = no bar, NaN limit = no limit, NaN score =
no signal. The account (cash, shares, sellable shares, days held, last prices) and the pending orders
live in a `KernelState` passed in and updated in place, so a long intraday backtest runs chunk by
chunk with memory bounded by the chunk, not by bars x symbols.
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
I_STRATEGY, I_TOPK, I_NDROP, I_HOLD, I_ALLOW_SHORT, I_T_PLUS, I_ODD_LOT, I_CA_MODE = range(8)
CA_OFF, CA_CASH, CA_REINVEST = 0, 1, 2
CA_MODES = ("off", "cash", "reinvest")
# scalar state: cash (currency), number of pending orders
S_CASH, S_N_ORDERS = range(2)


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
def orders_from_targets(w, seq, k, shares, last_price, equity, sell_steps, o_j, o_side, o_shares, o_value):
    """The shared order generator: targets - current -> orders (sells in shares, buys/shorts in value)."""
    m = 0
    for i in range(k):
        j = seq[i]
        sell_step = sell_steps[j]
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
def corporate_action_split(ratio, mode):
    """How an adj_factor step `ratio` = adj_factor(t) / adj_factor(t-1) reaches a holder.

    Returns (share_ratio, cash_fraction): each held share becomes `share_ratio` shares and the holder
    is credited `cash_fraction` x the previous close per OLD share, so that value is preserved at the
    ex-rights reference price close(t-1) / ratio. Modes: CA_OFF (no adjustment: raw shares, the old
    behaviour), CA_REINVEST (everything as shares, share_ratio = ratio: equity then follows the
    adjusted close exactly), CA_CASH (default): A-share bonus issues and conversions come per 10
    shares, so the largest multiple of 0.1 not above `ratio` is taken as shares and the rest as a cash
    dividend (a pure cash dividend under ~9% of the price is all cash; 10-for-10 is share_ratio 2).
    A factor step below 1 (a share consolidation) is all shares.
    """
    if mode == CA_OFF or not (ratio == ratio) or ratio <= 0.0 or abs(ratio - 1.0) < 1e-12:
        return 1.0, 0.0
    if mode == CA_REINVEST or ratio < 1.0:
        return ratio, 0.0
    share = math.floor(ratio * 10.0 + 1e-6) / 10.0
    if share < 1.0:
        share = 1.0
    return share, 1.0 - share / ratio


@njit(cache=True)
def apply_corporate_action(shares, last_price, ratio, mode, whole_shares):
    """(new shares, cash credited in currency, new last price) of a position at an adj_factor step.

    With `whole_shares`, fractional new shares are paid out in cash at the ex-rights price (cash in
    lieu). Shorts pay the dividend (negative cash).
    """
    share, cash_frac = corporate_action_split(ratio, mode)
    if share == 1.0 and cash_frac == 0.0:
        return shares, 0.0, last_price
    new_last = last_price / ratio
    if shares == 0.0 or not (last_price == last_price):
        return shares, 0.0, new_last
    new_q = shares * share
    if whole_shares:
        if new_q > 0:
            new_q = math.floor(new_q + 1e-9)
        else:
            new_q = -math.floor(-new_q + 1e-9)
    cash = shares * last_price * cash_frac + (shares * share - new_q) * new_last
    return new_q, cash, new_last


@njit(cache=True)
def _scaled_quantity(q, share, whole_shares):
    q = q * share
    if whole_shares:
        q = math.floor(q + 1e-9)
    return q


@njit(cache=True)
def run_kernel(fill_price, close, volume, limit_up, limit_down, sigma, score, has_score, new_date, day_end, ca_ratio,
               stamp_rate, sec_rate, transfer_rate, borrow_years, buy_step, buy_min, sell_step, sell_min, fp, ip,
               capacity, scal, shares, sellable, held_days, last_price, o_j, o_side, o_shares, o_value, last_chunk):
    """Simulate the bars of one chunk, updating the state (scal, shares, ..., pending orders) in place.

    Per bar t: corporate actions on holdings (adj_factor steps, `ca_ratio`) -> settlement on a new date
    (T+1) -> borrow fees -> the pending orders fill (sells, covers, shorts, buys) -> mark at the close
    -> held days +1 at a date's last bar -> decide on t's scores (orders fill on the next bar). Buys
    are `buy_min` shares at least, then multiples of `buy_step` (per symbol: 100/100 on the main
    board, 200/1 on STAR, 100/1 on BSE); partial sells are multiples of `sell_step`, at least
    `sell_min` unless they close the position. Returns (equity, cash, costs, traded, gross,
    corporate-action cash, positions, trades, n_trades).
    """
    n_t, n = close.shape
    cash = scal[S_CASH]
    n_orders = int(scal[S_N_ORDERS])
    equity_out = np.zeros(n_t)
    cash_out = np.zeros(n_t)
    cost_out = np.zeros(n_t)
    traded_out = np.zeros(n_t)
    gross_out = np.zeros(n_t)
    ca_out = np.zeros(n_t)
    positions = np.zeros((n_t, n))
    trades = np.zeros((capacity, N_COLS))
    n_trades = 0
    w = np.full(n, np.nan)
    mark = np.full(n, np.nan)
    seq = np.zeros(n, dtype=np.int64)
    tick = fp[P_TICK]
    leverage, participation = fp[P_LEVERAGE], fp[P_PARTICIPATION]
    ca_mode = ip[I_CA_MODE]
    for t in range(n_t):
        # corporate actions: holdings, sellable shares, pending share orders and last prices follow the factor
        if ca_mode != CA_OFF:
            for j in range(n):
                r = ca_ratio[t, j]
                if not (r == r) or r == 1.0:
                    continue
                share, _ = corporate_action_split(r, ca_mode)
                whole = buy_step[j] >= 1.0  # whole shares: fractions of new shares are paid in cash
                old = shares[j]
                new_q, c_cash, new_last = apply_corporate_action(old, last_price[j], r, ca_mode, whole)
                if old != 0.0:
                    if sellable[j] >= old > 0:
                        sellable[j] = new_q
                    elif sellable[j] > 0:
                        sellable[j] = min(_scaled_quantity(sellable[j], share, whole), new_q)
                    shares[j] = new_q
                    cash += c_cash
                    ca_out[t] += c_cash
                for i in range(n_orders):
                    if o_j[i] == j and (o_side[i] == SELL or o_side[i] == COVER):
                        if old != 0.0 and abs(o_shares[i] - abs(old)) < 1e-9:
                            o_shares[i] = abs(new_q)
                        else:
                            o_shares[i] = _scaled_quantity(o_shares[i], share, whole)
                last_price[j] = new_last
        if ip[I_T_PLUS] == 0 or new_date[t]:
            for j in range(n):
                sellable[j] = shares[j] if shares[j] > 0 else 0.0
        day_cost = 0.0
        day_traded = 0.0
        # borrow fee on shorts held overnight, at the previous marks
        if borrow_years[t] > 0 and fp[P_BORROW] > 0:
            for j in range(n):
                if shares[j] < 0:
                    fee = -shares[j] * last_price[j] * fp[P_BORROW] * borrow_years[t]
                    cash -= fee
                    day_cost += fee
        # execute the pending orders: sells, covers, shorts, buys
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
                step = buy_step[j] if side == BUY else sell_step[j]
                q_min = buy_min[j] if side == BUY else sell_min[j]
                if side == BUY:  # the value covers the shares and their costs
                    req = affordable_shares(value_req, ref, step, fp[P_COMM_RATE], fp[P_MIN_COMM], transfer_rate[t],
                                            fp[P_SLIP], fp[P_IMPACT], sigma[t, j], vol) if ref == ref else 0.0
                    if req < q_min:
                        req = 0.0
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
                        whole_pos = shares[j]
                        if q > sellable[j]:
                            q = sellable[j]
                            reason = R_T1
                        if q < whole_pos or ip[I_ODD_LOT] == 0:
                            q2 = round_down(q, step)
                            if q2 < q_min and q2 < whole_pos:
                                q2 = 0.0
                            if q2 < q and reason == R_NONE:
                                reason = R_LOT
                            q = q2
                        if q <= 0 and reason == R_NONE:
                            reason = R_LOT
                    elif q <= 0:
                        reason = R_LOT
                    if q > 0 and participation > 0 and q > participation * vol:
                        q = round_down(participation * vol, step)
                        if q < q_min:
                            q = 0.0
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
                                                       transfer_rate[t], fp[P_SLIP], fp[P_IMPACT], sigma[t, j], vol)
                            if afford < q:
                                q = afford if afford >= q_min else 0.0
                                reason = R_CASH
                    elif q > 0 and side == SHORT:
                        gross, eq = _gross_equity(cash, shares, mark)
                        room = round_down(max(leverage * eq - gross, 0.0) / price, step)
                        if room < q:
                            q = room
                            reason = R_LEVERAGE
                rec = trades[min(n_trades, capacity - 1)]
                if q > 0:
                    c = fill_costs(q, price, is_sell, fp[P_COMM_RATE], fp[P_MIN_COMM], stamp_rate[t], transfer_rate[t],
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
        # mark to market at the close; suspended holdings keep their last price; days held count dates
        for j in range(n):
            if close[t, j] == close[t, j]:
                last_price[j] = close[t, j]
            if shares[j] != 0.0 and day_end[t]:
                held_days[j] += 1
            positions[t, j] = shares[j]
        gross, eq = _gross_equity(cash, shares, last_price)
        equity_out[t], cash_out[t], cost_out[t], traded_out[t], gross_out[t] = eq, cash, day_cost, day_traded, gross
        # decide on t's scores; the orders fill on the next bar
        if (t + 1 < n_t or not last_chunk) and has_score[t]:
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
    scal[S_CASH] = cash
    scal[S_N_ORDERS] = n_orders
    return equity_out, cash_out, cost_out, traded_out, gross_out, ca_out, positions, trades, n_trades
