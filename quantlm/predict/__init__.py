"""Prediction: sampled forecasts, quantiles, KV-cache decoding, streaming updates, forecast metrics.

`Forecaster`, `Forecast`, `StreamingForecaster` and `NextBar` import torch, so they load lazily.
"""

__all__ = ["Forecaster", "Forecast", "StreamingForecaster", "NextBar", "future_timestamps", "QUANTILES"]


def __getattr__(name: str):
    if name in ("Forecaster", "Forecast", "future_timestamps", "QUANTILES"):
        from quantlm.predict import forecaster

        return getattr(forecaster, name)
    if name in ("StreamingForecaster", "NextBar"):
        from quantlm.predict import streaming

        return getattr(streaming, name)
    raise AttributeError(name)
