"""configs/arousal.py with every input z-normalised with the train statistics (the segment id too):
muse_jax's earlier default, kept as its own config to compare against the authors' raw inputs."""

from configs import arousal


def get_config():
  c = arousal.get_config()
  c.normalize = 'all'
  return c
