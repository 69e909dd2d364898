"""Live trading: the backtest's strategy, exchange rules and portfolio run bar by bar behind a risk
manager, an order manager with a durable journal, and a broker gateway (paper or file)."""
