"""`quantlm orders`: the next session's orders as the FileBroker writes them.

Positions come from a paper replay up to --date (from --start, default one year earlier) or from an
existing session's journal; the orders the engine decided at --date's close (sent, or held for
review) are written for manual entry or a broker upload: whole lots at the last close, a limit price
`limit_slack` away from it inside the price limits.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from quantlm.live.config import LiveConfig, LiveConfigError
from quantlm.live.types import OrderStatus


def next_session_orders(cfg: LiveConfig, store, date, out: str | Path, start=None,
                        journal: str | Path | None = None) -> tuple[Path, list[dict]]:
    from quantlm.live.gateway import FileBroker
    from quantlm.live.replay import run_replay

    date = pd.Timestamp(date)
    cal = store.calendar("1d")
    if not (cal == date).any():
        raise LiveConfigError(f"{date.date()} is not a session in the store at {store.root}")
    start = pd.Timestamp(start) if start is not None else date - pd.Timedelta(days=365)
    with tempfile.TemporaryDirectory() as tmp:
        session_dir = Path(journal).parent if journal is not None else Path(tmp)
        local = cfg.model_copy(deep=True)
        if journal is not None:
            local.journal = str(journal)
        from quantlm.live.replay import Session

        run_replay(local, store, start, date, session_dir)
        s = Session(local, store, session_dir)
        decided = [o for o in s.oms.open_orders()
                   if o.status in (OrderStatus.SENT, OrderStatus.HELD) and o.created is not None
                   and pd.Timestamp(o.created).normalize() == date]
        last = store.bars([o.symbol for o in decided], start=date, end=date) if decided else pd.DataFrame()
        close = dict(zip(last.get("symbol", []), last.get("close", [])))
        broker = FileBroker(Path(out).parent, s.engine.exchange.lot_rule, s.engine.rules.price_tick,
                            cfg.broker.limit_slack)
        broker.connect()
        rows = []
        for o in decided:
            ref = float(close.get(o.symbol, np.nan))
            up, down = _next_limits(o.symbol, ref, date, store, s.engine.rules.price_tick)
            row = broker.send_order(o, last_price=ref, limit_up=up, limit_down=down)
            if row is not None:
                row["status"] = str(o.status.value)
                rows.append(row)
        path = broker.write(str(date.date()), out)
    return path, rows


def _next_limits(symbol: str, close: float, date: pd.Timestamp, store, tick: float) -> tuple[float, float]:
    """The next session's price limits from today's close (board and ST state; NaN = no limit)."""
    from quantlm.backtest.rules import board_limit, limit_prices, st_mask, symbol_boards

    if not np.isfinite(close):
        return np.nan, np.nan
    inst = store.instruments()
    board = symbol_boards([symbol], inst if len(inst) else None)[0]
    flags = store.flags()
    is_st = bool(st_mask(flags if len(flags) else None, [symbol], pd.DatetimeIndex([date]))[0, 0])
    frac = board_limit(board, date, is_st)
    if not np.isfinite(frac):
        return np.nan, np.nan
    up, down = limit_prices(close, frac, frac, tick)
    return float(up), float(down)
