"""Forecast evaluation on the validation period (`quantlm forecast`).

At each origin t (evenly spaced store dates after the tokenizer's fit end, by default), every
symbol with bars up to t and `horizon` bars after t is forecast from its bars with ts <= t only.
The realised per-bar close-to-close log returns (adjusted by adj_factor where known) of bars
t+1..t+H are scored with `quantlm.predict.metrics.evaluate_forecasts` beside the persistence
(zero return) and trailing 20-bar historical-volatility baselines, which see returns up to t only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

PAST = 60  # returns up to each origin handed to the baselines


def _log_returns(g: pd.DataFrame) -> np.ndarray:
    adj = g["adj_factor"].to_numpy(dtype=float) if "adj_factor" in g else np.full(len(g), np.nan)
    px = g["close"].to_numpy(dtype=float) * np.where(np.isfinite(adj) & (adj > 0), adj, 1.0)
    return np.diff(np.log(px), prepend=np.nan)  # [n]: r[i] = log(P_i / P_{i-1}); NaN at 0


def evaluate_model(model_dir: str | Path, store, out: str | Path, start=None, end=None, horizon: int = 5,
                   n_samples: int = 16, n_origins: int = 20, freq: str = "1d", temperature: float = 1.0,
                   top_p: float = 0.9, seed: int = 0, device: str | None = None) -> dict:
    """Run the evaluation, write out/forecast_metrics.json and out/forecasts.parquet; return the metrics dict."""
    from quantlm.predict.forecaster import Forecaster
    from quantlm.predict.metrics import evaluate_forecasts

    fc = Forecaster(model_dir, device=device)
    bars = store.bars(freq=freq)
    if len(bars) == 0:
        raise FileNotFoundError(f"the store at {store.root} has no {freq} bars")
    first = pd.Timestamp(start) if start is not None else (pd.Timestamp(fc.tok.fit_end) if fc.tok.fit_end else None)
    cal = np.unique(bars["ts"].to_numpy())
    lo = np.searchsorted(cal, np.datetime64(first), side="right" if start is None else "left") if first is not None else 0
    hi = len(cal) - horizon  # origins need H later dates
    if end is not None:
        hi = min(hi, int(np.searchsorted(cal, np.datetime64(pd.Timestamp(end)), side="right")))
    if hi <= lo:
        raise ValueError(f"no forecast origin between {first} and the last date with {horizon} bars after it")
    picks = np.unique(np.linspace(lo, hi - 1, min(n_origins, hi - lo)).round().astype(int))
    groups = {str(s): g.reset_index(drop=True) for s, g in bars.groupby("symbol", sort=True)}
    rets = {s: _log_returns(g) for s, g in groups.items()}

    all_samples, realised, past, rows = [], [], [], []
    for j, o in enumerate(picks):
        t = pd.Timestamp(cal[o])
        hist, keep = [], []
        for s, g in groups.items():
            n_hist = int(np.searchsorted(g["ts"].to_numpy(), np.datetime64(t), side="right"))
            if n_hist >= 2 and len(g) - n_hist >= horizon and g["ts"].iloc[n_hist - 1] == t:
                hist.append(g.iloc[:n_hist])
                keep.append((s, n_hist))
        if not keep:
            continue
        f = fc.forecast(pd.concat(hist, ignore_index=True), horizon, n_samples, temperature, top_p, seed + j)
        scores = f.scores()["score"].to_numpy()
        for i, (s, n_hist) in enumerate(keep):
            r = rets[s]
            all_samples.append(f.samples[i].T)  # [H, K]
            realised.append(r[n_hist:n_hist + horizon])
            p = r[max(1, n_hist - PAST):n_hist]
            past.append(np.concatenate([np.full(PAST - len(p), np.nan), p]))
            rows.append({"symbol": s, "ts": t, "score": float(scores[i]),
                         **{f"mean_{h + 1}": float(f.mean[i, h]) for h in range(horizon)},
                         **{f"realised_{h + 1}": float(realised[-1][h]) for h in range(horizon)}})
    if not rows:
        raise ValueError("no (symbol, origin) pair has history up to the origin and the full horizon after it")
    x, y, pr = np.stack(all_samples), np.stack(realised), np.stack(past)
    res = {
        "model_dir": str(model_dir), "freq": freq, "horizon": horizon, "n_samples": n_samples,
        "temperature": temperature, "top_p": top_p, "seed": seed,
        "origins": [str(pd.Timestamp(cal[o]).date()) for o in picks], "n_origins": len(picks),
        "n_forecasts": len(rows),
        "fit_end": fc.tok.fit_end,
        "in_training_period": bool(fc.tok.fit_end is not None and pd.Timestamp(cal[picks[0]]) <= pd.Timestamp(fc.tok.fit_end)),
        "per_step": _jsonable(evaluate_forecasts(x, y, pr)),
        "cumulative": _jsonable(evaluate_forecasts(x, y, pr, cumulative=True)),
    }
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "forecast_metrics.json").write_text(json.dumps(res, indent=2))
    pd.DataFrame(rows).to_parquet(d / "forecasts.parquet", index=False)
    return res


def _jsonable(m: dict) -> dict:
    return {str(h): {k: {kk: (None if isinstance(v, float) and not np.isfinite(v) else v) for kk, v in d.items()}
                     for k, d in row.items()} for h, row in m.items()}


def metrics_table(res: dict, key: str = "cumulative"):
    """A rich Table: per horizon and method, direction accuracy, MAE, CRPS and 80%/90% coverage."""
    from rich.table import Table

    tab = Table(title=f"forecast evaluation ({key} log returns, {res['n_forecasts']} forecasts)")
    for col in ("h", "method", "dir. acc", "MAE", "CRPS", "cov 80%", "cov 90%", "n"):
        tab.add_column(col, justify="right")

    def fmt(v, p=4):
        return "-" if v is None else f"{v:.{p}f}"

    for h, row in res[key].items():
        for name, s in row.items():
            tab.add_row(h, name, fmt(s["direction_accuracy"], 3), fmt(s["mae"]), fmt(s["crps"]),
                        fmt(s["coverage_80"], 3), fmt(s["coverage_90"], 3), str(s["n"]))
    return tab
