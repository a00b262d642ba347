"""Challenge metrics (host side, numpy float64).

The challenge scores a partition by CCC over the concatenation of all its videos, with np.cov
(ddof=1) for the covariance and both variances; `ccc` is exactly that formula. Each partition CCC
can carry its 95% interval from a bootstrap over videos (`bootstrap`: frames within a video are
not independent, so videos are what is resampled).
"""

from collections.abc import Sequence

import numpy as np

from muse_jax import bootstrap
from muse_jax.errors import MuseError


def _pair(y, p) -> tuple[np.ndarray, np.ndarray]:
  y, p = np.asarray(y, np.float64).ravel(), np.asarray(p, np.float64).ravel()
  if y.shape != p.shape:
    raise MuseError(f'labels and predictions differ in length ({y.size} vs {p.size})')
  return y, p


def ccc(y, p) -> float:
  """Concordance correlation coefficient; 0.0 where undefined (< 2 frames, both constant).

  NaN predictions stay NaN: they are a bug to see, not a score.
  """
  y, p = _pair(y, p)
  if y.size < 2:
    return 0.0
  if np.ptp(y) == 0 and np.ptp(p) == 0 and y[0] == p[0]:
    return 0.0  # undefined (0/0); np.cov would round to a tiny nonzero and say 1.0
  c = np.cov(y, p)
  denom = c[0, 0] + c[1, 1] + (y.mean() - p.mean()) ** 2
  return float(2.0 * c[0, 1] / denom) if denom != 0 else 0.0


def pcc(y, p) -> float:
  """Pearson correlation; 0.0 where undefined (< 2 frames, either constant)."""
  y, p = _pair(y, p)
  if y.size < 2:
    return 0.0
  c = np.cov(y, p)
  denom = np.sqrt(c[0, 0] * c[1, 1])
  return float(c[0, 1] / denom) if denom != 0 else 0.0


def rmse(y, p) -> float:
  """Root mean squared error; NaN without frames (there is no error to report)."""
  y, p = _pair(y, p)
  return float(np.sqrt(np.mean((y - p) ** 2))) if y.size else float('nan')


def partition_metrics(
  labels: Sequence[np.ndarray],
  preds: Sequence[np.ndarray],
  targets: Sequence[str],
  bootstrap_samples: int = 0,
  bootstrap_seed: int = 0,
) -> dict:
  """CCC, PCC and RMSE per target over the concatenation of a partition's videos.

  labels/preds: one array [T_i, K] (or [T_i] when K = 1) per video; frames whose label is NaN are
  skipped. Returns {target: {'ccc', 'pcc', 'rmse'}, 'mean_ccc': mean CCC over targets}; with
  `bootstrap_samples` > 0 also each target's 'ccc_ci95' and the 'mean_ccc_ci95' ([low, high]:
  the 2.5/97.5 percentiles over that many video resamples, seeded by `bootstrap_seed`; [None,
  None] with fewer than 2 labelled videos).
  """
  if len(labels) != len(preds):
    raise MuseError(f'{len(labels)} label arrays but {len(preds)} prediction arrays')
  k = len(targets)
  ys, ps = [], []
  for i, (y, p) in enumerate(zip(labels, preds)):
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    y, p = (y[:, None] if y.ndim == 1 else y), (p[:, None] if p.ndim == 1 else p)
    if y.shape != p.shape or y.shape[1] != k:
      raise MuseError(
        f'video {i}: labels {y.shape} and predictions {p.shape} do not match '
        f'{k} target(s) {tuple(targets)}'
      )
    ys.append(y)
    ps.append(p)
  y = np.concatenate(ys) if ys else np.zeros((0, k))
  p = np.concatenate(ps) if ps else np.zeros((0, k))
  out = {}
  for j, name in enumerate(targets):
    ok = ~np.isnan(y[:, j])
    out[name] = {
      'ccc': ccc(y[ok, j], p[ok, j]),
      'pcc': pcc(y[ok, j], p[ok, j]),
      'rmse': rmse(y[ok, j], p[ok, j]),
    }
  out['mean_ccc'] = float(np.mean([out[t]['ccc'] for t in targets]))
  if bootstrap_samples > 0:
    ci = bootstrap.partition_intervals(preds, labels, bootstrap_samples, bootstrap_seed)
    for j, name in enumerate(targets):
      out[name]['ccc_ci95'] = _json_interval(ci['per_target'][j])
    out['mean_ccc_ci95'] = _json_interval(ci['mean'])
  return out


def _json_interval(bounds) -> list:
  """[low, high]; [None, None] (JSON null) where there is no interval: fewer than 2 labelled
  videos to resample, or NaN predictions."""
  return [None, None] if any(b is None or not np.isfinite(b) for b in bounds) else list(bounds)


def per_video_ccc(
  labels: Sequence[np.ndarray], preds: Sequence[np.ndarray], targets: Sequence[str]
) -> list:
  """CCC of each video on its own ({target: ccc} per video; NaN-label frames skipped). The
  partition figure stays the CCC over the concatenation (as the challenge scores); this one shows
  how it spreads over videos."""
  return [
    {t: v[t]['ccc'] for t in targets}
    for v in (partition_metrics([y], [p], targets) for y, p in zip(labels, preds))
  ]


def seed_spread(values) -> float:
  """The seeds' spread as papers report it: the sample standard deviation (ddof 1)."""
  return float(np.std(values, ddof=1)) if len(values) > 1 else float('nan')
