"""A self-contained HTML report of one backtest (plotly, works offline: plotly.js is inlined once).

Sections: key metrics, gates, equity and excess equity against the benchmark, drawdown, monthly
returns, IC series and distribution, turnover and exposure, and the baselines side by side. Hedged
configs (`BacktestConfig.hedge`): the cards and gates are the deployed (hedged) book's, the equity
and drawdown charts add its curve, and a table shows every run's long-only and hedged book.
Metrics are fractions internally and shown as percentages where marked "%".

Intraday results (several bars per date): the equity, excess, drawdown and exposure charts plot
every bar at its full time stamp; monthly returns compound the bar returns of each month; the
turnover chart shows daily turnover (the `turnover` metric's definition, one bar per day); the IC
charts show one point per bar (the IC series' time stamps), with a 20-bar rolling mean.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
import pandas as pd

from quantlm.backtest.metrics import benchmark_returns, drawdown_series, infer_freq, is_intraday, session_turnover

GREEN, RED, BLUE, GREY, ORANGE = "#1a9850", "#d73027", "#2c7fb8", "#888888", "#f28e2b"
PALETTE = ["#2c7fb8", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]
PERCENT_KEYS = {"total_return", "annual_return", "annual_volatility", "benchmark_return", "annual_excess_return",
                "excess_return_arithmetic", "max_drawdown", "daily_win_rate", "directional_accuracy", "turnover",
                "pick_hit_rate"}
HEADLINE = [("annual_return", "Annual return"), ("annual_excess_return", "Excess vs benchmark"),
            ("sharpe", "Sharpe"), ("information_ratio", "Information ratio"), ("max_drawdown", "Max drawdown"),
            ("ic", "IC"), ("rank_ic", "Rank IC"), ("directional_accuracy", "Directional acc."),
            ("pick_hit_rate", "Picks beat bench"), ("turnover", "Daily turnover"), ("total_costs", "Total costs")]
COMPARE = [("annual_return", "Annual ret."), ("annual_excess_return", "Excess"), ("sharpe", "Sharpe"),
           ("information_ratio", "IR"), ("max_drawdown", "Max DD"), ("ic", "IC"), ("rank_ic", "Rank IC"),
           ("directional_accuracy", "Dir. acc."), ("pick_hit_rate", "Pick hit"), ("turnover", "Turnover"),
           ("max_consecutive_losing_days", "Max losing run")]
BOOK_COLUMNS = [("annual_return", "Annual ret."), ("annual_excess_return", "Excess"), ("sharpe", "Sharpe"),
                ("max_drawdown", "Max DD"), ("max_consecutive_losing_days", "Max losing run"),
                ("annual_volatility", "Volatility"), ("total_costs", "Total costs")]

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#222}
main{max-width:1320px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 10px;color:#333}
.sub{color:#666;font-size:13px;margin-bottom:18px}
.cards{display:grid;grid-template-columns:repeat(5,1fr);gap:12px}
.card{background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.card .k{font-size:12px;color:#777;text-transform:uppercase;letter-spacing:.03em}
.card .v{font-size:24px;font-weight:600;margin-top:4px}
.pos{color:#1a9850} .neg{color:#d73027}
.panel{background:#fff;border-radius:8px;padding:8px 12px;box-shadow:0 1px 2px rgba(0,0,0,.08);margin-bottom:14px}
.row{display:grid;grid-template-columns:1fr 1fr;gap:14px}
table{border-collapse:collapse;width:100%;font-size:13px;background:#fff}
th,td{padding:6px 10px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#fafafa;color:#555;font-weight:600} td:first-child,th:first-child{text-align:left}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600;font-size:12px}
.pass{background:#1a9850} .fail{background:#d73027}
.verdict{font-size:14px;margin:6px 0 10px}
.foot{color:#888;font-size:12px;margin-top:24px}
"""


