"""The label grid (layout.STEP_MS) and the release CSV format (`timestamp,segment_id,<D>`)."""
import os

import numpy as np
import pandas as pd

from muse_jax import files
from muse_jax.data import layout
from muse_jax.data.layout import STEP_MS
from muse_jax.errors import MuseError


def num_frames(duration_ms: float) -> int:
  """Grid points 0, 250, ... up to and including the duration (a 0 ms recording has one)."""
  if not np.isfinite(duration_ms) or duration_ms < 0:
    raise MuseError(f'duration must be a non-negative number of ms, got {duration_ms}')
  return int(duration_ms // STEP_MS) + 1


def grid(n: int) -> np.ndarray:
  return np.arange(n, dtype=np.int64) * STEP_MS


def check_id(vid: str) -> str:
  vid = str(vid).strip()
  if not vid or os.sep in vid or vid in ('.', '..'):
    raise MuseError(f'--id {vid!r}: give a video id usable as a file name, e.g. 1001')
  return vid


def write_features(root: str, feature_set: str, vid: str, values: np.ndarray, names: list,
                   segment_id: int = 1) -> str:
  """Writes one video's set on the grid (row k at k * STEP_MS); returns the path (atomically:
  a half file would be read as a short video)."""
  values = np.asarray(values, np.float64)
  if values.ndim != 2 or values.shape[1] != len(names):
    raise ValueError(f'values {values.shape} do not match {len(names)} names')
  path = layout.feature_path(root, feature_set, check_id(vid))
  frame = pd.DataFrame(values, columns=list(names))
  frame.insert(0, 'segment_id', np.full(len(values), int(segment_id), np.int64))
  frame.insert(0, 'timestamp', grid(len(values)))
  with files.atomic_path(path) as tmp:
    frame.to_csv(tmp, index=False, float_format='%.7g')
  return path
