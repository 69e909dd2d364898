"""Reference-data imports: instruments, ST flags, benchmark; and the CLI commands around them."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from quantlm.backtest.rules import limit_fractions, st_mask
from quantlm.cli import app
from quantlm.data.metadata import (
    import_flags,
    import_instruments,
    merge_spans,
    parse_dates,
    set_benchmark,
)
from quantlm.data.schema import DataValidationError
from tests.conftest import make_bars

T = pd.Timestamp

INSTRUMENTS_GBK = (
    "股票代码,证券简称,上市日期,退市日期,板块\n"
    "sh600000,浦发银行,1999-11-10,,\n"
    "000001.XSHE,平安银行,19910403,,主板\n"
    "SH000300,沪深300,2005/04/08,,\n"
    "399001.SZ,深证成指,1995-01-23,,\n"
    "sz300750,宁德时代,2018-06-11,,创业板\n"
    "688001.SH,华兴源创,2019-07-22,,\n"
)


def write_csv(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def catalog_files(store) -> list[str]:
    return sorted(p.name for p in (store.root / "files").rglob("*.parquet")) if (store.root / "files").exists() else []


def test_dates_iso_compact_slashed_and_ambiguous_refused():
    got = parse_dates(pd.Series(["2020-01-05", "20200105", "2020/1/5", "", "2020-01-05 00:00:00"]), "f.csv", "d")
    assert list(pd.DatetimeIndex(got)) == [T("2020-01-05")] * 3 + [pd.NaT, T("2020-01-05")]
    with pytest.raises(DataValidationError) as e:
        parse_dates(pd.Series(["2020-01-05", "05/01/2020"]), "f.csv", "d")
    assert e.value.row == 2 and e.value.column == "d" and "ambiguous" in e.value.problem
    with pytest.raises(DataValidationError, match="not a valid date"):
        parse_dates(pd.Series(["2020-02-30"]), "f.csv", "d")


def test_instruments_gbk_chinese_headers_boards_derived(store, tmp_path):
    path = write_csv(tmp_path / "stocks.csv", INSTRUMENTS_GBK, "gbk")
    report = import_instruments(path, store, market="cn")
    ins = store.instruments().set_index("symbol")
    assert sorted(ins.index) == ["000001.SZ", "000300.SH", "300750.SZ", "399001.SZ", "600000.SH", "688001.SH"]
    assert ins["board"].to_dict() == {"600000.SH": "main", "000001.SZ": "main", "000300.SH": "index",
                                      "399001.SZ": "index", "300750.SZ": "chinext", "688001.SH": "star"}
    assert ins.loc["600000.SH", "name"] == "浦发银行" and (ins["market"] == "cn").all()
    assert ins.loc["000001.SZ", "list_date"] == T("1991-04-03") and ins.loc["000300.SH", "list_date"] == T("2005-04-08")
    assert ins["delist_date"].isna().all()
    assert report.rows == 6 and report.new_symbols == 6 and report.derived["board derived from the code"] == 4
    assert report.derived["index symbols"] == 2


def test_instruments_bare_codes_under_infer(store, tmp_path):
    path = write_csv(tmp_path / "bare.csv", "代码,名称\n300750,宁德时代\n000300,沪深300指数\n430047,诺思兰德\n")
    with pytest.raises(DataValidationError) as e:
        import_instruments(path, store)
    assert (e.value.row, e.value.column) == (1, "代码")
    import_instruments(path, store, bare_codes="infer")
    assert store.instruments()[["symbol", "board"]].values.tolist() == [
        ["300750.SZ", "chinext"], ["000300.SH", "index"], ["430047.BJ", "bse"]]


def test_instruments_utf8_bom_upsert_keeps_other_symbols_and_stored_columns(store, tmp_path):
    import_instruments(write_csv(tmp_path / "a.csv", INSTRUMENTS_GBK, "gbk"), store)
    # BOM, English headers, only a delist date for one symbol: the name and list date stay
    path = write_csv(tmp_path / "b.csv", "\ufeffts_code,symbol,delist_date\n600000.SH,600000,2030-01-02\n")
    report = import_instruments(path, store)
    ins = store.instruments().set_index("symbol")
    assert len(ins) == 6 and report.new_symbols == 0
    assert ins.loc["600000.SH", "delist_date"] == T("2030-01-02")
    assert ins.loc["600000.SH", "name"] == "浦发银行" and ins.loc["600000.SH", "list_date"] == T("1999-11-10")


@pytest.mark.parametrize("row,column,problem", [
    ("600001.SH,Foo,2010-05-04,2009-01-01,", "退市日期", "before"),
    ("600001.SH,Foo,2010-05-04,,gem", "板块", "unknown board"),
    ("600001.SH,Foo,04/05/2010,,", "上市日期", "ambiguous"),
    ("600001,Foo,2010-05-04,,", "股票代码", "names no exchange"),
    ("600000.SH,Again,2010-05-04,,", "股票代码", "already given in row 1"),
])
def test_bad_instrument_row_names_file_row_column_and_writes_nothing(store, tmp_path, row, column, problem):
    store.write_bars(make_bars(), market="cn")
    before = catalog_files(store)
    head, first = INSTRUMENTS_GBK.splitlines()[:2]
    path = write_csv(tmp_path / "bad.csv", f"{head}\n{first}\n{row}\n", "gbk")
    with pytest.raises(DataValidationError) as e:
        import_instruments(path, store)
    assert (e.value.file, e.value.row, e.value.column) == (str(path), 2, column)
    assert problem in e.value.problem
    assert catalog_files(store) == before and len(store.instruments()) == 0


def test_flags_import_gives_st_limits_inside_the_span(store, tmp_path):
    path = write_csv(tmp_path / "st.csv", "symbol,flag,start,end\n"
                                          "sh600000,ST,2023-01-10,2023-01-20\n"
                                          "600000.SH,*ST,2023-01-20,2023-02-03\n"
                                          "000001.SZ,st,2023-03-01,\n")
    report = import_flags(path, store)
    flags = store.flags()
    assert flags[["symbol", "flag"]].values.tolist() == [["000001.SZ", "st"], ["600000.SH", "st"]]
    assert flags["start"].tolist() == [T("2023-03-01"), T("2023-01-10")]
    assert pd.isna(flags["end"].iloc[0]) and flags["end"].iloc[1] == T("2023-02-03")
    assert report.derived["overlapping spans merged"] == 1

    sessions = pd.bdate_range("2023-01-02", "2023-03-31")
    symbols = ["600000.SH", "000001.SZ"]
    mask = st_mask(store.flags(), symbols, sessions)
    up, down = limit_fractions(symbols, sessions, np.ones((len(sessions), 2), dtype=bool), store.instruments(),
                               store.flags())
    inside = (sessions >= T("2023-01-10")) & (sessions <= T("2023-02-03"))
    assert (mask[:, 0] == inside).all()
    assert (up[inside, 0] == 0.05).all() and (up[~inside, 0] == 0.10).all() and (down[inside, 0] == 0.05).all()
    assert (up[sessions >= T("2023-03-01"), 1] == 0.05).all() and (up[sessions < T("2023-03-01"), 1] == 0.10).all()


def test_flags_reimport_replaces_that_symbols_spans_only(store, tmp_path):
    import_flags(write_csv(tmp_path / "a.csv", "symbol,start,end\n600000.SH,2020-01-02,2020-06-30\n"
                                               "000001.SZ,2021-01-04,2021-02-01\n"), store)
    import_flags(write_csv(tmp_path / "b.csv", "代码,开始日期,结束日期\n600000.SH,2022-01-04,\n"), store)
    flags = store.flags().sort_values("symbol")
    assert flags[["symbol", "start"]].values.tolist() == [["000001.SZ", T("2021-01-04")], ["600000.SH", T("2022-01-04")]]


@pytest.mark.parametrize("row,column,problem", [
    ("600000.SH,st,2020-05-01,2020-04-01", "end", "before"),
    ("600000.SH,pt,2020-05-01,", "flag", "unknown flag"),
    ("600000.SH,st,,2020-04-01", "start", "missing date"),
])
def test_bad_flag_row_names_row_and_writes_nothing(store, tmp_path, row, column, problem):
    path = write_csv(tmp_path / "st.csv", f"symbol,flag,start,end\n000001.SZ,st,2020-01-02,\n{row}\n")
    with pytest.raises(DataValidationError) as e:
        import_flags(path, store)
    assert (e.value.file, e.value.row, e.value.column) == (str(path), 2, column) and problem in e.value.problem
    assert not store.exists() or len(store.flags()) == 0


def test_merge_spans_overlap_open_end_and_gap():
    spans = pd.DataFrame({"symbol": ["A", "A", "A", "B"], "flag": "st",
                          "start": pd.to_datetime(["2020-01-01", "2020-02-01", "2021-01-01", "2020-01-01"]),
                          "end": pd.to_datetime(["2020-03-01", "2020-02-15", None, "2020-01-31"])})
    out = merge_spans(spans)
    assert out[["symbol", "start"]].values.tolist() == [["A", T("2020-01-01")], ["A", T("2021-01-01")],
                                                        ["B", T("2020-01-01")]]
    assert out["end"].iloc[0] == T("2020-03-01") and pd.isna(out["end"].iloc[1])


def test_set_benchmark_needs_bars_then_records_meta_and_marks_index(store):
    store.write_bars(make_bars(["600000.SH", "000001.SZ"]), market="cn")
    with pytest.raises(DataValidationError, match="no bars for 000300.SH") as e:
        set_benchmark(store, "SH000300")
    assert "import" in str(e.value) and "benchmark" not in store.meta()
    store.write_bars(make_bars(["000300.SH"], seed=1), market="cn")
    with pytest.raises(DataValidationError, match=r"index symbols \(candidates\): 000300.SH"):
        set_benchmark(store, "000905.SH")
    report = set_benchmark(store, "sh.000300")
    assert report.symbol == "000300.SH" and report.marked_index and report.rows == 60
    assert store.meta()["benchmark"] == "000300.SH"
    ins = store.instruments()
    assert ins[["symbol", "market", "board"]].values.tolist() == [["000300.SH", "cn", "index"]]


def test_cli_check_metadata_warnings_go_away_after_imports(store, tmp_path):
    store.write_bars(make_bars(["600000.SH", "000001.SZ", "000300.SH"]), market="cn")
    runner = CliRunner()
    kinds = ("missing_list_dates", "missing_st_flags", "no_benchmark")
    res = runner.invoke(app, ["data", "check", "--store", str(store.root)])
    assert res.exit_code == 0, res.output
    out = flat(res.output)
    assert all(k in out for k in kinds)
    assert "2 of 2 stock symbols have no list_date" in out and "candidates (stored index symbols): 000300.SH" in out

    ins = write_csv(tmp_path / "ins.csv", INSTRUMENTS_GBK, "gbk")
    st = write_csv(tmp_path / "st.csv", "symbol,flag,start,end\n600000.SH,*ST,2023-01-10,2023-01-20\n")
    for args in (["import-instruments", str(ins)], ["import-flags", str(st)], ["set-benchmark", "000300.SH"]):
        res = runner.invoke(app, ["data", *args, "--store", str(store.root)])
        assert res.exit_code == 0, res.output
    assert "000300.SH" in res.output
    res = runner.invoke(app, ["data", "check", "--store", str(store.root)])
    assert res.exit_code == 0 and not any(k in res.output for k in kinds), res.output


def test_cli_import_instruments_bad_row_exits_non_zero(store, tmp_path):
    path = write_csv(tmp_path / "ok.csv", "code,name\n600000,X\n")
    res = CliRunner().invoke(app, ["data", "import-instruments", str(path), "--store", str(store.root),
                                   "--bare-codes", "infer"])
    assert res.exit_code == 0 and "600000.SH" in res.output, res.output
    path = write_csv(tmp_path / "bad.csv", "code,name,list_date,delist_date\n600000.SH,X,2010-01-04,2009-01-01\n")
    res = CliRunner().invoke(app, ["data", "import-instruments", str(path), "--store", str(store.root)])
    assert res.exit_code == 2
    assert "row 1" in flat(res.output) and "delist_date" in res.output
    res = CliRunner().invoke(app, ["data", "set-benchmark", "000300.SH", "--store", str(store.root)])
    assert res.exit_code == 2
