"""The package's architecture holds: the training core never imports serving, tools or
experiments; no module imports itself back through others; long modules say why."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / 'vaecf'
OUTSIDE_CORE = ('vaecf.serving', 'vaecf.tools', 'experiments')
MAX_LINES = 300


def _module_name(path: Path) -> str:
  parts = path.relative_to(REPO).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules() -> dict[str, Path]:
  return {_module_name(p): p for p in PKG.rglob('*.py') if '__pycache__' not in p.parts}


def _is_outside_core(name: str) -> bool:
  return any(name == o or name.startswith(o + '.') for o in OUTSIDE_CORE)


def _imports(path: Path, known: set[str]) -> set[str]:
  """Every module a file imports anywhere (top level or inside functions).

  `from a import b` counts as importing a.b when that is a module, else a: the
  package's __init__ is an edge only when a name is taken from it.
  """
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:
        sub = f'{node.module}.{a.name}'
        out.add(sub if sub in known else node.module)
  return out


def _graph() -> dict[str, set[str]]:
  mods = _modules()
  known = set(mods)
  return {m: {i for i in _imports(p, known) if i in known or i.startswith('experiments')}
          for m, p in mods.items()}


def test_core_never_imports_serving_tools_or_experiments():
  bad = {m: sorted(i for i in deps if _is_outside_core(i))
         for m, deps in _graph().items() if not _is_outside_core(m)}
  bad = {m: d for m, d in bad.items() if d}
  assert not bad, f'core modules importing outside the core: {bad}'


def test_core_imports_load_no_serving_or_tools_at_run_time():
  core = sorted(m for m in _modules() if not _is_outside_core(m) and
                not m.endswith('__main__'))
  code = ('import importlib, sys\n'
          f'for m in {core!r}: importlib.import_module(m)\n'
          f'bad = sorted(m for m in sys.modules if m.startswith({OUTSIDE_CORE!r}))\n'
          'assert not bad, bad\n')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as a list of modules (first == last), or None."""
  state, stack = {}, []

  def visit(m):
    state[m] = 'open'
    stack.append(m)
    for d in sorted(graph.get(m, ())):
      if state.get(d) == 'open':
        return stack[stack.index(d):] + [d]
      if d not in state:
        found = visit(d)
        if found:
          return found
    stack.pop()
    state[m] = 'done'
    return None

  for m in sorted(graph):
    if m not in state:
      found = visit(m)
      if found:
        return found
  return None


def test_the_cycle_finder_finds_a_cycle():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None


def test_no_import_cycles():
  cycle = find_cycle(_graph())
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_long_modules_say_why():
  files = list(PKG.rglob('*.py')) + list((REPO / 'experiments').glob('*.py'))
  long = []
  for p in files:
    n = len(p.read_text().splitlines())
    doc = ast.get_docstring(ast.parse(p.read_text())) or ''
    if n > MAX_LINES and 'lines because' not in doc:
      long.append(f'{p.relative_to(REPO)} ({n} lines)')
  assert not long, ('modules over %d lines whose docstring gives no reason ("... lines '
                    'because ..."): %s' % (MAX_LINES, long))


def test_wheel_installs_only_vaecf_with_its_commands_and_data(tmp_path):
  """`pip install .` ships vaecf alone (configs/ and experiments/ stay in the checkout),
  its models and tools, the embedded dataset, and the console scripts."""
  import zipfile
  proc = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '.', '-w',
                         str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
  if proc.returncode and ('connection' in proc.stderr.lower() or
                          'no matching distribution' in proc.stderr.lower()):
    import pytest
    pytest.skip(f'pip could not fetch the build backend: {proc.stderr[-300:]}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  (wheel,) = tmp_path.glob('vaecf-*.whl')
  names = zipfile.ZipFile(wheel).namelist()
  assert {n.split('/')[0] for n in names} == {'vaecf', wheel.name.split('-py')[0] + '.dist-info'}
  assert 'vaecf/datasets/ml-latest-small/ratings.csv' in names
  assert 'vaecf/datasets/ml-latest-small/README.txt' in names
  entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith('entry_points.txt')))
  for script in ('vaecf-train', 'vaecf-recommend', 'vaecf-data', 'vaecf-benchmark',
                 'vaecf-activity', 'vaecf-plot', 'vaecf-tune', 'vaecf-sweep',
                 'vaecf-select-beta', 'vaecf-paper-table', 'vaecf-ensemble'):
    assert script.encode() in entry
  for module in ('vaecf/models/recvae.py', 'vaecf/models/hvamp.py', 'vaecf/tools/tune.py',
                 'vaecf/presets.py'):
    assert module in names
