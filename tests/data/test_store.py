"""Store: exact round trips, merges, atomicity (including a real crash) and point-in-time reads."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlm.data.schema import DataValidationError, validate_bars
from quantlm.data.store import Store
from tests.conftest import make_bars


def state(store: Store) -> tuple[list[tuple], pd.DataFrame]:
    return [tuple(r) for r in store.listing().itertuples(index=False)], store.bars()


def parquet_files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in (root / "files").rglob("*.parquet")}


# ---------------------------------------------------------------- round trips and merges
def test_round_trip_is_bit_exact(store, bars):
    bars["adj_factor"] = np.linspace(1.0, 2.0, len(bars))
    counts = store.write_bars(bars, market="cn")
    assert counts == {"000001.SZ": 60, "600000.SH": 60}
    got = store.bars()
    pd.testing.assert_frame_equal(got, validate_bars(bars), check_exact=True)
    assert got["ts"].dtype == "datetime64[ns]" and all(got[c].dtype == "float64" for c in got.columns[2:])
    assert store.symbols() == ["000001.SZ", "600000.SH"] and store.freqs() == ["1d"]
    assert store.calendar().equals(pd.DatetimeIndex(sorted(bars["ts"].unique())))


def test_incremental_append_of_new_dates(store, bars):
    early, late = bars[bars.ts < "2023-02-01"], bars[bars.ts >= "2023-02-01"]
    store.write_bars(early, market="cn")
    store.write_bars(late, market="cn")
    pd.testing.assert_frame_equal(store.bars(), validate_bars(bars), check_exact=True)
    row = store.listing().iloc[0]
    assert (row.first_ts, row.last_ts, row.rows) == (bars.ts.min(), bars.ts.max(), 60)


def test_agreeing_overlap_is_fine_and_disagreeing_overlap_needs_replace(store, bars):
    store.write_bars(bars[bars.ts < "2023-02-15"], market="cn")
    store.write_bars(bars[bars.ts >= "2023-02-01"], market="cn")  # overlap agrees
    pd.testing.assert_frame_equal(store.bars(), validate_bars(bars), check_exact=True)

    changed = bars[bars.ts == "2023-02-01"].copy()
    changed["close"] *= 1.01
    changed["high"] = np.maximum(changed["high"], changed["close"])
    before = state(store)
    with pytest.raises(DataValidationError, match=r"overlaps stored data for \S+ at 2023-02-01.*--replace") as e:
        store.write_bars(changed, market="cn", file="fix.csv")
    assert e.value.file == "fix.csv" and e.value.column in ("high", "close")
    assert state(store)[0] == before[0]
    pd.testing.assert_frame_equal(store.bars(), before[1])

    store.write_bars(changed, market="cn", replace=True)
    got = store.bars()
    on_day = got[got.ts == "2023-02-01"].set_index("symbol")["close"]
    assert on_day.to_dict() == changed.set_index("symbol")["close"].to_dict()
    others = got[got.ts != "2023-02-01"].reset_index(drop=True)
    expected = validate_bars(bars)
    pd.testing.assert_frame_equal(others, expected[expected.ts != "2023-02-01"].reset_index(drop=True))


def test_symbol_cannot_change_market(store, bars):
    store.write_bars(bars, market="cn")
    with pytest.raises(DataValidationError, match="stored under market 'cn'"):
        store.write_bars(bars, market="us")


def test_same_symbol_put_twice_in_one_transaction(store, bars):
    """Regression: re-putting a key reused a staged file name that a later put then overwrote."""
    a, b = bars[bars.symbol == "600000.SH"], bars[bars.symbol == "000001.SZ"]
    with store.transaction() as tx:
        tx.put_bars(a.iloc[:30], market="cn", freq="1d")
        tx.put_bars(b, market="cn", freq="1d")
        tx.put_bars(a.iloc[30:], market="cn", freq="1d")
        tx.put_bars(make_bars(symbols=("300750.SZ",), periods=5), market="cn", freq="1d")
    assert store.listing()["rows"].tolist() == [60, 5, 60]
    pd.testing.assert_frame_equal(store.bars(["000001.SZ", "600000.SH"]), validate_bars(bars), check_exact=True)


# ---------------------------------------------------------------- atomicity
def test_exception_inside_transaction_changes_nothing(store, bars):
    store.write_bars(bars[bars.ts < "2023-02-01"], market="cn")
    before, files = state(store), parquet_files(store.root)
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction() as tx:
            tx.put_bars(bars, market="cn", freq="1d")
            tx.put("flags", "", pd.DataFrame({"symbol": ["600000.SH"], "flag": ["st"],
                                              "start": [pd.Timestamp("2023-01-05")], "end": [pd.NaT]}))
            tx.set_meta("universe", "x")
            raise RuntimeError("boom")
    assert state(store)[0] == before[0]
    pd.testing.assert_frame_equal(store.bars(), before[1])
    assert parquet_files(store.root) == files and store.meta() == {} and len(store.flags()) == 0
    assert not any((store.root / "_staging").glob("*/*"))


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    import pandas as pd
    import quantlm.data.store as store_mod
    from quantlm.data.store import Store

    real_replace, real_connect, moved = os.replace, Store._connect, []

    def replace(src, dst):
        real_replace(src, dst)
        moved.append(dst)

    def connect(self, write):
        if write and moved:  # the commit's catalog switch: die here, with no cleanup at all
            os._exit(3)
        return real_connect(self, write)

    store_mod.os.replace = replace
    Store._connect = connect
    Store(sys.argv[1]).write_bars(pd.read_parquet(sys.argv[2]), market="cn")
""")


