"""K-line tokenization: bars -> (coarse, fine) token pairs over causal, scale-free features."""

from quantlm.tokenize.kline import FEATURE_NAMES, SPECIAL_TOKENS, KlineTokenizer, TokenizerState

__all__ = ["KlineTokenizer", "TokenizerState", "FEATURE_NAMES", "SPECIAL_TOKENS"]
