"""The market GPT: Llama-style decoder over K-line tokens (see build.py), sizes, FPA regulariser."""

from quantlm.model.sizes import SIZES, ModelSize, get_size

__all__ = ["SIZES", "ModelSize", "get_size", "MarketGPT", "build_model", "model_for_tokenizer"]


def __getattr__(name: str):
    # torch / transformers are heavy: import them only when the model itself is asked for.
    if name in ("MarketGPT", "build_model", "model_for_tokenizer"):
        from quantlm.model import build

        return getattr(build, name)
    raise AttributeError(name)
