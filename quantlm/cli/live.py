"""`quantlm live replay` and `quantlm orders`: the live engine on stored bars, and next-session order files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantlm.cli.common import StoreOption, console, fail, store_from, user_errors

ConfigOption = Annotated[Path, typer.Option("--config", help="Live config (YAML), e.g. configs/live.yaml.")]


def register(app: typer.Typer) -> None:
    """Add the `live` sub-app and `orders` to `app`."""
    live_app = typer.Typer(help="Run the live engine: paper sessions over stored bars.", no_args_is_help=True)
    app.add_typer(live_app, name="live")

    @live_app.command("replay")
    @user_errors
    def replay(
        config: ConfigOption,
        out: Annotated[Path, typer.Option("--out", help="Session folder: journal.sqlite, orders.csv, fills.csv, "
                                          "equity.csv, risk_events.csv, model_events.csv, metrics.json.")],
        start: Annotated[str, typer.Option("--start", help="First session traded (inclusive).")],
        end: Annotated[str, typer.Option("--end", help="Last session traded (inclusive).")],
        store: StoreOption = None,
        from_run: Annotated[Path | None, typer.Option("--from-run", help="Take the primary (distilled student) and "
                                                      "backup (SFT teacher) models from this `quantlm run` folder.")] = None,
    ) -> None:
        """A paper session over stored bars on a simulated clock; re-run with the same --out to resume."""
        from quantlm.live.config import load_live_config
        from quantlm.live.replay import run_replay, use_run_models

        st = store_from(store)
        if not st.exists():
            fail(f"no quantlm store at {st.root} (create one with 'quantlm data import' or 'quantlm data synth')")
        cfg = load_live_config(config)
        if from_run is not None:
            cfg = use_run_models(cfg, from_run)
        result = run_replay(cfg, st, start, end, out)
        m = result["metrics"]
        console.print(f"live replay {start}..{end}: {int(m.get('n_orders') or 0)} orders, {int(m.get('n_fills') or 0)} "
                      f"fills; final equity {m.get('final_equity') or float('nan'):,.2f}; decision p50 "
                      f"{m.get('decision_ms_p50') or float('nan'):.2f} ms, p99 {m.get('decision_ms_p99') or float('nan'):.2f} ms")
        events = result.get("risk_events", {})
        console.print("risk events: " + (", ".join(f"{k} x{v}" for k, v in sorted(events.items())) or "none"),
                      soft_wrap=True)
        console.print(f"wrote {out}", soft_wrap=True)

    @app.command("orders")
    @user_errors
    def orders(
        config: ConfigOption,
        date: Annotated[str, typer.Option("--date", help="Decide at this session's close; the orders are for the "
                                          "next session.")],
        out: Annotated[Path, typer.Option("--out", help="Order file (CSV; a JSON copy is written beside it).")],
        store: StoreOption = None,
        start: Annotated[str | None, typer.Option("--start", help="Paper positions are built by replaying from this "
                                                  "session (default: one year before --date).")] = None,
        journal: Annotated[Path | None, typer.Option("--journal", help="Continue this live session's journal instead "
                                                     "of a fresh paper replay.")] = None,
    ) -> None:
        """The order list for the session after --date, as the FileBroker writes it (whole lots, limit prices)."""
        from quantlm.live.config import load_live_config
        from quantlm.live.next_orders import next_session_orders

        st = store_from(store)
        if not st.exists():
            fail(f"no quantlm store at {st.root}")
        cfg = load_live_config(config)
        path, rows = next_session_orders(cfg, st, date, out, start=start, journal=journal)
        console.print(f"{len(rows)} order(s) for the session after {date}", soft_wrap=True)
        for r in rows[:20]:
            console.print(f"  {r['side']:5s} {r['symbol']:10s} {r['shares']:>10,.0f} @ {r['limit_price']:.2f}  "
                          f"({r['reason']}, {r['model']}, score {r['score']:.4f})", soft_wrap=True)
        console.print(f"wrote {path}", soft_wrap=True)
