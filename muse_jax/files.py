"""Atomic writes: every file muse_jax writes appears whole or not at all.

A job killed mid-write (a cluster's preemption, Ctrl-C, a full disk) must never leave a file that
looks complete: a half prediction CSV would be scored, a half feature file read as a short video.
So files are written under a temporary name beside their target and renamed into place (rename
is atomic on one file system); `remove_stale_tmp` deletes what a killed job left.
"""

import contextlib
import os
import re

_TMP = re.compile(r'\.tmp\d+(\.(npz|png|csv))?$')


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ''):
  """Yields a temporary path beside `path` (ending in `suffix`, for writers that want an
  extension); it replaces `path` when the block ends without an exception, else is removed."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}{suffix}'
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError) and e.filename in (None, tmp):  # a failed write(2) names no file
      e.filename = path  # the error names the file being written, not its temporary name
    raise


def atomic_write(path: str, text: str) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)


def remove_stale_tmp(folder: str) -> None:
  """Deletes temporary files a killed job left under `folder` (never read: only renamed files
  count); orbax cleans its own checkpoints."""
  for parent, dirs, names in os.walk(folder):
    dirs[:] = [d for d in dirs if d != 'checkpoints']
    for name in names:
      if _TMP.search(name):
        os.remove(os.path.join(parent, name))
