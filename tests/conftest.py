"""Shared fixtures: small generated MuSe-layout trees (the real data is under an EULA).

Also, before JAX initialises: the CPU backend with 8 simulated devices for the whole session and
the child processes it starts (JAX_PLATFORMS=cpu: on a GPU or TPU machine the tests that simulate
devices, and every expected value computed on the CPU, would otherwise land on the accelerator;
tests of the real accelerator drop the variable in their own child, test_accelerator.py), and a
persistent compilation cache of this checkout, so the many tiny training runs compile each
program once without sharing compiled code with another clone or user.
"""

import os

os.environ['JAX_PLATFORMS'] = 'cpu'
# XLA's CPU kernels optimised by LLVM at -O1 instead of its default -O2, here and in the children
# (helpers.child_env): the suite compiles a few hundred tiny programs that each run for a few
# steps, and compiling is most of a tiny run's time (-O1: a cold tiny run a quarter shorter, with
# the same results to the printed digits). Checks of speed or memory set their own XLA_FLAGS and
# keep the default (test_device_check.py, test_host_memory.py's probe).
os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '')
  + ' --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=1'
).strip()

import jax
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Inside the checkout (ignored by git; `pytest --cache-clear` empties it with pytest's own cache).
_CACHE = os.path.join(REPO, '.pytest_cache', 'muse_jax_jit')
jax.config.update('jax_compilation_cache_dir', _CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
# Child processes (the command run as a user would) share it too, instead of filling the user's
# own cache (muse_jax.runtime.compile_cache: a JAX_COMPILATION_CACHE_DIR that is set wins).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE)

from muse_jax import runtime
from muse_jax.data import demo

# As the entry points do (train_and_evaluate itself leaves the process alone): the compilation
# cache set above is kept, large CPU buffers are reused across steps.
runtime.configure()


@pytest.fixture(scope='session')
def tiny_tree(tmp_path_factory) -> str:
  """Root of a `tiny` demo tree (seed 0, default feature sets); treat as read-only."""
  root = tmp_path_factory.mktemp('tiny_tree') / 'root'
  demo.make_tree(str(root), scale='tiny', seed=0)
  return str(root)


@pytest.fixture(scope='session')
def pristine(tmp_path_factory) -> tuple:
  """(root, summary) of a `tiny` demo tree (seed 0) with only the feature sets configs/tiny.py
  reads (egemaps, fasttext); tests break copies of it (helpers.TreeCopy), never the tree itself."""
  root = tmp_path_factory.mktemp('pristine') / 'root'
  summary = demo.make_tree(str(root), scale='tiny', seed=0, features='egemaps,fasttext')
  return str(root), summary
