"""Hugging Face-style persistence of a `KlineTokenizer`: tokenizer_config.json names the class and holds
the config, special ids and the fitted bins (edges and representative values per axis, float64 written
as JSON numbers, which round-trip exactly). `save_pretrained` also writes the files of
`KlineTokenizer.save` (tokenizer.json, edges_*.npy, reps_*.npy), so `KlineTokenizer.load` keeps working.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from quantlm.tokenize import _kernels as K

TOKENIZER_CONFIG = "tokenizer_config.json"
_AXES = ("ret", "vol", "gap", "upper", "lower")
_FORMAT = "quantlm.KlineTokenizer/1"


def save_pretrained(tok, directory: str | Path) -> Path:
    """Write `tok` (fitted) to `directory`: the files of `save` plus tokenizer_config.json. Returns the folder."""
    tok.save(directory)
    d = Path(directory)
    meta = json.loads((d / "tokenizer.json").read_text())
    bins = {axis: {"edges": tok.edges[axis].tolist(), "reps": tok.reps[axis].tolist()} for axis in _AXES}
    cfg = {"tokenizer_class": "KlineTokenizer", "quantlm_class": "quantlm.tokenize.KlineTokenizer", **meta,
           "bins": bins}
    (d / TOKENIZER_CONFIG).write_text(json.dumps(cfg, indent=1))
    return d


def from_pretrained(cls, directory: str | Path):
    """The tokenizer in `directory` (tokenizer_config.json; a folder with only tokenizer.json goes to `cls.load`)."""
    d = Path(directory)
    p = d / TOKENIZER_CONFIG
    if not p.exists():
        if (d / "tokenizer.json").exists():
            return cls.load(d)
        raise FileNotFoundError(f"{d}: no {TOKENIZER_CONFIG} or tokenizer.json (not a saved KlineTokenizer)")
    meta = json.loads(p.read_text())
    if meta.get("tokenizer_class") != "KlineTokenizer" or meta.get("format") != _FORMAT:
        raise ValueError(f"{p}: not a quantlm KlineTokenizer config (tokenizer_class "
                         f"{meta.get('tokenizer_class')!r}, format {meta.get('format')!r})")
    missing = [a for a in _AXES if a not in meta.get("bins", {})]
    if missing:
        raise ValueError(f"{p}: bins lack the axes {missing}")
    tok = cls(**meta["config"])
    tok.freq, tok.step_minutes, tok.n_slots, tok.fit_end = meta["freq"], meta["step_minutes"], meta["n_slots"], \
        meta["fit_end"]
    for axis in _AXES:
        tok.edges[axis] = np.asarray(meta["bins"][axis]["edges"], dtype=np.float64)
        tok.reps[axis] = np.asarray(meta["bins"][axis]["reps"], dtype=np.float64)
    tok._lookup = K.bin_lookup([tok.edges[a] for a in _AXES])
    return tok
