"""`Video`: one video on its label grid, the one type every stage passes on.

The reader makes it from the CSVs (features of one set, every target of the release), the build
stores it and gives it back (`build.FeatureSet.read`), the sources join the sets and keep the
run's targets (`select`), normalisation rewrites `x` in place, and batches, metrics, predictions
and plots read it.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass
class Video:
  id: str
  timestamp: np.ndarray  # [T] int64, ms
  segment_id: np.ndarray  # [T] int32
  x: np.ndarray  # [T, D] float32 (None while a joined video waits for its mapped rows)
  y: np.ndarray  # [T, K] float32, NaN where there is no label
  targets: tuple  # the K names of y's columns
  labelled: tuple  # per target: whether the video has a label file (test may not)

  @property
  def has_labels(self) -> bool:
    """Every target labelled (metrics use only such videos)."""
    return all(self.labelled)

  def label(self, target: str) -> np.ndarray:
    return self.y[:, self.targets.index(target)]

  def has(self, target: str) -> bool:
    return self.labelled[self.targets.index(target)]

  def select(self, targets) -> 'Video':
    """The same video with only `targets` as labels, in that order; a target it has no labels
    for (a tree without that label folder: predict on new data) is NaN and unlabelled."""
    y = np.full((len(self.timestamp), len(targets)), np.nan, np.float32)
    labelled = []
    for j, t in enumerate(targets):
      if t in self.targets:
        y[:, j] = self.y[:, self.targets.index(t)]
      labelled.append(t in self.targets and self.labelled[self.targets.index(t)])
    return dataclasses.replace(self, y=y, targets=tuple(targets), labelled=tuple(labelled))

  def head(self, n: int) -> 'Video':
    """The first n frames."""
    return self.rows(0, n)

  def rows(self, start: int, stop: int) -> 'Video':
    """Frames start..stop-1."""
    return dataclasses.replace(
      self,
      timestamp=self.timestamp[start:stop],
      segment_id=self.segment_id[start:stop],
      x=None if self.x is None else self.x[start:stop],
      y=self.y[start:stop],
    )


def unlabelled(vid: str, timestamp, segment_id, x, targets) -> Video:
  """A video without labels (a new recording, a test video of a challenge)."""
  t = np.asarray(timestamp, np.int64)
  return Video(
    vid,
    t,
    np.asarray(segment_id, np.int32),
    x,
    np.full((len(t), len(targets)), np.nan, np.float32),
    tuple(targets),
    (False,) * len(targets),
  )
