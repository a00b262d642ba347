"""Writes a synthetic MuSe-Wild 2020 tree: the real layout, names and quirks, with made-up values.

The real data is under an EULA, so tests, the demo job and benchmarks run on this instead:

  python -m muse_jax.data.demo --out DIR [--scale tiny|demo|full] [--seed 0] [--features a,b]

Same seed -> byte-identical files. Every random draw is keyed by seed, video and feature set, so a
set's values do not depend on which other sets are written (only where the longer/shorter-file
quirks land does: on the first/last set written). Scales: `tiny` (12 videos of 40-150
frames, for unit tests), `demo` (45 videos of 300-1500 frames, an LSTM learns it in about a minute
of CPU), `full` (290 videos, ~560k frames like MuSe-CaR, for benchmarks).

Labels are learnable only with temporal context: arousal and valence are smooth latent curves in
[-1, 1]; each feature set sees them through its own view: lagged (annotators react late, so
features lead the labels by several frames), spread by a wide kernel, bent by nonlinearities,
drowned in heavy per-frame noise that lies along the signal (so no per-frame linear map can
remove it), plus per-video offsets. egemaps and au mostly carry arousal, fasttext (held constant
over each 'word') and vggface mostly valence, with weaker cross-talk. A frame-wise ridge
regressor reaches a devel CCC of about 0.2-0.4; the same regressor on smoothed, lag-shifted
features about 0.6-0.8 (tests/test_demo.py checks it).

Quirks of real releases, all present (their places are listed in the returned summary and in
`demo_tree.json`): a duplicated partition row; test videos without label files; zero-vector rows
and NaN cells in the visual sets (au, vggface); one feature file 3 rows longer than its labels and
one 2 rows shorter; timestamps on the 250 ms grid not starting at 0; varying video lengths; segment
ids 1, 2, ... in contiguous runs.
"""
import argparse
import dataclasses
import json
import os
import shutil
import sys
import zlib

from absl import logging
import numpy as np

from muse_jax import cli
from muse_jax import config_util
from muse_jax.data import demo_files
from muse_jax.data import layout
from muse_jax.data import reader
from muse_jax.errors import MuseError

# Released sets and their dimensions (docs/data_format.md); any `name:dim` works as well.
FEATURE_SETS = {
    'au': 35, 'deepspectrum': 4096, 'egemaps': 88, 'fasttext': 300, 'gaze': 288, 'gocar': 350,
    'landmarks_2d': 136, 'landmarks_3d': 204, 'openpose': 54, 'pdm': 40, 'pose': 6,
    'vggface': 512, 'xception': 2048,
}
DEFAULT_FEATURES = ('egemaps', 'fasttext', 'au', 'vggface')
VISUAL = ('au', 'vggface', 'gaze', 'landmarks_2d', 'landmarks_3d', 'openpose', 'pdm', 'pose',
          'xception')
MARKER = 'demo_tree.json'


@dataclasses.dataclass(frozen=True)
class Scale:
  n_videos: int
  min_len: int
  max_len: int
  mean_len: int     # 0: uniform lengths in [min_len, max_len]
  seg_len: tuple    # segment lengths drawn from this range


SCALES = {
    'tiny': Scale(12, 40, 150, 0, (15, 60)),
    'demo': Scale(45, 300, 1500, 0, (60, 400)),
    'full': Scale(290, 240, 7200, 1930, (60, 400)),
}


@dataclasses.dataclass(frozen=True)
class View:
  """How a feature set sees the labels: weights, lead in frames, kernel width, noise, word hold."""
  arousal: float
  valence: float
  lag: int
  spread: int
  noise: float = 5.0
  hold: int = 1     # > 1: values held constant over 'words' of 1..hold frames (text features)


VIEWS = {
    'egemaps': View(1.0, 0.3, lag=6, spread=12),
    'au': View(1.0, 0.35, lag=10, spread=16),
    'fasttext': View(0.3, 1.0, lag=8, spread=12, noise=4.0, hold=2),
    'vggface': View(0.35, 1.0, lag=12, spread=20),
}
DEFAULT_VIEW = View(0.7, 0.7, lag=8, spread=16)
LABEL_SMOOTH = 16.0   # frames (4 s): std of the Gaussian smoothing the latent curves
N_CHANNELS = 8        # latent channels per feature set, mixed into its D columns
LEAD_MARGIN = 32      # label frames generated past the end, for views that lead the labels
assert all(v.lag + v.spread <= LEAD_MARGIN for v in list(VIEWS.values()) + [DEFAULT_VIEW])


# ------------------------------------------------------------------------------------------------
# Synthesis.


