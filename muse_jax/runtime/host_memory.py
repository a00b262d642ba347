"""Keeps XLA's large CPU buffers allocated across steps instead of faulting them in every step.

Why: glibc's malloc serves every block over 32 MB with a fresh mmap and unmaps it on free. XLA:CPU
allocates an executable's temporaries (gigabytes for the paper's train step at batch 1024 x 200)
and its outputs per execution, so each step page-faulted all of it back in, and kernel time made
an epoch about twice as long (benchmarks/RESULTS.md has the measurements).

How: big blocks come from the heap (`M_MMAP_MAX` = 0) and a freed heap top is kept for the next
step (`M_TRIM_THRESHOLD` = max), so a step reuses the pages of the one before. Computations are
dispatched synchronously, so XLA allocates from the calling thread: glibc's other threads' arenas
would still mmap every block over 64 MB. The price is that the process keeps its peak heap until it
exits (the next step needs it anyway), and the host gathers the next batch after a step instead of
during it (a prefetch thread measured no gain on 2 cores: XLA keeps both busy). Only on the CPU
backend and with glibc.
"""

import ctypes
import sys

from absl import logging
import jax

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h
_state = None  # None: untouched; 'sync': dispatch set, allocator not yet; True/False: final
_asked = None  # the first reuse_cpu_buffers(enable) of this process decides


def _backends_initialized() -> bool:
  try:
    from jax._src import xla_bridge  # noqa: PLC0415  (private API, may move: guarded)

    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):  # private API moved: assume the worst
    return True


def prefer_sync_dispatch() -> bool:
  """First half, without initialising a backend (multi-host runs must call
  jax.distributed.initialize before that): asks for synchronous dispatch on CPU, which JAX reads
  when it creates its CPU client. Returns False if that client exists already."""
  global _state
  if _state is None:
    if jax.config.read('jax_cpu_enable_async_dispatch') and _backends_initialized():
      logging.info(
        'host memory: JAX was initialised before muse_jax could set synchronous '
        'dispatch; call muse_jax.runtime.configure() first to keep large CPU buffers '
        'allocated across steps'
      )
      _state = False
    else:
      jax.config.update('jax_cpu_enable_async_dispatch', False)  # no effect on GPU/TPU
      _state = 'sync'
  return _state is not False


def reuse_cpu_buffers(enable: bool = True) -> bool:
  """Applies the settings above once per process, if `enable` and on CPU with glibc; returns
  whether they are in effect. Initialises JAX's backend."""
  global _state, _asked
  if _asked is not None:
    if enable != _asked:
      logging.warning(
        'host memory: reuse_cpu_buffers=%s ignored: this process already applied '
        '%s (a per-process setting)',
        enable,
        _asked,
      )
    return _state is True
  _asked = enable
  if not enable:
    return False
  if not sys.platform.startswith('linux') or not prefer_sync_dispatch():
    _state = False
    return False
  _state = False
  if jax.default_backend() != 'cpu':
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):  # not glibc (e.g. musl): leave the allocator alone
    logging.info('host memory: no glibc mallopt; large CPU buffers are allocated per step')
    return False
  # mallopt returns 1 on success; the trim threshold's -1 becomes SIZE_MAX inside glibc.
  if mallopt(_M_MMAP_MAX, 0) != 1 or mallopt(_M_TRIM_THRESHOLD, -1) != 1:
    logging.warning('host memory: mallopt refused; large CPU buffers are allocated per step')
    return False
  logging.info(
    'host memory: large CPU buffers are kept in the heap and reused across steps '
    '(synchronous dispatch; config.reuse_cpu_buffers=False turns this off)'
  )
  _state = True
  return True
