"""`quantlm data synth`: generate the embedded synthetic A-share market into a store."""

from __future__ import annotations

from typing import Annotated

import typer

from quantlm.cli.common import StoreOption, console, store_from, user_errors


def register(app: typer.Typer) -> None:
    """Add `synth` to the `quantlm data` sub-app."""

    @app.command("synth")
    @user_errors
    def synth(
        store: StoreOption = None,
        market: Annotated[str, typer.Option(help="Market to simulate (only 'cn', China A-shares).")] = "cn",
        symbols: Annotated[int, typer.Option("--symbols", help="Number of stocks.")] = 200,
        start: Annotated[str, typer.Option(help="First date (sessions are XSHG trading days).")] = "2018-01-02",
        end: Annotated[str, typer.Option(help="Last date (inclusive).")] = "2024-12-31",
        seed: Annotated[int, typer.Option(help="Random seed: same seed, same market bit for bit.")] = 0,
        news: Annotated[bool, typer.Option("--news/--no-news", help="Generate news texts and their effect.")] = True,
        replace: Annotated[bool, typer.Option(help="Overwrite stored bars that differ (e.g. another seed).")] = False,
    ) -> None:
        """Generate a synthetic A-share market with planted, documented alpha (docs/SYNTH.md)."""
        from rich.table import Table

        from quantlm.data.synth import SynthConfig, write_market

        config = SynthConfig(market=market, n_symbols=symbols, start=start, end=end, seed=seed, news=news)
        config.check()  # before touching the store
        st = store_from(store)
        with console.status("generating the synthetic market ..."):
            result = write_market(st, config, replace=replace)
        s = result.stats
        table = Table(title=f"synthetic cn market -> {st.root}", show_header=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        rows = [
            ("symbols (+ benchmark)", f"{s['symbols']} (+ {config.benchmark})"),
            ("sessions", f"{s['sessions']} ({result.bars['ts'].min().date()} .. {result.bars['ts'].max().date()})"),
            ("bars", f"{s['bars']:,}"),
            ("limit-up / limit-down days", f"{s['limit_up_days']:,} / {s['limit_down_days']:,} "
                                           f"({(s['limit_up_days'] + s['limit_down_days']) / s['stock_days']:.2%})"),
            ("one-price limit days", f"{s['one_price_limit_days']:,}"),
            ("suspended stock-days", f"{s['suspended_stock_days']:,}"),
            ("ST symbols", str(s["st_symbols"])),
            ("IPOs / delistings", f"{s['ipos']} / {s['delistings']}"),
            ("texts", f"{s['texts']:,}"),
            ("oracle RankIC (mean daily)", "n/a (< 10 stocks a day)" if s["oracle_rank_ic"] != s["oracle_rank_ic"]
                                           else f"{s['oracle_rank_ic']:.4f}"),
        ]
        for what, value in rows:
            table.add_row(what, value)
        console.print(table)
