"""How sure is a partition's CCC? A video bootstrap of the challenge score (pure numpy).

The challenge scores a partition by CCC over the concatenation of its videos' frames
(`metrics.ccc`). Frames inside a video are strongly dependent (one speaker, one session, slowly
varying labels), so resampling frames would pretend there are hundreds of thousands of independent
observations and give intervals far too narrow. The unit of resampling here is the video: a
resample draws as many videos as the partition has, with replacement, and scores the concatenation
of the drawn videos' frames (a video drawn twice counts twice).

Speed comes from sufficient statistics. The score of any concatenation follows from six sums over
its frames (count, Σy, Σp, Σy², Σp², Σyp), and the sums of a resample are its per-video counts
times the per-video sums. So B resamples of V videos are one (B, V) @ (V, 6) product after a single
pass over the frames, never a concatenation.

Conventions (those of `metrics`): y are labels, p predictions; frames whose label is NaN are
skipped (as `metrics.partition_metrics` does); a NaN prediction on a labelled frame makes the
score NaN (a bug to see, not a score). Covariance and variances are np.cov's (ddof=1), the mean
term is the plain squared difference of means, exactly `metrics.ccc`.

Degenerate cases, decided once here:
- fewer than 2 frames, or a zero denominator (labels and predictions both constant and equal):
  CCC 0.0, as `metrics.ccc` documents. Sums cannot resolve an exact zero after rounding, so a
  denominator below 1e-10 of the frames' second moment (about the label mean) counts as zero;
  only (nearly) constant resamples get there (as `metrics.ccc`, which tests exact constancy).
- videos without a labelled frame carry nothing to score: they are dropped before resampling.
- fewer than 2 such videos: the point score is still returned, the interval is (nan, nan): with
  one video there is no between-video variation to resample, and a zero-width interval would
  read as certainty.
- samples=0: the bootstrap is off, the interval is (None, None).
Nothing here raises on a valid partition; mismatched shapes raise MuseError.
"""

from collections.abc import Iterator
from collections.abc import Sequence

import numpy as np

from muse_jax.errors import MuseError

# Resample indices are drawn in blocks of max(1, _BLOCK_ELEMENTS // n_videos) rows, so memory
# stays bounded for any samples * videos; the block size depends only on n_videos, so the draws
# (and every interval) are a function of (n_videos, samples, seed) alone.
_BLOCK_ELEMENTS = 1 << 16
# A denominator this small relative to the second moment of the frames is rounding, not signal.
_REL_ZERO = 1e-10

_N, _SY, _SP, _SYY, _SPP, _SYP = range(6)


def _as_2d(a, what: str, i: int) -> np.ndarray:
  a = np.asarray(a, np.float64)
  if a.ndim == 1:
    return a[:, None]
  if a.ndim != 2:
    raise MuseError(f'video {i}: {what} must be [T] or [T, K], not shape {a.shape}')
  return a


def _checked(preds: Sequence[np.ndarray], labels: Sequence[np.ndarray]):
  """([T_i, K] predictions, [T_i, K] labels, K given as 1-D) per video; shapes must agree."""
  if len(preds) != len(labels):
    raise MuseError(f'{len(labels)} label arrays but {len(preds)} prediction arrays')
  ps, ys = [], []
  for i, (p, y) in enumerate(zip(preds, labels)):
    p, y = _as_2d(p, 'predictions', i), _as_2d(y, 'labels', i)
    if p.shape != y.shape or (ys and y.shape[1] != ys[0].shape[1]):
      raise MuseError(
        f'video {i}: labels {y.shape} and predictions {p.shape} do not match (or '
        'differ in targets from video 0)'
      )
    ps.append(p)
    ys.append(y)
  return ps, ys


