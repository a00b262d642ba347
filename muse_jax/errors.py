"""One error type for everything a user can fix: bad data, bad config, bad workdir; and the one
line a full or read-only disk is reported as.

Raised with a single-line message naming the file (and row/column) and what to do; the CLI entry
points print it as `error: <message>` and exit with status 2 instead of a traceback. A full disk
is no MuseError (libraries raise it, rewrapped in their own types), so `disk_error` recognises it
wherever it is caught: by the entry points (`cli`, `console`) and by the log filter that keeps
library threads from reporting it again (`console.quiet`). Imports nothing of muse_jax: every
module, the data package's too, may import it.
"""

import errno


class MuseError(Exception):
  """A user-fixable problem; str(e) is a complete one-line message."""


_DISK_ERRNOS = {
  errno.ENOSPC: 'the disk is full',
  errno.EDQUOT: 'the disk quota is exceeded',
  errno.EROFS: 'the file system is read-only',
}
# What libraries that rewrap an OSError (orbax, tensorstore, tfds) keep of it: its strerror.
DISK_TEXT = {
  'No space left on device': errno.ENOSPC,
  'Disk quota exceeded': errno.EDQUOT,
  'Read-only file system': errno.EROFS,
}


def disk_error(e: BaseException) -> str | None:
  """A one-line message if `e` (or what caused it: orbax and tensorstore rewrap I/O errors) is a
  full, over-quota or read-only disk; else None."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    code = e.errno if isinstance(e, OSError) else None
    if code not in _DISK_ERRNOS:
      code = next((c for t, c in DISK_TEXT.items() if t in str(e)), None)
    if code is not None:
      path = getattr(e, 'filename', None) or _path_in(str(e))
      if path and '.orbax-checkpoint-tmp' in path:  # name the checkpoint, not orbax's internals
        path = path.split('.orbax-checkpoint-tmp')[0] + ' (checkpoint)'
      where = f'{path}: ' if path else ''
      return (
        f'{where}cannot write ({_DISK_ERRNOS[code]}); runs keep their last good checkpoint '
        'and builds are redone from the start: free space (or point --workdir/--data_dir '
        'elsewhere) and rerun the same command'
      )
    e = e.__cause__ or e.__context__
  return None


def _path_in(text: str) -> str | None:
  for word in text.replace('"', ' ').replace("'", ' ').split():
    if word.startswith('/') and len(word) > 1:
      return word.rstrip(':,;.')
  return None
