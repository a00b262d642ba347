"""The authors' README example: valence from egemaps + fasttext with segment id."""
from configs import default


def get_config():
  c = default.get_config()
  c.targets = ('valence',)
  c.feature_sets = ('egemaps', 'fasttext')
  c.add_segment_id = True
  return c
