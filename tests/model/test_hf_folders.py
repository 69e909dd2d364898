"""Hugging Face-native model folders: whole-model AutoModel loading, refusal without trust_remote_code,
previous layouts, model cards, the tokenizer's save_pretrained and unmerged LoRA adapters."""

from __future__ import annotations

import json
import runpy
import sys

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from quantlm.finetune.model import TraderModel, TraderSpec, is_trader_folder  # noqa: E402
from quantlm.model import build_model  # noqa: E402
from quantlm.model.build import MarketGPT  # noqa: E402
from quantlm.model.card import read_card_info, refresh_model_card, refresh_run_card  # noqa: E402

V = 64
TINY = dict(n_layer=2, hidden=32, n_head=2, ffn=64, max_bars=12)
HEADS = ("direction", "quantiles", "rank")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def gpt(**kw) -> MarketGPT:
    return build_model("mini", V, n_slots=3, seed=0, **{**TINY, **kw}).eval()


def trader(d_text: int = 4) -> TraderModel:
    torch.manual_seed(1)
    spec = TraderSpec(d_text=d_text, feature_mean=list(np.linspace(-0.5, 0.5, 11)), feature_std=[1.5] * 11,
                      score="direction", train_end="2020-06-30")
    return TraderModel(gpt(), spec).eval()


def token_batch(b: int = 2, n: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(16, V, (b, 1 + 2 * n), generator=g)
    cal = torch.randint(-1, 5, (b, 1 + 2 * n, 2), generator=g)
    return ids, cal


def trader_batch(n: int = 5, d_text: int = 4) -> dict[str, torch.Tensor]:
    ids, cal = token_batch(n=n)
    g = torch.Generator().manual_seed(2)
    return {"input_ids": ids, "calendar_ids": cal, "features": torch.randn(2, n, 7, generator=g),
            "text": torch.randn(2, n, d_text, generator=g), "text_weight": torch.rand(2, n, generator=g)}


def assert_same_heads(a: dict, b: dict) -> None:
    for k in HEADS:
        assert (a[k] - b[k]).abs().max().item() == 0.0, k


def test_market_gpt_folder_is_push_to_hub_shaped_and_loads_whole(tmp_path):
    from transformers import AutoModel, AutoModelForCausalLM

    m = gpt(d_prefix=5, max_prefix=2)
    m.save(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "configuration_quantlm.py", "modeling_quantlm.py", "README.md"} <= files
    assert not files & {"quantlm.json", "quantlm.safetensors"}  # one weights file, nothing beside transformers
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_type"] == "quantlm_market_gpt" and cfg["architectures"] == ["MarketGPT"]
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_quantlm.MarketGPT"
    ids, cal = token_batch()
    pre = torch.randn(2, 2, 5)
    ref = m(ids, cal, pre).logits
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True)
    assert isinstance(hf, MarketGPT)
    assert (hf(ids, cal, pre).logits - ref).abs().max().item() == 0.0
    base = AutoModel.from_pretrained(tmp_path / "m", trust_remote_code=True)
    assert (base(ids, cal, pre).logits - ref).abs().max().item() == 0.0


def test_market_gpt_folder_refused_without_trust_remote_code(tmp_path):
    from transformers import AutoModelForCausalLM

    gpt().save(tmp_path / "m")
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=False)


def test_folder_code_names_the_missing_quantlm_package(tmp_path, monkeypatch):
    gpt().save(tmp_path / "m")
    for mod in ("quantlm.model.hf", "quantlm.finetune.model"):
        monkeypatch.setitem(sys.modules, mod, None)  # import fails as if quantlm were not installed
    for name in ("configuration_quantlm.py", "modeling_quantlm.py"):
        with pytest.raises(ImportError, match="quantlm.*not installed.*pip install quantlm"):
            runpy.run_path(str(tmp_path / "m" / name))


