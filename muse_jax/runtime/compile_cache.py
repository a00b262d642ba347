"""Persistent XLA compilation cache: a repeated run loads its compiled steps from disk.

Why: every run compiles its train step (and the last, smaller batch's), and one evaluation step
per length bucket for devel, test and the final scoring: a sizeable part of a short run on CPU
(benchmarks/RESULTS.md). Another seed, a sweep over anything but shapes (learning rate, patience,
loss weights), evaluate or predict after training, and a resumed run compile exactly the same
programs again. JAX's cache is keyed by the program and its compile options, so a hit is the
executable a compile would have produced; the results of a run do not change
(tests/test_compile_cache.py).
"""

import os

from absl import logging
import jax

_JAX_DEFAULT_MIN_COMPILE_SECS = 1.0
_decided = False


def default_dir() -> str:
  """$XDG_CACHE_HOME/muse_jax/xla, else ~/.cache/muse_jax/xla: per user, like pip's cache."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'muse_jax', 'xla')


def enable(setting: str = 'auto'):
  """Turns JAX's persistent compilation cache on, once per process; returns its folder or None.

  setting (config.compilation_cache_dir): 'auto' = default_dir(), a folder, or '' / 'none' = off.
  A folder already given to JAX (JAX_COMPILATION_CACHE_DIR, jax.config) is kept as it is. Every
  program is cached, not only those compiling for over a second (JAX's default): the evaluation
  buckets compile in well under a second each, but there are many. Call before compiling; the
  first call in a process decides (the cache is process-wide).
  """
  global _decided
  off = not setting or str(setting).strip().lower() == 'none'
  path = (
    None
    if off
    else (default_dir() if setting == 'auto' else os.path.abspath(os.path.expanduser(setting)))
  )
  current = jax.config.jax_compilation_cache_dir
  if current or _decided:
    if setting != 'auto' and path != (current or None):
      logging.warning(
        'compilation cache: already %s in this process; %s ignored (the cache is '
        'process-wide: set it before the first run)',
        current or 'off',
        path or 'off',
      )
    return current or None
  _decided = True
  if off:
    return None
  try:
    # Only this user may write there: a cached executable is code the next run executes.
    os.makedirs(path, mode=0o700, exist_ok=True)
  except OSError as e:
    logging.warning(
      'compilation cache: cannot use %s (%s); every run compiles its steps', path, e.strerror or e
    )
    return None
  jax.config.update('jax_compilation_cache_dir', path)
  if jax.config.jax_persistent_cache_min_compile_time_secs == _JAX_DEFAULT_MIN_COMPILE_SECS:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  try:  # JAX decides whether to use the cache at its first compilation: let it decide again.
    from jax.experimental.compilation_cache import compilation_cache  # noqa: PLC0415  (experimental: guarded)

    compilation_cache.reset_cache()
  except (ImportError, AttributeError):
    pass
  logging.info('compilation cache: %s (config.compilation_cache_dir=none turns it off)', path)
  return path
