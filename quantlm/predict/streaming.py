"""Streaming forecasts: one bar per symbol arrives, the KV cache is extended by its 2 tokens.

All symbols share one batched, preallocated transformers StaticCache [S, heads, 1 + 2 max_bars,
head_dim] written in place (a DynamicCache would copy the whole cache on every update), with rows
left-padded to the longest history, per-row position ids and an explicit 4-D boolean mask (key is
real and not in the future), so an update is one forward pass of [S, 2] tokens.

Context limit: a row's sequence may hold at most 1 + 2 * max_bars tokens (the trained context).
When the next update would pass that length, every row is re-encoded from scratch from its last
`reencode_bars` bars (W, default max_bars // 2) plus the new bar, with a fresh BOS and positions
from 0. From then on each row's state is exactly a fresh computation over [BOS, those bars, bars
appended since], which is what the tests check. (A sliding window that drops old keys from the
cache would not be: the kept keys and values were computed while attending to the dropped tokens.)
Re-encoding costs one prefill of W bars every max_bars - W updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from quantlm.model.layout import bar_sequence, left_pad, positions
from quantlm.predict.forecaster import Forecaster


@dataclass
class NextBar:
    """The model's view of the next bar of each symbol after an update."""

    symbols: list[str]
    ts: np.ndarray  # datetime64[ns] [S]: the bar just appended (the decision time)
    coarse_probs: np.ndarray  # float32 [S, n_coarse]: P(next bar's coarse token)
    expected_z: np.ndarray  # float64 [S]: E[next return / sigma] under the coarse distribution
    expected_return: np.ndarray | None = None  # float64 [S]: expected_z * sigma (log return), if states known

    def scores(self) -> pd.DataFrame:
        """Scores table (symbol, ts, score): expected next-bar log return (or its z-score without states)."""
        score = self.expected_return if self.expected_return is not None else self.expected_z
        return pd.DataFrame({"symbol": self.symbols, "ts": self.ts, "score": score})


