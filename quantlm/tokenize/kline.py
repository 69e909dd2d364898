"""K-line tokenizer: each bar becomes two tokens (coarse, fine) over causal, scale-free features.

Features of bar t of a symbol (rows of a symbol are consecutive bars; missing sessions are simply
absent, so a suspension is one long step):

    ret    = log(C_t / C_{t-1}) / sigma_t        close-to-close log return (adj_factor ratio applied)
    gap    = log(O_t / C_{t-1}) / sigma_t        open gap
    upper  = log(H_t / max(O_t, C_t)) / sigma_t  upper shadow (>= 0)
    lower  = log(min(O_t, C_t) / L_t) / sigma_t  lower shadow (>= 0)
    vol    = log1p(V_t) - m_t                    log volume relative to its EWMA level m_t
    amount = log1p(A_t) - a_t                    same for amount (0 where unknown); features only
    logsig = log(sigma_t)                        the scale itself (tokens are scale-free); features only

Normalisation uses bars strictly before t only: sigma_t^2 is an EWMA (half-life `vol_halflife`
bars) of squared log returns up to t-1, each winsorised at 25 sigma^2 and floored at `min_vol`^2;
m_t, a_t are EWMAs (half-life `volume_halflife`) of log1p(volume), log1p(amount) up to t-1. There
are no per-window statistics, so nothing from a forecast horizon can leak in (the Kronos bug: a
z-score over the whole window, horizon included).
First bar of a symbol (no previous close): C_{t-1} := O_t, so gap = 0 and ret = log(C_t / O_t);
sigma_t^2 is its own Parkinson range variance log(H/L)^2 / (4 ln 2) (the one place a bar informs
its own scale), and vol = 0.

Vocabulary (ids): [0, n_special) special tokens, then n_coarse coarse ids, then n_fine fine ids.
Every axis is quantised with bins fitted on the training period only (mostly equal-probability
quantiles, a quarter of the bins spread uniformly over the 0.05%..99.95% range so tails keep
resolution; see `_bins.fit_edges`). With 256/256 (shape (64, 4, 2, 2, 4, 4, 4)):

    coarse = ret_bin // 2 * 4 + vol_bin // 2     64 return bins x 4 volume levels
    fine   = (ret_bin % 2, vol_bin % 2, gap, upper, lower)   sub-bins and 4-bin shadows / gap

so ret is a 128-bin grid and vol an 8-bin grid whose high bits live in the coarse token. Why: the
model predicts coarse first, which carries the decision-relevant information (direction and size
of the move, activity); fine then refines the move and fills in the bar's shape, and is learned
conditionally on coarse by the model, so the factorisation does not have to be statistically
independent. Decoding maps each bin to the mean of its training samples (unbiased means of
sampled paths) and rebuilds prices recursively from a `TokenizerState`, advancing sigma and the
volume level with the decoded bar exactly as encoding does.

Amount is deliberately not tokenised: it is close to volume x price and would halve the
resolution of the other axes; it is in `features()` for models with continuous inputs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.tokenize import _kernels as K
from quantlm.tokenize._bins import bin_means as _bin_means
from quantlm.tokenize._bins import check_shape, default_shape, fit_edges

SPECIAL_TOKENS = ("pad", "bos", "eos", "sep", "buy", "hold", "sell", "text")
N_SPECIAL = 16  # the 8 above + 8 reserved
FEATURE_NAMES = ("ret", "gap", "upper", "lower", "vol", "amount", "logsig")
_AXES = ("ret", "vol", "gap", "upper", "lower")
_FORMAT = "quantlm.KlineTokenizer/1"
_NS_PER_DAY = 86_400 * 10**9
_WINSOR = 25.0  # squared returns enter the variance EWMA capped at 25 sigma^2 (5 sigma)


@dataclass
class TokenizerState:
    """Causal state after a symbol's last bar, all that decoding the next bars needs.

    Fields may be floats or arrays broadcastable to the leading dims of the ids being decoded.
    last_close: raw close of the last bar (currency); var: variance of the next bar's log return;
    log_volume_level / log_amount_level: EWMA of log1p(volume) / log1p(amount) (NaN if unknown);
    n_bars: bars seen; last_ts: time stamp of the last bar (ISO string, None if unknown).
    """

    last_close: float
    var: float
    log_volume_level: float
    log_amount_level: float = float("nan")
    n_bars: int = 0
    last_ts: str | None = None

    @property
    def sigma(self) -> float:
        """Volatility scale (log-return units per bar) of the next bar."""
        return np.sqrt(self.var)


@dataclass
class _Rows:
    """Bars of many symbols as arrays: rows grouped by symbol, time-ordered within a symbol."""

    cols: dict[str, np.ndarray]  # open, high, low, close, volume, amount, adj_factor: float64 [n]; ts: int64 ns [n]
    new: np.ndarray  # bool [n], True on each symbol's first row
    starts: np.ndarray  # int64 [n_symbols], first row of each symbol
    names: np.ndarray  # object [n_symbols], symbol names
    bars: pd.DataFrame  # the frame in this row order


class KlineTokenizer:
    """Two tokens per bar (coarse, fine) from causal normalised features; see the module docstring."""

    tokens_per_bar: int = 2
    n_weekdays: int = 7

    def __init__(self, n_coarse: int = 256, n_fine: int = 256, vol_halflife: int = 20, volume_halflife: int = 20,
                 min_vol: float = 1e-4, shape: tuple[int, ...] | None = None, tail_weight: float = 0.25,
                 max_fit_rows: int = 4_000_000, seed: int = 0) -> None:
        self.n_coarse, self.n_fine = int(n_coarse), int(n_fine)
        self.vol_halflife, self.volume_halflife = int(vol_halflife), int(volume_halflife)
        self.min_vol, self.tail_weight = float(min_vol), float(tail_weight)
        self.max_fit_rows, self.seed = int(max_fit_rows), int(seed)
        self.shape = check_shape(shape if shape is not None else default_shape(self.n_coarse, self.n_fine),
                                 self.n_coarse, self.n_fine)
        for i, name in enumerate(SPECIAL_TOKENS):
            setattr(self, f"{name}_id", i)
        self.n_special = N_SPECIAL
        self.coarse_offset = N_SPECIAL
        self.fine_offset = N_SPECIAL + self.n_coarse
        self.vocab_size = N_SPECIAL + self.n_coarse + self.n_fine
        self._id_tables = K.id_tables(self.shape, self.coarse_offset, self.fine_offset)
        self.freq: str | None = None
        self.step_minutes = 0  # bar length for intraday data, 0 for daily
        self.n_slots = 1
        self.fit_end: str | None = None
        self.edges: dict[str, np.ndarray] = {}
        self.reps: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ sizes and helpers
    @property
    def alpha_var(self) -> float:
        return 1.0 - 0.5 ** (1.0 / self.vol_halflife)

    @property
    def alpha_volume(self) -> float:
        return 1.0 - 0.5 ** (1.0 / self.volume_halflife)

    @property
    def axis_bins(self) -> dict[str, int]:
        """Total bins per axis: ret and vol are split across coarse and fine."""
        rc, vc, rf, vf, g, u, lo = self.shape
        return {"ret": rc * rf, "vol": vc * vf, "gap": g, "upper": u, "lower": lo}

    @property
    def special_tokens(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(SPECIAL_TOKENS)}

    @property
    def is_fitted(self) -> bool:
        return bool(self.edges)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("KlineTokenizer is not fitted: call fit(bars, end=...) or load(directory)")

    # ------------------------------------------------------------------ one causal pass
    def _prepare(self, bars: pd.DataFrame, single: bool) -> _Rows:
        """Bar columns as contiguous float64 arrays, grouped by symbol and time-ordered (sorted if needed)."""
        if len(bars) == 0:
            raise ValueError("no bars")
        ts = pd.DatetimeIndex(bars["ts"]).as_unit("ns").asi8
        new = np.zeros(len(bars), dtype=bool)
        new[0] = True
        if not single:
            s = bars["symbol"]
            new = s.ne(s.shift()).to_numpy(dtype=bool)
        starts = np.flatnonzero(new)
        names = np.asarray([""] if single else [str(x) for x in bars["symbol"].iloc[starts]], dtype=object)
        bad = (np.diff(ts) <= 0) & ~new[1:]
        if bad.any() or len(set(names)) < len(names):
            if single:
                raise ValueError("bars of one symbol must have strictly increasing ts")
            bars = bars.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
            rows = self._prepare(bars, single)
            if ((np.diff(rows.cols["ts"]) <= 0) & ~rows.new[1:]).any():
                raise ValueError("duplicate (symbol, ts) in bars")
            return rows
        cols = {c: np.ascontiguousarray(bars[c].to_numpy(dtype=np.float64)) for c in ("open", "high", "low", "close", "volume")}
        for c in ("amount", "adj_factor"):
            cols[c] = (np.ascontiguousarray(bars[c].to_numpy(dtype=np.float64)) if c in bars.columns
                       else np.full(len(bars), np.nan))
        cols["ts"] = ts
        return _Rows(cols, new, starts, names, bars)

    def _run(self, rows: _Rows, want_feat: bool, want_ids: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One numba pass: features float64 [n, 7], ids int64 [n, 2] (empty unless wanted), states [n_symbols, 6]."""
        n = len(rows.new)
        feat = np.empty((n if want_feat else 0, K.N_FEATURES))
        ids = np.empty((n if want_ids else 0, 2), dtype=np.int64)
        state = np.empty((len(rows.starts), K.N_STATE))
        if want_ids:
            self._check_fitted()
            lk = self._lookup
        else:
            lk = K.bin_lookup([np.zeros(0)] * 5, n_cells=1)
        ct, ft = self._id_tables
        c = rows.cols
        K.encode_rows(c["open"], c["high"], c["low"], c["close"], c["volume"], c["amount"], c["adj_factor"], rows.new,
                      self.alpha_var, self.alpha_volume, _WINSOR, self.min_vol**2, want_feat, want_ids,
                      feat, ids, state, *lk, ct, ft)
        return feat, ids, state

    @staticmethod
    def _split(values: np.ndarray, rows: _Rows) -> dict[str, np.ndarray]:
        bounds = np.append(rows.starts, len(rows.new))
        return {s: values[a:b] for s, a, b in zip(rows.names, bounds[:-1], bounds[1:], strict=True)}

    def features(self, bars: pd.DataFrame) -> dict[str, np.ndarray]:
        """symbol -> float32 [n_bars, 7] causal features (FEATURE_NAMES), in time order. Needs no fit."""
        rows = self._prepare(bars, single=False)
        return self._split(self._run(rows, True, False)[0].astype(np.float32), rows)

    # ------------------------------------------------------------------ fit
    def fit(self, bars: pd.DataFrame, end=None) -> KlineTokenizer:
        """Fit the bins on bars with ts <= end (None: all bars): the training period only."""
        if end is not None:
            bars = bars[bars["ts"] <= pd.Timestamp(end)]
            self.fit_end = str(pd.Timestamp(end))
        rows = self._prepare(bars, single=False)
        feat = self._run(rows, True, False)[0]
        if len(feat) > self.max_fit_rows:
            rng = np.random.default_rng(self.seed)
            feat = feat[np.sort(rng.choice(len(feat), self.max_fit_rows, replace=False))]
        columns = {"ret": K.F_RET, "vol": K.F_VOL, "gap": K.F_GAP, "upper": K.F_UPPER, "lower": K.F_LOWER}
        for axis, n_bins in self.axis_bins.items():
            x = feat[:, columns[axis]]
            self.edges[axis] = fit_edges(x, n_bins, self.tail_weight)
            self.reps[axis] = _bin_means(x, self.edges[axis], n_bins)
        self._lookup = K.bin_lookup([self.edges[a] for a in _AXES])
        self.step_minutes = _step_minutes(rows.cols["ts"], rows.new)
        self.freq = "1d" if self.step_minutes == 0 else _freq_name(self.step_minutes)
        self.n_slots = 1 if self.step_minutes == 0 else max(1, 1440 // self.step_minutes)
        return self

    # ------------------------------------------------------------------ encode
    def encode(self, bars: pd.DataFrame) -> dict[str, np.ndarray]:
        """symbol -> int64 [n_bars, 2] (coarse_id, fine_id), global vocabulary ids, in time order."""
        rows = self._prepare(bars, single=False)
        return self._split(self._run(rows, False, True)[1], rows)

    def encode_symbol(self, bars_one_symbol: pd.DataFrame) -> np.ndarray:
        """int64 [n_bars, 2] for the bars of one symbol (rows in time order; the symbol column is ignored)."""
        return self._run(self._prepare(bars_one_symbol, single=True), False, True)[1]

    def encode_frame(self, bars: pd.DataFrame) -> pd.DataFrame:
        """Long frame (symbol, ts, coarse, fine) sorted by symbol, ts: handy for joins and leak checks."""
        rows = self._prepare(bars, single=False)
        ids = self._run(rows, False, True)[1]
        return pd.DataFrame({"symbol": rows.bars["symbol"].to_numpy(), "ts": rows.bars["ts"].to_numpy(),
                             "coarse": ids[:, 0], "fine": ids[:, 1]})

    # ------------------------------------------------------------------ calendar
    def calendar_ids(self, ts: pd.Series | pd.DatetimeIndex) -> np.ndarray:
        """int64 [n, 2]: (weekday 0=Mon..6, intraday slot = minute of day // bar minutes; 0 for daily)."""
        ns = pd.DatetimeIndex(ts).as_unit("ns").asi8
        day, in_day = np.divmod(ns, _NS_PER_DAY)
        out = np.empty((len(ns), 2), dtype=np.int64)
        out[:, 0] = (day + 3) % 7  # 1970-01-01 was a Thursday
        if self.step_minutes:
            out[:, 1] = np.minimum(in_day // (60 * 10**9) // self.step_minutes, self.n_slots - 1)
        else:
            out[:, 1] = 0
        return out

    # ------------------------------------------------------------------ state and decode
    @staticmethod
    def _state_from_row(row: np.ndarray, last_ts) -> TokenizerState:
        return TokenizerState(last_close=float(row[K.S_CLOSE]), var=float(row[K.S_VAR]),
                              log_volume_level=float(row[K.S_LVOL]), log_amount_level=float(row[K.S_LAMT]),
                              n_bars=int(row[K.S_COUNT]), last_ts=None if last_ts is None else str(pd.Timestamp(last_ts)))

    def state(self, bars_one_symbol: pd.DataFrame) -> TokenizerState:
        """Causal state after the last bar of one symbol (what decoding bar T+1 onward needs)."""
        rows = self._prepare(bars_one_symbol, single=True)
        return self._state_from_row(self._run(rows, False, False)[2][0], rows.cols["ts"][-1])

    def states(self, bars: pd.DataFrame) -> dict[str, TokenizerState]:
        """symbol -> state after its last bar, for a frame of many symbols."""
        rows = self._prepare(bars, single=False)
        st = self._run(rows, False, False)[2]
        ends = np.append(rows.starts[1:], len(rows.new)) - 1
        return {s: self._state_from_row(st[g], rows.cols["ts"][ends[g]]) for g, s in enumerate(rows.names)}

    def dequantise(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """[..., 2] token ids -> per-axis representative feature values [...] (ret, vol, gap, upper, lower)."""
        self._check_fitted()
        ids = np.asarray(ids)
        c = ids[..., 0] - self.coarse_offset
        f = ids[..., 1] - self.fine_offset
        if ids.size and (c.min() < 0 or c.max() >= self.n_coarse or f.min() < 0 or f.max() >= self.n_fine):
            raise ValueError("ids must be (coarse, fine) pairs of bar tokens; got special or out-of-block ids")
        rc, vc, rf, vf, ng, nu, nl = self.shape
        f, lq = np.divmod(f, nl)
        f, uq = np.divmod(f, nu)
        sub, gq = np.divmod(f, ng)
        r_idx = (c // vc) * rf + sub // vf
        v_idx = (c % vc) * vf + sub % vf
        r = self.reps
        return {"ret": r["ret"][r_idx], "vol": r["vol"][v_idx], "gap": r["gap"][gq], "upper": r["upper"][uq],
                "lower": r["lower"][lq]}

    def _advance_var(self, var: np.ndarray, ret: np.ndarray) -> np.ndarray:
        """The encoder's variance recursion (`_kernels.update_var`), vectorised."""
        a = self.alpha_var
        return np.maximum((1.0 - a) * var + a * np.minimum(ret * ret, _WINSOR * var), self.min_vol**2)

    def decode_returns(self, ids: np.ndarray, state: TokenizerState) -> np.ndarray:
        """[..., n, 2] future tokens -> float64 [..., n] close-to-close log returns continuing from state.

        Vectorised over leading dims (e.g. [n_paths, horizon, 2]); sigma is advanced bar by bar with the
        decoded returns exactly as encoding advances it with the real ones.
        """
        z = self.dequantise(ids)["ret"]  # [..., n]
        var = np.broadcast_to(np.asarray(state.var, dtype=np.float64), z.shape[:-1]).copy()
        out = np.empty_like(z)
        for t in range(z.shape[-1]):
            out[..., t] = z[..., t] * np.sqrt(var)
            var = self._advance_var(var, out[..., t])
        return out

    def decode(self, ids: np.ndarray, state: TokenizerState) -> pd.DataFrame:
        """[n, 2] future tokens -> approximate bars continuing from state.

        Columns: open, high, low, close (currency, continuing from state.last_close with the adjustment
        factor held constant), volume (shares), log_return (close-to-close). State is advanced bar by bar.
        """
        q = self.dequantise(np.asarray(ids).reshape(-1, 2))
        out = np.empty((len(q["ret"]), 6))
        K.decode_bars(q["ret"], q["gap"], q["upper"], q["lower"], q["vol"], float(state.last_close), float(state.var),
                      float(state.log_volume_level), self.alpha_var, self.alpha_volume, _WINSOR, self.min_vol**2, out)
        return pd.DataFrame(out, columns=["open", "high", "low", "close", "volume", "log_return"])

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        return {"n_coarse": self.n_coarse, "n_fine": self.n_fine, "vol_halflife": self.vol_halflife,
                "volume_halflife": self.volume_halflife, "min_vol": self.min_vol, "shape": list(self.shape),
                "tail_weight": self.tail_weight, "max_fit_rows": self.max_fit_rows, "seed": self.seed}

    def save(self, directory) -> None:
        """Write tokenizer.json (config, sizes, special ids) and edges_<axis>.npy / reps_<axis>.npy."""
        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"format": _FORMAT, "config": self.config(), "freq": self.freq,
                "step_minutes": self.step_minutes, "n_slots": self.n_slots, "fit_end": self.fit_end,
                "vocab_size": self.vocab_size, "special_tokens": self.special_tokens,
                "coarse_offset": self.coarse_offset, "fine_offset": self.fine_offset}
        for axis in _AXES:
            np.save(d / f"edges_{axis}.npy", self.edges[axis], allow_pickle=False)
            np.save(d / f"reps_{axis}.npy", self.reps[axis], allow_pickle=False)
        (d / "tokenizer.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory) -> KlineTokenizer:
        d = Path(directory)
        meta = json.loads((d / "tokenizer.json").read_text())
        tok = cls(**meta["config"])
        tok.freq, tok.step_minutes, tok.n_slots, tok.fit_end = (meta["freq"], meta["step_minutes"], meta["n_slots"],
                                                                meta["fit_end"])
        for axis in _AXES:
            tok.edges[axis] = np.load(d / f"edges_{axis}.npy", allow_pickle=False)
            tok.reps[axis] = np.load(d / f"reps_{axis}.npy", allow_pickle=False)
        tok._lookup = K.bin_lookup([tok.edges[a] for a in _AXES])
        return tok


    def save_pretrained(self, directory) -> Path:
        """Hugging Face-style save: tokenizer_config.json (class, config, special ids, the fitted bins as
        exact JSON numbers) beside the files of `save`, which `load` keeps reading. Returns the folder."""
        from quantlm.tokenize.pretrained import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory) -> KlineTokenizer:
        """A tokenizer saved by `save_pretrained` (or, without tokenizer_config.json, by `save`)."""
        from quantlm.tokenize.pretrained import from_pretrained

        return from_pretrained(cls, directory)


def state_to_dict(state: TokenizerState) -> dict:
    """JSON-friendly dict of a scalar state."""
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in asdict(state).items()}


def _step_minutes(ts: np.ndarray, new: np.ndarray) -> int:
    """Bar length in minutes (0 for daily, all-midnight data): the most common within-symbol spacing."""
    if np.all(ts % _NS_PER_DAY == 0):
        return 0
    d = np.diff(ts)[~new[1:]]
    d = d[(d > 0) & (d < _NS_PER_DAY)]
    if len(d) == 0:
        return 1
    vals, counts = np.unique(d, return_counts=True)
    return max(1, int(vals[np.argmax(counts)] // (60 * 10**9)))


def _freq_name(minutes: int) -> str:
    return {1: "1min", 5: "5min", 15: "15min", 30: "30min", 60: "1h"}.get(minutes, f"{minutes}min")