def _column_scales(name: str, dim: int, rng) -> tuple:
  """(mean, std) per column: eGeMAPS spans orders of magnitude, embeddings are small."""
  if name == 'egemaps':
    std = 10.0 ** rng.uniform(-2.5, 2.0, dim)
    return std * rng.uniform(-1, 4, dim), std
  if name == 'au':
    return np.full(dim, 0.6), np.full(dim, 0.5)
  if name in ('fasttext', 'vggface', 'xception', 'deepspectrum') or name not in FEATURE_SETS:
    return rng.normal(0, 0.03, dim), np.full(dim, 0.1) * rng.uniform(0.5, 1.5, dim)
  std = 10.0 ** rng.uniform(-1, 1.5, dim)
  return std * rng.uniform(-1, 2, dim), std


def _key(name: str) -> int:
  return zlib.crc32(name.encode())


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
  r = int(3 * sigma)
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  return np.convolve(x, k / np.sqrt((k ** 2).sum()), mode='valid')


def _spread(x: np.ndarray, width: int) -> np.ndarray:
  """Wide centred kernel: the view smears every change over about `width` frames."""
  k = np.hanning(width + 2)[1:-1]
  k /= k.sum()
  return np.convolve(np.pad(x, (width // 2, width - 1 - width // 2), mode='edge'), k,
                     mode='valid')


def _parse_features(features) -> dict:
  if features is None:
    features = DEFAULT_FEATURES
  features = config_util.parse_list(features)
  out = {}
  for f in features:
    name, _, dim = f.strip().partition(':')
    if dim:
      if not dim.isdigit() or int(dim) < 1:
        raise MuseError(f'--features: bad dimension in {f!r}; use name:dim, e.g. vggish:128')
      out[name] = int(dim)
    elif name in FEATURE_SETS:
      out[name] = FEATURE_SETS[name]
    else:
      raise MuseError(f'--features: unknown feature set {name!r}; use one of '
                      f'{", ".join(sorted(FEATURE_SETS))} or name:dim for your own')
  if not out:
    raise MuseError('--features: no feature set given')
  return out


def _layout(scale: Scale, seed: int) -> dict:
  """Ids, lengths, partitions, start times, segments: independent of the feature sets."""
  rng = np.random.default_rng([seed, 0])
  n = scale.n_videos
  ids = np.sort(rng.choice(int(n * 1.15) + 5, n, replace=False))
  if scale.mean_len:
    lens = np.exp(rng.normal(np.log(scale.mean_len) - 0.15, 0.55, n))
    lens = np.clip(lens * scale.mean_len * n / lens.sum(), scale.min_len, scale.max_len)
  else:
    lens = rng.uniform(scale.min_len, scale.max_len, n)
  lens = lens.astype(int)
  order = rng.permutation(n)
  n_train, n_devel = round(0.57 * n), round(0.21 * n)
  part = np.empty(n, object)
  part[order[:n_train]] = 'train'
  part[order[n_train:n_train + n_devel]] = 'devel'
  part[order[n_train + n_devel:]] = 'test'
  starts = layout.STEP_MS * rng.integers(0, 60, n) * (rng.random(n) < 0.75)
  segments = []
  for t in lens:
    runs = []
    while sum(runs) < t:
      runs.append(int(rng.integers(*scale.seg_len)))
    seg = np.repeat(np.arange(1, len(runs) + 1), runs)[:t]
    segments.append(seg.astype(np.int32))
  test = [i for i in range(n) if part[i] == 'test']
  train = [i for i in range(n) if part[i] == 'train']
  pick = rng.choice(train, 3, replace=False)
  return dict(ids=[str(i) for i in ids], lens=lens, part=part, starts=starts, segments=segments,
              unlabelled=set(test[::2]), duplicate=int(pick[0]), longer=int(pick[1]),
              shorter=int(pick[2]))


def _latents(seed: int, i: int, n: int) -> np.ndarray:
  """Smooth arousal/valence curves in (-1, 1), [2, n + LEAD_MARGIN] (with a per-video offset).

  One random stream per target, and the first k values depend only on the first k + 6 sigma
  draws: the curves are the same whatever the video's extra rows or the sets being written.
  """
  r = int(3 * LABEL_SMOOTH)
  out = []
  for k in range(2):
    rng = np.random.default_rng([seed, 1, i, k])
    offset = rng.normal(0, 0.5)
    out.append(np.tanh(0.7 * _smooth(rng.standard_normal(n + LEAD_MARGIN + 2 * r),
                                     LABEL_SMOOTH) + offset))
  return np.stack(out)


def _features(name: str, dim: int, labels: np.ndarray, n: int, seed: int, i: int) -> np.ndarray:
  """[n, dim] features of one video (labels cover n + lag frames)."""
  view = VIEWS.get(name, DEFAULT_VIEW)
  g = np.random.default_rng([seed, 2, _key(name)])  # per set: the same map for every video
  mix = g.normal(0, 1, (N_CHANNELS, dim)) / np.sqrt(N_CHANNELS)
  w = np.stack([view.arousal * g.choice([-1, 1], N_CHANNELS) * g.uniform(0.6, 1.4, N_CHANNELS),
                view.valence * g.choice([-1, 1], N_CHANNELS) * g.uniform(0.6, 1.4, N_CHANNELS)])
  kinds = np.arange(N_CHANNELS) % 3
  mean, std = _column_scales(name, dim, g)
  rng = np.random.default_rng([seed, 3, i, _key(name)])
  u = np.stack([_spread(labels[k], view.spread)[view.lag:view.lag + n] for k in range(2)])
  pre = (w.T @ u) * 1.8  # [channels, n]
  ch = np.where(kinds[:, None] == 0, pre,
                np.where(kinds[:, None] == 1, np.tanh(pre), pre * np.abs(pre) * 0.5))
  ch = ch + view.noise * rng.standard_normal(ch.shape)
  if view.hold > 1:  # text: one value per word
    word = np.cumsum(rng.random(n) < 1.0 / view.hold)
    first = np.searchsorted(word, word)
    ch = ch[:, first]
  x = ch.T @ mix + 0.5 * rng.standard_normal((n, dim)) + rng.normal(0, 0.1, dim)
  x = mean + std * x
  if name == 'au':  # intensities in [0, 5], then presence flags
    n_r = len(demo_files.AUS)
    x[:, :n_r] = np.clip(x[:, :n_r], 0, 5)
    x[:, n_r:] = (x[:, n_r:] > mean[n_r:]).astype(np.float64)
  return x


def _decimals(name: str, dim: int, seed: int) -> np.ndarray:
  if name == 'au':
    return np.array([2] * len(demo_files.AUS) + [0] * (dim - len(demo_files.AUS))) if dim == 35 else np.full(dim, 2)
  _, std = _column_scales(name, dim, np.random.default_rng([seed, 2, _key(name)]))
  return np.clip(2 - np.floor(np.log10(std)), 1, 6).astype(np.int64)


def _visual_gaps(x: np.ndarray, name: str, rng, counts: dict) -> None:
  """No face found -> zero rows; some releases have NaN cells."""
  n = len(x)
  if rng.random() < 0.4:
    for _ in range(int(rng.integers(1, 4))):
      s, ln = int(rng.integers(0, n)), int(rng.integers(3, 20))
      x[s:s + ln] = 0.0
      counts['zero_rows'] += min(ln, n - s)
  if rng.random() < 0.3:
    rows = rng.choice(n, min(n, int(rng.integers(1, 6))), replace=False)
    cols = rng.random((len(rows), x.shape[1])) < (1.0 if name == 'au' else 0.05)
    cols[:, 0] = True
    for r, c in zip(rows, cols):
      x[r, c] = np.nan
      counts['nan_cells'] += int(c.sum())


def make_tree(out: str, scale: str = 'demo', seed: int = 0, features=None) -> dict:
  """Writes the tree under `out`; returns a summary (ids per split, frames, where the quirks are).

  `features`: names (comma string or list) of released sets or `name:dim`; default egemaps,
  fasttext, au, vggface. Refuses to write into a non-empty folder that is not a demo tree.
  """
  if scale not in SCALES:
    raise MuseError(f'unknown scale {scale!r}; use one of {", ".join(SCALES)}')
  sets = _parse_features(features)
  out = os.path.abspath(out)
  if os.path.isdir(out) and os.listdir(out):
    if not os.path.exists(os.path.join(out, MARKER)):
      raise MuseError(f'{out}: not empty and not a demo tree ({MARKER} missing); refusing to '
                      'overwrite, pick an empty or new folder')
    for sub in ('metadata', 'c1_muse_wild', MARKER):
      p = os.path.join(out, sub)
      shutil.rmtree(p) if os.path.isdir(p) else os.path.exists(p) and os.remove(p)
  lay = _layout(SCALES[scale], seed)
  names = list(sets)
  quirks = {
      'duplicated_partition_id': lay['ids'][lay['duplicate']],
      'unlabelled_test_ids': [lay['ids'][i] for i in sorted(lay['unlabelled'])],
      'longer_feature_file': {'id': lay['ids'][lay['longer']], 'feature_set': names[0],
                              'extra_rows': 3},
      'shorter_feature_file': {'id': lay['ids'][lay['shorter']], 'feature_set': names[-1],
                               'missing_rows': 2},
      'zero_rows': {}, 'nan_cells': {},
  }
  for d in [os.path.join(out, 'metadata')] + [
      os.path.join(out, layout.LABEL_DIR, t) for t in layout.TARGETS] + [
      os.path.join(out, layout.FEATURE_DIR, s) for s in names]:
    os.makedirs(d, exist_ok=True)
  rows = [f'{vid},{p}' for vid, p in zip(lay['ids'], lay['part'])]
  rows.append(rows[lay['duplicate']])
  with open(os.path.join(out, layout.PARTITION_CSV), 'w') as f:
    f.write('Id,Proposal\n' + '\n'.join(rows) + '\n')

  frames = 0
  for i, vid in enumerate(lay['ids']):
    n = int(lay['lens'][i])
    frames += n
    extra = 3 if i == lay['longer'] else 0
    t = lay['starts'][i] + layout.STEP_MS * np.arange(n + extra, dtype=np.int64)
    seg = np.concatenate([lay['segments'][i], np.full(extra, lay['segments'][i][-1], np.int32)])
    labels = _latents(seed, i, n + extra)
    if i not in lay['unlabelled']:
      for k, target in enumerate(layout.TARGETS):
        demo_files.write_csv(layout.label_path(out, target, vid), list(reader.LABEL_COLUMNS),
                   [t[:n], labels[k, :n], seg[:n]], [0, 4, 0])
    for name, dim in sets.items():
      m = n + extra if (i == lay['longer'] and name == names[0]) else n
      if i == lay['shorter'] and name == names[-1]:
        m = n - 2
      x = _features(name, dim, labels, n + extra, seed, i)[:m]
      if name in ('au', 'vggface'):
        counts = {'zero_rows': 0, 'nan_cells': 0}
        _visual_gaps(x, name, np.random.default_rng([seed, 4, i, _key(name)]), counts)
        for k, v in counts.items():
          if v:
            quirks[k][name] = quirks[k].get(name, 0) + v
      demo_files.write_csv(layout.feature_path(out, name, vid),
                 ['timestamp', 'segment_id'] + demo_files.column_names(name, dim),
                 [t[:m], seg[:m], x], [0, 0] + list(_decimals(name, dim, seed)))
  split_ids = {p: [v for v, q in zip(lay['ids'], lay['part']) if q == p] for p in layout.SPLITS}
  summary = {'scale': scale, 'seed': seed, 'videos': len(lay['ids']), 'frames': int(frames),
             'splits': split_ids, 'feature_sets': sets, 'quirks': quirks}
  with open(os.path.join(out, MARKER), 'w') as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  logging.info('demo tree (%s, seed %d): %d videos, %d frames, sets %s -> %s', scale, seed,
               summary['videos'], frames, ','.join(names), out)
  return dict(summary, root=out)


def tree_in(out: str, scale: str = 'demo') -> str:
  """`<out>/demo_tree_<scale>` (seed 0), written on first use: the jobs' data when no real tree
  is given."""
  root = os.path.join(os.path.abspath(out), f'demo_tree_{scale}')
  if not os.path.exists(os.path.join(root, layout.PARTITION_CSV)):
    logging.info('writing the %s demo tree to %s', scale, root)
    make_tree(root, scale=scale, seed=0)
  return root


def main(argv=None) -> int:
  # argparse, not absl flags: this module is imported by the job, which has its own --out/--scale.
  ap = argparse.ArgumentParser(prog='python -m muse_jax.data.demo', description=__doc__.split(
      '\n')[0])
  ap.add_argument('--out', required=True, help='folder to write into (new, empty or a demo tree)')
  ap.add_argument('--scale', default='demo', choices=list(SCALES),
                  help='tiny (unit tests), demo (default), full (benchmarks)')
  ap.add_argument('--seed', type=int, default=0, help='same seed -> identical files')
  ap.add_argument('--features', default=','.join(DEFAULT_FEATURES),
                  help='comma list of feature sets to write; name:dim for your own')
  args = ap.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  rc, s = cli.call(make_tree, args.out, args.scale, args.seed, args.features)
  if rc:
    return rc
  print(f'{s["root"]}: {s["videos"]} videos ('
        + ', '.join(f'{k} {len(v)}' for k, v in s['splits'].items())
        + f'), {s["frames"]} frames, feature sets '
        + ', '.join(f'{k} ({d})' for k, d in s['feature_sets'].items()))
  return 0


if __name__ == '__main__':
  sys.exit(main())
