"""Shared fixtures: small generated MuSe-layout trees (the real data is under an EULA)."""
import pytest

from muse_jax.data import demo


@pytest.fixture(scope='session')
def tiny_tree(tmp_path_factory) -> str:
  """Root of a `tiny` demo tree (seed 0, default feature sets); treat as read-only."""
  root = tmp_path_factory.mktemp('tiny_tree') / 'root'
  demo.make_tree(str(root), scale='tiny', seed=0)
  return str(root)
