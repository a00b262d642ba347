"""A frame-wise linear baseline: ridge regression from one frame's inputs to its labels.

The demo's labels are built to need temporal context, so this is the floor a sequence model has
to clear by a wide margin; it is computed on exactly the normalised inputs the model sees.
"""

import numpy as np

from muse_jax import metrics as metrics_lib


def ridge_fit(videos, alpha: float = 1.0):
  x = np.concatenate([v.x for v in videos]).astype(np.float64)
  y = np.concatenate([v.y for v in videos]).astype(np.float64)
  keep = np.all(np.isfinite(y), axis=1)
  x, y = x[keep], y[keep]
  x1 = np.hstack([x, np.ones((len(x), 1))])
  reg = alpha * np.eye(x1.shape[1])
  reg[-1, -1] = 0.0  # do not shrink the intercept
  return np.linalg.solve(x1.T @ x1 + reg, x1.T @ y)


def ridge_predict(w, videos):
  return [np.hstack([v.x, np.ones((len(v.x), 1))]) @ w for v in videos]


def ridge_metrics(train_videos, eval_videos, targets, alpha: float = 1.0, bootstrap=(0, 0)):
  """Fits on train, returns partition metrics on the labelled eval videos (`bootstrap`:
  (samples, seed) of their intervals, as a run's)."""
  w = ridge_fit(train_videos, alpha)
  labelled = [v for v in eval_videos if v.has_labels]
  return metrics_lib.partition_metrics(
    [v.y for v in labelled], ridge_predict(w, labelled), targets, *bootstrap
  )
