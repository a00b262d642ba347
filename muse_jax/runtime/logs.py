"""Log filters for the console a user reads: the run's progress, not its libraries' chatter.

Dropped: orbax's and tfds' INFO lines (per-save throughput, 'Using custom data configuration'),
JAX's backend probes that fail by design on a host without that hardware ("Unable to initialize
backend 'tpu' / 'proxy'", INFO) and its cache's 'Resetting cache' note, and ERROR records about a full disk (orbax's writer threads each
report it; the entry point says it once, `cli`). Warnings of every library still pass.
"""
import logging as py_logging

_NOISY = ('/orbax/', '/tensorflow_datasets/')
_DISK_TEXT = ('No space left on device', 'Disk quota exceeded', 'Read-only file system')
_installed = False


class _LibraryFilter(py_logging.Filter):

  def filter(self, record):
    if record.levelno >= py_logging.ERROR and _about_full_disk(record):
      return False
    if record.levelno < py_logging.WARNING and (
        ('xla_bridge' in record.pathname and str(record.msg).startswith('Unable to initialize '
                                                                          'backend')) or
        ('compilation_cache' in record.pathname and str(record.msg).startswith('Resetting cache'))):
      return False
    if not any(n in record.pathname for n in _NOISY):
      return True
    return record.levelno >= py_logging.WARNING and 'custom data configuration' not in str(
        record.msg)


def _about_full_disk(record) -> bool:
  from muse_jax import cli  # pylint: disable=import-outside-toplevel
  if record.exc_info and record.exc_info[1] is not None and cli.disk_error(record.exc_info[1]):
    return True
  try:
    text = record.getMessage()
  except Exception:  # pylint: disable=broad-except
    return False
  return any(t in text for t in _DISK_TEXT)


def quiet() -> None:
  """Installs the filter on the root and absl loggers and handlers (once per process)."""
  global _installed
  if _installed:
    return
  _installed = True
  f = _LibraryFilter()
  for logger in (py_logging.getLogger(), py_logging.getLogger('absl'),
                 py_logging.getLogger('jax._src.xla_bridge')):
    logger.addFilter(f)
    for handler in logger.handlers:
      handler.addFilter(f)
