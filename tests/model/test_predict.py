"""Forecaster: shapes, quantile order, KV cache == recompute, streaming context limit, CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from tests.conftest import make_bars  # noqa: E402

SYMS = [f"S{i}" for i in range(4)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained tiny model folder (MarketGPT + tokenizer/) with a fitted tokenizer."""
    from quantlm.model.build import model_for_tokenizer
    from quantlm.tokenize import KlineTokenizer

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("fc") / "model"
    bars = make_bars(symbols=SYMS, periods=120, seed=2)
    tok = KlineTokenizer(n_coarse=64, n_fine=64).fit(bars, end=bars["ts"].iloc[80])
    m = model_for_tokenizer("mini", tok, seed=0, n_layer=2, hidden=32, n_head=2, ffn=64, max_bars=24)
    m.save(d)
    tok.save(d / "tokenizer")
    return d


@pytest.fixture(scope="module")
def fc(model_dir):
    from quantlm.predict import Forecaster

    return Forecaster(model_dir, device="cpu")


def test_forecast_shapes_quantiles_scores(fc):
    bars = make_bars(symbols=SYMS, periods=120, seed=2)
    bars = bars[~((bars["symbol"] == "S1") & (bars.index % 120 < 100))]  # S1: short history
    f = fc.forecast(bars, horizon=3, n_samples=8, seed=0)
    assert f.symbols == SYMS and f.samples.shape == (4, 8, 3)
    assert np.isfinite(f.samples).all()
    q = f.quantiles
    assert q.shape == (4, 7, 3) and (np.diff(q, axis=1) >= 0).all()
    assert f.mean.shape == (4, 3)
    frame = f.to_frame()
    assert len(frame) == 12 and {"symbol", "ts", "horizon", "mean", "q0.05", "q0.95"} <= set(frame.columns)
    sc = f.scores()
    assert list(sc.columns) == ["symbol", "ts", "score"] and len(sc) == 4
    assert (sc["ts"] == bars["ts"].max()).all()
    # Reproducible with a seed; different with another.
    g = fc.forecast(bars, horizon=3, n_samples=8, seed=0)
    assert np.array_equal(f.samples, g.samples)
    assert not np.array_equal(f.samples, fc.forecast(bars, horizon=3, n_samples=8, seed=1).samples)
    with pytest.raises(ValueError, match="horizon"):
        fc.forecast(bars, horizon=24)
    assert not fc.model.training


def test_cache_and_no_cache_sample_the_same_paths(fc):
    bars = make_bars(symbols=SYMS, periods=60, seed=3)
    a = fc.forecast(bars, horizon=3, n_samples=4, seed=5, use_cache=True)
    b = fc.forecast(bars, horizon=3, n_samples=4, seed=5, use_cache=False)
    np.testing.assert_allclose(a.samples, b.samples)


def test_future_timestamps():
    from quantlm.predict import future_timestamps

    d = future_timestamps(pd.bdate_range("2024-01-01", periods=5), 3)  # last = Fri 2024-01-05
    assert list(d) == list(pd.to_datetime(["2024-01-08", "2024-01-09", "2024-01-10"]))
    intraday = pd.DatetimeIndex(["2024-01-04 09:30", "2024-01-04 10:30", "2024-01-05 09:30", "2024-01-05 10:30"])
    assert list(future_timestamps(intraday, 3)) == list(pd.to_datetime(
        ["2024-01-08 09:30", "2024-01-08 10:30", "2024-01-09 09:30"]))


def _fresh_probs(sf, ids, cals):
    """Next coarse-token probabilities recomputed from scratch: [BOS, bars] for each row."""
    from quantlm.model.layout import bar_sequence

    out = []
    for a, c in zip(ids, cals, strict=True):
        t, cc = bar_sequence(a, c, sf.tok.bos_id)
        logits = sf.model(torch.as_tensor(t)[None], torch.as_tensor(cc)[None]).logits[0, -1]
        lo = sf.tok.coarse_offset
        out.append(torch.softmax(logits[lo:lo + sf.tok.n_coarse], -1).detach().numpy())
    return np.stack(out)


