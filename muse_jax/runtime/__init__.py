"""Process-wide settings, made once by the entry points (main, job, reproduce, predict, the
benchmarks) before JAX creates a backend: `configure(config)`.

Library functions (`train.train_and_evaluate`, `inference.evaluate`, ...) never change the process:
called from a notebook they run with whatever the caller set. What `configure` does, and why:
- `host_memory`: large CPU buffers kept in glibc's heap across steps, with synchronous CPU
  dispatch (config.reuse_cpu_buffers; each step page-faulted its temporaries back in otherwise);
- `compile_cache`: JAX's persistent compilation cache (config.compilation_cache_dir), so a
  repeated run loads its compiled steps instead of compiling them again;
- `logs`: filters that keep the console to the run's own lines.
A second call with other settings keeps the first and says so: these are per process.
"""
from muse_jax.runtime import logs  # no JAX: the CLI wrapper of the data tools imports it


def configure(config=None) -> dict:
  """Applies the settings of `config` (None: the defaults); returns what is in effect."""
  from muse_jax.runtime import compile_cache  # pylint: disable=import-outside-toplevel
  from muse_jax.runtime import host_memory  # pylint: disable=import-outside-toplevel
  get = (lambda k, d: config.get(k, d)) if config is not None else (lambda k, d: d)
  logs.quiet()
  reuse = host_memory.reuse_cpu_buffers(get('reuse_cpu_buffers', True))
  cache = compile_cache.enable(get('compilation_cache_dir', 'auto'))
  return {'reuse_cpu_buffers': reuse, 'compilation_cache_dir': cache}
