"""The label grid (a step in ms: the tree's own, `tree_step`) and the release CSV format
(`timestamp,segment_id,<D>`), in the tree's layout (`layout.of`)."""

import os

import numpy as np
import pandas as pd

from muse_jax import files
from muse_jax.data import layout
from muse_jax.data import reader
from muse_jax.data.csv_table import read_table
from muse_jax.errors import MuseError

STEP_MS = layout.DEFAULT_STEP_MS  # when neither --step_ms nor the tree's labels tell


def check_step(step_ms) -> int:
  if isinstance(step_ms, bool) or not float(step_ms).is_integer() or not 1 <= step_ms <= 60000:
    raise MuseError(
      f'--step_ms {step_ms}: the grid step must be a whole number of ms in '
      '[1, 60000] (250 for MuSe-CaR, 500 for Ulm-TSST)'
    )
  return int(step_ms)


def out_layout(root: str):
  """The layout features are written in: that of `root` if it is one (or holds exactly one task),
  the 2020 layout for a folder holding no layout (new, empty, or just recordings); a release root
  with several tasks or a 2020 `c1_muse_wild` folder is refused, so nothing lands where no reader
  looks."""
  root = os.path.abspath(os.path.expanduser(root))
  if os.path.isdir(os.path.join(root, 'feature_segments', 'label_aligned')) or (
    os.path.isdir(root) and layout.tasks(root)
  ):
    return layout.resolve(root)
  # A layout root still without partition.csv or features keeps the shape its folders show; a
  # folder with no layout yet gets the 2020 one, as the feature tools always wrote.
  return layout.of(root)


def tree_step(root: str) -> int:
  """The grid step of the labels already in `root` (so new features land on them), else
  STEP_MS; read from the first label file with two rows or more."""
  lay = out_layout(root)
  for target in lay.targets():
    folder = lay.label_folder(target)
    for name in sorted(f for f in os.listdir(folder) if f.endswith('.csv')):
      table = read_table(os.path.join(folder, name))
      low = [c.lower() for c in table.columns]
      if 'timestamp' in low:
        step = reader.grid_step(table.values[:, low.index('timestamp')])
        if step > 0:
          return step
  return STEP_MS


def num_frames(duration_ms: float, step_ms: int = STEP_MS) -> int:
  """Grid points 0, step, ... up to and including the duration (a 0 ms recording has one)."""
  if not np.isfinite(duration_ms) or duration_ms < 0:
    raise MuseError(f'duration must be a non-negative number of ms, got {duration_ms}')
  return int(duration_ms // step_ms) + 1


def grid(n: int, step_ms: int = STEP_MS) -> np.ndarray:
  return np.arange(n, dtype=np.int64) * step_ms


def check_id(vid: str) -> str:
  vid = str(vid).strip()
  if not vid or os.sep in vid or vid in ('.', '..'):
    raise MuseError(f'--id {vid!r}: give a video id usable as a file name, e.g. 1001')
  return vid


def write_features(
  root: str,
  feature_set: str,
  vid: str,
  values: np.ndarray,
  names: list,
  segment_id: int = 1,
  step_ms: int = STEP_MS,
) -> str:
  """Writes one video's set on the grid (row k at k * step_ms); returns the path (atomically:
  a half file would be read as a short video)."""
  values = np.asarray(values, np.float64)
  if values.ndim != 2 or values.shape[1] != len(names):
    raise ValueError(f'values {values.shape} do not match {len(names)} names')
  path = out_layout(root).feature_path(feature_set, check_id(vid))
  frame = pd.DataFrame(values, columns=list(names))
  frame.insert(0, 'segment_id', np.full(len(values), int(segment_id), np.int64))
  frame.insert(0, 'timestamp', grid(len(values), step_ms))
  with files.atomic_path(path) as tmp:
    frame.to_csv(tmp, index=False, float_format='%.7g')
  return path
