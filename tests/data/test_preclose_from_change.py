"""East Money / AkShare files without 前收盘价: the previous close comes from 涨跌额 or 涨跌幅."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlm.data.importers import import_paths
from quantlm.data.store import Store


def east_money(closes, preclose, pct_only: bool) -> pd.DataFrame:
    closes, preclose = np.asarray(closes), np.asarray(preclose)
    df = pd.DataFrame({"日期": pd.bdate_range("2024-06-03", periods=len(closes)).strftime("%Y-%m-%d"),
                       "开盘": closes, "收盘": closes, "最高": closes, "最低": closes, "成交量": 1000.0,
                       "成交额": 1000.0 * 100 * closes, "涨跌幅": np.round((closes / preclose - 1) * 100, 2)})
    if not pct_only:
        df["涨跌额"] = np.round(closes - preclose, 2)
    return df


@pytest.mark.parametrize("pct_only", [False, True])
def test_dividend_found_from_change_columns_without_noise(tmp_path, pct_only):
    # an expensive stock: 涨跌幅 rounded to 0.01% leaves ~0.09 CNY of doubt on a 1,800 CNY close
    rng = np.random.default_rng(0)
    closes = np.round(1800 * np.exp(np.cumsum(rng.normal(0, 0.01, 30))), 2)
    preclose = np.r_[closes[0], closes[:-1]]
    preclose[20] = np.round(closes[19] - 30.0, 2)  # a 30 CNY cash dividend, ex on day 21
    east_money(closes, preclose, pct_only).to_csv(tmp_path / "sh600519.csv", index=False)
    store = Store(tmp_path / "store")
    import_paths([tmp_path / "sh600519.csv"], store, market="cn")
    f = store.bars("600519.SH")["adj_factor"].to_numpy()
    assert (f[:20] == 1.0).all() and len(np.unique(f)) == 2  # one action, no rounding noise
    assert f[20] == pytest.approx(closes[19] / preclose[20], rel=1e-4 if pct_only else 1e-9)
