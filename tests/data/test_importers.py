"""Importers: formats, unit conversions, symbols, frequencies, Qlib folders, the S&P 500 sample, CLI."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from typer.testing import CliRunner

from quantlm.cli import app
from quantlm.data.importers import ImportReport, detect_format, import_frame, import_paths
from quantlm.data.qlib_bin import qlib_symbol
from quantlm.data.schema import DataValidationError, validate_bars
from quantlm.data.store import Store
from tests.conftest import make_bars
from tests.data.test_store import valid_bars

RAW = make_bars(symbols=("600000.SH", "000001.SZ"), periods=20, seed=3)


def write_generic(df: pd.DataFrame, path: Path, with_symbol: bool = True) -> None:
    out = df.rename(columns={"ts": "date"})
    if not with_symbol:
        out = out.drop(columns="symbol")
    out.to_csv(path, index=False)


# ---------------------------------------------------------------- generic files
def test_generic_one_file_per_symbol_uses_file_stem(store, tmp_path):
    for sym, part in RAW.groupby("symbol"):
        write_generic(part, tmp_path / f"{sym}.csv", with_symbol=False)
    report = import_paths([tmp_path], store, market="cn")
    assert report.symbols == ["000001.SZ", "600000.SH"] and report.rows == 40 and report.freq == "1d"
    got = store.bars()
    exp = RAW.sort_values(["symbol", "ts"]).reset_index(drop=True)
    np.testing.assert_allclose(got[["open", "high", "low", "close", "volume", "amount"]], exp[
        ["open", "high", "low", "close", "volume", "amount"]], rtol=1e-15)
    assert got["ts"].dtype == "datetime64[ns]" and got["adj_factor"].isna().all()


def test_long_format_aliases_gzip_and_parquet_in_nested_folders(store, tmp_path):
    a, b = (RAW[RAW.symbol == s] for s in ("600000.SH", "000001.SZ"))
    (tmp_path / "x" / "y").mkdir(parents=True)
    aliased = a.rename(columns={"symbol": "Ticker", "ts": "Trade_Date", "volume": "VOL", "amount": "Turnover"})
    with gzip.open(tmp_path / "x" / "a.csv.gz", "wt") as fh:
        aliased.to_csv(fh, index=False)
    b.to_parquet(tmp_path / "x" / "y" / "b.parquet")
    (tmp_path / "x" / "notes.md").write_text("ignored")
    report = import_paths([tmp_path], store, market="cn")
    assert report.files == 2 and report.rows == 40 and report.formats == {"generic": 2}
    assert store.symbols() == ["000001.SZ", "600000.SH"]
    assert store.bars("600000.SH")["amount"].tolist() == pytest.approx(a["amount"].tolist(), rel=1e-15)


def test_symbol_option_and_separate_date_time_columns(store, tmp_path):
    ts = pd.date_range("2024-03-01 09:31", periods=30, freq="1min")
    df = pd.DataFrame({"Date": ts.strftime("%Y-%m-%d"), "Time": ts.strftime("%H:%M"), "open": 10.0, "high": 10.2,
                       "low": 9.9, "close": 10.1, "volume": 500})
    df.to_csv(tmp_path / "whatever.csv", index=False)
    with pytest.raises(DataValidationError, match="pass --bar-label") as e:  # no session anchor: start or end?
        import_paths([tmp_path / "whatever.csv"], store, market="cn", symbol="000001.SZ")
    assert e.value.column == "Date+Time"
    report = import_paths([tmp_path / "whatever.csv"], store, market="cn", symbol="000001.SZ", bar_label="start")
    assert report.freq == "1min" and report.symbols == ["000001.SZ"]
    assert store.bars("000001.SZ", freq="1min")["ts"].tolist() == list(ts)


@pytest.mark.parametrize("freq", ["5min", "15min", "30min", "1h"])
def test_frequency_is_inferred(store, tmp_path, freq):
    ts = pd.date_range("2024-03-01 09:30", periods=6, freq=freq)
    df = pd.DataFrame({"datetime": ts, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 0.0})
    df.to_csv(tmp_path / "BTC-USDT.csv", index=False)
    assert import_paths([tmp_path], store, market="crypto").freq == freq
    assert store.symbols(freq=freq) == ["BTC-USDT"]


def test_tz_aware_timestamps_become_exchange_local(store, tmp_path):
    utc = pd.date_range("2024-03-04 14:30", periods=4, freq="1h", tz="UTC")  # 09:30 New York (EST)
    df = pd.DataFrame({"timestamp": utc.strftime("%Y-%m-%dT%H:%M:%SZ"), "open": 1.0, "high": 1.0, "low": 1.0,
                       "close": 1.0, "volume": 1.0})
    import_frame(df, store, market="us", format="generic", symbol="SPY")
    assert store.bars("SPY", freq="1h")["ts"].iloc[0] == pd.Timestamp("2024-03-04 09:30")


def test_files_with_different_frequencies_are_refused(store, tmp_path):
    write_generic(RAW[RAW.symbol == "600000.SH"], tmp_path / "a.csv")
    ts = pd.date_range("2024-03-01 09:31", periods=5, freq="1min")
    pd.DataFrame({"ts": ts, "symbol": "X", "open": 1, "high": 1, "low": 1, "close": 1, "volume": 1}).to_csv(
        tmp_path / "b.csv", index=False)
    with pytest.raises(DataValidationError, match="import one frequency at a time") as e:
        import_paths([tmp_path], store, market="cn")
    assert e.value.file.endswith("b.csv")
    with pytest.raises(DataValidationError, match="frequency asked for is 1d"):
        import_paths([tmp_path / "b.csv"], store, market="cn", freq="1d")
    assert not store.exists()  # nothing written, not even an empty catalog


def test_unknown_market_and_format_name_the_problem(store, tmp_path):
    with pytest.raises(DataValidationError, match="unknown market 'mars'"):
        import_frame(RAW, store, market="mars")
    with pytest.raises(DataValidationError, match="unknown format 'excel'"):
        import_frame(RAW, store, market="cn", format="excel")
    with pytest.raises(FileNotFoundError, match="no such file"):
        import_paths([tmp_path / "missing.csv"], store, market="cn")


def test_import_frame_uses_a_datetime_index(store):
    df = RAW[RAW.symbol == "600000.SH"].drop(columns="symbol").set_index("ts")
    df.index.name = None
    report = import_frame(df, store, market="cn", symbol="600000.SH", source="mine")
    assert report.rows == 20 and store.bars()["ts"].tolist() == RAW["ts"].iloc[:20].tolist()


def test_import_frame_replace_and_report(store):
    report = import_frame(RAW, store, market="cn")
    assert isinstance(report, ImportReport) and "40 rows (40 new) of 2 symbol(s) (1d, market cn)" in str(report)
    changed = RAW.copy()
    changed.loc[0, ["open", "high"]] = (99.0, 100.0)
    with pytest.raises(DataValidationError, match="open=99.0 disagrees with the stored bar") as e:
        import_frame(changed, store, market="cn")
    assert (e.value.row, e.value.column) == (1, "open")
    import_frame(changed, store, market="cn", replace=True)
    assert store.bars("600000.SH")["open"].iloc[0] == 99.0


def test_files_overlapping_each_other(store, tmp_path):
    """Two files with the same bars: disagreeing names both; agreeing is fine; --replace: the later file wins."""
    a = RAW[RAW.symbol == "600000.SH"]
    write_generic(a, tmp_path / "1.csv")
    b = a.iloc[5:].copy()
    b["volume"] = b["volume"] + 1
    write_generic(b, tmp_path / "2.csv")
    with pytest.raises(DataValidationError, match=r"disagrees with the bar in .*1\.csv") as e:
        import_paths([tmp_path], store, market="cn")
    assert e.value.file.endswith("2.csv") and (e.value.row, e.value.column) == (1, "volume")
    assert not store.exists()
    report = import_paths([tmp_path], store, market="cn", replace=True)
    assert (report.rows, report.new_rows) == (35, 20)
    assert store.bars()["volume"].tolist() == a["volume"].iloc[:5].tolist() + b["volume"].tolist()
    write_generic(a.iloc[5:], tmp_path / "2.csv")
    report = import_paths([tmp_path / "2.csv", tmp_path / "2.csv"], store, market="cn", replace=True)
    assert (report.rows, report.new_rows) == (30, 0)  # the same file twice agrees with itself
    assert store.bars()["volume"].tolist() == a["volume"].tolist()
    with pytest.raises(DataValidationError, match="stored under market 'cn', not 'us'"):
        import_paths([tmp_path / "1.csv"], store, market="us")


@settings(max_examples=8, deadline=None, derandomize=True)
@given(bars=valid_bars())
def test_property_csv_export_imports_back_exactly(bars):
    """Any valid bars written to a long CSV (pandas' shortest round-trip floats) import back bit for bit."""
    with tempfile.TemporaryDirectory() as tmp:
        bars.to_csv(Path(tmp) / "all.csv", index=False)
        store = Store(Path(tmp) / "store")
        report = import_paths([Path(tmp) / "all.csv"], store, market="crypto", freq="1d")
        assert report.rows == report.new_rows == len(bars)
        pd.testing.assert_frame_equal(store.bars(), validate_bars(bars), check_exact=True)


# ---------------------------------------------------------------- vendor formats
def test_yahoo_adj_factor_and_missing_adj_close(store, tmp_path):
    df = pd.DataFrame({"Date": ["2024-01-02", "2024-01-03"], "Open": [100.0, 101.0], "High": [102.0, 103.0],
                       "Low": [99.0, 100.0], "Close": [101.0, 102.0], "Adj Close": [50.5, 51.0],
                       "Volume": [1e6, 2e6]})
    df.to_csv(tmp_path / "AAPL.csv", index=False)
    assert detect_format(df.columns) == "yahoo"
    import_paths([tmp_path / "AAPL.csv"], store, market="us")
    got = store.bars("AAPL")
    assert got["adj_factor"].tolist() == [0.5, 0.5] and got["close"].tolist() == [101.0, 102.0]
    df.drop(columns="Adj Close").to_csv(tmp_path / "MSFT.csv", index=False)
    import_paths([tmp_path / "MSFT.csv"], store, market="us", format="yahoo")  # handled: unadjusted
    assert store.bars("MSFT")["adj_factor"].isna().all()


def test_tushare_units_lots_and_thousands(store, tmp_path):
    df = pd.DataFrame({"ts_code": ["000001.SZ"] * 2, "trade_date": ["20240103", "20240102"],
                       "open": [9.1, 9.0], "high": [9.3, 9.2], "low": [9.0, 8.9], "close": [9.2, 9.1],
                       "pre_close": [9.1, 9.0], "vol": [1234.0, 1000.0], "amount": [1135.28, 910.0]})
    df.to_csv(tmp_path / "daily.csv", index=False)
    report = import_paths([tmp_path / "daily.csv"], store, market="cn")
    assert report.formats == {"tushare": 1}
    got = store.bars("000001.SZ")
    assert got["ts"].tolist() == [pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-03")]
    assert got["volume"].tolist() == [100_000.0, 123_400.0]  # lots of 100 -> shares
    assert got["amount"].tolist() == pytest.approx([910_000.0, 1_135_280.0], rel=1e-12)  # kCNY -> CNY


def test_tushare_minute_files_are_not_scaled(store, tmp_path):
    df = pd.DataFrame({"ts_code": "600000.SH", "trade_time": ["2024-01-02 09:31:00", "2024-01-02 09:32:00"],
                       "open": 7.0, "high": 7.1, "low": 6.9, "close": 7.0, "vol": [5300.0, 200.0],
                       "amount": [37100.0, 1400.0]})
    import_frame(df, store, market="cn", format="auto", bar_label="end")  # 09:31 and 09:32 label bar ends
    got = store.bars("600000.SH", freq="1min")
    assert got["ts"].tolist() == [pd.Timestamp("2024-01-02 09:30"), pd.Timestamp("2024-01-02 09:31")]
    assert got["volume"].tolist() == [5300.0, 200.0] and got["amount"].tolist() == [37100.0, 1400.0]


def test_qlib_csv_prices_are_unadjusted_with_factor(store, tmp_path):
    df = pd.DataFrame({"date": ["2024-01-02", "2024-01-03"], "open": [1.0, 1.1], "high": [1.2, 1.2],
                       "low": [0.9, 1.0], "close": [1.1, 1.15], "volume": [5000.0, 4000.0], "factor": [0.1, 0.1],
                       "change": [np.nan, 0.045]})
    df.to_csv(tmp_path / "sh600000.csv", index=False)
    import_paths([tmp_path], store, market="cn")
    got = store.bars("600000.SH")
    assert got["close"].tolist() == pytest.approx([11.0, 11.5], rel=1e-12)
    assert got["volume"].tolist() == pytest.approx([500.0, 400.0], rel=1e-12)
    assert got["adj_factor"].tolist() == [0.1, 0.1]
    df.drop(columns="change").to_csv(tmp_path / "sz000001.csv", index=False)  # detected by its Qlib-style name
    assert import_paths([tmp_path / "sz000001.csv"], store, market="cn").formats == {"qlib-csv": 1}
    assert store.bars("000001.SZ")["close"].tolist() == pytest.approx([11.0, 11.5], rel=1e-12)


@pytest.mark.parametrize(("code", "symbol"), [("SH600000", "600000.SH"), ("sz000001", "000001.SZ"),
                                               ("BJ830000", "830000.BJ"), ("AAPL", "AAPL"), ("SH60000", "SH60000")])
def test_qlib_symbols(code, symbol):
    assert qlib_symbol(code) == symbol


# ---------------------------------------------------------------- Qlib binary folders
def write_qlib(root: Path, bars: pd.DataFrame, calendar: pd.DatetimeIndex, qfreq: str = "day",
               universes: dict[str, list[str]] | None = None) -> None:
    """A tiny dump_bin: adjusted prices, `factor`, float32 with a leading calendar start index."""
    (root / "calendars").mkdir(parents=True)
    fmt = "%Y-%m-%d" if qfreq == "day" else "%Y-%m-%d %H:%M:%S"
    (root / "calendars" / f"{qfreq}.txt").write_text("\n".join(calendar.strftime(fmt)) + "\n")
    (root / "instruments").mkdir()
    lines = []
    for code, part in bars.groupby("code"):
        lines.append(f"{code}\t{part.ts.min():%Y-%m-%d}\t{part.ts.max():%Y-%m-%d}")
        folder = root / "features" / code.lower()
        folder.mkdir(parents=True)
        start = int(calendar.get_loc(part.ts.min()))
        full = part.set_index("ts").reindex(calendar[start: int(calendar.get_loc(part.ts.max())) + 1])
        adjusted = {f: full[f] * full["factor"] for f in ("open", "high", "low", "close")}
        adjusted["volume"] = full["volume"] / full["factor"]
        adjusted["factor"] = full["factor"]
        for field, values in adjusted.items():
            np.hstack([[start], values.to_numpy()]).astype("<f4").tofile(folder / f"{field}.{qfreq}.bin")
    (root / "instruments" / "all.txt").write_text("\n".join(lines) + "\n")
    for name, codes in (universes or {}).items():
        (root / "instruments" / f"{name}.txt").write_text(
            "".join(f"{c}\t2024-01-03\t2024-01-05\n" for c in codes))


def qlib_sample() -> tuple[pd.DataFrame, pd.DatetimeIndex]:
    calendar = pd.bdate_range("2024-01-01", periods=8)
    rows = []
    for code, days, factor in (("SH600000", calendar[1:7], 2.0), ("SZ000001", calendar[:8], 0.5)):
        for i, ts in enumerate(days):
            rows.append((code, ts, 10.0 + i, 10.5 + i, 9.5 + i, 10.25 + i, 1000.0 * (i + 1), factor))
    bars = pd.DataFrame(rows, columns=["code", "ts", "open", "high", "low", "close", "volume", "factor"])
    bars.loc[(bars.code == "SZ000001") & (bars.ts == calendar[3]), ["open", "high", "low", "close", "volume"]] = np.nan
    return bars, calendar


def test_qlib_bin_folder_round_trip(store, tmp_path):
    bars, calendar = qlib_sample()
    write_qlib(tmp_path / "qlib", bars, calendar, universes={"csi2": ["SH600000"]})
    report = import_paths([tmp_path / "qlib"], store, market="cn")
    assert report.formats == {"qlib-bin": 2} and report.freq == "1d" and report.universes == ["all", "csi2"]
    got = store.bars("600000.SH")
    exp = bars[bars.code == "SH600000"]
    assert got["ts"].tolist() == exp["ts"].tolist()
    # float32 storage of the adjusted values: ~7 significant digits
    np.testing.assert_allclose(got["close"], exp["close"], rtol=1e-6)
    np.testing.assert_allclose(got["volume"], exp["volume"], rtol=1e-6)
    assert (got["adj_factor"] == 2.0).all()
    sz = store.bars("000001.SZ")
    assert len(sz) == 7 and calendar[3] not in set(sz["ts"])  # the suspended (all-NaN) day is dropped
    assert store.members("csi2", "2024-01-04") == ["600000.SH"]
    assert store.members("csi2", "2024-01-08") == []
    assert store.members("all", "2024-01-01") == ["000001.SZ"]


def test_qlib_bin_minute_folder_and_errors(store, tmp_path):
    calendar = pd.date_range("2024-01-02 09:31", periods=10, freq="1min")
    bars = pd.DataFrame({"code": "SH600000", "ts": calendar, "open": 10.0, "high": 10.5, "low": 9.5, "close": 10.0,
                         "volume": 100.0, "factor": 1.0})
    write_qlib(tmp_path / "q1", bars, calendar, qfreq="1min")
    result = CliRunner().invoke(app, ["data", "import", str(tmp_path / "q1"), "--store", str(store.root),
                                      "--market", "cn", "--format", "qlib-bin"])
    assert result.exit_code == 0, result.output
    assert "1min" in result.output and "600000.SH" in result.output and "all" in result.output
    assert store.listing()[["symbol", "freq", "rows"]].values.tolist() == [["600000.SH", "1min", 10]]
    with pytest.raises(DataValidationError, match="no 1d calendar"):
        import_paths([tmp_path / "q1"], store, market="cn", freq="1d")
    (tmp_path / "q1" / "features" / "sh600000" / "low.1min.bin").unlink()
    with pytest.raises(DataValidationError, match=r"missing low\.1min\.bin") as e:
        import_paths([tmp_path / "q1"], store, market="cn", replace=True)
    assert e.value.file.endswith("sh600000")
    np.array([9, 1, 2], dtype="<f4").tofile(tmp_path / "q1" / "features" / "sh600000" / "low.1min.bin")
    with pytest.raises(DataValidationError, match="runs past the calendar"):
        import_paths([tmp_path / "q1"], store, market="cn", replace=True)


def test_qlib_bin_partly_nan_row_names_calendar_line(store, tmp_path):
    bars, calendar = qlib_sample()
    bars.loc[2, "high"] = np.nan  # SH600000, third bar = calendar line 4
    write_qlib(tmp_path / "qlib", bars, calendar)
    with pytest.raises(DataValidationError, match="price is NaN") as e:
        import_paths([tmp_path / "qlib"], store, market="cn")
    assert (e.value.row, e.value.column) == (4, "high") and e.value.file.endswith("sh600000")
    assert not store.exists()
    bars.loc[2, "high"] = bars.loc[2, "close"] + 1
    write_qlib(tmp_path / "qlib2", bars, calendar)
    factor_bin = tmp_path / "qlib2" / "features" / "sh600000" / "factor.day.bin"
    data = np.fromfile(factor_bin, dtype="<f4")
    data[2] = np.nan  # [start index = 1, line 2, line 3, ...]: the factor of calendar line 3 is missing
    data.tofile(factor_bin)
    with pytest.raises(DataValidationError, match="factor must be a positive number") as e:
        import_paths([tmp_path / "qlib2"], store, market="cn")
    assert e.value.row == 3 and e.value.file.endswith("factor.day.bin")


# ---------------------------------------------------------------- sample and CLI
def test_sp500_sample_through_the_cli(tmp_path):
    from arch.data import sp500

    root = tmp_path / "store"
    runner = CliRunner()
    result = runner.invoke(app, ["data", "sample", "sp500", "--store", str(root)])
    assert result.exit_code == 0, result.output
    assert "5,031" in result.output and "^GSPC" in result.output
    result = runner.invoke(app, ["data", "sample", "sp500", "--store", str(root)])  # idempotent
    assert result.exit_code == 0, result.output
    assert "(0 new)" in result.output

    from quantlm.data.store import Store

    st = Store(root)
    raw = sp500.load()
    got = st.bars("^GSPC")
    assert len(got) == 5031 and got["ts"].iloc[0] == pd.Timestamp("1999-01-04")
    np.testing.assert_array_equal(got["close"].to_numpy(), raw["Close"].to_numpy())
    np.testing.assert_array_equal(got["volume"].to_numpy(), raw["Volume"].to_numpy(dtype="float64"))
    inst = st.instruments()
    assert inst[["symbol", "market", "board"]].values.tolist() == [["^GSPC", "us", "other"]]

    listing = runner.invoke(app, ["data", "list", "--store", str(root)])
    assert listing.exit_code == 0 and "1999-01-04" in listing.output and "2018-12-31" in listing.output
    assert runner.invoke(app, ["data", "sample", "nasdaq", "--store", str(root)]).exit_code == 2


def test_cli_import_summary_and_list_filter(tmp_path):
    write_generic(RAW, tmp_path / "bars.csv")
    root = tmp_path / "store"
    runner = CliRunner()
    result = runner.invoke(app, ["data", "import", str(tmp_path / "bars.csv"), "--store", str(root), "--market", "cn"])
    assert result.exit_code == 0, result.output
    assert "600000.SH" in result.output and "40" in result.output
    listing = runner.invoke(app, ["data", "list", "--store", str(root), "--freq", "1min"])
    assert listing.exit_code == 0 and "0 series" in listing.output
    missing = runner.invoke(app, ["data", "list", "--store", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no quantlm store" in missing.stderr


def test_store_notes_reach_the_report_and_the_cli(tmp_path, monkeypatch):
    """Messages the store leaves on the transaction (`tx.notes`, e.g. a rescaled adj_factor) are reported."""
    from quantlm.data import store as store_mod

    real = store_mod.Store.transaction

    def noting(self, *args, **kwargs):
        cm = real(self, *args, **kwargs)

        class Wrapped:
            def __enter__(self_inner):
                tx = cm.__enter__()
                if not hasattr(tx, "notes"):
                    tx.notes = []
                tx.notes.append("600000.SH: stored adj_factor rescaled by 2")
                return tx

            def __exit__(self_inner, *exc):
                return cm.__exit__(*exc)

        return Wrapped()

    monkeypatch.setattr(store_mod.Store, "transaction", noting)
    write_generic(RAW, tmp_path / "bars.csv")
    report = import_paths([tmp_path / "bars.csv"], Store(tmp_path / "s1"), market="cn")
    assert report.notes == ["600000.SH: stored adj_factor rescaled by 2"] and "rescaled by 2" in str(report)
    result = CliRunner().invoke(app, ["data", "import", str(tmp_path / "bars.csv"), "--store", str(tmp_path / "s2"),
                                      "--market", "cn"])
    assert result.exit_code == 0 and "rescaled by 2" in result.output
