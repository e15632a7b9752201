"""Times the data pipeline on synthetic files of the real size and format.

  python -m vaecf.tools.data_scale --kind=msd --scale=1.0 --dir=/tmp/x
  python -m vaecf.tools.data_scale --kind=netflix --scale=0.01 --dir=/tmp/x

Writes `train_triplets.txt` (MSD Taste Profile: 48M `user<TAB>song<TAB>count`
lines, 40-hex-character user ids, 18-character song ids) or
`combined_data_1..4.txt` (Netflix Prize: 100M ratings under `MovieID:` lines),
then runs `python -m vaecf.data` on them with the paper's config (export and
cache included, in a fresh cache) and prints its wall time and peak RSS.
`--scale` shrinks the users and rows (and the MSD's songs) for a quick run.

Popularity and activity are heavy-tailed as in the real data: songs Zipf-like,
MSD users and Netflix movies and users log-normal; pairs are drawn from the
product of the two (Chung-Lu) and de-duplicated, so every line is a distinct
pair.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags

from vaecf.data import textio

REPO = Path(__file__).resolve().parents[2]

flags.DEFINE_enum('kind', 'msd', ['msd', 'netflix'], 'Which dataset to imitate.')
flags.DEFINE_float('scale', 1.0, 'Fraction of the real size (1.0: full size).')
flags.DEFINE_string('dir', None, 'Where to write the files, the cache and the export.')
flags.DEFINE_bool('reuse', False, 'Keep files already in --dir instead of writing them.')
flags.DEFINE_bool('write_only', False, 'Write the files, run nothing.')
flags.DEFINE_integer('seed', 0, 'Seed of the synthetic data.')
flags.mark_flags_as_required(['dir'])
FLAGS = flags.FLAGS

# The real sizes.
MSD = dict(lines=48_373_586, users=1_019_318, songs=384_546, heldout=50_000)
NETFLIX = dict(ratings=100_480_507, users=480_189, movies=17_770, heldout=40_000,
               max_user_id=2_649_429, files=(1, 4500, 9211, 13368))  # first movie of each file
_ROWS = 1 << 21  # lines formatted per write
TIME = '/usr/bin/time'


def _cdf(weights: np.ndarray) -> np.ndarray:
  c = np.cumsum(weights, dtype=np.float64)
  return c / c[-1]


def draw_pairs(n: int, row_w: np.ndarray, col_w: np.ndarray, rng) -> np.ndarray:
  """`n` distinct (row, col) pairs as sorted keys row * len(col_w) + col.

  Each draw picks a row and a column independently by weight; repeats are
  dropped and drawn again until `n` remain.
  """
  n_cols = len(col_w)
  if n > len(row_w) * n_cols:
    raise ValueError(f'{n} distinct pairs do not fit in {len(row_w)} x {n_cols}')
  rows, cols = _cdf(row_w), _cdf(col_w)
  keys, hit_rate = np.zeros(0, np.int64), 1.0
  while len(keys) < n:
    # Popular pairs come up again and again: draw for the share that was new last time.
    m = int((n - len(keys)) / hit_rate * 1.02) + 1000
    fresh = []
    for s in range(0, m, 1 << 23):  # bounded temporaries
      k = min(1 << 23, m - s)
      r = np.searchsorted(rows, rng.random(k), side='right').astype(np.int64)
      fresh.append(r * n_cols + np.searchsorted(cols, rng.random(k), side='right'))
    before = len(keys)
    keys = np.sort(np.concatenate([keys, *fresh]))
    del fresh
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
    hit_rate = max(0.01, (len(keys) - before) / m)
  if len(keys) > n:
    drop = rng.choice(len(keys), len(keys) - n, replace=False)
    keys = np.delete(keys, drop)
  return keys


def _random_text(rng, n: int, alphabet: bytes, width: int, prefix: bytes = b'') -> np.ndarray:
  """`n` distinct random ids (an 'S' array), `prefix` then `width` characters."""
  chars = np.frombuffer(alphabet, np.uint8)
  pre = np.frombuffer(prefix, np.uint8)
  out = np.zeros(0, f'S{len(prefix) + width}')
  while len(out) < n:
    body = chars[rng.integers(0, len(chars), (n - len(out), width))]
    mat = np.concatenate([np.broadcast_to(pre, (len(body), len(pre))), body], axis=1)
    out = np.unique(np.concatenate([out, np.ascontiguousarray(mat).view(out.dtype).ravel()]))
  return rng.permutation(out)


def write_msd(folder: Path, scale: float, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  n = max(1000, round(MSD['lines'] * scale))
  n_users = max(50, round(MSD['users'] * scale))
  n_songs = max(100, round(MSD['songs'] * scale))
  # Users in random order (random ids), as in the real file; songs sorted by
  # id within a user, as there.
  users = _random_text(rng, n_users, b'0123456789abcdef', 40)
  songs = np.sort(_random_text(rng, n_songs, b'0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ', 16, b'SO'))
  activity = rng.lognormal(0.0, 1.06, n_users) + 0.3
  popularity = (rng.permutation(n_songs) + 1.0 + 1000 * scale) ** -1.2  # Zipf-Mandelbrot
  keys = draw_pairs(n, activity, popularity, rng)
  path = folder / 'train_triplets.txt'
  with open(path, 'wb') as f:
    for s in range(0, n, _ROWS):
      k = keys[s:s + _ROWS]
      plays = np.minimum(rng.zipf(2.2, len(k)), 9999).astype('S')
      f.write(textio.format_lines([users[k // n_songs], songs[k % n_songs], plays], b'\t'))
  return dict(files=[str(path)], lines=n, users=n_users, songs=n_songs)


def write_netflix(folder: Path, scale: float, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  n = max(1000, round(NETFLIX['ratings'] * scale))
  n_users = max(50, round(NETFLIX['users'] * scale))
  n_movies = NETFLIX['movies']  # kept whole: fewer would make small runs denser than real
  user_ids = (rng.choice(NETFLIX['max_user_id'], n_users, replace=False) + 1).astype('S')
  # Rows are movies: the file is grouped by movie. The floor keeps every movie
  # rated; the caps are the real maxima (232,944 ratings of one movie, 17,653
  # of one user: ~41 and ~84 times the means).
  movie_w = rng.lognormal(0.0, 2.15, n_movies) + 0.02
  user_w = rng.lognormal(0.0, 1.25, n_users)
  keys = draw_pairs(n, np.minimum(movie_w, 41 * movie_w.mean()),
                    np.minimum(user_w, 84 * user_w.mean()), rng)
  days = np.arange('1999-11-11', '2006-01-01', dtype='datetime64[D]')
  dates = days.astype('S10')
  movie = keys // n_users
  first = NETFLIX['files']
  bounds = np.searchsorted(movie, np.asarray(first[1:]) - 1)  # movie ids are 1-based
  paths = []
  for part, (a, b) in enumerate(zip([0, *bounds], [*bounds, n]), 1):
    path = folder / f'combined_data_{part}.txt'
    paths.append(str(path))
    with open(path, 'wb') as f:
      for s in range(a, b, _ROWS):
        e = min(b, s + _ROWS)
        f.write(_netflix_lines(movie[s:e], movie[s - 1] if s > a else -1,
                               user_ids[keys[s:e] % n_users], rng, dates))
  return dict(files=paths, ratings=n, users=n_users, movies=n_movies)


def _netflix_lines(movie: np.ndarray, before: int, users: np.ndarray, rng, dates) -> bytes:
  """Rating lines `user,rating,date`, each movie's first one after a `MovieID:` line."""
  ratings = rng.choice(np.array([b'1', b'2', b'3', b'4', b'5']), len(movie),
                       p=[0.046, 0.101, 0.287, 0.336, 0.230])
  body = textio.format_lines([users, ratings, dates[rng.integers(0, len(dates), len(movie))]])
  starts = np.flatnonzero(np.concatenate([[movie[0] != before], movie[1:] != movie[:-1]]))
  if not len(starts):
    return body
  # Cut the block before each new movie's first rating and put its header there.
  line_ends = np.flatnonzero(np.frombuffer(body, np.uint8) == 10) + 1
  cut = np.concatenate([[0], line_ends])[starts]
  pieces, at = [], 0
  for c, m in zip(cut.tolist(), movie[starts].tolist()):  # one per movie: ~18k in all
    pieces += [body[at:c], b'%d:\n' % (m + 1)]
    at = c
  pieces.append(body[at:])
  return b''.join(pieces)


