"""vaecf.tools.halving: the stop rule on synthetic validation curves, and the replay of a
tune folder written by hand (no training)."""
import json
import math
import random

import pytest

from vaecf.config import ConfigError
from vaecf.tools import halving, tune, tune_records
from vaecf.workdir import WorkdirError

RULE = halving.Rule(eta=3, min_epochs=10)
EPOCHS = 200


def curve(final, tau, epochs=EPOCHS, start=0.1):
  """A validation curve from `start` to `final`: an S in log-epochs, bending at `tau`."""
  return [[e, start + (final - start) * e * e / (e * e + tau * tau)]
          for e in range(1, epochs + 1)]


def rising(final, rate, epochs=EPOCHS, start=0.1):
  """A curve that closes its gap to `final` at `rate` per epoch: still speeding up, in
  log-epochs, for as long as 1 / rate."""
  return [[e, final - (final - start) * math.exp(-rate * e)] for e in range(1, epochs + 1)]


def cut(history, last):
  return [p for p in history if p[0] <= last]


def test_a_hopeless_point_stops_at_the_first_rung_and_the_best_never_does():
  hist = [curve(0.40, 8), curve(0.41, 12), curve(0.20, 2)]  # the last has flattened
  # The first, flattening just below the leader, stops at the third rung.
  assert halving.stops(RULE, hist, epochs=EPOCHS) == {2: 10, 0: 90}
  # Flat below the leader, the second best stops later: a point it could still pass is not
  # a reason to keep training it.
  assert halving.stops(RULE, [curve(0.40, 5), curve(0.41, 12)], epochs=EPOCHS) == {0: 90}


def test_a_slow_starter_still_climbing_is_kept():
  # ml-latest-small's Mult-VAE and Mult-DAE at the rungs: 16% behind at 10, ahead at 81.
  fast = [[e, v] for e, v in [(3, 0.213), (10, 0.309), (30, 0.375), (90, 0.391), (200, 0.392)]]
  slow = [[e, v] for e, v in [(3, 0.193), (10, 0.260), (30, 0.365), (90, 0.422), (200, 0.423)]]
  # The slow one is kept; the fast one, flat below it by epoch 90, stops there.
  assert halving.stops(RULE, [fast, slow], epochs=EPOCHS) == {0: 90}
  # A point still speeding up in log-epochs is kept while its growing gains may reach the
  # leader (this one passes it in the end), and stops once they cannot.
  assert halving.stops(RULE, [curve(0.33, 5), rising(0.35, 0.02)], epochs=EPOCHS) == {}
  assert halving.stops(RULE, [curve(0.43, 5), rising(0.35, 0.02)], epochs=EPOCHS) == {1: 90}


def test_the_leader_of_a_rung_never_stops_and_a_stopped_point_is_below_it():
  rng = random.Random(0)
  for _ in range(200):
    m = rng.randint(1, 5)
    shape = lambda: rng.choice([curve(rng.uniform(0.1, 0.5), rng.uniform(1, 50)),
                                rising(rng.uniform(0.1, 0.5), rng.uniform(0.005, 0.5))])
    hist = [shape()[:rng.choice([60, 200])] for _ in range(m)]
    ref = shape() if rng.random() < 0.5 else None
    eta = rng.choice([2, 3, 4])
    rule = halving.Rule(eta, rng.choice([3, 5, 10]))
    halted = halving.stops(rule, hist, epochs=EPOCHS, reference=ref)
    for i, e in halted.items():
      field = [halving.best_until(h, e) for j, h in enumerate(hist)
               if j not in halted or halted[j] >= e] + (
          [halving.best_until(ref, e)] if ref else [])
      s = halving.best_until(hist[i], e)
      assert s < max(field)
      assert sum(f > s for f in field) >= math.ceil(len(field) / eta)  # out of the top
    if ref is None:  # the round's best point under the rule is never one it stopped
      final = [halving.best_until(cut(h, halted.get(i, EPOCHS)), EPOCHS)
               for i, h in enumerate(hist)]
      assert max(range(m), key=final.__getitem__) not in halted


