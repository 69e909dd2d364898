"""Fine-tuning data: every bar of every symbol as one flat, point-in-time table of model inputs and targets.

`build_trader_data` reads the store once and lays out, for all bars sorted by (symbol, ts):

    ids [N, 2] tokens, cal [N, 2] calendar ids, features [N, 7] causal tokenizer features,
    text [N, d] float16 embedding of the texts visible at that session (company texts only; see
    `quantlm.data.text.session_text_features`), text_weight [N] (decayed count of those texts),
    factors [N, F] float16 (with factors="alpha158": the point-in-time Alpha158 factors of
    `quantlm.features.factors`, ranked within each session's cross-section to [-1, 1], NaN -> 0, plus
    one column: the share of the 158 factors still missing, i.e. the warm-up of a young listing),
    ret [N, n_h] forward returns ret_h(t) = open(t+1+h)/open(t+1) - 1 (fractions), rank [N, n_h] their
    cross-sectional rank in [-1, 1], direction [N] (0 sell, 1 hold, 2 buy, -1 none).

A store too small to rank (under 10 symbols, `quantlm.finetune.timeseries`) gets time-series versions
of the rank target (the vol-scaled return through the normal CDF) and of the factor ranks (percentile
within the symbol's trailing year): per-session ranks of one symbol carry nothing.

Inputs at bar t use bars up to t and texts visible at t only. Targets look ahead by construction;
`targets_known(train_end)` masks every target whose last price (open of t+1+h) lies after
`train_end`, which is what makes a fine-tuning run on data "up to train_end" leak-free: the window
sampler only ever shows training code bars <= train_end and targets known by then.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.finetune.timeseries import factor_time_ranks, is_timing_store, timing_rank_target
from quantlm.model.layout import bar_sequence


class FinetuneDataError(ValueError):
    """Bad fine-tuning input (shown to CLI users as a plain message)."""

    user_facing = True


@dataclass
class TraderData:
    """All bars of a market as flat arrays; rows of symbol k are offsets[k]:offsets[k+1]."""

    symbols: list[str]
    offsets: np.ndarray  # int64 [n_symbols + 1]
    calendar: pd.DatetimeIndex  # sessions of the market (union of bar time stamps)
    session: np.ndarray  # int64 [N]: index of each bar's ts in calendar
    ids: np.ndarray  # int64 [N, 2]
    cal: np.ndarray  # int64 [N, 2]
    features: np.ndarray  # float32 [N, 7]
    text: np.ndarray | None  # float16 [N, d]
    text_weight: np.ndarray | None  # float32 [N]
    ret: np.ndarray  # float32 [N, n_h]
    rank: np.ndarray  # float32 [N, n_h]
    direction: np.ndarray  # int64 [N]
    horizons: list[int]
    direction_horizon: int  # sessions after entry the direction label needs (1, or the barrier horizon)
    factors: np.ndarray | None = None  # float16 [N, F]: session-ranked factor inputs (see build_trader_data)

    @property
    def n(self) -> int:
        return len(self.session)

    def symbol_of(self) -> np.ndarray:
        """int64 [N]: the symbol index of each row."""
        return np.repeat(np.arange(len(self.symbols)), np.diff(self.offsets))

    def ts(self) -> np.ndarray:
        return self.calendar.asi8[self.session]

    def session_index(self, when) -> int:
        """Index of the last session <= when (-1 if none)."""
        return int(np.searchsorted(self.calendar.asi8, pd.Timestamp(when).value, side="right")) - 1

    def targets_known(self, train_end) -> dict[str, np.ndarray]:
        """Copies of ret / rank / direction with every target not known by the close of train_end masked."""
        end = self.session_index(train_end)
        ret, rank, direction = self.ret.copy(), self.rank.copy(), self.direction.copy()
        for j, h in enumerate(self.horizons):
            late = self.session + 1 + h > end
            ret[late, j] = np.nan
            rank[late, j] = np.nan
        direction[self.session + 1 + self.direction_horizon > end] = -1
        return {"ret": ret, "rank": rank, "direction": direction}

    def gather(self, starts: np.ndarray, length: int, bos_id: int, targets: dict[str, np.ndarray] | None = None
               ) -> dict[str, np.ndarray]:
        """A batch of windows of `length` bars starting at flat rows `starts` (all inside one symbol each)."""
        idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length)  # [B, n]
        tok, cal = bar_sequence(self.ids[idx], self.cal[idx], bos_id)
        batch = {"input_ids": tok, "calendar_ids": cal, "features": self.features[idx]}
        if self.text is not None:
            batch["text"] = self.text[idx].astype(np.float32)
            batch["text_weight"] = self.text_weight[idx]
        if self.factors is not None:
            batch["factors"] = self.factors[idx].astype(np.float32)
        if targets is not None:
            batch.update({k: v[idx] for k, v in targets.items()})
        return batch


def market_bars(store, market: str | None = None, end=None) -> tuple[pd.DataFrame, str]:
    """Daily bars of the store's market without the benchmark / index symbols, and the market name."""
    from quantlm.baselines.compare import split_benchmark

    meta = store.meta()
    market = market or meta.get("market") or "cn"
    bars = store.bars(freq="1d", market=market, end=end)
    if len(bars) == 0:
        raise FinetuneDataError(f"store {store.root} holds no daily bars for market '{market}'")
    bars, _ = split_benchmark(bars, meta.get("benchmark"), store.instruments())
    return bars.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True), market


