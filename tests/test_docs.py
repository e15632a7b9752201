"""README.md and docs/ hold what they should, and every command they show is spelled as the
code takes it: the script exists, its flags are its own, the config file and dataset preset
exist, and every --config.KEY override names a key of that config."""
import functools
import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from vaecf import presets

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']['scripts']
MODULES = {'vaecf.main': 'vaecf-train', 'vaecf.data': 'vaecf-data',
           'vaecf.serving': 'vaecf-recommend',
           **{target.split(':')[0]: name for name, target in SCRIPTS.items()}}
PAGES = ['protocol.md', 'data.md', 'models.md', 'tuning.md', 'sweeps.md', 'scale.md',
         'serving.md', 'lifecycle.md', 'results/ml-1m.md', 'results/lastfm.md',
         'results/ml-latest-small.md']
DOCS = [REPO / 'README.md', REPO / 'experiments' / 'README.md'] + sorted(
    (REPO / 'docs').rglob('*.md'))


def test_readme_is_short_and_links_every_page():
  text = (REPO / 'README.md').read_text()
  assert len(text.splitlines()) <= 220
  for page in PAGES:
    assert (REPO / 'docs' / page).exists(), page
    assert f'docs/{page}' in text, f'README does not link docs/{page}'


@pytest.mark.parametrize('page', PAGES)
def test_each_page_opens_with_its_command(page):
  lines = (REPO / 'docs' / page).read_text().splitlines()
  body = [l for l in lines[1:] if l.strip()]
  assert body and body[0].startswith('```'), f'{page} does not open with a command'
  assert re.search(r'\bvaecf-[a-z-]+ ', body[1]), body[1]


def test_no_document_reports_test_timings():
  timing = re.compile(r'(pytest|test suite|the suite|tests? (took|ran|run in))[^.\n]*'
                      r'\b\d+(\.\d+)? ?(s|sec|seconds|min|minutes)\b', re.I)
  found = [f'{p.relative_to(REPO)}: {m.group(0)}' for p in DOCS
           for m in timing.finditer(p.read_text())]
  assert not found, found


def commands(text: str):
  """Each command line in the fenced code blocks: (script, tokens), continuations joined."""
  for block in re.findall(r'```[a-z]*\n(.*?)```', text, re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      line = line.strip()
      m = re.match(r'(vaecf-[a-z-]+)\s|python3? -m (vaecf[\w.]*)\s', line + ' ')
      if not m:
        continue
      script = m.group(1) or MODULES.get(m.group(2), m.group(2))
      yield line, script, shlex.split(line, comments=True)[1 if m.group(1) else 3:]


ALL = [(p.relative_to(REPO), line, script, tokens) for p in DOCS
       for line, script, tokens in commands(p.read_text())]


def test_the_docs_show_commands():
  assert len(ALL) > 40 and {s for _, _, s, _ in ALL} >= set(SCRIPTS) - {'vaecf-plot'}


@functools.lru_cache(maxsize=None)
def flags_of(script: str) -> frozenset[str]:
  module = SCRIPTS[script].split(':')[0]
  proc = subprocess.run([sys.executable, '-c', f'import sys; sys.argv = ["{script}", '
                         f'"--helpfull"]; import {module} as m; '
                         f'm.{SCRIPTS[script].split(":")[1]}()'],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return frozenset(re.findall(r'^\s+--(?:\[no\])?([\w.]+)', proc.stdout, re.M))


@functools.lru_cache(maxsize=None)
def config_of(spec: str):
  file, _, dataset = spec.partition(':')
  s = importlib.util.spec_from_file_location('_doc_cfg', REPO / file)
  module = importlib.util.module_from_spec(s)
  s.loader.exec_module(module)
  return module.get_config(dataset) if dataset else module.get_config()


@pytest.mark.slow
def test_every_command_in_the_docs_is_spelled_as_the_code_takes_it():
  problems = []
  for page, line, script, tokens in ALL:
    where = f'{page}: {line[:100]}'
    if script not in SCRIPTS:  # a module run with python -m that is no console script
      if script.startswith('vaecf-') or importlib.util.find_spec(script) is None:
        problems.append(f'{where}: no command {script}')
      continue
    config = None
    for tok in tokens:
      if tok.startswith('--config=') and '<' not in tok and '...' not in tok:
        spec = tok.split('=', 1)[1]
        file, _, dataset = spec.partition(':')
        if not (REPO / file).exists():
          problems.append(f'{where}: no config file {file}')
        elif dataset and dataset not in presets.DATASETS:
          problems.append(f'{where}: no dataset preset {dataset!r}')
        else:
          config = config_of(spec)
    for tok in tokens:
      tok = tok.strip('[]')
      if not tok.startswith('--') or '<' in tok.split('=')[0]:
        continue
      name = tok[2:].split('=', 1)[0]
      if name.startswith('config.'):
        keys = name.split('.')[1:]
        node = config if config is not None else config_of('configs/default.py')
        for k in keys:
          if k not in node:
            problems.append(f'{where}: {name} is not a config key')
            break
          node = node[k]
      elif name not in flags_of(script) and not (name.startswith('no') and
                                                 name[2:] in flags_of(script)):
        problems.append(f'{where}: {script} has no flag --{name}')
  assert not problems, '\n'.join(problems)
