"""A-share vendor files: Chinese headers, notes above the header, encodings, East Money lots, Baostock,
volume-unit inference, ambiguous dates, adj_factor from the previous close, ST spans, listing dates, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from quantlm.cli import app
from quantlm.data.importers import detect_format, import_paths
from quantlm.data.schema import DataValidationError

FULL = ["股票代码", "股票名称", "交易日期", "开盘价", "最高价", "最低价", "收盘价", "前收盘价", "成交量", "成交额",
        "流通市值", "总市值"]


def vendor_frame(code: str = "600000.SH", names: list[str] | None = None, closes: list[float] | None = None,
                 preclose: list[float] | None = None, lots: bool = False) -> pd.DataFrame:
    """A full-header vendor table (newest first, as many vendors write it)."""
    closes = closes or [10.0, 10.2, 10.1, 10.3]
    n = len(closes)
    dates = pd.bdate_range("2024-01-02", periods=n)
    volume = np.arange(1, n + 1) * 100_000.0
    pre = preclose or [closes[0]] + closes[:-1]
    df = pd.DataFrame({"股票代码": code, "股票名称": names or ["浦发银行"] * n, "交易日期": dates.strftime("%Y-%m-%d"),
                       "开盘价": closes, "最高价": [c + 0.1 for c in closes], "最低价": [c - 0.1 for c in closes],
                       "收盘价": closes, "前收盘价": pre, "成交量": volume / 100 if lots else volume,
                       "成交额": volume * np.array(closes), "流通市值": 1e10, "总市值": 2e10})
    return df.iloc[::-1].reset_index(drop=True)


def write_vendor(df: pd.DataFrame, path: Path, encoding: str = "utf-8", note: str | None = "数据由某某提供,仅供参考") -> None:
    text = df.to_csv(index=False)
    if note:
        text = note + "\n" + text
    path.write_bytes(text.encode(encoding))


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gbk"])
def test_full_chinese_headers_with_a_note_line_in_every_encoding(store, tmp_path, encoding):
    write_vendor(vendor_frame(code="'600000"), tmp_path / "pf.csv", encoding=encoding)  # Excel-protected code
    report = import_paths([tmp_path / "pf.csv"], store, market="cn", bare_codes="infer")
    assert report.formats == {"cn-vendor": 1} and report.symbols == ["600000.SH"]
    assert report.encodings == {"gbk": {"gb18030": 1}}.get(encoding, {encoding: 1})
    assert report.volume_units == {"shares (inferred from amount)": 1}
    got = store.bars("600000.SH")
    assert got["close"].tolist() == [10.0, 10.2, 10.1, 10.3] and got["volume"].iloc[0] == 100_000.0
    inst = store.instruments()
    assert inst[["symbol", "board", "name"]].values.tolist() == [["600000.SH", "main", "浦发银行"]]


def test_error_rows_count_from_the_header(store, tmp_path):
    df = vendor_frame().astype({"收盘价": object})
    df.loc[2, "收盘价"] = "abc"
    write_vendor(df, tmp_path / "bad.csv", note="第一行说明\n第二行说明")
    with pytest.raises(DataValidationError, match="not a number: 'abc'") as e:
        import_paths([tmp_path / "bad.csv"], store, market="cn")
    assert (e.value.row, e.value.column) == (3, "收盘价")  # 1-based data row after the header
    assert not store.exists()


def test_east_money_short_headers_in_lots(store, tmp_path):
    dates = pd.bdate_range("2024-01-02", periods=3).strftime("%Y-%m-%d")
    em = pd.DataFrame({"日期": dates, "开盘": [9.0, 9.1, 9.2], "收盘": [9.1, 9.2, 9.3], "最高": [9.2, 9.3, 9.4],
                       "最低": [8.9, 9.0, 9.1], "成交量": [1000.0, 2000.0, 3000.0], "成交额": [910_000.0, 1_840_000.0, 2_790_000.0],
                       "振幅": 1.0, "涨跌幅": 1.0, "涨跌额": 0.1, "换手率": 0.5})
    em.to_csv(tmp_path / "sz000001.csv", index=False)
    assert detect_format(em.columns) == "eastmoney"
    report = import_paths([tmp_path / "sz000001.csv"], store, market="cn")
    assert report.volume_units == {"lots of 100 (inferred from amount)": 1}
    assert store.bars("000001.SZ")["volume"].tolist() == [100_000.0, 200_000.0, 300_000.0]
    em.drop(columns="成交额").to_csv(tmp_path / "sz000002.csv", index=False)  # no amount: the documented unit
    report = import_paths([tmp_path / "sz000002.csv"], store, market="cn")
    assert report.volume_units == {"lots (eastmoney default, no amount)": 1}
    assert store.bars("000002.SZ")["volume"].tolist() == [100_000.0, 200_000.0, 300_000.0]


def test_volume_unit_inferred_both_ways_and_refused(store, tmp_path):
    write_vendor(vendor_frame(lots=True), tmp_path / "lots.csv")
    report = import_paths([tmp_path / "lots.csv"], store, market="cn")
    assert report.volume_units == {"lots of 100 (inferred from amount)": 1}
    assert store.bars("600000.SH")["volume"].iloc[0] == 100_000.0
    df = vendor_frame(code="000001.SZ")
    df["成交额"] = df["成交额"] * 10  # amount in tenths of a CNY? neither shares nor lots
    write_vendor(df, tmp_path / "odd.csv")
    with pytest.raises(DataValidationError, match="cannot tell the volume unit") as e:
        import_paths([tmp_path / "odd.csv"], store, market="cn")
    assert e.value.file.endswith("odd.csv") and e.value.column == "成交量"


def baostock_frame() -> pd.DataFrame:
    rows = [  # date, open, high, low, close, preclose, volume, amount, tradestatus, isST
        ("2024-01-02", 5.0, 5.1, 4.9, 5.0, 5.0, 1000, 5000.0, 1, 0),
        ("2024-01-03", "", "", "", 5.0, 5.0, 0, "", 0, 0),  # suspended, empty cells
        ("2024-01-04", 5.0, 5.2, 4.9, 5.1, 5.0, 2000, 10200.0, 1, 1),
        ("2024-01-05", 5.1, 5.2, 5.0, 5.1, 5.1, 1500, 7650.0, 1, 1),
        ("2024-01-08", 5.1, 5.1, 5.1, 5.1, 5.1, 0, 0.0, 0, 1),  # suspended, prices filled
        ("2024-01-09", 5.1, 5.3, 5.0, 5.2, 5.1, 1800, 9360.0, 1, 0),
    ]
    df = pd.DataFrame(rows, columns=["date", "open", "high", "low", "close", "preclose", "volume", "amount",
                                     "tradestatus", "isST"])
    df.insert(1, "code", "sh.600666")
    return df.assign(adjustflag=3, turn=0.1, pctChg=0.0)


def test_baostock_suspended_rows_dropped_and_st_flags(store, tmp_path):
    baostock_frame().to_csv(tmp_path / "bs.csv", index=False)
    report = import_paths([tmp_path / "bs.csv"], store, market="cn")
    assert report.formats == {"baostock": 1} and report.suspended_rows == 2 and report.rows == 4
    got = store.bars("600666.SH")
    assert [str(t.date()) for t in got["ts"]] == ["2024-01-02", "2024-01-04", "2024-01-05", "2024-01-09"]
    flags = store.flags("st")
    assert flags[["symbol", "start", "end"]].values.tolist() == [
        ["600666.SH", pd.Timestamp("2024-01-04"), pd.Timestamp("2024-01-05")]]
    assert report.derived["st spans"] == 1


def test_day_month_ambiguous_dates_need_a_format(store, tmp_path):
    df = pd.DataFrame({"date": ["03/04/2024", "04/04/2024"], "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0,
                       "volume": 1.0})
    tmp_path = tmp_path / "in"
    tmp_path.mkdir()
    df.to_csv(tmp_path / "600000.SH.csv", index=False)
    with pytest.raises(DataValidationError, match="ambiguous.*--date-format") as e:
        import_paths([tmp_path], store, market="cn")
    assert (e.value.row, e.value.column) == (1, "date")
    pd.DataFrame({**df, "date": ["3/4/24", "4/4/24"]}).to_csv(tmp_path / "600000.SH.csv", index=False)
    with pytest.raises(DataValidationError, match="ambiguous"):
        import_paths([tmp_path], store, market="cn")
    df.to_csv(tmp_path / "600000.SH.csv", index=False)
    import_paths([tmp_path], store, market="cn", date_format="%d/%m/%Y")
    assert store.bars("600000.SH")["ts"].tolist() == [pd.Timestamp("2024-04-03"), pd.Timestamp("2024-04-04")]
    for spelling in ("2024/04/05", "20240408", "2024-04-09T00:00:00"):  # unambiguous: no option needed
        pd.DataFrame({**df.iloc[:1], "date": [spelling]}).to_csv(tmp_path / "600000.SH.csv", index=False)
        import_paths([tmp_path], store, market="cn", freq="1d")
    assert len(store.bars("600000.SH")) == 5


def test_adj_factor_from_preclose_bonus_issue_and_cash_dividend(store, tmp_path):
    # day 3: 10-for-10 bonus issue (preclose = close / 2); day 5: cash dividend of 0.30 per share
    closes = [20.0, 20.4, 10.3, 10.5, 10.1, 10.2]
    pre = [20.0, 20.0, 10.2, 10.3, 10.2, 10.1]
    write_vendor(vendor_frame(closes=closes, preclose=pre), tmp_path / "pf.csv")
    report = import_paths([tmp_path / "pf.csv"], store, market="cn")
    f3 = 20.4 / 10.2
    f5 = f3 * 10.5 / 10.2
    expected = [1.0, 1.0, f3, f3, f5, f5]
    np.testing.assert_allclose(store.bars("600000.SH")["adj_factor"], expected, rtol=1e-12)
    assert report.derived["corporate-action days"] == 2
    adjusted = store.bars("600000.SH")["close"] * store.bars("600000.SH")["adj_factor"]
    assert adjusted.iloc[2] / adjusted.iloc[1] - 1 == pytest.approx(10.3 / 10.2 - 1, rel=1e-12)


def test_st_spans_and_listing_date_from_names(store, tmp_path):
    names = ["N中芯", "C中芯", "中芯国际", "ST中芯", "*ST中芯", "中芯国际", "XD中芯国"]
    closes = [50.0, 51.0, 52.0, 50.0, 49.0, 48.0, 48.5]
    write_vendor(vendor_frame(code="688981", names=names, closes=closes), tmp_path / "688981.csv", note=None)
    report = import_paths([tmp_path / "688981.csv"], store, market="cn", bare_codes="infer")
    days = pd.bdate_range("2024-01-02", periods=7)
    flags = store.flags("st")
    assert flags[["symbol", "flag", "start", "end"]].values.tolist() == [["688981.SH", "st", days[3], days[4]]]
    inst = store.instruments().set_index("symbol").loc["688981.SH"]
    assert inst["list_date"] == days[0] and inst["board"] == "star" and inst["name"] == "中芯国际"
    assert report.derived["list dates"] == 1
    # a re-import of a later range keeps the stored list date and replaces st spans only in its own range
    later = vendor_frame(code="688981.SH", names=["中芯国际"] * 2, closes=[48.5, 49.0])
    later["交易日期"] = pd.bdate_range("2024-01-11", periods=2).strftime("%Y-%m-%d")[::-1]
    write_vendor(later, tmp_path / "later.csv", note=None)
    import_paths([tmp_path / "later.csv"], store, market="cn")
    assert store.instruments().set_index("symbol").loc["688981.SH", "list_date"] == days[0]
    assert len(store.flags("st")) == 1


def test_cli_imports_a_folder_of_mixed_vendor_files(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_vendor(vendor_frame(), folder / "a_gbk.csv", encoding="gbk")
    baostock_frame().to_csv(folder / "b_baostock.csv", index=False)
    em = vendor_frame(code="399001", names=["深证成指"] * 4).rename(columns={"交易日期": "日期", "开盘价": "开盘",
                                                                        "收盘价": "收盘", "最高价": "最高", "最低价": "最低"})
    em.drop(columns=["股票名称", "前收盘价", "流通市值", "总市值"]).to_csv(folder / "c_em.csv", index=False)
    root = tmp_path / "store"
    args = ["data", "import", str(folder), "--store", str(root), "--market", "cn"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--bare-codes" in result.stderr  # 399001 has no exchange
    result = CliRunner().invoke(app, [*args, "--bare-codes", "infer"])
    assert result.exit_code == 0, result.output
    out = "".join(result.output.split())
    for text in ("cn-vendor(1)", "baostock(1)", "eastmoney(1)", "gb18030", "suspendedrowsdropped", "stspans:1"):
        assert text in out, text
    from quantlm.data.store import Store

    st = Store(root)
    assert st.symbols() == ["399001.SZ", "600000.SH", "600666.SH"]
    assert st.instruments().set_index("symbol").loc["399001.SZ", "board"] == "index"