def test_ties_share_a_place():
  flat = lambda v: [[e, v] for e in range(1, EPOCHS + 1)]
  # Field of 4 at eta 2 keeps 2 places: the three tied at 0.2 share the second.
  assert halving.stops(halving.Rule(2, 10), [flat(0.4), flat(0.2), flat(0.2), flat(0.2)],
                       epochs=EPOCHS) == {}
  # Two tied leaders are both kept while the flat points below stop.
  assert halving.stops(halving.Rule(2, 10), [flat(0.4), flat(0.4), flat(0.1), flat(0.1)],
                       epochs=EPOCHS) == {2: 10, 3: 10}


def test_a_round_of_one_point_stops_only_against_the_incumbent():
  lone = [curve(0.35, 15)]  # far below, slowing down
  assert halving.stops(RULE, lone, epochs=EPOCHS) == {}
  assert halving.stops(RULE, lone, epochs=EPOCHS, reference=curve(0.43, 20)) == {0: 90}
  # An incumbent it passes in the end, though it leads at every rung, does not stop it.
  assert halving.stops(RULE, lone, epochs=EPOCHS, reference=curve(0.34, 5)) == {}


def test_the_decision_at_an_epoch_reads_only_the_history_up_to_it():
  rng = random.Random(1)
  for _ in range(50):
    hist = [curve(rng.uniform(0.1, 0.5), rng.uniform(1, 30)) for _ in range(4)]
    full = halving.stops(RULE, hist, epochs=EPOCHS)
    for e in (9, 10, 11, 30, 89, 90, 150):
      early = {i: s for i, s in full.items() if s <= e}
      assert halving.stops(RULE, [cut(h, e) for h in hist], epochs=EPOCHS) == early
      assert halving.stops(RULE, hist, epochs=EPOCHS, until=e) == early
    # The loop's way: each epoch's passes of the models still training, the callable
    # asked after each (made anew halfway, as a resumed run does).
    seen, stopped = [[] for _ in hist], {}
    ask = halving.stop_rule(RULE, EPOCHS)
    for e in range(1, EPOCHS + 1):
      if e == 100:
        ask = halving.stop_rule(RULE, EPOCHS)
      for i, h in enumerate(hist):
        if i not in stopped:
          seen[i].append(h[e - 1])
      stopped.update({i: e for i in ask(e, seen)})
    assert stopped == full


def test_validation_every_few_epochs_decides_a_rung_at_the_next_pass():
  every4 = lambda h: [p for p in h if p[0] % 4 == 0]
  hist = [every4(curve(0.40, 5)), every4(curve(0.20, 2))]
  # Rungs 10 and 30 are decided at passes 12 and 32, whose fold two back (epochs 1 and
  # 3) holds no pass: no trend, so the first stop is at 92.
  assert halving.decision_epochs(RULE, hist) == [12, 32, 92]
  assert halving.stops(RULE, hist, epochs=EPOCHS) == {1: 92}


def test_flags_are_checked():
  assert halving.from_flags(0, 10) is None
  assert halving.problems(1, 10) and halving.problems(3, 0) and not halving.problems(2, 1)
  assert halving.from_record(halving.Rule(4, 5).record()) == halving.Rule(4, 5)
  assert halving.from_record(None) is None


# -- tune records ---------------------------------------------------------------------------

def test_a_tune_folder_refuses_another_rule(tmp_path):
  old = {'model': {'name': 'multvae'}, 'train': {'epochs': 200}}
  state = {'models': {'multvae': {'config': old, 'rounds': []}}}
  new = {**old, 'tune_flags': RULE.record()}
  with pytest.raises(WorkdirError, match='tune_flags.halving_eta: None -> 3'):
    tune_records.check(tmp_path, state, None, {'multvae': new})
  state['models']['multvae']['config'] = new
  tune_records.check(tmp_path, state, None, {'multvae': new})  # the same rule goes on
  with pytest.raises(WorkdirError, match='halving_min_epochs: 10 -> 5'):
    tune_records.check(tmp_path, state, None, {'multvae': {
        **old, 'tune_flags': halving.Rule(3, 5).record()}})