def build_trader_data(store, tokenizer, targets_config=None, text: bool = True, text_half_life: float = 1.5,
                      market: str | None = None, end=None, bars: pd.DataFrame | None = None,
                      rank_target: str = "return", factors: str = "none") -> TraderData:
    """Tokens, features, text and targets for every tradable daily bar of the store up to `end`.

    rank_target "vol_scaled" ranks ret_h / (sigma_t sqrt(h)) per session instead of ret_h (sigma_t the
    tokenizer's causal volatility): every stock's noise then has the same scale, so the rank target is
    not dominated by the most volatile names.

    text=True needs the store's texts embedded (`quantlm data embed`); a store without texts gives
    zero text inputs. factors "alpha158" adds the session-ranked factor inputs (`factor_ranks`);
    "none" leaves TraderData.factors None. `bars` overrides the store read (tests, user frames).
    """
    from quantlm.features.targets import TargetConfig, make_targets

    if bars is None:
        bars, market = market_bars(store, market, end)
    market = market or "cn"
    cfg = targets_config or TargetConfig()
    targets = make_targets(bars, cfg, market=market)  # sorted (symbol, ts) like bars
    enc = tokenizer.encode(bars)
    feats = tokenizer.features(bars)
    symbols = sorted(enc)
    counts = bars.groupby("symbol", sort=True).size()
    if list(counts.index.astype(str)) != symbols:
        raise FinetuneDataError("bars and their encoding disagree on symbols (duplicate or unsorted rows?)")
    offsets = np.concatenate([[0], np.cumsum(counts.to_numpy())]).astype(np.int64)
    ts = pd.DatetimeIndex(bars["ts"])
    calendar = pd.DatetimeIndex(np.unique(ts.asi8)).as_unit("ns")
    session = np.searchsorted(calendar.asi8, ts.as_unit("ns").asi8).astype(np.int64)
    ids = np.concatenate([enc[s] for s in symbols]).astype(np.int64)
    features = np.concatenate([feats[s] for s in symbols]).astype(np.float32)
    cal = tokenizer.calendar_ids(ts).astype(np.int64)
    horizons = list(cfg.horizons)
    ret = np.stack([targets[f"ret_{h}"].to_numpy(np.float32) for h in horizons], axis=1)
    rank = np.stack([targets[f"rank_{h}"].to_numpy(np.float32) for h in horizons], axis=1)
    direction = targets["direction"].to_numpy().astype(np.int64)
    if rank_target not in ("return", "vol_scaled"):
        raise ValueError(f"rank_target must be 'return' or 'vol_scaled', got {rank_target!r}")
    timing = is_timing_store(len(symbols))  # too few symbols to rank: time-series targets and factors
    if timing:
        rank = timing_rank_target(ret, features[:, 6], horizons)
    elif rank_target == "vol_scaled":
        rank = vol_scaled_ranks(ret, features[:, 6], session, horizons)
    text_arr = text_w = None
    if text:
        text_arr, text_w = cached_bar_text(store, symbols, offsets, calendar, session, market, text_half_life)
    if factors not in FACTOR_SETS:
        raise FinetuneDataError(f"factors must be one of {', '.join(FACTOR_SETS)}, got {factors!r}")
    fac = cached_factor_ranks(bars, session, timing) if factors == "alpha158" else None
    d_h = cfg.barrier_horizon if cfg.direction == "triple_barrier" else 1
    return TraderData(symbols, offsets, calendar, session, ids, cal, features, text_arr, text_w, ret, rank,
                      direction, horizons, d_h, fac)


