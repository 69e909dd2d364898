"""`quantlm data import`, `quantlm data list` and `quantlm data sample`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantlm.cli.common import StoreOption, console, fail, store_from, user_errors

FORMAT_HELP = "auto | generic | yahoo | tushare | qlib-csv | qlib-bin | cn-vendor | eastmoney | baostock"
BARE_HELP = ("Market cn, codes without an exchange (600000): refuse (default), sh, sz, or infer by prefix "
             "(6/9 -> SH, 0/2/3 -> SZ, 4/8/920 -> BJ; an ambiguous 000xxx is refused).")
DATE_HELP = "strptime format of the dates, e.g. '%d/%m/%Y'; needed for day/month-ambiguous dates like 03/04/2024."
LABEL_HELP = ("Intraday time stamps label bar starts or ends: auto (cn: from the session anchors 09:30/13:00 vs "
              "11:30/15:00), start or end. Bars are stored under their start time.")
SAMPLES = ("sp500",)


def _print_report(report, root: Path) -> None:
    from rich.table import Table

    table = Table(title=f"imported into {root}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("market", report.market)
    table.add_row("frequency", report.freq)
    table.add_row("files", f"{report.files:,}")
    table.add_row("formats", ", ".join(f"{k} ({v})" for k, v in sorted(report.formats.items())))
    shown = ", ".join(report.symbols[:8]) + (f", ... ({len(report.symbols):,} in all)" if len(report.symbols) > 8 else "")
    table.add_row("symbols", shown)
    table.add_row("rows", f"{report.rows:,} ({report.new_rows:,} new)")
    if report.universes:
        table.add_row("universes", ", ".join(report.universes))
    for label, value in report.details():
        table.add_row(label, value)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add `import`, `list` and `sample` to the `quantlm data` sub-app."""

    @app.command("import")
    @user_errors
    def import_(
        paths: Annotated[list[Path], typer.Argument(help="CSV / Parquet files, folders of them, or Qlib folders.")],
        market: Annotated[str, typer.Option("--market", help="Market of the data: cn, us or crypto.")],
        store: StoreOption = None,
        freq: Annotated[str | None, typer.Option("--freq", help="Bar frequency (1d, 1h, 30min, 15min, 5min, 1min); "
                                                 "inferred from the timestamps when omitted.")] = None,
        format: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "auto",
        symbol: Annotated[str | None, typer.Option("--symbol", help="Symbol for files without a symbol column "
                                                   "(default: the file name).")] = None,
        replace: Annotated[bool, typer.Option("--replace", help="New rows win where they overlap stored bars.")] = False,
        bare_codes: Annotated[str, typer.Option("--bare-codes", help=BARE_HELP)] = "refuse",
        date_format: Annotated[str | None, typer.Option("--date-format", help=DATE_HELP)] = None,
        bar_label: Annotated[str, typer.Option("--bar-label", help=LABEL_HELP)] = "auto",
    ) -> None:
        """Import bars, all or nothing: every file is validated before anything is written."""
        from quantlm.data.importers import import_paths

        st = store_from(store)
        report = import_paths(paths, st, market=market, freq=freq, format=format, replace=replace, symbol=symbol,
                              bare_codes=bare_codes, date_format=date_format, bar_label=bar_label)
        _print_report(report, st.root)

    @app.command("list")
    @user_errors
    def list_(
        store: StoreOption = None,
        freq: Annotated[str | None, typer.Option("--freq", help="Only this bar frequency.")] = None,
    ) -> None:
        """List stored bars: symbol, frequency, market, first and last timestamp, rows."""
        from rich.table import Table

        st = store_from(store)
        if not st.exists():
            fail(f"no quantlm store at {st.root} (create one with 'quantlm data import' or 'quantlm data synth')")
        listing = st.listing()
        if freq is not None:
            listing = listing[listing["freq"] == freq]
        table = Table(title=f"{st.root}: {len(listing):,} series, {int(listing['rows'].sum()):,} bars")
        for col in ("symbol", "freq", "market", "first ts", "last ts", "rows"):
            table.add_column(col, justify="right" if col == "rows" else "left")
        for r in listing.itertuples(index=False):
            first, last = (str(t.date()) if r.freq == "1d" else str(t) for t in (r.first_ts, r.last_ts))
            table.add_row(r.symbol, r.freq, r.market, first, last, f"{r.rows:,}")
        console.print(table)

    @app.command("sample")
    @user_errors
    def sample(
        name: Annotated[str, typer.Argument(help="Sample to load: sp500 (S&P 500 index, daily, 1999-2018).")],
        store: StoreOption = None,
        replace: Annotated[bool, typer.Option("--replace", help="Overwrite overlapping stored bars.")] = False,
    ) -> None:
        """Load a real sample data set that ships with the dependencies (no download)."""
        if name not in SAMPLES:
            fail(f"unknown sample '{name}' (available: {', '.join(SAMPLES)})")
        from quantlm.data.samples import load_sp500_sample

        st = store_from(store)
        try:
            report = load_sp500_sample(st, replace=replace)
        except ImportError as e:
            fail(str(e))
            return
        _print_report(report, st.root)