def test_a_tune_refuses_a_bad_rule(tmp_path):
  from test_sweep import small_config
  with pytest.raises(ConfigError, match='--halving_eta=1'):
    tune.check_request(small_config(tmp_path), ['multvae'], 4, None, halving.Rule(1, 10))


def test_the_edlae_space():
  lam, p = tune.BASELINE_SPACES['edlae']
  assert tune.base_point([lam, p]) == {'lam': 100.0, 'p': 0.5}
  assert p.beyond(0.25, 0.5) == 0.0 and p.lo == 0.0 and p.hi == 0.9  # the bound is reachable


# -- replay -----------------------------------------------------------------------------------

def write_tune(folder, rounds, epochs=EPOCHS, seconds=2.0):
  """A tune folder as vaecf-tune lays it out: tune.json, and per round a sweep folder with
  config.json and metrics.jsonl. rounds: [[(point, curve)], ...]; each round's points are
  one sweep and train until their curve ends."""
  records, all_scored = [], []
  for k, pts in enumerate(rounds):
    sub = folder / 'multvae' / f'round-{k}'
    sub.mkdir(parents=True)
    (sub / 'config.json').write_text(json.dumps({'train': {'epochs': epochs}}))
    rows = []
    for e in range(1, epochs + 1):
      active = [i for i, (_, h) in enumerate(pts) if h[-1][0] >= e]
      for i in active:
        rows.append({'epoch': e, 'model': i, 'val_ndcg@100': h_at(pts[i][1], e),
                     'train_seconds': seconds * len(active) * 0.8,
                     'seconds': seconds * len(active)})
    (sub / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    scores = [max(s for _, s in h) for _, h in pts]
    records.append({'knob': 'gamma', 'points': [p for p, _ in pts], 'scores': scores,
                    'details': [{'val_ndcg@100': s, 'workdir': f'multvae/round-{k}',
                                 'index': i} for i, s in enumerate(scores)]})
    all_scored += list(zip([p for p, _ in pts], scores))
  chosen = max(all_scored, key=lambda t: (t[1], json.dumps(t[0], sort_keys=True)))[0]
  state = {'select': 'ndcg@100', 'models': {
      'multvae': {'rounds': records, 'chosen': chosen, 'config': {}},
      'ease': {'rounds': [{'points': [{'lam': 1.0}], 'scores': [0.3],
                           'details': [{'val_ndcg@100': 0.3}]}]}}}
  (folder / 'tune.json').write_text(json.dumps(state))
  return state


def h_at(h, e):
  return next(s for x, s in h if x == e)


def test_the_replay_stops_the_hopeless_points_and_keeps_the_choice(tmp_path, capsys):
  g = lambda v: {'gamma': v}
  rounds = [[(g(0.005), curve(0.42, 8)[:60]), (g(0.015), curve(0.43, 20)[:125]),
             (g(0.00167), curve(0.25, 2)[:48])],
            [(g(0.045), curve(0.36, 15)[:180])]]
  write_tune(tmp_path, rounds)
  report = halving.replay(tmp_path, RULE)
  assert list(report['models']) == ['multvae']  # baselines have no curves
  m = report['models']['multvae']
  first, second = m['rounds']
  assert [p['rule_stop'] for p in first['sweeps'][0]['points']] == [None, None, 10]
  assert [p['rule_stop'] for p in second['sweeps'][0]['points']] == [90]  # vs the incumbent
  assert first['rule_chosen'] == first['chosen'] == g(0.015)
  assert m['same_choice'] and m['rule_chosen'] == m['chosen'] == g(0.015)
  assert m['model_epochs'] == 60 + 125 + 48 + 180
  assert m['rule_model_epochs'] == 60 + 125 + 10 + 90
  # Wall time: 2 s per model-epoch here, so the linear estimate saves 2 s per model-epoch.
  assert m['seconds'] - m['rule_seconds'] == pytest.approx(2.0 * (38 + 90))
  assert m['seconds_saved_min'] == pytest.approx(2.0 * 90)  # round 2's epochs 91-180
  text = halving.table(report)
  assert 'stop at 10' in text and 'the same choice' in text
  # The command prints the table and writes the JSON.
  import subprocess
  import sys
  out = tmp_path / 'replay.json'
  proc = subprocess.run([sys.executable, '-m', 'vaecf.tools.halving', f'--replay={tmp_path}',
                         f'--json={out}'], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert 'stop at 90' in proc.stdout
  assert json.loads(out.read_text())['models']['multvae']['rule_model_epochs'] == 285


def test_a_replay_where_the_rule_changes_the_choice_says_so(tmp_path):
  g = lambda v: {'gamma': v}
  # A late riser: flat far below until epoch 40, then above the leader. The rule cannot
  # see it coming and stops it at 10; the replay must say the choice changes.
  late = [[e, 0.2 if e < 40 else 0.45] for e in range(1, 101)]
  write_tune(tmp_path, [[(g(1.0), curve(0.40, 5)[:100]), (g(2.0), late)],
                        [(g(0.5), curve(0.39, 5)[:100])]])
  m = halving.replay(tmp_path, RULE)['models']['multvae']
  first = m['rounds'][0]
  assert first['chosen'] == g(2.0) and first['rule_chosen'] == g(1.0)
  assert not m['same_choice'] and m['diverges_at_round'] == 1
  assert m['chosen'] == g(2.0) and m['rule_chosen'] == g(1.0)
  text = halving.table(halving.replay(tmp_path, RULE))
  assert 'CHANGES to gamma 1' in text and 'instead of gamma 2' in text


def test_a_replay_of_a_tune_missing_its_rounds_names_the_round(tmp_path):
  write_tune(tmp_path, [[({'gamma': 1.0}, curve(0.4, 5)[:20])]])
  (tmp_path / 'multvae' / 'round-0' / 'metrics.jsonl').unlink()
  with pytest.raises(WorkdirError, match='round 1: cannot replay multvae/round-0'):
    halving.replay(tmp_path, RULE)


# -- in the loop ------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_sweep_stops_where_the_replay_says_and_resumes_alike(tmp_path):
  from vaecf import sweep
  from test_sweep import embedded_split, small_config  # noqa: F401
  from vaecf.data import load_split
  from vaecf.workdir import read_metrics
  c = small_config(tmp_path)
  c.train.epochs = 5
  split = load_split(c.data)[0]
  points = [{'learning_rate': 1e-6}, {'learning_rate': 3e-3}]
  rule = halving.Rule(2, 2)
  # An incumbent no point reaches: each stops once its gains shrink.
  ref = [[e, 1.0] for e in range(1, 6)]
  run = lambda wd, **kw: sweep.train_sweep(c, wd, split=split, points=points,
                                           score_test=False, models_per_pass=1,
                                           stop_rule=halving.stop_rule(rule, 5, ref), **kw)
  full = run(tmp_path / 'full')
  rows = read_metrics(tmp_path / 'full')
  hist = [halving.history_of(rows, i, 'val_ndcg@100') for i in range(2)]
  expected = halving.stops(rule, hist, epochs=5, reference=ref)
  assert expected  # the rule stopped something here
  for i, m in enumerate(full['models']):
    if i in expected:
      assert (m['stopped_after_epoch'], m['stopped_by']) == (expected[i], 'stop rule')
      assert hist[i][-1][0] == expected[i]  # its rows end where it stopped
  run(tmp_path / 'resumed', stop_after_epoch=3)
  resumed = run(tmp_path / 'resumed')
  assert resumed['models'] == full['models']
