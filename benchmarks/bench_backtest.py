"""Backtest engine speed, with baselines measured in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_backtest.py [--years 10] [--symbols 300] [--grid 100]

1. A-share topk: `symbols` x `years` of daily random-walk bars with realistic boards (SH/SZ main,
   ChiNext, STAR, BSE), ST spans, IPOs, suspensions and limit moves; TopkDropout(50, 5) with every cn rule
   on. Prints the cold first call (JIT compile, fresh numba cache, in a subprocess), the cached first call,
   warm seconds split into array preparation / kernel / result tables, bars/s against the backtrader
   anchor (15,000 bars/s), and the Python reference path on one year for a ratio.
3. Intraday: `symbols` x 1 year of A-share 1-minute bars (240 a day across the lunch break, ~17M bars),
   TopkDropout(50, 5) on scores every 30 minutes, all cn rules. Prints warm seconds and the peak memory
   the backtest itself allocates (tracemalloc), beside the same run forced into ONE chunk (the dense
   bars x symbols grid the engine used to build) as the baseline. Targets: < 10 s, < 4 GiB.
2. Signal backtests on one symbol: a single moving-average long/flat signal and a `grid`-variant grid
   (windows 2..grid+1), ours (`run_signal_grid`) beside vectorbt's `Portfolio.from_signals` on the same
   data and semantics (checked equal), both warm; prints seconds and the ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BACKTRADER_BARS_PER_S = 15_000


def a_share_market(n_symbols: int = 300, years: int = 10, seed: int = 0):
    """(bars, scores, instruments, flags) of a synthetic A-share market with realistic boards."""
    rng = np.random.default_rng(seed)
    sessions = pd.bdate_range("2014-01-02", periods=252 * years)
    n_t = len(sessions)
    mix = [("60{:04d}.SH", 0.40, 0.10), ("00{:04d}.SZ", 0.30, 0.10), ("30{:04d}.SZ", 0.17, 0.20),
           ("68{:04d}.SH", 0.10, 0.20), ("83{:04d}.BJ", 0.03, 0.30)]
    symbols, limits = [], []
    for pattern, share, limit in mix:
        k = max(1, round(n_symbols * share))
        symbols += [pattern.format(i) for i in rng.choice(10_000, k, replace=False)]
        limits += [limit] * k
    symbols, limits = symbols[:n_symbols], np.array(limits[:n_symbols])
    n = len(symbols)
    ret = rng.standard_t(4, (n_t, n)) * 0.015 + 0.0002
    ret = np.clip(ret, -limits, limits)  # closes stay inside the daily limit
    close = np.round(np.maximum(10 * np.exp(np.cumsum(np.log1p(ret), axis=0)), 0.5), 2)
    prev = np.vstack([close[:1], close[:-1]])
    gap = np.clip(rng.normal(0, 0.01, (n_t, n)), -limits, limits)
    hit = rng.random((n_t, n)) < 0.01
    gap = np.where(hit, np.sign(rng.normal(size=(n_t, n))) * limits, gap)  # 1% of opens at a limit
    open_ = np.round(prev * (1 + gap), 2)
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, (n_t, n)))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, (n_t, n)))
    volume = np.round(rng.lognormal(14, 0.7, (n_t, n)) / 100) * 100
    present = rng.random((n_t, n)) > 0.01  # ~1% suspended sessions
    list_idx = np.zeros(n, dtype=int)
    ipo = rng.choice(n, n // 15, replace=False)
    list_idx[ipo] = rng.integers(20, n_t - 20, len(ipo))
    present &= np.arange(n_t)[:, None] >= list_idx[None, :]
    ti, ji = np.nonzero(present)
    bars = pd.DataFrame({"symbol": np.asarray(symbols, dtype=object)[ji], "ts": sessions[ti], "open": open_[ti, ji],
                         "high": high[ti, ji], "low": low[ti, ji], "close": close[ti, ji], "volume": volume[ti, ji],
                         "amount": volume[ti, ji] * close[ti, ji]})
    scores = bars[["symbol", "ts"]].assign(score=rng.normal(size=len(bars)))
    instruments = pd.DataFrame({"symbol": np.asarray(symbols, dtype=object)[ipo], "list_date": sessions[list_idx[ipo]]})
    st = rng.choice(n, n // 30, replace=False)
    a = rng.integers(0, n_t - 100, len(st))
    flags = pd.DataFrame({"symbol": np.asarray(symbols, dtype=object)[st], "flag": "st", "start": sessions[a],
                          "end": sessions[a + 80]})
    return bars, scores, instruments, flags


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def cold_first_call(n_symbols: int, years: int, fresh_cache: bool) -> float:
    """Seconds of the first run_backtest in a new process (fresh numba cache = JIT compile included)."""
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.bench_backtest import a_share_market;"
            "from quantlm.backtest.engine import run_backtest, BacktestConfig;"
            f"b, s, i, f = a_share_market({n_symbols}, {years}); t = time.perf_counter();"
            "run_backtest(s, b, BacktestConfig(topk=50, n_drop=5), instruments=i, flags=f);"
            "print(time.perf_counter() - t)")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        if fresh_cache:
            env["NUMBA_CACHE_DIR"] = tmp
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_topk(n_symbols: int, years: int) -> None:
    from quantlm.backtest import engine as E

    bars, scores, inst, flags = a_share_market(n_symbols, years)
    n_bars = len(bars)
    cfg = E.BacktestConfig(topk=50, n_drop=5)
    print(f"\n== 1. A-share TopkDropout(50, 5), all cn rules: {n_symbols} symbols x {years} years = {n_bars:,} bars")
    jit = cold_first_call(n_symbols, years, fresh_cache=True)
    cached = cold_first_call(n_symbols, years, fresh_cache=False)
    E.run_backtest(scores, bars, cfg, instruments=inst, flags=flags)  # warm up in this process
    total, res = timed(lambda: E.run_backtest(scores, bars, cfg, instruments=inst, flags=flags))
    prep, prepared = timed(lambda: E.prepare(scores, bars, cfg, inst, flags))
    kern, out = timed(lambda: E._run_numba(prepared, cfg))
    t = res.trades
    print(f"first call, fresh numba cache (JIT compile): {jit:8.3f} s")
    print(f"first call, numba cache on disk:             {cached:8.3f} s")
    print(f"warm run_backtest:                           {total:8.3f} s  (target < 1 s)")
    print(f"   prepare {prep:.3f} s | per-bar state + kernel + trades table {kern:.3f} s | "
          f"rest {max(total - prep - kern, 0):.3f} s")
    print(f"   {len(t):,} orders ({(t['status'] == 'rejected').sum():,} rejected: "
          f"{t.loc[t['status'] != 'filled', 'reason'].value_counts().to_dict()})")
    print(f"throughput: {n_bars / total:,.0f} bars/s = {n_bars / total / BACKTRADER_BARS_PER_S:,.0f}x the backtrader "
          f"anchor ({BACKTRADER_BARS_PER_S:,} bars/s)")
    one_year = bars[bars["ts"] < bars["ts"].min() + pd.Timedelta(days=365)]
    sc = scores[scores["ts"] < scores["ts"].min() + pd.Timedelta(days=365)]
    py, _ = timed(lambda: E.run_backtest(sc, one_year, cfg, instruments=inst, flags=flags, engine="python"), repeat=1)
    nb, _ = timed(lambda: E.run_backtest(sc, one_year, cfg, instruments=inst, flags=flags))
    print(f"same rules, 1 year ({len(one_year):,} bars): python reference path {py:.3f} s "
          f"({len(one_year) / py:,.0f} bars/s), numba {nb:.3f} s -> {py / nb:,.0f}x")


def bench_signals(grid: int, years: int) -> None:
    import vectorbt as vbt

    from quantlm.backtest import engine as E
    from quantlm.backtest.costs import CostModel
    from quantlm.backtest.rules import MarketRules

    rng = np.random.default_rng(1)
    sessions = pd.bdate_range("2014-01-02", periods=252 * years)
    close = pd.Series(100 * np.exp(np.cumsum(rng.normal(0.0003, 0.012, len(sessions)))), index=sessions)
    open_ = close.shift(1).fillna(close.iloc[0]) * np.exp(rng.normal(0, 0.003, len(sessions)))
    bars = pd.DataFrame({"symbol": "SPY", "ts": sessions, "open": open_.to_numpy(), "high": np.maximum(open_, close),
                         "low": np.minimum(open_, close), "close": close.to_numpy(), "volume": 1e7, "amount": np.nan})
    windows = range(2, 2 + grid)
    signals = pd.DataFrame({w: close / close.rolling(w).mean() - 1 for w in windows})  # > 0: long, else flat
    fee = 0.001
    cfg = E.BacktestConfig(market="us", strategy="threshold", rules=MarketRules("plain", lot_size=0, sell_step=0),
                           cost_model=CostModel(commission_rate=fee), participation=0.0, cash=100_000.0)
    long = signals > 0
    entries, exits = long.shift(1, fill_value=False), ~long.shift(1, fill_value=True)
    price = pd.DataFrame({w: open_ for w in windows})
    closes = pd.DataFrame({w: close for w in windows})

    def vbt_run(cols):
        return vbt.Portfolio.from_signals(closes[cols], entries=entries[cols], exits=exits[cols], price=price[cols],
                                          fees=fee, init_cash=100_000.0, size=np.inf, freq="1D").value()

    def ours(cols):
        return E.run_signal_grid(signals[cols], bars, cfg)

    print(f"\n== 2. one symbol, {len(sessions):,} daily bars, MA(w) long/flat, fee {fee}, next-open fills")
    for label, cols in (("single signal", [20]), (f"{grid}-variant grid", list(windows))):
        vbt_run(cols), ours(cols)  # JIT warm-up for both
        t_vbt, v = timed(lambda cols=cols: vbt_run(cols), repeat=5)
        t_us, q = timed(lambda cols=cols: ours(cols), repeat=5)
        diff = float(np.nanmax(np.abs(q.to_numpy() / v.to_numpy() - 1)))
        n_bars = len(sessions) * len(cols)
        print(f"{label:>18}: ours {t_us * 1e3:8.2f} ms | vectorbt from_signals {t_vbt * 1e3:8.2f} ms | "
              f"ratio vectorbt/ours {t_vbt / t_us:5.2f}x | ours {n_bars / t_us:,.0f} bars/s "
              f"({n_bars / t_us / BACKTRADER_BARS_PER_S:,.0f}x backtrader) | max rel diff {diff:.1e}")


def minute_market(n_symbols: int = 300, days: int = 242, seed: int = 0):
    """(bars, scores) of 1-minute cn bars, labelled by bar start (09:30..11:29, 13:00..14:59)."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2023-01-03", periods=days).as_unit("ns")
    minutes = np.r_[np.arange(0, 120), np.arange(210, 330)] * 60 * 10**9 + (9 * 60 + 30) * 60 * 10**9
    ts = (dates.asi8[:, None] + minutes[None, :]).ravel()
    n_t = len(ts)
    symbols = [f"60{i:04d}.SH" for i in range(n_symbols)]
    close = np.empty(n_t * n_symbols)
    for j in range(n_symbols):
        close[j * n_t:(j + 1) * n_t] = np.round(10 * np.exp(np.cumsum(rng.normal(0, 0.0008, n_t))), 2)
    open_ = np.round(close * (1 + rng.normal(0, 0.0003, len(close))), 2)
    bars = pd.DataFrame({"symbol": pd.Categorical.from_codes(np.repeat(np.arange(n_symbols), n_t), symbols),
                         "ts": np.tile(ts, n_symbols).view("datetime64[ns]"), "open": open_,
                         "high": np.maximum(open_, close), "low": np.minimum(open_, close), "close": close,
                         "volume": np.round(rng.lognormal(10, 0.5, len(close)) / 100) * 100, "amount": np.nan})
    half_hour = (np.tile(ts, n_symbols) // (60 * 10**9)) % 30 == 0
    scores = bars.loc[half_hour, ["symbol", "ts"]].assign(score=rng.normal(size=int(half_hour.sum())))
    return bars, scores


def bench_intraday(n_symbols: int, days: int) -> None:
    import tracemalloc

    from quantlm.backtest import engine as E

    bars, scores = minute_market(n_symbols, days)
    cfg = E.BacktestConfig(topk=50, n_drop=5)
    print(f"\n== 3. intraday: {n_symbols} symbols x {days} days of 1-minute bars = {len(bars):,} bars, "
          f"{len(scores):,} scores (every 30 min), TopkDropout(50, 5), all cn rules")
    E.run_backtest(scores.iloc[:1000], bars.iloc[:10_000], cfg)  # JIT warm-up
    rows = []
    for label, cells in (("chunked (default)", E.MAX_CHUNK_CELLS), ("one dense chunk (baseline)", 10**12)):
        t, res = timed(lambda cells=cells: E.run_backtest(scores, bars, cfg, max_chunk_cells=cells), repeat=2)
        tracemalloc.start()
        E.run_backtest(scores, bars, cfg, max_chunk_cells=cells)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rows.append((label, t, peak, res))
        print(f"{label:>28}: {t:6.2f} s warm ({len(bars) / t:,.0f} bars/s) | peak allocated by the backtest "
              f"{peak / 2**30:5.2f} GiB | {len(res.trades):,} orders")
    (_, t0, m0, r0), (_, t1, m1, r1) = rows
    same = np.allclose(r0.equity.to_numpy(), r1.equity.to_numpy(), rtol=1e-12)
    print(f"ratios chunked / dense: time {t0 / t1:.2f}x, memory {m0 / m1:.2f}x; equity identical: {same}; "
          f"input bars frame {bars.memory_usage(deep=True).sum() / 2**30:.2f} GiB (not counted above)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--symbols", type=int, default=300)
    p.add_argument("--years", type=int, default=10)
    p.add_argument("--grid", type=int, default=100)
    p.add_argument("--intraday-days", type=int, default=242)
    p.add_argument("--only", choices=("topk", "signals", "intraday"), default=None)
    args = p.parse_args()
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, pandas {pd.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    if args.only in (None, "topk"):
        bench_topk(args.symbols, args.years)
    if args.only in (None, "signals"):
        bench_signals(args.grid, args.years)
    if args.only in (None, "intraday"):
        bench_intraday(args.symbols, args.intraday_days)


if __name__ == "__main__":
    main()
