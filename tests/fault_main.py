"""`python -m muse_jax.main` with the failure a full or read-only disk gives, at one file.

Why: a real full or read-only disk needs mount rights (tests/test_cli_trust.py's variants skip
without them), and as root a read-only folder is still writable. Here the failure is raised where
the kernel raises it, for files whose path holds MUSE_FAULT's `path`:
- `at: write`: writing data fails, as write(2) reports a full disk: OSError(ENOSPC) without a
  file name (the file itself was created);
- `at: open`: creating or opening the file for writing fails, as open(2) reports a read-only file
  system (or a full one): the OSError names the file.
Python-level opens only (builtins/io.open, os.open): muse_jax's own files and orbax's metadata
files, not tensorstore's array chunks. Example: MUSE_FAULT='{"errno": "ENOSPC", "path":
"/checkpoints/2.orbax-checkpoint-tmp", "at": "write"}'. With SCRIPTED_DEVEL set, the command
runs through tests/scripted_main.py.
"""

import builtins
import errno
import io
import json
import os
import runpy

_FAULT = json.loads(os.environ['MUSE_FAULT'])
_CODE = getattr(errno, _FAULT['errno'])
_open, _os_open = io.open, os.open
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND


def _hit(path) -> bool:
  return isinstance(path, (str, os.PathLike)) and _FAULT['path'] in os.fspath(path)


def _fail(path=None):
  if path is None:
    return OSError(_CODE, os.strerror(_CODE))
  return OSError(_CODE, os.strerror(_CODE), os.fspath(path))


class _Unwritable:
  """An open file whose writes fail."""

  def __init__(self, f):
    self._f = f

  def write(self, *args):
    raise _fail()

  writelines = write

  def __getattr__(self, name):
    return getattr(self._f, name)

  def __iter__(self):
    return iter(self._f)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._f.close()


def _faulty_open(file, mode='r', *args, **kwargs):
  if any(c in mode for c in 'wax+') and _hit(file):
    if _FAULT['at'] == 'open':
      raise _fail(file)
    return _Unwritable(_open(file, mode, *args, **kwargs))
  return _open(file, mode, *args, **kwargs)


def _faulty_os_open(path, flags, *args, **kwargs):
  if _FAULT['at'] == 'open' and flags & _WRITE_FLAGS and _hit(path):
    raise _fail(path)
  return _os_open(path, flags, *args, **kwargs)


builtins.open = io.open = _faulty_open
os.open = _faulty_os_open
runpy.run_module(
  'scripted_main' if 'SCRIPTED_DEVEL' in os.environ else 'muse_jax.main',
  run_name='__main__',
  alter_sys=True,
)