def run_pipeline(kind: str, data_path: Path, folder: Path, scale: float) -> dict:
  cache, export = folder / 'cache', folder / 'export'
  shutil.rmtree(cache, ignore_errors=True)  # a cache hit would time nothing
  config = f'{REPO / "configs" / "multvae.py"}:{kind}'  # the dataset's preset
  cmd = [sys.executable, '-m', 'vaecf.data', f'--config={config}',
         f'--config.data.path={data_path}', f'--config.data.cache_dir={cache}',
         f'--export_dir={export}']
  if scale != 1.0:
    h = (MSD if kind == 'msd' else NETFLIX)['heldout']
    cmd.append(f'--config.data.n_heldout_users={max(1, round(h * scale))}')
  # The child's own peak: RUSAGE_CHILDREN would also count the pages this
  # (larger) process had when it forked the child, before the exec.
  rss_file = folder / 'peak_rss_kib.txt'
  timed = [TIME, '-f', '%M', '-o', str(rss_file), *cmd] if os.access(TIME, os.X_OK) else cmd
  load = os.getloadavg()
  start = time.perf_counter()
  proc = subprocess.run(timed, cwd=REPO, capture_output=True, text=True)
  wall = time.perf_counter() - start
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  if proc.returncode:
    raise SystemExit(f'{" ".join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}')
  if timed is cmd:
    peak = usage.ru_maxrss / 1024  # an upper bound, see above
  else:
    peak = int(rss_file.read_text().split()[-1]) / 1024
    rss_file.unlink()
  return dict(command=' '.join(cmd), cpus=os.cpu_count(), wall_s=round(wall, 1),
              peak_rss_mib=round(peak),
              cpu_s=round(usage.ru_utime + usage.ru_stime, 1),
              load_before=[round(x, 2) for x in load],
              load_after=[round(x, 2) for x in os.getloadavg()], output=proc.stdout)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not 0 < FLAGS.scale <= 1:
    raise app.UsageError(f'--scale must be in (0, 1], got {FLAGS.scale}')
  folder = Path(FLAGS.dir)
  folder.mkdir(parents=True, exist_ok=True)
  kind, scale = FLAGS.kind, FLAGS.scale
  data_path = folder / 'train_triplets.txt' if kind == 'msd' else folder
  if FLAGS.reuse and (data_path.is_file() if kind == 'msd' else
                      (folder / 'combined_data_4.txt').is_file()):
    print(f'reusing the files in {folder}')
  else:
    start = time.perf_counter()
    made = (write_msd if kind == 'msd' else write_netflix)(folder, scale, FLAGS.seed)
    size = sum(Path(p).stat().st_size for p in made['files'])
    print(f'wrote {size / 2**30:.2f} GiB in {time.perf_counter() - start:.0f}s: '
          + json.dumps({k: v for k, v in made.items() if k != 'files'}), flush=True)
  if FLAGS.write_only:
    return
  res = run_pipeline(kind, data_path, folder, scale)
  print(res.pop('output'))
  print(json.dumps(res, indent=1))
  print(f'{kind} scale {scale}: wall {res["wall_s"]:.1f}s, peak RSS {res["peak_rss_mib"]:,} MiB')


if __name__ == '__main__':
  app.run(main)
