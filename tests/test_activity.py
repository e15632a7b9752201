"""The user-activity breakdown: quintiles partition the test users; the command runs."""
import json

import numpy as np
import pytest
import scipy.sparse as sp

from vaecf import train
from vaecf.tools import activity
from vaecf.config import base_config
from vaecf.data import load_split
from vaecf.evaluate import EvalResult


def test_quintiles_partition_the_users_by_activity():
  rng = np.random.default_rng(0)
  counts = rng.integers(1, 40, size=103)
  group = activity.activity_groups(counts)
  assert set(group) == set(range(5))
  sizes = np.bincount(group)
  assert sizes.sum() == 103 and sizes.max() - sizes.min() <= 1
  for g in range(4):  # a group's users are never more active than the next group's
    assert counts[group == g].max() <= counts[group == g + 1].min()


def test_breakdown_groups_the_evaluated_users_only():
  fold_in = sp.csr_matrix(np.tril(np.ones((12, 20), np.float32), 3))  # row u: u + 4 items
  counts = activity.fold_in_counts(fold_in)
  np.testing.assert_array_equal(counts, np.arange(12) + 4)
  rows = np.array([0, 2, 3, 5, 6, 7, 8, 9, 10, 11])  # rows 1 and 4 had no targets
  ndcg = np.linspace(0.1, 1.0, len(rows))
  table = activity.breakdown(EvalResult({'ndcg@100': ndcg}, rows), counts)
  assert [g['n_users'] for g in table] == [2] * 5
  assert [(g['min_items'], g['max_items']) for g in table][:2] == [(4, 6), (7, 9)]
  assert sum(g['ndcg@100'] * g['n_users'] for g in table) / 10 == pytest.approx(ndcg.mean())
  assert table[0]['ndcg@100'] == pytest.approx(ndcg[:2].mean())
  md = activity.markdown_table({'a': table, 'b': table})
  assert md.count('\n') == 6 and '| Q1 | 4-6 | 2 |' in md


def test_activity_command_on_a_trained_run(tmp_path):
  experiment = activity
  c = base_config()
  c.data.rating_threshold = 3.5
  c.data.cache_dir = str(tmp_path / 'cache')
  c.model.hidden_dims = (32,)
  c.model.latent_dim = 8
  c.train.epochs = 1
  split, _ = load_split(c.data)
  res = train.train_and_evaluate(c, tmp_path / 'vae', split=split)
  out = experiment.run([str(tmp_path / 'vae')], tmp_path / 'out', names=['VAE'])
  table = out['tables']['VAE']
  test_users = int(np.sum(np.diff(split.test_te.indptr) > 0))
  assert sum(g['n_users'] for g in table) == test_users == res['n_test_users']
  assert out['overall']['VAE']['ndcg@100'] == pytest.approx(res['test']['ndcg@100'], rel=1e-5)
  saved = json.loads((tmp_path / 'out' / 'activity.json').read_text())
  assert saved['tables']['VAE'] == table
  assert (tmp_path / 'out' / 'activity.md').exists()
  pytest.importorskip('matplotlib')
  assert (tmp_path / 'out' / 'activity.png').stat().st_size > 0
