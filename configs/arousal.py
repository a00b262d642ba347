"""Arousal with the paper's settings; acoustic features carry most of the arousal signal."""
from configs import default


def get_config():
  c = default.get_config()
  c.targets = ('arousal',)
  c.feature_sets = ('egemaps',)
  return c
