"""Token layout helpers: bars' (coarse, fine) ids and calendar ids -> model sequences.

One bar is 2 tokens; a window of n bars is [BOS, c_1, f_1, ..., c_n, f_n] (1 + 2n tokens), and
each bar's calendar ids (weekday, intraday slot) are repeated on both of its tokens; BOS has -1.
"""

from __future__ import annotations

import numpy as np


def bar_sequence(ids: np.ndarray, cal: np.ndarray, bos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """ids [..., n, 2], cal [..., n, 2] -> tokens [..., 1+2n] int64, calendar [..., 1+2n, 2] int64."""
    ids, cal = np.asarray(ids, dtype=np.int64), np.asarray(cal, dtype=np.int64)
    lead = ids.shape[:-2]
    tok = np.concatenate([np.full((*lead, 1), bos_id, np.int64), ids.reshape(*lead, -1)], axis=-1)
    cal_tok = np.repeat(cal, 2, axis=-2)  # [..., 2n, 2]
    cal_tok = np.concatenate([np.full((*lead, 1, 2), -1, np.int64), cal_tok], axis=-2)
    return tok, cal_tok


def left_pad(seqs: list[np.ndarray], cals: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-pad 1-D token arrays (and [L, 2] calendars) to a batch.

    Returns tokens [B, L], calendar [B, L, 2] (-1 on pads), attention_mask [B, L] (1 = real).
    """
    n = max(len(s) for s in seqs)
    tok = np.full((len(seqs), n), pad_id, np.int64)
    cal = np.full((len(seqs), n, 2), -1, np.int64)
    mask = np.zeros((len(seqs), n), np.int64)
    for i, (s, c) in enumerate(zip(seqs, cals, strict=True)):
        tok[i, n - len(s):], cal[i, n - len(s):], mask[i, n - len(s):] = s, c, 1
    return tok, cal, mask


def positions(mask):
    """Position ids for a left-padded attention mask [B, L] (torch): 0 at each row's first real token."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