def test_crash_between_file_moves_and_catalog_commit(store, bars, tmp_path):
    store.write_bars(bars[bars.ts < "2023-02-01"], market="cn")
    before, files = state(store), parquet_files(store.root)
    bars.to_parquet(tmp_path / "new.parquet")
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(store.root), str(tmp_path / "new.parquet")],
                          capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert proc.returncode == 3, proc.stderr
    orphans = parquet_files(store.root) - files
    assert len(orphans) == 2  # the crashed transaction's files reached their final names...
    reopened = Store(store.root)
    assert state(reopened)[0] == before[0]  # ...but the catalog never pointed at them
    pd.testing.assert_frame_equal(reopened.bars(), before[1])
    reopened.write_bars(bars[bars.ts >= "2023-03-01"], market="cn")  # next write removes the orphans
    assert not (parquet_files(store.root) & orphans)
    assert len(parquet_files(store.root)) == 2


# ---------------------------------------------------------------- point-in-time reads
def test_bars_between_dates_are_inclusive(store, bars):
    store.write_bars(bars, market="cn")
    got = store.bars("600000.SH", start="2023-01-05", end="2023-01-10", fields=["close"])
    assert got["ts"].tolist() == list(pd.bdate_range("2023-01-05", "2023-01-10"))
    assert list(got.columns) == ["symbol", "ts", "close"]
    assert len(store.bars(start="2024-01-01")) == 0 and len(store.bars(end="2022-12-30")) == 0


def test_members_as_of(store):
    spans = pd.DataFrame({
        "universe": ["csi300", "csi300", "csi300", "other"],
        "symbol": ["A", "B", "C", "D"],
        "start": pd.to_datetime(["2020-01-01", "2020-06-01", "2019-01-01", "2019-01-01"]),
        "end": pd.to_datetime(["2020-12-31", None, "2020-05-31", None]),
    })
    store.write_table("universes", spans)
    assert store.members("csi300", "2020-05-31") == ["A", "C"]
    assert store.members("csi300", "2020-06-01") == ["A", "B"]
    assert store.members("csi300", "2020-12-31") == ["A", "B"]
    assert store.members("csi300", "2021-01-01") == ["B"]
    assert store.members("csi300", "2018-12-31") == []


