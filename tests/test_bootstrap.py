"""Video bootstrap of partition CCC: an independent loop reference, coverage, invariants, edges."""

import numpy as np
import pytest

from muse_jax import bootstrap as bs
from muse_jax import metrics
from muse_jax.errors import MuseError


def _ref_ccc(y, p):
  """The challenge formula written out two-pass: np.cov's ddof=1 moments, plain mean term."""
  n = len(y)
  if n < 2:
    return 0.0
  my, mp = y.mean(), p.mean()
  cov = np.sum((y - my) * (p - mp)) / (n - 1)
  vy, vp = np.sum((y - my) ** 2) / (n - 1), np.sum((p - mp) ** 2) / (n - 1)
  denom = vy + vp + (my - mp) ** 2
  return 0.0 if denom == 0 else 2 * cov / denom


def _partition(seed, n_videos=12, k=None, nan_labels=True):
  """Videos of uneven length with per-video offsets; some NaN labels (skipped frames)."""
  rng = np.random.default_rng(seed)
  ys, ps = [], []
  for _ in range(n_videos):
    shape = (int(rng.integers(5, 60)),) + ((k,) if k else ())
    y = rng.normal(rng.normal(0, 0.4), 0.3, size=shape)
    p = 0.7 * y + rng.normal(rng.normal(0.05, 0.2), 0.25, size=shape)
    if nan_labels:
      y[rng.random(shape) < 0.1] = np.nan
    ys.append(y)
    ps.append(p)
  return ps, ys


def _drawn_indices(n_videos, samples, seed, rows):
  """The documented draw rule, rebuilt here: blocks of `rows` resamples from one generator."""
  rng = np.random.default_rng(seed)
  return np.concatenate(
    [
      rng.integers(0, n_videos, size=(min(rows, samples - s), n_videos))
      for s in range(0, samples, rows)
    ]
  )


def _ref_resampled(ps, ys, idx, target=None):
  """CCC of each resample by concatenating the drawn videos' labelled frames (no statistics)."""
  out = []
  for row in idx:
    y = np.concatenate([ys[i] if target is None else ys[i][:, target] for i in row])
    p = np.concatenate([ps[i] if target is None else ps[i][:, target] for i in row])
    ok = ~np.isnan(y)
    out.append(_ref_ccc(y[ok], p[ok]))
  return np.array(out)


