"""How well tokens reconstruct bars on held-out data (bars after the fit period).

Two views, both as MAE in units of the held-out close-to-close log-return std (log volume in
natural-log units):
- teacher-forced: each bar decoded from the true state after the previous bar (pure quantisation
  error; also the coarse-only error, with the fine token unknown);
- free-running: `decode(encode(bars), state)` from the state at the start of the held-out period,
  the state advanced with decoded bars only (what a model's sampled path goes through).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantlm.tokenize.kline import FEATURE_NAMES, KlineTokenizer, TokenizerState

_F = {name: i for i, name in enumerate(FEATURE_NAMES)}


def teacher_forced_errors(tok: KlineTokenizer, bars: pd.DataFrame, start) -> dict[str, float]:
    """Per-bar quantisation error of bars with ts > start (features use their full causal history)."""
    start = pd.Timestamp(start)
    rows = tok._prepare(bars, single=False)
    feat, ids, _ = tok._run(rows, want_feat=True, want_ids=True)
    held = rows.cols["ts"] > start.value
    feat, ids = feat[held], ids[held]
    q = tok.dequantise(ids)
    sig = np.exp(feat[:, _F["logsig"]])
    ret = feat[:, _F["ret"]] * sig
    std = ret.std()
    out = {axis: float(np.mean(np.abs(q[axis] - feat[:, _F[axis]]) * sig) / std) for axis in ("ret", "gap", "upper", "lower")}
    out["logvol"] = float(np.mean(np.abs(q["vol"] - feat[:, _F["vol"]])))
    # coarse only: the return represented by the mean over its fine sub-bins
    rc, _, rf = tok.shape[:3]
    coarse_rep = tok.reps["ret"].reshape(rc, rf).mean(axis=1)
    r_coarse = coarse_rep[(ids[:, 0] - tok.coarse_offset) // tok.shape[1]]
    out["ret_coarse_only"] = float(np.mean(np.abs(r_coarse - feat[:, _F["ret"]]) * sig) / std)
    out["ret_std"] = float(std)
    out["n_bars"] = int(held.sum())
    return out


def free_running_errors(tok: KlineTokenizer, bars: pd.DataFrame, start, window: int | None = None,
                        max_symbols: int | None = None) -> dict[str, float]:
    """decode(encode(held-out bars)) compared with the real bars, for bars with ts > start.

    Each symbol's held-out bars are cut into windows of `window` bars (None: one window); each window
    is decoded from the true state before it, and then only from decoded bars (like a sampled path
    of that horizon). Errors in the scale (sigma, volume level) and the price level compound along a
    window as random walks, so long windows drift more than short ones.
    """
    start = pd.Timestamp(start)
    errs: dict[str, list[np.ndarray]] = {k: [] for k in ("ret", "gap", "upper", "lower", "logvol", "close")}
    rets = []
    for k, (_, one) in enumerate(bars.groupby("symbol", sort=True)):
        if max_symbols is not None and k >= max_symbols:
            break
        rows = tok._prepare(one, single=True)
        feat, ids, _ = tok._run(rows, want_feat=True, want_ids=True)
        o, h, lo, c, v = (rows.cols[x] for x in ("open", "high", "low", "close", "volume"))
        first = int(np.searchsorted(rows.cols["ts"], start.value, side="right"))
        first = max(first, 1)  # the first bar of a symbol has no state before it
        n = len(c)
        w = n if window is None else window
        for s in range(first, n, w):
            e = min(s + w, n)
            state = TokenizerState(last_close=c[s - 1], var=float(np.exp(2.0 * feat[s, _F["logsig"]])),
                                   log_volume_level=float(np.log1p(v[s]) - feat[s, _F["vol"]]))
            dec = tok.decode(ids[s:e], state)
            do, dh, dl, dc, dv = (dec[x].to_numpy() for x in ("open", "high", "low", "close", "volume"))
            prev, dprev = c[s - 1:e - 1], np.r_[c[s - 1], dc[:-1]]
            oo, hh, ll, cc = o[s:e], h[s:e], lo[s:e], c[s:e]
            r = np.log(cc / prev)
            rets.append(r)
            errs["ret"].append(np.abs(dec["log_return"].to_numpy() - r))
            errs["gap"].append(np.abs(np.log(do / dprev) - np.log(oo / prev)))
            errs["upper"].append(np.abs(np.log(dh / np.maximum(do, dc)) - np.log(hh / np.maximum(oo, cc))))
            errs["lower"].append(np.abs(np.log(np.minimum(do, dc) / dl) - np.log(np.minimum(oo, cc) / ll)))
            errs["logvol"].append(np.abs(np.log1p(dv) - np.log1p(v[s:e])))
            errs["close"].append(np.abs(np.log(dc / cc)))  # drift of the decoded price level
    std = np.concatenate(rets).std()
    out = {k: float(np.concatenate(errs[k]).mean() / std) for k in ("ret", "gap", "upper", "lower")}
    out["logvol"] = float(np.concatenate(errs["logvol"]).mean())
    out["log_close_drift"] = float(np.concatenate(errs["close"]).mean())
    out["ret_std"] = float(std)
    out["n_bars"] = int(sum(len(r) for r in rets))
    return out
