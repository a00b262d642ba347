"""Shared fixtures: small generated MuSe-layout trees (the real data is under an EULA).

Also: 8 simulated CPU devices for the whole session (must be set before JAX initialises), and a
persistent compilation cache so the many tiny training runs compile each program once.
"""
import os
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

_CACHE = os.path.join(tempfile.gettempdir(), 'muse_jax_test_jit_cache')
jax.config.update('jax_compilation_cache_dir', _CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
# Child processes (the command run as a user would) share it too, instead of filling the user's
# own cache (muse_jax.runtime.compile_cache: a JAX_COMPILATION_CACHE_DIR that is set wins).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE)

from muse_jax import runtime  # pylint: disable=wrong-import-position
from muse_jax.data import demo  # pylint: disable=wrong-import-position

# As the entry points do (train_and_evaluate itself leaves the process alone): the compilation
# cache set above is kept, large CPU buffers are reused across steps.
runtime.configure()


@pytest.fixture(scope='session')
def tiny_tree(tmp_path_factory) -> str:
  """Root of a `tiny` demo tree (seed 0, default feature sets); treat as read-only."""
  root = tmp_path_factory.mktemp('tiny_tree') / 'root'
  demo.make_tree(str(root), scale='tiny', seed=0)
  return str(root)
