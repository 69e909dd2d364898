"""Forecasting with a trained MarketGPT: sampled future paths, quantiles and a Scores table.

For each symbol the last bars of its history (at most max_bars - horizon) are tokenized, the
symbols are left-padded into one batch (attention mask + position ids that start at 0 on each
row's first real token) and encoded once; the KV cache (transformers DynamicCache) is then
repeated for the K samples and H bars (2H tokens: coarse then fine) are sampled autoregressively. Coarse positions sample only from
coarse ids and fine positions only from fine ids. The sampled ids are turned into close-to-close
log returns by `KlineTokenizer.decode_returns`, continuing from each symbol's causal state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from quantlm.model.build import MarketGPT
from quantlm.model.layout import bar_sequence, left_pad, positions

QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


@dataclass
class Forecast:
    """Sampled futures. samples [S, K, H]: per-bar log returns of K paths for bars t+1..t+H."""

    symbols: list[str]
    origin_ts: np.ndarray  # datetime64[ns] [S]: each symbol's last observed bar (the forecast origin)
    samples: np.ndarray  # float64 [S, K, H]
    quantile_levels: tuple[float, ...] = QUANTILES
    future_ts: np.ndarray | None = field(default=None, repr=False)  # datetime64[ns] [S, H], assumed calendar

    @property
    def horizon(self) -> int:
        return self.samples.shape[2]

    @property
    def cumulative(self) -> np.ndarray:
        """[S, K, H] cumulative log return from the origin close to the close of bar t+h."""
        return np.cumsum(self.samples, axis=2)

    @property
    def mean(self) -> np.ndarray:
        """[S, H] mean over paths of the cumulative log return to horizon h."""
        return self.cumulative.mean(axis=1)

    @property
    def quantiles(self) -> np.ndarray:
        """[S, Q, H] quantiles (quantile_levels) of the cumulative log return to horizon h; sorted in Q."""
        return np.moveaxis(np.quantile(self.cumulative, self.quantile_levels, axis=1), 0, 1)

    def to_frame(self) -> pd.DataFrame:
        """Long table: symbol, ts (origin), horizon, mean, q0.05 .. q0.95 (cumulative log returns)."""
        s, h = len(self.symbols), self.horizon
        out = pd.DataFrame({"symbol": np.repeat(self.symbols, h), "ts": np.repeat(self.origin_ts, h),
                            "horizon": np.tile(np.arange(1, h + 1), s), "mean": self.mean.reshape(-1)})
        q = self.quantiles  # [S, Q, H]
        for j, lv in enumerate(self.quantile_levels):
            out[f"q{lv:g}"] = q[:, j, :].reshape(-1)
        return out

    def scores(self, horizon: int | None = None) -> pd.DataFrame:
        """Scores table (symbol, ts, score): score = expected simple return over `horizon` bars (default H)."""
        h = self.horizon if horizon is None else int(horizon)
        if not 1 <= h <= self.horizon:
            raise ValueError(f"horizon must be in 1..{self.horizon}, got {h}")
        score = np.expm1(self.cumulative[:, :, h - 1]).mean(axis=1)
        return pd.DataFrame({"symbol": self.symbols, "ts": self.origin_ts, "score": score})


def future_timestamps(ts: pd.DatetimeIndex, horizon: int) -> pd.DatetimeIndex:
    """Assumed time stamps of the next `horizon` bars after ts[-1] (for calendar embeddings only).

    Daily: business days, or calendar days when the history trades on weekends (crypto). Intraday:
    the times of day seen in the history, rolled over to the next such day.
    """
    ts = pd.DatetimeIndex(ts)
    last = ts[-1]
    day_of = ts.normalize()
    weekend = bool((ts.dayofweek >= 5).any())
    step = pd.offsets.Day(1) if weekend else pd.offsets.BDay(1)
    if (ts == day_of).all():
        return pd.date_range(last + step, periods=horizon, freq=step)
    tod = np.unique((ts - day_of)[-5000:].to_numpy())
    out: list[pd.Timestamp] = []
    day, later = last.normalize(), tod[tod > (last - last.normalize()).to_timedelta64()]
    while len(out) < horizon:
        out.extend(day + pd.Timedelta(t) for t in later)
        day, later = day + step, tod
    return pd.DatetimeIndex(out[:horizon])


def sample_token(logits: torch.Tensor, lo: int, hi: int, temperature: float, top_p: float,
                 generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> ids [B] sampled from the block [lo, hi) with temperature and nucleus (top-p)."""
    x = logits[:, lo:hi].float()
    if temperature <= 0:
        return lo + x.argmax(-1)
    probs = torch.softmax(x / temperature, dim=-1)
    if top_p < 1.0:
        p_sorted, order = probs.sort(dim=-1, descending=True)
        drop = (p_sorted.cumsum(-1) - p_sorted) > top_p  # keep the smallest prefix with mass >= top_p
        p_sorted = p_sorted.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, p_sorted)
    return lo + torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Forecaster:
    """Load a model folder (MarketGPT + tokenizer/) and forecast many symbols at once."""

    def __init__(self, model_dir: str | Path, device: str | None = None, max_batch: int = 512) -> None:
        from quantlm.tokenize import KlineTokenizer

        d = Path(model_dir)
        if not (d / "tokenizer" / "tokenizer.json").exists():
            raise FileNotFoundError(f"{d} has no tokenizer/ folder: not a quantlm model folder")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = MarketGPT.load(d, self.device).eval()  # eval: dropout off
        self.tok = KlineTokenizer.load(d / "tokenizer")
        self.max_batch = int(max_batch)

    # ------------------------------------------------------------------ inputs
    def encode_history(self, bars: pd.DataFrame, max_bars: int) -> dict[str, dict]:
        """symbol -> {tokens [1+2n], cal [1+2n, 2], state, ts (DatetimeIndex of all bars)} for the last n <= max_bars bars."""
        if len(bars) == 0:
            raise ValueError("no bars to forecast from")
        bars = bars.sort_values(["symbol", "ts"], kind="stable")
        enc, states = self.tok.encode(bars), self.tok.states(bars)
        out = {}
        for sym, g in bars.groupby("symbol", sort=True):
            ts = pd.DatetimeIndex(g["ts"])
            ids = enc[str(sym)][-max_bars:]
            tokens, cal = bar_sequence(ids, self.tok.calendar_ids(ts[-len(ids):]), self.tok.bos_id)
            out[str(sym)] = {"tokens": tokens, "cal": cal, "state": states[str(sym)], "ts": ts}
        return out

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, tokens: np.ndarray, cal: np.ndarray, mask: np.ndarray, future_cal: np.ndarray,
                 n_samples: int = 1, temperature: float = 1.0, top_p: float = 0.9,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> np.ndarray:
        """Sample H bars after left-padded prompts, n_samples paths each.

        tokens/mask [B, L], cal [B, L, 2], future_cal [B, H, 2] -> ids [B, n_samples, H, 2]. The
        prompt is encoded once per row and its cache repeated n_samples times. use_cache=False
        recomputes the whole sequence for every token (reference / benchmark path).
        """
        from transformers import DynamicCache

        dev, tk, k = self.device, self.tok, n_samples
        t = torch.as_tensor(tokens, device=dev)
        c = torch.as_tensor(cal, device=dev)
        m = torch.as_tensor(mask, device=dev)
        fc = torch.as_tensor(future_cal, device=dev).repeat_interleave(k, 0)  # [B*K, H, 2]
        blocks = ((tk.coarse_offset, tk.coarse_offset + tk.n_coarse), (tk.fine_offset, tk.fine_offset + tk.n_fine))
        horizon = fc.shape[1]
        pos = positions(m)
        cache = DynamicCache(config=self.model.config) if use_cache else None
        logits = self.model(t, c, attention_mask=m, position_ids=pos, cache=cache, use_cache=use_cache,
                            logits_to_keep=1).logits[:, -1]  # [B, V]
        # Rows (b, k) in order: every sample of prompt b shares its prefill.
        logits, m, pos, t, c = (x.repeat_interleave(k, 0) for x in (logits, m, pos, t, c))
        if use_cache:
            cache.batch_repeat_interleave(k)
        out = torch.empty(t.shape[0], horizon, 2, dtype=torch.long, device=dev)
        for h in range(horizon):
            for j, (lo, hi) in enumerate(blocks):
                nxt = sample_token(logits, lo, hi, temperature, top_p, generator)  # [B*K]
                out[:, h, j] = nxt
                if h == horizon - 1 and j == 1:
                    break
                step_cal = fc[:, h][:, None]  # [B*K, 1, 2]: the bar's calendar ids on both its tokens
                m = torch.cat([m, torch.ones_like(m[:, :1])], dim=1)
                pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)
                if use_cache:
                    o = self.model(nxt[:, None], step_cal, attention_mask=m, position_ids=pos[:, -1:],
                                   cache=cache, use_cache=True)
                else:
                    t, c = torch.cat([t, nxt[:, None]], 1), torch.cat([c, step_cal], 1)
                    o = self.model(t, c, attention_mask=m, position_ids=pos, logits_to_keep=1)
                logits = o.logits[:, -1]
        return out.reshape(-1, k, horizon, 2).cpu().numpy()

    def forecast(self, bars: pd.DataFrame, horizon: int, n_samples: int = 16, temperature: float = 1.0,
                 top_p: float = 0.9, seed: int = 0, use_cache: bool = True) -> Forecast:
        """K sampled paths of the next `horizon` bars for every symbol in `bars` (histories may differ in length)."""
        if horizon < 1 or n_samples < 1:
            raise ValueError(f"horizon and n_samples must be >= 1, got {horizon}, {n_samples}")
        if horizon >= self.model.max_bars:
            raise ValueError(f"horizon {horizon} must be below the model context of {self.model.max_bars} bars")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        hist = self.encode_history(bars, self.model.max_bars - horizon)
        symbols = list(hist)
        fut_ts = [future_timestamps(hist[s]["ts"], horizon) for s in symbols]
        fut_cal = np.stack([self.tok.calendar_ids(f) for f in fut_ts])  # [S, H, 2]
        gen = torch.Generator(device=self.device).manual_seed(seed)
        ids = np.empty((len(symbols), n_samples, horizon, 2), np.int64)
        step = max(1, self.max_batch // n_samples)  # symbols per chunk: chunk rows = step * K <= max_batch
        for a in range(0, len(symbols), step):
            chunk = symbols[a:a + step]
            t, c, m = left_pad([hist[s]["tokens"] for s in chunk], [hist[s]["cal"] for s in chunk], self.tok.pad_id)
            ids[a:a + len(chunk)] = self.generate(t, c, m, fut_cal[a:a + len(chunk)], n_samples, temperature, top_p,
                                                  gen, use_cache)
        samples = np.stack([self.tok.decode_returns(ids[i], hist[s]["state"]) for i, s in enumerate(symbols)])
        origin = np.array([hist[s]["ts"][-1] for s in symbols], dtype="datetime64[ns]")
        return Forecast(symbols, origin, samples, QUANTILES, np.stack([f.to_numpy() for f in fut_ts]))

    def scores(self, bars: pd.DataFrame, horizon: int, **kwargs) -> pd.DataFrame:
        """Scores table (symbol, ts, score = expected `horizon`-bar simple return)."""
        return self.forecast(bars, horizon, **kwargs).scores()
