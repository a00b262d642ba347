"""Where a MuSe release keeps what, defined once (docs/data_format.md).

The 2020 release (MuSe-Wild, MuSe-CaR): `metadata/partition.csv`,
`c1_muse_wild/feature_segments/label_aligned/<set>/<Id>.csv` and
`c1_muse_wild/label_segments/<target>/<Id>.csv`, every file on a 250 ms grid (timestamps in ms).
Everything that names a path, a partition, a target or the grid step imports it from here.
"""
import os

PARTITION_CSV = os.path.join('metadata', 'partition.csv')
FEATURE_DIR = os.path.join('c1_muse_wild', 'feature_segments', 'label_aligned')
LABEL_DIR = os.path.join('c1_muse_wild', 'label_segments')
SPLITS = ('train', 'devel', 'test')
TARGETS = ('arousal', 'valence')
SEGMENT_ID = 'segment_id'  # the column of every file, and the input name of its values
STEP_MS = 250              # the label grid: one frame every 250 ms (4 Hz)


def feature_path(root: str, feature_set: str, vid: str) -> str:
  return os.path.join(root, FEATURE_DIR, feature_set, f'{vid}.csv')


def label_path(root: str, target: str, vid: str) -> str:
  return os.path.join(root, LABEL_DIR, target, f'{vid}.csv')


def feature_folder(root: str, feature_set: str = '') -> str:
  return os.path.join(root, FEATURE_DIR, feature_set) if feature_set else os.path.join(
      root, FEATURE_DIR)
