"""Distillation of a trader into a small student: loss, point-in-time training, causality, live path, latency."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from quantlm.finetune.distill import DistillConfig, distill_kl, distill_loss, train_distill  # noqa: E402
from quantlm.finetune.latency import IncrementalFeatures, LiveScorer, measure_latency  # noqa: E402
from quantlm.finetune.student import StudentMLP, num_params  # noqa: E402

TRAIN_END = "2020-09-30"
TINY = {"n_layer": 1, "hidden": 32, "n_head": 2, "ffn": 64, "max_bars": 32}


def _cfg(**kw) -> DistillConfig:
    base = {"window_bars": 12, "mlp": {"token_dim": 4, "bar_dim": 4, "hidden": 16, "layers": 1, "text_bars": 1},
            "warm": 8, "steps": 120, "batch_size": 8, "lr": 1e-2, "warmup_steps": 2, "valid_sessions": 40,
            "eval_every": 40, "latency_symbols": 24, "latency_updates": 4}
    return DistillConfig(**(base | kw))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Synthetic store (16 stocks, 2019-2020), a tiny pretrained-style trunk, an SFT teacher and a distilled student."""
    from quantlm.data.store import Store
    from quantlm.data.synth import SynthConfig, write_market
    from quantlm.finetune import SFTConfig, train_sft
    from quantlm.finetune.data import market_bars
    from quantlm.model.build import model_for_tokenizer
    from quantlm.tokenize import KlineTokenizer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("distill")
    store = Store(root / "store")
    write_market(store, SynthConfig(n_symbols=16, start="2019-01-02", end="2020-12-31", news=False))
    bars, _ = market_bars(store)
    tok = KlineTokenizer(n_coarse=64, n_fine=64).fit(bars, end="2020-03-31")
    model_for_tokenizer("mini", tok, seed=0, **TINY).save(root / "pre")
    tok.save(root / "pre" / "tokenizer")
    sft = train_sft(SFTConfig(steps=30, batch_size=8, window_bars=24, warm=8, text=False, valid_sessions=40,
                              eval_every=30, warmup_steps=2, lr=3e-3), store, root / "sft", root / "pre", TRAIN_END)
    run = train_distill(_cfg(), store, root / "distill", sft, TRAIN_END, seed=0)
    return {"root": root, "store": store, "bars": bars, "tok": tok, "teacher": sft / "model", "run": run}


# ---------------------------------------------------------------------- loss
def test_kl_zero_for_equal_logits_positive_otherwise_and_temperature_by_hand():
    t = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.1]])
    assert float(distill_kl(t.clone(), t, 2.0)) == 0.0
    s = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.1]])
    T = 2.0
    p = [math.exp(x / T) for x in (2.0, 0.0, -1.0)]
    p = [x / sum(p) for x in p]
    q = [math.exp(x / T) for x in (0.0, 1.0, 0.0)]
    q = [x / sum(q) for x in q]
    by_hand = T * T * sum(a * math.log(a / b) for a, b in zip(p, q, strict=True)) / 2  # row 2 has KL 0
    assert float(distill_kl(s, t, T)) == pytest.approx(by_hand, rel=1e-5)
    assert float(distill_kl(s, t, T)) > 0
    # a higher temperature softens both distributions: the unscaled KL shrinks
    assert float(distill_kl(s, t, 8.0)) / 64 < float(distill_kl(s, t, 1.0))


