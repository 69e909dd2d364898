"""Hugging Face-native model folders: config classes, the code files written into each folder, layout helpers.

A saved market GPT or trader folder is what `push_to_hub` would upload:

    config.json                 model_type quantlm_market_gpt | quantlm_trader, architectures, auto_map
    model.safetensors           every weight (trunk, calendar embeddings, prefix projection, heads)
    configuration_quantlm.py    imports the config classes from quantlm (which must be installed)
    modeling_quantlm.py         imports the model classes from quantlm
    README.md                   model card (`quantlm.model.card`)
    tokenizer/                  the K-line tokenizer (tokenizer_config.json + bins)
    adapter/                    (traders saved with an unmerged LoRA) a peft adapter folder

so `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` (market GPT) and
`AutoModel.from_pretrained(dir, trust_remote_code=True)` (trader) load the whole model. The model
types are unknown to transformers, so a load WITHOUT trust_remote_code raises instead of silently
loading the Llama decoder and dropping the calendar embeddings and heads (what the previous layout
allowed). Folders of the previous layout (quantlm.json + quantlm.safetensors; trader.json + trunk/ +
heads.safetensors) are still read by `MarketGPT.load` / `TraderModel.load`.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import LlamaConfig, PreTrainedConfig

MARKET_GPT_TYPE = "quantlm_market_gpt"
TRADER_TYPE = "quantlm_trader"
CONFIG_FILE = "configuration_quantlm.py"
MODELING_FILE = "modeling_quantlm.py"
ADAPTER_DIR = "adapter"

_NEEDS_QUANTLM = (
    "This model folder's code imports the `quantlm` package, which is not installed: install it "
    "(pip install quantlm, or `pip install -e .` in its repository) and load again with trust_remote_code=True."
)

_CONFIG_CODE = f'''"""Config classes of a quantlm model folder (written by quantlm; the classes live in the quantlm package)."""

try:
    from quantlm.model.hf import MarketGPTConfig, TraderConfig
except ImportError as err:  # pragma: no cover - exercised only without quantlm
    raise ImportError({_NEEDS_QUANTLM!r}) from err

__all__ = ["MarketGPTConfig", "TraderConfig"]
'''

_MODELING_CODE = f'''"""Model classes of a quantlm model folder (written by quantlm; the classes live in the quantlm package)."""

try:
    from quantlm.finetune.model import TraderModel
    from quantlm.model.build import MarketGPT
except ImportError as err:  # pragma: no cover - exercised only without quantlm
    raise ImportError({_NEEDS_QUANTLM!r}) from err

__all__ = ["MarketGPT", "TraderModel"]
'''


class NoAutoClassCopy:
    """Mixin: keep transformers from copying quantlm's source files into saved folders.

    Loading a folder with trust_remote_code calls `register_for_auto_class` on the class, after which
    every `save_pretrained` would copy the defining module (e.g. quantlm/finetune/model.py) into the
    folder and point auto_map at the copy. quantlm writes its own small code files and auto_map instead.
    """

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoModel") -> None:
        """No-op (see the class docstring)."""


class MarketGPTConfig(NoAutoClassCopy, LlamaConfig):
    """A LlamaConfig (the decoder) plus the market GPT's calendar and prefix inputs.

    n_weekdays / n_slots: calendar embedding table sizes (a "none" row is added to each);
    d_prefix / max_prefix: prefix embedding width and most prefix positions (both 0 = no prefix);
    size: the `quantlm.model.sizes.ModelSize` fields (max_bars = context in bars).
    """

    model_type = MARKET_GPT_TYPE

    n_weekdays: int = 7
    n_slots: int = 1
    d_prefix: int = 0
    max_prefix: int = 0
    size: dict | None = None


class TraderConfig(NoAutoClassCopy, PreTrainedConfig):
    """The trader: a market GPT trunk config plus the `TraderSpec` fields (heads, inputs, scoring).

    adapter: folder (relative to the model folder) of an unmerged peft LoRA adapter on the trunk, or None.
    """

    model_type = TRADER_TYPE
    sub_configs_defaults = {"trunk": MarketGPTConfig}

    trunk: MarketGPTConfig | dict | None = None
    horizons: list[int] | None = None
    quantiles: list[float] | None = None
    d_text: int = 0
    factors: str = "none"
    d_factors: int = 0
    feature_mean: list[float] | None = None
    feature_std: list[float] | None = None
    score: str = "rank"
    window_bars: int = 64
    text_half_life: float = 1.5
    train_end: str | None = None
    market: str = "cn"
    adapter: str | None = None


def auto_map(kind: str) -> dict[str, str]:
    """The config.json auto_map of a folder of `kind` (market_gpt | trader)."""
    if kind == "market_gpt":
        return {"AutoConfig": "configuration_quantlm.MarketGPTConfig",
                "AutoModel": "modeling_quantlm.MarketGPT",
                "AutoModelForCausalLM": "modeling_quantlm.MarketGPT"}
    if kind == "trader":
        return {"AutoConfig": "configuration_quantlm.TraderConfig", "AutoModel": "modeling_quantlm.TraderModel"}
    raise ValueError(f"unknown model kind '{kind}' (market_gpt or trader)")


def write_code_files(folder: str | Path) -> None:
    """Write configuration_quantlm.py and modeling_quantlm.py (the auto_map targets) into `folder`."""
    d = Path(folder)
    (d / CONFIG_FILE).write_text(_CONFIG_CODE)
    (d / MODELING_FILE).write_text(_MODELING_CODE)


def read_config(folder: str | Path) -> dict | None:
    """config.json of `folder` as a dict, or None when it has none."""
    p = Path(folder) / "config.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{p}: not valid JSON ({err})") from err


def model_type(folder: str | Path) -> str | None:
    """model_type of a folder's config.json (None without one)."""
    cfg = read_config(folder)
    return None if cfg is None else cfg.get("model_type")


def model_size(folder: str | Path) -> dict | None:
    """The ModelSize fields of a market GPT or trader folder (new or previous layout), or None."""
    d = Path(folder)
    for meta in (d / "trunk" / "quantlm.json", d / "quantlm.json"):  # previous layout
        if meta.exists():
            return json.loads(meta.read_text()).get("size")
    cfg = read_config(d) or {}
    if cfg.get("model_type") == TRADER_TYPE:
        cfg = cfg.get("trunk") or {}
    return cfg.get("size") if cfg.get("model_type") == MARKET_GPT_TYPE else None
