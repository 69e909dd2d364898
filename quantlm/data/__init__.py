"""Data layer: canonical schemas, validated Parquet + DuckDB store, importers, synthetic markets."""

from quantlm.data.schema import DataValidationError, validate_bars
from quantlm.data.store import Store

__all__ = ["DataValidationError", "Store", "validate_bars"]
