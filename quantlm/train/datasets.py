"""Pretraining data: token windows from the store with a time-based train/valid split.

- Bars come from the store, one or more sources (frequency x market), each with a sampling weight.
- The split date S: training windows consist of bars with ts <= S only; validation windows of bars
  with ts > S only, so no training target ever lies in the validation period. The tokenizer's bins
  are fitted on ts <= S; its normalisation is causal (EWMA of past bars), so encoding a symbol's
  whole history once and cutting windows from it leaks nothing.
- Sampling is stateless (`quantlm.train.sampler.WindowSampler`): micro-batch i is drawn from
  np.random.default_rng([seed, i]). The data-sampler position saved in a checkpoint is therefore
  just the step, and a resumed run draws exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from quantlm.model.layout import bar_sequence
from quantlm.train.config import ConfigError, DataConfig
from quantlm.train.sampler import WindowSampler

log = logging.getLogger(__name__)


@dataclass
class SourceTokens:
    """One source's tokens, all symbols concatenated: ids [N, 2], calendar [N, 2], ts [N] (int64 ns)."""

    name: str
    ids: np.ndarray
    cal: np.ndarray
    ts: np.ndarray
    train_starts: np.ndarray  # int64 [n_train_windows]: flat start index of each training window
    valid_starts: np.ndarray  # int64 [n_valid_windows]


def load_bars(store, data: DataConfig) -> list[tuple[str, pd.DataFrame]]:
    """[(source name, bars)] for each configured source; error if a source is empty."""
    out = []
    for src in data.sources:
        bars = store.bars(data.symbols, start=data.start, end=data.end, freq=src.freq, market=src.market)
        name = f"{src.market or 'all'}/{src.freq}"
        if len(bars) == 0:
            raise ConfigError(f"data source {name}: the store at {store.root} has no bars for it")
        out.append((name, bars))
    return out


def split_date(sources: list[tuple[str, pd.DataFrame]], data: DataConfig) -> pd.Timestamp:
    """The configured split date, or the date leaving `valid_fraction` of the first source's calendar after it."""
    if data.split is not None:
        return pd.Timestamp(data.split)
    cal = np.unique(sources[0][1]["ts"].to_numpy())
    i = min(len(cal) - 1, max(0, int(np.floor(len(cal) * (1.0 - data.valid_fraction))) - 1))
    return pd.Timestamp(cal[i])


def fit_tokenizer(sources: list[tuple[str, pd.DataFrame]], split: pd.Timestamp, kwargs: dict):
    """KlineTokenizer(**kwargs) fitted on bars with ts <= split of all sources together."""
    from quantlm.tokenize import KlineTokenizer

    try:
        tok = KlineTokenizer(**kwargs)
    except TypeError as e:
        raise ConfigError(f"tokenizer: {e}") from None
    frames = [b.assign(symbol=name + ":" + b["symbol"].astype(str)) for name, b in sources]
    train = pd.concat(frames, ignore_index=True)
    train = train[train["ts"] <= split]
    if len(train) == 0:
        raise ConfigError(f"no bars on or before the split date {split.date()}: nothing to train on")
    return tok.fit(train, end=split)


def tokenize_source(name: str, bars: pd.DataFrame, tok, split: pd.Timestamp, window: int) -> SourceTokens:
    """Encode one source and list the windows of `window` bars wholly before / wholly after the split."""
    enc = tok.encode(bars)  # symbol -> [n, 2], symbols in sorted order as in bars
    bars = bars.sort_values(["symbol", "ts"], kind="stable")
    ts_all = bars["ts"].to_numpy().astype("datetime64[ns]").astype(np.int64)
    counts = bars.groupby("symbol", sort=True).size()
    ids, train_starts, valid_starts = [], [], []
    s_ns = split.value
    offset = 0
    for sym, n in counts.items():
        a = np.asarray(enc[str(sym)])
        assert len(a) == n
        ids.append(a)
        ts = ts_all[offset:offset + n]
        n_train = int(np.searchsorted(ts, s_ns, side="right"))  # bars with ts <= split
        if n_train >= window:
            train_starts.append(offset + np.arange(n_train - window + 1))
        if n - n_train >= window:
            valid_starts.append(offset + n_train + np.arange(n - n_train - window + 1))
        offset += n
    cal = tok.calendar_ids(pd.DatetimeIndex(ts_all))

    def cat(x):
        return np.concatenate(x).astype(np.int64) if x else np.zeros(0, np.int64)

    return SourceTokens(name, np.concatenate(ids), cal, ts_all, cat(train_starts), cat(valid_starts))


