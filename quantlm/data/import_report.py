"""`ImportReport`: what an import read, converted, derived and wrote (printed by `quantlm data import`)."""

from __future__ import annotations

from dataclasses import dataclass, field


def _count(d: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(d.items()))


@dataclass
class ImportReport:
    """What an import wrote: counts of input files, symbols and validated input rows, and what it inferred.

    `volume_units` maps a unit decision (e.g. "lots of 100 (inferred from amount)") to a number of files;
    `derived` maps what was derived from the files (e.g. "corporate-action days") to a count;
    `notes` are the store's messages (e.g. how a re-import's adj_factor was rescaled).
    """

    market: str
    freq: str
    files: int
    symbols: list[str]
    rows: int  # validated input rows
    new_rows: int = 0  # (symbol, ts) bars that were not in the store before
    formats: dict[str, int] = field(default_factory=dict)  # format -> number of files read with it
    universes: list[str] = field(default_factory=list)
    encodings: dict[str, int] = field(default_factory=dict)  # text encoding -> number of CSV files
    volume_units: dict[str, int] = field(default_factory=dict)
    suspended_rows: int = 0  # suspended-day placeholder rows dropped
    bar_label: str | None = None  # intraday: "start" / "end" (how the files labelled bars; stored as starts)
    auction_bars: int = 0  # opening call-auction bars merged into the first continuous bar
    derived: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = (f"imported {self.rows:,} rows ({self.new_rows:,} new) of {len(self.symbols):,} symbol(s) "
                f"({self.freq}, market {self.market}) from {self.files:,} file(s) [{_count(self.formats)}]")
        if self.universes:
            text += f"; universes: {', '.join(self.universes)}"
        for label, value in self.details():
            text += f"; {label}: {value}"
        return text

    def details(self) -> list[tuple[str, str]]:
        """(label, value) lines beyond the counts: encodings, units, derivations, store notes."""
        out = []
        if self.encodings:
            out.append(("encodings", _count(self.encodings)))
        if self.volume_units:
            out.append(("volume units", _count(self.volume_units)))
        if self.suspended_rows:
            out.append(("suspended rows dropped", f"{self.suspended_rows:,}"))
        if self.bar_label:
            out.append(("bar labels", f"{self.bar_label} (stored as bar starts)"))
        if self.auction_bars:
            out.append(("call-auction bars merged", f"{self.auction_bars:,}"))
        if self.derived:
            out.append(("derived", ", ".join(f"{k}: {v:,}" for k, v in self.derived.items())))
        out += [("note", n) for n in self.notes]
        return out