def fmt(key: str, value: Any) -> str:
    """A metric for display: percentages for fractions, 2-3 decimals otherwise, '-' if missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    v = float(value)
    if key in PERCENT_KEYS:
        return f"{v * 100:.2f}%"
    if key in ("ic", "rank_ic", "icir", "rank_icir"):
        return f"{v:.4f}"
    if key.startswith("n_") or key == "max_consecutive_losing_days":
        return f"{v:,.0f}"
    if key == "total_costs":
        return f"{v:,.0f}"
    return f"{v:.2f}"


def _sign_class(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or key in ("turnover", "total_costs"):
        return ""
    if key == "max_drawdown":
        return "neg" if value < -0.1 else ""
    return "pos" if value > 0 else "neg" if value < 0 else ""


def _figure_html(fig, div_id: str) -> str:
    import plotly.io as pio

    fig.update_layout(template="plotly_white", margin=dict(l=60, r=20, t=70, b=40), font=dict(size=12),
                      title=dict(x=0.01, xanchor="left", y=0.98, yanchor="top", font=dict(size=15)),
                      legend=dict(orientation="h", yanchor="bottom", y=1.01, xanchor="right", x=1))
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def _wealth(returns: pd.Series) -> pd.Series:
    return (1.0 + returns.fillna(0.0)).cumprod()


def equity_figure(result, baselines: dict[str, Any] | None = None):
    """Strategy and benchmark growth of 1 (top) and excess wealth strategy / benchmark (bottom)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32], vertical_spacing=0.06,
                        subplot_titles=("Growth of 1", "Excess: strategy / benchmark"))
    wealth = _wealth(result.returns())
    fig.add_trace(go.Scatter(x=wealth.index, y=wealth, name="strategy", line=dict(color=BLUE, width=2)), 1, 1)
    rb = benchmark_returns(result)
    if rb is not None:
        bench = _wealth(rb)
        fig.add_trace(go.Scatter(x=bench.index, y=bench, name="benchmark", line=dict(color=GREY, width=1.5)), 1, 1)
        excess = wealth / bench
        fig.add_trace(go.Scatter(x=excess.index, y=excess, name="excess", line=dict(color=ORANGE, width=1.5),
                                 fill="tozeroy", fillcolor="rgba(242,142,43,0.10)", showlegend=False), 2, 1)
        fig.update_yaxes(range=[float(excess.min()) * 0.98, float(excess.max()) * 1.02], row=2, col=1)
    hedged = getattr(result, "hedged", None)
    if hedged is not None:
        hw = _wealth(hedged.returns())
        fig.add_trace(go.Scatter(x=hw.index, y=hw, name=f"{hedged.book} book", line=dict(color="#59a14f", width=2)), 1, 1)
    fig.add_hline(y=1.0, line=dict(color="#bbb", width=1, dash="dot"), row=2, col=1)
    fig.update_layout(height=520, hovermode="x unified")
    return fig


def drawdown_figure(result):
    """Drawdown from the running peak, in percent (<= 0)."""
    import plotly.graph_objects as go

    dd = drawdown_series(result.returns()) * 100
    fig = go.Figure(go.Scatter(x=dd.index, y=dd, fill="tozeroy", line=dict(color=RED, width=1),
                               fillcolor="rgba(215,48,39,0.25)", name="long-only"))
    hedged = getattr(result, "hedged", None)
    if hedged is not None:
        hd = drawdown_series(hedged.returns()) * 100
        fig.add_trace(go.Scatter(x=hd.index, y=hd, line=dict(color="#59a14f", width=1.5), name=f"{hedged.book} book"))
    fig.update_layout(height=260, title="Drawdown (%)", yaxis_ticksuffix="%", showlegend=hedged is not None)
    return fig


def monthly_returns(returns: pd.Series) -> pd.DataFrame:
    """Compounded simple returns per calendar month: rows years, columns 1..12 (fractions)."""
    r = returns.fillna(0.0)
    idx = pd.DatetimeIndex(r.index)
    grouped = (1.0 + r).groupby([idx.year, idx.month]).prod() - 1.0
    table = grouped.unstack()
    return table.reindex(columns=range(1, 13))


