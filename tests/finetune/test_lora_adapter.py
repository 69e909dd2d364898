"""SFT with `lora: {merge: false}`: the run's model folder keeps a peft adapter that loads to identical scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from quantlm.finetune import SFTConfig, TraderModel, score_model, train_sft  # noqa: E402
from quantlm.finetune.data import build_trader_data  # noqa: E402
from quantlm.finetune.score import predict_rows  # noqa: E402
from quantlm.model.build import MarketGPT  # noqa: E402
from quantlm.model.card import read_card_info  # noqa: E402
from quantlm.tokenize import KlineTokenizer  # noqa: E402

BASE = {"steps": 4, "batch_size": 8, "window_bars": 24, "warm": 8, "valid_sessions": 40, "eval_every": 2,
        "warmup_steps": 1, "lr": 3e-3, "text": False, "freeze_bottom": 1}


def test_unmerged_lora_sft_run(ft_env, tmp_path):
    from peft import PeftModel

    cfg = SFTConfig(**BASE, lora={"enabled": True, "rank": 4, "alpha": 8.0, "merge": False})
    run = train_sft(cfg, ft_env.store, tmp_path / "run", ft_env.pretrained, ft_env.train_end)
    d = run / "model"
    assert json.loads((d / "config.json").read_text())["adapter"] == "adapter"
    assert json.loads((d / "adapter" / "adapter_config.json").read_text())["r"] == 4
    model = TraderModel.load(d)
    assert model.peft_model is not None  # the adapter is applied, not merged
    # LoRA trains the adapters only: the saved trunk is the pretrained one, weight for weight
    base = TraderModel.from_pretrained(d, adapter=None)
    init = MarketGPT.load(ft_env.pretrained).state_dict()
    for k, v in base.trunk.state_dict().items():
        assert torch.equal(v, init[k]), k
    tok = KlineTokenizer.load(d / "tokenizer")
    data = build_trader_data(ft_env.store, tok, text=False, end=ft_env.train_end)
    rows = np.arange(200, 260)
    ref = predict_rows(model, data, rows, warm=8, keep=("rank",))
    plain = predict_rows(base, data, rows, warm=8, keep=("rank",))
    assert np.abs(plain["rank"] - ref["rank"]).max() > 0  # the adapter changes the scores
    PeftModel.from_pretrained(base.trunk.lm, str(d / "adapter"))
    again = predict_rows(base, data, rows, warm=8, keep=("rank",))
    np.testing.assert_array_equal(again["score"], ref["score"])
    # the whole scoring path reads the folder; the card records the stage and the adapter
    scores = score_model(d, ft_env.store, "2020-11-02", "2020-11-30")
    assert len(scores) and np.isfinite(scores["score"]).all()
    card = read_card_info(d)
    assert card["adapter"] == "adapter" and [s["name"] for s in card["stages"]][-1] == "sft"
    assert card["stages"][-1]["config"]["sft"]["lora"]["merge"] is False