def label_center(labels: Sequence[np.ndarray]) -> np.ndarray:
  """Mean of the labelled frames per target [K] (0 where a target has none).

  Sums are taken about this point: CCC is unchanged when labels and predictions shift together,
  and sums of centred values keep the variance differences accurate (raw Σy² - (Σy)²/n loses
  digits when the mean is large against the spread).
  """
  tot, cnt = 0.0, 0
  for i, y in enumerate(labels):
    y = _as_2d(y, 'labels', i)
    ok = ~np.isnan(y)
    tot = tot + np.where(ok, y, 0.0).sum(0)
    cnt = cnt + ok.sum(0)
  return np.where(np.asarray(cnt) > 0, tot / np.maximum(cnt, 1), 0.0)


def video_stats(
  preds: Sequence[np.ndarray], labels: Sequence[np.ndarray], center: np.ndarray | None = None
) -> np.ndarray:
  """Per-video sufficient statistics of CCC: [V, 6] for 1-D videos, [V, K, 6] for [T, K] ones.

  The 6 are (n, Σy, Σp, Σy², Σp², Σyp) over the video's labelled frames (NaN label: skipped),
  with y and p taken minus `center` (per target; default `label_center(labels)`). Stats of
  different calls add up only with the same center; CCC does not depend on it. float64.
  """
  ps, ys = _checked(preds, labels)
  one_d = all(np.ndim(y) == 1 for y in labels)
  k = ys[0].shape[1] if ys else 1
  c = label_center(ys) if center is None else np.broadcast_to(np.asarray(center, np.float64), (k,))
  out = np.zeros((len(ys), k, 6))
  for i, (p, y) in enumerate(zip(ps, ys)):
    # [K, T] so each sum runs along contiguous memory (numpy's pairwise summation).
    ok = ~np.isnan(y.T)
    y0 = np.where(ok, y.T - c[:, None], 0.0)
    p0 = np.where(ok, p.T - c[:, None], 0.0)  # a NaN prediction on a labelled frame stays NaN
    out[i, :, _N] = ok.sum(1)
    out[i, :, _SY] = y0.sum(1)
    out[i, :, _SP] = p0.sum(1)
    out[i, :, _SYY] = (y0 * y0).sum(1)
    out[i, :, _SPP] = (p0 * p0).sum(1)
    out[i, :, _SYP] = (y0 * p0).sum(1)
  return out[:, 0] if one_d else out


def ccc_from_stats(stats) -> np.ndarray:
  """CCC (metrics.ccc's formula) from summed statistics [..., 6] -> [...] (a float for [6]).

  0.0 where undefined (< 2 frames, or a denominator that is zero up to rounding, see module
  doc); NaN sums (NaN predictions) give NaN.
  """
  s = np.asarray(stats, np.float64)
  n, sy, sp, syy, spp, syp = (s[..., j] for j in range(6))
  with np.errstate(divide='ignore', invalid='ignore'):
    n1 = n - 1.0
    vy = (syy - sy * sy / n) / n1
    vp = (spp - sp * sp / n) / n1
    cov = (syp - sy * sp / n) / n1
    denom = vy + vp + ((sy - sp) / n) ** 2
    value = 2.0 * cov / denom
    # Written so a NaN denominator is not "undefined": NaN predictions must show as NaN.
    undefined = (n < 2) | (denom <= _REL_ZERO * (syy + spp) / n)
  out = np.where(undefined, 0.0, value)
  return float(out) if out.ndim == 0 else out


