"""Live decision latency: the distilled student served by ONNX Runtime beside the torch reference.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_live.py [--symbols 300] [--updates 100] [--repeats 3]

Self-contained (a temp folder, well under a minute): a synthetic store (`quantlm.data.synth`,
`--symbols` stocks, 2023), a tokenizer fitted on it, and a StudentMLP of the `DistillConfig` default
shape (32 bars of context) trained for `--train-steps` Adam steps on the store's rank targets (speed does
not depend on training). Everything runs on ONE thread: torch.set_num_threads(1) and ONNX Runtime
intra_op_num_threads=1.

1. Score step (`LiveScorer.update` / `OnnxScorer.update`: incremental features of the new bar + the
   model): p50 / p99 ms per update for `--symbols` symbols and for 1 symbol, one new bar each,
   over `--repeats` passes of `--updates` consecutive sessions (each pass restarts from the history;
   start-up is not timed; the first `--warmup` updates of a pass are not counted).
2. End to end (score -> strategy -> risk -> orders, `LiveEngine.decide` as timed by the engine): a
   paper replay (`quantlm.live.replay.run_replay`) of the last `--e2e-sessions` sessions for each
   backend; skipped with a note when the live engine is not available.

Targets printed beside the figures: p99 <= 5 ms end to end for 300 symbols, p99 <= 1 ms for one symbol.
On a busy 2-core machine the p99 of 300 symbols is set by ~4 ms preemptions (p95 shows the bulk).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

TARGET_E2E_MS, TARGET_ONE_MS = 5.0, 1.0
COLS = ("open", "high", "low", "close", "volume", "amount", "adj_factor")


def build_student(root: Path, store, steps: int, seed: int = 0) -> Path:
    """A default-shaped StudentMLP (tokenizer fitted on the store), trained `steps` Adam steps on rank targets."""
    from quantlm.finetune.data import market_bars
    from quantlm.finetune.distill import DistillConfig
    from quantlm.finetune.model import numpy_batch
    from quantlm.finetune.score import load_for_scoring
    from quantlm.finetune.student import StudentMLP, StudentSpec, student_inputs
    from quantlm.tokenize import KlineTokenizer

    bars, _ = market_bars(store)
    tok = KlineTokenizer().fit(bars, end="2023-09-29")
    d = DistillConfig()
    m = d.mlp
    torch.manual_seed(seed)
    spec = StudentSpec(vocab_size=tok.vocab_size, pad_id=tok.special_tokens["pad"], window_bars=d.window_bars,
                       text_bars=m.text_bars, text_dim=m.text_dim, token_dim=m.token_dim, bar_dim=m.bar_dim,
                       hidden=m.hidden, layers=m.layers, train_end="2023-09-29")
    model = StudentMLP(spec)
    out = model.save(root / "student", tokenizer=tok)
    _, data = load_for_scoring(out, store, end="2023-09-29")
    rows = np.flatnonzero(np.isfinite(data.rank[:, 0]))
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        batch_rows = np.sort(rng.choice(rows, 512, replace=False))
        batch = numpy_batch(student_inputs(data, batch_rows, spec.window_bars, spec.pad_id, spec.text_bars))
        loss = torch.nn.functional.mse_loss(model(batch)["rank"][:, 0], torch.from_numpy(data.rank[batch_rows, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().save(out, tokenizer=tok)


def stream(store, n_updates: int):
    """(history before the last n_updates sessions, symbols with a bar in each of them, [(ts, bars frame)])."""
    from quantlm.finetune.data import market_bars

    bars, _ = market_bars(store)
    sessions = np.unique(bars["ts"].to_numpy())
    hist, live = bars[bars["ts"] < sessions[-n_updates]], bars[bars["ts"] >= sessions[-n_updates]]
    full = live.groupby("symbol").size()
    ok = sorted(str(s) for s in full.index[full == n_updates])
    return hist, ok, [(ts, g.set_index(g["symbol"].astype(str))) for ts, g in live.groupby("ts", sort=True)]


def score_latency(model_dir: Path, backend: str, hist, symbols: list[str], updates, warmup: int, repeats: int,
                  ) -> np.ndarray:
    """ms per update over `repeats` passes (warm-up updates of each pass dropped)."""
    from quantlm.live.serving import load_live_scorer

    scorer = load_live_scorer(model_dir, backend=backend, threads=1)
    arrays = [(ts, {c: g.loc[symbols, c].to_numpy(np.float64) for c in COLS if c in g.columns}) for ts, g in updates]
    lat = []
    for _ in range(repeats):
        scorer.start(hist, symbols)
        for k, (ts, a) in enumerate(arrays):
            t0 = time.perf_counter()
            scorer.update(a, ts)
            if k >= warmup:
                lat.append((time.perf_counter() - t0) * 1e3)
    return np.asarray(lat)


def end_to_end(model_dir: Path, store, backend: str, sessions: int, out: Path) -> dict:
    """A paper replay of the store's last `sessions` sessions with the student as the only model."""
    from quantlm.finetune.data import market_bars
    from quantlm.live.config import LiveConfig
    from quantlm.live.replay import run_replay

    bars, _ = market_bars(store)
    days = np.unique(bars["ts"].to_numpy())
    cfg = LiveConfig(primary={"path": str(model_dir), "backend": backend, "name": f"student-{backend}"},
                     history_days=60)
    res = run_replay(cfg, store, days[-sessions], days[-1], out)
    return res["metrics"] | {"n_orders": res["metrics"].get("n_orders")}


