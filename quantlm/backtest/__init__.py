"""Backtesting: market rules, costs, exchange, portfolio, strategies, engine (and metrics, reports).

    from quantlm.backtest import BacktestConfig, run_backtest
    result = run_backtest(scores, bars, BacktestConfig(market="cn", strategy="topk", topk=50, n_drop=5))

Names are imported lazily so `import quantlm.backtest` stays cheap (numba compiles on first use).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BacktestConfig": "engine", "BacktestResult": "engine", "run_backtest": "engine",
    "backtest_from_store": "engine", "read_signals": "signals", "BacktestConfigError": "engine",
    "MarketRules": "rules", "market_rules": "rules", "board_from_code": "rules",
    "CostModel": "costs", "cost_model": "costs",
    "Exchange": "exchange", "Portfolio": "portfolio",
    "TopkDropout": "strategies", "Threshold": "strategies", "TargetWeights": "strategies",
    "orders_from_targets": "strategies",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"quantlm.backtest.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'quantlm.backtest' has no attribute {name!r}")
