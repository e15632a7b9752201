"""The console reads like README: plain epoch lines, no library noise, a results table."""
import json
import re
import subprocess
import sys
from pathlib import Path

from vaecf import console

REPO = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(
    r'^epoch \d+/\d+ step \d+ \| loss [\d.]+ kl [\d.]+ beta [\d.]+ \| val ndcg@100 [\d.]+ '
    r'\(best [\d.]+ @ \d+\) \| \d+ users/s [\d.]+s/epoch \| ETA \d+m\d\ds$')


def _run_default(tmp_path, *extra):
  return subprocess.run(
      [sys.executable, '-m', 'vaecf.main', '--config=configs/default.py',
       f'--workdir={tmp_path / "wd"}', '--config.train.epochs=2',
       f'--config.data.cache_dir={tmp_path / "cache"}', *extra],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': '', 'HOME': str(tmp_path)})


def test_main_prints_what_readme_shows(tmp_path):
  proc = _run_default(tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in (proc.stdout + proc.stderr).splitlines() if l.strip()]
  assert not [l for l in lines if re.match(r'^[IWEF]\d{4} ', l)], 'absl prefix in the console'
  assert not [l for l in lines if 'tpu' in l.lower() or 'orbax' in l.lower()], lines
  epoch_lines = [l for l in lines if l.startswith('epoch ') and '|' in l]
  assert len(epoch_lines) == 2 and all(EPOCH_LINE.match(l) for l in epoch_lines), epoch_lines
  results = json.loads((tmp_path / 'wd' / 'results.json').read_text())
  table = lines[lines.index(next(l for l in lines if l.startswith('test, best epoch'))):]
  assert table[1].split() == ['metric', 'mean', 's.e.']
  for row, name in zip(table[2:], ('recall@20', 'recall@50', 'ndcg@100')):
    got = row.split()
    assert got[0] == name and abs(float(got[1]) - results['test'][name]) < 1e-4


def test_verbosity_brings_back_the_absl_format(tmp_path):
  proc = _run_default(tmp_path, '--verbosity=0')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert re.search(r'^I\d{4} .*loop\.py:\d+\] epoch 1/2', proc.stderr, re.M), proc.stderr[-2000:]


def test_results_table_lists_each_metric_with_its_error():
  text = console.results_table({'recall@20': 0.25, 'recall@20_se': 0.01, 'ndcg@100': 0.5,
                                'ndcg@100_se': 0.02}, 'title')
  assert text.splitlines()[2].split() == ['recall@20', '0.2500', '0.0100']
  assert text.splitlines()[3].split() == ['ndcg@100', '0.5000', '0.0200']


def test_progress_writes_lines_to_a_log_only_when_an_epoch_is_long(monkeypatch):
  import io
  import logging
  t = [0.0]
  monkeypatch.setattr(console.time, 'perf_counter', lambda: t[0])
  records = []
  handler = logging.Handler()
  handler.emit = lambda r: records.append(r.getMessage())
  logging.getLogger('vaecf.progress').addHandler(handler)
  logging.getLogger('vaecf.progress').setLevel(logging.INFO)
  try:
    bar = console.Progress('epoch 1/1', 100, after=5.0, every=30.0, stream=io.StringIO())
    t[0] = 1.0
    assert not bar.due()  # a short epoch shows nothing
    t[0] = 6.0
    assert bar.due()
    bar.update(10, 5000)
    t[0] = 20.0
    assert not bar.due()  # not again until `every` has passed
    t[0] = 37.0
    assert bar.due()
  finally:
    logging.getLogger('vaecf.progress').removeHandler(handler)
  assert records and '10/100 steps' in records[0] and 'left in the epoch' in records[0]
