"""The one window sampler of every stage: stateless random windows from pools of valid start rows.

A pool is an int64 array of flat row indices at which a window of `window` rows may start (all its
rows inside one symbol and inside the allowed period). Several pools (pretraining sources: market x
frequency) are mixed by weight. The draw of micro-batch `index` comes from
`np.random.default_rng([seed, index])` only, so a batch is a pure function of (seed, index): the
sampler has no position to save, and a resumed run draws exactly what an uninterrupted one would.
The training core gives every micro-batch of a run its own index (see `quantlm.train.core`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class WindowSampler:
    """Random window starts from weighted pools; `draw(index, batch_size)` -> [(pool, starts)]."""

    def __init__(self, pools: Sequence[np.ndarray], window: int, seed: int, weights: Sequence[float] | None = None,
                 error: type[Exception] = ValueError, empty_message: str | None = None) -> None:
        self.pools = [np.asarray(p, dtype=np.int64) for p in pools]
        self.window, self.seed = int(window), int(seed)
        w = np.asarray(weights if weights is not None else [1.0] * len(self.pools), dtype=np.float64)
        if len(w) != len(self.pools):
            raise ValueError(f"{len(w)} weights for {len(self.pools)} pools")
        w = np.where([len(p) > 0 for p in self.pools], w, 0.0)
        if not len(w) or w.sum() == 0:
            raise error(empty_message or f"no window of {window} rows to sample from")
        self.weights = w / w.sum()

    @classmethod
    def from_rows(cls, session: np.ndarray, offsets: np.ndarray, window: int, last_session: int, seed: int,
                  error: type[Exception] = ValueError) -> WindowSampler:
        """One pool: windows of `window` rows inside a symbol (rows offsets[k]:offsets[k+1], sorted by
        session) whose last row's session is <= last_session."""
        starts = []
        for k in range(len(offsets) - 1):
            lo, hi = int(offsets[k]), int(offsets[k + 1])
            n_ok = int(np.searchsorted(session[lo:hi], last_session, side="right"))  # rows <= last session
            if n_ok >= window:
                starts.append(lo + np.arange(n_ok - window + 1))
        pool = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        return cls([pool], window, seed, error=error,
                   empty_message=f"no symbol has {window} bars before the training end: lower window_bars")

    @property
    def starts(self) -> np.ndarray:
        """Every allowed start row, all pools together."""
        return np.concatenate(self.pools)

    def draw(self, index: int, batch_size: int) -> list[tuple[int, np.ndarray]]:
        """[(pool, start rows)] of micro-batch `index`: pools chosen by weight, starts uniformly in each pool."""
        rng = np.random.default_rng([self.seed, int(index)])
        if len(self.pools) == 1:
            return [(0, self.pools[0][rng.integers(0, len(self.pools[0]), batch_size)])]
        which = rng.choice(len(self.pools), size=batch_size, p=self.weights)
        out = []
        for k, pool in enumerate(self.pools):
            n = int((which == k).sum())
            if n:
                out.append((k, pool[rng.integers(0, len(pool), n)]))
        return out

    def batch_starts(self, index: int, batch_size: int) -> np.ndarray:
        """Start rows of micro-batch `index` (single-pool samplers)."""
        if len(self.pools) != 1:
            raise ValueError("batch_starts needs a single-pool sampler: use draw()")
        return self.draw(index, batch_size)[0][1]
