"""The recommend command: `vaecf-recommend` or `python -m vaecf.serving`.

  vaecf-recommend --workdir=DIR --items=1,2355,3114 --n=10
  vaecf-recommend --workdir=DIR --input=histories.csv --output=recs.csv
  vaecf-recommend --workdir=DIR --export=DIR/export
  vaecf-recommend --exported=DIR/export --items=1,2355
  vaecf-recommend --workdir=SWEEP_DIR --model_index=2 --items=1,2355

Histories and results use ORIGINAL item ids (see vaecf.serving.recommender).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from vaecf.common import VaecfError
from vaecf.serving.recommender import Recommendations, Recommender

BOM = b'\xef\xbb\xbf'


class HistoryError(VaecfError, ValueError):
  """An --input file of histories that cannot be read as user,item rows."""


def _utf8_text(data: bytes, path) -> str:
  """`data` decoded; a HistoryError naming the first line that is not UTF-8."""
  try:
    return data.removeprefix(BOM).decode('utf-8')
  except UnicodeDecodeError as e:
    bad = e.start + (len(BOM) if data.startswith(BOM) else 0)
    begin = max(data.rfind(b'\n', 0, bad), data.rfind(b'\r', 0, bad)) + 1
    lineno = len(data[:begin].splitlines()) + 1
    # Escaped, not replaced: the bad byte shows as \xNN, and stderr needs no Unicode.
    line = data[begin:].removeprefix(BOM).splitlines()[0].decode('utf-8', 'backslashreplace')
    raise HistoryError(
        f'{path}, line {lineno}: not UTF-8 text (byte {data[bad]:#04x} in "{line}"); save '
        'the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`) and try again'
    ) from None


def read_histories(path: str | Path) -> dict[str, list[str]]:
  """{user: [item, ...]} from user,item rows (a 'user,item' header is allowed).

  A UTF-8 byte-order mark is dropped and fields are unquoted (csv); text that is not
  UTF-8, a row without an item or a row with an empty user or item id is an error
  naming its line.
  """
  out: dict[str, list[str]] = {}
  with open(path, 'rb') as f:
    text = _utf8_text(f.read(), path)
  reader = csv.reader(io.StringIO(text, newline=''))
  try:
    for row in reader:
      lineno = reader.line_num
      if not row or (lineno == 1 and [c.strip().lower() for c in row[:2]] == ['user', 'item']):
        continue
      if len(row) < 2:
        open_quote = ' (a double quote left open?)' if '\n' in row[0] else ''
        raise HistoryError(f'{path}, line {lineno}: one field ({row[0]!r}), expected two: '
                           f'user,item{open_quote}')
      user, item = row[0].strip(), row[1].strip()
      if not user or not item:
        raise HistoryError(f'{path}, line {lineno}: empty {"user" if not user else "item"} '
                           f'id in {row!r}')
      out.setdefault(user, []).append(item)
  except csv.Error as e:  # e.g. a quote left open at the end of the file
    raise HistoryError(f'{path}, line {reader.line_num}: {e}') from None
  return out


def write_recommendations(path: str | Path, users: Sequence, recs: Sequence[Recommendations]
                          ) -> None:
  """user,rank,item,score rows (and title where the dataset has titles)."""
  with_titles = any(r.titles for r in recs)
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['user', 'rank', 'item', 'score'] + (['title'] if with_titles else []))
    for u, r in zip(users, recs):
      for rank, (i, s) in enumerate(zip(r.items, r.scores), 1):
        w.writerow([u, rank, i, f'{s:.6g}'] + ([r.titles[rank - 1] or ''] if with_titles else []))


def _describe_history(rec: Recommender, r: Recommendations) -> str:
  lines = [f'History: {len(r.history)} known item(s)' + (
      ' - none known, ranked by the model\'s fallback (no history)' if r.fallback else '')]
  lines += [f'  {str(i):>8}  {rec.title(i) or ""}' for i in r.history]
  if r.unknown:
    lines.append('Ignored (not in the catalogue): ' + ', '.join(map(str, r.unknown)))
  if r.duplicates:
    lines.append('Given more than once (counted once): ' + ', '.join(map(str, r.duplicates)))
  return '\n'.join(lines)


def main(argv):
  from absl import app, flags
  from vaecf import console
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  console.setup()
  if bool(FLAGS.workdir) == bool(FLAGS.exported):
    raise app.UsageError('give one of --workdir (a trained run) or --exported (an export)')
  if FLAGS.input and not FLAGS.output:
    raise app.UsageError('--input needs --output=recs.csv')
  if FLAGS.items is not None and FLAGS.input:
    raise app.UsageError('give --items or --input, not both')
  if FLAGS.exported and FLAGS.model_index is not None:
    raise app.UsageError('--model_index chooses a model of a sweep\'s --workdir; an export '
                         'holds one model')
  # Before the model loads: a bad file is named at once, and nothing is written.
  histories = read_histories(FLAGS.input) if FLAGS.input else None
  if FLAGS.exported:
    from vaecf.serving.export import load_exported
    rec = load_exported(FLAGS.exported)
  else:
    from vaecf.serving.load import from_workdir
    rec = from_workdir(FLAGS.workdir, FLAGS.step, titles=FLAGS.titles or None,
                       trust_code=FLAGS.trust_code, model_index=FLAGS.model_index)
  if FLAGS.export:
    from vaecf.serving.export import export
    print(f'exported to {export(rec, FLAGS.export)}')
  if histories is not None:
    users = list(histories)
    recs = rec.recommend_batch([histories[u] for u in users], FLAGS.n, FLAGS.exclude_seen)
    write_recommendations(FLAGS.output, users, recs)
    n_fb = sum(r.fallback for r in recs)
    print(f'wrote {sum(len(r.items) for r in recs)} rows for {len(users)} users to '
          f'{FLAGS.output}' + (f' ({n_fb} with no known item: fallback)' if n_fb else ''))
  elif FLAGS.items is not None:
    r = rec.recommend(FLAGS.items, FLAGS.n, FLAGS.exclude_seen)
    print(f'{_describe_history(rec, r)}\nTop {len(r.items)}:\n{r}')
    if FLAGS.output:
      write_recommendations(FLAGS.output, ['user'], [r])
  elif not FLAGS.export:
    raise app.UsageError('give --items=ID,ID,... or --input=histories.csv (or --export=DIR)')


def _define_flags():
  from absl import flags
  flags.DEFINE_string('workdir', None, 'A trained workdir (vaecf.main or a saved baseline).')
  flags.DEFINE_string('exported', None, 'An export folder (vaecf.serving) instead of a workdir.')
  flags.DEFINE_integer('step', None, 'Checkpoint step to load; default: the best.')
  flags.DEFINE_integer('model_index', None, 'For a sweep\'s folder (vaecf.sweep, or a tune '
                       'round\'s DIR/<model>/round-*): serve its model K, at its best '
                       'validation epoch.')
  flags.DEFINE_list('items', None, 'One history: original item ids, comma-separated.')
  flags.DEFINE_string('input', None, 'CSV of user,item rows: one history per user.')
  flags.DEFINE_string('output', None, 'CSV to write user,rank,item,score[,title] rows to.')
  flags.DEFINE_integer('n', 10, 'Recommendations per user.', lower_bound=1)
  flags.DEFINE_bool('exclude_seen', True, 'Leave the history\'s own items out.')
  flags.DEFINE_string('titles', None, 'A movies.csv/movies.dat/u.item (default: beside the '
                      'ratings the run was trained on).')
  flags.DEFINE_string('export', None, 'Also write an export for serving to this folder.')
  flags.DEFINE_bool('trust_code', False, 'Import the model module named in the workdir\'s '
                    'config.json (runs its code); needed for experiment models only.')


def run():
  """Console script entry point (vaecf-recommend)."""
  from vaecf import console
  _define_flags()
  console.cli(main, __name__)
