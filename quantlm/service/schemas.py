"""Request models of the service API: strict (unknown fields refused), bounded, no markup or SQL in text.

Shares are positive integers (no floats, no strings, no booleans); symbols and client ids match a
plain pattern (whether a symbol exists in the session is checked by the operation: 422); free text
(`reason`) is at most `TEXT_MAX` characters and is refused when it carries markup (`<`, `>`), control
characters or SQL-looking fragments (comments, `;`, `select ... from`, `or 1=1` ...).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, NaiveDatetime, model_validator

TEXT_MAX = 200
MAX_SHARES = 1_000_000_000
MAX_BARS = 10_000
SYMBOL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"
CLIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_SQL = re.compile(
    r"(--|/\*|\*/|;|\bunion\b.*\bselect\b|\bselect\b.*\bfrom\b|\binsert\b.*\binto\b|\bupdate\b.*\bset\b|"
    r"\bdelete\b.*\bfrom\b|\bdrop\b\s+(table|database|index|view)\b|\balter\b\s+table\b|\bexec(ute)?\s*\(|"
    r"['\"]\s*(or|and)\b|\b(or|and)\s+['\"]?\w+['\"]?\s*=\s*['\"]?\w+|\bsleep\s*\(|\bxp_\w+)", re.I | re.S)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def plain_text(value: str) -> str:
    """Refuse markup, control characters and SQL-looking text (ValueError with the reason)."""
    if "<" in value or ">" in value:
        raise ValueError("text may not contain markup ('<' or '>')")
    if _CONTROL.search(value):
        raise ValueError("text may not contain control characters")
    if _SQL.search(value):
        raise ValueError("text looks like SQL (comments, ';', statements or boolean injections are refused)")
    return value


Text = Annotated[str, Field(max_length=TEXT_MAX), AfterValidator(plain_text)]
Symbol = Annotated[str, Field(pattern=SYMBOL_PATTERN, max_length=32)]
ClientId = Annotated[str, Field(pattern=CLIENT_ID_PATTERN, max_length=64)]
Price = Annotated[float, Field(gt=0, lt=1e9, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class OrderRequest(_Strict):
    """A manual order: whole shares, market (no limit_price) or limit; idempotent by client_id."""

    symbol: Symbol
    side: Literal["buy", "sell", "short", "cover"]
    shares: Annotated[int, Field(strict=True, gt=0, le=MAX_SHARES)]
    limit_price: Price | None = None
    client_id: ClientId | None = Field(None, description="Your id for the order: resending it makes no second "
                                       "order. Default: the journal's next id.")
    reason: Text = ""


class ReasonRequest(_Strict):
    """An action with an optional reason (journaled with who did it)."""

    reason: Text = ""


class PauseRequest(_Strict):
    """Pause one symbol (omit it to pause the market: only orders that shrink a position pass)."""

    symbol: Symbol | None = None
    reason: Text = ""


class ResumeRequest(_Strict):
    """Resume one symbol, or (no symbol) the market; after the kill switch only with lift_halt=true."""

    symbol: Symbol | None = None
    reason: Text = ""
    lift_halt: Annotated[bool, Field(strict=True)] = False


class SwitchRequest(_Strict):
    """Serve the primary or the backup model from the next decision."""

    to: Literal["primary", "backup"]
    reason: Text = ""


class StepRequest(_Strict):
    """Replay mode: trade the next `n` stored bars."""

    n: Annotated[int, Field(strict=True, ge=1, le=1000)] = 1


class Bar(_Strict):
    """One symbol's bar (prices in the account currency, volume in shares)."""

    symbol: Symbol
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Annotated[float, Field(ge=0, lt=1e15, allow_inf_nan=False)]
    amount: Annotated[float, Field(ge=0, lt=1e18, allow_inf_nan=False)] | None = None
    adj_factor: Annotated[float, Field(gt=0, lt=1e9, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _range(self) -> Bar:
        if not (self.low <= min(self.open, self.close) and self.high >= max(self.open, self.close, self.low)):
            raise ValueError(f"{self.symbol}: needs low <= open, close <= high")
        return self


def _bar_time(ts):
    if not 1970 <= ts.year <= 2200:
        raise ValueError("ts must be between 1970 and 2200")
    return ts


class BarsRequest(_Strict):
    """Push mode: the bars of one timestamp (every symbol at most once)."""

    ts: Annotated[NaiveDatetime, AfterValidator(_bar_time)] = Field(
        description="Exchange-local time without an offset, after the last bar")
    bars: Annotated[list[Bar], Field(min_length=1, max_length=MAX_BARS)]
    day_end: Annotated[bool, Field(strict=True)] = True