def monthly_figure(result):
    """Heatmap of monthly returns (%), diverging around 0."""
    import plotly.graph_objects as go

    table = monthly_returns(result.returns()) * 100
    z = table.to_numpy()
    bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    text = [[("" if np.isnan(v) else f"{v:.1f}") for v in row] for row in z]
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    fig = go.Figure(go.Heatmap(z=z, x=months, y=[str(y) for y in table.index], text=text, texttemplate="%{text}",
                               colorscale="RdYlGn", zmid=0, zmin=-bound, zmax=bound, xgap=2, ygap=2,
                               colorbar=dict(title="%", thickness=12), hovertemplate="%{y} %{x}: %{z:.2f}%<extra></extra>"))
    fig.update_layout(height=110 + 34 * max(1, len(table)), title="Monthly returns (%)", yaxis_autorange="reversed")
    return fig


def ic_figures(ic: pd.DataFrame):
    """(rank IC per time stamp with a 20-step rolling mean, histogram of IC and rank IC).

    A step is a session for daily data and a bar for intraday data (the IC series' own time stamps).
    """
    import plotly.graph_objects as go

    unit = "bar" if is_intraday(ic.index) else "session"
    series = go.Figure()
    series.add_trace(go.Bar(x=ic.index, y=ic["rank_ic"], name="rank IC", marker_color="rgba(44,127,184,0.45)"))
    series.add_trace(go.Scatter(x=ic.index, y=ic["rank_ic"].rolling(20, min_periods=5).mean(), name=f"20-{unit} mean",
                                line=dict(color=BLUE, width=2)))
    series.add_trace(go.Scatter(x=ic.index, y=ic["ic"].rolling(20, min_periods=5).mean(), name=f"IC 20-{unit} mean",
                                line=dict(color=ORANGE, width=1.5)))
    series.update_layout(height=320, title=f"Rank IC per {unit}", bargap=0)
    hist = go.Figure()
    hist.add_trace(go.Histogram(x=ic["ic"], name="IC", opacity=0.6, marker_color=ORANGE, nbinsx=40))
    hist.add_trace(go.Histogram(x=ic["rank_ic"], name="rank IC", opacity=0.6, marker_color=BLUE, nbinsx=40))
    hist.add_vline(x=0, line=dict(color="#555", width=1))
    hist.update_layout(height=320, title="IC distribution", barmode="overlay")
    return series, hist


def activity_figure(result):
    """Daily turnover (buys + sells over the previous day's equity, %; one bar per day also for
    intraday results) and gross exposure (% of equity, per bar)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Turnover (% of equity, daily)", "Gross exposure (% of equity)"))
    turnover = session_turnover(result)
    exposure = getattr(result, "exposure", None)
    if turnover is not None and len(turnover):
        fig.add_trace(go.Bar(x=turnover.index, y=turnover * 100, marker_color=BLUE, name="turnover"), 1, 1)
    if exposure is not None and len(exposure):
        fig.add_trace(go.Scatter(x=exposure.index, y=exposure * 100, line=dict(color="#59a14f"), name="exposure",
                                 fill="tozeroy", fillcolor="rgba(89,161,79,0.12)"), 1, 2)
    fig.update_layout(height=300, showlegend=False, bargap=0)
    return fig


def baselines_figure(runs: dict[str, Any]):
    """Growth of 1 of every run on one chart (each run's deployed book)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, res) in enumerate(runs.items()):
        w = _wealth(res.returns())
        fig.add_trace(go.Scatter(x=w.index, y=w, name=name, line=dict(color=PALETTE[i % len(PALETTE)],
                                                                      width=2.5 if i == 0 else 1.5)))
    fig.update_layout(height=420, title="Growth of 1: strategy and baselines", hovermode="x unified")
    return fig


def _deployed(result):
    """The book a result deploys: its hedged book when it has one."""
    hedged = getattr(result, "hedged", None)
    return hedged if hedged is not None else result


def _cards(metrics: dict[str, float]) -> str:
    cells = []
    for key, label in HEADLINE:
        v = metrics.get(key)
        cells.append(f'<div class="card"><div class="k">{label}</div>'
                     f'<div class="v {_sign_class(key, v)}">{fmt(key, v)}</div></div>')
    return f'<div class="cards">{"".join(cells)}</div>'


def gates_html(table: dict[str, dict[str, Any]]) -> str:
    """The gates as an HTML table with pass/fail badges and an overall verdict."""
    rows = []
    for name, row in table.items():
        badge = '<span class="badge pass">PASS</span>' if row["passed"] else '<span class="badge fail">FAIL</span>'
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{fmt(name, row['value'])}</td>"
                    f"<td>{row.get('op', '')} {fmt(name, row['threshold'])}</td><td>{badge}</td></tr>")
    passed = sum(r["passed"] for r in table.values())
    verdict = (f'<div class="verdict"><b>{passed} of {len(table)}</b> gates passed'
               f'{" - all clear" if passed == len(table) else ""}.</div>')
    return (f'{verdict}<table><tr><th>gate</th><th>value</th><th>threshold</th><th>result</th></tr>'
            f'{"".join(rows)}</table>')


