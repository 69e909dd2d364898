"""schema.validate_bars and schema.infer_freq."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from quantlm.data.schema import (
    BAR_COLUMNS,
    FREQ_TIMEDELTA,
    DataValidationError,
    check_freq,
    check_market,
    infer_freq,
    validate_bars,
)
from tests.conftest import make_bars


def small() -> pd.DataFrame:
    return make_bars(symbols=("B", "A"), periods=5)


def test_canonical_output_sorted_typed_with_optional_columns():
    df = small().drop(columns="amount").iloc[::-1]
    df["ts"] = df["ts"].dt.strftime("%Y-%m-%d")  # text timestamps are parsed
    df["extra"] = 1
    out = validate_bars(df)
    assert list(out.columns) == list(BAR_COLUMNS)
    assert out["symbol"].tolist() == ["A"] * 5 + ["B"] * 5
    assert out.groupby("symbol")["ts"].apply(lambda s: s.is_monotonic_increasing).all()
    assert out["ts"].dtype == "datetime64[ns]" and out["amount"].isna().all() and out["adj_factor"].isna().all()


def test_tz_aware_timestamps_are_made_naive():
    df = small()
    df["ts"] = df["ts"].dt.tz_localize("Asia/Shanghai")
    assert validate_bars(df)["ts"].dt.tz is None


def with_value(row: int, column: str, value) -> pd.DataFrame:
    """small() with `value` at 1-based source row `row`, rows labelled by a shuffled `_row`."""
    df = small()
    df["_row"] = np.arange(101, 111)  # an importer's source rows: errors must use these
    df[column] = df[column].astype("object")
    df.loc[row - 101, column] = value
    return df


@pytest.mark.parametrize(("column", "value", "problem"), [
    ("close", np.nan, "price is NaN"),
    ("high", np.inf, "price is infinite"),
    ("open", 0.0, "price must be positive"),
    ("low", -1.0, "price must be positive"),
    ("close", "12,5", "not a number: '12,5'"),
    ("high", 0.01, "is below max(open, close)"),
    ("low", 1e6, "is above min(open, close)"),
    ("volume", -5.0, "volume must be >= 0"),
    ("volume", np.nan, "volume is missing"),
    ("amount", -1.0, "invalid amount"),
    ("ts", "not a date", "unparseable timestamp 'not a date'"),
    ("symbol", " ", "empty symbol"),
])
def test_errors_name_source_row_and_column(column, value, problem):
    with pytest.raises(DataValidationError) as e:
        validate_bars(with_value(104, column, value), file="x.csv")
    assert problem in e.value.problem
    assert (e.value.file, e.value.row, e.value.column) == ("x.csv", 104, column)
    assert str(e.value).startswith(f"x.csv, row 104, column '{column}': ")


def test_adj_factor_must_be_positive_when_present():
    df = small()
    df["adj_factor"] = 1.0
    df.loc[3, "adj_factor"] = 0.0
    with pytest.raises(DataValidationError, match="invalid adj_factor") as e:
        validate_bars(df)
    assert e.value.row == 4


def test_missing_columns_and_empty_frame():
    with pytest.raises(DataValidationError, match="missing required column") as e:
        validate_bars(small().drop(columns=["volume"]), file="f.csv")
    assert e.value.column == "volume" and e.value.row is None
    with pytest.raises(DataValidationError, match="no rows"):
        validate_bars(small().iloc[:0])


def test_duplicates_name_both_rows():
    df = pd.concat([small(), small().iloc[[7]]], ignore_index=True)
    with pytest.raises(DataValidationError, match="first seen at row 8") as e:
        validate_bars(df)
    assert (e.value.row, e.value.column) == (11, "ts")


def test_mixed_frequencies():
    daily = small()
    daily.loc[2, "ts"] = daily.loc[2, "ts"] + pd.Timedelta(hours=10)
    with pytest.raises(DataValidationError, match="intraday timestamp .* in a daily file") as e:
        validate_bars(daily)
    assert e.value.row == 3
    ts = pd.to_datetime(["2024-01-02 09:30", "2024-01-02 09:35", "2024-01-02 09:37"])
    minute = pd.DataFrame({"symbol": "A", "ts": ts, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 0})
    with pytest.raises(DataValidationError, match="expected multiples of 0 days 00:05:00") as e:
        validate_bars(minute, freq="5min")
    assert e.value.row == 3
    validate_bars(minute, freq="1min")  # gaps of whole bars (no trades) are fine
    with pytest.raises(DataValidationError, match="unknown frequency"):
        validate_bars(minute, freq="2min")


def test_lunch_break_is_not_a_frequency_change():
    morning = pd.date_range("2024-01-02 09:31", "2024-01-02 11:30", freq="1min")
    afternoon = pd.date_range("2024-01-02 13:01", "2024-01-02 15:00", freq="1min")
    ts = morning.append(afternoon)
    df = pd.DataFrame({"symbol": "A", "ts": ts, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 0})
    assert infer_freq(df["ts"]) == "1min"
    assert len(validate_bars(df, freq="1min")) == 240


def test_check_market_and_freq():
    assert check_market("cn") == "cn" and check_freq("1h") == "1h"
    with pytest.raises(DataValidationError, match="unknown market 'nyse'"):
        check_market("nyse")


def test_infer_freq_edge_cases():
    assert infer_freq(pd.Series(pd.to_datetime(["2024-01-02"]))) == "1d"
    assert infer_freq(pd.Series(pd.to_datetime(["2024-01-02 09:30"]))) is None
    assert infer_freq(pd.Series(pd.to_datetime(["2024-01-02 09:30", "2024-01-02 09:32"]))) is None  # 2min
    assert infer_freq(pd.Series([], dtype="datetime64[ns]")) is None


@settings(max_examples=40, deadline=None, derandomize=True)
@given(freq=st.sampled_from([f for f in FREQ_TIMEDELTA if f != "1d"]), n=st.integers(2, 60),
       drop=st.sets(st.integers(1, 59), max_size=10), start_minute=st.integers(0, 59))
def test_property_infer_freq_of_a_regular_grid_with_holes(freq, n, drop, start_minute):
    """A regular grid (times not at midnight) with a few bars missing still reads as its frequency."""
    ts = pd.date_range(pd.Timestamp("2024-01-02 00:30") + pd.Timedelta(minutes=start_minute), periods=n, freq=freq)
    keep = [t for i, t in enumerate(ts) if i not in drop or i == 0]
    gaps = np.diff(pd.DatetimeIndex(keep).as_unit("ns").asi8)
    assume(len(keep) >= 2 and (gaps == FREQ_TIMEDELTA[freq].value).sum() * 2 > len(gaps))  # step is the mode
    assert infer_freq(pd.Series(keep).sample(frac=1, random_state=0)) == freq


@settings(max_examples=30, deadline=None, derandomize=True)
@given(days=st.sets(st.integers(0, 3000), min_size=1, max_size=50))
def test_property_any_midnight_dates_are_daily(days):
    ts = pd.Timestamp("2010-01-01") + pd.to_timedelta(sorted(days), unit="D")
    assert infer_freq(pd.Series(ts)) == "1d"
