"""Stack the market GPT with what a quant already has: a point-in-time ridge blend of per-session ranks.

Inputs are Scores tables (symbol, ts, score): the primary market-GPT run, LightGBM on Alpha158,
reversal-5, momentum-20 (any subset, any names). Per session every input is rank-normalised within
the cross-section to [-1, 1] (`session_ranks`: average ranks, scaled so the lowest is -1 and the
highest +1; a symbol an input did not score gets 0, the middle). The stacked score is
sum_i w_i * rank_i.

Weights per walk-forward fold (`fit_weights`, `stack_scores`), point in time:

- the fit window of fold k is the sessions strictly before its test start whose evaluation label is
  already known then: a score at t is judged on the fill at t+1 and the fill at t+2
  (`features.labels.evaluation_labels`), so the last `label_sessions` (2) sessions before the test
  start are left out; of those, the last `window_sessions` (default 250, about a year) that every
  input scored;
- inputs only have out-of-sample scores over the test periods, so the window is made of earlier
  folds' test sessions (the "last validation block" of fold k); fold 0 has none and takes the first
  input (the primary model) alone: weight 1, the others 0 (`StackFold.fitted = False`). Equal
  weights would be a worse prior: momentum and reversal rules can point in opposite directions;
- w = argmin sum over (session, symbol) of (rank(label) - sum_i w_i rank_i)^2 + ridge * n * |w|^2,
  n the number of rows (closed form). Ranks have variance ~1/3, so `ridge` is measured against
  that: the default 0.01 only steadies nearly collinear inputs; a large ridge (>> 1/3) turns the fit
  into weights proportional to each input's own covariance with the label (IC weighting, blind to
  overlaps between inputs). On the demo market (2022-2024 folds) 0.01 gave RankIC 0.0576, 1.0 gave 0.0560.

`what_each_part_adds` reports, on the test sessions: the mean daily RankIC of each input alone, of
the stack, and of the stack refitted without each input (the drop in RankIC is what that input adds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

LABEL_SESSIONS = 2  # a score at t is judged on the fills at t+1 and t+2: its label is known 2 sessions later
WINDOW_SESSIONS = 250  # fit on (up to) the last ~year of earlier out-of-sample sessions
RIDGE = 0.01


@dataclass
class StackFold:
    """The weights used on one fold's test sessions and how they were fitted."""

    fold: int
    test_start: str
    test_end: str
    weights: dict[str, float]
    fitted: bool  # False: no earlier out-of-sample session with known labels (the first input alone)
    fit_start: str | None = None
    fit_end: str | None = None
    fit_sessions: int = 0
    fit_rows: int = 0


def session_ranks(scores: pd.DataFrame, column: str = "score") -> pd.Series:
    """Per-session cross-sectional rank of `column` scaled to [-1, 1] (average ranks; one symbol: 0),
    indexed by (ts, symbol). Rows with NaN are dropped."""
    s = scores[["ts", "symbol", column]].dropna(subset=[column])
    s = s.assign(ts=pd.DatetimeIndex(s["ts"]), symbol=s["symbol"].astype(str))
    rank = s.groupby("ts")[column].rank(method="average")
    count = s.groupby("ts")[column].transform("size").astype("float64")
    scaled = np.where(count > 1, 2.0 * (rank - 1.0) / (count - 1.0).clip(lower=1.0) - 1.0, 0.0)
    return pd.Series(scaled, index=pd.MultiIndex.from_arrays([s["ts"], s["symbol"]], names=["ts", "symbol"]))


