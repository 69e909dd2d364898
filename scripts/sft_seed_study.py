"""SFT seed / ablation study used in the #5 note (one SFT run, scored and backtested out of sample).

Usage: SEED=0 OMP_NUM_THREADS=1 python scripts/sft_seed_study.py NAME '{"text": false}'
Needs STORE (default /tmp/w/store: `quantlm data synth` + `quantlm data embed`) and PRETRAINED (default
/tmp/w/pre/model: `quantlm pretrain` with data.end 2020-12-25). Writes /tmp/w/NAME; prints RankIC,
its ratio to the oracle and the backtest metrics (2021-2024, cn, topk 50 / n_drop 5, costs on).
"""
import json
import os
import sys
import time

import pandas as pd
import torch

from quantlm.backtest.engine import BacktestConfig, backtest_from_store
from quantlm.backtest.metrics import compute_metrics
from quantlm.data.store import Store
from quantlm.features.labels import forward_returns
from quantlm.finetune import SFTConfig, score_model, train_sft
from quantlm.finetune.config import parse_section

torch.set_num_threads(1)

over = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
cfg = parse_section(SFTConfig, over, "cli")
st = Store(os.environ.get('STORE', '/tmp/w/store'))
t=time.time()
run = train_sft(cfg, st, f'/tmp/w/{sys.argv[1]}', os.environ.get('PRETRAINED', '/tmp/w/pre/model'), '2020-12-24', seed=int(os.environ.get('SEED', '0')), progress=False)
print('train s', time.time()-t)
t=time.time()
sc = score_model(run/'model', st, '2021-01-01', '2024-12-31')
print('score s', time.time()-t, len(sc))
bars = st.bars(freq='1d')
lab = forward_returns(bars)
m = sc.merge(lab, on=['symbol','ts']).dropna()
ric = m.groupby('ts').apply(lambda g: g['score'].rank().corr(g['label'].rank())).mean()
orc = st.read_table('oracle')
m2 = orc.merge(lab, on=['symbol','ts'])
m2 = m2[m2.ts>='2021-01-01'].dropna()
oric = m2.groupby('ts').apply(lambda g: g['expected_return'].rank().corr(g['label'].rank())).mean()
m3 = sc.merge(orc, on=['symbol','ts'])
cor = m3.groupby('ts').apply(lambda g: g['score'].rank().corr(g['expected_return'].rank())).mean()
print(json.dumps({'oos_rank_ic': ric, 'oracle_rank_ic': oric, 'ratio': ric/oric, 'corr_with_oracle': cor}))
cfgb = BacktestConfig(market='cn', strategy='topk', topk=50, n_drop=5, costs=True, benchmark='000300.SH',
                      start=pd.Timestamp('2021-01-04'), end=pd.Timestamp('2024-12-31'))
res = backtest_from_store(sc, st, cfgb)
print(json.dumps({'name': sys.argv[1], 'seed': os.environ.get('SEED', '0'), 'rank_ic': ric,
                  'metrics': {k: v for k, v in compute_metrics(res, sc, lab, market='cn').items() if k in ('sharpe', 'annual_excess_return', 'max_drawdown', 'rank_ic')}}, default=float))