def test_loss_alpha_one_without_matching_is_the_kl():
    cfg = _cfg(alpha=1.0, loss={"match_direction": 0.0, "match_rank": 0.0, "match_quantile": 0.0})
    g = torch.Generator().manual_seed(0)
    n, nh, nq = 6, 3, 5
    s = {"direction": torch.randn(n, 3, generator=g), "quantiles": torch.randn(n, nh, nq, generator=g),
         "rank": torch.randn(n, nh, generator=g)}
    t = {k: torch.randn(v.shape, generator=g) for k, v in s.items()}
    tgt = {"direction": torch.tensor([0, 1, 2, -1, 0, 1]), "ret": torch.randn(n, nh, generator=g) * 0.01,
           "rank": torch.rand(n, nh, generator=g) * 2 - 1}
    feats = torch.zeros(n, 7)
    total, parts = distill_loss(s, t, tgt, feats, cfg, [1, 5, 10], torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9]))
    assert float(total) == pytest.approx(float(distill_kl(s["direction"], t["direction"], cfg.temperature)), rel=1e-6)
    assert {"kl", "direction", "quantile", "rank"} <= set(parts)
    total2, parts2 = distill_loss(s, t, tgt, feats, _cfg(alpha=0.5), [1, 5, 10], torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9]))
    hard = parts2["direction"] + parts2["quantile"] + parts2["rank"]
    want = 0.5 * parts2["kl"] + 0.5 * hard + parts2["match_direction"] + parts2["match_rank"] + parts2["match_quantiles"]
    assert float(total2) == pytest.approx(want, rel=1e-5)


def test_config_is_strict():
    with pytest.raises(ValueError):
        DistillConfig(studnet="mlp")
    with pytest.raises(ValueError):
        DistillConfig(student="gpt", window_bars=16, warm=16)


# ---------------------------------------------------------------------- incremental features
def test_incremental_features_equal_batch_tokenizer(env):
    tok, bars = env["tok"], env["bars"]
    syms = sorted(bars["symbol"].unique())[:4]
    b = bars[bars["symbol"].isin(syms)].copy()
    sessions = np.sort(b["ts"].unique())
    split = b["ts"] >= sessions[-10]  # a 2-for-1 split inside the streamed bars
    b["adj_factor"] = np.where(split, 2.0, 1.0)
    for c in ("open", "high", "low", "close"):
        b.loc[split, c] = b.loc[split, c] / 2
    b.loc[b["symbol"] == syms[1], "adj_factor"] = np.nan  # unknown factors
    cut = sessions[-20]
    # syms[3] has no history: it lists in the streamed part
    hist = b[(b["ts"] < cut) & (b["symbol"] != syms[3])]
    stream = b[(b["ts"] >= cut) | ((b["symbol"] == syms[3]) & (b["ts"] >= sessions[-30]))]
    full = pd.concat([hist, stream]).sort_values(["symbol", "ts"])
    want_f, want_i = tok.features(full), tok.encode(full)
    inc = IncrementalFeatures.from_history(tok, hist, syms)
    got_f = {s: [] for s in syms}
    got_i = {s: [] for s in syms}
    for ts in np.sort(stream["ts"].unique()):
        g = stream[stream["ts"] == ts].set_index("symbol").reindex(syms)
        have = g["open"].notna().to_numpy()
        sub = IncrementalFeatures(tok, inc.state[have])
        f, i = sub.update(*(g[c].to_numpy()[have] for c in ("open", "high", "low", "close", "volume", "amount",
                                                              "adj_factor")))
        inc.state[have] = sub.state
        for j, s in enumerate(np.asarray(syms)[have]):
            got_f[s].append(f[j])
            got_i[s].append(i[j])
    for s in syms:
        n = len(got_f[s])
        np.testing.assert_array_equal(np.stack(got_f[s]), want_f[s][-n:])
        np.testing.assert_array_equal(np.stack(got_i[s]), want_i[s][-n:])


