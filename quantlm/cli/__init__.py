"""The `quantlm` command line: a thin layer over the library.

Each area registers its commands from its own module (`quantlm/cli/<area>.py`, a `register(app)`
function), so the CLI stays thin and areas do not step on each other. Heavy libraries (torch,
transformers, plotly, lightgbm) are imported inside commands, never at module import time.
"""

from __future__ import annotations

import typer

from quantlm.cli import backtest as _backtest
from quantlm.cli import data_check as _data_check
from quantlm.cli import data_import as _data_import
from quantlm.cli import data_meta as _data_meta
from quantlm.cli import data_synth as _data_synth
from quantlm.cli import demo as _demo
from quantlm.cli import evaluate as _evaluate
from quantlm.cli import finetune as _finetune
from quantlm.cli import live as _live
from quantlm.cli import llm as _llm
from quantlm.cli import model as _model
from quantlm.cli import plan as _plan
from quantlm.cli import run as _run
from quantlm.cli import serve as _serve
from quantlm.cli import sweep as _sweep

app = typer.Typer(
    name="quantlm",
    help="Model-based quantitative trading: data, market language models, honest backtests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Import, generate, inspect and check market data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_data_import.register(data_app)
_data_meta.register(data_app)
_data_synth.register(data_app)
_data_check.register(data_app)
_backtest.register(app)
_evaluate.register(app)
_model.register(app)
_demo.register(app)
_run.register(app)
_sweep.register(app)
_finetune.register(app)
_live.register(app)
_llm.register(app)
_serve.register(app)
_plan.register(app)
