"""Shared plumbing of the command-line entry points: user errors as one line, quiet libraries."""
import logging as py_logging
import sys

from absl import app

from muse_jax.errors import MuseError

_NOISY = ('/orbax/', '/tensorflow_datasets/')


class _LibraryFilter(py_logging.Filter):
  """Drops orbax's and tfds' INFO chatter (per-save throughput lines, 'Using custom data
  configuration') so the console shows the run's progress; their warnings still pass."""

  def filter(self, record):
    if not any(n in record.pathname for n in _NOISY):
      return True
    return record.levelno >= py_logging.WARNING and 'custom data configuration' not in str(
        record.msg)


def quiet_library_logs() -> None:
  for handler in py_logging.getLogger().handlers + py_logging.getLogger('absl').handlers:
    handler.addFilter(_LibraryFilter())
  py_logging.getLogger('absl').addFilter(_LibraryFilter())


def run_app(main, **kwargs) -> None:
  """absl app.run, with MuseError printed as `error: <message>` and exit status 2."""
  def wrapped(argv):
    quiet_library_logs()
    return main(argv)
  try:
    app.run(wrapped, **kwargs)
  except MuseError as e:
    sys.stderr.write(f'error: {e}\n')
    sys.exit(2)


def call(fn, *args):
  """For argparse entry points: (0, fn(*args)), or (2, None) after printing one `error:` line for
  a MuseError or a missing package of the optional `features` extra."""
  try:
    return 0, fn(*args)
  except MuseError as e:
    print(f'error: {e}', file=sys.stderr)
  except ModuleNotFoundError as e:
    print(f'error: {e.name} is not installed; install the extra: pip install -e .[features]',
          file=sys.stderr)
  return 2, None
