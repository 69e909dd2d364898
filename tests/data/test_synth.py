"""The synthetic A-share market: realistic rules, planted alpha of known strength, determinism, store/CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from quantlm.data.schema import validate_bars
from quantlm.data.synth import (
    SynthConfig,
    SynthConfigError,
    generate_market,
    labels,
    oracle_rank_ic,
    rank_ic_by_session,
    write_market,
)

SMALL = SynthConfig(n_symbols=60, start="2019-01-02", end="2021-12-31", seed=7)
BENCH = SMALL.benchmark
TABLES = ("bars", "instruments", "flags", "universes", "texts", "text_truth", "industries", "oracle")


@pytest.fixture(scope="module")
def market():
    return generate_market(SMALL)


@pytest.fixture(scope="module")
def stock_bars(market) -> pd.DataFrame:
    """Stock bars with prev_close (last traded close), board, ST flag and bar number since listing."""
    b = market.bars[market.bars["symbol"] != BENCH].copy()
    b["prev_close"] = b.groupby("symbol")["close"].shift()
    b = b.merge(market.instruments[["symbol", "board", "list_date"]], on="symbol")
    b["bar_no"] = b.groupby("symbol").cumcount()
    b["first_ts"] = b.groupby("symbol")["ts"].transform("min")
    st = np.zeros(len(b), dtype=bool)
    for row in market.flags.itertuples():
        st |= ((b["symbol"] == row.symbol) & (b["ts"] >= row.start) & (b["ts"] <= row.end)).to_numpy()
    b["st"] = st
    return b.dropna(subset=["prev_close"]).reset_index(drop=True)


def _limit(b: pd.DataFrame) -> np.ndarray:
    """Price-limit fraction by board, date and ST (market-rules.md), written independently of the generator."""
    lim = np.select(
        [b["st"], b["board"] == "star", b["board"] == "bse",
         (b["board"] == "chinext") & (b["ts"] >= pd.Timestamp("2020-08-24"))],
        [0.05, 0.20, 0.30, 0.20], 0.10)
    return lim


def _no_limit_days(b: pd.DataFrame) -> np.ndarray:
    """Early IPO sessions without a limit (or with the old +44% / -36% day-1 cap)."""
    ipo = b["list_date"] == b["first_ts"]
    five_free = (b["board"] == "star") | ((b["board"] == "chinext") & (b["list_date"] >= pd.Timestamp("2020-08-24"))) | (
        (b["board"] == "main") & (b["list_date"] >= pd.Timestamp("2023-04-10")))
    days = np.where(five_free, 5, 1)  # bar_no counts from 0 and the first bar has no prev_close
    return (ipo & (b["bar_no"] < days)).to_numpy()


def test_bars_valid_and_reference_tables(market):
    validate_bars(market.bars, freq="1d")
    ins = market.instruments
    assert set(ins["board"]) >= {"main", "chinext", "star", "index"}
    assert ins.loc[ins["symbol"] == BENCH, "board"].item() == "index"
    assert ins["symbol"].is_unique and len(ins) == SMALL.n_symbols + 1
    stocks = ins[ins["board"] != "index"]
    assert stocks["symbol"].str.match(r"^(60[013]|00[012]|30[01]|688)\d{3}\.(SH|SZ)$|^8\d{5}\.BJ$").all()
    assert (stocks["list_date"] > pd.Timestamp(SMALL.start)).sum() >= 3  # IPOs during the period
    assert stocks["delist_date"].notna().sum() >= 1
    uni = market.universes
    assert set(uni["symbol"]) == set(stocks["symbol"]) and (uni["universe"] == "all").all()
    last_bar = market.bars.groupby("symbol")["ts"].max()
    dead = stocks.dropna(subset=["delist_date"])
    assert (last_bar[dead["symbol"]].to_numpy() == dead["delist_date"].to_numpy()).all()
    index = market.bars[market.bars["symbol"] == BENCH]
    assert len(index) == market.bars["ts"].nunique()
    assert market.meta["benchmark"] == BENCH and market.meta["market"] == "cn" and market.meta["universe"] == "all"
    assert SynthConfig.model_validate_json(market.meta["synth_config"]) == SMALL


def test_prices_rounded_volume_in_shares(market):
    px = market.bars[["open", "high", "low", "close"]].to_numpy()
    assert np.abs(px * 100 - np.round(px * 100)).max() < 1e-6
    vol = market.bars.loc[market.bars["symbol"] != BENCH, "volume"]
    assert (vol > 0).all() and (vol % 100 == 0).mean() > 0.9


def test_price_limits_respected(stock_bars):
    b = stock_bars
    free = _no_limit_days(b)
    lim = _limit(b)
    tol = 0.0051 / b["prev_close"].to_numpy()  # the limit price is rounded to 0.01 CNY
    for col in ("open", "high", "low", "close"):
        move = (b[col] / b["prev_close"] - 1).to_numpy()
        bad = ~free & (np.abs(move) > lim + tol)
        assert not bad.any(), b.loc[bad, ["symbol", "ts", "board", "st", "prev_close", col]].head()
    assert free.sum() >= 3  # the no-limit IPO sessions are exercised (the IPO day itself has no prev_close)


def test_limit_days_occur_at_realistic_rates(market, stock_bars):
    b = stock_bars[~_no_limit_days(stock_bars)]
    lim = _limit(b)
    up_px = np.floor(b["prev_close"] * (1 + lim) * 100 + 0.5 + 1e-7) / 100
    down_px = np.floor(b["prev_close"] * (1 - lim) * 100 + 0.5 + 1e-7) / 100
    up, down = (b["close"] >= up_px).mean(), (b["close"] <= down_px).mean()
    assert 0.001 < up < 0.012 and 0.0005 < down < 0.01, (up, down)
    one_price = (b["open"] == b["high"]) & (b["high"] == b["low"]) & (b["low"] == b["close"]) & (b["close"] >= up_px)
    assert one_price.sum() >= 5
    assert market.stats["limit_up_days"] > 0 and market.stats["limit_down_days"] > 0


def test_suspensions_are_missing_sessions(market):
    sessions = pd.DatetimeIndex(np.unique(market.bars["ts"]))
    ins = market.instruments.set_index("symbol")
    missing = 0
    for sym, g in market.bars[market.bars["symbol"] != BENCH].groupby("symbol"):
        live = sessions[(sessions >= g["ts"].min()) & (sessions <= g["ts"].max())]
        missing += len(live) - len(g)
        assert g["ts"].min() >= ins.loc[sym, "list_date"]
    assert missing == market.stats["suspended_stock_days"] > 0


def test_st_periods_use_five_percent(market, stock_bars):
    assert len(market.flags) >= 1 and (market.flags["flag"] == "st").all()
    assert (market.flags["start"] <= market.flags["end"]).all()
    st = stock_bars[stock_bars["st"]]
    assert len(st) > 50
    assert set(st["board"]) == {"main"}
    move = (st["close"] / st["prev_close"] - 1).abs()
    assert move.max() <= 0.05 + 0.0051 / st["prev_close"].min()
    assert (move > 0.045).sum() >= 1  # ST stocks do reach their 5% limit


def test_same_seed_same_market_bit_for_bit(market):
    again = generate_market(SMALL)
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(market, name), getattr(again, name), check_exact=True)
    assert market.meta == again.meta
    other = generate_market(SMALL.model_copy(update={"seed": 8}))
    assert not other.bars["close"].equals(market.bars["close"]) or len(other.bars) != len(market.bars)


def test_oracle_rows_and_components(market):
    o = market.oracle
    lab = labels(market.bars[market.bars["symbol"] != BENCH]).dropna()
    keys = lambda df: set(zip(df["symbol"], df["ts"], strict=True))  # noqa: E731
    assert keys(o) == keys(lab)
    assert not o.isna().any().any()
    parts = o[["reversal", "pattern", "news", "market", "limit_carry"]].sum(axis=1)
    assert np.allclose(parts, o["expected_return"], atol=1e-15)
    assert 0.05 <= oracle_rank_ic(market) <= 0.15


def test_default_strength_rank_ic_medium_market():
    m = generate_market(SynthConfig(n_symbols=120, start="2018-01-02", end="2021-12-31", seed=3))
    ic = oracle_rank_ic(m)
    assert 0.05 <= ic <= 0.15, ic
    effects = json.loads(m.meta["synth_effects"])
    for k in ("reversal", "pattern", "news"):
        assert effects[k]["rank_ic"] > 0.02, (k, effects[k])
        assert 0.15 < effects[k]["variance_share"] < 0.6, (k, effects[k])


def _raw_features(bars: pd.DataFrame) -> pd.DataFrame:
    b = bars[bars["symbol"] != BENCH]
    g = b.groupby("symbol")
    log_v = np.log(b["volume"])
    return pd.DataFrame({
        "symbol": b["symbol"], "ts": b["ts"],
        "body": b["close"] / b["open"] - 1, "body_prev": g["close"].shift() / g["open"].shift() - 1,
        "upper": (b["high"] - np.maximum(b["open"], b["close"])) / b["open"],
        "lower": (np.minimum(b["open"], b["close"]) - b["low"]) / b["open"],
        "surge": log_v - log_v.groupby(b["symbol"]).transform(lambda s: s.shift().ewm(alpha=0.1).mean()),
        "ret": np.log(b["close"] / g["close"].shift()),
    })


def test_pattern_effect_is_nonlinear(market):
    cols = ["body", "body_prev", "upper", "lower", "surge", "ret"]
    df = market.oracle.merge(_raw_features(market.bars), on=["symbol", "ts"]).dropna()
    df = df.merge(labels(market.bars[market.bars["symbol"] != BENCH]), on=["symbol", "ts"]).dropna()
    x = np.c_[np.ones(len(df)), df[cols].to_numpy()]
    # the best linear fit of the pattern component itself on the raw bar features
    df["linear"] = x @ np.linalg.lstsq(x, df["pattern"].to_numpy(), rcond=None)[0]
    assert abs(np.corrcoef(df["linear"], df["pattern"])[0, 1]) < 0.1
    ic_true = rank_ic_by_session(df, "pattern").mean()
    ic_linear = rank_ic_by_session(df, "linear").mean()
    assert ic_true > 0.03 and abs(ic_linear) < 0.3 * ic_true, (ic_true, ic_linear)


def test_texts_varied_and_timed(market):
    from quantlm.data.calendars import decision_cutoff

    t = market.texts
    assert list(t.columns) == ["text_id", "symbol", "published_at", "source", "title", "body"]
    assert t["text_id"].is_unique and len(t) > 500
    assert t["title"].nunique() > 0.8 * len(t) and t["source"].nunique() >= 10
    assert (t["symbol"] == "").sum() > 20
    assert set(t.loc[t["symbol"] != "", "symbol"]) <= set(market.instruments["symbol"])
    minutes = t["published_at"].dt.hour * 60 + t["published_at"].dt.minute
    after_close = minutes >= 15 * 60
    trading = ((minutes >= 9 * 60 + 30) & (minutes < 11 * 60 + 30)) | ((minutes >= 13 * 60) & (minutes < 15 * 60))
    assert after_close.mean() > 0.2 and trading.mean() > 0.2
    assert decision_cutoff(pd.Timestamp("2020-06-01"), "cn") == pd.Timestamp("2020-06-01 15:00")
    assert set(market.text_truth["text_id"]) == set(t["text_id"])


def test_news_acts_only_after_visibility(market):
    from quantlm.data.calendars import visible_sessions

    t = market.texts.merge(market.text_truth, on="text_id")
    t = t[t["symbol"] != ""].copy()
    t["visible"] = visible_sessions(t["published_at"], "cn").to_numpy()
    sessions = pd.DatetimeIndex(np.unique(market.bars["ts"]))
    pos = sessions.get_indexer(t["visible"])
    lab = labels(market.bars[market.bars["symbol"] != BENCH]).set_index(["symbol", "ts"])["label"]
    corr = {}
    for lag in (-2, -1, 0, 1):  # label of the score at v + lag: open(v+lag+1) -> open(v+lag+2)
        ok = (pos + lag >= 0) & (pos + lag < len(sessions)) & (pos >= 0)
        idx = pd.MultiIndex.from_arrays([t["symbol"][ok], sessions[pos[ok] + lag]])
        y = lab.reindex(idx).to_numpy()
        keep = np.isfinite(y)
        corr[lag] = np.corrcoef(t["sentiment"].to_numpy()[ok][keep], y[keep])[0, 1]
    assert abs(corr[-2]) < 0.05 and abs(corr[-1]) < 0.05, corr
    assert corr[0] > 0.06 and corr[1] > 0.03, corr


def test_no_news_config(market):
    m = generate_market(SynthConfig(n_symbols=20, start="2020-01-02", end="2020-12-31", news=False))
    assert len(m.texts) == 0 and list(m.texts.columns)[:3] == ["text_id", "symbol", "published_at"]
    assert (m.oracle["news"] == 0).all()


def test_bad_config_is_a_clear_error():
    for bad in (dict(market="us"), dict(n_symbols=2), dict(start="2020-13-01"), dict(start="2020-01-02", end="2020-02-01")):
        with pytest.raises(SynthConfigError):
            generate_market(SynthConfig(**bad))


def test_write_market_is_atomic(store, monkeypatch):
    from quantlm.data import store as store_module

    cfg = SynthConfig(n_symbols=15, start="2020-01-02", end="2020-12-31", seed=1)
    real_put = store_module._Transaction.put

    def failing_put(self, tbl, key, df, market=None):
        if tbl == "oracle":
            raise OSError("disk full")
        return real_put(self, tbl, key, df, market=market)

    monkeypatch.setattr(store_module._Transaction, "put", failing_put)
    with pytest.raises(OSError):
        write_market(store, cfg)
    assert store.symbols() == [] and store.meta() == {} and not store.has_table("instruments")
    monkeypatch.setattr(store_module._Transaction, "put", real_put)

    m = write_market(store, cfg)
    assert len(store.symbols()) == 16 and store.meta()["benchmark"] == BENCH
    for name in ("instruments", "flags", "universes", "texts", "text_truth", "industries", "oracle"):
        assert len(store.read_table(name)) == len(getattr(m, name)), name
    pd.testing.assert_frame_equal(store.bars(), m.bars.reset_index(drop=True), check_dtype=False)
    write_market(store, cfg)  # same market again: overlaps agree


def test_cli_synth(tmp_path):
    from typer.testing import CliRunner

    from quantlm.cli import app

    runner = CliRunner()
    path = tmp_path / "s"
    res = runner.invoke(app, ["data", "synth", "--store", str(path), "--symbols", "12", "--start", "2020-01-02",
                              "--end", "2020-12-31", "--seed", "2", "--no-news"])
    assert res.exit_code == 0, res.output
    assert "oracle RankIC" in res.output and "limit-up" in res.output
    assert json.loads(SynthConfig.model_validate_json(
        __import__("quantlm.data.store", fromlist=["Store"]).Store(path).meta()["synth_config"]).model_dump_json())["seed"] == 2
    bad = runner.invoke(app, ["data", "synth", "--store", str(tmp_path / "b"), "--market", "us"])
    assert bad.exit_code != 0 and "only 'cn'" in bad.output
    assert not (tmp_path / "b").exists()
