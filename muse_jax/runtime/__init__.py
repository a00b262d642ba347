"""Process-wide settings, made once by the entry points (main, job, reproduce, predict, the
benchmarks) before JAX creates a backend: `configure(config)`.

Library functions (`train.train_and_evaluate`, `modes.evaluate`, ...) never change the process:
called from a notebook they run with whatever the caller set. What `configure` does, and why:
- `host_memory`: large CPU buffers kept in glibc's heap across steps, with synchronous CPU
  dispatch (config.reuse_cpu_buffers; each step page-faulted its temporaries back in otherwise);
- `compile_cache`: JAX's persistent compilation cache (config.compilation_cache_dir), so a
  repeated run loads its compiled steps instead of compiling them again;
- `console.quiet`: filters that keep the console to the run's own lines.
A second call with other settings keeps the first and says so: these are per process.
"""

from muse_jax import console
from muse_jax.runtime import compile_cache
from muse_jax.runtime import host_memory


def configure(config=None) -> dict:
  """Applies the settings of `config` (None: the defaults); returns what is in effect."""
  get = (lambda k, d: config.get(k, d)) if config is not None else (lambda k, d: d)
  console.quiet()
  reuse = host_memory.reuse_cpu_buffers(get('reuse_cpu_buffers', True))
  cache = compile_cache.enable(get('compilation_cache_dir', 'auto'))
  return {'reuse_cpu_buffers': reuse, 'compilation_cache_dir': cache}