class StreamingForecaster:
    """Keeps per-symbol caches; `start(history)` then `append(new_bars)` once per bar."""

    def __init__(self, forecaster: Forecaster | str, reencode_bars: int | None = None,
                 tokenize_history: int = 1000) -> None:
        self.f = forecaster if isinstance(forecaster, Forecaster) else Forecaster(forecaster)
        self.model, self.tok, self.device = self.f.model, self.f.tok, self.f.device
        self.max_bars = self.model.max_bars
        self.max_tokens = 1 + 2 * self.max_bars
        self.W = int(reencode_bars) if reencode_bars is not None else max(1, self.max_bars // 2)
        if not 1 <= self.W < self.max_bars:
            raise ValueError(f"reencode_bars must be in 1..{self.max_bars - 1}, got {self.W}")
        self.tokenize_history = int(tokenize_history)
        ids = np.stack(np.meshgrid(np.arange(self.tok.n_coarse) + self.tok.coarse_offset,
                                   np.arange(self.tok.n_fine) + self.tok.fine_offset, indexing="ij"), -1)
        # E[z | coarse] with the fine sub-bins weighted equally: float64 [n_coarse]
        self.z_of_coarse = torch.as_tensor(self.tok.dequantise(ids)["ret"].mean(axis=1), device=self.device)
        self.cache = None
        self.n_reencodes = 0

    # ------------------------------------------------------------------ state
    def _mask(self, n_new: int) -> torch.Tensor:
        """[S, 1, n_new, max_tokens] bool: query i (the i-th of the newest n_new tokens) may see real keys up to itself."""
        k = torch.arange(self.max_tokens, device=self.device)
        q = torch.arange(self.cur - n_new, self.cur, device=self.device)
        return self.key_real[:, None, None, :] & (k[None, :] <= q[:, None])[None, None]

    def _prefill(self) -> torch.Tensor:
        """Fresh cache over each row's kept bars; returns next-token logits [S, V]."""
        from transformers import StaticCache

        seqs = [bar_sequence(i, c, self.tok.bos_id) for i, c in zip(self.ids, self.cals, strict=True)]
        t, c, m = left_pad([s[0] for s in seqs], [s[1] for s in seqs], self.tok.pad_id)
        m = torch.as_tensor(m, device=self.device)
        self.cur = m.shape[1]
        self.key_real = torch.zeros(len(seqs), self.max_tokens, dtype=torch.bool, device=self.device)
        self.key_real[:, :self.cur] = m.bool()
        pos = positions(m)
        self.pos = pos[:, -1]  # [S]: position of each row's last token
        self.cache = StaticCache(config=self.model.lm.config, max_cache_len=self.max_tokens)
        out = self.model(torch.as_tensor(t, device=self.device), torch.as_tensor(c, device=self.device),
                         attention_mask=self._mask(self.cur), position_ids=pos, cache=self.cache,
                         use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    @torch.no_grad()
    def start_ids(self, symbols: list[str], ids: list[np.ndarray], cals: list[np.ndarray],
                  ts: np.ndarray | None = None) -> NextBar:
        """Start from token histories: ids[i] [n_i, 2], cals[i] [n_i, 2] (the last max_bars bars are kept)."""
        self.symbols = list(symbols)
        self.ids = [np.asarray(a, np.int64)[-self.max_bars:] for a in ids]
        self.cals = [np.asarray(c, np.int64)[-self.max_bars:] for c in cals]
        self.last_ts = np.asarray(ts, "datetime64[ns]") if ts is not None else np.full(len(symbols), "NaT", "datetime64[ns]")
        return self._next(self._prefill(), None)

    @torch.no_grad()
    def append_ids(self, ids: np.ndarray, cal: np.ndarray, ts: np.ndarray | None = None, sigma: np.ndarray | None = None
                   ) -> NextBar:
        """One new bar per symbol (in `symbols` order): ids [S, 2], cal [S, 2] -> next-bar view."""
        if self.cache is None:
            raise RuntimeError("call start() or start_ids() first")
        ids, cal = np.asarray(ids, np.int64), np.asarray(cal, np.int64)
        if ids.shape != (len(self.symbols), 2) or cal.shape != ids.shape:
            raise ValueError(f"expected ids and cal of shape {(len(self.symbols), 2)}, got {ids.shape}, {cal.shape}")
        for k in range(len(self.symbols)):
            self.ids[k] = np.concatenate([self.ids[k], ids[k:k + 1]])[-self.max_bars:]
            self.cals[k] = np.concatenate([self.cals[k], cal[k:k + 1]])[-self.max_bars:]
        if ts is not None:
            self.last_ts = np.asarray(ts, "datetime64[ns]")
        if self.cur + 2 > self.max_tokens:
            self.ids = [a[-self.W:] for a in self.ids]
            self.cals = [c[-self.W:] for c in self.cals]
            self.n_reencodes += 1
            return self._next(self._prefill(), sigma)
        dev = self.device
        self.key_real[:, self.cur:self.cur + 2] = True
        self.cur += 2
        pos = self.pos[:, None] + torch.arange(1, 3, device=dev)  # [S, 2]
        self.pos = pos[:, -1]
        cal_t = torch.as_tensor(cal, device=dev)[:, None].expand(-1, 2, -1)  # [S, 2, 2]
        out = self.model(torch.as_tensor(ids, device=dev), cal_t, attention_mask=self._mask(2), position_ids=pos,
                         cache=self.cache, use_cache=True, logits_to_keep=1)
        return self._next(out.logits[:, -1], sigma)

    def _next(self, logits: torch.Tensor, sigma: np.ndarray | None) -> NextBar:
        lo = self.tok.coarse_offset
        probs = torch.softmax(logits[:, lo:lo + self.tok.n_coarse].float(), dim=-1)  # [S, n_coarse]
        ez = (probs.double() @ self.z_of_coarse).cpu().numpy()
        er = ez * np.asarray(sigma) if sigma is not None else None
        return NextBar(self.symbols, self.last_ts.copy(), probs.cpu().numpy(), ez, er)

    # ------------------------------------------------------------------ bars in, bars out
    @torch.no_grad()
    def start(self, history: pd.DataFrame) -> NextBar:
        """Start from bars of many symbols (each symbol's last max_bars bars are kept in the cache)."""
        hist = history.sort_values(["symbol", "ts"], kind="stable")
        self.bars = {str(s): g.tail(self.tokenize_history).reset_index(drop=True) for s, g in hist.groupby("symbol")}
        enc = self.tok.encode(hist)
        syms = list(self.bars)
        cals = [self.tok.calendar_ids(pd.DatetimeIndex(self.bars[s]["ts"])) for s in syms]
        ids = [enc[s][-len(c):] for s, c in zip(syms, cals, strict=True)]
        nb = self.start_ids(syms, ids, cals, np.array([self.bars[s]["ts"].iloc[-1] for s in syms], "datetime64[ns]"))
        states = self.tok.states(hist)
        sig = np.array([states[s].sigma for s in syms])
        nb.expected_return = nb.expected_z * sig
        return nb

    @torch.no_grad()
    def append(self, new_bars: pd.DataFrame) -> NextBar:
        """One new bar for every symbol of the stream -> next-bar view.

        The new bar is tokenized causally by re-encoding the symbol's last `tokenize_history` bars
        (the tokenizer has no incremental encoder yet; with a 20-bar half-life the truncated start
        weighs 2^-50 at 1000 bars).
        """
        if self.cache is None:
            raise RuntimeError("call start() first")
        nb = new_bars.set_index(new_bars["symbol"].astype(str))
        missing = [s for s in self.symbols if s not in nb.index]
        if missing or len(nb) != len(self.symbols):
            raise ValueError(f"append needs exactly one bar per stream symbol; missing {missing[:5]}, got {len(nb)} rows")
        frames = []
        for s in self.symbols:
            row = nb.loc[[s]]
            if pd.Timestamp(row["ts"].iloc[0]) <= self.bars[s]["ts"].iloc[-1]:
                raise ValueError(f"{s}: new bar at {row['ts'].iloc[0]} is not after {self.bars[s]['ts'].iloc[-1]}")
            self.bars[s] = pd.concat([self.bars[s], row.reset_index(drop=True)[self.bars[s].columns]],
                                     ignore_index=True).tail(self.tokenize_history)
            frames.append(self.bars[s])
        frame = pd.concat(frames, ignore_index=True)
        enc, states = self.tok.encode(frame), self.tok.states(frame)
        ids = np.stack([enc[s][-1] for s in self.symbols])
        ts = np.array([self.bars[s]["ts"].iloc[-1] for s in self.symbols], "datetime64[ns]")
        cal = self.tok.calendar_ids(pd.DatetimeIndex(ts))
        return self.append_ids(ids, cal, ts, np.array([states[s].sigma for s in self.symbols]))
