"""Data layer throughput: CSV import and Parquet reads, quantlm Store vs plain pandas + Parquet.

Datasets (generated, one CSV per symbol in a temporary folder):
  daily   300 symbols x 10 years of XSHG sessions (about 730k rows)
  minute  50 symbols x 1 year of 1-minute A-share bars, 240 a day (09:30-11:29, 13:00-14:59; about 2.9M rows)

Measured on each, in the same run:
  import  quantlm.data.importers.import_paths (validation, unit handling, atomic store write)
          [fallback figure, labelled: pd.read_csv + Store.write_bars]
          baseline: pd.read_csv + DataFrame.to_parquet, one file per symbol
  read    Store.bars (all symbols; a 20-symbol, 1-year slice), best of 3
          baseline: pd.read_parquet on the baseline files (a folder; a list of 20 files + ts filter)
  check   quantlm.data.health.check_store (daily only), against the Store.bars read of the same data

  text    (with --text N) embed_texts on N synthetic texts vs the bare SentenceTransformer.encode

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py [--quick] [--text N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.data.calendars import sessions
from quantlm.data.store import Store


def timed(fn: Callable[[], object], repeat: int = 1) -> tuple[float, object]:
    """Best wall time in seconds over `repeat` runs, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def random_bars(symbol: str, ts: pd.DatetimeIndex, rng: np.random.Generator, step_sd: float) -> pd.DataFrame:
    """Random-walk OHLCV in the canonical schema (volume in shares, amount in currency)."""
    n = len(ts)
    close = 10 * np.exp(np.cumsum(rng.normal(0, step_sd, n)))
    open_ = close * np.exp(rng.normal(0, step_sd / 4, n))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, step_sd / 2, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, step_sd / 2, n))
    volume = np.round(rng.uniform(1e3, 1e5) * np.exp(rng.normal(0, 0.3, n))) * 100  # shares, in round lots
    return pd.DataFrame({"symbol": symbol, "ts": ts, "open": open_.round(3), "high": high.round(3),
                         "low": low.round(3), "close": close.round(3), "volume": volume,
                         "amount": (volume * close).round(2)})