FACTOR_SETS = ("none", "alpha158")
_FACTOR_CACHE: dict[tuple, np.ndarray] = {}
_CACHE_SIZE = 2  # the factor and text caches: train_end data and test-end data of one run


def cached_factor_ranks(bars: pd.DataFrame, session: np.ndarray, timing: bool = False) -> np.ndarray:
    """`factor_ranks`, remembered in this process for the last 2 distinct (bars, session) contents: the
    stages of one fold (SFT, reward, RL, distillation) read the same bars up to train_end."""
    key = (len(bars), tuple(bars.columns), int(pd.util.hash_pandas_object(bars, index=False).sum()),
           int(pd.util.hash_array(np.asarray(session)).sum()), timing)
    if key not in _FACTOR_CACHE:
        if len(_FACTOR_CACHE) >= _CACHE_SIZE:
            _FACTOR_CACHE.pop(next(iter(_FACTOR_CACHE)))
        _FACTOR_CACHE[key] = factor_ranks(bars, session, timing)
    return _FACTOR_CACHE[key].copy()


def factor_ranks(bars: pd.DataFrame, session: np.ndarray, timing: bool = False) -> np.ndarray:
    """float16 [N, 159]: Alpha158 factors of `bars` (sorted by symbol, ts) ranked within each session
    (timing=True, a store too small to rank: within the symbol's trailing year instead,
    `quantlm.finetune.timeseries.factor_time_ranks`).

    Column j < 158: the rank of factor j among the symbols of the bar's session that have it, mapped to
    [-1, 1] ((rank - 0.5) / count * 2 - 1, ties averaged); 0 where the factor is NaN (window not full).
    Column 158: the share of the 158 factors that are NaN for the bar (1 on a listing's first bar).
    Point in time: a factor at t uses the symbol's bars <= t only and its rank the other symbols'
    factors of the same session only.
    """
    from quantlm.features.factors import alpha158
    from quantlm.features.targets import group_ranks

    raw = alpha158(bars)
    if len(raw) != len(session) or not np.array_equal(raw.index.get_level_values("symbol").astype(str),
                                                      bars["symbol"].astype(str).to_numpy()):
        raise FinetuneDataError("alpha158 factors and bars disagree on row order (duplicate (symbol, ts) rows?)")
    if timing:
        return factor_time_ranks(raw, bars["symbol"].astype(str).to_numpy())
    values = raw.to_numpy(np.float32)
    out = group_ranks(np.asarray(session), values)
    missing = ~np.isfinite(values)
    out[missing] = 0.0
    share = missing.mean(axis=1, dtype=np.float32)[:, None]
    return np.concatenate([out, share], axis=1).astype(np.float16)


def vol_scaled_ranks(ret: np.ndarray, log_sigma: np.ndarray, session: np.ndarray, horizons: list[int]) -> np.ndarray:
    """Per-session ranks in [-1, 1] of ret_h / (sigma sqrt(h)); NaN where ret is NaN. float32 [N, n_h]."""
    scaled = ret / (np.exp(log_sigma)[:, None] * np.sqrt(np.asarray(horizons, dtype=np.float64)))
    from quantlm.features.targets import group_ranks

    out = group_ranks(np.asarray(session), np.where(np.isfinite(scaled), scaled, np.nan))
    return out.astype(np.float32)


