"""The live scoring path and its latency: one new bar per symbol in, one score per symbol out.

    measure_latency(model_dir, store, n_symbols=300, n_updates=50) -> {"p50": ms, "p99": ms, ...}

One update (what is timed):

1. `IncrementalFeatures.update`: the new bar's 7 features and (coarse, fine) token ids for every
   symbol from a causal per-symbol state (last log close, last log adjustment factor, variance,
   volume / amount levels, bar count), advanced by one bar - the tokenizer's recursion
   (`tokenize._kernels.encode_rows`) for one row per symbol, in numba, bit-identical to the batch
   tokenizer (tested); no history is re-tokenised.
2. `LiveScorer.update`: the per-symbol context buffers shift by one bar and the model scores all
   symbols in one batch: a student MLP embeds the new bar only and runs its body on the kept
   embeddings of its last k bars; a trader (the teacher, or a "gpt" student) re-runs its
   transformer over its last window_bars bars ([S, 1 + 2 W] tokens: its scores are defined on
   windows, so a growing KV cache would not reproduce them).

Text inputs, when the model reads them, are given per update as precomputed vectors (embedding a
new text is upstream of this path); measure_latency feeds zeros of the right shape.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import torch

from quantlm.finetune.model import TraderModel, numpy_batch
from quantlm.finetune.student import StudentMLP, load_scorer, num_params
from quantlm.model.layout import bar_sequence
from quantlm.tokenize import _kernels as K

# Columns of the incremental state (float64 [S, 6]).
ST_LCLOSE, ST_LADJ, ST_VAR, ST_LVOL, ST_LAMT, ST_COUNT = range(6)
_PARKINSON = 1.0 / (4.0 * math.log(2.0))
_WINSOR = 25.0  # as quantlm.tokenize.kline


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _advance(o, h, lo, c, v, amt, adj, st, alpha_var, alpha_vol, cap, var_floor, feat, ids,
             edges, n_edges, e_lo, e_inv, table, coarse_tab, fine_tab):
    """One bar per symbol: features feat [S, 7], ids [S, 2]; st [S, 6] advanced in place (see encode_rows)."""
    for i in range(o.shape[0]):
        l_o, l_h, l_l, l_c = math.log(o[i]), math.log(h[i]), math.log(lo[i]), math.log(c[i])
        la_i = math.log(adj[i]) if adj[i] > 0.0 else np.nan
        if st[i, ST_COUNT] == 0.0:  # first bar of a symbol
            st[i, ST_VAR] = max((l_h - l_l) * (l_h - l_l) * _PARKINSON, var_floor)
            st[i, ST_LVOL] = math.log1p(v[i])
            st[i, ST_LAMT] = np.nan
            st[i, ST_LCLOSE] = l_o
            st[i, ST_LADJ] = la_i
        prev_lc, prev_la, var = st[i, ST_LCLOSE], st[i, ST_LADJ], st[i, ST_VAR]
        lvol, lamt = st[i, ST_LVOL], st[i, ST_LAMT]
        k = la_i - prev_la if (math.isfinite(la_i) and math.isfinite(prev_la)) else 0.0
        r = l_c - prev_lc + k
        inv = 1.0 / math.sqrt(var)
        z_r = r * inv
        z_g = (l_o - prev_lc + k) * inv
        z_u = (l_h - max(l_o, l_c)) * inv
        z_l = (min(l_o, l_c) - l_l) * inv
        lv = math.log1p(v[i])
        z_v = lv - lvol
        feat[i, K.F_RET], feat[i, K.F_GAP], feat[i, K.F_UPPER], feat[i, K.F_LOWER], feat[i, K.F_VOL] = z_r, z_g, z_u, z_l, z_v
        feat[i, K.F_LOGSIG] = 0.5 * math.log(var)
        la = math.log1p(amt[i]) if amt[i] >= 0.0 else np.nan
        feat[i, K.F_AMOUNT] = la - lamt if (math.isfinite(la) and math.isfinite(lamt)) else 0.0
        if math.isfinite(la):
            st[i, ST_LAMT] = la if not math.isfinite(lamt) else (1.0 - alpha_vol) * lamt + alpha_vol * la
        rq = K._search(edges, n_edges, e_lo, e_inv, table, 0, z_r)
        vq = K._search(edges, n_edges, e_lo, e_inv, table, 1, z_v)
        gq = K._search(edges, n_edges, e_lo, e_inv, table, 2, z_g)
        uq = K._search(edges, n_edges, e_lo, e_inv, table, 3, z_u)
        lq = K._search(edges, n_edges, e_lo, e_inv, table, 4, z_l)
        ids[i, 0] = coarse_tab[0, rq] + coarse_tab[1, vq]
        ids[i, 1] = fine_tab[0, rq] + fine_tab[1, vq] + fine_tab[2, gq] + fine_tab[3, uq] + fine_tab[4, lq]
        st[i, ST_VAR] = K.update_var(var, r, alpha_var, cap, var_floor)
        st[i, ST_LVOL] = (1.0 - alpha_vol) * lvol + alpha_vol * lv
        st[i, ST_LCLOSE] = l_c
        if math.isfinite(la_i):
            st[i, ST_LADJ] = la_i
        st[i, ST_COUNT] += 1.0


@numba.njit(cache=True)
def _logs(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = math.log(x[i]) if x[i] > 0.0 else np.nan
    return out


class IncrementalFeatures:
    """Causal tokenizer features and token ids of one new bar per symbol, from a carried state.

    `update` gives exactly what `KlineTokenizer.features` / `encode` give for that bar when run over
    the symbol's whole history. A symbol without history starts as a listing (its first bar).
    """

    def __init__(self, tokenizer, state: np.ndarray) -> None:
        tokenizer._check_fitted()
        self.tok = tokenizer
        self.state = np.ascontiguousarray(state, dtype=np.float64)  # [S, 6], columns ST_*
        self._feat = np.empty((len(state), 7))
        self._ids = np.empty((len(state), 2), np.int64)

    @classmethod
    def from_history(cls, tokenizer, history: pd.DataFrame, symbols: list[str]) -> IncrementalFeatures:
        """State after each symbol's last bar in `history` (symbols may repeat; absent ones start fresh)."""
        state = np.zeros((len(symbols), 6))
        state[:, ST_LADJ] = state[:, ST_LAMT] = np.nan
        hist = history[history["symbol"].astype(str).isin(set(symbols))]
        if len(hist):
            rows = tokenizer._prepare(hist, single=False)
            st = tokenizer._run(rows, True, False)[2]  # [n_sym, 6] (S_* columns; the amount level needs want_feat)
            adj = rows.cols["adj_factor"]
            ends = np.append(rows.starts[1:], len(rows.new))
            last_adj = np.array([_last_positive(adj[a:b]) for a, b in zip(rows.starts, ends, strict=True)])
            where = {s: g for g, s in enumerate(rows.names)}
            pos = np.array([where.get(s, -1) for s in symbols])
            have = pos >= 0
            g = pos[have]
            state[have, ST_LCLOSE] = _logs(np.ascontiguousarray(st[g, K.S_CLOSE]))
            state[have, ST_LADJ] = _logs(np.ascontiguousarray(last_adj[g]))
            state[have, ST_VAR], state[have, ST_LVOL] = st[g, K.S_VAR], st[g, K.S_LVOL]
            state[have, ST_LAMT], state[have, ST_COUNT] = st[g, K.S_LAMT], st[g, K.S_COUNT]
        return cls(tokenizer, state)

    def update(self, open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray,
               amount: np.ndarray | None = None, adj_factor: np.ndarray | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """New bar per symbol (prices in currency, volume in shares, amount in currency; NaN = unknown)
        -> (features float32 [S, 7], ids int64 [S, 2]); the state advances by one bar."""
        n = len(self.state)
        f64 = [np.ascontiguousarray(x, dtype=np.float64) for x in (open_, high, low, close, volume)]
        amt = np.full(n, np.nan) if amount is None else np.ascontiguousarray(amount, dtype=np.float64)
        adj = np.full(n, np.nan) if adj_factor is None else np.ascontiguousarray(adj_factor, dtype=np.float64)
        t = self.tok
        ct, ft = t._id_tables
        _advance(*f64, amt, adj, self.state, t.alpha_var, t.alpha_volume, _WINSOR, t.min_vol**2, self._feat, self._ids,
                 *t._lookup, ct, ft)
        return self._feat.astype(np.float32), self._ids.copy()


def _last_positive(x: np.ndarray) -> float:
    ok = np.flatnonzero(x > 0)
    return float(x[ok[-1]]) if len(ok) else float("nan")


class LiveScorer:
    """Per-symbol context buffers + incremental features; `update(bar arrays)` -> score per symbol.

    A student keeps the embeddings of its last k bars (and m texts) and embeds only the new bar; a
    trader keeps its last window_bars bars' tokens, calendar ids, features and texts."""

    def __init__(self, model: TraderModel | StudentMLP, tokenizer) -> None:
        factors = getattr(model.spec, "factors", "none")
        if factors != "none":
            raise ValueError(f"this trader was fine-tuned with sft.factors: {factors} (cross-sectional factor ranks), "
                             "which the live scorer cannot compute incrementally: deploy a distilled student "
                             "(token-only) or a trader fine-tuned with sft.factors: none")
        self.model, self.tok = model.eval(), tokenizer
        self.is_student = isinstance(model, StudentMLP)
        self.context = model.spec.window_bars
        self.d_text = model.spec.d_text
        self.text_bars = model.spec.text_bars if self.is_student else self.context

    @torch.inference_mode()
    def start(self, history: pd.DataFrame, symbols: list[str]) -> None:
        """Fill buffers with each symbol's last bars of `history` (tokenised once, in batch; texts: none)."""
        self.symbols = list(symbols)
        S, k = len(symbols), self.context
        self.inc = IncrementalFeatures.from_history(self.tok, history, self.symbols)
        hist = history[history["symbol"].astype(str).isin(set(symbols))].sort_values(["symbol", "ts"], kind="stable")
        feats, ids = self.tok.features(hist), self.tok.encode(hist)
        ts = {str(s): pd.DatetimeIndex(g["ts"]) for s, g in hist.groupby("symbol", sort=True)}
        self.feat = np.zeros((S, k, 7), np.float32)
        self.ids = np.full((S, k, 2), self.model.spec.pad_id if self.is_student else self.tok.pad_id, np.int64)
        valid = np.zeros((S, k), np.float32)
        self.cal = np.full((S, k, 2), -1, np.int64)
        for i, s in enumerate(self.symbols):
            n = min(k, len(feats.get(s, ())))
            if n:
                self.feat[i, k - n:], self.ids[i, k - n:], valid[i, k - n:] = feats[s][-n:], ids[s][-n:], 1.0
                self.cal[i, k - n:] = self.tok.calendar_ids(ts[s][-n:])
        self.text = self.text_weight = None
        if self.is_student:
            m = self.model
            self.bars = m.bar_embed(*map(torch.from_numpy, (self.feat, self.ids, valid))).numpy()
            if self.d_text:
                self.no_text = m.text_embed(torch.zeros(1, self.d_text), torch.zeros(1)).numpy()  # [1, text_dim]
                self.texts = np.repeat(self.no_text[None], S, axis=0).repeat(self.text_bars, axis=1)
            return
        if (valid == 0).any():
            raise ValueError(f"a trader needs {k} bars of history per symbol to score live")
        self.bos = self.model.trunk.special_ids["bos"]
        if self.d_text:
            self.text = np.zeros((S, k, self.d_text), np.float32)
            self.text_weight = np.zeros((S, k), np.float32)

    @torch.inference_mode()
    def update(self, bars: dict[str, np.ndarray], ts, text: np.ndarray | None = None,
               text_weight: np.ndarray | None = None) -> np.ndarray:
        """bars: open, high, low, close, volume (+ amount, adj_factor) float arrays [S] in `symbols` order,
        all for session `ts`; text [S, d_text] / text_weight [S] (none if None) -> float32 scores [S]."""
        f, i = self.inc.update(bars["open"], bars["high"], bars["low"], bars["close"], bars["volume"],
                               bars.get("amount"), bars.get("adj_factor"))
        f_t = torch.from_numpy(f)
        if self.is_student:
            m = self.model
            _push(self.bars, m.bar_embed(f_t, torch.from_numpy(i), torch.ones(len(f))).numpy())
            texts = None
            if self.d_text:
                new = self.no_text if text is None else m.text_embed(
                    torch.as_tensor(text, dtype=torch.float32),
                    torch.as_tensor(np.zeros(len(f)) if text_weight is None else text_weight, dtype=torch.float32))
                _push(self.texts, new.numpy() if isinstance(new, torch.Tensor) else new)
                texts = torch.from_numpy(self.texts)
            return m.score(m.head(torch.from_numpy(self.bars), texts), f_t).numpy()
        _push(self.feat, f)
        _push(self.ids, i)
        _push(self.cal, self.tok.calendar_ids(pd.DatetimeIndex([pd.Timestamp(ts)]))[0])
        tok, cal = bar_sequence(self.ids, self.cal, self.bos)
        batch = {"input_ids": tok, "calendar_ids": cal, "features": self.feat}
        if self.text is not None:
            _push(self.text, 0.0 if text is None else text)
            _push(self.text_weight, 0.0 if text_weight is None else text_weight)
            batch |= {"text": self.text, "text_weight": self.text_weight}
        res = self.model(numpy_batch(batch))
        return self.model.score({k: v[:, -1] for k, v in res.items()}, f_t).numpy()


def _push(buf: np.ndarray, new) -> None:
    """Shift buf [S, n, ...] one step to the past along axis 1 and write `new` at the end (in place)."""
    buf[:, :-1] = buf[:, 1:]
    buf[:, -1] = new


def measure_latency(model_dir: str | Path, store, n_symbols: int = 300, n_updates: int = 50, warmup: int = 5,
                    threads: int = 1, end=None) -> dict:
    """Latency (ms) of the live path of a student or trader folder on the store's last sessions (<= end).

    The last warmup + n_updates sessions are streamed one at a time after starting from the bars
    before them; symbols with a bar in every streamed session are used, cycled if the store has
    fewer than n_symbols. Returns p50 / p99 / mean / max (ms per update, after `warmup` updates),
    features_p50 (ms of the incremental feature step alone), n_symbols, n_updates, threads, kind,
    context_bars and params.
    """
    from quantlm.data.store import Store
    from quantlm.finetune.data import market_bars
    from quantlm.tokenize import KlineTokenizer

    model_dir = Path(model_dir)
    store = store if isinstance(store, Store) else Store(store)
    model, tok = load_scorer(model_dir), KlineTokenizer.load(model_dir / "tokenizer")
    bars, _ = market_bars(store, end=end)
    sessions = np.unique(bars["ts"].to_numpy())
    n_total = warmup + n_updates
    if len(sessions) <= n_total:
        raise ValueError(f"store has {len(sessions)} sessions, fewer than warmup + n_updates + 1 = {n_total + 1}")
    stream = bars[bars["ts"] >= sessions[-n_total]]
    hist = bars[bars["ts"] < sessions[-n_total]]
    need = 1 if isinstance(model, StudentMLP) else model.spec.window_bars
    full = stream.groupby("symbol").size()
    n_hist = hist.groupby("symbol").size()
    ok = sorted(s for s in full.index[full == n_total] if n_hist.get(s, 0) >= need)
    if not ok:
        raise ValueError(f"no symbol has a bar in each of the last {n_total} sessions and {need} bars before them")
    symbols = [str(ok[i % len(ok)]) for i in range(n_symbols)]
    cols = [c for c in ("open", "high", "low", "close", "volume", "amount", "adj_factor") if c in stream.columns]
    updates = []
    for ts, g in stream[stream["symbol"].isin(ok)].groupby("ts", sort=True):
        g = g.set_index(g["symbol"].astype(str)).loc[symbols]
        updates.append((ts, {c: g[c].to_numpy(np.float64) for c in cols}))
    scorer = LiveScorer(model, tok)
    scorer.start(hist, symbols)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    lat, feat_lat = [], []
    try:
        for ts, arrays in updates:
            t0 = time.perf_counter()
            scorer.update(arrays, ts)
            lat.append((time.perf_counter() - t0) * 1e3)
        probe = IncrementalFeatures(tok, scorer.inc.state.copy())  # the feature step alone, on the last bar again
        for _ in range(max(5, n_updates // 5)):
            t0 = time.perf_counter()
            probe.update(*(arrays[c] for c in ("open", "high", "low", "close", "volume")))
            feat_lat.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(old)
    x = np.asarray(lat[warmup:])
    return {"p50": float(np.percentile(x, 50)), "p99": float(np.percentile(x, 99)), "mean": float(x.mean()),
            "max": float(x.max()), "features_p50": float(np.median(feat_lat)), "n_symbols": n_symbols,
            "n_updates": n_updates, "threads": threads,
            "kind": "mlp" if isinstance(model, StudentMLP) else "trader", "context_bars": int(model.spec.window_bars),
            "params": num_params(model)}
