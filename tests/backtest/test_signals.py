"""Signals files: time zones, Qlib codes, date spellings (quantlm.backtest.signals.read_signals)."""

from __future__ import annotations

import pandas as pd
import pytest

from quantlm.backtest.signals import read_signals
from quantlm.data.schema import DataValidationError


def _csv(tmp_path, text: str):
    p = tmp_path / "s.csv"
    p.write_text(text)
    return p


def test_tz_aware_stamps_convert_to_the_market_local_time(tmp_path):
    # 16:00 UTC on 2 Jan is 00:00 on 3 Jan in Shanghai: the signal belongs to 3 Jan, not 2 Jan
    p = _csv(tmp_path, "symbol,ts,score\n600000.SH,2024-01-02T16:00Z,1\n000001.SZ,2024-01-02T16:00:00+00:00,2\n"
                       "000002.SZ,2024-01-03 00:00+08:00,3\n000004.SZ,2024-01-02T16:00:00+0000,4\n")
    df = read_signals(p, market="cn")
    assert (df["ts"] == pd.Timestamp("2024-01-03")).all() and df["ts"].dt.tz is None
    us = read_signals(p, market="us")  # 16:00 UTC = 11:00 New York (EST)
    assert (us["ts"] == pd.Timestamp("2024-01-02 11:00")).all()


def test_tz_aware_stamps_without_market_are_refused(tmp_path):
    p = _csv(tmp_path, "symbol,ts,score\nA,2024-01-02T16:00Z,1\n")
    with pytest.raises(DataValidationError, match="market") as e:
        read_signals(p)
    assert e.value.column == "ts" and e.value.row == 1 and str(p) in str(e.value)


def test_parquet_tz_aware_column(tmp_path):
    ts = pd.to_datetime(["2024-01-02 16:00"]).tz_localize("UTC")
    pd.DataFrame({"symbol": ["600000.SH"], "ts": ts, "score": [1.0]}).to_parquet(tmp_path / "s.parquet")
    assert read_signals(tmp_path / "s.parquet", market="cn")["ts"].tolist() == [pd.Timestamp("2024-01-03")]
    with pytest.raises(DataValidationError, match="market"):
        read_signals(tmp_path / "s.parquet")


def test_mixed_aware_and_naive_stamps_are_refused(tmp_path):
    p = _csv(tmp_path, "symbol,ts,score\nA,2024-01-02T16:00Z,1\nB,2024-01-02,2\n")
    with pytest.raises(DataValidationError, match="naive") as e:
        read_signals(p, market="cn")
    assert e.value.row == 2 and e.value.column == "ts"


def test_qlib_codes_and_lower_case_suffixes_map_to_one_symbol(tmp_path):
    p = _csv(tmp_path, "instrument,datetime,score\nSH600000,2024-01-02,1\nsz000001,2024-01-02,2\n"
                       "600000.sh,2024-01-03,3\nbj830799,2024-01-03,4\n")
    df = read_signals(p, market="cn")
    assert sorted(set(df["symbol"])) == ["000001.SZ", "600000.SH", "830799.BJ"]
    assert df[df["symbol"] == "600000.SH"]["score"].tolist() == [1.0, 3.0]
    # the same stock twice on one date under two spellings is a duplicate, not two stocks
    p = _csv(tmp_path, "instrument,datetime,score\nSH600000,2024-01-02,1\n600000.SH,2024-01-02,2\n")
    with pytest.raises(DataValidationError, match="duplicate") as e:
        read_signals(p, market="cn")
    assert e.value.row == 2
    # other markets keep their symbols
    p = _csv(tmp_path, "symbol,ts,score\naapl,2024-01-02,1\n")
    assert read_signals(p, market="us")["symbol"].tolist() == ["aapl"]


@pytest.mark.parametrize("text", ["2024-03-04", "20240304", "2024/03/04", "2024/3/4", "2024-03-04 00:00:00",
                                  "2024-03-04T00:00"])
def test_year_first_dates_are_read(tmp_path, text):
    df = read_signals(_csv(tmp_path, f"symbol,ts,score\nA,{text},1\n"))
    assert df["ts"].tolist() == [pd.Timestamp("2024-03-04")]


@pytest.mark.parametrize("text", ["03/04/2024", "3/4/2024", "04-03-2024", "03.04.2024"])
def test_day_month_ambiguous_dates_are_refused(tmp_path, text):
    p = _csv(tmp_path, f"symbol,ts,score\nA,2024-03-01,1\nA,{text},1\n")
    with pytest.raises(DataValidationError, match="ambiguous") as e:
        read_signals(p)
    assert e.value.row == 2 and e.value.column == "ts" and str(p) in str(e.value)


@pytest.mark.parametrize("text", ["2024-02-30", "notadate", "Jan 3 2024", ""])
def test_bad_dates_name_the_row(tmp_path, text):
    p = _csv(tmp_path, f"symbol,ts,score\nA,2024-03-01,1\nB,{text},1\n")
    with pytest.raises(DataValidationError) as e:
        read_signals(p)
    assert e.value.row == 2 and e.value.column == "ts"


def test_intraday_and_integer_stamps(tmp_path):
    df = read_signals(_csv(tmp_path, "symbol,ts,score\nA,2024-01-02 9:35,1\nA,2024-01-02 15:00:00,2\n"))
    assert df["ts"].tolist() == [pd.Timestamp("2024-01-02 09:35"), pd.Timestamp("2024-01-02 15:00")]
    pd.DataFrame({"symbol": ["A"], "ts": [20240102], "score": [1.0]}).to_parquet(tmp_path / "i.parquet")
    assert read_signals(tmp_path / "i.parquet")["ts"].tolist() == [pd.Timestamp("2024-01-02")]


def test_unknown_market_is_refused(tmp_path):
    with pytest.raises(DataValidationError, match="unknown market"):
        read_signals(_csv(tmp_path, "symbol,ts,score\nA,2024-01-02T16:00Z,1\n"), market="mars")
