"""Shared fixtures."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def make_bars(symbols=("600000.SH", "000001.SZ"), start="2023-01-02", periods=60, seed=0) -> pd.DataFrame:
    """Small random-walk daily bars in the canonical schema (business days)."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(start, periods=periods)
    frames = []
    for sym in symbols:
        close = 10 * np.exp(np.cumsum(rng.normal(0, 0.02, periods)))
        open_ = close * np.exp(rng.normal(0, 0.005, periods))
        high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, periods))
        low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, periods))
        volume = rng.integers(1_000, 100_000, periods).astype(float) * 100
        frames.append(pd.DataFrame({"symbol": sym, "ts": dates, "open": open_, "high": high, "low": low,
                                    "close": close, "volume": volume, "amount": volume * close}))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def bars() -> pd.DataFrame:
    return make_bars()


@pytest.fixture
def store(tmp_path):
    from quantlm.data.store import Store

    return Store(tmp_path / "store")
