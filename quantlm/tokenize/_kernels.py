"""Numba hot paths of the K-line tokenizer: the causal feature recursion, bin lookup and decoding.

`encode_rows` walks the rows of many symbols at once (rows grouped by symbol, time-ordered inside a
group; `new[i]` marks the first row of a group) so one call encodes a whole market.
Units: prices in currency, volume in shares, amount in currency; every output is dimensionless.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np

# Columns of the feature matrix (see kline.py's module docstring for the definitions).
F_RET, F_GAP, F_UPPER, F_LOWER, F_VOL, F_AMOUNT, F_LOGSIG = range(7)
N_FEATURES = 7
# Per-group end state: last close, last adj_factor, variance for the next bar, log-volume level,
# log-amount level (NaN if the symbol never had an amount), bars seen.
S_CLOSE, S_ADJ, S_VAR, S_LVOL, S_LAMT, S_COUNT = range(6)
N_STATE = 6
_PARKINSON = 1.0 / (4.0 * math.log(2.0))
_BLOCK = 1024  # rows per bin-lookup block


@numba.njit(cache=True, nogil=True)
def update_var(var: float, r: float, alpha: float, cap: float, var_floor: float) -> float:
    """EWMA variance after seeing log return r: winsorised at cap * var, floored at var_floor."""
    r2 = min(r * r, cap * var)
    return max((1.0 - alpha) * var + alpha * r2, var_floor)


def id_tables(shape: tuple[int, ...], coarse_offset: int, fine_offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Additive id tables: coarse = ct[0, ret] + ct[1, vol]; fine = sum_a ft[a, bin_a] over (ret, vol, gap, up, lo).

    shape = (n_ret_c, n_vol_c, n_ret_f, n_vol_f, n_gap, n_up, n_lo); ret / vol bins are global
    (ret = ret_c * n_ret_f + ret_f). int64 [2, m] and [5, m], m = the largest axis.
    """
    rc, vc, rf, vf, ng, nu, nl = shape
    m = max(rc * rf, vc * vf, ng, nu, nl)
    ct, ft = np.zeros((2, m), dtype=np.int64), np.zeros((5, m), dtype=np.int64)
    r, v = np.arange(rc * rf), np.arange(vc * vf)
    ct[0, : len(r)] = coarse_offset + (r // rf) * vc
    ct[1, : len(v)] = v // vf
    ft[0, : len(r)] = fine_offset + (r % rf) * vf * ng * nu * nl
    ft[1, : len(v)] = (v % vf) * ng * nu * nl
    ft[2, :ng] = np.arange(ng) * nu * nl
    ft[3, :nu] = np.arange(nu) * nl
    ft[4, :nl] = np.arange(nl)
    return ct, ft


class BinLookup(NamedTuple):
    """Fast bin lookup for the 5 axes (ret, vol, gap, upper, lower): a uniform grid of cells over each
    axis' edge range gives a starting bin that one or two comparisons correct (see `_search`)."""

    edges: np.ndarray  # float64 [5, m] edges of each axis, padded with +inf
    n_edges: np.ndarray  # int64 [5]
    lo: np.ndarray  # float64 [5], first edge
    inv: np.ndarray  # float64 [5], cells per unit
    table: np.ndarray  # int32 [5, n_cells + 1]: bins below each cell's left boundary


def bin_lookup(edges: list[np.ndarray], n_cells: int = 2048) -> BinLookup:
    m = max(1, max(len(e) for e in edges))
    out = np.full((len(edges), m), np.inf)
    n_edges = np.array([len(e) for e in edges], dtype=np.int64)
    lo, inv = np.zeros(len(edges)), np.zeros(len(edges))
    table = np.zeros((len(edges), n_cells + 1), dtype=np.int32)
    for a, e in enumerate(edges):
        out[a, : len(e)] = e
        if len(e) >= 2 and e[-1] > e[0]:
            lo[a], inv[a] = e[0], n_cells / (e[-1] - e[0])
            table[a] = np.searchsorted(e, lo[a] + np.arange(n_cells + 1) / inv[a], side="left")
    return BinLookup(out, n_edges, lo, inv, table)


@numba.njit(cache=True, nogil=True, inline="always")
def _search(lk_edges, n_edges, lo, inv, table, a, x):
    """Number of edges of axis a strictly below x (= np.searchsorted side='left'); NaN -> 0."""
    f = (x - lo[a]) * inv[a]
    j = 0
    if f > 0.0:
        j = int(min(f, table.shape[1] - 1.0))
    pos = table[a, j]
    ne = n_edges[a]
    while pos < ne and lk_edges[a, pos] < x:
        pos += 1
    while pos > 0 and lk_edges[a, pos - 1] >= x:  # float rounding of the cell boundary
        pos -= 1
    return pos


@numba.njit(cache=True, nogil=True)
def _bin_block(buf, m, start, edges, n_edges, lo, inv, table, coarse_tab, fine_tab, ids):
    """Token ids of rows start..start+m-1 from their buffered features buf[:m] = (ret, vol, gap, up, lo)."""
    for j in range(m):
        rq = _search(edges, n_edges, lo, inv, table, 0, buf[j, 0])
        vq = _search(edges, n_edges, lo, inv, table, 1, buf[j, 1])
        gq = _search(edges, n_edges, lo, inv, table, 2, buf[j, 2])
        uq = _search(edges, n_edges, lo, inv, table, 3, buf[j, 3])
        lq = _search(edges, n_edges, lo, inv, table, 4, buf[j, 4])
        ids[start + j, 0] = coarse_tab[0, rq] + coarse_tab[1, vq]
        ids[start + j, 1] = fine_tab[0, rq] + fine_tab[1, vq] + fine_tab[2, gq] + fine_tab[3, uq] + fine_tab[4, lq]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def encode_rows(o, h, lo, c, v, amt, adj, new, alpha_var, alpha_vol, cap, var_floor, want_feat, want_ids,
                feat, ids, state, edges, n_edges, e_lo, e_inv, table, coarse_tab, fine_tab):
    """One causal pass over the rows of many symbols: features, token ids and end states.

    o, h, lo, c, v, amt, adj: float64 [n] bar columns (amt / adj may be NaN: unknown / no adjustment).
    new: bool [n], True on the first row of each symbol. alpha_*: EWMA weights of the newest bar.
    want_feat: fill feat float64 [n, 7]; want_ids: fill ids int64 [n, 2] using the `BinLookup` fields
    (edges .. table) of the axes ret, vol, gap, upper, lower and the id tables of `id_tables` (no integer division in
    the loop). state float64 [n_groups, 6] always receives each symbol's state after its last bar.

    Bar t is normalised by sigma_t, the EWMA volatility of returns strictly before t; the first bar
    of a symbol (no previous close) uses its own Parkinson range variance and has gap 0 and return
    log(close / open). Volume (amount) levels are EWMAs of log1p(volume) (log1p(amount)) of bars
    strictly before t; the first bar's relative volume is 0.
    """
    n = o.shape[0]
    buf = np.empty((_BLOCK if want_ids else 0, 5))
    j = 0
    g = -1
    prev_c = 1.0
    prev_lc = 0.0
    prev_la = np.nan  # log adj factor of the previous bar
    var = var_floor
    lvol = 0.0
    lamt = np.nan
    count = 0
    for i in range(n):
        l_o, l_h, l_l, l_c = math.log(o[i]), math.log(h[i]), math.log(lo[i]), math.log(c[i])
        la_i = math.log(adj[i]) if adj[i] > 0.0 else np.nan  # NaN, 0 or negative: unknown
        if new[i]:
            if g >= 0:
                state[g, S_CLOSE], state[g, S_ADJ], state[g, S_VAR] = prev_c, math.exp(prev_la), var
                state[g, S_LVOL], state[g, S_LAMT], state[g, S_COUNT] = lvol, lamt, count
            g += 1
            var = max((l_h - l_l) * (l_h - l_l) * _PARKINSON, var_floor)
            lvol = math.log1p(v[i])
            lamt = np.nan
            count = 0
            prev_lc = l_o  # the first bar's "previous close" is its open: gap 0, return log(c / o)
            prev_la = la_i
        # adjustment between consecutive bars (none when either factor is unknown)
        k = la_i - prev_la if (math.isfinite(la_i) and math.isfinite(prev_la)) else 0.0
        r = l_c - prev_lc + k
        inv = 1.0 / math.sqrt(var)
        z_r = r * inv
        z_g = (l_o - prev_lc + k) * inv
        z_u = (l_h - max(l_o, l_c)) * inv
        z_l = (min(l_o, l_c) - l_l) * inv
        lv = math.log1p(v[i])
        z_v = lv - lvol
        if want_feat:
            feat[i, F_RET], feat[i, F_GAP], feat[i, F_UPPER], feat[i, F_LOWER], feat[i, F_VOL] = z_r, z_g, z_u, z_l, z_v
            feat[i, F_LOGSIG] = 0.5 * math.log(var)
            la = math.log1p(amt[i]) if amt[i] >= 0.0 else np.nan
            feat[i, F_AMOUNT] = la - lamt if (math.isfinite(la) and math.isfinite(lamt)) else 0.0
            if math.isfinite(la):
                lamt = la if not math.isfinite(lamt) else (1.0 - alpha_vol) * lamt + alpha_vol * la
        if want_ids:  # buffered: the searches of a block of rows overlap far better than one row's
            buf[j, 0], buf[j, 1], buf[j, 2], buf[j, 3], buf[j, 4] = z_r, z_v, z_g, z_u, z_l
            j += 1
            if j == _BLOCK or i == n - 1:
                _bin_block(buf, j, i + 1 - j, edges, n_edges, e_lo, e_inv, table, coarse_tab, fine_tab, ids)
                j = 0
        # state after bar i (used by bar i + 1)
        var = update_var(var, r, alpha_var, cap, var_floor)
        lvol = (1.0 - alpha_vol) * lvol + alpha_vol * lv
        prev_lc = l_c
        prev_c = c[i]
        if math.isfinite(la_i):
            prev_la = la_i
        count += 1
    if g >= 0:
        state[g, S_CLOSE], state[g, S_ADJ], state[g, S_VAR] = prev_c, math.exp(prev_la), var
        state[g, S_LVOL], state[g, S_LAMT], state[g, S_COUNT] = lvol, lamt, count


@numba.njit(cache=True, nogil=True)
def decode_bars(zr, zg, zu, zl, zv, close0, var0, lvol0, alpha_var, alpha_vol, cap, var_floor, out):
    """Rebuild bars from dequantised features, advancing the state bar by bar as `bar_features` does.

    z*: float64 [n] representative features; close0, var0, lvol0: state after the last known bar.
    out: float64 [n, 6] = open, high, low, close (currency), volume (shares), log return.
    """
    prev, var, lvol = close0, var0, lvol0
    for t in range(zr.shape[0]):
        sig = math.sqrt(var)
        r = zr[t] * sig
        o = prev * math.exp(zg[t] * sig)
        c = prev * math.exp(r)
        lv = lvol + zv[t]
        out[t, 0] = o
        out[t, 1] = max(o, c) * math.exp(zu[t] * sig)
        out[t, 2] = min(o, c) * math.exp(-zl[t] * sig)
        out[t, 3] = c
        out[t, 4] = max(math.expm1(lv), 0.0)
        out[t, 5] = r
        var = update_var(var, r, alpha_var, cap, var_floor)
        lvol = (1.0 - alpha_vol) * lvol + alpha_vol * lv
        prev = c
