"""LightGBM on Alpha158 factors: the classic Qlib baseline, trained without look-ahead.

Training rows are (symbol, t) with factors at t and the evaluation label of t
(open(t+2)/open(t+1) - 1 by default). A row is used only if its label is fully known by
`train_end`: labels are built from bars truncated at `train_end`, so any label that needs a later
bar is NaN and dropped. The label is z-scored across symbols per time stamp (a session; a bar for
intraday data) before training (as Qlib's CSZScoreNorm); the model predicts that relative label,
which is what top-k trading uses. Intraday bars work as daily ones: factors, labels and the
cross-sections are all per bar.
Deterministic for a given seed (LightGBM `deterministic=True`, fixed thread count). Within a
process, the factors and the binned Dataset of the same training bars are built once and shared by
all seeds (walk-forward runs a fold's seeds in one process).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from quantlm.features.factors import alpha158
from quantlm.features.labels import forward_returns

_FEATURE_CACHE: dict[tuple, pd.DataFrame] = {}
_FEATURE_CACHE_SIZE = 2


def cached_alpha158(bars: pd.DataFrame) -> pd.DataFrame:
    """alpha158(bars), remembered for the last few distinct bars frames (keyed by a content hash).

    Walk-forward calls a model_fn once per seed on the same fold's bars; the factors do not depend
    on the seed, so they are computed once per fold and process.
    """
    key = (len(bars), tuple(bars.columns), int(pd.util.hash_pandas_object(bars, index=False).sum()))
    if key not in _FEATURE_CACHE:
        if len(_FEATURE_CACHE) >= _FEATURE_CACHE_SIZE:
            _FEATURE_CACHE.pop(next(iter(_FEATURE_CACHE)))
        _FEATURE_CACHE[key] = alpha158(bars)
    return _FEATURE_CACHE[key]


DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "regression",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "max_depth": 6,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 10.0,
    "verbosity": -1,
    "deterministic": True,
    "force_row_wise": True,
}


def training_frame(bars: pd.DataFrame, train_end, features: pd.DataFrame | None = None, horizon: int = 1,
                   lag: int = 1, train_start=None) -> tuple[pd.DataFrame, pd.Series]:
    """(X, y) of rows whose label is known by train_end; y is the label z-scored per time stamp.

    A store too small to rank (fewer than `metrics.MIN_CROSS_SECTION` symbols on most time stamps, e.g. one index series) gets
    the label z-scored over the whole training period instead: a time-series target for a timing book."""
    train_end = pd.Timestamp(train_end)
    known = bars[bars["ts"] <= train_end]
    if train_start is not None:
        known = known[known["ts"] >= pd.Timestamp(train_start)]
    labels = forward_returns(known, horizon=horizon, lag=lag)
    labels = labels[np.isfinite(labels["label"])]
    g = labels.groupby("ts")["label"]
    from quantlm.backtest.metrics import MIN_CROSS_SECTION

    if (g.transform("size") >= MIN_CROSS_SECTION).mean() >= 0.5:  # the same cross-section the IC needs
        std = g.transform("std")
        labels = labels.assign(label=(labels["label"] - g.transform("mean")) / std.where(std > 0))
    else:
        std = labels["label"].std()
        labels = labels.assign(label=(labels["label"] - labels["label"].mean()) / (std if std > 0 else np.nan))
    labels = labels[np.isfinite(labels["label"])]
    feats = features if features is not None else cached_alpha158(known)
    idx = pd.MultiIndex.from_frame(labels[["symbol", "ts"]])
    X = feats.reindex(idx)
    return X, pd.Series(labels["label"].to_numpy(), index=idx, name="label")


def _dataset_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """The parameters that shape a Dataset's binning (kept seed-independent: data_random_seed 0)."""
    p = {**DEFAULT_PARAMS, **(params or {})}
    return {"max_bin": p.get("max_bin", 255), "data_random_seed": 0, "verbosity": -1,
            "min_data_in_bin": p.get("min_data_in_bin", 3)}


def make_dataset(X: pd.DataFrame, y: pd.Series, params: dict[str, Any] | None = None):
    """A constructed lightgbm.Dataset for (X, y); reusable across seeds (binning is seed-independent)."""
    import lightgbm as lgb

    if len(X) == 0:
        raise ValueError("no training rows: the training period holds no bars with a known label")
    data = lgb.Dataset(X.to_numpy(dtype=np.float32), label=y.to_numpy(dtype=np.float64),
                       feature_name=[str(c) for c in X.columns], params=_dataset_params(params), free_raw_data=True)
    return data.construct()


