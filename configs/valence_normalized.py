"""configs/valence.py with every input z-normalised with the train statistics (the segment id too):
muse_jax's earlier default, kept as its own config to compare against the authors' raw inputs."""

from configs import valence


def get_config():
  c = valence.get_config()
  c.normalize = 'all'
  return c
