"""`quantlm serve` (the trading service) and `quantlm keys add | list | remove` (its API keys)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from quantlm.cli.common import StoreOption, console, fail, store_from, user_errors

KeysOption = Annotated[Path, typer.Option("--keys", help="API keys file (JSON, or YAML by extension); only "
                                          "salted hashes are stored, mode 0600.")]


def register(app: typer.Typer) -> None:
    """Add `serve` and the `keys` sub-app to `app`."""
    keys_app = typer.Typer(help="API keys of the trading service (viewer, trader, reviewer, admin).",
                           no_args_is_help=True)
    app.add_typer(keys_app, name="keys")

    @keys_app.command("add")
    @user_errors
    def keys_add(
        name: Annotated[str, typer.Option("--name", help="Who holds the key (shown in the journal as the actor).")],
        role: Annotated[str, typer.Option("--role", help="viewer | trader | reviewer | admin.")],
        keys: KeysOption,
    ) -> None:
        """Create a key and print it ONCE (only its hash is stored)."""
        from quantlm.service.auth import KeyStore

        key = KeyStore(keys).add(name, role)
        console.print(f"added {role} key for {name} to {keys}; it is shown only now:", soft_wrap=True)
        print(key)

    @keys_app.command("list")
    @user_errors
    def keys_list(keys: KeysOption) -> None:
        """Names and roles of the keys (nothing secret)."""
        from quantlm.service.auth import KeyStore

        rows = KeyStore(keys).listing()
        if not rows:
            console.print(f"no keys in {keys}", soft_wrap=True)
        for r in rows:
            console.print(f"{r['name']:24s} {r['role']:9s} {r['created']}", soft_wrap=True, highlight=False)

    @keys_app.command("remove")
    @user_errors
    def keys_remove(name: Annotated[str, typer.Option("--name", help="The key's name.")], keys: KeysOption) -> None:
        """Revoke a key (its dashboard sessions end too; a running service sees it at once)."""
        from quantlm.service.auth import KeyStore

        if not KeyStore(keys).remove(name):
            fail(f"no key named {name!r} in {keys}")
        console.print(f"removed the key of {name}", soft_wrap=True)

    @app.command("serve")
    @user_errors
    def serve(
        config: Annotated[Path, typer.Option("--config", help="Live config (YAML), e.g. configs/live.yaml.")],
        out: Annotated[Path, typer.Option("--out", help="Session folder (journal.sqlite ...); restart with the "
                                          "same folder to resume.")],
        keys: KeysOption,
        store: StoreOption = None,
        host: Annotated[str, typer.Option("--host", help="Address to bind (default: localhost only).")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8700,
        mode: Annotated[str, typer.Option("--mode", help="replay: stored bars on a simulated clock; push: bars "
                                          "arrive through POST /api/v1/bars.")] = "replay",
        start: Annotated[str | None, typer.Option("--start", help="Replay: first session traded.")] = None,
        end: Annotated[str | None, typer.Option("--end", help="Replay: last session traded.")] = None,
        speed: Annotated[float, typer.Option("--speed", min=0.0, help="Replay: bars per second (0: only "
                                             "POST /api/v1/clock/step advances the clock).")] = 0.0,
        from_run: Annotated[Path | None, typer.Option("--from-run", help="Primary (distilled student) and backup "
                                                      "(SFT teacher) from this `quantlm run` folder.")] = None,
        metrics_public: Annotated[bool, typer.Option("--metrics-public", help="Serve /metrics to non-local "
                                                     "clients too.")] = False,
        read_staleness_ms: Annotated[float, typer.Option("--read-staleness-ms", min=0.0, help="Reads may lag other "
                                                         "users' changes by up to this many ms (0: always current; "
                                                         "a user always sees their own changes).")] = 0.0,
    ) -> None:
        """Run the live engine and its API (+ dashboard, /metrics) in one process. Secrets: API keys live
        in --keys (hashed); the session-cookie secret comes from $QUANTLM_SECRET (else random per start)."""
        from quantlm.live.config import load_live_config
        from quantlm.live.replay import use_run_models
        from quantlm.service.auth import KeyStore

        if mode not in ("replay", "push"):
            fail(f"--mode {mode!r}: use replay or push")
        if not keys.exists():
            fail(f"no keys file at {keys}: create one with `quantlm keys add --name NAME --role admin --keys {keys}`")
        ks = KeyStore(keys)
        if not any(e["role"] == "admin" for e in ks.entries):
            fail(f"{keys} has no admin key: add one with `quantlm keys add --name NAME --role admin --keys {keys}`")
        st = store_from(store)
        if not st.exists():
            fail(f"no quantlm store at {st.root} (create one with 'quantlm data import' or 'quantlm data synth')")
        cfg = load_live_config(config)
        if from_run is not None:
            cfg = use_run_models(cfg, from_run)
        import uvicorn

        from quantlm.service.app import create_app
        from quantlm.service.state import LiveService

        svc = LiveService(cfg, st, out, mode=mode, start=start, end=end, speed=speed,
                          read_staleness_ms=read_staleness_ms)
        app = create_app(svc, ks, metrics_public=metrics_public)
        if host not in ("127.0.0.1", "localhost", "::1"):
            console.print(f"warning: binding {host}: the API is reachable from other machines", soft_wrap=True)
        console.print(f"quantlm serve: {mode} mode, http://{host}:{port}/docs (API), http://{host}:{port}/ "
                      "(dashboard)", soft_wrap=True)
        # the event loop and the engine's worker thread share the GIL: hand it over every 0.5 ms instead of
        # the default 5 ms, so requests do not wait behind an order's Python work for a whole slice
        sys.setswitchinterval(0.0005)
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=True, server_header=False)
