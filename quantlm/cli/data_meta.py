"""`quantlm data import-instruments`, `quantlm data import-flags` and `quantlm data set-benchmark`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantlm.cli.common import StoreOption, console, store_from, user_errors

BareCodesOption = Annotated[str, typer.Option("--bare-codes", help="Codes without exchange (600000): refuse, infer "
                                              "(from the code; 000xxx only with a 指数 name), sh or sz.")]


def _print_report(report, root: Path) -> None:
    from rich.table import Table

    table = Table(title=f"{report.table} imported into {root}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("rows", f"{report.rows:,}")
    shown = ", ".join(report.symbols[:8]) + (f", ... ({len(report.symbols):,} in all)" if len(report.symbols) > 8 else "")
    table.add_row("symbols", f"{shown} ({report.new_symbols:,} new)")
    for what, count in report.derived.items():
        table.add_row(what, f"{count:,}")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add `import-instruments`, `import-flags` and `set-benchmark` to the `quantlm data` sub-app."""

    @app.command("import-instruments")
    @user_errors
    def import_instruments_(
        file: Annotated[Path, typer.Argument(help="CSV / Parquet: symbol (代码), name (名称), list_date (上市日期), "
                                                  "delist_date (退市日期), board (板块).")],
        store: StoreOption = None,
        market: Annotated[str, typer.Option("--market", help="Market of the instruments: cn, us or crypto.")] = "cn",
        bare_codes: BareCodesOption = "refuse",
    ) -> None:
        """Import instruments (list dates, boards, names), upserted by symbol; all rows checked before writing.
        A missing board is derived from the code (000300.SH, 399001.SZ -> index)."""
        from quantlm.data.metadata import import_instruments

        st = store_from(store)
        _print_report(import_instruments(file, st, market=market, bare_codes=bare_codes), st.root)

    @app.command("import-flags")
    @user_errors
    def import_flags_(
        file: Annotated[Path, typer.Argument(help="CSV / Parquet: symbol, flag (st / *st), start, end "
                                                  "(inclusive; empty end = still ST).")],
        store: StoreOption = None,
        market: Annotated[str, typer.Option("--market", help="Market of the symbols (cn normalises codes).")] = "cn",
        bare_codes: BareCodesOption = "refuse",
    ) -> None:
        """Import ST / *ST spans: they replace the stored spans of the symbols in the file; overlaps are merged."""
        from quantlm.data.metadata import import_flags

        st = store_from(store)
        _print_report(import_flags(file, st, market=market, bare_codes=bare_codes), st.root)

    @app.command("set-benchmark")
    @user_errors
    def set_benchmark_(
        symbol: Annotated[str, typer.Argument(help="Benchmark symbol with bars in the store, e.g. 000300.SH.")],
        store: StoreOption = None,
    ) -> None:
        """Name the store's benchmark (store meta 'benchmark'); import its bars first with 'quantlm data import'."""
        from quantlm.data.metadata import set_benchmark

        st = store_from(store)
        r = set_benchmark(st, symbol)
        console.print(f"benchmark of {st.root}: {r.symbol} (market {r.market}, {r.rows:,} bars, "
                      f"{r.first_ts.date()} .. {r.last_ts.date()})"
                      + (f"; was {r.previous}" if r.previous and r.previous != r.symbol else "")
                      + ("; marked board 'index' in instruments" if r.marked_index else ""), highlight=False)