class TokenWindows:
    """Pretraining batches: [B, 1 + 2T] ids and [B, 1 + 2T, 2] calendar ids from the sources' windows.

    Training windows are drawn by the shared `WindowSampler` (one pool per source, mixed by weight);
    `train_batch(index, batch_size)` is a pure function of (seed, index).
    """

    def __init__(self, sources: list[SourceTokens], weights: list[float], window: int, bos_id: int,
                 seed: int) -> None:
        self.sources, self.window, self.bos_id, self.seed = sources, window, bos_id, seed
        self.sampler = WindowSampler([s.train_starts for s in sources], window, seed, weights, error=ConfigError,
                                     empty_message=f"no symbol has {window} bars on or before the split date: "
                                                   "lower data.window_bars or move data.split later")

    @property
    def weights(self) -> np.ndarray:
        return self.sampler.weights

    def _gather(self, src: SourceTokens, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = starts[:, None] + np.arange(self.window)  # [B, T]
        return bar_sequence(src.ids[idx], src.cal[idx], self.bos_id)

    def _collate(self, picks: list[tuple[int, np.ndarray]]) -> dict[str, torch.Tensor]:
        toks, cals = zip(*(self._gather(self.sources[k], st) for k, st in picks if len(st)), strict=True)
        return {"input_ids": torch.from_numpy(np.concatenate(toks)), "calendar_ids": torch.from_numpy(np.concatenate(cals))}

    def train_batch(self, index: int, batch_size: int) -> dict[str, torch.Tensor]:
        """Micro-batch `index` of the run (a pure function of seed and index)."""
        return self._collate(self.sampler.draw(index, batch_size))

    def valid_batches(self, n_batches: int, batch_size: int, rank: int = 0, world: int = 1
                      ) -> list[dict[str, torch.Tensor]]:
        """A fixed validation set (same every call): n_batches per process, windows split across processes."""
        pool = [(k, s.valid_starts) for k, s in enumerate(self.sources) if len(s.valid_starts)]
        if not pool or n_batches == 0:
            return []
        rng = np.random.default_rng([self.seed, 2**31 - 1])
        flat = np.concatenate([np.stack([np.full(len(st), k), st], 1) for k, st in pool])
        # Every process gets the same number of windows (and so of batches): FSDP needs matching collectives.
        take = rng.permutation(len(flat))[: min(n_batches * batch_size * world, len(flat) // world * world)]
        mine = flat[np.sort(take)][rank::world]
        out = []
        for b in range(0, len(mine), batch_size):
            chunk = mine[b:b + batch_size]
            out.append(self._collate([(int(k), chunk[chunk[:, 0] == k, 1]) for k in np.unique(chunk[:, 0])]))
        return out

    def n_windows(self) -> dict[str, int]:
        return {"train": int(sum(len(s.train_starts) for s in self.sources)),
                "valid": int(sum(len(s.valid_starts) for s in self.sources))}


def build_data(store, data: DataConfig, tokenizer_kwargs: dict, seed: int, bos_id: int | None = None,
               tokenizer=None):
    """(tokenizer, TokenWindows, split date): load, split by time, fit the tokenizer (unless given), encode."""
    sources = load_bars(store, data)
    split = split_date(sources, data)
    tok = tokenizer if tokenizer is not None else fit_tokenizer(sources, split, tokenizer_kwargs)
    toks = [tokenize_source(name, bars, tok, split, data.window_bars) for name, bars in sources]
    windows = TokenWindows(toks, [s.weight for s in data.sources], data.window_bars,
                           tok.bos_id if bos_id is None else bos_id, seed)
    return tok, windows, split