def test_previous_market_gpt_layout_still_loads(tmp_path):
    """A folder as MarketGPT.save wrote it before: Llama config.json + model.safetensors, quantlm.json + extras."""
    from safetensors.torch import save_file

    m = gpt(d_prefix=3, max_prefix=2)
    d = tmp_path / "old"
    d.mkdir()
    lm = m.lm.state_dict()
    save_file({k: v.contiguous() for k, v in lm.items() if "rotary" not in k}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    extras = {k: v.contiguous() for k, v in m.state_dict().items() if not k.startswith("lm.")}
    save_file(extras, str(d / "quantlm.safetensors"))
    (d / "quantlm.json").write_text(json.dumps(m.extra_config()))
    ids, cal = token_batch()
    pre = torch.randn(2, 1, 3)
    loaded = MarketGPT.load(d)
    assert (loaded(ids, cal, pre).logits - m(ids, cal, pre).logits).abs().max().item() == 0.0
    (d / "quantlm.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        MarketGPT.load(d)


def test_trader_folder_loads_whole_with_automodel(tmp_path):
    from transformers import AutoModel

    t = trader()
    batch = trader_batch()
    ref = t(batch)
    t.save(tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert cfg["model_type"] == "quantlm_trader" and cfg["trunk"]["model_type"] == "quantlm_market_gpt"
    assert cfg["auto_map"]["AutoModel"] == "modeling_quantlm.TraderModel" and cfg["adapter"] is None
    assert is_trader_folder(tmp_path / "t") and not is_trader_folder(tmp_path)
    hf = AutoModel.from_pretrained(tmp_path / "t", trust_remote_code=True)
    assert isinstance(hf, TraderModel) and hf.spec == t.spec
    assert_same_heads(hf(batch), ref)
    loaded = TraderModel.load(tmp_path / "t")
    assert_same_heads(loaded(batch), ref)
    np.testing.assert_array_equal(loaded.feature_mean.numpy(), np.float32(t.spec.feature_mean))
    # a model loaded through AutoModel saves the same folder (transformers does not copy quantlm's sources in)
    hf.save(tmp_path / "again")
    assert {p.name for p in (tmp_path / "again").iterdir()} == {p.name for p in (tmp_path / "t").iterdir()}
    assert json.loads((tmp_path / "again" / "config.json").read_text())["auto_map"] == cfg["auto_map"]
    gpt().save(tmp_path / "gpt")
    with pytest.raises(ValueError, match="is not a quantlm trader"):
        TraderModel.load(tmp_path / "gpt")


def test_previous_trader_layout_still_loads(tmp_path):
    """trader.json + trunk/ (previous MarketGPT layout) + heads.safetensors, built here as the old save did."""
    from safetensors.torch import save_file

    t = trader()
    d = tmp_path / "old"
    trunk = d / "trunk"
    trunk.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in t.trunk.lm.state_dict().items() if "rotary" not in k},
              str(trunk / "model.safetensors"))
    (trunk / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({k: v.contiguous() for k, v in t.trunk.state_dict().items() if not k.startswith("lm.")},
              str(trunk / "quantlm.safetensors"))
    (trunk / "quantlm.json").write_text(json.dumps(t.trunk.extra_config()))
    save_file({k: v.contiguous() for k, v in t.state_dict().items() if not k.startswith("trunk.")},
              str(d / "heads.safetensors"))
    (d / "trader.json").write_text(json.dumps({"format": "quantlm.Trader/1", **t.spec.to_dict()}))
    assert is_trader_folder(d)
    batch = trader_batch()
    assert_same_heads(TraderModel.load(d)(batch), t(batch))


def test_model_cards(tmp_path):
    t = trader()
    t.save(tmp_path / "t", card={"data": {"store": "synth", "freq": "1d"}})
    text = (tmp_path / "t" / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "transformers" and front["license"] == "other"
    assert "quantlm" in front["tags"] and "trader" in front["tags"]
    assert "license: other  # placeholder" in text
    for section in ("## Data and period", "## Evaluation", "## Intended use", "## Limits", "trust_remote_code=True"):
        assert section in text
    info = read_card_info(tmp_path / "t")
    assert info["kind"] == "trader" and info["train_end"] == "2020-06-30" and info["data"]["store"] == "synth"
    # a training stage adds its config and metrics; the evaluation refresh adds walk-forward metrics
    (tmp_path / "config.json").write_text(json.dumps({"sft": {"steps": 7}}))
    (tmp_path / "metrics.json").write_text(json.dumps({"valid_rank_ic": 0.0312, "steps": 7}))
    refresh_run_card(tmp_path, "sft", tmp_path / "t")
    refresh_model_card(tmp_path / "t", metrics={"walk_forward": {"rank_ic": 0.021, "sharpe": 1.25}})
    info = read_card_info(tmp_path / "t")
    assert info["stages"][-1] == {"name": "sft", "config": {"sft": {"steps": 7}},
                                  "metrics": {"valid_rank_ic": 0.0312, "steps": 7}}
    assert info["metrics"] == {"walk_forward": {"rank_ic": 0.021, "sharpe": 1.25}}
    text = (tmp_path / "t" / "README.md").read_text()
    assert "### sft" in text and "| valid_rank_ic | 0.0312 |" in text and "| walk_forward.sharpe | 1.25 |" in text
    # a student's first stage takes the teacher's lineage
    from quantlm.finetune.student import StudentMLP, StudentSpec

    StudentMLP(StudentSpec(vocab_size=V, window_bars=4)).save(tmp_path / "s")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"distill": {}, "teacher": str(tmp_path / "t")}))
    refresh_run_card(tmp_path / "run", "distill", tmp_path / "s")
    student = read_card_info(tmp_path / "s")
    assert [s["name"] for s in student["stages"]] == ["sft", "distill"] and student["kind"] == "student"
    assert student["data"]["store"] == "synth"
    # a trader built on a loaded trunk inherits the trunk's stages in its card
    g = gpt()
    g.save(tmp_path / "g", card={"stages": [{"name": "pretrain", "config": {"steps": 3}}]})
    child = TraderModel(MarketGPT.load(tmp_path / "g"), TraderSpec())
    child.save(tmp_path / "c")
    assert [s["name"] for s in read_card_info(tmp_path / "c")["stages"]] == ["pretrain"]


