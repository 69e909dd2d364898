"""Training: pretraining config (config.py), time-split token windows (datasets.py), the accelerate loop (loop.py).

`pretrain(cfg, ...)` imports torch / accelerate, so it loads lazily.
"""

from quantlm.train.config import ConfigError, PretrainConfig, load_config, parse_config

__all__ = ["ConfigError", "PretrainConfig", "load_config", "parse_config", "pretrain"]


def __getattr__(name: str):
    if name == "pretrain":
        from quantlm.train.loop import pretrain

        return pretrain
    raise AttributeError(name)
