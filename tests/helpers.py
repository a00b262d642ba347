"""Helpers shared by the test modules (fixtures live in conftest.py)."""

import json
import os
import shutil
import subprocess
import sys

import jax

from muse_jax import config_util
from muse_jax.data import layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'configs', 'tiny.py')
SCRIPTED_MAIN = os.path.join(REPO, 'tests', 'scripted_main.py')


def tiny_config(tree, data_dir, **overrides):
  """configs/tiny.py pointed at a tree and a tfds data_dir, with field overrides."""
  c = config_util.load_config('tiny')
  c.data_root, c.data_dir = tree, data_dir
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def read_lines(path) -> list:
  with open(path, encoding='utf-8') as f:
    return f.read().splitlines()


def write_lines(path, lines) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    f.write(''.join(l + '\n' for l in lines))


def read_json(path):
  with open(path, encoding='utf-8') as f:
    return json.load(f)


class TreeCopy:
  """A fresh copy of a (pristine) tree at `tmp`/root, with a tfds data_dir and a workdir beside
  it, the paths of its files and the edits that break them."""

  def __init__(self, src, tmp):
    self.tmp = str(tmp)
    self.root = os.path.join(self.tmp, 'root')
    shutil.copytree(src, self.root)
    self.data_dir = os.path.join(self.tmp, 'tfds')
    self.workdir = os.path.join(self.tmp, 'work')

  def feat(self, vid, name='egemaps'):
    return layout.feature_path(self.root, name, vid)

  def label(self, vid, target='arousal'):
    return layout.label_path(self.root, target, vid)

  @property
  def partition(self):
    return os.path.join(self.root, layout.PARTITION_CSV)

  lines = staticmethod(read_lines)
  write = staticmethod(write_lines)


# The command a user runs, in a child process.


def child_env(**extra) -> dict:
  """A child's environment: one CPU device as a plain user run (no simulated devices; the
  session's other XLA flags, see conftest), the session's compilation cache with every program in
  it, as conftest has it for the session (a child then compiles a program once for the whole
  suite, not once per run), tests/ importable (runner modules such as tests/scripted_main.py,
  tests/fault_main.py), plus `extra`."""
  env = dict(os.environ)
  flags = [
    f
    for f in env.pop('XLA_FLAGS', '').split()
    if not f.startswith('--xla_force_host_platform_device_count')
  ]
  if flags:
    env['XLA_FLAGS'] = ' '.join(flags)
  if jax.config.jax_compilation_cache_dir:
    env.update(
      JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
    )
  tests = os.path.join(REPO, 'tests')
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [tests, env.get('PYTHONPATH')]))
  env.update(extra)
  return env


def command(*args, module='muse_jax.main', config=TINY) -> list:
  """`python -m MODULE --config=CONFIG ARGS`: MODULE 'scripted_main' is muse_jax.main with the
  devel scores its schedule sees scripted (SCRIPTED_DEVEL, tests/scripted_main.py), 'fault_main'
  muse_jax.main with a disk fault (MUSE_FAULT, tests/fault_main.py)."""
  return [sys.executable, '-m', module, f'--config={config}', *args]


def train_command(workdir, tree, data_dir, *args, scripted=False) -> list:
  """`command` on a workdir, a tree and its tfds data_dir; `scripted`: through scripted_main."""
  return command(
    f'--workdir={workdir}',
    f'--data_root={tree}',
    f'--data_dir={data_dir}',
    *args,
    module='scripted_main' if scripted else 'muse_jax.main',
  )


def run(cmd, cwd=None, timeout=600, **extra_env):
  """`cmd` in a child process with `child_env(**extra_env)`; the CompletedProcess."""
  return subprocess.run(
    cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=child_env(**extra_env)
  )


def run_main(*args, cwd, module='muse_jax.main', timeout=300, **extra_env):
  """`command(*args, module=module)` in `cwd`; the CompletedProcess."""
  return run(command(*args, module=module), cwd, timeout, **extra_env)


def one_error(proc, *words) -> str:
  """Exit 2, exactly one `error:` line holding each of `words`, no traceback; the line."""
  err = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(err) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  for w in words:
    assert w in err[0], (w, err[0])
  return err[0]


def ok(proc) -> str:
  """Exit 0 without a traceback; the log (stderr)."""
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  return proc.stderr


def passed(proc):
  """`ok` for callers that keep the CompletedProcess (its stdout: the printed summary)."""
  ok(proc)
  return proc
