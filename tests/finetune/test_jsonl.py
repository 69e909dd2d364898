"""JSON Lines examples: validation errors, export causality, round trip through fine-tuning."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from quantlm.data.schema import DataValidationError
from quantlm.finetune.data import FinetuneDataError
from quantlm.finetune.jsonl import JsonlError, export_jsonl, read_jsonl, train_sft_jsonl
from tests.finetune.conftest import HashEmbedder

EXPORT = {"start": "2019-06-03", "end": "2020-12-31", "window_bars": 24, "every": 5}


def _example(symbol: str = "600000.SH", n: int = 3, **kw) -> dict:
    days = pd.bdate_range("2021-03-01", periods=n).strftime("%Y-%m-%d")
    bars = [{"ts": d, "open": 10.0 + i, "high": 10.5 + i, "low": 9.8 + i, "close": 10.2 + i, "volume": 1000.0,
             "amount": 10200.0} for i, d in enumerate(days)]
    return {"symbol": symbol, "ts": days[-1], "bars": bars, "text": "Orders up.", "signal": "buy",
            "returns": {"1": 0.01, "5": None}} | kw


def _bar(ex: dict, j: int, **kw) -> dict:
    ex = copy.deepcopy(ex)
    ex["bars"][j].update(kw)
    return ex


def _drop(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


GOOD = _example()
BAD = {  # name: (line text, field, words in the message)
    "json": ('{"symbol": "A", "ts": ', None, "not valid JSON"),
    "array": ("[1, 2]", None, "JSON object"),
    "missing signal": (_drop(GOOD, "signal"), "signal", "missing"),
    "null bars": (GOOD | {"bars": None}, "bars", "null"),
    "unknown field": (GOOD | {"retruns": {}}, "retruns", "unknown field"),
    "unknown signal": (GOOD | {"signal": "strong buy"}, "signal", "unknown signal 'strong buy'"),
    "list signal": (GOOD | {"signal": ["buy"]}, "signal", "unknown signal"),
    "empty symbol": (GOOD | {"symbol": " "}, "symbol", "non-empty"),
    "numeric ts": (GOOD | {"ts": 20210303}, "ts", "date string"),
    "bad ts": (GOOD | {"ts": "2021-13-45"}, "ts", "unparseable"),
    "empty bars": (GOOD | {"bars": []}, "bars", "non-empty list"),
    "bar not object": (GOOD | {"bars": [GOOD["bars"][0], 5, GOOD["bars"][2]]}, "bars[1]", "must be an object"),
    "bar missing close": (GOOD | {"bars": [GOOD["bars"][0], _drop(GOOD["bars"][1], "close"), GOOD["bars"][2]]},
                          "bars[1].close", "missing"),
    "bar unknown key": (_bar(GOOD, 1, vol=5), "bars[1].vol", "unknown field"),
    "string price": (_bar(GOOD, 1, open="11.0"), "bars[1].open", "must be a number"),
    "bool volume": (_bar(GOOD, 2, volume=True), "bars[2].volume", "must be a number"),
    "nan price": ('NaN-close', "bars[1].close", "price is nan"),
    "negative price": (_bar(GOOD, 1, open=-1.0, low=-2.0), "bars[1].open", "positive"),
    "high below low": (_bar(GOOD, 2, high=11.0, low=13.0), "bars[2].high", "below max(open, close)"),
    "low above body": (_bar(GOOD, 0, low=10.1), "bars[0].low", "above min(open, close)"),
    "negative volume": (_bar(GOOD, 1, volume=-5), "bars[1].volume", ">= 0"),
    "negative amount": (_bar(GOOD, 1, amount=-5), "bars[1].amount", ">= 0"),
    "repeated bar ts": (_bar(GOOD, 2, ts=GOOD["bars"][1]["ts"]), "bars[2].ts", "strictly increasing"),
    "last bar not ts": (GOOD | {"ts": "2021-03-04"}, "bars[2].ts", "must equal the example's ts"),
    "tz bar ts": (_bar(GOOD, 0, ts="2021-03-01T00:00:00+08:00"), "bars[0].ts", "time zone"),
    "duplicate": (GOOD | {"symbol": "FIRST", "signal": "sell"}, "ts", "line 1 has the same symbol and ts"),
    "bad horizon": (GOOD | {"returns": {"1d": 0.01}}, "returns.1d", "whole number"),
    "string return": (GOOD | {"returns": {"5": "x"}}, "returns.5", "finite number"),
    "return <= -1": (GOOD | {"returns": {"1": -1.5}}, "returns.1", "> -1"),
    "text not string": (GOOD | {"text": ["a"]}, "text", "string or null"),
}


def _write(path, *lines) -> None:
    out = []
    for x in lines:
        if x == "NaN-close":
            x = json.dumps(_bar(GOOD, 1, close=float("nan")))
        out.append(x if isinstance(x, str) else json.dumps(x))
    path.write_text("\n".join(out) + "\n")


@pytest.mark.parametrize("case", list(BAD))
def test_bad_line_names_file_line_field(tmp_path, case):
    line, field, words = BAD[case]
    path = tmp_path / "ex.jsonl"
    _write(path, GOOD | {"symbol": "FIRST"}, "", line)  # the bad example is on line 3 (blank lines count)
    with pytest.raises(JsonlError) as err:
        read_jsonl(path)
    msg = str(err.value)
    assert isinstance(err.value, DataValidationError)
    assert msg.startswith(f"{path}, line 3") and words in msg, msg
    assert (f"field '{field}'" in msg) if field else ("field" not in msg), msg


def test_first_problem_of_the_file_is_reported(tmp_path):
    path = tmp_path / "ex.jsonl"
    _write(path, _bar(_example("A"), 1, open=-1.0), _example("B"), "{broken")
    with pytest.raises(JsonlError, match=r"line 1, field 'bars\[1\].open'"):
        read_jsonl(path)
    path.write_text("\n\n")
    with pytest.raises(JsonlError, match="no examples"):
        read_jsonl(path)
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "missing.jsonl")


def test_read_good_file(tmp_path):
    path = tmp_path / "ex.jsonl"
    _write(path, GOOD, _example("B", n=4, signal="sell", text=None, returns=None) | {"meta": {"src": "x"}})
    ex = read_jsonl(path)
    assert len(ex) == 2 and list(ex.signal) == [2, 0] and ex.text == ["Orders up.", None]
    assert list(ex.offsets) == [0, 3, 7] and list(ex.returns) == [1]
    assert ex.returns[1][0] == 0.01 and np.isnan(ex.returns[1][1])
    assert ex.example_bars(1)["close"].iloc[-1] == 13.2 and ex.ts[1] == pd.Timestamp("2021-03-04")


@pytest.fixture(scope="module")
def exported(ft_env, tmp_path_factory):
    path = tmp_path_factory.mktemp("jsonl") / "ex.jsonl"
    n = export_jsonl(ft_env.store, path, ft_env.pretrained, **EXPORT)
    return path, n


def test_export_is_causal(exported, ft_env):
    """Every example's bars are the store's bars of its symbol ending at ts; its text was visible by ts."""
    from quantlm.data.calendars import visible_sessions
    from quantlm.data.text import text_content

    path, n = exported
    ex = read_jsonl(path)
    assert len(ex) == n > 100 and ex.ts.min() >= pd.Timestamp(EXPORT["start"])
    assert set(np.diff(ex.offsets)) <= set(range(24, 24 + 40 + 1)) and np.diff(ex.offsets).max() == 64
    bars = ft_env.store.bars()
    texts = ft_env.store.texts()
    texts = texts.assign(session=visible_sessions(texts["published_at"], "cn").to_numpy(), content=text_content(texts))
    n_text = 0
    for i in range(0, len(ex), 7):
        mine = bars[(bars["symbol"] == ex.symbol[i]) & (bars["ts"] <= ex.ts[i])].tail(ex.offsets[i + 1] - ex.offsets[i])
        got = ex.example_bars(i)
        assert (got["ts"].to_numpy() == mine["ts"].to_numpy()).all() and got["ts"].iloc[-1] == ex.ts[i]
        np.testing.assert_array_equal(got[["open", "high", "low", "close", "volume"]].to_numpy(),
                                      mine[["open", "high", "low", "close", "volume"]].to_numpy())
        if ex.text[i]:
            n_text += 1
            own = texts[texts["symbol"] == ex.symbol[i]]
            for para in ex.text[i].split("\n\n"):
                hit = own[own["content"] == para]
                assert len(hit) and (hit["session"] <= ex.ts[i]).any(), para
    assert n_text > 0


def test_export_inputs_ignore_the_future(exported, ft_env, tmp_path):
    """Rewriting bars and texts after `end` changes no example's inputs (only labels may look ahead)."""
    from tests.finetune.conftest import perturbed_copy

    end = "2020-06-30"
    st = perturbed_copy(ft_env.store, tmp_path / "store", end)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    kw = EXPORT | {"end": end}
    assert export_jsonl(ft_env.store, a, None, **kw) == export_jsonl(st, b, None, **kw)
    strip = lambda p: [{k: r.get(k) for k in ("symbol", "ts", "bars", "text")} for r in map(json.loads, p.open())]  # noqa: E731
    assert strip(a) == strip(b)
    assert any(json.loads(x).get("text") for x in a.open())