def _row(name: str, x: np.ndarray, target: float | None) -> str:
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    verdict = "" if target is None else f"{target:>8.1f}  {'met' if p99 <= target else 'NOT met'}"
    return f"{name:<34} {p50:>8.3f} {p95:>8.3f} {p99:>8.3f} {x.max():>8.3f} {len(x):>6}  {verdict}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=300)
    ap.add_argument("--updates", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=20)
    # a p99 needs 100+ decisions; with 60 the first decision (which builds the whole 50-name book) is the p99
    ap.add_argument("--e2e-sessions", type=int, default=180)
    ap.add_argument("--no-e2e", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import onnxruntime as ort

    from quantlm.data.store import Store
    from quantlm.data.synth import SynthConfig, write_market

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = Store(root / "store")
        write_market(store, SynthConfig(n_symbols=args.symbols, start="2023-01-02", end="2023-12-29", news=False))
        model_dir = build_student(root, store, args.train_steps)
        hist, ok, updates = stream(store, args.updates)
        print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, 1 thread; student window 32 bars; "
              f"{args.updates} updates x {args.repeats} passes (first {args.warmup} of each not counted); "
              f"{len(ok)} symbols with a bar in every streamed session (set up in {time.perf_counter() - t_start:.0f} s)")
        print(f"\n{'score step (features + model)':<34} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'n':>6}  "
              f"{'target':>8}")
        many = [ok[i % len(ok)] for i in range(args.symbols)]
        res = {}
        for n, syms in ((args.symbols, many), (1, ok[:1])):
            for backend in ("onnx", "torch"):
                x = res[(n, backend)] = score_latency(model_dir, backend, hist, syms, updates, args.warmup,
                                                      args.repeats)
                print(_row(f"{n} symbol{'s' if n > 1 else ''}, {backend}", x, TARGET_ONE_MS if n == 1 else None))
        print(f"(targets: p99 <= {TARGET_E2E_MS:g} ms end to end for 300 symbols; p99 <= {TARGET_ONE_MS:g} ms for one "
              f"symbol)")
        if args.no_e2e:
            return
        print(f"\n{'end to end (score->strategy->risk->orders)':<44} {'p50 ms':>8} {'p99 ms':>8}  {'target':>8}"
              "  (max: the first decision, which builds the book)")
        for backend in ("onnx", "torch"):
            try:
                m = end_to_end(model_dir, store, backend, args.e2e_sessions, root / f"replay-{backend}")
            except Exception as e:  # noqa: BLE001 - the engine is optional here: report and go on
                print(f"{args.symbols} symbols, {backend}: end-to-end figure not available "
                      f"({type(e).__name__}: {e})")
                traceback.print_exc(limit=3)
                continue
            p50, p99 = m.get("decision_ms_p50"), m.get("decision_ms_p99")
            ok99 = p99 is not None and p99 <= TARGET_E2E_MS
            print(f"{f'{args.symbols}-stock store, {backend}, {args.e2e_sessions} sessions':<44} {p50:>8.3f} {p99:>8.3f}  "
                  f"{TARGET_E2E_MS:>8.1f}  {'met' if ok99 else 'NOT met'}  ({m.get('n_orders', 0):.0f} orders, "
                  f"max {m.get('decision_ms_max') or float('nan'):.2f} ms)")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
