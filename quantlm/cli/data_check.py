"""`quantlm data check` (store health report) and `quantlm data embed` (text embeddings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from quantlm.cli.common import StoreOption, console, fail, store_from, user_errors


def register(app: typer.Typer) -> None:
    """Add `check` and `embed` to the `quantlm data` sub-app."""

    @app.command("check")
    @user_errors
    def check(
        store: StoreOption = None,
        freq: Annotated[str, typer.Option("--freq", help="Bar frequency to check (1d, 1h, ..., 1min).")] = "1d",
        market: Annotated[str | None, typer.Option("--market", help="Only this market (cn, us, crypto).")] = None,
        json_path: Annotated[Path | None, typer.Option("--json", help="Also write the full report as JSON here.")] = None,
        examples: Annotated[int, typer.Option("--examples", min=0, help="Example warnings to print.")] = 10,
    ) -> None:
        """Check a store's bars: gaps vs the exchange calendar, suspensions, jumps, stale prices,
        zero-volume runs; for cn stores also the metadata (list dates, ST flags, benchmark).
        Findings are warnings: the exit code is 0 unless the store cannot be read."""
        from rich.table import Table

        from quantlm.data.health import check_store

        st = store_from(store)
        if not st.exists():
            fail(f"no quantlm store at {st.root} (create one with 'quantlm data import' or 'quantlm data synth')")
        report = check_store(st, freq=freq, market=market)
        if report.n_bars == 0:
            console.print(f"[yellow]no {freq} bars{' for ' + market if market else ''} in {st.root}[/]")
        table = Table(title=f"data check: {st.root} ({freq}, {report.n_symbols} symbols, {report.n_bars:,} bars)")
        table.add_column("kind")
        table.add_column("warnings", justify="right")
        for kind, count in report.summary.items():
            table.add_row(kind, f"{count:,}", style=None if count == 0 else "yellow")
        console.print(table)
        if examples and len(report.warnings):
            shown = report.examples(examples)
            ex = Table(title=f"{len(shown)} of {len(report.warnings):,} warnings (the first of each kind)")
            for col in ("symbol", "ts", "kind", "detail"):
                ex.add_column(col)
            for row in shown.itertuples(index=False):
                ts = row.ts.date() if freq == "1d" else row.ts
                ex.add_row(row.symbol, str(ts), row.kind, row.detail)
            console.print(ex)
        if len(report.metadata):
            console.print(f"[bold]metadata[/]: {len(report.metadata)} warning(s)")
            for row in report.metadata.itertuples(index=False):
                console.print(f"  [yellow]{row.kind}[/]: {escape(row.detail)}", soft_wrap=True, highlight=False)
        if json_path is not None:
            report.write_json(json_path)
            console.print(f"report written to {json_path}")

    @app.command("embed")
    @user_errors
    def embed(
        store: StoreOption = None,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Texts per model batch.")] = 64,
        model: Annotated[str, typer.Option("--model", help="Embedding model (the packaged offline MiniLM, or a local folder).")] = "all-MiniLM-L6-v2",
        method: Annotated[str | None, typer.Option(
            "--method", help="Engine of the packaged MiniLM: onnx (default), torch, int8, onnx-int8, sentence-transformers "
                             "(int8 ones are cached under <model>+<method>).")] = None,
    ) -> None:
        """Embed the store's texts (title + body) with an offline sentence model; cached, incremental."""
        from quantlm.data.text import TextExtraMissing, embed_texts

        st = store_from(store)
        if not st.exists():
            fail(f"no quantlm store at {st.root} (create one with 'quantlm data import' or 'quantlm data synth')")
        if not st.has_table("texts"):
            console.print(f"[yellow]no texts in {st.root}: nothing to embed[/]")
        try:
            out = embed_texts(st, model_name=model, batch_size=batch_size, method=method)
        except TextExtraMissing as e:
            fail(str(e))
            return
        key = str(out["model"].iloc[0]) if len(out) else model  # the cache key: the model, + the method if vectors differ
        console.print(f"{len(out):,} text embeddings cached for {key} ({out.attrs.get('n_new', 0):,} new)")
