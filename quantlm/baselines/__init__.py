"""Baselines every model must beat; each returns a Scores table (symbol, ts, score).

- `benchmark(benchmark_bars)`: buy and hold of the benchmark (a BacktestResult, not Scores);
- `momentum(bars, window=20)`, `reversal(bars, window=5)`: past-return rules;
- `lightgbm_scores(bars, train_end, ...)`: LightGBM on Alpha158 factors, trained without look-ahead;
- `oracle(store)`: the synthetic market's expected returns (an upper bound).
`momentum_model`, `reversal_model`, `lightgbm_model` are the walk-forward `model_fn` versions.
"""

from quantlm.baselines.lgbm import (
    LightGBMScorer,
    fit_lightgbm,
    lightgbm_model,
    lightgbm_scores,
    make_dataset,
    training_frame,
)
from quantlm.baselines.simple import benchmark, momentum, momentum_model, oracle, reversal, reversal_model

__all__ = ["benchmark", "momentum", "reversal", "oracle", "lightgbm_scores", "lightgbm_model", "fit_lightgbm",
           "training_frame", "make_dataset", "LightGBMScorer", "momentum_model", "reversal_model"]
