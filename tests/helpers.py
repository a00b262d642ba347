"""Helpers shared by the test modules (fixtures live in conftest.py)."""
import os

from muse_jax import config_util

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(tree, data_dir, **overrides):
  """configs/tiny.py pointed at a tree and a tfds data_dir, with field overrides."""
  c = config_util.load_config('tiny')
  c.data_root, c.data_dir = tree, data_dir
  for k, v in overrides.items():
    setattr(c, k, v)
  return c