def test_texts_strictly_before_cutoff(store):
    texts = pd.DataFrame({
        "text_id": ["t1", "t2", "t3", "t4"],
        "symbol": ["A", "A", "", "B"],
        "published_at": pd.to_datetime(["2023-01-03 14:59:59", "2023-01-03 15:00:00", "2023-01-03 09:00:00",
                                        "2023-01-02 10:00:00"]),
        "source": "news", "title": ["a", "b", "c", "d"], "body": "",
    })
    store.write_table("texts", texts)
    cutoff = pd.Timestamp("2023-01-03 15:00")
    assert store.texts("A", visible_before=cutoff)["text_id"].tolist() == ["t3", "t1"]
    assert store.texts(visible_before=cutoff)["text_id"].tolist() == ["t4", "t3", "t1"]
    assert store.texts("A", since="2023-01-03 12:00")["text_id"].tolist() == ["t1", "t2"]


# ---------------------------------------------------------------- properties
@st.composite
def valid_bars(draw) -> pd.DataFrame:
    """Random valid daily bars: 1-3 symbols, 1-25 sessions each, prices across many magnitudes."""
    frames = []
    for sym in draw(st.lists(st.sampled_from(["600000.SH", "000001.SZ", "BTC/USDT"]), min_size=1, max_size=3,
                             unique=True)):
        n = draw(st.integers(1, 25))
        days = pd.bdate_range("2021-01-04", periods=40)[sorted(draw(st.lists(st.integers(0, 39), min_size=n,
                                                                             max_size=n, unique=True)))]
        price = st.floats(1e-4, 1e7, allow_nan=False)
        rows = draw(st.lists(st.tuples(price, price, st.floats(0, 0.5), st.floats(0, 0.5), st.floats(0, 1e12),
                                       st.one_of(st.just(np.nan), st.floats(0, 1e15)),
                                       st.one_of(st.just(np.nan), st.floats(1e-3, 1e3))),
                             min_size=len(days), max_size=len(days)))
        o, c, up, down, vol, amount, adj = map(np.array, zip(*rows, strict=True))
        frames.append(pd.DataFrame({"symbol": sym, "ts": days, "open": o, "high": np.maximum(o, c) * (1 + up),
                                    "low": np.minimum(o, c) * (1 - down), "close": c, "volume": vol,
                                    "amount": amount, "adj_factor": adj}))
    return pd.concat(frames, ignore_index=True)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(bars=valid_bars())
def test_property_random_bars_round_trip_exactly(bars):
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        store.write_bars(bars, market="crypto")
        pd.testing.assert_frame_equal(store.bars(), validate_bars(bars), check_exact=True)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(bars=valid_bars(), data=st.data())
def test_property_two_appends_equal_one_write(bars, data):
    """Any split of the rows into two writes (interleaved dates, agreeing overlaps) equals one write."""
    first = np.array(data.draw(st.lists(st.booleans(), min_size=len(bars), max_size=len(bars))))
    also_second = np.array(data.draw(st.lists(st.booleans(), min_size=len(bars), max_size=len(bars))))
    second = ~first | also_second
    with tempfile.TemporaryDirectory() as tmp:
        twice = Store(tmp)
        if first.any():
            twice.write_bars(bars[first], market="crypto")
        twice.write_bars(bars[second], market="crypto")
        once = validate_bars(bars)  # what one write stores (the round-trip property above)
        pd.testing.assert_frame_equal(twice.bars(), once, check_exact=True)
        assert twice.listing()["rows"].tolist() == once.groupby("symbol").size().sort_index().tolist()


# ---------------------------------------------------------------- adj_factor re-basing in merges
def with_factor(bars: pd.DataFrame, factor: float | np.ndarray) -> pd.DataFrame:
    out = bars.copy()
    out["adj_factor"] = factor
    return out


def adjusted_returns(df: pd.DataFrame) -> pd.Series:
    adj = df["close"] * df["adj_factor"]
    return adj.pct_change().dropna()


