"""Score sources for the live engine, all with `quantlm.finetune.latency.LiveScorer`'s interface:
`start(history, symbols)` then `update(bars, ts) -> scores [S]` once per bar.

- `FrameScorer`: a Scores table (a signals file) replayed: at bar ts, each symbol's score stamped at
  the last bar at or before... exactly as the backtest maps scores to bars (a daily stamp on intraday
  bars acts at that date's last bar). Used for the backtest parity test and for external models.
- `ModelScorer`: a model folder (student or trader) through the torch `LiveScorer` or the ONNX
  runtime; symbols without a bar this time get their last close as a flat bar and a NaN score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.backtest.prepare import NS_PER_DAY, _ns


class FrameScorer:
    """Replay a Scores table (symbol, ts, score) as a model's output."""

    def __init__(self, scores: pd.DataFrame, name: str = "signals", value: str = "score") -> None:
        if value not in scores.columns:
            raise ValueError(f"scores lack a '{value}' column")
        self.name = name
        s = scores[["symbol", "ts", value]].copy()
        ts = _ns(s["ts"])
        self._daily = bool(len(ts)) and bool((ts % NS_PER_DAY == 0).all())
        self.scores = s.assign(_ns=ts).rename(columns={value: "score"})
        self._last: int | None = None

    def start(self, history: pd.DataFrame, symbols: list[str]) -> None:
        self.symbols = list(symbols)
        index = pd.Index(self.symbols)
        self._intraday = bool(len(history)) and bool((_ns(history["ts"]) % NS_PER_DAY != 0).any())
        stamps = self.scores["_ns"].to_numpy()
        if self._intraday and self._daily:
            stamps = stamps + (NS_PER_DAY - 1)
        order = np.argsort(stamps, kind="stable")
        self._stamps = stamps[order]
        self._j = index.get_indexer(self.scores["symbol"].astype(str))[order]
        self._v = self.scores["score"].to_numpy(dtype="float64")[order]
        self._prev_ns = None

    def update(self, bars: dict[str, np.ndarray], ts) -> np.ndarray:
        """Scores stamped after the previous bar and at or before this one (the last per symbol)."""
        now = _ns([ts])[0]
        a = 0 if self._prev_ns is None else int(np.searchsorted(self._stamps, self._prev_ns, side="right"))
        b = int(np.searchsorted(self._stamps, now, side="right"))
        out = np.full(len(self.symbols), np.nan)
        j, v = self._j[a:b], self._v[a:b]
        ok = j >= 0
        out[j[ok]] = v[ok]
        self._prev_ns = now
        return out


class ModelScorer:
    """A model folder scored live (torch LiveScorer, or ONNX Runtime when `backend="onnx"`)."""

    def __init__(self, model_dir: str | Path, backend: str = "onnx", name: str | None = None) -> None:
        self.model_dir, self.backend = Path(model_dir), backend
        self.name = name or self.model_dir.name
        if backend == "onnx":
            from quantlm.live.serving import load_live_scorer

            self.inner = load_live_scorer(self.model_dir, backend="onnx")
        else:
            from quantlm.finetune.latency import LiveScorer
            from quantlm.finetune.student import load_scorer
            from quantlm.tokenize import KlineTokenizer

            model = load_scorer(self.model_dir)
            self.inner = LiveScorer(model, KlineTokenizer.load(self.model_dir / "tokenizer"))

    def start(self, history: pd.DataFrame, symbols: list[str]) -> None:
        self.symbols = list(symbols)
        need = 0 if getattr(self.inner, "is_student", True) else int(self.inner.context)
        self.inner.start(pad_history(history, self.symbols, need) if need else history, self.symbols)
        last = history.sort_values("ts").groupby("symbol")["close"].last()
        # a symbol not yet listed is fed flat bars at 1.0 until its first bar (as `pad_history`), never
        # NaN, which would poison its incremental feature state
        self.last_close = np.nan_to_num(last.reindex(self.symbols).to_numpy(dtype="float64"), nan=1.0)

    def update(self, bars: dict[str, np.ndarray], ts) -> np.ndarray:
        has = np.isfinite(bars["close"])
        filled = {}
        for f in ("open", "high", "low", "close"):
            filled[f] = np.where(has, bars[f], self.last_close)
        filled["volume"] = np.where(has, bars["volume"], 0.0)
        for f in ("amount", "adj_factor"):
            if f in bars:
                filled[f] = bars[f]
        self.last_close = np.where(has, bars["close"], self.last_close)
        scores = np.asarray(self.inner.update(filled, ts), dtype="float64")
        return np.where(has, scores, np.nan)


def pad_history(history: pd.DataFrame, symbols: list[str], bars: int) -> pd.DataFrame:
    """History with at least `bars` bars per symbol, for models that score only full windows (traders).

    A symbol with fewer bars (a new listing, a long suspension) gets flat bars before its first one
    (open = high = low = close = its first open, volume 0) on the business days before it; a symbol
    with no bar at all gets flat bars at 1.0 (its tokens are scale-free returns, so the level does not
    matter until its first real bar). Its first scores are then made on mostly flat context.
    """
    counts = history.groupby("symbol").size().reindex(symbols, fill_value=0)
    short = counts[counts < bars]
    if short.empty:
        return history
    first_ts = pd.Timestamp(history["ts"].min()) if len(history) else pd.Timestamp("2000-01-03")
    firsts = history.sort_values("ts").groupby("symbol").first()
    pads = []
    for sym, n in short.items():
        k = bars - int(n)
        if sym in firsts.index:
            start, price = pd.Timestamp(firsts.loc[sym, "ts"]), float(firsts.loc[sym, "open"])
        else:
            start, price = first_ts, 1.0
        ts = pd.bdate_range(end=start - pd.Timedelta(days=1), periods=k)
        pads.append(pd.DataFrame({"symbol": sym, "ts": ts, "open": price, "high": price, "low": price,
                                  "close": price, "volume": 0.0, "amount": 0.0}))
    out = pd.concat([history, *pads], ignore_index=True)
    return out.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
