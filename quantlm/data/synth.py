"""The embedded synthetic A-share market: realistic bars with planted alpha of known strength.

    config = SynthConfig(n_symbols=200, seed=0)
    market = generate_market(config)          # in-memory frames
    write_market(Store("data/store"), config)  # the same frames, in one store transaction
    oracle_rank_ic(market)                     # mean daily Spearman of the oracle vs the label

Pieces: `synth_universe` (who trades when), `synth_text` + `synth_templates` (news), `synth_prices`
(the day loop with limits and the planted effects). docs/SYNTH.md documents every number.
Same config -> the same frames bit for bit: every random draw comes from a numpy Generator seeded
by `config.seed` (one child stream per part, so parts do not shift each other's draws).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from quantlm.data.schema import BAR_COLUMNS, validate_bars
from quantlm.data.synth_prices import Effects, PriceArrays, round_price, simulate_prices
from quantlm.data.synth_text import NewsEvents, draw_events, news_signals, render_texts
from quantlm.data.synth_universe import INDUSTRIES, Universe, draw_universe

COMPONENTS = ("reversal", "pattern", "news", "market", "limit_carry")
TEXT_TABLE_COLUMNS = ["text_id", "symbol", "published_at", "source", "title", "body"]


class SynthConfigError(ValueError):
    """A synthetic-market setting that cannot be generated (shown to CLI users as is)."""

    user_facing = True


class SynthConfig(BaseModel):
    """How to generate a synthetic market. Strengths are in units of the stock's daily vol per unit signal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    market: str = "cn"
    n_symbols: int = 200
    start: str = "2018-01-02"
    end: str = "2024-12-31"
    seed: int = 0
    news: bool = True
    reversal_strength: float = 0.056
    pattern_strength: float = 0.047
    news_strength: float = 0.30
    benchmark: str = "000300.SH"

    def check(self) -> None:
        """Raise SynthConfigError for settings we cannot generate."""
        if self.market != "cn":
            raise SynthConfigError(f"synthetic market '{self.market}' is not supported (only 'cn', China A-shares)")
        if not 5 <= self.n_symbols <= 5000:
            raise SynthConfigError(f"n_symbols must be between 5 and 5000, got {self.n_symbols}")
        try:
            start, end = pd.Timestamp(self.start), pd.Timestamp(self.end)
        except (ValueError, TypeError) as e:
            raise SynthConfigError(f"cannot parse start/end dates {self.start!r} / {self.end!r}: {e}") from e
        if end - start < pd.Timedelta(days=120):
            raise SynthConfigError(f"end {self.end} must be at least 120 days after start {self.start}")
        if self.seed < 0:
            raise SynthConfigError(f"seed must be >= 0, got {self.seed}")
        for name in ("reversal_strength", "pattern_strength", "news_strength"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SynthConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class SynthMarket:
    """All frames of a synthetic market (the tables `write_market` stores) and its metadata."""

    bars: pd.DataFrame
    instruments: pd.DataFrame
    flags: pd.DataFrame
    universes: pd.DataFrame
    texts: pd.DataFrame
    text_truth: pd.DataFrame
    industries: pd.DataFrame
    oracle: pd.DataFrame
    meta: dict[str, str] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- frames
def _stock_bars(u: Universe, p: PriceArrays) -> pd.DataFrame:
    """Long bars for every (stock, session) with a bar, sorted by symbol then ts."""
    stock, day = np.nonzero(u.has_bar.T)
    df = pd.DataFrame({"symbol": u.symbols[stock].astype(str), "ts": u.sessions[day]})
    for col in ("open", "high", "low", "close", "volume", "amount"):
        df[col] = getattr(p, col)[day, stock]
    df["adj_factor"] = np.nan
    return df


def _index_bars(u: Universe, p: PriceArrays, symbol: str, base: float = 4000.0) -> pd.DataFrame:
    """A cap-weighted index of every listed stock (previous-close caps); suspended members count flat."""
    close = pd.DataFrame(p.close).ffill().to_numpy()
    prev = np.vstack([p.open[:1], close[:-1]])  # the first session is based on its opens
    member = u.listed & np.isfinite(prev)
    weight = np.where(member, p.shares[None, :] * np.nan_to_num(prev), 0.0)
    total = weight.sum(axis=1, keepdims=True)
    weight = weight / np.where(total > 0, total, 1.0)
    rel = {}
    for col in ("open", "high", "low", "close"):
        x = np.where(u.has_bar, getattr(p, col), prev)
        moved = np.nansum(weight * np.where(member, x / np.where(member, prev, 1.0), 0.0), axis=1)
        rel[col] = np.where(total[:, 0] > 0, moved, 1.0)  # flat on a day without members
    level_close = base * np.cumprod(rel["close"])
    level_prev = np.r_[base, level_close[:-1]]
    o, c = level_prev * rel["open"], level_close
    h = np.maximum(level_prev * rel["high"], np.maximum(o, c))
    lo = np.minimum(level_prev * rel["low"], np.minimum(o, c))
    o, h, lo, c = (round_price(x) for x in (o, h, lo, c))
    return pd.DataFrame({
        "symbol": symbol, "ts": u.sessions, "open": o, "high": np.maximum(h, np.maximum(o, c)),
        "low": np.minimum(lo, np.minimum(o, c)), "close": c, "volume": np.nansum(p.volume, axis=1),
        "amount": np.round(np.nansum(p.amount, axis=1), 2), "adj_factor": np.nan,
    })


def _reference_frames(u: Universe, benchmark: str) -> dict[str, pd.DataFrame]:
    first = u.sessions[0]
    instruments = pd.DataFrame({
        "symbol": np.r_[u.symbols.astype(str), [benchmark]], "market": "cn",
        "board": np.r_[u.boards.astype(str), ["index"]], "name": np.r_[u.names.astype(str), ["Synthetic CSI 300"]],
        "list_date": np.r_[u.list_date, [first.to_datetime64()]].astype("datetime64[ns]"),
        "delist_date": np.r_[u.delist_date, [np.datetime64("NaT")]].astype("datetime64[ns]"),
    })
    flags = pd.DataFrame({
        "symbol": [str(u.symbols[i]) for i, _, _ in u.st_spans], "flag": "st",
        "start": pd.DatetimeIndex([u.sessions[a] for _, a, _ in u.st_spans]),
        "end": pd.DatetimeIndex([u.sessions[b] for _, _, b in u.st_spans]),
    })
    universes = pd.DataFrame({"universe": "all", "symbol": u.symbols.astype(str),
                              "start": u.list_date.astype("datetime64[ns]"),
                              "end": u.delist_date.astype("datetime64[ns]")})
    industries = pd.DataFrame({"symbol": u.symbols.astype(str),
                               "industry": [INDUSTRIES[k] for k in u.industry]})
    for df in (instruments, flags, universes, industries):
        for col in ("symbol", "market", "board", "name", "flag", "universe", "industry"):
            if col in df.columns:
                df[col] = df[col].astype(str)
    return {"instruments": instruments, "flags": flags, "universes": universes, "industries": industries}


def _oracle(u: Universe, p: PriceArrays) -> pd.DataFrame:
    """Rows (symbol, ts) where the label open(t+2)/open(t+1) - 1 exists: bars at t, t+1 and t+2."""
    hb = u.has_bar
    ok = np.zeros_like(hb)
    ok[:-2] = hb[:-2] & hb[1:-1] & hb[2:]
    stock, day = np.nonzero(ok.T)
    df = pd.DataFrame({"symbol": u.symbols[stock].astype(str), "ts": u.sessions[day]})
    parts = {k: p.components[k][day, stock] for k in COMPONENTS}
    df["expected_return"] = sum(parts.values())
    for k in COMPONENTS:
        df[k] = parts[k]
    return df


# ---------------------------------------------------------------------------------------- evaluation
def labels(bars: pd.DataFrame, sessions: pd.DatetimeIndex | None = None) -> pd.DataFrame:
    """Evaluation labels (symbol, ts, label = open(t+2)/open(t+1) - 1) over calendar sessions.

    t+1 and t+2 are the next two sessions of the calendar (all sessions in `bars` unless given); a
    stock suspended on either has no label.
    """
    sessions = pd.DatetimeIndex(np.unique(bars["ts"])) if sessions is None else sessions
    opens = bars.pivot(index="ts", columns="symbol", values="open").reindex(sessions)
    lab = opens.shift(-2) / opens.shift(-1) - 1.0
    lab = lab.where(opens.notna())
    out = lab.stack().rename("label").reset_index()
    out.columns = ["ts", "symbol", "label"]
    return out[["symbol", "ts", "label"]]


def rank_ic_by_session(df: pd.DataFrame, score: str, label: str = "label", min_names: int = 10) -> pd.Series:
    """Per-session Spearman correlation between `score` and `label` (sessions with >= min_names rows)."""
    d = df[["ts", score, label]].dropna()
    g = d.groupby("ts")
    r = pd.DataFrame({"ts": d["ts"], "a": g[score].rank(), "b": g[label].rank()})
    r["ab"], r["aa"], r["bb"] = r["a"] * r["b"], r["a"] ** 2, r["b"] ** 2
    s = r.groupby("ts").agg(n=("a", "size"), a=("a", "sum"), b=("b", "sum"), ab=("ab", "sum"),
                            aa=("aa", "sum"), bb=("bb", "sum"))
    cov = s["ab"] - s["a"] * s["b"] / s["n"]
    var_a, var_b = s["aa"] - s["a"] ** 2 / s["n"], s["bb"] - s["b"] ** 2 / s["n"]
    ic = cov / np.sqrt(var_a * var_b)
    return ic[(s["n"] >= min_names) & (var_a > 0) & (var_b > 0)]


def _stock_bars_only(market: SynthMarket) -> pd.DataFrame:
    stocks = market.instruments.loc[market.instruments["board"] != "index", "symbol"]
    return market.bars[market.bars["symbol"].isin(stocks)]


def oracle_rank_ic(market: SynthMarket, column: str = "expected_return") -> float:
    """Mean per-session Spearman RankIC of the oracle (or one component) against the realised label."""
    lab = labels(_stock_bars_only(market))
    df = market.oracle.merge(lab, on=["symbol", "ts"], how="inner")
    return float(rank_ic_by_session(df, column).mean())


def effect_report(market: SynthMarket) -> dict[str, dict[str, float]]:
    """Per component: its RankIC alone and its share of the planted drift's cross-sectional variance.

    The planted drift is reversal + pattern + news + market; shares are mean-over-sessions variance
    ratios (the components are nearly uncorrelated, so they sum to about 1). `limit_carry` is not
    planted drift but the spill-over of locked limit moves: it is reported by the share of rows where
    it is non-zero and its mean absolute value there.
    """
    o = market.oracle.assign(planted=lambda d: d[["reversal", "pattern", "news", "market"]].sum(axis=1))
    g = o.groupby("ts")
    total = float(g["planted"].var().mean())
    df = o.merge(labels(_stock_bars_only(market)), on=["symbol", "ts"], how="inner")
    report = {}
    for k in ("expected_return", "planted", *COMPONENTS):
        ic = rank_ic_by_session(df, k)
        rank_ic = float(ic.mean()) if len(ic) else float("nan")  # nan: no session with >= 10 names
        report[k] = {"rank_ic": rank_ic, "cs_std": float(g[k].std().mean())}
        if k == "limit_carry":
            nonzero = o[k] != 0
            report[k]["rows_share"] = float(nonzero.mean())
            report[k]["mean_abs_nonzero"] = float(o.loc[nonzero, k].abs().mean()) if nonzero.any() else 0.0
        else:
            report[k]["variance_share"] = float(g[k].var().mean()) / total
    return report


# ---------------------------------------------------------------------------------------- generate / write
def _empty_texts() -> tuple[pd.DataFrame, pd.DataFrame]:
    texts = pd.DataFrame({c: pd.Series(dtype="str") for c in TEXT_TABLE_COLUMNS})
    texts["published_at"] = pd.Series(dtype="datetime64[ns]")
    truth = pd.DataFrame({"text_id": pd.Series(dtype="str"), "sentiment": pd.Series(dtype="float64")})
    return texts, truth


def generate_market(config: SynthConfig | None = None) -> SynthMarket:
    """Generate the synthetic market of `config` (default SynthConfig()) in memory."""
    config = config or SynthConfig()
    config.check()
    rng_universe, rng_news, rng_text, rng_prices = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(4))
    u = draw_universe(config.n_symbols, config.start, config.end, rng_universe)
    t_len, n = u.listed.shape
    if config.news:
        events = draw_events(u, rng_news)
    else:
        events = NewsEvents(*(np.zeros(0, dtype=np.int64) for _ in range(3)), sentiment=np.zeros(0))
    stock_sig, macro_sig = news_signals(events, u)
    effects = Effects(reversal=config.reversal_strength, pattern=config.pattern_strength, news=config.news_strength)
    prices = simulate_prices(u, effects, stock_sig, macro_sig, rng_prices)
    texts, truth = render_texts(events, u, rng_text) if config.news else _empty_texts()

    bars = pd.concat([_stock_bars(u, prices), _index_bars(u, prices, config.benchmark)], ignore_index=True)
    bars = validate_bars(bars, file="synthetic market", freq="1d")[list(BAR_COLUMNS)]
    ref = _reference_frames(u, config.benchmark)
    market = SynthMarket(bars=bars, texts=texts, text_truth=truth, oracle=_oracle(u, prices), **ref)

    report = effect_report(market)
    stock_days = int(u.has_bar.sum())
    market.stats = {
        "symbols": n, "sessions": t_len, "bars": len(bars), "stock_days": stock_days,
        "limit_up_days": int(prices.limit_up.sum()), "limit_down_days": int(prices.limit_down.sum()),
        "one_price_limit_days": int(prices.locked.sum()),
        "suspended_stock_days": int(u.suspended.sum()), "st_symbols": len({i for i, _, _ in u.st_spans}),
        "ipos": int((u.ipo_session >= 0).sum()), "delistings": int((~np.isnat(u.delist_date)).sum()),
        "texts": len(texts), "oracle_rank_ic": report["expected_return"]["rank_ic"],
    }
    market.meta = {
        "market": "cn", "benchmark": config.benchmark, "universe": "all",
        "synth_config": config.model_dump_json(),
        "synth_effects": json.dumps({k: report[k] for k in COMPONENTS}, sort_keys=True),
        "synth_oracle_rank_ic": f"{report['expected_return']['rank_ic']:.4f}",
        "synth_stats": json.dumps(market.stats, sort_keys=True),
    }
    return market


def write_market(store, config: SynthConfig | None = None, replace: bool = False) -> SynthMarket:
    """Generate the market of `config` and write every table and the metadata in ONE store transaction.

    Tables: bars/1d (stocks and the benchmark index, market "cn"), instruments, flags, universes,
    texts, text_truth (tests only), industries, oracle. Bars that overlap different stored bars
    raise unless `replace` (then the new ones win); other tables are replaced.
    """
    market = generate_market(config)
    with store.transaction() as tx:
        tx.put_bars(market.bars, market="cn", freq="1d", replace=replace, file="synthetic market")
        for name in ("instruments", "flags", "universes", "texts", "text_truth", "industries", "oracle"):
            tx.put(name, "", getattr(market, name))
        for key, value in market.meta.items():
            tx.set_meta(key, value)
    return market


__all__ = ["SynthConfig", "SynthConfigError", "SynthMarket", "effect_report", "generate_market", "labels",
           "oracle_rank_ic", "rank_ic_by_session", "write_market"]
