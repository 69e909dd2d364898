"""Running a trader over stored bars: head outputs per bar, trading scores, rank IC.

`score_model(model_dir, store, start, end)` is what the workflow and `quantlm finetune score` call:
the model reads bars (and texts) up to `end` only, and every scored bar gets at least `warm` bars of
context (see `quantlm.finetune.data.scoring_windows`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from quantlm.finetune.data import TraderData, scoring_windows
from quantlm.finetune.model import TraderModel, numpy_batch
from quantlm.finetune.student import StudentMLP, load_scorer, predict_student_rows


@torch.no_grad()
def predict_rows(model: TraderModel, data: TraderData, rows: np.ndarray, warm: int = 16, batch_size: int = 128,
                 window: int | None = None, keep: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Score the flat `rows` of `data`: {"score": [len(rows)], and any of keep ("direction", "quantiles",
    "rank", "bar_hidden") as [len(rows), ...]}; rows are returned in the order asked. A distilled
    `StudentMLP` is scored row by row from its own last bars (warm / window do not apply)."""
    if isinstance(model, StudentMLP):
        return predict_student_rows(model, data, rows, keep=keep)
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    window = window or model.spec.window_bars
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    wins = scoring_windows(data, sorted_rows, window, min(warm, window - 1))
    out_rows: list[np.ndarray] = []
    outs: dict[str, list[np.ndarray]] = {k: [] for k in ("score", *keep)}
    by_len: dict[int, list[tuple[int, int, int, int]]] = {}
    for w in wins:
        by_len.setdefault(w[1], []).append(w)
    for length, group in by_len.items():
        for a in range(0, len(group), batch_size):
            chunk = group[a:a + batch_size]
            batch = numpy_batch(data.gather(np.array([w[0] for w in chunk]), length, model.trunk.special_ids["bos"]),
                                device)
            res = model(batch)
            score = model.score(res, batch["features"]).cpu().numpy()
            host = {k: res[k].float().cpu().numpy() for k in keep}
            for i, (st, _, lo, hi) in enumerate(chunk):
                sl = slice(lo - st, hi - st + 1)
                out_rows.append(np.arange(lo, hi + 1))
                outs["score"].append(score[i, sl])
                for k in keep:
                    host_k = host[k]
                    outs[k].append(host_k[i, sl])
    model.train(was_training)
    all_rows = np.concatenate(out_rows) if out_rows else np.zeros(0, np.int64)
    pos = pd.Index(all_rows).get_indexer(rows)
    if (pos < 0).any():
        raise RuntimeError("internal: some asked rows were not scored")
    return {k: np.concatenate(v)[pos] for k, v in outs.items()}


def session_rank_ics(score: np.ndarray, label: np.ndarray, session: np.ndarray, min_count: int = 5) -> pd.Series:
    """Spearman correlation of score and label per session (sessions with >= `min_count` pairs; NaN
    labels dropped), indexed by session; empty on a store without cross-sections."""
    df = pd.DataFrame({"s": score, "y": label, "t": session}).dropna()
    df = df[df.groupby("t")["s"].transform("size") >= min_count]
    if len(df) == 0:
        return pd.Series(dtype="float64")
    g = df.groupby("t")
    df = df.assign(rs=g["s"].rank(), ry=g["y"].rank())
    return df.groupby("t")[["rs", "ry"]].corr().unstack().iloc[:, 1].rename("rank_ic")


def rank_ic(score: np.ndarray, label: np.ndarray, session: np.ndarray, min_count: int = 5) -> float:
    """Mean over sessions of the Spearman correlation between score and label (NaN labels dropped).

    A store too small for cross-sections (no session with `min_count` pairs, e.g. one index series)
    gets the pooled time-series Spearman correlation over all pairs instead (NaN under 20 pairs), so
    model selection still has a signal there; `backtest.metrics` reports the same kind of IC.
    """
    df = pd.DataFrame({"s": score, "y": label, "t": session}).dropna()
    if len(df) == 0:
        return float("nan")
    if not (df.groupby("t")["s"].transform("size") >= min_count).any():
        if len(df) < 20 or df["s"].nunique() < 2 or df["y"].nunique() < 2:
            return float("nan")
        return float(df["s"].rank().corr(df["y"].rank()))
    return float(session_rank_ics(score, label, session, min_count).mean())


def load_for_scoring(model_dir: str | Path, store, end=None, bars: pd.DataFrame | None = None,
                     ) -> tuple[TraderModel | StudentMLP, TraderData]:
    """The trader (or distilled student) and its inputs for every bar of the store up to `end`."""
    from quantlm.features.targets import TargetConfig
    from quantlm.finetune.data import build_trader_data
    from quantlm.tokenize import KlineTokenizer

    model_dir = Path(model_dir)
    model = load_scorer(model_dir)
    tok = KlineTokenizer.load(model_dir / "tokenizer")
    spec = model.spec
    data = build_trader_data(store, tok, TargetConfig(horizons=spec.horizons), text=spec.d_text > 0,
                             text_half_life=spec.text_half_life, market=spec.market, end=end, bars=bars,
                             factors=getattr(spec, "factors", "none"))
    return model, data


def score_model(model_dir: str | Path, store, start, end, warm: int = 16, batch_size: int = 128) -> pd.DataFrame:
    """Scores (ts, symbol, score) for every tradable bar with start <= ts <= end; higher = buy.

    The score at t uses bars up to t's close and texts visible at t; it is meant for a trade at the
    open of t+1 (the backtest's timing convention).
    """
    from quantlm.data.store import Store

    store = store if isinstance(store, Store) else Store(store)
    model, data = load_for_scoring(model_dir, store, end=end)
    ts = data.ts()
    rows = np.flatnonzero((ts >= pd.Timestamp(start).value) & (ts <= pd.Timestamp(end).value))
    if len(rows) == 0:
        raise ValueError(f"no bars between {start} and {end} in store {store.root}")
    with torch.inference_mode():
        res = predict_rows(model, data, rows, warm=warm, batch_size=batch_size)
    sym = np.asarray(data.symbols, dtype=object)[data.symbol_of()[rows]]
    return pd.DataFrame({"ts": pd.DatetimeIndex(ts[rows]).as_unit("ns"), "symbol": sym,
                         "score": res["score"].astype(np.float64)}).sort_values(["ts", "symbol"]).reset_index(drop=True)