# ---------------------------------------------------------------------- training run
def test_distill_run_metrics_agreement_and_size(env):
    m = json.loads((env["run"] / "metrics.json").read_text())
    assert m["params"]["student"] < m["params"]["teacher"]
    assert m["valid_bars"] > 0 and m["best_step"] > 0
    v, v0 = m["valid"], m["initial"]
    assert v["kl"] < v0["kl"]  # closer to the teacher's direction distribution than the untrained student
    assert v["score_corr"] > v0["score_corr"] and v["score_corr"] > 0.3
    assert v["direction_corr"] > v0["direction_corr"]
    assert 0.0 <= v["direction_agreement"] <= 1.0 and np.isfinite(v["rank_ic"]) and np.isfinite(m["teacher_rank_ic"])
    lat = m["latency_ms"]
    for k in ("teacher", "student"):
        assert 0 < lat[k]["p50"] <= lat[k]["p99"] and lat[k]["n_symbols"] == 24 and lat[k]["threads"] == 1
    rows = [json.loads(x) for x in (env["run"] / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 120 and all(np.isfinite(r["loss"]) for r in rows)


def test_student_folder_loads_and_scores(env):
    from quantlm.finetune.score import load_for_scoring, score_model

    model, data = load_for_scoring(env["run"] / "model", env["store"], end="2020-12-31")
    assert isinstance(model, StudentMLP) and num_params(model) < 10_000
    sc = score_model(env["run"] / "model", env["store"], "2020-10-01", "2020-12-31")
    assert len(sc) > 0 and np.isfinite(sc["score"]).all() and sc["score"].std() > 0
    assert list(sc.columns) == ["ts", "symbol", "score"]


def test_student_scores_are_causal(env):
    from quantlm.finetune.score import load_for_scoring, predict_rows

    t = pd.Timestamp("2020-11-02")
    bars = env["bars"]
    rng = np.random.default_rng(1)
    pert = bars.copy()
    late = pert["ts"] > t
    f = np.exp(rng.normal(0, 0.05, late.sum()))
    for c in ("open", "high", "low", "close"):
        pert.loc[late, c] = pert.loc[late, c] * f
    pert.loc[late, "volume"] = pert.loc[late, "volume"] * rng.uniform(0.5, 2, late.sum())
    out = []
    for b in (bars, pert):
        model, data = load_for_scoring(env["run"] / "model", env["store"], bars=b)
        ts = data.ts()
        out.append((predict_rows(model, data, np.flatnonzero(ts <= t.value))["score"],
                    predict_rows(model, data, np.flatnonzero(ts > t.value))["score"]))
    np.testing.assert_array_equal(out[0][0], out[1][0])  # bit-identical up to t
    assert not np.array_equal(out[0][1], out[1][1])  # and the perturbation does reach later scores


def test_live_scorer_equals_batch_scores(env):
    from quantlm.finetune.data import market_bars
    from quantlm.finetune.score import load_for_scoring, predict_rows

    model, data = load_for_scoring(env["run"] / "model", env["store"], end="2020-12-31")
    bars, _ = market_bars(env["store"])
    sessions = np.sort(bars["ts"].unique())
    syms = sorted(bars["symbol"].unique())[:5]
    live = LiveScorer(model, env["tok"])
    live.start(bars[bars["ts"] < sessions[-3]], syms)
    for ts in sessions[-3:]:
        g = bars[bars["ts"] == ts].set_index("symbol").loc[syms]
        got = live.update({c: g[c].to_numpy() for c in ("open", "high", "low", "close", "volume", "amount")}, ts)
        sym_of = np.asarray(data.symbols)[data.symbol_of()]
        rows = np.array([np.flatnonzero((data.ts() == pd.Timestamp(ts).value) & (sym_of == s))[0] for s in syms])
        np.testing.assert_allclose(got, predict_rows(model, data, rows)["score"], rtol=1e-5, atol=1e-6)


def test_live_scorer_with_text_equals_batch_once_its_texts_are_streamed(env):
    import dataclasses

    from quantlm.finetune.data import market_bars
    from quantlm.finetune.score import load_for_scoring, predict_rows
    from quantlm.finetune.student import StudentSpec

    student, data = load_for_scoring(env["run"] / "model", env["store"], end="2020-12-31")
    spec = StudentSpec(**(student.spec.to_dict() | {"d_text": 6, "text_bars": 2, "text_dim": 3}))
    torch.manual_seed(0)
    model = StudentMLP(spec).eval()
    rng = np.random.default_rng(0)
    data = dataclasses.replace(data, text=rng.normal(0, 0.3, (data.n, 6)).astype(np.float16),
                               text_weight=rng.uniform(0, 3, data.n).astype(np.float32))
    bars, _ = market_bars(env["store"])
    sessions = np.sort(bars["ts"].unique())
    syms = sorted(bars["symbol"].unique())[:4]
    live = LiveScorer(model, env["tok"])
    live.start(bars[bars["ts"] < sessions[-3]], syms)
    sym_of = np.asarray(data.symbols)[data.symbol_of()]
    for u, ts in enumerate(sessions[-3:]):
        g = bars[bars["ts"] == ts].set_index("symbol").loc[syms]
        rows = np.array([np.flatnonzero((data.ts() == pd.Timestamp(ts).value) & (sym_of == s))[0] for s in syms])
        got = live.update({c: g[c].to_numpy() for c in ("open", "high", "low", "close", "volume", "amount")}, ts,
                          text=data.text[rows].astype(np.float32), text_weight=data.text_weight[rows])
        want = predict_rows(model, data, rows)["score"]
        if u >= 1:  # both text slots now hold streamed texts
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_measure_latency_sane(env):
    r = measure_latency(env["teacher"], env["store"], n_symbols=40, n_updates=3, warmup=1)
    assert r["kind"] == "trader" and r["n_symbols"] == 40 and r["threads"] == 1
    assert 0 < r["p50"] <= r["p99"] <= r["max"] and r["features_p50"] > 0 and r["params"] > 0


def test_gpt_student_distils_and_scores(env):
    from quantlm.finetune.model import TraderModel
    from quantlm.finetune.score import score_model

    cfg = _cfg(student="gpt", window_bars=12, warm=4, steps=3, eval_every=3, latency_symbols=0,
               gpt={"n_layer": 1, "hidden": 16, "n_head": 2, "ffn": 32})
    run = train_distill(cfg, env["store"], env["root"] / "gpt", env["teacher"], TRAIN_END)
    m = json.loads((run / "metrics.json").read_text())
    assert m["params"]["student"] < m["params"]["teacher"] and "latency_ms" not in m
    student = TraderModel.load(run / "model")
    assert student.trunk.max_bars == 12
    sc = score_model(run / "model", env["store"], "2020-10-01", "2020-10-30")
    assert len(sc) > 0 and np.isfinite(sc["score"]).all()


def test_teacher_trained_after_train_end_is_refused(env):
    from quantlm.finetune.data import FinetuneDataError

    with pytest.raises(FinetuneDataError, match="after train_end"):
        train_distill(_cfg(steps=1), env["store"], env["root"] / "bad", env["teacher"], "2020-06-30")


def test_sizes_table_and_the_deployed_student(env, tmp_path):
    """distill.sizes: one student per shape, each timed; the deployed one is the most accurate within the budget."""
    from quantlm.finetune.distill_run import _deploy_pick
    from quantlm.finetune.student import StudentMLP

    sizes = [{"token_dim": 4, "bar_dim": 4, "hidden": 8, "layers": 1, "text_bars": 1},
             {"token_dim": 4, "bar_dim": 4, "hidden": 16, "layers": 2, "text_bars": 1, "window_bars": 16}]
    run = train_distill(_cfg(steps=10, eval_every=5, sizes=sizes, latency_budget_ms=1e6), env["store"],
                        tmp_path / "sizes", env["teacher"], TRAIN_END, seed=0)
    m = json.loads((run / "metrics.json").read_text())
    table = m["sizes"]
    assert [r["size"] for r in table] == [0, 1] and table[1]["window_bars"] == 16
    assert all(r["within_budget"] and 0 < r["p50_ms"] <= r["p99_ms"] and r["n_symbols"] == 24 for r in table)
    assert table[0]["params"] < table[1]["params"]
    best = max(table, key=lambda r: r["rank_ic"])
    assert [r["deployed"] for r in table] == [r is best for r in table] and m["deployed_size"] == best["size"]
    assert StudentMLP.load(run / "model").spec.window_bars == (16 if best["size"] == 1 else 12)
    assert m["shape"]["hidden"] == sizes[best["size"]]["hidden"] and "latency_ms" in m
    # the choice rule: best RankIC inside the budget; none inside -> the fastest
    rows = [{"size": 0, "rank_ic": 0.02, "p99_ms": 1.0, "within_budget": True},
            {"size": 1, "rank_ic": 0.05, "p99_ms": 9.0, "within_budget": False},
            {"size": 2, "rank_ic": 0.03, "p99_ms": 3.0, "within_budget": True}]
    assert _deploy_pick(rows) == 2
    assert _deploy_pick([dict(r, within_budget=False) for r in rows]) == 0
