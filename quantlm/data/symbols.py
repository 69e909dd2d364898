"""China A-share symbol spellings -> quantlm's canonical `600000.SH`.

Accepted spellings (case-insensitive, surrounding spaces and a leading Excel apostrophe ignored):

| spelling | example | source |
|---|---|---|
| code.EXCHANGE | `600000.SH`, `600000.sh`, `000001.SZ`, `430047.BJ` (`.SS` = Shanghai) | Tushare, Yahoo |
| EXCHANGE code | `sh600000`, `SH600000`, `sh.600000`, `SH#600000`, `bj430047` | Qlib, Baostock, TDX |
| code.MIC | `600000.XSHG`, `000001.XSHE`, `430047.XBSE` / `.BJSE` | JoinQuant, RiceQuant |
| bare code | `600000`, `651` (leading zeros lost in Excel) | vendor CSVs, file names |

A bare code carries no exchange, so it is accepted only under a rule the user chose
(`bare_rule`, CLI `--bare-codes`):

- `refuse` (default): an error naming the option;
- `sh` / `sz`: every bare code belongs to that exchange;
- `infer`: by prefix - 6xxxxx / 9xxxxx -> SH (but 920xxx -> BJ), 0xxxxx / 2xxxxx / 3xxxxx -> SZ,
  4xxxxx / 8xxxxx -> BJ. `000xxx` is refused as ambiguous (000001 is Ping An Bank, 000001.SZ, and
  the SSE Composite index, 000001.SH) unless the row's name says it is an index (contains 指数),
  which resolves it to .SH.

Codes shorter than six digits are zero-padded only when they come from a code column whose every
value is a number (a file stem like `651` is refused). Anything else that is not a code (`CSI300`,
`^GSPC`) is kept as written, stripped.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from quantlm.data.schema import DataValidationError

BARE_RULES = ("infer", "sh", "sz", "refuse")
_PREFIXED = re.compile(r"^(SH|SZ|BJ)[.#]?(\d{6})$", re.IGNORECASE)
_SUFFIXED = re.compile(r"^(\d{6})\.(SH|SZ|BJ|SS|XSHG|XSHE|XBSE|BJSE)$", re.IGNORECASE)
_EXCHANGE = {"SH": "SH", "SS": "SH", "XSHG": "SH", "SZ": "SZ", "XSHE": "SZ", "BJ": "BJ", "XBSE": "BJ", "BJSE": "BJ"}
_CANONICAL = re.compile(r"^\d{6}\.(SH|SZ|BJ)$")
INDEX_NAME = "指数"


class SymbolError(ValueError):
    """A symbol spelling that cannot be mapped to an exchange (message says why and how to fix it)."""


class AmbiguousCodeError(SymbolError):
    """A bare 000xxx code under `infer`: a Shenzhen stock or an SSE index."""


def _clean(text: object) -> str:
    return str(text).strip().lstrip("'").strip()


def check_bare_rule(rule: str) -> str:
    """Return `rule` if it is one of BARE_RULES, else raise DataValidationError."""
    if rule not in BARE_RULES:
        raise DataValidationError(f"unknown --bare-codes rule '{rule}' (expected one of {', '.join(BARE_RULES)})")
    return rule


def normalize_cn_symbol(text: object, bare_rule: str = "refuse", name: str | None = None,
                        pad: bool = False) -> str:
    """One A-share symbol spelling -> `600000.SH` (see the module docstring); SymbolError if it cannot be.

    `name` (the stock's name on that row, if the file has one) resolves an ambiguous 000xxx under
    `infer` when it contains 指数 (an SSE index). `pad` zero-pads codes of 1-5 digits (only for a
    column that is clearly a code column).
    """
    s = _clean(text)
    if _CANONICAL.match(s):
        return s
    m = _PREFIXED.match(s)
    if m:
        return f"{m.group(2)}.{m.group(1).upper()}"
    m = _SUFFIXED.match(s)
    if m:
        return f"{m.group(1)}.{_EXCHANGE[m.group(2).upper()]}"
    if re.fullmatch(r"\d{1,6}(\.0)?", s):
        digits = s[:-2] if s.endswith(".0") else s
        if len(digits) < 6 and not pad:
            raise SymbolError(f"'{s}' looks like a stock code that lost its leading zeros; write the full code "
                              f"(e.g. {digits.zfill(6)}.SZ) or pass --symbol")
        return _bare(digits.zfill(6), bare_rule, name)
    return s


def _bare(code: str, rule: str, name: str | None) -> str:
    if rule == "sh":
        return f"{code}.SH"
    if rule == "sz":
        return f"{code}.SZ"
    if rule == "refuse":
        raise SymbolError(f"bare code '{code}' names no exchange; write it as {code}.SH / {code}.SZ / {code}.BJ, "
                          "or choose a rule with --bare-codes infer|sh|sz")
    if code.startswith("000"):
        if name and INDEX_NAME in name:
            return f"{code}.SH"
        raise AmbiguousCodeError(f"bare code '{code}' is ambiguous: {code}.SZ (a Shenzhen stock) or {code}.SH (an SSE "
                          f"index); write the exchange, or use --bare-codes sz / sh")
    if code.startswith("920") or code[0] in "48":
        return f"{code}.BJ"
    if code[0] in "69":
        return f"{code}.SH"
    if code[0] in "023":
        return f"{code}.SZ"
    raise SymbolError(f"bare code '{code}': no exchange starts codes with {code[0]}; write the exchange suffix")


def is_index(symbol: str, name: str | None = None) -> bool:
    """True for 000xxx.SH and 399xxx.SZ (index code ranges) or a name containing 指数."""
    if name and INDEX_NAME in name:
        return True
    return bool(re.fullmatch(r"000\d{3}\.SH|399\d{3}\.SZ", symbol))


def normalize_symbol_column(raw: pd.Series, market: str, bare_rule: str, file: str, rows: np.ndarray,
                            column: str, names: pd.Series | None = None, from_column: bool = True) -> np.ndarray:
    """A column (or a repeated stem) of symbols -> canonical symbols, vectorised over unique spellings.

    For market cn every spelling goes through `normalize_cn_symbol`; other markets only strip.
    A SymbolError becomes a DataValidationError naming `file`, the first 1-based data row with that
    spelling, and `column`.
    """
    text = raw.astype("str").str.strip().where(raw.notna(), "")
    if market != "cn":
        return text.to_numpy(dtype=object)
    cleaned = text.str.lstrip("'")
    pad = from_column and bool(cleaned[cleaned != ""].str.fullmatch(r"\d{1,6}(\.0)?").all())
    codes, uniques = pd.factorize(cleaned)
    mapped = np.empty(len(uniques), dtype=object)
    ambiguous: list[int] = []
    for k, u in enumerate(uniques):
        if u == "":
            mapped[k] = ""
            continue
        try:
            mapped[k] = normalize_cn_symbol(u, bare_rule, pad=pad)
        except SymbolError as e:
            if names is not None and isinstance(e, AmbiguousCodeError):
                ambiguous.append(k)
                continue
            i = int(np.flatnonzero(codes == k)[0])
            raise DataValidationError(str(e), file=file, row=int(rows[i]), column=column) from None
    out = np.where(codes >= 0, mapped[np.maximum(codes, 0)], "").astype(object)
    for k in ambiguous:  # rows of an ambiguous code: resolved row by row by their names
        for i in np.flatnonzero(codes == k):
            name = names.iat[i] if pd.notna(names.iat[i]) else None
            try:
                out[i] = normalize_cn_symbol(uniques[k], bare_rule, name=name, pad=pad)
            except SymbolError as e:
                raise DataValidationError(str(e), file=file, row=int(rows[i]), column=column) from None
    return out