def _count_blocks(n_videos: int, samples: int, seed: int) -> Iterator[np.ndarray]:
  """Counts [rows, n_videos] (int64) per block of resamples, in order; see resample_counts."""
  rng = np.random.default_rng(seed)
  rows = max(1, _BLOCK_ELEMENTS // max(n_videos, 1))
  for start in range(0, samples, rows):
    b = min(rows, samples - start)
    idx = rng.integers(0, n_videos, size=(b, n_videos))
    idx += np.arange(b)[:, None] * n_videos
    yield np.bincount(idx.ravel(), minlength=b * n_videos).reshape(b, n_videos)


def resample_counts(n_videos: int, samples: int, seed: int) -> np.ndarray:
  """How often each video is drawn in each resample: int64 [samples, n_videos], rows sum to V.

  The rule (stable; tests rebuild it): rng = np.random.default_rng(seed); resamples come in
  blocks of max(1, 2**16 // n_videos) rows, each block's video indices being
  rng.integers(0, n_videos, size=(rows, n_videos)); row r of a block counts the indices in its
  row r. The interval functions consume the same blocks one at a time (bounded memory).
  """
  if samples <= 0 or n_videos <= 0:
    return np.zeros((max(samples, 0), max(n_videos, 0)), np.int64)
  return np.concatenate(list(_count_blocks(n_videos, samples, seed)))


def _kept(stats: np.ndarray) -> np.ndarray:
  """Indices of videos with at least one labelled frame (in any target)."""
  return np.flatnonzero((stats[..., _N] > 0).reshape(len(stats), -1).any(1))


def _as_3d(stats: np.ndarray) -> np.ndarray:
  return stats[:, None] if stats.ndim == 2 else stats


def resampled_mean_ccc(stats_list: Sequence[np.ndarray], samples: int, seed: int) -> np.ndarray:
  """Mean-over-targets CCC of each run for each video resample: [runs, samples].

  `stats_list`: per run, video_stats of the same videos ([V, 6] or [V, K, 6]); every run sees the
  same resamples (paired comparison). Videos must be the kept ones already (see module doc).
  """
  runs = [_as_3d(np.asarray(s, np.float64)) for s in stats_list]
  v, k = runs[0].shape[:2]
  flat = [r.reshape(v, k * 6) for r in runs]
  out = np.empty((len(runs), samples))
  start = 0
  for counts in _count_blocks(v, samples, seed):
    c = counts.astype(np.float64)
    for j, f in enumerate(flat):
      out[j, start : start + len(c)] = ccc_from_stats((c @ f).reshape(-1, k, 6)).mean(-1)
    start += len(c)
  return out


def resampled_ccc(stats: np.ndarray, samples: int, seed: int) -> np.ndarray:
  """Each target's CCC for each video resample: [samples, K] (stats [V, K, 6] or [V, 6] of the
  kept videos; the same resamples as `resampled_mean_ccc` with the same seed)."""
  st = _as_3d(np.asarray(stats, np.float64))
  v, k = st.shape[:2]
  flat = st.reshape(v, k * 6)
  out = np.empty((samples, k))
  start = 0
  for counts in _count_blocks(v, samples, seed):
    out[start : start + len(counts)] = ccc_from_stats(
      (counts.astype(np.float64) @ flat).reshape(-1, k, 6)
    )
    start += len(counts)
  return out


def partition_intervals(
  preds: Sequence[np.ndarray],
  labels: Sequence[np.ndarray],
  samples: int = 1000,
  seed: int = 0,
  level: float = 0.95,
) -> dict:
  """The intervals `metrics.partition_metrics` reports: {'per_target': [[low, high]] * K,
  'mean': [low, high]}, every target and their mean on the same video resamples. samples=0:
  {} (off); fewer than 2 videos with labels: NaN bounds (see module doc)."""
  if samples <= 0:
    return {}
  stats = _as_3d(video_stats(preds, labels)) if len(preds) else np.zeros((0, 1, 6))
  kept = stats[_kept(stats)] if len(stats) else stats
  k = stats.shape[1]
  if len(kept) < 2:
    nan = [float('nan')] * 2
    return {'per_target': [list(nan) for _ in range(k)], 'mean': list(nan)}
  r = resampled_ccc(kept, samples, seed)
  return {
    'per_target': [list(_percentile_interval(r[:, j], level)) for j in range(k)],
    'mean': list(_percentile_interval(r.mean(1), level)),
  }


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
  """(low, high) percentiles (np.percentile, linear) at (1 -+ level) / 2.

  high is taken as -percentile(-values, low q): the same number up to rounding, and it makes
  the interval of -values exactly (-high, -low), so swapping runs mirrors a difference exactly.
  """
  if not np.all(np.isfinite(values)):
    return float('nan'), float('nan')
  q = 100.0 * (1.0 - level) / 2.0
  return float(np.percentile(values, q)), float(-np.percentile(-values, q))


def _point(stats: np.ndarray) -> float:
  return float(np.mean(np.atleast_1d(ccc_from_stats(_as_3d(stats).sum(0)))))


def mean_ccc_interval(
  preds: Sequence[np.ndarray],
  labels: Sequence[np.ndarray],
  samples: int = 1000,
  seed: int = 0,
  level: float = 0.95,
):
  """(point, low, high) of the mean CCC over targets (partition_metrics' 'mean_ccc').

  Videos are [T] or [T, K]; every target is scored on the same video resamples, and the interval
  is the percentile interval of the per-resample mean over targets (the mean's own uncertainty,
  not a mean of per-target intervals). point is the plain partition score. samples=0:
  (point, None, None); fewer than 2 videos with labels: (point, nan, nan).
  """
  stats = video_stats(preds, labels)
  point = _point(stats) if len(stats) else 0.0
  if samples <= 0:
    return point, None, None
  kept = stats[_kept(stats)] if len(stats) else stats
  if len(kept) < 2:
    return point, float('nan'), float('nan')
  low, high = _percentile_interval(resampled_mean_ccc([kept], samples, seed)[0], level)
  return point, low, high


def ccc_interval(
  preds: Sequence[np.ndarray],
  labels: Sequence[np.ndarray],
  samples: int = 1000,
  seed: int = 0,
  level: float = 0.95,
):
  """(point, low, high) of one target's partition CCC; point equals metrics.ccc on the
  concatenated labelled frames, low/high are the video-bootstrap percentiles (module doc)."""
  for i, y in enumerate(labels):
    if np.ndim(y) == 2 and np.shape(y)[1] != 1:
      raise MuseError(
        f'video {i}: labels have {np.shape(y)[1]} targets; ccc_interval scores '
        'one (mean_ccc_interval scores several)'
      )
  return mean_ccc_interval(preds, labels, samples, seed, level)


def paired_difference(
  preds_a: Sequence[np.ndarray],
  preds_b: Sequence[np.ndarray],
  labels: Sequence[np.ndarray],
  samples: int = 1000,
  seed: int = 0,
) -> dict:
  """Is run B better than run A on this partition? Both scored on the same video resamples.

  Pairing matters: which videos happen to be drawn moves both runs' scores together, and that
  shared part cancels in B - A, so the difference is far better resolved than two separate
  intervals suggest. With K targets the score is the mean CCC over targets.

  Returns {'ccc_a', 'ccc_b', 'diff' (= ccc_b - ccc_a), 'diff_ci95' ([low, high] percentiles of
  the resampled differences), 'p_b_not_better' (share of resamples with B - A <= 0)}.
  Identical runs: diff 0.0, [0.0, 0.0], p 1.0. samples=0: [None, None] and None; fewer than 2
  videos with labels, or NaN scores: [nan, nan] and nan.
  """
  sa, sb = video_stats(preds_a, labels), video_stats(preds_b, labels)
  ccc_a = _point(sa) if len(sa) else 0.0
  ccc_b = _point(sb) if len(sb) else 0.0
  out = {'ccc_a': ccc_a, 'ccc_b': ccc_b, 'diff': ccc_b - ccc_a}
  if samples <= 0:
    return {**out, 'diff_ci95': [None, None], 'p_b_not_better': None}
  # The same center for both runs is not needed (each run's CCC ignores it), only the same videos.
  kept = _kept(sa) if len(sa) else np.zeros(0, np.int64)
  if len(kept) < 2:
    return {**out, 'diff_ci95': [float('nan')] * 2, 'p_b_not_better': float('nan')}
  a, b = resampled_mean_ccc([sa[kept], sb[kept]], samples, seed)
  d = b - a
  low, high = _percentile_interval(d, 0.95)
  p = float(np.mean(d <= 0.0)) if np.all(np.isfinite(d)) else float('nan')
  return {**out, 'diff_ci95': [low, high], 'p_b_not_better': p}