def test_streaming_matches_fresh_computation_through_context_limit(fc):
    from quantlm.predict import StreamingForecaster

    tk = fc.tok
    rng = np.random.default_rng(0)
    sf = StreamingForecaster(fc, reencode_bars=10)  # max_bars 24

    def rand_bars(n):
        return np.stack([rng.integers(tk.coarse_offset, tk.coarse_offset + tk.n_coarse, n),
                         rng.integers(tk.fine_offset, tk.fine_offset + tk.n_fine, n)], 1)

    hist = [rand_bars(n) for n in (20, 7, 15)]
    cals = [np.stack([np.arange(len(h)) % 5, np.zeros(len(h), int)], 1) for h in hist]
    nb = sf.start_ids(["a", "b", "c"], hist, cals)
    np.testing.assert_allclose(nb.coarse_probs, _fresh_probs(sf, hist, cals), atol=1e-5)
    kept = [h.copy() for h in hist]
    kept_cal = [c.copy() for c in cals]
    for step in range(8):
        new = rand_bars(3)
        cal = np.stack([np.full(3, step % 5), np.zeros(3, int)], 1)
        before = sf.n_reencodes
        nb = sf.append_ids(new, cal)
        kept = [np.concatenate([a, new[k:k + 1]]) for k, a in enumerate(kept)]
        kept_cal = [np.concatenate([c, cal[k:k + 1]]) for k, c in enumerate(kept_cal)]
        if sf.n_reencodes > before:  # 1 + 2 * 25 tokens would pass 1 + 2 * 24: keep the last W = 10 bars
            assert step == 4
            kept, kept_cal = [a[-10:] for a in kept], [c[-10:] for c in kept_cal]
        assert [len(a) for a in sf.ids] == [len(a) for a in kept]
        np.testing.assert_allclose(nb.coarse_probs, _fresh_probs(sf, kept, kept_cal), atol=1e-5)
    assert sf.n_reencodes == 1
    assert sf.cur <= sf.max_tokens and int(sf.cache.get_seq_length()) == sf.cur
    assert np.isfinite(nb.expected_z).all()


def test_streaming_from_bars(fc):
    from quantlm.predict import StreamingForecaster

    bars = make_bars(symbols=SYMS, periods=40, seed=4)
    sf = StreamingForecaster(fc)
    hist, last = bars[bars["ts"] < bars["ts"].max()], bars[bars["ts"] == bars["ts"].max()]
    nb0 = sf.start(hist)
    assert nb0.coarse_probs.shape == (4, fc.tok.n_coarse)
    nb = sf.append(last)
    np.testing.assert_allclose(nb.coarse_probs.sum(1), 1.0, atol=1e-5)
    sc = nb.scores()
    assert (sc["ts"] == bars["ts"].max()).all() and np.isfinite(sc["score"]).all()
    with pytest.raises(ValueError, match="not after"):
        sf.append(last)
    with pytest.raises(ValueError, match="one bar per stream symbol"):
        sf.append(last.iloc[:2])


def test_cli_pretrain_and_forecast(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from quantlm.cli import app
    from quantlm.data.store import Store

    Store(tmp_path / "store").write_bars(make_bars(symbols=SYMS, periods=120, seed=5), market="cn", freq="1d")
    cfg = {"model": {"size": "mini", "n_layer": 2, "hidden": 32, "n_head": 2, "ffn": 64, "max_bars": 24},
           "tokenizer": {"n_coarse": 64, "n_fine": 64},
           "data": {"window_bars": 16, "valid_fraction": 0.3},
           "train": {"max_steps": 50, "batch_size": 4, "eval_every": 0, "eval_batches": 1, "log_every": 1,
                     "warmup_steps": 1, "checkpoint_every": 0}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    r = runner.invoke(app, ["pretrain", "--config", str(tmp_path / "c.yaml"), "--store", str(tmp_path / "store"),
                            "--out", str(tmp_path / "run"), "--max-steps", "3", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "valid loss" in r.output and (tmp_path / "run" / "model" / "config.json").exists()
    r = runner.invoke(app, ["forecast", "--model", str(tmp_path / "run" / "model"), "--store", str(tmp_path / "store"),
                            "--out", str(tmp_path / "fc"), "--horizon", "2", "--samples", "4", "--origins", "3"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "fc" / "forecast_metrics.json").read_text())
    assert res["n_origins"] == 3 and res["n_forecasts"] == 12 and not res["in_training_period"]
    for h in ("1", "2"):
        assert set(res["per_step"][h]) == {"model", "persistence", "hist_vol"}
        assert 0 <= res["cumulative"][h]["model"]["coverage_90"] <= 1
    # Forecast origins lie after the training period.
    assert min(pd.Timestamp(o) for o in res["origins"]) > pd.Timestamp(
        json.loads((tmp_path / "run" / "model" / "tokenizer" / "tokenizer.json").read_text())["fit_end"])
    # Bad config -> clear error, exit 2.
    (tmp_path / "bad.yaml").write_text("train: {max_stepz: 3}\n")
    r = runner.invoke(app, ["pretrain", "--config", str(tmp_path / "bad.yaml")])
    assert r.exit_code == 2 and "max_stepz" in r.output
