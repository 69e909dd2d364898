"""Point-in-time features and labels: Alpha158-style factors and forward-return labels.

Every builder here passes `quantlm.testing.assert_causal` (see tests/test_features.py).
"""

from quantlm.features.factors import alpha158, alpha158_columns
from quantlm.features.labels import adjusted_bars, forward_returns

__all__ = ["alpha158", "alpha158_columns", "forward_returns", "adjusted_bars"]
