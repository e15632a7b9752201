"""config.eval.select picks the best epoch: of a single run and of each model of a sweep."""
import json
import logging
import re

import numpy as np
import pytest

from vaecf import checkpoints, sweep, train
from vaecf.workdir import read_metrics
from test_train import embedded_split, small_config  # noqa: F401  (the fixture)

# On the embedded data at this rate, validation Recall@50 peaks at epoch 5 and NDCG@100
# at epoch 6, each by about 0.01: the two selections must pick different epochs.
LR, EPOCHS = 7e-3, 6
METRICS = ('recall@20', 'recall@50', 'ndcg@100', 'ndcg@10')


def select_config(tmp_path, select):
  c = small_config(tmp_path, epochs=EPOCHS, learning_rate=LR)
  c.eval.metrics, c.eval.select = METRICS, select
  return c


def argmax_epoch(rows, key):
  """The loop's choice: the first epoch of the highest value."""
  return rows[int(np.argmax([r[key] for r in rows]))]['epoch']


@pytest.fixture(scope='module')
def single_runs(tmp_path_factory, embedded_split):
  """{select: (results, metrics rows, workdir, epoch lines)} of one model selected by
  NDCG@100 and by Recall@50."""
  tmp = tmp_path_factory.mktemp('select')
  out = {}
  for select in ('ndcg@100', 'recall@50'):
    wd = tmp / select
    lines = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda r: lines.append(r.getMessage())
    logger = logging.getLogger('vaecf')
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
      res = train.train_and_evaluate(select_config(tmp, select), wd, split=embedded_split)
    finally:
      logger.removeHandler(handler)
      logger.setLevel(old_level)
    out[select] = (res, read_metrics(wd), wd, lines)
  return out


def test_selecting_by_recall_picks_the_recall_peak_not_the_ndcg_peak(single_runs):
  by_ndcg, by_recall = single_runs['ndcg@100'], single_runs['recall@50']
  # Both runs train the same model: the selection metric changes nothing but the choice.
  assert [r['val_ndcg@100'] for r in by_ndcg[1]] == [r['val_ndcg@100'] for r in by_recall[1]]
  rows = by_recall[1]
  peaks = {m: argmax_epoch(rows, f'val_{m}') for m in ('ndcg@100', 'recall@50')}
  assert peaks['ndcg@100'] != peaks['recall@50'], peaks  # the case this test is about
  for select, (res, rows, wd, _) in single_runs.items():
    key = f'val_{select}'
    assert res['select'] == select
    assert res['best_epoch'] == peaks[select] == argmax_epoch(rows, key)
    assert res[key] == max(r[key] for r in rows)
    assert json.loads((wd / 'results.json').read_text()) == res
    # The best epoch's checkpoint is the one kept, and it records the best by `select`.
    mngr = checkpoints.manager(wd)
    assert res['best_epoch'] in mngr.all_steps()
    assert checkpoints.record_at(mngr, mngr.latest_step())['best'] == {
        'epoch': res['best_epoch'], 'step': res['best_step'], key: res[key]}
  assert 'val_ndcg@100' not in single_runs['recall@50'][0]
  # The test scores are the chosen epoch's, so they differ between the two selections.
  assert single_runs['ndcg@100'][0]['test'] != single_runs['recall@50'][0]['test']


def test_the_epoch_line_and_results_table_name_the_selection_and_every_metric(single_runs):
  res, rows, _, lines = single_runs['recall@50']
  epoch_lines = [l for l in lines if l.startswith('epoch ') and '|' in l]
  assert len(epoch_lines) == EPOCHS
  assert all(re.search(r'\| val recall@50 [\d.]+ \(best [\d.]+ @ \d+\) \|', l)
             for l in epoch_lines), epoch_lines
  assert f'(best {res["val_recall@50"]:.4f} @ {res["best_epoch"]})' in epoch_lines[-1]
  table = next(l for l in lines if l.startswith('test, best epoch')).splitlines()
  assert f'(val recall@50 {res["val_recall@50"]:.4f})' in table[0]
  assert [row.split()[0] for row in table[2:]] == list(METRICS)
  assert [k for k in res['test'] if not k.endswith('_se')] == list(METRICS)
  assert all(f'val_{m}' in r for r in rows for m in METRICS)


def test_a_sweep_selects_each_model_by_the_config_metric(tmp_path, embedded_split,
                                                         single_runs):
  c = select_config(tmp_path, 'recall@50')
  c.sweep.grid = f'learning_rate={LR},3e-2'
  wd = tmp_path / 'sweep'
  res = sweep.train_sweep(c, wd, split=embedded_split)
  assert json.loads((wd / 'sweep.json').read_text()) == res
  assert res['select'] == 'recall@50'
  rows = read_metrics(wd)
  for m, model in enumerate(res['models']):
    mine = [r for r in rows if r['model'] == m]
    assert model['select'] == 'recall@50' and 'val_ndcg@100' not in model
    assert model['best_epoch'] == argmax_epoch(mine, 'val_recall@50')
    assert model['val_recall@50'] == max(r['val_recall@50'] for r in mine)
  # Model 0 is the single run selected by Recall@50: the same epoch, and the test scores
  # of that epoch's parameters (the sweep's kept best), not those of the NDCG@100 peak.
  single, curve, _, _ = single_runs['recall@50']
  mine = [r for r in rows if r['model'] == 0]
  assert argmax_epoch(mine, 'val_ndcg@100') != res['models'][0]['best_epoch']
  assert res['models'][0]['best_epoch'] == single['best_epoch']
  assert res['models'][0]['val_recall@50'] == pytest.approx(single['val_recall@50'], rel=1e-5)
  assert res['models'][0]['test'] == pytest.approx(single['test'], rel=1e-5, abs=1e-7)
