"""The one error wrapper of the command-line entry points: user errors as one line.

What a user can fix ends the command with one line `error: ...` and exit status 2, never a
traceback: a MuseError (bad data, config or workdir), a full or read-only disk met while writing
(the message names the path; checkpoints are only ever renamed into place, so the workdir keeps
its last good one), and Ctrl-C (exit 130; the same command resumes).
"""
import argparse
import errno
import os
import signal
import sys

from absl import app

from muse_jax.errors import MuseError

INTERRUPTED = 'interrupted; rerun the same command to resume'
_DISK_ERRNOS = {errno.ENOSPC: 'the disk is full', errno.EDQUOT: 'the disk quota is exceeded',
                errno.EROFS: 'the file system is read-only'}
_DISK_TEXT = {'No space left on device': errno.ENOSPC, 'Disk quota exceeded': errno.EDQUOT,
              'Read-only file system': errno.EROFS}


def disk_error(e: BaseException) -> str | None:
  """A one-line message if `e` (or what caused it: orbax and tensorstore rewrap I/O errors) is a
  full, over-quota or read-only disk; else None."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    code = e.errno if isinstance(e, OSError) else None
    if code not in _DISK_ERRNOS:
      code = next((c for t, c in _DISK_TEXT.items() if t in str(e)), None)
    if code is not None:
      path = getattr(e, 'filename', None) or _path_in(str(e))
      if path and '.orbax-checkpoint-tmp' in path:  # name the checkpoint, not orbax's internals
        path = path.split('.orbax-checkpoint-tmp')[0] + ' (checkpoint)'
      where = f'{path}: ' if path else ''
      return (f'{where}cannot write ({_DISK_ERRNOS[code]}); runs keep their last good checkpoint '
              'and builds are redone from the start: free space (or point --workdir/--data_dir '
              'elsewhere) and rerun the same command')
    e = e.__cause__ or e.__context__
  return None


def _path_in(text: str) -> str | None:
  for word in text.replace('"', ' ').replace("'", ' ').split():
    if word.startswith('/') and len(word) > 1:
      return word.rstrip(':,;.')
  return None


def _exit_on_signals():
  """Ctrl-C (or a scheduler's SIGTERM): the process ends with one line. Library threads (orbax, tfds, XLA) would each
  print their own traceback as KeyboardInterrupt unwinds them: leave without running them down
  (the workdir is consistent at any instant: every output is renamed into place)."""
  def handler(signum, frame):
    del frame
    sys.stderr.write(f'error: {INTERRUPTED}\n')
    sys.stderr.flush()
    os._exit(128 + signum)  # pylint: disable=protected-access
  signal.signal(signal.SIGINT, handler)
  signal.signal(signal.SIGTERM, handler)


def run_app(main, **kwargs) -> None:
  """absl app.run, with MuseError printed as `error: <message>` and exit status 2."""
  def wrapped(argv):
    from muse_jax.runtime import logs  # pylint: disable=import-outside-toplevel
    logs.quiet()  # absl's handler exists now; runtime.configure installs the same filter
    return main(argv)
  _exit_on_signals()
  try:
    app.run(wrapped, **kwargs)
  except MuseError as e:
    _exit_with(f'error: {e}')
  except Exception as e:  # pylint: disable=broad-except
    msg = disk_error(e)
    if msg is None:
      raise
    _exit_with(f'error: {msg}')


def _exit_with(line: str) -> None:
  """Prints `line` and exits 2 at once. Not sys.exit: orbax's and tensorstore's threads print
  tracebacks when the interpreter tears down under them (their executors and event loops are
  gone). Nothing is lost: every output is written to a temporary name and renamed into place."""
  sys.stderr.write(line + '\n')
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(2)  # pylint: disable=protected-access


def call(fn, *args):
  """For argparse entry points: (0, fn(*args)), or (2, None) after printing one `error:` line for
  a MuseError, a full disk or a missing package of the optional `features` extra."""
  from muse_jax.runtime import logs  # pylint: disable=import-outside-toplevel
  logs.quiet()
  try:
    return 0, fn(*args)
  except MuseError as e:
    print(f'error: {e}', file=sys.stderr)
  except ModuleNotFoundError as e:
    print(f'error: {e.name} is not installed; install the extra: pip install -e .[features]',
          file=sys.stderr)
  except Exception as e:  # pylint: disable=broad-except
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


def no_arguments(argv) -> None:
  """absl entry points take flags only: a stray word is one error line, not a silent no-op."""
  if len(argv) > 1:
    raise MuseError(f'command line: unexpected argument {argv[1]!r}; flags are written '
                    '--name=value (see --helpfull)')