def test_export_options_and_atomic_write(ft_env, tmp_path):
    path = tmp_path / "ex.jsonl"
    path.write_text("old\n")
    with pytest.raises(FinetuneDataError, match="no labelled example"):
        export_jsonl(ft_env.store, path, None, "2030-01-01", "2030-12-31")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["ex.jsonl"]
    sym = ft_env.store.symbols()[3]
    n = export_jsonl(ft_env.store, path, None, "2020-01-02", "2020-03-31", window_bars=16, warmup_bars=0,
                     text=False, symbols=[sym])
    ex = read_jsonl(path)
    assert n == len(ex) > 20 and set(ex.symbol) == {sym} and all(t is None for t in ex.text)
    assert set(np.diff(ex.offsets)) == {16} and sorted(p.name for p in tmp_path.iterdir()) == ["ex.jsonl"]


def _sft(**kw):
    from quantlm.finetune import SFTConfig

    return SFTConfig(**({"steps": 4, "batch_size": 8, "window_bars": 24, "warm": 8, "eval_every": 2,
                         "warmup_steps": 1, "lr": 3e-3} | kw))


@pytest.fixture(scope="module")
def jsonl_run(exported, ft_env, tmp_path_factory):
    path, _ = exported
    return train_sft_jsonl(_sft(), path, tmp_path_factory.mktemp("jrun") / "run", ft_env.pretrained,
                           valid_fraction=0.15, seed=0, embedder=HashEmbedder())


