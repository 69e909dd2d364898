"""Decision latency of a (fine-tuned) causal LM trader, measured the way it would trade live.

One decision update = for each of `n_symbols` symbols, the prompt built from its last bars up to the
new session and the texts visible then (`serialize.examples_from_frames`: bar encoding, chat template,
token counting and truncation), then one batched prefill with the KV cache and the log-probabilities
of the answers (`score.answer_logprobs`; the score needs buy and sell). The texts are aligned to their
visible sessions once before timing (a live feed keeps that index as news arrive). The last
warmup + n_updates sessions of the store are streamed one at a time; the symbols are those with a bar
in every streamed session and `window_bars` bars before, cycled to n_symbols (the same rule as
`quantlm.finetune.latency.measure_latency`, so the student and the trader are timed on the same
symbols). torch runs on `threads` CPU threads.

Returns milliseconds: p50 / p99 / mean / max per update, per_symbol_p50 (p50 / n_symbols),
prompt_p50 (prompt building alone), plus prompt_tokens_mean, n_symbols, n_updates, threads, kind,
params.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd


def measure_llm_latency(model_dir: str | Path, store, n_symbols: int = 20, n_updates: int = 10, warmup: int = 2,
                        threads: int = 1, end=None, base=None, device: str = "cpu") -> dict:
    """Latency (ms) of LLM decisions on the store's last sessions (<= end); see the module docstring."""
    import torch

    from quantlm.data.store import Store
    from quantlm.finetune.data import market_bars
    from quantlm.llm.score import answer_logprobs, load_model
    from quantlm.llm.serialize import _visible_texts, examples_from_frames

    store = store if isinstance(store, Store) else Store(store)
    tok, model, cfg = load_model(model_dir, base=base, device=device)
    bars, market = market_bars(store, end=end)
    sessions = np.unique(bars["ts"].to_numpy())
    n_total = warmup + n_updates
    if len(sessions) <= n_total:
        raise ValueError(f"store has {len(sessions)} sessions, fewer than warmup + n_updates + 1 = {n_total + 1}")
    stream_start = sessions[-n_total]
    in_stream = (bars["ts"] >= stream_start).groupby(bars["symbol"]).sum()
    before = (bars["ts"] < stream_start).groupby(bars["symbol"]).sum()
    ok = sorted(s for s in in_stream.index if in_stream[s] == n_total and before[s] >= cfg.window_bars)
    if not ok:
        raise ValueError(f"no symbol has a bar in each of the last {n_total} sessions and {cfg.window_bars} before")
    symbols = [str(ok[i % len(ok)]) for i in range(n_symbols)]
    keep = cfg.window_bars + cfg.volume_bars
    frames = {s: g.reset_index(drop=True) for s, g in bars[bars["symbol"].isin(set(symbols))].groupby("symbol")}
    texts = _visible_texts(store, sorted(set(symbols)), market)
    ids = [f"{s}#{i}" for i, s in enumerate(symbols)]  # a symbol cycled in twice is two decisions
    tx = {k: texts.get(s, texts.get("")) for k, s in zip(ids, symbols)}
    ts_of = {s: g["ts"].to_numpy() for s, g in frames.items()}

    def decide(t) -> tuple[float, float, list[str]]:
        t0 = time.perf_counter()
        parts = []
        for k, s in zip(ids, symbols):
            n = int(np.searchsorted(ts_of[s], t, side="right"))
            parts.append(frames[s].iloc[max(0, n - keep):n].assign(symbol=k))
        window = pd.concat(parts, ignore_index=True)
        ex = examples_from_frames(tok, window, tx, start=t, end=t, cfg=cfg)
        t1 = time.perf_counter()
        answer_logprobs(model, tok, ex.prompt, batch_size=max(1, len(ex.prompt)))
        return (time.perf_counter() - t0) * 1e3, (t1 - t0) * 1e3, ex.prompt

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    lat, build, n_tok = [], [], []
    try:
        for j, t in enumerate(sessions[-n_total:]):
            total, prompt_ms, prompts = decide(t)
            if j >= warmup:
                lat.append(total)
                build.append(prompt_ms)
                n_tok.extend(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    finally:
        torch.set_num_threads(old)
    x = np.asarray(lat)
    p50 = float(np.percentile(x, 50))
    return {"p50": p50, "p99": float(np.percentile(x, 99)), "mean": float(x.mean()), "max": float(x.max()),
            "per_symbol_p50": p50 / n_symbols, "prompt_p50": float(np.percentile(build, 50)),
            "prompt_tokens_mean": float(np.mean(n_tok)) if n_tok else 0.0, "n_symbols": n_symbols,
            "n_updates": n_updates, "threads": threads, "kind": f"llm:{model.config.model_type}",
            "params": int(sum(p.numel() for p in model.parameters())), "model": str(model_dir)}


__all__ = ["measure_llm_latency"]
