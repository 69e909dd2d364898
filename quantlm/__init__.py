"""quantlm: model-based quantitative trading with large models."""

__version__ = "0.1.0"