def test_counts_follow_the_documented_rule(monkeypatch):
  v, samples = 7, 50
  idx = _drawn_indices(v, samples, 11, bs._BLOCK_ELEMENTS // v)
  want = np.stack([np.bincount(r, minlength=v) for r in idx])
  np.testing.assert_array_equal(bs.resample_counts(v, samples, 11), want)
  monkeypatch.setattr(bs, '_BLOCK_ELEMENTS', 6 * v)  # blocks of 6 rows: 9 blocks, last of 2
  idx = _drawn_indices(v, samples, 11, 6)
  want = np.stack([np.bincount(r, minlength=v) for r in idx])
  np.testing.assert_array_equal(bs.resample_counts(v, samples, 11), want)
  assert (want.sum(1) == v).all()


@pytest.mark.parametrize('block_rows', [None, 7])
def test_interval_matches_independent_loop_reference(monkeypatch, block_rows):
  ps, ys = _partition(0)
  samples, seed = 200, 3
  if block_rows:
    monkeypatch.setattr(bs, '_BLOCK_ELEMENTS', block_rows * len(ys))
  rows = bs._BLOCK_ELEMENTS // len(ys)
  y, p = np.concatenate(ys), np.concatenate(ps)
  ok = ~np.isnan(y)
  point, low, high = bs.ccc_interval(ps, ys, samples=samples, seed=seed)
  assert point == pytest.approx(metrics.ccc(y[ok], p[ok]), abs=1e-12)
  assert point == pytest.approx(_ref_ccc(y[ok], p[ok]), abs=1e-12)
  ref = _ref_resampled(ps, ys, _drawn_indices(len(ys), samples, seed, rows))
  want_low, want_high = np.percentile(ref, [2.5, 97.5])
  assert low == pytest.approx(want_low, abs=1e-9) and high == pytest.approx(want_high, abs=1e-9)
  assert low < point < high

  # Paired: the same resamples for both runs, B - A per resample.
  ps_b = [q + np.random.default_rng(i).normal(0, 0.1, q.shape) for i, q in enumerate(ps)]
  out = bs.paired_difference(ps, ps_b, ys, samples=samples, seed=seed)
  ref_b = _ref_resampled(ps_b, ys, _drawn_indices(len(ys), samples, seed, rows))
  assert out['ccc_a'] == pytest.approx(point, abs=1e-12)
  assert out['ccc_b'] == pytest.approx(metrics.ccc(y[ok], np.concatenate(ps_b)[ok]), abs=1e-12)
  assert out['diff'] == out['ccc_b'] - out['ccc_a']
  np.testing.assert_allclose(
    out['diff_ci95'], np.percentile(ref_b - ref, [2.5, 97.5]), rtol=0, atol=1e-9
  )
  assert out['p_b_not_better'] == np.mean(ref_b - ref <= 0)


def test_mean_ccc_interval_matches_reference_and_partition_metrics():
  ps, ys = _partition(1, k=2)
  samples, seed = 150, 5
  point, low, high = bs.mean_ccc_interval(ps, ys, samples=samples, seed=seed)
  assert point == pytest.approx(
    metrics.partition_metrics(ys, ps, ['arousal', 'valence'])['mean_ccc'], abs=1e-12
  )
  idx = _drawn_indices(len(ys), samples, seed, bs._BLOCK_ELEMENTS // len(ys))
  ref = (_ref_resampled(ps, ys, idx, 0) + _ref_resampled(ps, ys, idx, 1)) / 2
  np.testing.assert_allclose([low, high], np.percentile(ref, [2.5, 97.5]), rtol=0, atol=1e-9)
  with pytest.raises(MuseError, match='mean_ccc_interval'):
    bs.ccc_interval(ps, ys)
  # One target given as [T, 1] is the same as [T].
  one = bs.ccc_interval([p[:, :1] for p in ps], [y[:, :1] for y in ys], 100, 2)
  assert one == bs.ccc_interval([p[:, 0] for p in ps], [y[:, 0] for y in ys], 100, 2)


def test_video_bootstrap_covers_and_frame_bootstrap_does_not():
  """Known population CCC; per-video offsets make frames within a video dependent.

  y = a_v + e, p = y + b_v + u + m  (a_v, b_v per video; e, u per frame; all normal, independent)
  => var y = sa² + se², var p = var y + sb² + su², cov = var y, CCC = 2 var y / (2 var y + sb² +
  su² + m²). With 30 videos the spread of b_v dominates the uncertainty: the video bootstrap
  sees it, resampling frames (implemented only here) treats 600 frames as independent and
  misses it.
  """
  reps, n_videos, frames, samples = 300, 30, 20, 300
  sa, se, sb, su, m = 0.5, 0.3, 0.5, 0.3, 0.1
  var_y = sa**2 + se**2
  true = 2 * var_y / (2 * var_y + sb**2 + su**2 + m**2)
  rng = np.random.default_rng(0)
  y = rng.normal(0, sa, (reps, n_videos, 1)) + rng.normal(0, se, (reps, n_videos, frames))
  p = y + rng.normal(0, sb, (reps, n_videos, 1)) + rng.normal(0, su, (reps, n_videos, frames)) + m
  by_video = by_frame = 0
  for r in range(reps):
    _, low, high = bs.ccc_interval(list(p[r]), list(y[r]), samples=samples, seed=r)
    by_video += low <= true <= high
    yf, pf = y[r].ravel(), p[r].ravel()
    stats = np.stack([np.ones_like(yf), yf, pf, yf * yf, pf * pf, yf * pf], 1)
    n = len(yf)
    idx = rng.integers(0, n, (samples, n)) + np.arange(samples)[:, None] * n
    counts = np.bincount(idx.ravel(), minlength=samples * n).reshape(samples, n)
    low, high = np.percentile(bs.ccc_from_stats(counts.astype(float) @ stats), [2.5, 97.5])
    by_frame += low <= true <= high
  assert 0.85 <= by_video / reps <= 0.99, by_video / reps
  assert by_frame / reps < 0.8, by_frame / reps


def test_paired_difference_invariants():
  ps, ys = _partition(2, n_videos=20)
  rng = np.random.default_rng(9)
  ps_b = [0.9 * q + rng.normal(0, 0.15, q.shape) for q in ps]

  same = bs.paired_difference(ps, [q.copy() for q in ps], ys, samples=300, seed=1)
  assert same['diff'] == 0.0 and same['diff_ci95'] == [0.0, 0.0]
  assert same['p_b_not_better'] == 1.0

  ab = bs.paired_difference(ps, ps_b, ys, samples=300, seed=1)
  ba = bs.paired_difference(ps_b, ps, ys, samples=300, seed=1)
  assert ba['diff'] == -ab['diff']
  assert ba['diff_ci95'] == [-ab['diff_ci95'][1], -ab['diff_ci95'][0]]
  assert ab['diff_ci95'][0] <= ab['diff'] <= ab['diff_ci95'][1]

  # Making one of B's videos perfect cannot make B look worse.
  for v in (0, 7, 19):
    better = list(ps_b)
    better[v] = np.where(np.isnan(ys[v]), ps_b[v], ys[v])
    assert bs.paired_difference(ps, better, ys, samples=0)['diff'] >= ab['diff']

  # Same seed: the same numbers, bit for bit; another seed: other resamples.
  assert bs.paired_difference(ps, ps_b, ys, samples=300, seed=1) == ab
  assert bs.paired_difference(ps, ps_b, ys, samples=300, seed=2)['diff_ci95'] != ab['diff_ci95']
  assert bs.ccc_interval(ps, ys, 300, 4) == bs.ccc_interval(ps, ys, 300, 4)
  assert bs.ccc_interval(ps, ys, 300, 4)[1:] != bs.ccc_interval(ps, ys, 300, 5)[1:]


def test_degenerate_partitions_do_not_raise():
  ps, ys = _partition(3, n_videos=6)
  point = bs.ccc_interval(ps, ys, samples=0)
  assert point[1:] == (None, None)
  assert bs.paired_difference(ps, ps, ys, samples=0)['diff_ci95'] == [None, None]

  # One video: a score, but no interval (no between-video variation to resample).
  one = bs.ccc_interval(ps[:1], ys[:1], samples=100)
  assert one[0] == pytest.approx(_ref_ccc(ys[0][~np.isnan(ys[0])], ps[0][~np.isnan(ys[0])]))
  assert np.isnan(one[1]) and np.isnan(one[2])
  assert bs.ccc_interval([], [], samples=100)[0] == 0.0

  # Videos without labelled frames are dropped: the same result as without them.
  empty_y, empty_p = np.full(8, np.nan), np.ones(8)
  assert bs.ccc_interval(
    ps[:3] + [empty_p] + ps[3:], ys[:3] + [empty_y] + ys[3:], 200, 1
  ) == bs.ccc_interval(ps, ys, 200, 1)

  # Constant predictions: covariance 0, so CCC 0 (up to rounding of the sums).
  const = [np.full(len(y), 0.2) for y in ys]
  c_point, c_low, c_high = bs.ccc_interval(const, ys, samples=200)
  assert abs(c_point) < 1e-12 and abs(c_low) < 1e-12 and abs(c_high) < 1e-12

  # Every video constant, prediction = label: a resample drawing one video only has a zero
  # denominator -> 0.0 exactly (as metrics.ccc documents), others are well defined.
  ys2 = [np.full(10, 0.5), np.full(7, 0.25)]
  point, low, high = bs.ccc_interval(ys2, ys2, samples=400, seed=0)
  assert point == pytest.approx(1.0, abs=1e-12)
  counts = bs.resample_counts(2, 400, 0)
  ref = np.array(
    [
      _ref_ccc(
        np.concatenate([ys2[0]] * a + [ys2[1]] * b), np.concatenate([ys2[0]] * a + [ys2[1]] * b)
      )
      for a, b in counts
    ]
  )
  assert (ref == 0.0).any() and (ref == 1.0).any()
  np.testing.assert_allclose([low, high], np.percentile(ref, [2.5, 97.5]), rtol=0, atol=1e-9)
  assert bs.ccc_from_stats(bs.video_stats(ys2[:1], ys2[:1]).sum(0)) == 0.0

  # A NaN prediction on a labelled frame shows as NaN everywhere, never as a score.
  bad = [q.copy() for q in ps]
  bad[2][np.flatnonzero(~np.isnan(ys[2]))[0]] = np.nan
  assert all(np.isnan(v) for v in bs.ccc_interval(bad, ys, samples=50))
  out = bs.paired_difference(ps, bad, ys, samples=50)
  assert np.isnan(out['diff']) and np.isnan(out['p_b_not_better'])

  with pytest.raises(MuseError, match='do not match'):
    bs.ccc_interval([np.zeros(3)], [np.zeros(4)])
