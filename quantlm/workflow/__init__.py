"""Workflows that compose the stages (data -> model -> backtest -> report)."""
