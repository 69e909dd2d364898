"""News of the synthetic market: events with a hidden sentiment, their texts, and the signals they plant.

An event becomes visible at session v (its text is published before v's 15:00 close and after
v-1's close). Its sentiment s in {-1, -0.5, 0, 0.5, 1} moves the evaluation labels of the scores
at v, v+1, v+2, v+3 by s * NEWS_DECAY[age] (times the effect strength and the stock's vol), so the
drift starts at the open of v+1, never before the text is visible. Company texts move their stock;
sector texts (symbol "") move every stock of the industry by SECTOR_WEIGHT * s; macro texts move
the whole market (a common drift, invisible to cross-sectional ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantlm.data import synth_templates as tpl
from quantlm.data.synth_universe import INDUSTRIES, Universe

NEWS_DECAY = (1.0, 0.7, 0.45, 0.25)  # weight of a text on the label of the score `age` sessions after it
SECTOR_WEIGHT = 0.6
SENTIMENT_PROBS = (0.1, 0.2, 0.4, 0.2, 0.1)  # of tpl.SENTIMENTS


@dataclass
class NewsEvents:
    """One row per text (arrays of equal length M)."""

    stock: np.ndarray  # (M,) stock index, -1 for market-wide texts
    sector: np.ndarray  # (M,) industry index for sector texts, else -1
    session: np.ndarray  # (M,) index of the session at whose cut-off the text is first visible
    sentiment: np.ndarray  # (M,) hidden sentiment


def draw_events(u: Universe, rng: np.random.Generator, company_rate: float = 0.035,
                sector_rate: float = 0.2, macro_rate: float = 0.15) -> NewsEvents:
    """Poisson arrivals per (session, stock) while listed, plus sector and macro texts per session.

    Rates are texts per session: per listed stock, and market-wide in total.
    """
    t_len, n = u.listed.shape
    hits = (rng.random((t_len, n)) < company_rate) & u.listed
    sess_c, stock_c = np.nonzero(hits)  # row-major: sorted by session, then stock
    sess_s = np.flatnonzero(rng.random(t_len) < sector_rate)
    sect = rng.integers(0, len(INDUSTRIES), len(sess_s))
    sess_m = np.flatnonzero(rng.random(t_len) < macro_rate)
    session = np.concatenate([sess_c, sess_s, sess_m])
    stock = np.concatenate([stock_c, np.full(len(sess_s) + len(sess_m), -1)])
    sector = np.concatenate([np.full(len(sess_c), -1), sect, np.full(len(sess_m), -1)])
    sentiment = np.array(tpl.SENTIMENTS)[rng.choice(len(tpl.SENTIMENTS), size=len(session), p=SENTIMENT_PROBS)]
    order = np.lexsort((sector, stock, session))
    return NewsEvents(stock=stock[order], sector=sector[order], session=session[order], sentiment=sentiment[order])


def news_signals(ev: NewsEvents, u: Universe) -> tuple[np.ndarray, np.ndarray]:
    """(T, N) company+sector signal and (T,) macro signal: sum of sentiment * NEWS_DECAY[age]."""
    t_len, n = u.listed.shape
    stock_sig = np.zeros((t_len, n))
    sector_sig = np.zeros((t_len, len(INDUSTRIES)))
    macro_sig = np.zeros(t_len)
    for age, w in enumerate(NEWS_DECAY):
        d = ev.session + age
        ok = d < t_len
        c = ok & (ev.stock >= 0)
        np.add.at(stock_sig, (d[c], ev.stock[c]), w * ev.sentiment[c])
        s = ok & (ev.sector >= 0)
        np.add.at(sector_sig, (d[s], ev.sector[s]), w * ev.sentiment[s])
        m = ok & (ev.stock < 0) & (ev.sector < 0)
        np.add.at(macro_sig, d[m], w * ev.sentiment[m])
    return stock_sig + SECTOR_WEIGHT * sector_sig[:, u.industry], macro_sig


def publication_times(ev: NewsEvents, u: Universe, rng: np.random.Generator) -> np.ndarray:
    """datetime64[ns] publication times, exchange-local, each visible first at its event's session.

    40% during session v's trading hours, 15% before v's open, 35% after the previous session's
    15:00 close (a few exactly at 15:00:00, which counts as after the close), 10% on a non-trading
    day between the two sessions (or, with none, the previous evening).
    """
    from quantlm.data.calendars import sessions as xshg_sessions

    days = u.sessions.to_numpy()
    before = xshg_sessions("cn", u.sessions[0] - pd.Timedelta(days=20), u.sessions[0] - pd.Timedelta(days=1))
    prev_day = np.concatenate([before[-1:].to_numpy(), days[:-1]])[ev.session]  # session v-1
    day = days[ev.session]
    m = len(ev.session)
    mode = rng.choice(4, size=m, p=(0.4, 0.15, 0.35, 0.1))
    # trading minutes: 09:30-11:30 and 13:00-15:00 (exclusive of 15:00)
    k = rng.integers(0, 240, m)
    trading = np.where(k < 120, 9 * 60 + 30 + k, 13 * 60 + (k - 120))
    premarket = rng.integers(6 * 60, 9 * 60 + 25, m)
    evening = rng.integers(15 * 60, 24 * 60, m)
    evening = np.where(rng.random(m) < 0.05, 15 * 60, evening)
    gap_days = ((day - prev_day) // np.timedelta64(1, "D")).astype(np.int64)  # 1 on consecutive days
    off_day = np.where(gap_days > 1, rng.integers(1, np.maximum(gap_days, 2)), 0)
    seconds = rng.integers(0, 60, m)
    seconds = np.where((mode == 2) & (evening == 15 * 60), 0, seconds)
    base = np.select([mode == 0, mode == 1, mode == 2], [day, day, prev_day], prev_day + off_day * np.timedelta64(1, "D"))
    mins = np.select([mode == 0, mode == 1, mode == 2], [trading, premarket, evening],
                     np.where(off_day > 0, rng.integers(8 * 60, 22 * 60, m), evening))
    return (base.astype("datetime64[ns]") + mins.astype("timedelta64[m]") + seconds.astype("timedelta64[s]")).astype(
        "datetime64[ns]")


def _fill(rng: np.random.Generator, level: float, name: str, code: str, sector: str) -> dict[str, str]:
    """Values for every template placeholder, drawn for one text."""
    up_pool = tpl.UP_VERBS[1.0 if level >= 1.0 else 0.5]
    down_pool = tpl.DOWN_VERBS[-1.0 if level <= -1.0 else -0.5]
    up, up_base = up_pool[int(rng.integers(len(up_pool)))]
    down, down_base = down_pool[int(rng.integers(len(down_pool)))]
    return {
        "name": name, "code": code, "sector": sector, "up": up, "up_base": up_base, "down": down,
        "down_base": down_base, "pct": str(int(rng.integers(35, 320))), "pct2": str(int(rng.integers(4, 30))),
        "small_pct": f"{rng.uniform(0.5, 3.0):.1f}", "amt": str(int(rng.integers(2, 60))),
        "small": str(int(rng.integers(5, 90))), "q": tpl.PERIODS[int(rng.integers(len(tpl.PERIODS)))],
        "broker": tpl.BROKERS[int(rng.integers(len(tpl.BROKERS)))], "target": f"{rng.uniform(8, 160):.2f}",
        "n": str(int(rng.integers(2, 28))), "region": tpl.REGIONS[int(rng.integers(len(tpl.REGIONS)))],
        "product": tpl.PRODUCTS[int(rng.integers(len(tpl.PRODUCTS)))], "div": f"{rng.uniform(0.5, 8.0):.2f}",
        "coupon": f"{rng.uniform(2.2, 5.5):.2f}", "bp": str(int(rng.choice([25, 50]))),
        "pmi": f"{rng.uniform(50.1, 52.5):.1f}",
    }


def _source(kind: str, symbol: str, broker: str, rng: np.random.Generator) -> str:
    if kind == "announcement":
        exchange = {"SH": "SSE", "SZ": "SZSE", "BJ": "BSE"}[symbol[-2:]]
        return f"{exchange} company announcement"
    if kind == "research":
        return f"{broker} research"
    return tpl.NEWS_SOURCES[int(rng.integers(len(tpl.NEWS_SOURCES)))]


def render_texts(ev: NewsEvents, u: Universe, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The `texts` table (text_id, symbol, published_at, source, title, body) and `text_truth`.

    Rows are sorted by published_at (then event order); text ids are 'T' plus a zero-padded number.
    """
    published = publication_times(ev, u, rng)
    rows = []
    for i in range(len(ev.session)):
        level = float(ev.sentiment[i])
        s = int(ev.stock[i])
        if s >= 0:
            sym = str(u.symbols[s])
            values = _fill(rng, level, str(u.names[s]), sym[:6], INDUSTRIES[int(u.industry[s])])
            kind, title, body = tpl.COMPANY[level][int(rng.integers(len(tpl.COMPANY[level])))]
            source = _source(kind, sym, values["broker"], rng)
        else:
            sym = ""
            sector = INDUSTRIES[int(ev.sector[i])] if ev.sector[i] >= 0 else "the market"
            values = _fill(rng, level, "", "", sector)
            title, body = (tpl.SECTOR if ev.sector[i] >= 0 else tpl.MACRO)[level]
            source = tpl.NEWS_SOURCES[int(rng.integers(len(tpl.NEWS_SOURCES)))]
        outlook = tpl.OUTLOOK[int(np.sign(level))]
        extra = outlook[int(rng.integers(len(outlook)))]
        title = title.format(**values)
        style = tpl.TITLE_STYLES[int(rng.integers(len(tpl.TITLE_STYLES)))]
        if s >= 0 or "{code}" not in style:
            title = style.format(t=title, code=values["code"], sector=values["sector"].capitalize())
        rows.append((sym, published[i], source, title[0].upper() + title[1:], f"{body.format(**values)} {extra}".strip(),
                     level))
    df = pd.DataFrame(rows, columns=["symbol", "published_at", "source", "title", "body", "sentiment"])
    df["published_at"] = df["published_at"].astype("datetime64[ns]")
    df = df.sort_values("published_at", kind="stable").reset_index(drop=True)
    df.insert(0, "text_id", [f"T{i:07d}" for i in range(len(df))])
    texts = df[["text_id", "symbol", "published_at", "source", "title", "body"]].copy()
    truth = df[["text_id", "sentiment"]].copy()
    for frame in (texts, truth):
        frame["text_id"] = frame["text_id"].astype(str)
    for col in ("symbol", "source", "title", "body"):
        texts[col] = texts[col].astype(str)
    return texts, truth