def fit_lightgbm(X: pd.DataFrame | None, y: pd.Series | None, seed: int = 0, num_boost_round: int = 200,
                 params: dict[str, Any] | None = None, num_threads: int = 1, dataset=None):
    """Train a LightGBM regressor; deterministic for a given seed and thread count.

    The seed drives bagging, feature sampling and tie-breaking (bagging_seed, feature_fraction_seed,
    extra_seed, drop_seed); the Dataset's binning uses data_random_seed 0 so one Dataset (`dataset`,
    from `make_dataset`) can serve every seed.
    """
    import lightgbm as lgb

    data = dataset if dataset is not None else make_dataset(X, y, params)
    p = {**DEFAULT_PARAMS, **(params or {}), **_dataset_params(params), "num_threads": num_threads,
         "bagging_seed": seed, "feature_fraction_seed": seed, "extra_seed": seed, "drop_seed": seed}
    p.pop("seed", None)
    return lgb.train(p, data, num_boost_round=num_boost_round)


_DATASET_CACHE: dict[tuple, tuple[list[str], Any]] = {}


def _cached_dataset(train_bars: pd.DataFrame, horizon: int, params: dict[str, Any] | None) -> tuple[list[str], Any]:
    """(feature columns, constructed Dataset) of the training bars, remembered for the last bars seen."""
    key = (len(train_bars), int(pd.util.hash_pandas_object(train_bars, index=False).sum()), horizon,
           tuple(sorted(_dataset_params(params).items())))
    if key not in _DATASET_CACHE:
        _DATASET_CACHE.clear()
        train_end = pd.Timestamp(train_bars["ts"].max())
        X, y = training_frame(train_bars, train_end, horizon=horizon)
        _DATASET_CACHE[key] = (list(X.columns), make_dataset(X, y, params))
    return _DATASET_CACHE[key]


class LightGBMScorer:
    """Scores bars with a trained booster: computes Alpha158 on the given bars and predicts."""

    def __init__(self, booster, columns: list[str], num_threads: int = 1) -> None:
        self.booster, self.columns, self.num_threads = booster, columns, num_threads

    def __call__(self, bars: pd.DataFrame, features: pd.DataFrame | None = None) -> pd.DataFrame:
        feats = features if features is not None else cached_alpha158(bars)
        pred = self.booster.predict(feats[self.columns].to_numpy(dtype=np.float32), num_threads=self.num_threads)
        index = feats.index
        return pd.DataFrame({"symbol": index.get_level_values("symbol").to_numpy(),
                             "ts": index.get_level_values("ts").to_numpy(), "score": pred.astype("float64")})


def lightgbm_model(train_bars: pd.DataFrame, seed: int = 0, num_boost_round: int = 200,
                   params: dict[str, Any] | None = None, num_threads: int = 1, horizon: int = 1) -> LightGBMScorer:
    """Walk-forward model_fn: train on `train_bars` (labels known within them) and return a scorer."""
    columns, dataset = _cached_dataset(train_bars, horizon, params)
    booster = fit_lightgbm(None, None, seed=seed, num_boost_round=num_boost_round, params=params,
                           num_threads=num_threads, dataset=dataset)
    return LightGBMScorer(booster, columns, num_threads=num_threads)


def lightgbm_scores(bars: pd.DataFrame, train_end, test_start=None, test_end=None, seed: int = 0,
                    num_boost_round: int = 200, params: dict[str, Any] | None = None, num_threads: int = 1,
                    horizon: int = 1, features: pd.DataFrame | None = None, train_start=None) -> pd.DataFrame:
    """Train on rows whose label ends by `train_end`, then score sessions in [test_start, test_end].

    test_start defaults to the first session after train_end, test_end to the last session.
    features: precomputed `alpha158(bars)` (reused for training and scoring; factors are causal,
    so computing them on the full bars equals computing them on the training bars).
    """
    feats = features if features is not None else alpha158(bars)
    X, y = training_frame(bars, train_end, features=feats, horizon=horizon, train_start=train_start)
    booster = fit_lightgbm(X, y, seed=seed, num_boost_round=num_boost_round, params=params, num_threads=num_threads)
    ts = feats.index.get_level_values("ts")
    start = pd.Timestamp(test_start) if test_start is not None else None
    keep = ts > pd.Timestamp(train_end) if start is None else ts >= start
    if test_end is not None:
        keep &= ts <= pd.Timestamp(test_end)
    scorer = LightGBMScorer(booster, list(X.columns), num_threads=num_threads)
    return scorer(bars, features=feats[keep])
