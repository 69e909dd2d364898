"""The day-by-day price process of the synthetic A-share market, with the planted alpha.

Why a hand-written loop: no library generates a limit-aware A-share market whose planted effects
depend on the bars it has just generated, so we step over sessions (T ~ 1,700) and vectorise over
stocks (N). All arrays are (T, N) unless stated; prices are CNY, volume shares, returns log.

One session d for stock i (see docs/SYNTH.md for the numbers):
  shock   = beta_i * market_d + gamma_i * industry_d + idio_id + jump_id   (Student-t, GARCH, regimes)
  gap     = overnight part of the shock + phi * mu_{d-2} + carry          (open  = prev_close * e^gap)
  intraday = intraday part of the shock + (1 - phi) * mu_{d-1}          (close = open * e^intraday)
then price limits of the board / ST / IPO day clip open and close, prices round to 0.01 CNY, and
whatever a limit cut off is carried (in part) into the next open, as locked limit moves are.

mu_t is the planted expected log return of the evaluation label open(t+2)/open(t+1) for a score at
t: it is computed from what is observable at t's close (bars up to t, texts visible at t) and is
realised only from the open of t+1 on (intraday t+1, overnight t+2). The oracle table stores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from quantlm.data.synth_universe import Universe, limit_bands

T_DF = 4.0  # Student-t degrees of freedom of every shock
OVERNIGHT_VAR_SHARE = 0.3  # share of a day's shock variance realised in the overnight gap
DRIFT_OVERNIGHT_SHARE = 0.3  # phi: share of mu_t realised in the gap of t+2 (the rest intraday t+1)
WARMUP_BARS = 20  # reversal and pattern are 0 until a stock has this many bars
# Normalising constants of the two pattern terms (their standard deviations, measured on the
# default market) so that the pattern signal has unit variance.
PATTERN_TERM_STD = (0.64, 0.35)


@dataclass
class Effects:
    """Strengths of the planted effects: mu = vol_hat * (reversal * rev + pattern * pat + news * news)."""

    reversal: float
    pattern: float
    news: float
    macro: float = 0.5  # market-wide texts move every stock by macro * market vol * signal


@dataclass
class PriceArrays:
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    amount: np.ndarray
    shares: np.ndarray  # (N,) shares outstanding (float), for cap weights
    components: dict[str, np.ndarray] = field(default_factory=dict)  # reversal, pattern, news, market
    limit_up: np.ndarray | None = None  # (T, N) closed at the limit-up price
    limit_down: np.ndarray | None = None  # (T, N) closed at the limit-down price
    locked: np.ndarray | None = None  # (T, N) one-price limit day (open = high = low = close)


def _t(rng: np.random.Generator, size) -> np.ndarray:
    """Unit-variance Student-t draws."""
    return rng.standard_t(T_DF, size=size) / np.sqrt(T_DF / (T_DF - 2.0))


def round_price(x: np.ndarray) -> np.ndarray:
    """Round to 0.01 CNY, half up (as exchanges do), never below 0.01."""
    return np.maximum(np.floor(x * 100.0 + 0.5 + 1e-7) / 100.0, 0.01)


@dataclass
class _Stocks:
    """Static per-stock parameters (N,)."""

    sigma: np.ndarray  # unconditional idiosyncratic daily vol
    beta: np.ndarray
    gamma: np.ndarray  # industry loading
    shares: np.ndarray
    turnover: np.ndarray  # typical daily turnover (fraction of shares)
    first_price: np.ndarray  # close before the first session, or the IPO offer price


def _draw_stocks(u: Universe, rng: np.random.Generator) -> _Stocks:
    n = len(u.symbols)
    board_vol = np.select([u.boards == "chinext", u.boards == "star", u.boards == "bse"], [1.25, 1.35, 1.45], 1.0)
    cap = np.exp(rng.normal(np.log(12e9), 1.0, n))  # CNY
    size_vol = (cap / 12e9) ** -0.12
    sigma = 0.016 * board_vol * size_vol * np.exp(rng.normal(0.0, 0.2, n))
    price = np.clip(np.exp(rng.normal(np.log(12.0), 0.65, n)), 2.5, 300.0)
    offer = np.clip(np.exp(rng.normal(np.log(16.0), 0.5, n)), 4.0, 80.0)
    price = np.where(u.boards == "main", price, np.maximum(price, 6.0))  # growth boards: no penny stocks
    price = np.where(u.ipo_session >= 0, offer, price)
    shares = np.round(cap / price / 1e4) * 1e4
    turnover = 0.012 * (cap / 12e9) ** -0.3 * np.exp(rng.normal(0.0, 0.35, n))
    return _Stocks(sigma=sigma, beta=np.clip(rng.normal(1.0, 0.2, n), 0.4, 1.6),
                   gamma=rng.uniform(0.6, 1.2, n), shares=shares, turnover=turnover, first_price=round_price(price))


class _Market:
    """Market factor: GARCH(1,1) vol times a calm/stressed Markov regime, rare crash/rally days."""

    def __init__(self, rng: np.random.Generator, sigma: float = 0.011) -> None:
        self.rng, self.sigma_bar = rng, sigma
        self.var = sigma**2
        self.stressed = False

    def step(self) -> tuple[float, float, float]:
        """One session: (overnight, intraday) log shocks and the regime multiplier used."""
        rng = self.rng
        self.stressed = rng.random() < (0.96 if self.stressed else 0.008)
        mult = 1.9 if self.stressed else 1.0
        sd = np.sqrt(self.var) * mult
        gap = sd * np.sqrt(OVERNIGHT_VAR_SHARE) * _t(rng, None)
        intra = sd * np.sqrt(1 - OVERNIGHT_VAR_SHARE) * _t(rng, None)
        if rng.random() < 0.003:  # a market-wide jump, mostly down, mostly overnight
            gap += rng.normal(-0.012, 0.04)
        shock = (gap + intra) / mult
        self.var = 0.02 * self.sigma_bar**2 + 0.08 * shock**2 + 0.90 * self.var
        return float(gap), float(intra), mult


def _expected_carry_in_label(carry, up_band, down_band, d, capped_ipo, age) -> np.ndarray:
    """Expected part of the label of t = d that comes from carried limit moves (not planted drift).

    A carry beyond the next session's limit locks that session and spills (in part) into the gap of
    t+2, which the label open(t+2)/open(t+1) contains. Such a label is rarely tradeable (t+1 opens at
    the limit), but the oracle should still know it.
    """
    nxt = min(d + 1, up_band.shape[0] - 1)
    lu = np.log1p(up_band[nxt])
    ld = np.where(np.isfinite(down_band[nxt]), np.log1p(-np.minimum(down_band[nxt], 0.99)), -np.inf)
    keep = np.where(capped_ipo & (age + 1 < 30), 1.0, 0.5)
    excess = np.maximum(carry - lu, 0.0) + np.minimum(carry - ld, 0.0)
    return np.clip(keep * excess, ld, lu)


@dataclass
class _Observed:
    """What a model could know about each stock at a session's close, from the stock's own bars (N,)."""

    ew_var: np.ndarray  # EWMA (lambda 0.94) of squared close-to-close log returns; starts at a prior
    ew_logvol: np.ndarray = field(init=False)  # EWMA (alpha 0.1) of log volume
    closes: np.ndarray = field(init=False)  # (6, N) closes of the last 6 bars, newest last
    body_prev: np.ndarray = field(init=False)  # sign(close - open) of the previous bar
    n_bars: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.ew_var)
        self.ew_logvol, self.body_prev = np.zeros(n), np.zeros(n)
        self.closes = np.full((6, n), np.nan)
        self.n_bars = np.zeros(n, dtype=np.int64)

    def update(self, trade, bar: dict[str, np.ndarray], r_cc: np.ndarray, early_ipo: np.ndarray) -> np.ndarray:
        """Fold in today's bars where `trade`; return the pattern signal PAT (unit variance)."""
        o, h, lo, c, v = (bar[k] for k in ("open", "high", "low", "close", "volume"))
        upd = trade & (self.n_bars >= 5) & ~early_ipo  # IPO pops would inflate the vol estimate
        self.ew_var = np.where(upd, 0.94 * self.ew_var + 0.06 * r_cc**2, self.ew_var)
        log_v = np.log(v)
        surge = np.where(self.n_bars > 0, log_v - self.ew_logvol, 0.0)
        first = self.n_bars == 0
        self.ew_logvol = np.where(trade, np.where(first, log_v, 0.9 * self.ew_logvol + 0.1 * log_v), self.ew_logvol)
        self.closes = np.where(trade[None, :], np.vstack([self.closes[1:], c[None, :]]), self.closes)
        body = np.sign(c - o)
        span = h - lo
        shadow = np.where(span > 0, ((np.minimum(o, c) - lo) - (h - np.maximum(o, c))) / np.where(span > 0, span, 1), 0.0)
        self.n_bars = self.n_bars + trade
        pat = (body * self.body_prev * np.tanh(2.5 * surge) / PATTERN_TERM_STD[0]
               - self.body_prev * shadow / PATTERN_TERM_STD[1]) / np.sqrt(2.0)
        self.body_prev = np.where(trade, body, self.body_prev)
        return pat

    def reversal(self) -> np.ndarray:
        """REV = -clip(5-bar log return / (vol_hat sqrt 5), -3, 3); NaN before 6 bars."""
        return -np.clip(np.log(self.closes[-1] / self.closes[0]) / (np.sqrt(self.ew_var) * np.sqrt(5.0)), -3.0, 3.0)