def test_constant_adj_factor_change_rescales_stored_history_with_a_note(store):
    """Yahoo re-bases Adj Close after a dividend: the re-download's factors are the stored ones times a
    constant. The stored history is rescaled, so there is no fake return at the seam."""
    bars = make_bars(symbols=("600000.SH",), periods=60)
    factor = np.linspace(0.8, 1.0, 60)
    store.write_bars(with_factor(bars.iloc[:40], factor[:40]), market="cn")
    with store.transaction() as tx:
        tx.put_bars(with_factor(bars.iloc[20:], factor[20:] * 0.9), market="cn", freq="1d", file="yahoo.csv")
    assert tx.notes == [f"600000.SH: stored adj_factor rescaled by 0.9 to match the new file yahoo.csv over 20 "
                        f"overlapping bars ({bars.ts[20].date()}..{bars.ts[39].date()})"]
    assert store.last_notes == tx.notes
    got = store.bars()
    np.testing.assert_allclose(got["adj_factor"], factor * 0.9, rtol=1e-12)
    np.testing.assert_allclose(adjusted_returns(got), adjusted_returns(with_factor(bars, factor)), rtol=1e-9)
    store.write_bars(with_factor(bars.iloc[50:], factor[50:] * 0.9), market="cn")  # agreeing factors: no note
    assert store.last_notes == []


def test_non_constant_adj_factor_change_is_refused_unless_replace(store):
    bars = make_bars(symbols=("600000.SH",), periods=30)
    store.write_bars(with_factor(bars.iloc[:20], 1.0), market="cn")
    before = state(store)
    changed = with_factor(bars.iloc[10:], np.r_[np.full(5, 1.0), np.full(15, 0.5)])  # a dividend moved
    with pytest.raises(DataValidationError, match=rf"adj_factor of 600000.SH disagrees with the stored one at "
                                                  rf"{bars.ts[15]}.*--replace") as e:
        store.write_bars(changed, market="cn", file="new.csv")
    assert e.value.column == "adj_factor" and e.value.file == "new.csv"
    assert state(store)[0] == before[0]

    store.write_bars(changed, market="cn", replace=True)  # new rows win; stored rows before join at the seam
    got = store.bars()
    assert got["adj_factor"].tolist() == [1.0] * 15 + [0.5] * 15
    assert len(store.last_notes) == 1 and "new adj_factor replaces the stored one" in store.last_notes[0]


def test_replace_rescales_older_history_at_the_seam(store):
    bars = make_bars(symbols=("600000.SH",), periods=30)
    store.write_bars(with_factor(bars.iloc[:20], 2.0), market="cn")
    store.write_bars(with_factor(bars.iloc[15:], np.linspace(1.0, 1.2, 15)), market="cn", replace=True)
    got = store.bars()
    np.testing.assert_allclose(got["adj_factor"][:15], 1.0)  # 2.0 rescaled by 1.0 / 2.0 (first overlapping bar)
    np.testing.assert_allclose(got["adj_factor"][15:], np.linspace(1.0, 1.2, 15))
    assert "rescaled by 0.5" in store.last_notes[0]


def test_new_factors_fill_a_history_stored_without_them(store):
    bars = make_bars(symbols=("600000.SH",), periods=30)
    store.write_bars(bars.iloc[:20], market="cn")  # no adj_factor column: all NaN
    store.write_bars(with_factor(bars.iloc[10:], 0.5), market="cn")
    got = store.bars()
    assert got["adj_factor"].isna().tolist() == [True] * 10 + [False] * 20
    assert store.last_notes == ["600000.SH: stored bars had no adj_factor; the factors of the new bars are kept and 10 "
                                "stored bars outside it stay without one (adjusted prices are undefined there)"]


# ---------------------------------------------------------------- time zones
def test_tz_aware_timestamps_are_converted_to_exchange_local_time(store):
    hourly = make_bars(symbols=("600000.SH",), periods=2)
    hourly["ts"] = pd.to_datetime(["2024-01-02 07:00", "2024-01-03 07:00"]).tz_localize("UTC")
    store.write_bars(hourly, market="cn", freq="1h")
    assert store.bars(freq="1h")["ts"].tolist() == [pd.Timestamp("2024-01-02 15:00"), pd.Timestamp("2024-01-03 15:00")]

    us = make_bars(symbols=("AAPL",), periods=2)  # text with offsets across a DST change: 16:00 New York both days
    us["ts"] = ["2024-03-08T21:00:00Z", "2024-03-11T16:00:00-04:00"]
    store.write_bars(us, market="us", freq="1h")
    assert store.bars("AAPL", freq="1h")["ts"].tolist() == [pd.Timestamp("2024-03-08 16:00"),
                                                           pd.Timestamp("2024-03-11 16:00")]
    mixed = us.assign(ts=["2024-03-12T20:00:00Z", "2024-03-13 16:00"])
    with pytest.raises(DataValidationError, match="has no time zone") as e:
        store.write_bars(mixed, market="us", freq="1h", file="m.csv")
    assert (e.value.row, e.value.column, e.value.file) == (2, "ts", "m.csv")


