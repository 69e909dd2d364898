"""Portfolio accounting: cash, positions in shares, T+1 settlement, marks and borrow fees.

Units: cash and values in currency; positions in shares (negative = short); borrow fee rates are
annual fractions accrued per calendar day (rate * days / 365).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Portfolio:
    """Cash and positions of one account.

    shares: symbol -> shares held (negative for shorts); sellable: long shares that may be sold now
    (under T+1 only those held since before today's date); held_days: sessions (trading
    dates a position has been held at a date's close; last_price: the last close seen per symbol (a
    suspended holding keeps it).
    """

    cash: float
    t_plus: int = 0
    shares: dict[str, float] = field(default_factory=dict)
    sellable: dict[str, float] = field(default_factory=dict)
    held_days: dict[str, int] = field(default_factory=dict)
    last_price: dict[str, float] = field(default_factory=dict)
    # symbol -> (shares before, shares after) of its latest corporate action
    last_corporate_action: dict[str, tuple[float, float]] = field(default_factory=dict)

    def settle(self) -> None:
        """Start of a new date (T+1) or of any session (T+0): every long share becomes sellable."""
        self.sellable = {s: q for s, q in self.shares.items() if q > 0}

    def position(self, symbol: str) -> float:
        return self.shares.get(symbol, 0.0)

    def apply_fill(self, symbol: str, side: str, shares: float, price: float, cost: float) -> None:
        """Book a fill: `shares` > 0 traded at `price` with `cost` currency of fees on top."""
        value = shares * price
        if side in ("sell", "short"):
            self.cash += value - cost
            self.shares[symbol] = self.position(symbol) - shares
            if side == "sell":
                self.sellable[symbol] = self.sellable.get(symbol, 0.0) - shares
        else:
            self.cash -= value + cost
            self.shares[symbol] = self.position(symbol) + shares
            if side == "buy" and self.t_plus == 0:
                self.sellable[symbol] = self.sellable.get(symbol, 0.0) + shares
        if self.shares[symbol] == 0.0:
            del self.shares[symbol]
            self.held_days.pop(symbol, None)
            self.sellable.pop(symbol, None)

    def apply_corporate_action(self, symbol: str, ratio: float, mode: int, whole_shares: bool) -> float:
        """Follow an adj_factor step `ratio` (new / old factor) before the bar trades; returns the cash
        credited (currency; negative for a short paying a dividend). The split into shares and cash is
        `kernel.corporate_action_split`; the last price moves to the ex-rights reference."""
        from quantlm.backtest.kernel import _scaled_quantity, apply_corporate_action, corporate_action_split

        last = self.last_price.get(symbol, float("nan"))
        old = self.position(symbol)
        new_q, cash, new_last = apply_corporate_action(old, last, ratio, mode, whole_shares)
        if symbol in self.last_price:
            self.last_price[symbol] = new_last
        if old == 0.0:
            return 0.0
        share, _ = corporate_action_split(ratio, mode)
        sellable = self.sellable.get(symbol, 0.0)
        if sellable >= old > 0:
            self.sellable[symbol] = new_q
        elif sellable > 0:
            self.sellable[symbol] = min(_scaled_quantity(sellable, share, whole_shares), new_q)
        self.last_corporate_action[symbol] = (old, new_q)
        self.cash += cash
        if new_q == 0.0:
            del self.shares[symbol]
            self.held_days.pop(symbol, None)
            self.sellable.pop(symbol, None)
        else:
            self.shares[symbol] = new_q
        return cash

    def charge_borrow(self, annual_rate: float, years: float) -> float:
        """Charge the borrow fee on shorts held since the last marks; returns the fee (currency)."""
        fee_total = 0.0
        if annual_rate <= 0:
            return 0.0
        for symbol, q in self.shares.items():
            if q < 0:
                fee = -q * self.last_price[symbol] * annual_rate * years
                self.cash -= fee
                fee_total += fee
        return fee_total

    def mark(self, closes: dict[str, float], day_end: bool = True) -> None:
        """Mark to the bar's closes (symbols without a bar keep their last price); at a date's last bar
        (`day_end`), every position counts one more day held."""
        self.last_price.update(closes)
        if day_end:
            for symbol in self.shares:
                self.held_days[symbol] = self.held_days.get(symbol, 0) + 1

    def gross_and_equity(self, marks: dict[str, float] | None = None) -> tuple[float, float]:
        """(gross exposure, equity) in currency at `marks` (default: last prices)."""
        marks = self.last_price if marks is None else marks
        gross = net = 0.0
        for symbol, q in self.shares.items():
            v = q * marks[symbol]
            net += v
            gross += abs(v)
        return gross, self.cash + net

    def equity(self) -> float:
        return self.gross_and_equity()[1]
