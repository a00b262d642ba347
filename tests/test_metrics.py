"""Metrics: the challenge CCC against an independent formula, partition concatenation, edge
cases."""

import numpy as np
import pytest

from muse_jax import metrics
from muse_jax.errors import MuseError


def _ref_ccc(y, p):
  """The challenge formula written out with sums: unbiased (n - 1) cov and variances."""
  n = len(y)
  my, mp = sum(y) / n, sum(p) / n
  cov = sum((a - my) * (b - mp) for a, b in zip(y, p)) / (n - 1)
  vy = sum((a - my) ** 2 for a in y) / (n - 1)
  vp = sum((b - mp) ** 2 for b in p) / (n - 1)
  return 2 * cov / (vy + vp + (my - mp) ** 2)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_metrics_match_independent_formulas(seed):
  rng = np.random.default_rng(seed)
  y = rng.normal(size=300)
  p = 0.6 * y + rng.normal(0.2, 0.5, size=300)
  assert metrics.ccc(y, p) == pytest.approx(_ref_ccc(y, p), abs=1e-12)
  assert metrics.pcc(y, p) == pytest.approx(np.corrcoef(y, p)[0, 1], abs=1e-12)
  assert metrics.rmse(y, p) == pytest.approx(np.sqrt(np.mean((y - p) ** 2)), abs=1e-12)


def test_undefined_metrics_are_zero_not_nan():
  assert metrics.ccc([0.3] * 5, [0.3] * 5) == 0.0
  assert metrics.ccc([0.3], [0.1]) == 0.0
  assert metrics.pcc([0.3] * 5, [1.0, 2.0, 3.0, 4.0, 5.0]) == 0.0
  assert np.isnan(metrics.rmse([], []))
  assert np.isnan(metrics.ccc([0.1, 0.2], [np.nan, 0.3]))  # NaN predictions stay visible


def test_partition_metrics_concatenate_videos_and_skip_nan_labels():
  rng = np.random.default_rng(3)
  lengths = [50, 7, 120]
  labels = [rng.normal(i, 1, size=(n, 2)) for i, n in enumerate(lengths)]
  preds = [y + rng.normal(0, 0.7, size=y.shape) for y in labels]
  nan_labels = [y.copy() for y in labels]
  nan_labels[1][:3, 0] = np.nan
  out = metrics.partition_metrics(nan_labels, preds, ['arousal', 'valence'])

  y, p = np.concatenate(labels), np.concatenate(preds)
  keep = np.ones(len(y), bool)
  keep[50:53] = False  # the NaN frames of video 1, target 0
  assert out['arousal']['ccc'] == pytest.approx(_ref_ccc(y[keep, 0], p[keep, 0]), abs=1e-12)
  assert out['valence']['ccc'] == pytest.approx(_ref_ccc(y[:, 1], p[:, 1]), abs=1e-12)
  assert out['valence']['pcc'] == pytest.approx(np.corrcoef(y[:, 1], p[:, 1])[0, 1], abs=1e-12)
  assert out['valence']['rmse'] == pytest.approx(np.sqrt(np.mean((y[:, 1] - p[:, 1]) ** 2)))
  assert out['mean_ccc'] == pytest.approx((out['arousal']['ccc'] + out['valence']['ccc']) / 2)
  per_video = np.mean([_ref_ccc(a[:, 1], b[:, 1]) for a, b in zip(labels, preds)])
  assert abs(out['valence']['ccc'] - per_video) > 1e-3  # concatenation, not a mean over videos


def test_partition_metrics_accepts_1d_arrays_for_one_target():
  rng = np.random.default_rng(4)
  labels = [rng.normal(size=n) for n in (9, 4)]
  preds = [y + rng.normal(size=y.shape) for y in labels]
  out = metrics.partition_metrics(labels, preds, ['valence'])
  assert out['mean_ccc'] == pytest.approx(
    _ref_ccc(np.concatenate(labels), np.concatenate(preds)), abs=1e-12
  )


def test_partition_metrics_rejects_mismatched_shapes():
  with pytest.raises(MuseError, match='video 1'):
    metrics.partition_metrics(
      [np.zeros((3, 1)), np.zeros((4, 1))], [np.zeros((3, 1)), np.zeros((5, 1))], ['arousal']
    )
  with pytest.raises(MuseError):
    metrics.partition_metrics([np.zeros((3, 2))], [np.zeros((3, 2))], ['arousal'])
