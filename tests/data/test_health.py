"""`quantlm data check`: planted problems are found, clean data is quiet."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from quantlm.cli import app
from quantlm.data.calendars import sessions
from quantlm.data.health import KINDS, check_bars, check_store

T = pd.Timestamp


def clean_bars(symbols=("600000.SH", "000001.SZ"), start="2024-01-02", end="2024-06-28", seed=0) -> pd.DataFrame:
    """Quiet daily bars on real XSHG sessions: small moves, steady volume."""
    rng = np.random.default_rng(seed)
    days = sessions("cn", start, end)
    frames = []
    for sym in symbols:
        close = 10 * np.exp(np.cumsum(rng.normal(0, 0.01, len(days))))
        volume = rng.uniform(1e5, 2e5, len(days)).round()
        frames.append(pd.DataFrame({"symbol": sym, "ts": days, "open": close, "high": close * 1.01,
                                    "low": close * 0.99, "close": close, "volume": volume}))
    return pd.concat(frames, ignore_index=True)


def kinds(warnings: pd.DataFrame) -> dict[str, int]:
    return {k: int(v) for k, v in warnings["kind"].value_counts().items()}


def test_clean_store_has_no_warnings(store):
    store.write_bars(clean_bars(), market="cn")
    report = check_store(store)
    assert len(report.warnings) == 0
    assert list(report.summary.index) == list(KINDS) and report.summary.sum() == 0
    assert report.n_symbols == 2 and report.n_bars == 2 * len(sessions("cn", "2024-01-02", "2024-06-28"))


def test_planted_problems_are_found():
    bars = clean_bars(symbols=("A", "B", "C"))
    days = sessions("cn", "2024-01-02", "2024-06-28")
    a, b, c = (bars["symbol"] == s for s in "ABC")
    # suspension: B has a zero-volume bar on days[30] (and A misses two days, below)
    bars.loc[b & (bars["ts"] == days[30]), "volume"] = 0.0
    # price jump: C's close x1.8 from days[40] on (one jump, not two)
    bars.loc[c & (bars["ts"] >= days[40]), ["open", "high", "low", "close"]] *= 1.8
    # volume jump: A's volume x6 on days[50] (the fall back is not a jump)
    bars.loc[a & (bars["ts"] == days[50]), "volume"] *= 6
    # stale: B's close frozen for 6 bars with volume (days[60..65]); C frozen for 4 bars (too short)
    for sym, lo, n in (("B", 60, 6), ("C", 70, 4)):
        m = (bars["symbol"] == sym) & bars["ts"].isin(days[lo:lo + n])
        bars.loc[m, ["open", "high", "low", "close"]] = 12.34
    # zero-volume run: A for 3 bars at days[80..82] (also 3 suspensions), B for 2 bars (too short)
    bars.loc[a & bars["ts"].isin(days[80:83]), "volume"] = 0.0
    bars.loc[b & bars["ts"].isin(days[90:92]), "volume"] = 0.0
    # a bar on a Saturday
    extra = bars[a].iloc[[5]].assign(ts=T("2024-01-13"))
    # gap: nobody has a bar on days[10]; suspension: A misses days[20] and days[21]
    bars = bars[(bars["ts"] != days[10]) & ~(a & bars["ts"].isin(days[20:22]))]
    bars = pd.concat([bars, extra], ignore_index=True)

    w = check_bars(bars, "cn")
    assert kinds(w) == {"gap": 1, "suspension": 2 + 1 + 3 + 2, "non_session_bar": 1, "price_jump": 1,
                        "volume_jump": 1, "stale_price": 1, "zero_volume_run": 1}
    by = {k: g for k, g in w.groupby("kind")}
    assert by["gap"]["ts"].tolist() == [days[10]] and by["gap"]["symbol"].tolist() == [""]
    susp = by["suspension"]
    assert set(susp.loc[susp["symbol"] == "A", "ts"]) == {days[20], days[21], *days[80:83]}
    assert "no bar" in susp.loc[(susp["symbol"] == "A") & (susp["ts"] == days[20]), "detail"].item()
    assert "zero-volume" in susp.loc[(susp["symbol"] == "B") & (susp["ts"] == days[30]), "detail"].item()
    assert by["price_jump"][["symbol", "ts"]].values.tolist() == [["C", days[40]]]
    assert by["volume_jump"][["symbol", "ts"]].values.tolist() == [["A", days[50]]]
    assert by["stale_price"][["symbol", "ts"]].values.tolist() == [["B", days[60]]]
    assert "6 bars" in by["stale_price"]["detail"].item()
    assert by["zero_volume_run"][["symbol", "ts"]].values.tolist() == [["A", days[80]]]
    assert by["non_session_bar"]["ts"].tolist() == [T("2024-01-13")]
    pd.testing.assert_frame_equal(check_bars(bars.sample(frac=1.0, random_state=0), "cn"), w)  # any row order


def test_suspension_only_inside_a_symbols_own_life():
    bars = clean_bars(symbols=("OLD", "NEW"))
    days = sessions("cn", "2024-01-02", "2024-06-28")
    bars = bars[~((bars["symbol"] == "NEW") & (bars["ts"] < days[30]))]  # listed later
    bars = bars[~((bars["symbol"] == "OLD") & (bars["ts"] > days[90]))]  # delisted earlier
    assert len(check_bars(bars, "cn")) == 0


def test_adjusted_closes_hide_a_split():
    bars = clean_bars(symbols=("A",))
    split = bars["ts"] >= bars["ts"].iloc[40]
    bars.loc[split, ["open", "high", "low", "close"]] /= 2.0
    assert kinds(check_bars(bars, "cn")) == {"price_jump": 1}
    bars["adj_factor"] = np.where(split, 2.0, 1.0)
    assert len(check_bars(bars, "cn")) == 0


def test_intraday_bars_checked_per_bar_and_per_day():
    days = sessions("cn", "2024-03-04", "2024-03-08")
    minutes = pd.DatetimeIndex([d + pd.Timedelta(hours=9, minutes=30 + i) for d in days for i in range(30)])
    rng = np.random.default_rng(1)
    frames = []
    for sym in ("A", "B"):
        close = 10 * np.exp(np.cumsum(rng.normal(0, 0.001, len(minutes))))
        frames.append(pd.DataFrame({"symbol": sym, "ts": minutes, "close": close,
                                    "volume": rng.uniform(1e4, 2e4, len(minutes))}))
    bars = pd.concat(frames, ignore_index=True)
    bars = bars[~((bars["symbol"] == "B") & (bars["ts"].dt.normalize() == days[2]))]  # B misses a day
    bars.loc[(bars["symbol"] == "A") & (bars["ts"] == minutes[45]), "close"] *= 3  # spike up and back
    w = check_bars(bars, "cn")
    assert kinds(w) == {"suspension": 1, "price_jump": 2}
    assert w.loc[w["kind"] == "suspension", "ts"].item() == days[2]


def test_crypto_every_day_is_a_session():
    days = pd.date_range("2024-01-01", "2024-01-31")
    bars = pd.DataFrame({"symbol": "BTC/USDT", "ts": days, "close": np.linspace(40e3, 42e3, 31), "volume": 1.0})
    assert len(check_bars(bars, "crypto")) == 0
    w = check_bars(bars.drop(index=[3, 4]), "crypto")
    assert kinds(w) == {"gap": 2}


def test_cli_check_prints_counts_and_writes_json(store, tmp_path):
    bars = clean_bars()
    bars.loc[5, "volume"] *= 10
    store.write_bars(bars, market="cn")
    out = tmp_path / "report.json"
    res = CliRunner().invoke(app, ["data", "check", "--store", str(store.root), "--json", str(out), "--examples", "3"])
    assert res.exit_code == 0, res.output
    assert "volume_jump" in res.output and "stale_price" in res.output
    report = json.loads(out.read_text())
    assert report["summary"]["volume_jump"] == 1 and report["warnings"][0]["kind"] == "volume_jump"


def test_cli_check_missing_store_exits_2(tmp_path):
    res = CliRunner().invoke(app, ["data", "check", "--store", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "no quantlm store" in res.output


def test_examples_cover_every_kind_found():
    from quantlm.data.health import HealthReport

    bars = clean_bars(symbols=("A", "B"))
    bars.loc[bars.index[5:9], "volume"] = 0.0  # 4 suspensions + 1 zero-volume run
    bars.loc[bars.index[20], "volume"] *= 10  # 1 volume jump
    w = check_bars(bars, "cn")
    report = HealthReport(warnings=w, freq="1d", n_symbols=2, n_bars=len(bars))
    assert set(report.examples(3)["kind"]) == {"suspension", "volume_jump", "zero_volume_run"}
    assert len(report.examples(2)) == 2 and len(report.examples(0)) == 0


def test_metadata_section_on_a_bare_cn_store_only(store, tmp_path):
    from quantlm.data.health import META_KINDS, check_metadata

    bars = clean_bars(symbols=("600000.SH", "000001.SZ", "000300.SH"))
    store.write_bars(bars, market="cn")
    report = check_store(store)
    assert report.summary.sum() == 0  # bar checks unchanged: metadata is its own section
    assert report.metadata["kind"].tolist() == list(META_KINDS)
    detail = dict(zip(report.metadata["kind"], report.metadata["detail"], strict=True))
    assert detail["missing_list_dates"].startswith("2 of 2 stock symbols have no list_date")
    assert "import-flags" in detail["missing_st_flags"] and "000300.SH" in detail["no_benchmark"]
    out = tmp_path / "report.json"
    report.write_json(out)
    assert [m["kind"] for m in json.loads(out.read_text())["metadata"]] == list(META_KINDS)
    # complete metadata: no warnings
    with store.transaction() as tx:
        tx.put("instruments", "", pd.DataFrame({"symbol": ["600000.SH", "000001.SZ"], "market": "cn",
                                                "board": "main", "name": "", "list_date": T("2000-01-04"),
                                                "delist_date": pd.NaT}))
        tx.put("flags", "", pd.DataFrame({"symbol": ["600000.SH"], "flag": ["st"], "start": [T("2024-02-01")],
                                          "end": [T("2024-03-01")]}))
        tx.set_meta("benchmark", "000300.SH")
    assert len(check_metadata(store)) == 0 and len(check_store(store).metadata) == 0


def test_no_metadata_section_for_other_markets(store):
    days = pd.date_range("2024-01-01", "2024-01-31")
    store.write_bars(pd.DataFrame({"symbol": "BTC/USDT", "ts": days, "open": 1.0, "high": 1.0, "low": 1.0,
                                   "close": 1.0, "volume": 1.0}), market="crypto")
    assert len(check_store(store).metadata) == 0
