"""Helpers shared by the test modules (fixtures live in conftest.py)."""
import json
import os
import subprocess
import sys

from muse_jax import config_util

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


# The command a user runs, in a child process (tests/test_promises.py, tests/test_disk_faults.py).


def child_env(**extra) -> dict:
  """A child's environment: one CPU device as a plain user run (no simulated devices), the
  session's compilation cache (conftest exports it), tests/ importable (runner scripts such as
  tests/fault_main.py), plus `extra`."""
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  tests = os.path.join(REPO, 'tests')
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [tests, env.get('PYTHONPATH')]))
  env.update(extra)
  return env


def run(cmd, cwd=None, timeout=600, **extra_env):
  """`cmd` in a child process with `child_env(**extra_env)`; the CompletedProcess."""
  return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                        env=child_env(**extra_env))


def run_main(*args, cwd, module='muse_jax.main', timeout=300, **extra_env):
  """`python -m <module> --config=<repo>/configs/tiny.py ARGS` in `cwd`; the CompletedProcess."""
  cmd = [sys.executable, '-m', module, f'--config={REPO}/configs/tiny.py', *args]
  return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                        env=child_env(**extra_env))


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


def read_json(path):
  with open(path, encoding='utf-8') as f:
    return json.load(f)