def minute_stamps(days: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """240 one-minute bar stamps per A-share session (bar start times)."""
    offsets = np.r_[np.arange(9 * 60 + 30, 11 * 60 + 30), np.arange(13 * 60, 15 * 60)]
    stamps = days.as_unit("ns").asi8[:, None] + offsets[None, :] * 60 * 10**9
    return pd.DatetimeIndex(stamps.reshape(-1).astype("datetime64[ns]"))


def write_csvs(folder: Path, n_symbols: int, ts: pd.DatetimeIndex, step_sd: float, seed: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n_symbols):
        symbol = f"{600000 + i:06d}.SH"
        path = folder / f"{symbol}.csv"
        random_bars(symbol, ts, rng, step_sd).to_csv(path, index=False, date_format="%Y-%m-%d %H:%M:%S")
        paths.append(path)
    return paths


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def bench_dataset(name: str, paths: list[Path], freq: str, slice_range: tuple[str, str], work: Path,
                  rows: int, check: bool) -> list[dict]:
    out: list[dict] = []

    def add(op: str, what: str, seconds: float, n: int, baseline: float | None) -> None:
        out.append({"dataset": name, "op": op, "what": what, "seconds": seconds, "rows": n,
                    "rows/s": n / seconds if seconds > 0 else float("nan"),
                    "x baseline time": seconds / baseline if baseline else float("nan")})

    # --- baseline: pandas CSV -> one Parquet per symbol
    base_dir = work / f"{name}_parquet"
    base_dir.mkdir()

    def baseline_import() -> None:
        for p in paths:
            pd.read_csv(p, parse_dates=["ts"]).to_parquet(base_dir / f"{p.stem}.parquet", index=False)

    t_base, _ = timed(baseline_import)
    add("import", "baseline: pd.read_csv + to_parquet", t_base, rows, None)

    # --- quantlm importer
    store = Store(work / f"{name}_store")
    try:
        from quantlm.data.importers import import_paths
    except ImportError:
        import_paths = None
    if import_paths is None:
        print(f"[{name}] quantlm.data.importers.import_paths not available: import figure skipped")
    else:
        try:
            t, _ = timed(lambda: import_paths(paths, store, "cn", freq=None, format="auto", replace=False))
            add("import", "quantlm import_paths", t, rows, t_base)
        except Exception as e:  # a work-in-progress importer must not hide the other figures
            print(f"[{name}] import_paths failed, figure skipped: {type(e).__name__}: {e}")

    # --- fallback: read_csv + Store.write_bars (separate store, separately labelled)
    fb_store = Store(work / f"{name}_store_fallback")

    def fallback_import() -> None:
        with fb_store.transaction() as tx:
            for p in paths:
                tx.put_bars(pd.read_csv(p, parse_dates=["ts"]), market="cn", freq=freq)

    t, _ = timed(fallback_import)
    add("import", "fallback: pd.read_csv + Store.write_bars", t, rows, t_base)
    read_store = store if store.exists() else fb_store
    print(f"[{name}] {len(paths)} CSV files {folder_mb(paths[0].parent):.0f} MiB; baseline Parquet "
          f"{folder_mb(base_dir):.0f} MiB; store {folder_mb(read_store.root):.0f} MiB")

    # --- reads: everything
    base_files = sorted(str(f) for f in base_dir.glob("*.parquet"))
    t_base, df = timed(lambda: pd.read_parquet(base_dir), repeat=3)
    add("read all", "baseline: pd.read_parquet(folder)", t_base, len(df), None)
    t_read, df = timed(lambda: read_store.bars(freq=freq), repeat=3)
    assert len(df) == rows, (len(df), rows)
    add("read all", "Store.bars()", t_read, len(df), t_base)

    # --- reads: 20 symbols x 1 year
    symbols = sorted(p.stem for p in paths)[:20]
    start, end = (pd.Timestamp(x) for x in slice_range)
    t_base, df = timed(lambda: pd.read_parquet(base_files[:20], filters=[("ts", ">=", start), ("ts", "<=", end)]),
                       repeat=3)
    add("read 20 sym x 1y", "baseline: pd.read_parquet(files, filters)", t_base, len(df), None)
    t, df = timed(lambda: read_store.bars(symbols, start=start, end=end, freq=freq), repeat=3)
    add("read 20 sym x 1y", "Store.bars(symbols, start, end)", t, len(df), t_base)

    if check:
        from quantlm.data.health import check_store

        t, report = timed(lambda: check_store(read_store, freq=freq))
        add("health check", "check_store (baseline: Store.bars() read)", t, rows, t_read)
        print(f"[{name}] check_store warnings: { {k: int(v) for k, v in report.summary.items() if v} }")
    return out


def bench_text(n_texts: int, work: Path) -> list[dict]:
    """embed_texts (store read, hashing, MiniLM, cache write) vs the bare SentenceTransformer.encode."""
    from quantlm.data.text import embed_texts, load_embedder

    rng = np.random.default_rng(2)
    words = np.array("shares profit revenue guidance margin outlook board dividend buyback loss order contract "
                     "quarter growth decline regulator approval supplier demand pricing".split())
    texts = pd.DataFrame({
        "text_id": [f"T{i:07d}" for i in range(n_texts)],
        "symbol": [f"{600000 + i % 300:06d}.SH" for i in range(n_texts)],
        "published_at": pd.Timestamp("2023-01-03 08:00") + pd.to_timedelta(rng.integers(0, 10**6, n_texts), unit="min"),
        "source": "bench",
        "title": [" ".join(rng.choice(words, 8)) for _ in range(n_texts)],
        "body": [" ".join(rng.choice(words, 40)) for _ in range(n_texts)],
    })
    store = Store(work / "text_store")
    store.write_table("texts", texts)
    t_load, embedder = timed(load_embedder)
    contents = (texts["title"] + "\n" + texts["body"]).tolist()
    t_base, _ = timed(lambda: embedder.encode(contents, batch_size=64))
    t, _ = timed(lambda: embed_texts(store, embedder=embedder, batch_size=64))
    t_again, out = timed(lambda: embed_texts(store, embedder=embedder))
    assert out.attrs["n_new"] == 0
    print(f"[text] MiniLM load {t_load:.1f}s (not in the figures below)")
    rows = [("embed", "baseline: SentenceTransformer.encode", t_base, None),
            ("embed", "embed_texts (cold cache)", t, t_base),
            ("embed", "embed_texts (warm cache, nothing new)", t_again, t_base)]
    return [{"dataset": f"text {n_texts}", "op": op, "what": what, "seconds": sec, "rows": n_texts,
             "rows/s": n_texts / sec, "x baseline time": sec / base if base else float("nan")}
            for op, what, sec, base in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run of a few seconds")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    parser.add_argument("--text", type=int, default=0, metavar="N",
                        help="also embed N synthetic texts with the offline MiniLM (needs the 'text' extra)")
    args = parser.parse_args()
    n_daily, years, n_minute, minute_days = (30, 2, 5, 20) if args.quick else (300, 10, 50, None)

    daily_days = sessions("cn", f"{2024 - years}-01-01", "2023-12-31")
    minute_days_idx = sessions("cn", "2023-01-01", "2023-12-31")
    if minute_days is not None:
        minute_days_idx = minute_days_idx[:minute_days]
    minute_ts = minute_stamps(minute_days_idx)

    work = args.keep or Path(tempfile.mkdtemp(prefix="quantlm_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        daily_paths = write_csvs(work / "daily_csv", n_daily, daily_days, 0.02, seed=0)
        minute_paths = write_csvs(work / "minute_csv", n_minute, minute_ts, 0.001, seed=1)
        print(f"generated CSVs in {time.perf_counter() - t0:.1f}s: daily {n_daily} x {len(daily_days)} sessions, "
              f"minute {n_minute} x {len(minute_ts)} bars (threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")
        results = bench_dataset("daily", daily_paths, "1d", ("2023-01-01", "2023-12-31"), work,
                                n_daily * len(daily_days), check=True)
        slice_end = minute_days_idx[-1] + pd.Timedelta(hours=23)
        results += bench_dataset("minute", minute_paths, "1min", (str(minute_days_idx[0]), str(slice_end)), work,
                                 n_minute * len(minute_ts), check=True)
        if args.text:
            results += bench_text(args.text, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    table = pd.DataFrame(results)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, formatters={
            "seconds": "{:.3f}".format, "rows": "{:,}".format, "rows/s": "{:,.0f}".format,
            "x baseline time": lambda x: "" if np.isnan(x) else f"{x:.2f}"}))
    print("x baseline time = seconds / seconds of the baseline row of the same op (> 1: slower than baseline)")


if __name__ == "__main__":
    main()
