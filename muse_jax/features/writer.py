"""The 250 ms label grid and the release CSV format (`timestamp,segment_id,<D columns>`)."""
import os

import numpy as np
import pandas as pd

from muse_jax.errors import MuseError

STEP_MS = 250
FEATURE_DIR = os.path.join('c1_muse_wild', 'feature_segments', 'label_aligned')


def num_frames(duration_ms: float) -> int:
  """Grid points 0, 250, ... up to and including the duration (a 0 ms recording has one)."""
  if not np.isfinite(duration_ms) or duration_ms < 0:
    raise MuseError(f'duration must be a non-negative number of ms, got {duration_ms}')
  return int(duration_ms // STEP_MS) + 1


def grid(n: int) -> np.ndarray:
  return np.arange(n, dtype=np.int64) * STEP_MS


def feature_path(root: str, feature_set: str, vid: str) -> str:
  return os.path.join(root, FEATURE_DIR, feature_set, f'{vid}.csv')


def check_id(vid: str) -> str:
  vid = str(vid).strip()
  if not vid or os.sep in vid or vid in ('.', '..'):
    raise MuseError(f'--id {vid!r}: give a video id usable as a file name, e.g. 1001')
  return vid


def write_features(root: str, feature_set: str, vid: str, values: np.ndarray, names: list,
                   segment_id: int = 1) -> str:
  """Writes one video's set on the grid (row k at k * 250 ms); returns the path.

  Written to a temporary name first so a killed run never leaves a half file that the core would
  read as a short video.
  """
  values = np.asarray(values, np.float64)
  if values.ndim != 2 or values.shape[1] != len(names):
    raise ValueError(f'values {values.shape} do not match {len(names)} names')
  path = feature_path(root, feature_set, check_id(vid))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  frame = pd.DataFrame(values, columns=list(names))
  frame.insert(0, 'segment_id', np.full(len(values), int(segment_id), np.int64))
  frame.insert(0, 'timestamp', grid(len(values)))
  tmp = path + '.tmp'
  frame.to_csv(tmp, index=False, float_format='%.7g')
  os.replace(tmp, path)
  return path