_TEXT_CACHE: dict[tuple, tuple[np.ndarray | None, np.ndarray | None]] = {}


def cached_bar_text(store, symbols, offsets, calendar, session, market, half_life):
    """`_bar_text`, remembered in this process for the last 2 distinct inputs: every stage of a run (SFT,
    reward, RL, distillation, the scoring of each model) reads the same text features of the same bars.

    The key holds the store's text and embedding files (content-named: any write changes them), the
    symbols, their row offsets, the calendar, the row sessions, the market and the half-life."""
    from quantlm.data.text import embed_texts

    if store is None or len(store.texts()) == 0:
        return None, None  # no text input at all (d_text = 0), not a zero input of some width
    embed_texts(store)  # incremental by content hash: loads the embedder only when a text is new or edited
    files = [tuple(map(str, row)) for tbl in ("texts", "text_embeddings")
             for row in store._catalog(tbl).to_numpy().tolist()]
    key = (str(Path(store.root).resolve()), tuple(files), tuple(symbols), market, float(half_life),
           *(int(pd.util.hash_array(np.asarray(a)).sum()) for a in (offsets, calendar.asi8, session)))
    if key not in _TEXT_CACHE:
        if len(_TEXT_CACHE) >= _CACHE_SIZE:
            _TEXT_CACHE.pop(next(iter(_TEXT_CACHE)))
        _TEXT_CACHE[key] = _bar_text(store, symbols, offsets, calendar, session, market, half_life)
    arr, weight = _TEXT_CACHE[key]
    return arr.copy(), weight.copy()


def _bar_text(store, symbols, offsets, calendar, session, market, half_life, chunk: int = 40):
    """Per-bar text features (float16 [N, d]) and weights, computed `chunk` symbols at a time (memory)."""
    from quantlm.data.text import session_text_features

    n = len(session)
    out, weight = None, np.zeros(n, np.float32)
    for a in range(0, len(symbols), chunk):
        syms = symbols[a:a + chunk]
        f, w = session_text_features(store, syms, calendar, market, half_life_sessions=half_life,
                                     include_market_wide=False)
        if out is None:
            out = np.zeros((n, f.shape[2]), np.float16)
        for j, _ in enumerate(syms):
            lo, hi = offsets[a + j], offsets[a + j + 1]
            out[lo:hi] = f[session[lo:hi], j]
            weight[lo:hi] = w[session[lo:hi], j]
    return out, weight


def row_window_sampler(data: TraderData, window: int, last_row_session: int, seed: int):
    """The shared `quantlm.train.sampler.WindowSampler` over windows of `window` bars inside one symbol
    whose last bar's session is <= last_row_session (stateless: micro-batch i from rng([seed, i]))."""
    from quantlm.train.sampler import WindowSampler

    return WindowSampler.from_rows(data.session, data.offsets, window, last_row_session, seed, error=FinetuneDataError)


def scoring_windows(data: TraderData, rows: np.ndarray, window: int, warm: int) -> list[tuple[int, int, int, int]]:
    """Windows (start, length, out_from, out_to) covering the asked flat `rows` (sorted) per symbol.

    Each asked row is produced by exactly one window in which it has at least `warm` bars of context
    before it (or all of its history, near a listing). Windows are `window` bars (shorter only for a
    symbol with fewer bars); out_from/out_to are flat rows, inclusive.
    """
    if warm >= window:
        raise ValueError(f"warm ({warm}) must be < window ({window})")
    sym = np.searchsorted(data.offsets, rows, side="right") - 1
    out = []
    for k in np.unique(sym):
        asked = rows[sym == k]
        s0, s1 = int(data.offsets[k]), int(data.offsets[k + 1])
        a, b = int(asked[0]), int(asked[-1])
        nxt = a
        while nxt <= b:
            st = max(s0, nxt - warm)
            end = min(st + window, s1)
            if end - st < window:
                st = max(s0, end - window)
            out.append((st, end - st, nxt, min(end - 1, b)))
            nxt = end
    return out