def comparison_html(runs: dict[str, dict[str, float]]) -> str:
    """One row per run (strategy first), key metrics as columns; the best value per column in bold."""
    head = "".join(f"<th>{label}</th>" for _, label in COMPARE)
    best: dict[str, float] = {}
    for key, _ in COMPARE:
        vals = [m.get(key) for m in runs.values()]
        vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if vals and key not in ("turnover",):
            best[key] = min(vals) if key == "max_consecutive_losing_days" else max(vals)
    rows = []
    for name, m in runs.items():
        cells = []
        for key, _ in COMPARE:
            v = m.get(key)
            text = fmt(key, v)
            cells.append(f"<td><b>{text}</b></td>" if key in best and v == best[key] and len(runs) > 1 else f"<td>{text}</td>")
        rows.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>run</th>{head}</tr>{''.join(rows)}</table>"


def books_html(books: dict[str, dict[str, dict[str, float]]], deployed: str) -> str:
    """Each run's long-only and hedged book side by side; the book its gates judged is marked (the
    deployed `deployed` book where the run has it, else its only book, e.g. the benchmark's)."""
    head = "".join(f"<th>{label}</th>" for _, label in BOOK_COLUMNS)
    rows = []
    for run, by_book in books.items():
        for book, m in by_book.items():
            mark = " (gated)" if book == list(by_book)[-1] else ""
            cells = "".join(f"<td>{fmt(k, m.get(k))}</td>" for k, _ in BOOK_COLUMNS)
            rows.append(f"<tr><td>{html.escape(run)}</td><td>{html.escape(book)}{mark}</td>{cells}</tr>")
    return f"<table><tr><th>run</th><th>book</th>{head}</tr>{''.join(rows)}</table>"


def walk_forward_html(summary: pd.DataFrame, label: str = "") -> str:
    """Mean, std, min and max across folds and seeds of the key metrics (a `WalkForwardResult.summary`)."""
    rows = []
    for key, text in COMPARE:
        if key in summary.index:
            row = summary.loc[key]
            rows.append(f"<tr><td>{text}</td>" + "".join(f"<td>{fmt(key, row.get(c))}</td>"
                                                           for c in ("mean", "std", "min", "max")) + "</tr>")
    caption = f"<div class='verdict'>{html.escape(label)}</div>" if label else ""
    return f"{caption}<table><tr><th>metric</th><th>mean</th><th>std</th><th>min</th><th>max</th></tr>{''.join(rows)}</table>"


