"""A-share intraday files: bar-start / bar-end labels across the lunch break, the call auction, the grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantlm.data.importers import import_paths
from quantlm.data.schema import DataValidationError, infer_freq, validate_bars

DAYS = ("2024-01-02", "2024-01-03")


def session_starts(freq: str) -> pd.DatetimeIndex:
    """Bar starts of the A-share sessions (09:30-11:30, 13:00-15:00) on DAYS."""
    out = []
    for d in DAYS:
        for a, b in (("09:30", "11:30"), ("13:00", "15:00")):
            out.append(pd.date_range(f"{d} {a}", f"{d} {b}", freq=freq, inclusive="left"))
    return out[0].append(out[1:])


def bars_at(starts: pd.DatetimeIndex, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 10 + np.cumsum(rng.normal(0, 0.01, len(starts)))
    return pd.DataFrame({"open": close - 0.01, "high": close + 0.02, "low": close - 0.03, "close": close,
                         "volume": rng.integers(100, 1000, len(starts)) * 100.0})


def write(df: pd.DataFrame, stamps: pd.DatetimeIndex, path) -> None:
    df.assign(datetime=stamps.strftime("%Y-%m-%d %H:%M:%S")).to_csv(path, index=False)


@pytest.mark.parametrize("freq", ["1h", "30min", "5min"])
def test_start_and_end_labels_store_the_same_bars(tmp_path, freq):
    from quantlm.data.store import Store

    starts = session_starts(freq)
    df = bars_at(starts)
    step = pd.Timedelta(freq)
    write(df, starts, tmp_path / "start.csv")
    write(df, starts + step, tmp_path / "end.csv")
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    ra = import_paths([tmp_path / "start.csv"], a, market="cn", symbol="600000.SH")
    rb = import_paths([tmp_path / "end.csv"], b, market="cn", symbol="600000.SH")
    assert (ra.freq, ra.bar_label, rb.freq, rb.bar_label) == (freq, "start", freq, "end")
    pd.testing.assert_frame_equal(a.bars(freq=freq), b.bars(freq=freq))
    assert a.bars(freq=freq)["ts"].tolist() == list(starts)
    if freq == "1h":
        assert [t.strftime("%H:%M") for t in starts[:4]] == ["09:30", "10:30", "13:00", "14:00"]


def test_one_minute_call_auction_bars_are_merged(store, tmp_path):
    starts = session_starts("1min")[:240]  # one day, 240 continuous minutes
    df = bars_at(starts)
    auction = pd.DataFrame({"open": [9.90], "high": [9.95], "low": [9.80], "close": [9.92], "volume": [5000.0]})
    # end-labelled with a 09:30 auction bar: 241 bars a day
    ends = pd.DatetimeIndex([pd.Timestamp("2024-01-02 09:30")]).append(starts + pd.Timedelta("1min"))
    write(pd.concat([auction, df], ignore_index=True), ends, tmp_path / "end241.csv")
    report = import_paths([tmp_path / "end241.csv"], store, market="cn", symbol="000001.SZ")
    assert report.auction_bars == 1 and report.bar_label == "end" and report.rows == 240
    got = store.bars("000001.SZ", freq="1min")
    assert got["ts"].tolist() == list(starts)
    first = got.iloc[0]
    assert first["open"] == 9.90 and first["close"] == df["close"].iloc[0]
    assert first["high"] == max(9.95, df["high"].iloc[0]) and first["low"] == min(9.80, df["low"].iloc[0])
    assert first["volume"] == 5000.0 + df["volume"].iloc[0]
    # start-labelled with a 09:25 auction bar: the same stored bars
    stamps = pd.DatetimeIndex([pd.Timestamp("2024-01-02 09:25")]).append(starts)
    write(pd.concat([auction, df], ignore_index=True), stamps, tmp_path / "start925.csv")
    report = import_paths([tmp_path / "start925.csv"], store, market="cn", symbol="000001.SZ")
    assert (report.auction_bars, report.bar_label, report.new_rows) == (1, "start", 0)


def test_labels_refused_when_anchors_disagree_or_are_missing_and_off_grid_bars(store, tmp_path):
    starts = session_starts("1h")
    df = bars_at(starts)
    stamps = starts.where(starts != starts[1], starts[1].replace(hour=11, minute=30))  # 09:30 and 11:30 both
    write(df, pd.DatetimeIndex(stamps), tmp_path / "both.csv")
    with pytest.raises(DataValidationError, match="--bar-label"):
        import_paths([tmp_path / "both.csv"], store, market="cn", symbol="600000.SH")
    five = session_starts("5min")
    write(bars_at(five), five + pd.Timedelta("1min"), tmp_path / "shifted.csv")  # 09:31, 09:36, ... 13:01, ...
    with pytest.raises(DataValidationError, match="--bar-label"):
        import_paths([tmp_path / "shifted.csv"], store, market="cn", symbol="600000.SH")
    with pytest.raises(DataValidationError, match="outside the A-share sessions") as e:
        import_paths([tmp_path / "shifted.csv"], store, market="cn", symbol="600000.SH", bar_label="start")
    assert (e.value.row, e.value.column) == (1, "datetime")
    assert not store.exists()


def test_schema_accepts_the_cn_lunch_gap_only_for_cn():
    starts = session_starts("1h")
    df = bars_at(starts).assign(symbol="600000.SH", ts=starts)
    assert infer_freq(df["ts"].iloc[:3]) == "1h"  # 09:30, 10:30, 13:00: the 2.5h gap is lunch
    assert len(validate_bars(df, freq="1h", market="cn")) == len(df)
    assert len(validate_bars(df, freq="1h")) == len(df)  # the store's own check (no market)
    with pytest.raises(DataValidationError, match="mixed frequencies"):
        validate_bars(df, freq="1h", market="us")
