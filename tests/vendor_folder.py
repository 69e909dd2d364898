"""A folder of A-share daily files as users hold them, for end-to-end tests (nothing downloaded).

Three vendor layouts mixed in one folder: full Chinese headers with a note line above the header in
GBK (股票代码 ... 前收盘价 ... 总市值, newest row first), East Money / AkShare short headers with volume
in lots and the code in the file name, and Baostock (sh.600000, preclose, tradestatus, isST). Prices
are RAW: cash dividends and bonus issues show up only as a previous close (前收盘价 / preclose) below
the day before's close, as in real vendor files. One stock is *ST for a span, one lists mid-sample
(name N... on its first day), some days are suspended, and a CSI 300 index file is included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

STOCKS = [("600000.SH", "浦发银行"), ("600519.SH", "贵州茅台"), ("000651.SZ", "格力电器"), ("000001.SZ", "平安银行"),
          ("300750.SZ", "宁德时代"), ("688981.SH", "中芯国际"), ("601318.SH", "中国平安"), ("002594.SZ", "比亚迪"),
          ("600036.SH", "招商银行"), ("000858.SZ", "五粮液"), ("300059.SZ", "东方财富"), ("600585.SH", "海螺水泥")]


@dataclass
class VendorStock:
    symbol: str
    name: str
    bars: pd.DataFrame  # ts, open, high, low, close, preclose, volume (shares), amount, name, status, is_st
    adj_factor: np.ndarray  # the forward factor the preclose column implies (for checks)


def _one_stock(symbol: str, name: str, dates: pd.DatetimeIndex, market: np.ndarray, rng: np.random.Generator,
               bonus: bool, st_span: tuple[int, int] | None, list_at: int) -> VendorStock:
    n = len(dates)
    ret = np.clip(market + rng.normal(0.0003, 0.014, n), -0.095, 0.095)
    adj_close = 20 * np.exp(np.cumsum(np.log1p(ret)))
    step = np.ones(n)
    for year in sorted(set(dates.year)):
        in_year = np.flatnonzero((dates.year == year) & (dates.month == 6))
        if len(in_year) and in_year[0] > list_at + 5:
            i = int(rng.choice(in_year))
            step[i] *= 1.0 / (1.0 - rng.uniform(0.01, 0.03))  # cash dividend, 1-3% of the price
            if bonus and year == dates.year[n // 2]:
                step[i] *= 2.0  # 10-for-10 bonus issue on the same ex-date
    factor = np.cumprod(step)
    status = np.ones(n, dtype=int)
    quiet = np.flatnonzero((np.arange(n) > list_at + 10) & (step == 1.0) & (np.r_[step[1:], 1.0] == 1.0))
    suspended = np.sort(rng.choice(quiet, 3, replace=False))
    status[suspended] = 0  # suspended days: no trade, the price stands still
    close = np.round(adj_close / factor, 2)
    for i in suspended:
        close[i] = close[i - 1]
    preclose = np.r_[close[0], np.round(close[:-1] / step[1:], 2)]
    gap = rng.normal(0, 0.004, n)
    open_ = np.where(status == 1, np.round(preclose * (1 + gap), 2), close)
    high = np.round(np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n) * status), 2)
    low = np.round(np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n) * status), 2)
    volume = np.round(rng.lognormal(15, 0.5, n) / 100) * 100 * status
    names = np.full(n, name, dtype=object)
    is_st = np.zeros(n, dtype=bool)
    if st_span is not None:
        a, b = st_span
        names[a:b] = "*ST" + name[:2]
        is_st[a:b] = True
    if list_at > 0:
        names[list_at] = "N" + name[:3]
    bars = pd.DataFrame({"ts": dates, "open": open_, "high": high, "low": low, "close": close, "preclose": preclose,
                         "volume": volume, "amount": np.round(volume * (open_ + close) / 2, 2), "name": names,
                         "status": status, "is_st": is_st}).iloc[list_at:].reset_index(drop=True)
    bars.loc[0, "preclose"] = bars.loc[0, "open"]
    return VendorStock(symbol, name, bars, factor[list_at:] / factor[list_at])


def make_vendor_folder(folder: Path, start: str = "2019-01-02", end: str = "2021-06-30", seed: int = 0,
                       n_stocks: int = 12) -> dict[str, VendorStock]:
    """Write the folder; returns what was written per symbol (with the implied adj_factor)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(start, end)
    market = rng.normal(0.0002, 0.01, len(dates))
    out: dict[str, VendorStock] = {}
    for k, (symbol, name) in enumerate(STOCKS[:n_stocks]):
        st_span = (200, 320) if k == 3 else None
        list_at = len(dates) // 3 if k == 6 else 0
        out[symbol] = _one_stock(symbol, name, dates, market, rng, bonus=k % 3 == 1, st_span=st_span, list_at=list_at)
    for k, (symbol, s) in enumerate(out.items()):
        b = s.bars
        code, exch = symbol.split(".")
        if k % 3 == 0:  # full Chinese headers, GBK, a note line, newest first; suspended days missing
            live = b[b["status"] == 1]
            df = pd.DataFrame({"股票代码": f"'{code}" if k == 0 else symbol, "股票名称": live["name"],
                               "交易日期": live["ts"].dt.strftime("%Y-%m-%d"), "开盘价": live["open"],
                               "最高价": live["high"], "最低价": live["low"], "收盘价": live["close"],
                               "前收盘价": live["preclose"], "成交量": live["volume"], "成交额": live["amount"],
                               "流通市值": 1e10, "总市值": 2e10}).iloc[::-1]
            text = "数据由某数据商提供，仅供研究使用\n" + df.to_csv(index=False)
            (folder / f"{code}.csv").write_bytes(text.encode("gbk"))
        elif k % 3 == 1:  # East Money short headers, volume in lots, code in the file name
            live = b[b["status"] == 1]
            df = pd.DataFrame({"日期": live["ts"].dt.strftime("%Y-%m-%d"), "开盘": live["open"], "收盘": live["close"],
                               "最高": live["high"], "最低": live["low"], "成交量": live["volume"] / 100,
                               "成交额": live["amount"], "振幅": 1.0,
                               "涨跌幅": np.round((live["close"] / live["preclose"] - 1) * 100, 2),
                               "涨跌额": np.round(live["close"] - live["preclose"], 2), "换手率": 0.8})
            df.to_csv(folder / f"{exch.lower()}{code}.csv", index=False)
        else:  # Baostock, suspended rows kept with tradestatus 0 and empty prices
            df = pd.DataFrame({"date": b["ts"].dt.strftime("%Y-%m-%d"), "code": f"{exch.lower()}.{code}",
                               "open": b["open"], "high": b["high"], "low": b["low"], "close": b["close"],
                               "preclose": b["preclose"], "volume": b["volume"], "amount": b["amount"],
                               "adjustflag": 3, "turn": 0.5, "tradestatus": b["status"], "pctChg": 0.1,
                               "isST": b["is_st"].astype(int)})
            susp = df["tradestatus"] == 0
            df.loc[susp, ["open", "high", "low", "close", "volume", "amount"]] = np.nan
            df.loc[susp, "volume"] = 0
            df.to_csv(folder / f"{exch.lower()}.{code}.csv", index=False)
    idx = 3000 * np.exp(np.cumsum(market))
    df = pd.DataFrame({"股票代码": "000300.SH", "股票名称": "沪深300", "交易日期": dates.strftime("%Y-%m-%d"),
                       "开盘价": np.round(idx, 2), "最高价": np.round(idx * 1.005, 2), "最低价": np.round(idx * 0.995, 2),
                       "收盘价": np.round(idx, 2), "前收盘价": np.round(np.r_[idx[0], idx[:-1]], 2),
                       "成交量": 1e10, "成交额": 1e11, "流通市值": np.nan, "总市值": np.nan})
    (folder / "000300.csv").write_bytes(("指数数据\n" + df.to_csv(index=False)).encode("gbk"))
    return out
