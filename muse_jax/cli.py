"""The one error wrapper of the command-line entry points: user errors as one line.

What a user can fix ends the command with one line `error: ...` and exit status 2, never a
traceback: a MuseError (bad data, config or workdir), a full or read-only disk met while writing
(the message names the path; checkpoints are only ever renamed into place, so the workdir keeps
its last good one), and Ctrl-C (exit 130; the same command resumes).

absl entry points (`run_app`, `no_arguments`) live here; the argparse ones' helpers (`call`,
`ArgumentParser`, `path`) and the library log filter live in `console`, which the data package's
command lines may import, and are named here too so that every entry point finds them in `cli`.
"""

import os
import signal
import sys

from absl import app

from muse_jax import console
from muse_jax.errors import MuseError
from muse_jax.errors import disk_error

INTERRUPTED = 'interrupted; rerun the same command to resume'
# The argparse entry points' helpers, under the names every entry point outside data/ uses.
ArgumentParser = console.ArgumentParser
call = console.call
path = console.path


def _exit_on_signals():
  """Ctrl-C (or a scheduler's SIGTERM): the process ends with one line. Library threads (orbax,
  tfds, XLA) would each print their own traceback as KeyboardInterrupt unwinds them: leave
  without running them down (the workdir is consistent at any instant: every output is renamed
  into place)."""

  def handler(signum, frame):
    del frame
    sys.stderr.write(f'error: {INTERRUPTED}\n')
    sys.stderr.flush()
    os._exit(128 + signum)

  signal.signal(signal.SIGINT, handler)
  signal.signal(signal.SIGTERM, handler)


def run_app(main, **kwargs) -> None:
  """absl app.run, with MuseError printed as `error: <message>` and exit status 2."""

  def wrapped(argv):
    console.quiet()  # absl's handler exists now; runtime.configure installs the same filter
    return main(argv)

  _exit_on_signals()
  try:
    app.run(wrapped, **kwargs)
  except MuseError as e:
    _exit_with(f'error: {e}')
  except Exception as e:  # noqa: BLE001
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
  os._exit(2)


def no_arguments(argv) -> None:
  """absl entry points take flags only: a stray word is one error line, not a silent no-op."""
  if len(argv) > 1:
    raise MuseError(
      f'command line: unexpected argument {argv[1]!r}; flags are written '
      '--name=value (see --helpfull)'
    )