def _limit_bars(prev_close, gap, intra, up_band, down_band, day_sd, hi_ext, lo_ext, lock_draw) -> dict[str, np.ndarray]:
    """One session's OHLC inside the limit band, rounded to 0.01; also the raw prices and limit prices.

    A gap more than 1% beyond a limit that also closes beyond it locks the stock all day (85% of
    such cases): open = high = low = close = the limit price.
    """
    up_px = np.where(np.isfinite(up_band), round_price(prev_close * (1 + up_band)), np.inf)
    down_px = np.where(np.isfinite(down_band), round_price(prev_close * (1 - down_band)), 0.01)
    open_raw = prev_close * np.exp(gap)
    close_raw = open_raw * np.exp(intra)
    o = np.clip(round_price(open_raw), down_px, up_px)
    c = np.clip(round_price(close_raw), down_px, up_px)
    h = np.minimum(round_price(np.maximum(o, c) * np.exp(day_sd * hi_ext)), up_px)
    lo = np.maximum(round_price(np.minimum(o, c) * np.exp(-day_sd * lo_ext)), down_px)
    lock_up = (open_raw > up_px * 1.01) & (close_raw >= up_px) & (lock_draw < 0.85)
    lock_down = (open_raw < down_px * 0.99) & (close_raw <= down_px) & (lock_draw < 0.85)
    h = np.where(lock_down, down_px, np.maximum(h, np.maximum(o, c)))
    lo = np.where(lock_up, up_px, np.minimum(lo, np.minimum(o, c)))
    return {"open": o, "high": h, "low": lo, "close": c, "close_raw": close_raw, "up_px": up_px,
            "down_px": down_px, "locked": lock_up | lock_down}