def render_report(result, metrics: dict[str, float], gates_table: dict[str, dict[str, Any]] | None = None,
                  baselines: dict[str, tuple[Any, dict[str, float]]] | None = None, ic_series: pd.DataFrame | None = None,
                  title: str = "quantlm backtest report", name: str = "strategy",
                  walk_forward: tuple[str, pd.DataFrame] | None = None,
                  books: dict[str, dict[str, dict[str, float]]] | None = None, book: str = "long_only") -> str:
    """The full report as one self-contained HTML string (plotly.js inlined; no network needed).

    result: a BacktestResult; metrics: its `compute_metrics` dict; gates_table: `evaluate_gates`
    output; baselines: {name: (BacktestResult, metrics)} shown side by side with the strategy;
    ic_series: `metrics.ic_series(scores, labels)` for the IC charts; name: the strategy's label;
    walk_forward: (caption, `WalkForwardResult.summary`) shown as a spread-across-folds-and-seeds table;
    books: {run: {book: metrics}} (long-only and hedged books) shown side by side; book: the deployed
    book, whose metrics `metrics` and `gates_table` are (cards and gates).
    """
    from plotly.offline import get_plotlyjs

    equity = result.equity
    config = getattr(result, "config", None)
    period = f"{pd.Timestamp(equity.index[0]):%Y-%m-%d} to {pd.Timestamp(equity.index[-1]):%Y-%m-%d}" if len(equity) else "empty"
    desc = []
    if config is not None:
        for key in ("market", "strategy", "topk", "n_drop", "fill", "costs", "benchmark", "hedge"):
            if hasattr(config, key) and getattr(config, key) is not None:
                desc.append(f"{key}={getattr(config, key)}")
    n_days = len(pd.DatetimeIndex(equity.index).normalize().unique())
    bars = f" ({len(equity)} {infer_freq(equity.index)} bars)" if is_intraday(equity.index) else ""
    sub = f"{period} &middot; {n_days} sessions{bars} &middot; {html.escape(', '.join(desc))}"
    parts = [f"<h1>{html.escape(title)}</h1><div class='sub'>{sub}</div>", _cards(metrics)]
    if gates_table:
        parts.append(f"<h2>Gates (judged on the {html.escape(book)} book)</h2><div class='panel'>{gates_html(gates_table)}</div>")
    if books and any(len(b) > 1 for b in books.values()):
        parts.append("<h2>Books: long-only and hedged</h2><div class='panel'>"
                     f"{books_html(books, book)}</div>")
    parts.append(f"<h2>Equity</h2><div class='panel'>{_figure_html(equity_figure(result), 'fig-equity')}</div>")
    parts.append(f"<div class='panel'>{_figure_html(drawdown_figure(result), 'fig-drawdown')}</div>")
    deployed = _deployed(result)
    month_title = f"Returns by month ({html.escape(book)} book)" if deployed is not result else "Returns by month"
    parts.append(f"<h2>{month_title}</h2><div class='panel'>{_figure_html(monthly_figure(deployed), 'fig-monthly')}</div>")
    if ic_series is not None and len(ic_series):
        s, h = ic_figures(ic_series)
        parts.append("<h2>Prediction quality</h2><div class='row'>"
                     f"<div class='panel'>{_figure_html(s, 'fig-ic')}</div>"
                     f"<div class='panel'>{_figure_html(h, 'fig-ic-hist')}</div></div>")
    parts.append(f"<h2>Trading activity</h2><div class='panel'>{_figure_html(activity_figure(result), 'fig-activity')}</div>")
    if baselines:
        runs = {name: metrics} | {k: m for k, (_, m) in baselines.items()}
        curves = {name: deployed} | {k: _deployed(r) for k, (r, _) in baselines.items()}
        parts.append(f"<h2>Against the baselines</h2><div class='panel'>{comparison_html(runs)}</div>"
                     f"<div class='panel'>{_figure_html(baselines_figure(curves), 'fig-baselines')}</div>")
    if walk_forward is not None and len(walk_forward[1]):
        parts.append(f"<h2>Walk-forward spread</h2><div class='panel'>{walk_forward_html(walk_forward[1], walk_forward[0])}</div>")
    parts.append("<div class='foot'>Returns are simple daily returns (intraday results: each date's last bar "
                 "equity); annual figures compound (CAGR); max drawdown is a negative fraction of the running peak, "
                 "on the bar equity. Definitions: quantlm.backtest.metrics.</div>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head>"
            f"<body><main>{''.join(parts)}</main></body></html>")


__all__ = ["render_report", "monthly_returns", "gates_html", "comparison_html", "books_html", "walk_forward_html", "fmt"]
