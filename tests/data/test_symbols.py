"""A-share symbol spellings -> 600000.SH, bare codes under --bare-codes, ambiguous 000xxx."""

from __future__ import annotations

import pandas as pd
import pytest

from quantlm.data.importers import import_paths
from quantlm.data.schema import DataValidationError
from quantlm.data.symbols import SymbolError, normalize_cn_symbol


@pytest.mark.parametrize(("text", "symbol"), [
    ("sh600000", "600000.SH"), ("SH600000", "600000.SH"), ("sh.600000", "600000.SH"), ("600000.sh", "600000.SH"),
    ("600000.SH", "600000.SH"), ("600000.XSHG", "600000.SH"), ("000001.XSHE", "000001.SZ"),
    ("bj430047", "430047.BJ"), ("430047.BJ", "430047.BJ"), ("sz.000001", "000001.SZ"), (" 'SZ000001 ", "000001.SZ"),
    ("600000.SS", "600000.SH"), ("CSI300", "CSI300"),
])
def test_every_spelling(text, symbol):
    assert normalize_cn_symbol(text) == symbol


@pytest.mark.parametrize(("code", "rule", "symbol"), [
    ("600000", "infer", "600000.SH"), ("900901", "infer", "900901.SH"), ("300750", "infer", "300750.SZ"),
    ("002594", "infer", "002594.SZ"), ("399001", "infer", "399001.SZ"), ("430047", "infer", "430047.BJ"),
    ("830799", "infer", "830799.BJ"), ("920001", "infer", "920001.BJ"), ("000001", "sz", "000001.SZ"),
    ("000001", "sh", "000001.SH"), ("600000", "sz", "600000.SZ"),
])
def test_bare_codes_follow_the_chosen_rule(code, rule, symbol):
    assert normalize_cn_symbol(code, rule) == symbol


def test_bare_codes_are_refused_by_default_and_000xxx_is_ambiguous():
    with pytest.raises(SymbolError, match="--bare-codes"):
        normalize_cn_symbol("600000")
    with pytest.raises(SymbolError, match=r"000001\.SZ .*000001\.SH"):
        normalize_cn_symbol("000001", "infer")
    assert normalize_cn_symbol("000001", "infer", name="上证指数") == "000001.SH"
    with pytest.raises(SymbolError, match="leading zeros"):
        normalize_cn_symbol("651", "infer")
    assert normalize_cn_symbol("651", "sz", pad=True) == "000651.SZ"


def _daily(symbols: list[str], names: list[str] | None = None) -> pd.DataFrame:
    df = pd.DataFrame({"code": symbols, "date": [f"2024-01-0{2 + i}" for i in range(len(symbols))],
                       "open": 10.0, "high": 10.5, "low": 9.5, "close": 10.0, "volume": 1000.0})
    if names is not None:
        df.insert(1, "name", names)
    return df


def test_import_normalises_every_row_and_names_the_ambiguous_row(store, tmp_path):
    spellings = ["sh600000", "SH600000", "sh.600000", "600000.sh", "600000.XSHG"]
    pd.DataFrame({**_daily(spellings), "code": spellings}).to_csv(tmp_path / "a.csv", index=False)
    report = import_paths([tmp_path / "a.csv"], store, market="cn")
    assert report.symbols == ["600000.SH"] and len(store.bars("600000.SH")) == 5

    _daily(["600519", "000001", "300750"]).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DataValidationError, match="--bare-codes") as e:
        import_paths([tmp_path / "b.csv"], store, market="cn")
    assert (e.value.row, e.value.column) == (1, "code")
    with pytest.raises(DataValidationError, match=r"000001\.SZ \(a Shenzhen stock\) or 000001\.SH \(an SSE index\)") as e:
        import_paths([tmp_path / "b.csv"], store, market="cn", bare_codes="infer")
    assert (e.value.row, e.value.column) == (2, "code") and e.value.file.endswith("b.csv")
    report = import_paths([tmp_path / "b.csv"], store, market="cn", bare_codes="sz", replace=True)
    assert report.symbols == ["000001.SZ", "300750.SZ", "600519.SZ"]


def test_index_name_resolves_000001_and_lost_zeros_are_padded(store, tmp_path):
    df = _daily(["000001", "000001"], names=["上证指数", "上证指数"])
    df.to_csv(tmp_path / "idx.csv", index=False)
    assert import_paths([tmp_path / "idx.csv"], store, market="cn", bare_codes="infer").symbols == ["000001.SH"]
    _daily(["651", "651"]).to_csv(tmp_path / "gree.csv", index=False)  # Excel dropped the zeros of 000651
    assert import_paths([tmp_path / "gree.csv"], store, market="cn", bare_codes="sz").symbols == ["000651.SZ"]


def test_file_stem_spellings_and_other_markets(store, tmp_path):
    df = _daily(["x", "x"]).drop(columns="code")
    df.to_csv(tmp_path / "SH#600519.csv", index=False)
    df.to_csv(tmp_path / "000001.XSHE.csv", index=False)
    report = import_paths([tmp_path], store, market="cn")
    assert report.symbols == ["000001.SZ", "600519.SH"]
    df.to_csv(tmp_path / "600000.csv", index=False)
    with pytest.raises(DataValidationError, match="file name.*--bare-codes"):
        import_paths([tmp_path / "600000.csv"], store, market="cn")
    (tmp_path / "us").mkdir()
    df.to_csv(tmp_path / "us" / "sh600000.csv", index=False)  # not an A-share market: kept as written
    assert import_paths([tmp_path / "us"], store, market="us").symbols == ["sh600000"]