def test_tokenizer_save_pretrained_round_trip(tmp_path):
    from quantlm.tokenize import KlineTokenizer
    from quantlm.tokenize.simulate import simulate_bars

    bars = simulate_bars(n_symbols=3, n_bars=300, seed=1)
    tok = KlineTokenizer().fit(bars, end="2015-09-30")
    tok.save_pretrained(tmp_path / "tok")
    cfg = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "KlineTokenizer" and set(cfg["bins"]) == {"ret", "vol", "gap", "upper", "lower"}
    back = KlineTokenizer.from_pretrained(tmp_path / "tok")
    old = KlineTokenizer.load(tmp_path / "tok")  # the files of `save` are still there
    for axis in tok.edges:
        np.testing.assert_array_equal(back.edges[axis], tok.edges[axis])
        assert back.edges[axis].dtype == tok.edges[axis].dtype
        np.testing.assert_array_equal(back.reps[axis], tok.reps[axis])
    ref = tok.encode(bars)
    for t in (back, old):
        for sym, ids in t.encode(bars).items():
            np.testing.assert_array_equal(ids, ref[sym])
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({**cfg, "tokenizer_class": "Other"}))
    with pytest.raises(ValueError, match="tokenizer_config.json.*not a quantlm KlineTokenizer"):
        KlineTokenizer.from_pretrained(tmp_path / "tok")


def test_unmerged_lora_adapter_folder(tmp_path):
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import AutoModel

    from quantlm.finetune.config import LoraConfig, SFTConfig
    from quantlm.finetune.lora import apply_lora, freeze_bottom

    assert SFTConfig.model_validate({"lora": {"enabled": True, "merge": False}}).lora.merge is False
    assert LoraConfig().merge is True  # default keeps the merged save
    t = trader()
    freeze_bottom(t, 1)
    apply_lora(t, LoraConfig(enabled=True, rank=4), 1)
    with torch.no_grad():
        for n, p in t.named_parameters():
            if "lora_B" in n:  # B starts at zero: give the adapter an effect to check
                p.normal_(0.0, 0.05)
    batch = trader_batch()
    t.eval()
    with torch.no_grad():
        ref = t(batch)
    t.save(tmp_path / "t")
    d = tmp_path / "t"
    assert (d / "adapter" / "adapter_config.json").exists() and (d / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((d / "config.json").read_text())["adapter"] == "adapter"
    assert "## LoRA adapter" in (d / "README.md").read_text()
    with torch.no_grad():
        assert_same_heads(TraderModel.load(d).eval()(batch), ref)
        assert_same_heads(AutoModel.from_pretrained(d, trust_remote_code=True).eval()(batch), ref)
        # the base weights alone (adapter=None) differ; peft's own loader restores the scores exactly
        base = TraderModel.from_pretrained(d, adapter=None).eval()
        assert (base(batch)["rank"] - ref["rank"]).abs().max().item() > 0
        PeftModel.from_pretrained(base.trunk.lm, str(d / "adapter"))
        assert_same_heads(base(batch), ref)
    # merged and saved over the same folder: no adapter left behind, same scores up to rounding
    from quantlm.finetune.lora import merge_lora

    loaded = TraderModel.load(d)
    merge_lora(loaded, loaded.peft_model)
    assert loaded.peft_model is None
    loaded.save(d)
    assert not (d / "adapter").exists() and json.loads((d / "config.json").read_text())["adapter"] is None
    with torch.no_grad():
        torch.testing.assert_close(TraderModel.load(d).eval()(batch)["rank"], ref["rank"], atol=1e-5, rtol=1e-4)
