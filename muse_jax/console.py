"""What a user reads in the terminal, for every entry point: the run's own lines, and a user error
as one line `error: ...` with exit status 2.

Here, not in `cli`, because the data package's command lines (`python -m muse_jax.data.build`,
`muse_jax.data.demo`) use it and the data package imports nothing above it: this module imports
nothing of muse_jax but `errors` (tests/test_imports.py). `cli` adds what absl entry points need.

Library logs: dropped are orbax's and tfds' INFO lines (per-save throughput, 'Using custom data
configuration'), JAX's backend probes that fail by design on a host without that hardware
("Unable to initialize backend 'tpu' / 'proxy'", INFO) and its cache's 'Resetting cache' note, and
ERROR records about a full disk (orbax's writer threads each report it; the entry point says it
once). Warnings of every library still pass.
"""

import argparse
import logging as py_logging
import os
import sys

from muse_jax.errors import DISK_TEXT
from muse_jax.errors import MuseError
from muse_jax.errors import disk_error

_NOISY = ('/orbax/', '/tensorflow_datasets/')
_installed = False


class _LibraryFilter(py_logging.Filter):
  def filter(self, record):
    if record.levelno >= py_logging.ERROR and _about_full_disk(record):
      return False
    if record.levelno < py_logging.WARNING and (
      (
        'xla_bridge' in record.pathname
        and str(record.msg).startswith('Unable to initialize backend')
      )
      or ('compilation_cache' in record.pathname and str(record.msg).startswith('Resetting cache'))
    ):
      return False
    if not any(n in record.pathname for n in _NOISY):
      return True
    return record.levelno >= py_logging.WARNING and 'custom data configuration' not in str(
      record.msg
    )


def _about_full_disk(record) -> bool:
  if record.exc_info and record.exc_info[1] is not None and disk_error(record.exc_info[1]):
    return True
  try:
    text = record.getMessage()
  except Exception:  # noqa: BLE001
    return False
  return any(t in text for t in DISK_TEXT)


def quiet() -> None:
  """Installs the filter on the root and absl loggers and handlers (once per process)."""
  global _installed
  if _installed:
    return
  _installed = True
  f = _LibraryFilter()
  for logger in (
    py_logging.getLogger(),
    py_logging.getLogger('absl'),
    py_logging.getLogger('jax._src.xla_bridge'),
  ):
    logger.addFilter(f)
    for handler in logger.handlers:
      handler.addFilter(f)


def call(fn, *args):
  """For argparse entry points: (0, fn(*args)), or (2, None) after printing one `error:` line for
  a MuseError, a full disk or a missing package of the optional `features` extra."""
  quiet()
  try:
    return 0, fn(*args)
  except MuseError as e:
    print(f'error: {e}', file=sys.stderr)
  except ModuleNotFoundError as e:
    print(
      f'error: {e.name} is not installed; install the extra: pip install -e .[features]',
      file=sys.stderr,
    )
  except Exception as e:  # noqa: BLE001
    msg = disk_error(e)  # tfds and array_record rewrap I/O errors
    if msg is None:
      raise
    print(f'error: {msg}', file=sys.stderr)
  return 2, None


class ArgumentParser(argparse.ArgumentParser):
  """argparse with its usage errors as the one line every user error is: `error: ...`, exit 2
  (argparse prints the whole usage first)."""

  def error(self, message):
    print(f'error: {self.prog}: {message} (see --help)', file=sys.stderr)
    sys.exit(2)  # before any library thread exists: a plain exit (callers in-process can catch)


def path(text: str) -> str:
  """argparse type of every path argument: `~` expanded, as the shell does not after `--x=~/...`."""
  return os.path.expanduser(text)
