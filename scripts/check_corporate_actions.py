"""Does the backtest honour dividends and bonus issues? Equal weights, rebalanced daily, no costs.

    .venv/bin/python scripts/check_corporate_actions.py --store data/mystore \\
        --symbols 600000.SH 000651.SZ 600519.SH --start 2014-01-02 --end 2021-12-31
    .venv/bin/python scripts/check_corporate_actions.py --synthetic   # a vendor folder built here

Prints the final equity multiple of `quantlm backtest --strategy weights --no-costs` under each
`--corporate-actions` mode beside the same portfolio computed on adjusted closes (close x adj_factor,
daily rebalanced, held from the first fill). `off` is the old raw-share behaviour.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from quantlm.backtest.engine import BacktestConfig, run_backtest
    from quantlm.data.importers import import_paths
    from quantlm.data.store import Store

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path)
    p.add_argument("--symbols", nargs="+", default=["600000.SH", "000651.SZ", "600519.SH"])
    p.add_argument("--start")
    p.add_argument("--end")
    p.add_argument("--synthetic", action="store_true", help="build a vendor folder (2014-2021) and import it first")
    args = p.parse_args()
    if args.synthetic:
        from tests.vendor_folder import make_vendor_folder

        tmp = Path(tempfile.mkdtemp())
        make_vendor_folder(tmp / "files", start="2014-01-02", end="2021-12-31")
        store = Store(tmp / "store")
        print(import_paths([tmp / "files"], store, market="cn", bare_codes="infer"))
        args.symbols = ["600519.SH", "002594.SZ", "600036.SH"]  # two with a 10-for-10 bonus issue
    elif args.store is None:
        p.error("--store or --synthetic")
    else:
        store = Store(args.store)
    bars = store.bars(args.symbols, start=args.start, end=args.end)
    if bars["adj_factor"].isna().all():
        sys.exit("these bars carry no adj_factor: nothing to check")
    weights = bars[["symbol", "ts"]].assign(weight=1.0 / len(args.symbols))
    adj = (bars["close"] * bars["adj_factor"].fillna(1.0)).groupby([bars["ts"], bars["symbol"]]).first().unstack()
    daily = adj.pct_change().mean(axis=1).iloc[2:]  # first fill at the second session's open
    want = float(np.prod(1 + daily.fillna(0.0)))
    print(f"{len(args.symbols)} symbols, {adj.index[0].date()}..{adj.index[-1].date()}, "
          f"{int((bars['adj_factor'].diff().fillna(0) != 0).sum())} adj_factor steps")
    print(f"adjusted closes, equal weight, daily rebalanced: {want:.3f}x")
    for mode in ("cash", "reinvest", "off"):
        cfg = BacktestConfig(strategy="weights", costs=False, participation=0.0, corporate_actions=mode)
        r = run_backtest(weights, bars, cfg)
        got = float(r.equity.iloc[-1] / r.equity.iloc[1])
        print(f"backtest --corporate-actions {mode:8s}: {got:.3f}x ({got / want - 1:+.2%} vs adjusted)")


if __name__ == "__main__":
    main()
