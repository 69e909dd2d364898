"""Cross-sections of windows: every symbol's window ending on one session (reward model, RL, distillation).

- `bar_history`: how many earlier bars each row's symbol has.
- `CrossSectionSampler`: stateless draws (micro-batch i from rng([seed, i])) of end sessions and, per
  session, up to max_symbols symbols' windows ending there, so the bars at each window position form a
  real cross-section of one session.
"""

from __future__ import annotations

import numpy as np

from quantlm.finetune.data import FinetuneDataError, TraderData


def bar_history(data: TraderData) -> np.ndarray:
    """int64 [N]: how many earlier bars each row's symbol has (0 on its first bar)."""
    return np.arange(data.n) - data.offsets[data.symbol_of()]


class CrossSectionSampler:
    """Windows of `window` bars ending on a common session for every symbol that has them there.

    End sessions lie in [first_end, last_end]; each draw takes up to `max_symbols` symbols of one
    end session, so the bars at each window position form a real cross-section (stateless per step).
    """

    def __init__(self, data: TraderData, window: int, last_end: int, max_symbols: int, seed: int,
                 first_end: int = 0) -> None:
        self.data, self.window, self.max_symbols, self.seed = data, window, max_symbols, seed
        ok = (bar_history(data) >= window - 1) & (data.session <= last_end) & (data.session >= first_end)
        rows = np.flatnonzero(ok)
        rows = rows[np.argsort(data.session[rows], kind="stable")]
        sess, first, count = np.unique(data.session[rows], return_index=True, return_counts=True)
        keep = count >= 2
        if not keep.any():
            raise FinetuneDataError(f"no session before the training end has 2 symbols with {window} bars: "
                                    "lower window_bars or move train_end later")
        self.rows, self.sessions, self.first, self.count = rows, sess[keep], first[keep], count[keep]

    def sample(self, step: int, n_sessions: int) -> tuple[np.ndarray, np.ndarray]:
        """(window start rows [M], cross-section number [M]) for `n_sessions` random end sessions."""
        rng = np.random.default_rng([self.seed, step])
        pick = rng.choice(len(self.sessions), size=min(n_sessions, len(self.sessions)), replace=False)
        starts, block = [], []
        for b, s in enumerate(pick):
            rows = self.rows[self.first[s]:self.first[s] + self.count[s]]
            if len(rows) > self.max_symbols:
                rows = np.sort(rng.choice(rows, self.max_symbols, replace=False))
            starts.append(rows - self.window + 1)
            block.append(np.full(len(rows), b))
        return np.concatenate(starts), np.concatenate(block)

    def groups(self, starts: np.ndarray, block: np.ndarray, warm: int) -> tuple[np.ndarray, np.ndarray]:
        """(flat rows [M, P], cross-section group ids [M, P]) of the scored positions warm..window-1."""
        rows = starts[:, None] + np.arange(warm, self.window)
        return rows, block[:, None] * len(self.data.calendar) + self.data.session[rows]