def rank_panel(inputs: Mapping[str, pd.DataFrame], labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """A frame indexed by (ts, symbol) with one column of session ranks per input (0 where an input has
    no score for a symbol it could have scored: the middle rank), plus `label` (rank of the label) when
    labels are given; a row exists where at least one input scored."""
    if not inputs:
        raise ValueError("stacking needs at least one input")
    ranks = {name: session_ranks(df) for name, df in inputs.items()}
    return _panel(ranks, None if labels is None else session_ranks(labels, "label"))


def _panel(ranks: Mapping[str, pd.Series], label_ranks: pd.Series | None) -> pd.DataFrame:
    """`rank_panel` from ranks already computed (`session_ranks` of each input and of the labels)."""
    for name, col in ranks.items():
        if not col.index.is_unique:
            dup = col.index[col.index.duplicated()][0]
            raise ValueError(f"stack input '{name}' has more than one score for {dup[1]} on {dup[0]:%Y-%m-%d}")
    panel = pd.concat(ranks, axis=1).sort_index()
    # sessions an input did not score at all stay NaN (it had no model then); missing symbols -> 0
    ts = panel.index.get_level_values(0)
    for name, col in ranks.items():
        values = panel[name].to_numpy(dtype="float64", copy=True)
        values[ts.isin(col.index.get_level_values(0).unique()) & np.isnan(values)] = 0.0
        panel[name] = values
    if label_ranks is not None:
        panel["label"] = label_ranks.reindex(panel.index)
    return panel


def _solve(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    n = max(len(y), 1)
    gram = x.T @ x + ridge * n * np.eye(x.shape[1])
    return np.linalg.solve(gram, x.T @ y)


def fit_weights(panel: pd.DataFrame, names: Sequence[str], ridge: float = RIDGE) -> np.ndarray:
    """Ridge weights of `names` on the panel's rows that have a label and every input (float64 [n])."""
    use = panel.dropna(subset=[*names, "label"])
    return _solve(use[list(names)].to_numpy("float64"), use["label"].to_numpy("float64"), ridge)


def fit_window(sessions: pd.DatetimeIndex, test_start: pd.Timestamp, label_sessions: int = LABEL_SESSIONS,
               window_sessions: int = WINDOW_SESSIONS) -> pd.DatetimeIndex:
    """The sessions whose labels are known before `test_start` (the last `window_sessions` of them).

    `sessions` is the market's calendar (sorted); a session t qualifies when t plus `label_sessions`
    sessions is still strictly before `test_start`."""
    before = sessions[sessions < pd.Timestamp(test_start)]
    known = before[: max(len(before) - label_sessions, 0)]
    return known[-window_sessions:] if window_sessions > 0 else known


def stack_scores(inputs: Mapping[str, pd.DataFrame], labels: pd.DataFrame, folds: Sequence,
                 sessions: pd.DatetimeIndex | None = None, ridge: float = RIDGE,
                 window_sessions: int = WINDOW_SESSIONS, label_sessions: int = LABEL_SESSIONS,
                 _ranks: tuple[Mapping[str, pd.Series], pd.Series] | None = None
                 ) -> tuple[pd.DataFrame, list[StackFold]]:
    """The stacked Scores table over every fold's test sessions, and the weights per fold.

    inputs: {name: Scores}, the primary model first (it alone scores folds without a fit window); labels: (symbol, ts, label) as `evaluation_labels`; folds: objects with
    index, test_start, test_end (`quantlm.backtest.walkforward.Fold`); sessions: the market calendar
    (default: the sessions of `labels`). Fold k's weights use only rows with ts before its test start
    whose labels are known then (`fit_window`), so scores or labels from its test start on cannot move them.
    """
    names = list(inputs)
    panel = rank_panel(inputs, labels) if _ranks is None else _panel({n: _ranks[0][n] for n in names}, _ranks[1])
    calendar = pd.DatetimeIndex(sorted(pd.unique(pd.DatetimeIndex(labels["ts"])))) if sessions is None \
        else pd.DatetimeIndex(sessions)
    ts = panel.index.get_level_values(0)
    out, report = [], []
    for fold in folds:
        start, end = pd.Timestamp(fold.test_start), pd.Timestamp(fold.test_end)
        window = fit_window(calendar, start, label_sessions, window_sessions=0)
        train = panel[ts.isin(window)].dropna(subset=[*names, "label"])
        kept = pd.DatetimeIndex(sorted(train.index.get_level_values(0).unique()))[-window_sessions:]
        train = train[train.index.get_level_values(0).isin(kept)]
        if len(train):
            w = _solve(train[names].to_numpy("float64"), train["label"].to_numpy("float64"), ridge)
            info = StackFold(int(fold.index), f"{start:%Y-%m-%d}", f"{end:%Y-%m-%d}", dict(zip(names, map(float, w))),
                             True, f"{kept[0]:%Y-%m-%d}", f"{kept[-1]:%Y-%m-%d}", len(kept), len(train))
        else:
            w = np.zeros(len(names))
            w[0] = 1.0
            info = StackFold(int(fold.index), f"{start:%Y-%m-%d}", f"{end:%Y-%m-%d}",
                             dict(zip(names, map(float, w))), False)
        test = panel[(ts >= start) & (ts <= end)][names]
        test = test.dropna(how="all")
        score = test.fillna(0.0).to_numpy("float64") @ w
        idx = test.index
        out.append(pd.DataFrame({"symbol": idx.get_level_values(1), "ts": idx.get_level_values(0), "score": score}))
        report.append(info)
    cols = {"symbol": pd.Series(dtype=str), "ts": pd.Series(dtype="datetime64[ns]"), "score": pd.Series(dtype=float)}
    scores = pd.concat(out, ignore_index=True) if out else pd.DataFrame(cols)
    return scores.sort_values(["ts", "symbol"], kind="stable").reset_index(drop=True), report


def mean_rank_ic(scores: pd.DataFrame, labels: pd.DataFrame, sessions: pd.DatetimeIndex | None = None) -> float:
    """Mean over sessions of the Spearman correlation between score and label (sessions with >= 5 pairs)."""
    m = scores[["symbol", "ts", "score"]].merge(labels[["symbol", "ts", "label"]], on=["symbol", "ts"]).dropna()
    if sessions is not None:
        m = m[pd.DatetimeIndex(m["ts"]).isin(sessions)]
    m = m.assign(rs=m.groupby("ts")["score"].rank(), rl=m.groupby("ts")["label"].rank())
    m = m[m.groupby("ts")["score"].transform("size") >= 5]
    if len(m) == 0:
        return math.nan
    daily = m.groupby("ts")[["rs", "rl"]].corr().xs("rs", level=1)["rl"]
    return float(daily.mean())


def what_each_part_adds(inputs: Mapping[str, pd.DataFrame], labels: pd.DataFrame, folds: Sequence,
                        sessions: pd.DatetimeIndex | None = None, **fit: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The stacked scores (`stack_scores`) and the RankIC on the test sessions of: each input alone,
    the stack, and the stack without each input.

    The report is {"alone": {name: ic}, "stack": ic, "without": {name: ic of the stack refitted
    without it}, "adds": {name: stack ic - without ic}, "folds": [StackFold as dicts]} (ICs: mean
    daily Spearman over the sessions the stack scored)."""
    if not inputs:
        raise ValueError("stacking needs at least one input")
    ranks = ({name: session_ranks(df) for name, df in inputs.items()}, session_ranks(labels, "label"))
    stacked, report = stack_scores(inputs, labels, folds, sessions, _ranks=ranks, **fit)
    test = pd.DatetimeIndex(sorted(pd.unique(pd.DatetimeIndex(stacked["ts"]))))
    out: dict[str, Any] = {"alone": {n: mean_rank_ic(df, labels, test) for n, df in inputs.items()},
                           "stack": mean_rank_ic(stacked, labels, test), "without": {}, "adds": {}}
    if len(inputs) > 1:
        for name in inputs:
            rest = {k: v for k, v in inputs.items() if k != name}
            ic = mean_rank_ic(stack_scores(rest, labels, folds, sessions, _ranks=ranks, **fit)[0], labels, test)
            out["without"][name] = ic
            out["adds"][name] = out["stack"] - ic
    out["folds"] = [asdict(f) for f in report]
    return stacked, out


__all__ = ["LABEL_SESSIONS", "RIDGE", "WINDOW_SESSIONS", "StackFold", "fit_weights", "fit_window", "mean_rank_ic",
           "rank_panel", "session_ranks", "stack_scores", "what_each_part_adds"]
