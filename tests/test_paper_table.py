"""The comparison-table driver: stages, resumption, the table files."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from vaecf.tools import paper_table
from vaecf import baselines, train
from vaecf.config import base_config
from vaecf.data.types import Split

REPO = Path(__file__).resolve().parents[1]
TINY_GRIDS = {
    'ease': [{'lam': 1.0}, {'lam': 10.0}],
    'edlae': [{'lam': 1.0, 'p': 0.5}],
    'wmf': [{'factors': 4, 'alpha': 4.0, 'lam': 1.0, 'iters': 3, 'cg_steps': 3},
            {'factors': 4, 'alpha': 9.0, 'lam': 1.0, 'iters': 3, 'cg_steps': 3}],
    'slim': [{'l1': 1.0, 'l2': 5.0}],
    'cdae': [{'hidden': 8, 'epochs': 2, 'eval_every': 1, 'batch_size': 64,
              'fold_in_steps': 3}],
}


@pytest.fixture(scope='module')
def split():
  """Users with a taste for one of two item halves, so models can beat popularity."""
  rng = np.random.default_rng(0)
  n_items = 24
  def group(n):
    taste = rng.integers(0, 2, n)
    p = np.where((np.arange(n_items)[None, :] < 12) == (taste[:, None] == 0), 0.5, 0.05)
    return sp.csr_matrix((rng.random((n, n_items)) < p).astype(np.float32))
  tr, va, te = group(150), group(20), group(20)
  def halves(x):  # 80/20 fold-in / targets per click
    keep = sp.csr_matrix(x.multiply(sp.csr_matrix(rng.random(x.shape) < 0.8)))
    keep.eliminate_zeros()
    rest = sp.csr_matrix(x - keep)
    rest.eliminate_zeros()
    return keep, rest
  (vtr, vte), (ttr, tte) = halves(va), halves(te)
  return Split(tr, vtr, vte, ttr, tte, item_ids=np.arange(1000, 1000 + n_items),
               train_user_ids=np.arange(150), val_user_ids=np.arange(150, 170),
               test_user_ids=np.arange(170, 190))


def tiny_config(tmp_path):
  c = base_config()
  c.data.cache_dir = str(tmp_path / 'cache')
  c.model.hidden_dims = (16,)
  c.model.latent_dim = 4
  c.train.epochs = 2
  c.train.batch_size = 64
  # On data this small two epochs can tie on validation NDCG (the case that once lost the
  # best checkpoint, now covered in test_train.py); keeping two latest is harmless here.
  c.train.keep_latest = 2
  return c


def test_baselines_table_and_resumption(tmp_path, split, monkeypatch):
  wd = tmp_path / 'table'
  models = ('popularity', 'ease', 'edlae', 'wmf', 'slim')
  table = paper_table.run(tiny_config(tmp_path), wd, models=models, grids=TINY_GRIDS,
                          split=split, command='test')
  assert set(table['models']) == set(models)
  for m in models:
    r = table['models'][m]
    assert set(r['test']) >= {'recall@20', 'recall@20_se', 'recall@50_se', 'ndcg@100_se'}
    assert r['wall_seconds'] > 0 and (wd / m / 'baseline.json').exists()
  # The chosen point is the grid's best on validation, and its arrays are the saved ones.
  ease_res = json.loads((wd / 'ease' / 'result.json').read_text())
  best = max(ease_res['grid'], key=lambda g: g['val_ndcg@100'])
  assert ease_res['hparams'] == best['hparams'] == baselines.load_fitted(wd / 'ease')[0].hparams
  assert table['models']['ease']['test']['ndcg@100'] > table['models']['popularity']['test'][
      'ndcg@100']
  md = (wd / 'table.md').read_text()
  assert '| EASE |' in md and 'lam=' in md and 'Mult-VAE | Mult-DAE' in md
  saved = json.loads((wd / 'table.json').read_text())
  assert saved['models']['wmf']['hparams'] == table['models']['wmf']['hparams']

  # A finished stage is never refit; a half-done grid only fits its missing points.
  calls = []
  real_fit = baselines.fit
  monkeypatch.setattr(baselines, 'fit', lambda *a, **k: calls.append(a[2]) or real_fit(*a, **k))
  rows = (wd / 'wmf' / 'grid.jsonl').read_text().splitlines()
  (wd / 'wmf' / 'grid.jsonl').write_text(rows[0] + '\n')
  (wd / 'wmf' / 'result.json').unlink()
  again = paper_table.run(tiny_config(tmp_path), wd, models=models, grids=TINY_GRIDS,
                          split=split, command='test')
  assert calls == [TINY_GRIDS['wmf'][1]]
  assert again['models']['ease'] == table['models']['ease']
  # Killed between saving a new best and logging it: the logged best is refit once.
  meta = json.loads((wd / 'ease' / 'baseline.json').read_text())
  meta['info']['grid_point'] = {'lam': 123.0}
  (wd / 'ease' / 'baseline.json').write_text(json.dumps(meta))
  (wd / 'ease' / 'result.json').unlink()
  calls.clear()
  again = paper_table.run(tiny_config(tmp_path), wd, models=models, grids=TINY_GRIDS,
                          split=split, command='test')
  assert calls == [best['hparams']]
  assert again['models']['ease']['test'] == pytest.approx(table['models']['ease']['test'])


def test_orderings_check_each_pair_of_the_paper():
  row = lambda v: {'test': {'ndcg@100': v, 'ndcg@100_se': 0.01}}
  rows = {'multvae': row(0.40), 'cdae': row(0.41), 'multdae': row(0.35), 'wmf': row(0.30)}
  o = paper_table.orderings(rows)
  assert o['ranking'] == ['cdae', 'multvae', 'multdae', 'wmf']
  pairs = {(p['better'], p['worse']): p for p in o['paper_pairs']}
  assert not pairs[('multvae', 'cdae')]['holds']
  assert not pairs[('multvae', 'cdae')]['beyond_2se']
  assert pairs[('cdae', 'multdae')]['holds'] and pairs[('cdae', 'multdae')]['beyond_2se']
  assert pairs[('multdae', 'wmf')]['holds']  # SLIM absent: its neighbours are compared


@pytest.mark.slow
def test_every_model_and_likelihood_end_to_end(tmp_path, split, monkeypatch):
  wd = tmp_path / 'table'
  own = [m for m in paper_table.MODELS if m not in paper_table.EXPERIMENTS]
  table = paper_table.run(tiny_config(tmp_path), wd, models=own, grids=TINY_GRIDS,
                          split=split, command='test')
  assert set(table['models']) == set(own)
  for lik in paper_table.LIKELIHOODS:
    assert set(table['likelihoods'][lik]) == {'multvae', 'multdae'}
    assert (wd / f'multvae-{lik}' / 'results.json').exists()
  assert table['models']['multvae']['likelihood'] == 'multinomial'
  assert table['models']['cdae']['hparams']['user_node'] in ('fit', 'zero')
  md = (wd / 'table.md').read_text()
  for label in ('Mult-VAE^PR', 'Mult-DAE', 'CDAE', 'SLIM', 'WMF', 'EASE', 'EDLAE', 'Popularity',
                '| logistic |', '| gaussian |'):
    assert label in md
  # Rerun: every stage is finished, nothing trains or fits again.
  def boom(*a, **k):
    raise AssertionError('a finished stage ran again')
  monkeypatch.setattr(train, 'train_and_evaluate', boom)
  monkeypatch.setattr(baselines, 'fit', boom)
  again = paper_table.run(tiny_config(tmp_path), wd, models=own, grids=TINY_GRIDS,
                          split=split, command='test')
  assert again['models'] == json.loads(json.dumps(table['models']))


def test_experiment_models_train_with_their_own_config_on_the_tables_data(tmp_path, split,
                                                                          monkeypatch):
  """RecVAE and H+Vamp stages: their config file's model and train settings, the table's
  data section, and rows in the table. (Their training is tested in their own files; here
  the trainer records what it was given.)"""
  seen = {}
  def fake_train(c, sub, split=None):
    seen[c.model.name] = c
    sub.mkdir(parents=True)
    (sub / 'config.json').write_text(json.dumps(c.to_dict(), default=list))
    (sub / 'metrics.jsonl').write_text(json.dumps({'epoch': 1, 'seconds': 2.0}) + '\n')
    (sub / 'results.json').write_text(json.dumps({
        'model': c.model.name, 'best_epoch': 1, 'val_ndcg@100': 0.5, 'n_test_users': 20,
        'test_eval_seconds': 1.0, 'test': {k: 0.4 for k in (
            'recall@20', 'recall@20_se', 'recall@50', 'recall@50_se', 'ndcg@100',
            'ndcg@100_se')}}))
  monkeypatch.setattr(train, 'train_and_evaluate', fake_train)
  c = tiny_config(tmp_path)
  c.data.n_heldout_users = 37
  table = paper_table.run(c, tmp_path / 'table', models=list(paper_table.EXPERIMENTS),
                          split=split, command='test')
  assert set(seen) == set(table['models']) == {'recvae', 'hvamp', 'ract', 'vasp'}
  for name, got in seen.items():
    assert got.model.module == ''  # installed: nothing to import
    assert got.data.to_dict() == c.data.to_dict()  # the table's data and split
    own = paper_table.experiment_config(base_config(), name)
    assert got.model.to_dict() == own.model.to_dict() and got.train == own.train
  md = (tmp_path / 'table' / 'table.md').read_text()
  assert '| RecVAE |' in md and '| H+Vamp (Gated) |' in md and '| RaCT |' in md
  assert '| VASP |' in md


@pytest.mark.slow
def test_command_line_runs_and_writes_the_table(tmp_path):
  wd = tmp_path / 'wd'
  cmd = [sys.executable, '-m', 'vaecf.tools.paper_table', '--config=configs/default.py',
         f'--config.data.cache_dir={tmp_path / "cache"}', f'--workdir={wd}',
         '--models=popularity']
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  table = json.loads((wd / 'table.json').read_text())
  assert list(table['models']) == ['popularity']
  assert '--models=popularity' in table['command']
  assert '| Popularity |' in (wd / 'table.md').read_text()
