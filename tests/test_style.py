"""The code passes the repository's linter and formatter (ruff.toml), so CI (`./run.sh test`)
holds the style, and every function-level import of the package says why it is not at the top."""

import os
import re
import subprocess
import sys

import helpers


def _ruff(*args) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, '-m', 'ruff', *args, '--no-cache', '.'],
    capture_output=True,
    text=True,
    cwd=helpers.REPO,
    check=False,
  )


def test_ruff_check_is_clean():
  proc = _ruff('check')
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]


def test_ruff_format_is_clean():
  proc = _ruff('format', '--check')
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:] + (
    '\nrun: .venv/bin/ruff format .'
  )


def test_every_function_level_import_of_the_package_says_why():
  bare = []
  for parent, _, names in os.walk(os.path.join(helpers.REPO, 'muse_jax')):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(parent, name)
        with open(path, encoding='utf-8') as f:
          for number, line in enumerate(f, 1):
            if 'noqa: PLC0415' in line and not re.search(r'noqa: PLC0415\s+\S', line):
              bare.append(f'{os.path.relpath(path, helpers.REPO)}:{number}')
  assert not bare, f'imports inside functions without a reason: {bare}'
