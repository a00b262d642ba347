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


def read_lines(path) -> list:
  with open(path, encoding='utf-8') as f:
    return f.read().splitlines()


def write_lines(path, lines) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    f.write(''.join(l + '\n' for l in lines))
