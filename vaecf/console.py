"""What a person sees when running a vaecf command: plain lines, no library noise.

Entry points call `setup()` after absl has parsed the flags. Without an explicit
`--verbosity`, INFO lines from vaecf (and experiments) print as bare messages,
warnings from anyone print as `warning: ...`, and library chatter at INFO (orbax's
line per checkpoint save, jax's probe of backends the machine lacks) is dropped.
With `--verbosity` (or `-v`) absl's own prefixed format and every record come back.
"""
from __future__ import annotations

import logging
import sys
import time

OWN_LOGGERS = ('vaecf', 'experiments', '__main__', 'absl')


class _Plain(logging.Formatter):
  def format(self, record: logging.LogRecord) -> str:
    msg = record.getMessage()
    if record.levelno >= logging.WARNING:
      msg = f'{record.levelname.lower()}: {msg}'
    if record.exc_info:
      msg += '\n' + self.formatException(record.exc_info)
    return msg


class _OwnInfoOnly(logging.Filter):
  """INFO from vaecf's own loggers; WARNING and above from everyone."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    return record.name.split('.')[0] in OWN_LOGGERS and 'orbax' not in record.pathname


def setup(verbose: bool | None = None) -> None:
  """Configures absl's handler for the console; `verbose=None` reads the flags."""
  from absl import logging as absl_logging
  if verbose is None:
    verbose = _verbose()
  handler = absl_logging.get_absl_handler()
  if verbose:
    return
  handler.setFormatter(_Plain())
  if not any(isinstance(x, _OwnInfoOnly) for x in handler.filters):
    handler.addFilter(_OwnInfoOnly())
  absl_logging.set_verbosity(absl_logging.INFO)


def _verbose() -> bool:
  from absl import flags
  f = flags.FLAGS
  return f.is_parsed() and 'verbosity' in f and f['verbosity'].present


def guard(fn, *args, **kwargs):
  """Runs fn; any failure becomes one `error: ...` line and exit status 1 (the traceback
  only with --verbosity). A user-facing error (common.VaecfError, an OSError) says what
  is wrong in the input; anything else is a fault of vaecf's, named as one. Files
  already written stay as they are."""
  from absl import app
  from vaecf.common import VaecfError
  try:
    return fn(*args, **kwargs)
  except app.UsageError:
    raise  # absl prints the usage
  except (VaecfError, OSError) as e:
    if _verbose():
      raise
    msg = str(e) if not isinstance(e, OSError) or not e.strerror else (
        f'{e.strerror}: {e.filename}' if e.filename else e.strerror)
    print(f'error: {msg}', file=sys.stderr)
    raise SystemExit(1) from None
  except Exception as e:  # noqa: BLE001  (an unexpected failure: still one line)
    if _verbose():
      raise
    print(f'error: unexpected {type(e).__name__}: {e}\n(a fault in vaecf, not in your '
          'input, as far as it can tell: rerun with --verbosity=0 for the traceback, and '
          'report it)', file=sys.stderr)
    raise SystemExit(1) from None


def guarded(main):
  """`app.run(console.guarded(main))`: main, with user-facing errors as one line."""
  def run(argv):
    return guard(main, argv)
  return run


def cli(main, module: str) -> None:
  """`app.run(guarded(main))` for a command that is both `python -m <module>` and an
  installed console script.

  absl's --help prints the docstring and the flags of `__main__`, keyed by sys.argv[0]:
  under a console script that is the script's wrapper, so --help would say nothing and
  exit 1. Here `module` (the caller's __name__) lends its docstring and flags to it.
  XLA's flags and the malloc settings are set first, before a config file is parsed
  (composing one imports the models, and with them JAX).
  """
  from absl import app, flags
  from vaecf import process
  process.prepare()
  main_module = sys.modules['__main__']
  if module != '__main__' and main_module is not sys.modules[module]:
    main_module.__doc__ = sys.modules[module].__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  help_asked = [a for a in sys.argv[1:] if a in ('--help', '-h', '-?', '--helpshort',
                                                  '--helpfull')]
  if help_asked:  # absl's --help exits 1, which reads as a failure to scripts
    app.usage(shorthelp=help_asked[0] != '--helpfull', writeto_stdout=True)
    print('Try --helpfull to get a list of all flags.' if help_asked[0] != '--helpfull'
          else '')
    raise SystemExit(0)
  app.run(guarded(main))


def fmt_time(s: float) -> str:
  s = int(round(s))
  return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'


def results_table(summary: dict[str, float], title: str) -> str:
  """The test metrics as a small aligned table: metric, mean, standard error (none for a
  catalogue metric such as coverage@K, one number for all users)."""
  names = [k for k in summary if not k.endswith('_se')]
  width = max([len(n) for n in names] + [6])
  lines = [title, f'  {"metric":<{width}}  {"mean":>7}  {"s.e.":>7}']
  for n in names:
    se = f'{summary[n + "_se"]:7.4f}' if n + '_se' in summary else f'{"-":>7}'
    lines.append(f'  {n:<{width}}  {summary[n]:7.4f}  {se}')
  return '\n'.join(lines)


class Progress:
  """A progress line within a long epoch.

  On a terminal one line is redrawn in place; in a log file a line is written
  every `every` seconds. Nothing is shown for epochs shorter than `after` seconds,
  so short epochs keep exactly one line each.
  """

  def __init__(self, label: str, total: int, *, after: float = 5.0, every: float = 30.0,
               stream=None, enabled: bool = True):
    self.label, self.total = label, total
    self.after, self.every = after, every
    self.stream = stream or sys.stderr
    self.enabled = enabled
    self.tty = self.enabled and hasattr(self.stream, 'isatty') and self.stream.isatty()
    self.t0 = self.last = time.perf_counter()
    self.drawn = False

  def due(self) -> bool:
    """Whether an update would show now (callers may then sync with the device)."""
    if not self.enabled:
      return False
    now = time.perf_counter()
    if now - self.t0 < self.after:
      return False
    return self.tty and now - self.last >= 1.0 or now - self.last >= self.every or (
        not self.drawn and not self.tty)

  def update(self, done: int, users: int) -> None:
    now = time.perf_counter()
    dt = now - self.t0
    rate = users / dt if dt > 0 else 0.0
    left = dt / max(done, 1) * (self.total - done)
    text = (f'{self.label}: {done}/{self.total} steps | {rate:.0f} users/s | '
            f'{fmt_time(left)} left in the epoch')
    self.last, self.drawn = now, True
    if self.tty:
      self.stream.write('\r' + text + '\033[K')
      self.stream.flush()
    else:
      logging.getLogger('vaecf.progress').info('  %s', text)

  def close(self) -> None:
    if self.tty and self.drawn:
      self.stream.write('\r\033[K')
      self.stream.flush()