def _volume(st: _Stocks, bar, r_cc, vol_hat, age, capped_ipo, stressed, trend, z_vol, hi_ext, lock_draw) -> np.ndarray:
    """Shares traded: size x turnover x common trend x noise x |move| / vol; x13 after a no-limit IPO; tiny when locked."""
    vol_score = 0.45 * np.minimum(np.abs(r_cc) / vol_hat, 6.0) - 0.36
    ipo_boost = np.where(age >= 0, 1.0 + np.where(capped_ipo, 0.0, 12.0) * np.exp(-np.maximum(age, 0) / 3.0), 1.0)
    shares_traded = (st.shares * st.turnover * ipo_boost * (1.3 if stressed else 1.0)
                     * np.exp(trend + 0.3 * z_vol + vol_score)
                     * np.where(bar["locked"], 0.02 + 0.1 * lock_draw, 1.0))
    v = np.maximum(np.round(shares_traded / 100.0) * 100.0, 100.0)
    return v + np.where(z_vol > 1.8, np.floor(hi_ext * 37.0) % 100, 0.0)  # a few odd lots


def simulate_prices(u: Universe, effects: Effects, news_signal: np.ndarray, macro_signal: np.ndarray,
                    rng: np.random.Generator) -> PriceArrays:
    """Generate bars for every (session, stock) with `u.has_bar`; NaN elsewhere.

    `news_signal` (T, N) and `macro_signal` (T,) are the unitless news signals visible at each
    session's cut-off (sentiment times decay by age, see synth_text.news_signals).
    """
    t_len, n = u.listed.shape
    st = _draw_stocks(u, rng)
    up_band, down_band = limit_bands(u)
    has_bar = u.has_bar
    market = _Market(rng)
    n_ind = int(u.industry.max()) + 1
    w_gap, w_intra = np.sqrt(OVERNIGHT_VAR_SHARE), np.sqrt(1 - OVERNIGHT_VAR_SHARE)
    mu_m = 0.0001  # market drift per session (log; simple returns add about half the variance)

    out = {k: np.full((t_len, n), np.nan) for k in ("open", "high", "low", "close", "volume", "amount")}
    comps = {k: np.zeros((t_len, n)) for k in ("reversal", "pattern", "news", "market", "limit_carry")}
    hits = {k: np.zeros((t_len, n), dtype=bool) for k in ("limit_up", "limit_down", "locked")}
    mu = np.zeros((t_len, n))  # planted expected log label of the score at each session

    prev_close = st.first_price.astype(float).copy()
    var = st.sigma**2  # idiosyncratic GARCH variance
    carry = np.zeros(n)  # log move a limit (or a suspension) held back, released in the next gap
    turnover_trend = 0.0
    seen = _Observed(ew_var=(st.beta * 0.011) ** 2 + (st.gamma * 0.008) ** 2 + st.sigma**2)
    ipo_day = np.where(u.ipo_session >= 0, u.ipo_session, -10**9)
    capped_ipo = np.isfinite(up_band[np.clip(u.ipo_session, 0, None), np.arange(n)]) & (u.ipo_session >= 0)

    for d in range(t_len):
        # ---- random shocks of the day (draw order fixed: it defines the market of a seed)
        m_gap, m_intra, mult = market.step()
        f = 0.008 * mult * _t(rng, (2, n_ind))
        sd = np.sqrt(var) * mult
        e_gap, e_intra = sd * w_gap * _t(rng, n), sd * w_intra * _t(rng, n)
        jump = np.where(rng.random(n) < 0.004, 0.05 * _t(rng, n), 0.0)
        base_gap = st.beta * m_gap + st.gamma * f[0, u.industry] * w_gap + e_gap + 0.7 * jump
        base_intra = st.beta * m_intra + st.gamma * f[1, u.industry] * w_intra + e_intra + 0.3 * jump
        var = 0.03 * st.sigma**2 + 0.05 * ((e_gap + e_intra + jump) / mult) ** 2 + 0.92 * var
        turnover_trend = 0.995 * turnover_trend + 0.03 * rng.standard_normal()
        z_vol = rng.standard_normal(n)
        hi_ext, lo_ext = rng.exponential(1.0, n), rng.exponential(1.0, n)
        lock_draw = rng.random(n)
        age = d - ipo_day  # sessions since IPO (0 on the IPO day)
        pop = np.where(capped_ipo, rng.normal(np.log(3.0), 0.5, n), rng.normal(np.log(2.2), 0.45, n))

        # ---- the day's move: shocks + planted drift of earlier scores + carry, then limits
        drift_gap = DRIFT_OVERNIGHT_SHARE * mu[d - 2] if d >= 2 else np.zeros(n)
        drift_intra = (1 - DRIFT_OVERNIGHT_SHARE) * mu[d - 1] if d >= 1 else np.zeros(n)
        gap = base_gap + drift_gap + carry + np.where(age == 0, np.maximum(pop, np.log(0.8)), 0.0)
        early_ipo = (age >= 0) & (age < 5)
        intra = base_intra * np.where(early_ipo, 2.0, 1.0) + drift_intra
        trade = has_bar[d]
        carry = np.where(u.listed[d] & ~trade, carry + base_gap + base_intra, 0.0)  # suspended: the move waits
        day_sd = np.sqrt(seen.ew_var) * w_intra * 0.45
        bar = _limit_bars(prev_close, gap, intra, up_band[d], down_band[d], day_sd, hi_ext, lo_ext, lock_draw)
        o, h, lo, c = bar["open"], bar["high"], bar["low"], bar["close"]
        clipped = (bar["close_raw"] > bar["up_px"] + 0.005) | (bar["close_raw"] < bar["down_px"] - 0.005)
        keep = np.where(capped_ipo & (age < 30), 1.0, 0.5)
        carry = np.where(trade & clipped, keep * np.log(bar["close_raw"] / np.maximum(c, 0.01)), carry)
        r_cc = np.log(c / prev_close)
        bar["volume"] = _volume(st, bar, r_cc, np.sqrt(seen.ew_var), age, capped_ipo, mult > 1, turnover_trend,
                                z_vol, hi_ext, lock_draw)
        bar["amount"] = np.round(bar["volume"] * (o + h + lo + c) / 4.0, 2)
        for key in out:
            out[key][d, trade] = bar[key][trade]
        hits["limit_up"][d] = trade & (c >= bar["up_px"])
        hits["limit_down"][d] = trade & (c <= bar["down_px"]) & np.isfinite(down_band[d])
        hits["locked"][d] = trade & bar["locked"]

        # ---- what is observable at t = d, and the planted expected label of the score at t
        pat = seen.update(trade, bar, r_cc, early_ipo)
        vol_hat = np.sqrt(seen.ew_var)
        ready = trade & (seen.n_bars >= WARMUP_BARS)
        comps["reversal"][d] = np.where(ready, effects.reversal * vol_hat * np.nan_to_num(seen.reversal()), 0.0)
        comps["pattern"][d] = np.where(ready, effects.pattern * vol_hat * pat, 0.0)
        comps["news"][d] = np.where(trade, effects.news * vol_hat * news_signal[d], 0.0)
        comps["market"][d] = np.where(trade, st.beta * mu_m + effects.macro * 0.011 * macro_signal[d], 0.0)
        mu[d] = comps["reversal"][d] + comps["pattern"][d] + comps["news"][d] + comps["market"][d]
        limit_carry = _expected_carry_in_label(carry, up_band, down_band, d, capped_ipo, age)
        comps["limit_carry"][d] = np.where(trade, limit_carry, 0.0)
        prev_close = np.where(trade, c, prev_close)

    return PriceArrays(shares=st.shares, components=comps, **hits, **out)
