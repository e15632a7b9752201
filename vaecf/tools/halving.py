"""Successive halving for a tune's rounds: a point that cannot catch the leader stops at a
rung, and a replay of a finished tune through the rule.

  vaecf-halving --replay=TUNE_DIR [--halving_eta=3]
      [--halving_min_epochs=10] [--json=PATH]

A round trains its points in one sweep and lasts as long as its slowest point, so a far
point that keeps improving slowly holds the round on its own. Rungs lie at epochs r,
r*eta, r*eta^2, ... (r: min_epochs), each decided at the first validation pass at or after
it. The field of a rung is the round's points the rule has not stopped (those patience
stopped count with their best) and the tune's best point so far, the incumbent: its
validation curve from its own round, at the same epochs, since every round of a model
trains under one config. With s the best validation score up to the rung's epoch e and L
the field's best, a point still training stops when both:
  - it is not in the top ceil(n / eta) of the field's n (ASHA's rung; ties share a place);
  - it stays below L even if each eta-fold of the epochs left to train.epochs gains as
    much as its last one did, times the ratio r by which that one changed on the one
    before: with g = s - s(e // eta), g' = s(e // eta) - s(e // eta^2), r = g / g' and
    F = log_eta(epochs / e) folds left, s + g (r + r^2 + ... + r^F) < L (g F when r = 1,
    the sum's continuous form when F is not whole; `reach`). Gains that grew keep
    growing; gains that shrank keep shrinking at their rate (a curve past its S's bend).
The second condition is the safety: a validation curve rises in log-epochs as an S, and
a point still speeding up (before its S bends) may overtake any leader: on
ml-latest-small, Mult-DAE is 16% behind Mult-VAE at epoch 10 and ends 8% ahead, gaining
1.8x more from epoch 9 to 27 than from 3 to 9. Its bound grows with that ratio, while a
point whose gains flatten far below the leader stops. A stopped point keeps its best
score so far, always below L, so it never becomes the incumbent. A round of one point and
no incumbent never stops.

`stops` is the rule over the validation history of a round's points; the decision at
epoch e reads only the history up to e, so the training loop (which asks `stop_rule`'s
callable after each validation pass) and `replay` (over a finished tune's metrics.jsonl)
make the same decisions.

It is over 300 lines because the rule and its replay, which must share the rule's
functions, are one tool with its table and command.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from vaecf import checkpoints
from vaecf.tools import tune_records
from vaecf.workdir import WorkdirError, read_metrics

DEFAULT_ETA, DEFAULT_MIN_EPOCHS = 3, 10
# A gain in the selection metric (in [0, 1]) this small is noise: the validation standard
# error is about 1e-2 on ML-1M's 600 users.
NOISE = 1e-4


@dataclasses.dataclass(frozen=True)
class Rule:
  eta: int = DEFAULT_ETA
  min_epochs: int = DEFAULT_MIN_EPOCHS

  def rungs(self, last: int) -> list[int]:
    out, r = [], self.min_epochs
    while r <= last:
      out.append(r)
      r *= self.eta
    return out

  def record(self) -> dict:
    """The tune flags that set it, as tune.json records them."""
    return {'halving_eta': self.eta, 'halving_min_epochs': self.min_epochs}


def problems(eta, min_epochs) -> list[str]:
  out = []
  if not isinstance(eta, int) or isinstance(eta, bool) or eta < 0 or eta == 1:
    out.append(f'--halving_eta={eta!r}: 0 (off) or an integer >= 2')
  if not isinstance(min_epochs, int) or isinstance(min_epochs, bool) or min_epochs < 1:
    out.append(f'--halving_min_epochs={min_epochs!r}: an integer >= 1')
  return out


def from_flags(eta: int, min_epochs: int) -> Rule | None:
  return Rule(eta, min_epochs) if eta else None


def from_record(flags: dict | None) -> Rule | None:
  flags = flags or {}
  return from_flags(flags.get('halving_eta', 0), flags.get('halving_min_epochs',
                                                          DEFAULT_MIN_EPOCHS))


# -- the rule ---------------------------------------------------------------------------------

def best_until(history, epoch: int) -> float:
  """The best score of a history ([[epoch, score], ...]) at epochs <= `epoch`."""
  return max((s for e, s in history if e <= epoch), default=-math.inf)


def decision_epochs(rule: Rule, histories) -> list[int]:
  """The epochs a rung is decided at: the first validation pass at or after each rung."""
  passes = sorted({e for h in histories for e, _ in h})
  return sorted({next(e for e in passes if e >= r)
                 for r in rule.rungs(passes[-1] if passes else 0)})


def decide(rule: Rule, epoch: int, histories, out, *, epochs: int,
           reference=None) -> list[int]:
  """The points that stop after a rung decided at `epoch`: of those still training (a
  pass at `epoch`, not in `out`, the points the rule stopped before), the ones out of the
  field's top ceil(n / eta) that cannot reach its best (the module docstring)."""
  if epoch >= epochs:
    return []  # the run ends here anyway
  field = [best_until(h, epoch) for i, h in enumerate(histories) if i not in out]
  if reference is not None:
    field.append(best_until(reference, epoch))
  keep, leader = math.ceil(len(field) / rule.eta), max(field, default=-math.inf)
  folds = math.log(epochs / epoch) / math.log(rule.eta)
  stopped = []
  for i, h in enumerate(histories):
    if i in out or not any(e == epoch for e, _ in h):
      continue
    s, before, earlier = (best_until(h, epoch // rule.eta ** k) for k in range(3))
    if earlier == -math.inf:
      continue  # no trend yet
    ahead = sum(f > s for f in field)
    if ahead >= keep and s + reach(s - before, before - earlier, folds) < leader:
      stopped.append(i)
  return stopped


def reach(gain: float, gain_before: float, folds: float) -> float:
  """What `folds` more eta-folds of epochs may add to a point's best when each gains the
  last one's gain, `gain`, times the ratio r by which that one changed on the one before
  (gains below NOISE are noise): growing without end when r > 1; when r < 1, shrinking
  as they have been, a geometric sum bounded by gain * r / (1 - r)."""
  r = (gain + NOISE) / (gain_before + NOISE)
  if r == 1.0:
    return gain * folds
  return gain * r * (r ** folds - 1) / (r - 1)


def stops(rule: Rule, histories, *, epochs: int, reference=None,
          until: int | None = None) -> dict[int, int]:
  """{point: the epoch after which the rule stops it}, deciding every rung in turn on the
  histories (each [[epoch, score], ...] of validation passes) up to `until`."""
  out: dict[int, int] = {}
  for e in decision_epochs(rule, histories):
    if until is not None and e > until:
      break
    cut = [[p for p in h if p[0] <= e] for h in histories]
    for i in decide(rule, e, cut, out, epochs=epochs, reference=reference):
      out[i] = e
  return out


def stop_rule(rule: Rule, epochs: int, reference=None):
  """The training loop's callable: (epoch, histories so far) -> the models that stop
  after this epoch."""
  def new_stops(epoch: int, histories) -> list[int]:
    return [i for i, e in stops(rule, histories, epochs=epochs, reference=reference,
                                until=epoch).items() if e == epoch]
  return new_stops


def history_of(rows: list[dict], index: int, key: str) -> list[list]:
  """Model `index`'s validation history in a sweep's metrics rows."""
  return [[r['epoch'], r[key]] for r in rows if r.get('model', 0) == index and key in r]


# -- replay -------------------------------------------------------------------------------------

def _argmax(points, scores):
  """The search's choice: the best score, ties to the larger JSON (tune.search's order)."""
  return max(range(len(points)), key=lambda i: (scores[i], json.dumps(points[i],
                                                                      sort_keys=True)))


def _sweeps(round_: dict):
  """A round's sweeps in order (a round grown by a larger budget has two): [(workdir,
  [position in the round])]."""
  groups: dict[str, list[int]] = {}
  for pos, d in enumerate(round_['details']):
    groups.setdefault(d['workdir'], []).append(pos)
  return list(groups.items())


def _replay_sweep(folder: Path, workdir: str, round_: dict, positions, key: str, rule,
                  reference) -> dict:
  path = tune_records.resolve(folder, workdir)
  rows = read_metrics(path)
  epochs = json.loads((path / 'config.json').read_text())['train']['epochs']
  index = [round_['details'][p]['index'] for p in positions]
  hist = [history_of(rows, i, key) for i in index]
  last = [max((r['epoch'] for r in rows if r.get('model', 0) == i), default=0)
          for i in index]
  halted = stops(rule, hist, epochs=epochs, reference=reference)
  points = []
  for j, p in enumerate(positions):
    stop = halted.get(j)
    kept = [h for h in hist[j] if stop is None or h[0] <= stop]
    best = max(kept, key=lambda h: h[1], default=[0, -math.inf])  # ties: the first epoch
    points.append({'point': round_['points'][p], 'position': p, 'score': round_['scores'][p],
                   'last_epoch': last[j], 'rule_stop': stop,
                   'rule_last_epoch': last[j] if stop is None else min(stop, last[j]),
                   'rule_score': best[1], 'rule_best_epoch': best[0],
                   'history': kept})
  # The wall time: each epoch's `seconds` (the whole epoch, train and validation, of the
  # models still training) scaled by the share of those models the rule leaves training,
  # the cost of a CPU's loop over models; 'seconds_saved_min' counts only the epochs no
  # model would train, all an accelerator saves when M models cost what one does.
  of = {i: j for j, i in enumerate(index)}
  per_epoch: dict[int, list] = {}
  for r in rows:
    if r.get('model', 0) in of:
      per_epoch.setdefault(r['epoch'], []).append(r)
  recorded = estimate = ended = 0.0
  for e, rs in per_epoch.items():
    t = max(r.get('seconds', r.get('train_seconds', 0.0)) for r in rs)
    left = sum(points[of[r.get('model', 0)]]['rule_last_epoch'] >= e for r in rs)
    recorded += t
    estimate += t * left / len(rs)
    ended += t if left == 0 else 0.0
  return {'workdir': workdir, 'epochs': epochs, 'points': points,
          'model_epochs': sum(last), 'rule_model_epochs': sum(p['rule_last_epoch']
                                                               for p in points),
          'seconds': recorded, 'rule_seconds': estimate, 'seconds_saved_min': ended}


def replay_model(folder: Path, name: str, entry: dict, key: str, rule: Rule) -> dict:
  """Each sweep of a trained model's recorded rounds through `rule`, in order."""
  scored: list[tuple] = []  # (point, recorded score, rule score, history under the rule)
  rounds, incumbents = [], []
  for k, round_ in enumerate(entry['rounds']):
    sweeps = []
    for workdir, positions in _sweeps(round_):
      ref = None
      if scored:  # the rule's tune compares with its own incumbent
        ref = scored[_argmax([s[0] for s in scored], [s[2] for s in scored])][3]
      try:
        sw = _replay_sweep(folder, workdir, round_, positions, key, rule, ref)
      except (OSError, KeyError, WorkdirError) as e:
        raise WorkdirError(f'{name} round {k + 1}: cannot replay {workdir}: {e}') from None
      scored += [(p['point'], p['score'], p['rule_score'], p['history']) for p in sw['points']]
      sweeps.append(sw)
    pts = [p for sw in sweeps for p in sw['points']]
    chosen = _argmax([p['point'] for p in pts], [p['score'] for p in pts])
    rule_chosen = _argmax([p['point'] for p in pts], [p['rule_score'] for p in pts])
    rounds.append({'round': k + 1, 'sweeps': sweeps, 'chosen': pts[chosen]['point'],
                   'rule_chosen': pts[rule_chosen]['point']})
    pts_all = [s[0] for s in scored]
    incumbents.append((pts_all[_argmax(pts_all, [s[1] for s in scored])],
                       pts_all[_argmax(pts_all, [s[2] for s in scored])]))
  for r, (inc, rule_inc) in zip(rounds, incumbents):
    r.update(incumbent=inc, rule_incumbent=rule_inc)
  # The search's next points depend only on the incumbent after each round: while it is
  # the same, the rule's tune proposes the same points. Past the first change, what it
  # would have tried is unknown, and the rounds below are the recorded path's.
  diverged = next((r['round'] for r in rounds if r['incumbent'] != r['rule_incumbent']),
                  None)
  total = lambda k: sum(sw[k] for r in rounds for sw in r['sweeps'])
  return {'rounds': rounds, 'chosen': entry.get('chosen'),
          'rule_chosen': rounds[-1]['rule_incumbent'] if rounds else None,
          'same_choice': diverged is None, 'diverges_at_round': diverged,
          'stopped_under_rule': entry.get('config', {}).get('tune_flags'),
          **{k: total(k) for k in ('model_epochs', 'rule_model_epochs', 'seconds',
                                   'rule_seconds', 'seconds_saved_min')}}


def replay(folder: str | Path, rule: Rule) -> dict:
  """Every trained model of the tune in `folder` replayed through `rule`."""
  folder = Path(folder)
  state = tune_records.read_state(folder)
  key = checkpoints.best_key(checkpoints.recorded_select(state))
  out = {'tune': str(folder), 'rule': rule.record(), 'select': key, 'models': {}}
  for name, entry in state['models'].items():
    if entry.get('rounds') and all('workdir' in d for r in entry['rounds']
                                   for d in r['details']):
      out['models'][name] = replay_model(folder, name, entry, key, rule)
  return out


def table(report: dict) -> str:
  """The replay as a markdown table: each sweep's points, where the rule stops them, and
  what it saves."""
  r = report['rule']
  lines = [f'{report["tune"]} replayed with --halving_eta={r["halving_eta"]} '
           f'--halving_min_epochs={r["halving_min_epochs"]} (validation '
           f'{report["select"][4:]}):', '',
           '| model | round | point: score (last epoch) -> under the rule | chosen | '
           'model-epochs | wall (est.) |', '|---|---|---|---|---|---|']
  for name, m in report['models'].items():
    for rd in m['rounds']:
      for sw in rd['sweeps']:
        cells = '; '.join(
            f'{_fmt(p["point"])}: {p["score"]:.4f} ({p["last_epoch"]}) -> ' +
            ('kept' if p['rule_stop'] is None else
             f'stop at {p["rule_stop"]}, {p["rule_score"]:.4f}') for p in sw['points'])
        same = 'same' if rd['chosen'] == rd['rule_chosen'] else (
            f'CHANGES to {_fmt(rd["rule_chosen"])}')
        lines.append(f'| {name} | {rd["round"]} | {cells} | {same} | '
                     f'{sw["model_epochs"]} -> {sw["rule_model_epochs"]} | '
                     f'{sw["seconds"]:.0f}s -> {sw["rule_seconds"]:.0f}s |')
  lines.append('')
  for name, m in report['models'].items():
    saved = m['model_epochs'] - m['rule_model_epochs']
    verdict = ('the same choice and the same search path' if m['same_choice'] else
               f'the incumbent changes after round {m["diverges_at_round"]}: the rule\'s '
               f'tune would choose {_fmt(m["rule_chosen"])} instead of '
               f'{_fmt(m["chosen"])} (rounds past that are the recorded path\'s)')
    lines.append(f'- {name}: {verdict}; {saved} of {m["model_epochs"]} model-epochs saved, '
                 f'about {m["seconds"] - m["rule_seconds"]:.0f}s of {m["seconds"]:.0f}s '
                 f'(at least {m["seconds_saved_min"]:.0f}s).')
    if m['stopped_under_rule']:
      lines.append(f'  (this tune ran under {m["stopped_under_rule"]}: points it stopped '
                   'have no curve past their stop, so a looser rule cannot be replayed)')
  return '\n'.join(lines)


def _fmt(point) -> str:
  return ', '.join(f'{k} {v:g}' for k, v in (point or {}).items()) or '-'


def main(argv):
  from absl import app, flags
  from vaecf import console
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  console.setup()
  f = flags.FLAGS
  found = problems(f.halving_eta, f.halving_min_epochs)
  if found or not f.halving_eta:
    raise app.UsageError('; '.join(found) or '--halving_eta=0 is no rule to replay')
  report = replay(f.replay, Rule(f.halving_eta, f.halving_min_epochs))
  print(table(report))
  if f.json:
    Path(f.json).write_text(json.dumps(report, indent=2, default=float))


def cli():
  from absl import flags
  from vaecf import console
  flags.DEFINE_string('replay', None, 'A tune folder (vaecf-tune --workdir) to replay.')
  flags.DEFINE_integer('halving_eta', DEFAULT_ETA, 'The rule\'s eta.')
  flags.DEFINE_integer('halving_min_epochs', DEFAULT_MIN_EPOCHS, 'The rule\'s first rung.')
  flags.DEFINE_string('json', None, 'Also write the replay here, as JSON.')
  flags.mark_flags_as_required(['replay'])
  console.cli(main, __name__)


if __name__ == '__main__':
  cli()