# ---------------------------------------------------------------- locking and catalog versions
def test_commit_refuses_when_the_catalog_changed_under_the_transaction(store, bars):
    """Compare-and-swap: a writer that ignored the lock (simulated) must not be silently overwritten."""
    store.write_bars(bars, market="cn")
    before = state(store)
    with pytest.raises(ValueError, match=rf"store {store.root} was changed by another writer") as e:
        with store.transaction() as tx:
            tx.put_bars(make_bars(symbols=("300750.SZ",), periods=5), market="cn", freq="1d")
            con = store._connect(write=True)
            con.execute("UPDATE catalog_version SET version = version + 1")
            con.close()
    assert getattr(e.value, "user_facing", False)
    assert state(Store(store.root))[0] == before[0]


def test_nested_transaction_is_refused_and_lock_timeout_is_configurable(store, bars, monkeypatch):
    store.write_bars(bars, market="cn")
    with store.transaction():
        with pytest.raises(RuntimeError, match="already open in this thread"):
            with Store(store.root).transaction():
                pass
    assert Store(store.root, lock_timeout=2.5).lock_timeout == 2.5
    monkeypatch.setenv("QUANTLM_STORE_LOCK_TIMEOUT", "7")
    assert Store(store.root).lock_timeout == 7.0
    monkeypatch.setenv("QUANTLM_STORE_LOCK_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="QUANTLM_STORE_LOCK_TIMEOUT='soon' is not a number"):
        store.write_bars(bars, market="cn")


def test_readers_never_open_duckdb(store, bars, monkeypatch):
    """Reads come from the catalog snapshot, so a writer's DuckDB lock can never get in their way."""
    store.write_bars(bars, market="cn")
    store.write_table("flags", pd.DataFrame({"symbol": ["600000.SH"], "flag": ["st"],
                                             "start": [pd.Timestamp("2023-01-05")], "end": [pd.NaT]}))

    def no_duckdb(*args, **kwargs):
        raise AssertionError("a reader opened catalog.duckdb")

    monkeypatch.setattr("duckdb.connect", no_duckdb)
    reader = Store(store.root)
    assert len(reader.bars()) == 120 and len(reader.listing()) == 2 and len(reader.flags()) == 1
    assert reader.meta() == {} and reader.symbols() == ["000001.SZ", "600000.SH"]


def test_read_retries_when_a_commit_deleted_the_file_it_was_about_to_open(store, bars, monkeypatch):
    """A reader that got the catalog just before another commit replaced a symbol's file re-reads the
    catalog and gets the new data instead of FileNotFoundError."""
    store.write_bars(bars[bars.ts < "2023-02-01"], market="cn")
    reader = Store(store.root)
    real = pq.ParquetDataset
    calls = []

    def dataset_after_a_commit(paths, **kwargs):
        if not calls:  # between the reader's catalog read and its file open, another writer commits
            Store(store.root).write_bars(bars, market="cn")
        calls.append(paths)
        return real(paths, **kwargs)

    monkeypatch.setattr(pq, "ParquetDataset", dataset_after_a_commit)
    pd.testing.assert_frame_equal(reader.bars(), validate_bars(bars), check_exact=True)
    assert len(calls) == 2
    (store.root / reader._catalog("bars")["path"].iloc[0]).unlink()
    with pytest.raises(FileNotFoundError):  # a file that is really gone (catalog unchanged) is an error
        reader.bars()