def test_round_trip_export_read_train_score(exported, jsonl_run, ft_env):
    from quantlm.finetune import TraderModel, score_model

    _, n = exported
    m = json.loads((jsonl_run / "metrics.json").read_text())
    assert m["examples"] == n and m["train_examples"] + m["valid_examples"] + m["purged_examples"] == n
    assert m["select"] == "valid_rank_ic" and np.isfinite(m["valid_rank_ic"]) and m["best_step"] in (2, 4)
    assert m["text_examples"] > 0 and m["last_train_ts"] < m["valid_from"]
    model = TraderModel.load(jsonl_run / "model")
    assert model.spec.d_text == 384 and model.spec.window_bars == 24 and model.spec.score == "rank"
    scores = score_model(jsonl_run / "model", ft_env.store, "2020-11-02", "2020-11-30")
    assert len(scores) > 50 and scores["score"].notna().all()


def test_warm_start_from_a_text_trader_on_a_file_without_text(exported, jsonl_run, tmp_path):
    from quantlm.finetune import TraderModel

    path, _ = exported
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({k: v for k, v in json.loads(x).items() if k != "text"}) + "\n"
                             for x in path.open()))
    run = train_sft_jsonl(_sft(steps=2), plain, tmp_path / "run", jsonl_run / "model")
    m = json.loads((run / "metrics.json").read_text())
    assert m["text_examples"] == 0 and TraderModel.load(run / "model").spec.d_text == 384


def test_jsonl_training_is_deterministic_and_falls_back_to_direction(exported, ft_env, tmp_path):
    from quantlm.finetune import TraderModel

    path, _ = exported
    rows = [json.loads(x) for x in path.open()]
    small = tmp_path / "small.jsonl"
    rows = [{k: v for k, v in r.items() if k != "returns"} for r in rows[::2]]
    for r in [r for r in rows if r.get("text")][5:]:
        del r["text"]  # a few texts through the real offline MiniLM
    small.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = [train_sft_jsonl(_sft(), small, tmp_path / f"r{i}", ft_env.pretrained, seed=1, embedder=None)
            for i in range(2)]
    m = json.loads((runs[0] / "metrics.json").read_text())
    assert m["select"] == "valid_direction_accuracy" and m["score"] == "direction" and m["text_examples"] == 5
    a, b = (TraderModel.load(r / "model").state_dict() for r in runs)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_training_rejects_bad_files_before_writing(ft_env, tmp_path):
    path = tmp_path / "ex.jsonl"
    _write(path, GOOD, _bar(GOOD, 1, high=1.0) | {"symbol": "B"})
    with pytest.raises(JsonlError, match="line 2"):
        train_sft_jsonl(_sft(), path, tmp_path / "run", ft_env.pretrained)
    _write(path, GOOD)
    with pytest.raises(JsonlError, match=r"line 1, field 'bars': 3 bars; the model window needs 24"):
        train_sft_jsonl(_sft(), path, tmp_path / "run", ft_env.pretrained)
    with pytest.raises(FinetuneDataError, match="valid_fraction"):
        train_sft_jsonl(_sft(), path, tmp_path / "run", ft_env.pretrained, valid_fraction=1.0)
    assert not (tmp_path / "run").exists()
