"""Writes a synthetic MuSe-family tree: a real layout, names and quirks, with made-up values.

The real data is under an EULA, so tests, the demo job and benchmarks run on this instead:

  python -m muse_jax.data.demo --out DIR [--layout L] [--scale tiny|demo|full] [--seed 0]
                               [--features a,b]

Layouts (`LAYOUTS`, docs/data_format.md), each with the quirks its release has:
  muse2020          c1_muse_wild (MuSe-CaR 2020): arousal, valence at 250 ms; labels
                    timestamp,value,segment_id; partition Id,Proposal.
  muse2020_trust    <out>/c3_muse_trust (MuSe-Trust 2020): arousal, valence, trustworthiness at
                    250 ms, the 2020 shape, beside c1_muse_wild in the same release root (the
                    partition file <out>/metadata/partition.csv is shared: write both with the
                    same --scale and --seed).
  muse2021_wilder   <out>/c1_muse_wilder (MuSe-CaR 2021): the same targets and grid, 2021 shape
                    (feature_segments/<set>, labels timestamp,segment_id,value).
  muse2021_stress   <out>/c3_muse_stress (Ulm-TSST): arousal, valence, physio-arousal on a 500 ms
                    grid; a partition file whose columns the baselines read by position.
  muse2021_physio   <out>/c4_muse_physio: anno12_EDA at 500 ms; test label files present but all
                    NaN (withheld), not missing.
  muse2022_stress   <out>/c3_muse_stress_2022: physio-arousal, valence at 500 ms; ids that are not
                    small integers; labels and features with subject_id where 2021 has
                    segment_id; some feature files start at 0 while labels start at 500 ms.
  plain             the plain layout (metadata, features, labels) at 200 ms with string ids.

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

Quirks of real releases, present in every layout (their places are listed in the returned
summary and in `demo_tree.json`, beside partition.csv): a duplicated partition row; test videos
without label files (physio: with NaN label files); zero-vector rows and NaN cells in the visual
sets (au, vggface); one feature file 3 rows longer than its labels and one 2 rows shorter;
timestamps on the grid not starting at 0; varying video lengths; segment ids 1, 2, ... in
contiguous runs.
"""

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import zlib

from absl import logging
import numpy as np

from muse_jax import console
from muse_jax.data import demo_files
from muse_jax.data import layout
from muse_jax.errors import MuseError

# Released sets and their dimensions (docs/data_format.md); any `name:dim` works as well.
FEATURE_SETS = {
  'au': 35,
  'deepspectrum': 4096,
  'egemaps': 88,
  'fasttext': 300,
  'gaze': 288,
  'gocar': 350,
  'landmarks_2d': 136,
  'landmarks_3d': 204,
  'openpose': 54,
  'pdm': 40,
  'pose': 6,
  'vggface': 512,
  'xception': 2048,
}
DEFAULT_FEATURES = ('egemaps', 'fasttext', 'au', 'vggface')
VISUAL = (
  'au',
  'vggface',
  'gaze',
  'landmarks_2d',
  'landmarks_3d',
  'openpose',
  'pdm',
  'pose',
  'xception',
)
MARKER = 'demo_tree.json'


@dataclasses.dataclass(frozen=True)
class DemoLayout:
  kind: str  # layout.KINDS key
  task: str  # folder under --out ('' = --out itself)
  targets: tuple
  step_ms: int
  partition_header: str = 'Id,Proposal'
  label_columns: tuple = layout.COLUMNS_2021
  feature_meta: tuple = ('timestamp', 'segment_id')
  ids: str = 'small'  # small | large | names
  test_labels: str = 'missing'  # missing | nan: how withheld test labels look
  features_from_zero: bool = False  # some feature files start at 0, before the labels


LAYOUTS = {
  'muse2020': DemoLayout(
    'muse2020', '', ('arousal', 'valence'), 250, label_columns=layout.COLUMNS_2020
  ),
  'muse2020_trust': DemoLayout(
    'muse2020_task',
    'c3_muse_trust',
    ('arousal', 'valence', 'trustworthiness'),
    250,
    label_columns=layout.COLUMNS_2020,
  ),
  'muse2021_wilder': DemoLayout('muse2021', 'c1_muse_wilder', ('arousal', 'valence'), 250),
  'muse2021_stress': DemoLayout(
    'muse2021',
    'c3_muse_stress',
    ('arousal', 'valence', 'physio-arousal'),
    500,
    partition_header='subject,gender,fold',
  ),
  'muse2021_physio': DemoLayout(
    'muse2021', 'c4_muse_physio', ('anno12_EDA',), 500, test_labels='nan'
  ),
  'muse2022_stress': DemoLayout(
    'muse2021',
    'c3_muse_stress_2022',
    ('physio-arousal', 'valence'),
    500,
    partition_header='subject_id,partition',
    label_columns=('timestamp', 'value', 'subject_id'),
    feature_meta=('timestamp', 'subject_id'),
    ids='large',
    features_from_zero=True,
  ),
  'plain': DemoLayout(
    'plain', '', ('arousal', 'valence'), 200, partition_header='Id,Partition', ids='names'
  ),
}
# How each target is made from the latent curves (arousal-like, valence-like, a third one).
TARGET_MIX = {
  'valence': (0.0, 1.0, 0.0),
  'physio-arousal': (0.7, 0.0, 0.3),
  'anno12_EDA': (0.8, 0.0, 0.2),
  'trustworthiness': (0.3, 0.5, 0.2),
}
AROUSAL_LIKE = (1.0, 0.0, 0.0)


@dataclasses.dataclass(frozen=True)
class Scale:
  n_videos: int
  min_len: int
  max_len: int
  mean_len: int  # 0: uniform lengths in [min_len, max_len]
  seg_len: tuple  # segment lengths drawn from this range


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
  hold: int = 1  # > 1: values held constant over 'words' of 1..hold frames (text features)


VIEWS = {
  'egemaps': View(1.0, 0.3, lag=6, spread=12),
  'au': View(1.0, 0.35, lag=10, spread=16),
  'fasttext': View(0.3, 1.0, lag=8, spread=12, noise=4.0, hold=2),
  'vggface': View(0.35, 1.0, lag=12, spread=20),
}
DEFAULT_VIEW = View(0.7, 0.7, lag=8, spread=16)
LABEL_SMOOTH = 16.0  # frames (4 s): std of the Gaussian smoothing the latent curves
N_CHANNELS = 8  # latent channels per feature set, mixed into its D columns
LEAD_MARGIN = 32  # label frames generated past the end, for views that lead the labels
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
  return np.convolve(x, k / np.sqrt((k**2).sum()), mode='valid')


def _spread(x: np.ndarray, width: int) -> np.ndarray:
  """Wide centred kernel: the view smears every change over about `width` frames."""
  k = np.hanning(width + 2)[1:-1]
  k /= k.sum()
  return np.convolve(np.pad(x, (width // 2, width - 1 - width // 2), mode='edge'), k, mode='valid')


def _parse_features(features) -> dict:
  if features is None:
    features = DEFAULT_FEATURES
  features = layout.parse_list(features)
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
      raise MuseError(
        f'--features: unknown feature set {name!r}; use one of '
        f'{", ".join(sorted(FEATURE_SETS))} or name:dim for your own'
      )
  if not out:
    raise MuseError('--features: no feature set given')
  return out


def _ids(kind: str, raw: np.ndarray) -> list:
  if kind == 'large':  # e.g. the 2022 release's subject ids
    return [str(10_000_000 + 7919 * int(i)) for i in raw]
  if kind == 'names':
    return [f'rec_{int(i):03d}' for i in raw]
  return [str(int(i)) for i in raw]


def _layout(scale: Scale, seed: int, demo_layout: DemoLayout = None) -> dict:
  """Ids, lengths, partitions, start times, segments: independent of the feature sets."""
  demo_layout = demo_layout or LAYOUTS['muse2020']
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
  part[order[n_train : n_train + n_devel]] = 'devel'
  part[order[n_train + n_devel :]] = 'test'
  starts = demo_layout.step_ms * rng.integers(0, 60, n) * (rng.random(n) < 0.75)
  if demo_layout.features_from_zero:
    starts = np.maximum(starts, demo_layout.step_ms)  # labels start one step in
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
  return dict(
    ids=_ids(demo_layout.ids, ids),
    lens=lens,
    part=part,
    starts=starts,
    segments=segments,
    unlabelled=set(test[::2]),
    duplicate=int(pick[0]),
    longer=int(pick[1]),
    shorter=int(pick[2]),
  )


def _latents(seed: int, i: int, n: int) -> np.ndarray:
  """Smooth curves in (-1, 1), [3, n + LEAD_MARGIN] (with a per-video offset): arousal-like,
  valence-like and a third one that only physiological targets mix in (TARGET_MIX).

  One random stream per target, and the first k values depend only on the first k + 6 sigma
  draws: the curves are the same whatever the video's extra rows or the sets being written.
  """
  r = int(3 * LABEL_SMOOTH)
  out = []
  for k in range(3):
    rng = np.random.default_rng([seed, 1, i, k])
    offset = rng.normal(0, 0.5)
    out.append(
      np.tanh(0.7 * _smooth(rng.standard_normal(n + LEAD_MARGIN + 2 * r), LABEL_SMOOTH) + offset)
    )
  return np.stack(out)


def _features(name: str, dim: int, labels: np.ndarray, n: int, seed: int, i: int) -> np.ndarray:
  """[n, dim] features of one video (labels cover n + lag frames)."""
  view = VIEWS.get(name, DEFAULT_VIEW)
  g = np.random.default_rng([seed, 2, _key(name)])  # per set: the same map for every video
  mix = g.normal(0, 1, (N_CHANNELS, dim)) / np.sqrt(N_CHANNELS)
  w = np.stack(
    [
      view.arousal * g.choice([-1, 1], N_CHANNELS) * g.uniform(0.6, 1.4, N_CHANNELS),
      view.valence * g.choice([-1, 1], N_CHANNELS) * g.uniform(0.6, 1.4, N_CHANNELS),
    ]
  )
  kinds = np.arange(N_CHANNELS) % 3
  mean, std = _column_scales(name, dim, g)
  rng = np.random.default_rng([seed, 3, i, _key(name)])
  u = np.stack([_spread(labels[k], view.spread)[view.lag : view.lag + n] for k in range(2)])
  pre = (w.T @ u) * 1.8  # [channels, n]
  ch = np.where(
    kinds[:, None] == 0, pre, np.where(kinds[:, None] == 1, np.tanh(pre), pre * np.abs(pre) * 0.5)
  )
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
    return (
      np.array([2] * len(demo_files.AUS) + [0] * (dim - len(demo_files.AUS)))
      if dim == 35
      else np.full(dim, 2)
    )
  _, std = _column_scales(name, dim, np.random.default_rng([seed, 2, _key(name)]))
  return np.clip(2 - np.floor(np.log10(std)), 1, 6).astype(np.int64)


def _visual_gaps(x: np.ndarray, name: str, rng, counts: dict) -> None:
  """No face found -> zero rows; some releases have NaN cells."""
  n = len(x)
  if rng.random() < 0.4:
    for _ in range(int(rng.integers(1, 4))):
      s, ln = int(rng.integers(0, n)), int(rng.integers(3, 20))
      x[s : s + ln] = 0.0
      counts['zero_rows'] += min(ln, n - s)
  if rng.random() < 0.3:
    rows = rng.choice(n, min(n, int(rng.integers(1, 6))), replace=False)
    cols = rng.random((len(rows), x.shape[1])) < (1.0 if name == 'au' else 0.05)
    cols[:, 0] = True
    for r, c in zip(rows, cols):
      x[r, c] = np.nan
      counts['nan_cells'] += int(c.sum())


def _label_values(latents: np.ndarray, target: str) -> np.ndarray:
  return np.tensordot(np.asarray(TARGET_MIX.get(target, AROUSAL_LIKE)), latents, axes=1)


def make_tree(
  out: str,
  scale: str = 'demo',
  seed: int = 0,
  features=None,
  layout_name: str = 'muse2020',
  fraction: float = 1.0,
) -> dict:
  """Writes the tree under `out`; returns a summary (ids per split, frames, where the quirks are).

  `features`: names (comma string or list) of released sets or `name:dim`; default egemaps,
  fasttext, au, vggface. `layout_name`: a key of LAYOUTS; the 2021/2022 layouts write their task
  folder under `out` (a release root; other tasks there are left alone). `fraction` < 1 writes
  only the first share of each partition's videos (at least one), with the same files as the
  whole tree's: a slice of the scale for quicker runs. Refuses to write into a non-empty folder
  that is not a demo tree.
  """
  if scale not in SCALES:
    raise MuseError(f'unknown scale {scale!r}; use one of {", ".join(SCALES)}')
  if layout_name not in LAYOUTS:
    raise MuseError(f'unknown layout {layout_name!r}; use one of {", ".join(LAYOUTS)}')
  dl = LAYOUTS[layout_name]
  sets = _parse_features(features)
  out = os.path.abspath(out)
  root = os.path.join(out, dl.task) if dl.task else out
  if os.path.isdir(root) and os.listdir(root):
    if not _demo_owned(root):
      raise MuseError(
        f'{root}: not empty and not a demo tree ({MARKER} missing); refusing to '
        'overwrite, pick an empty or new folder'
      )
    for sub in (
      'metadata',
      'c1_muse_wild',
      'feature_segments',
      'label_segments',
      'features',
      'labels',
      MARKER,
    ):
      p = os.path.join(root, sub)
      shutil.rmtree(p) if os.path.isdir(p) else os.path.exists(p) and os.remove(p)
  if not 0 < fraction <= 1:
    raise MuseError(f'fraction must be in (0, 1], got {fraction}')
  lay = _layout(SCALES[scale], seed, dl)
  keep = _slice(lay['part'], fraction)
  tree = layout.Layout(
    dl.kind,
    root,
    dl.task or (layout.TASK_2020 if dl.kind == 'muse2020' else os.path.basename(root)),
  )
  names = list(sets)
  quirks = {
    'duplicated_partition_id': lay['ids'][lay['duplicate']] if lay['duplicate'] in keep else None,
    'unlabelled_test_ids': [lay['ids'][i] for i in sorted(lay['unlabelled'] & keep)],
    'test_labels_withheld_as': dl.test_labels,
    'longer_feature_file': {
      'id': lay['ids'][lay['longer']],
      'feature_set': names[0],
      'extra_rows': 3,
    }
    if lay['longer'] in keep
    else None,
    'shorter_feature_file': {
      'id': lay['ids'][lay['shorter']],
      'feature_set': names[-1],
      'missing_rows': 2,
    }
    if lay['shorter'] in keep
    else None,
    'zero_rows': {},
    'nan_cells': {},
  }
  if dl.features_from_zero:
    quirks['features_from_zero'] = names[0]
  extra_cols = len(dl.partition_header.split(',')) - 2  # e.g. gender: not read
  rows = {
    i: ','.join([vid] + ['x'] * extra_cols + [p])
    for i, (vid, p) in enumerate(zip(lay['ids'], lay['part']))
    if i in keep
  }
  rows = list(rows.values()) + ([rows[lay['duplicate']]] if lay['duplicate'] in keep else [])
  partition = dl.partition_header + '\n' + '\n'.join(rows) + '\n'
  if dl.kind == 'muse2020_task' and os.path.exists(tree.partition_path):
    with open(tree.partition_path, encoding='utf-8') as f:  # the release's, shared with c1
      if f.read() != partition:
        raise MuseError(
          f'{tree.partition_path}: the partition of the tree already here differs '
          f'from the one {layout_name} would write; write both tasks with the '
          'same --scale, --seed and --fraction, or into a new folder'
        )
  for d in (
    [os.path.dirname(tree.partition_path)]
    + [tree.label_folder(t) for t in dl.targets]
    + [tree.feature_folder(s) for s in names]
  ):
    os.makedirs(d, exist_ok=True)
  with open(tree.partition_path, 'w') as f:
    f.write(partition)

  frames = 0
  step = dl.step_ms
  for i, vid in enumerate(lay['ids']):
    if i not in keep:
      continue
    n = int(lay['lens'][i])
    frames += n
    extra = 3 if i == lay['longer'] else 0
    t = lay['starts'][i] + step * np.arange(n + extra, dtype=np.int64)
    seg = np.concatenate([lay['segments'][i], np.full(extra, lay['segments'][i][-1], np.int32)])
    meta = {'timestamp': t, 'segment_id': seg, 'subject_id': np.full(len(t), i + 1)}
    labels = _latents(seed, i, n + extra)
    withheld = i in lay['unlabelled']
    if not withheld or dl.test_labels == 'nan':
      for target in dl.targets:
        value = _label_values(labels, target)[:n] if not withheld else np.full(n, np.nan)
        cols = {**meta, 'value': value}
        demo_files.write_csv(
          tree.label_path(target, vid),
          list(dl.label_columns),
          [cols[c][:n] for c in dl.label_columns],
          [4 if c == 'value' else 0 for c in dl.label_columns],
        )
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
      cols = [meta[c][:m] for c in dl.feature_meta] + [x]
      if dl.features_from_zero and name == names[0]:  # rows from 0 up to the first label
        lead = int(t[0] // step)
        cols = (
          [np.concatenate([step * np.arange(lead), c]) for c in cols[:1]]
          + [np.concatenate([np.full(lead, c[0]), c]) for c in cols[1:-1]]
          + [np.concatenate([np.repeat(x[:1], lead, axis=0), x])]
        )
      demo_files.write_csv(
        tree.feature_path(name, vid),
        list(dl.feature_meta) + demo_files.column_names(name, dim),
        cols,
        [0] * len(dl.feature_meta) + list(_decimals(name, dim, seed)),
      )
  split_ids = {
    p: [lay['ids'][i] for i in sorted(keep) if lay['part'][i] == p] for p in layout.SPLITS
  }
  summary = {
    'scale': scale,
    'seed': seed,
    'layout': layout_name,
    'task': tree.task,
    'fraction': fraction,
    'targets': list(dl.targets),
    'step_ms': step,
    'videos': len(keep),
    'frames': int(frames),
    'splits': split_ids,
    'feature_sets': sets,
    'quirks': quirks,
  }
  with open(os.path.join(root, MARKER), 'w') as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  logging.info(
    'demo tree (%s, %s, seed %d): %d videos, %d frames, sets %s -> %s',
    layout_name,
    scale,
    seed,
    summary['videos'],
    frames,
    ','.join(names),
    root,
  )
  return dict(summary, root=root)


def _slice(part, fraction: float) -> set:
  """Indices of the first `fraction` of each partition's videos (in id order; at least one)."""
  if fraction >= 1:
    return set(range(len(part)))
  keep = set()
  for split in layout.SPLITS:
    idx = [i for i, p in enumerate(part) if p == split]
    keep.update(idx[: max(1, round(len(idx) * fraction))])
  return keep


def _demo_owned(root: str) -> bool:
  """Is every entry of `root` the demo's (its marker, or demo task folders and their shared
  metadata/)? Only then may make_tree write there."""
  if os.path.exists(os.path.join(root, MARKER)):
    return True
  entries = [e for e in os.listdir(root) if e != 'metadata']
  return bool(entries) and all(os.path.exists(os.path.join(root, e, MARKER)) for e in entries)


# The demo layout of each task name config.task may give (the 2020 root's own task is muse2020).
TASK_LAYOUTS = {
  (dl.task or layout.TASK_2020): name for name, dl in LAYOUTS.items() if name != 'plain'
}


def default_out() -> str:
  """Where demo trees and their builds go when no folder is given: $MUSE_OUT (as ./run.sh), else
  out/ of the checkout, else ~/.cache/muse_jax/demo for an installed package."""
  if os.environ.get('MUSE_OUT'):
    return os.path.abspath(os.path.expanduser(os.environ['MUSE_OUT']))
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if os.path.isfile(os.path.join(repo, 'run.sh')):
    return os.path.join(repo, 'out')
  cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(cache, 'muse_jax', 'demo')


def is_demo_tree(root: str) -> bool:
  """A layout root written by this module (its marker is there)."""
  return os.path.exists(os.path.join(root, MARKER))


def tree_in(out: str, scale: str = 'demo', task: str = '') -> str:
  """`<out>/demo_tree_<scale>` (seed 0), written on first use: the data of the jobs and of a run
  given no tree. A 2020 release root (c1_muse_wild); `task` (config.task) adds that task's demo
  layout to it (c3_muse_trust beside c1_muse_wild, a 2021/2022 task folder). Each part is
  written to a temporary folder and renamed into place, so concurrent first runs never read a
  half-written tree."""
  out = os.path.abspath(os.path.expanduser(out))
  root = os.path.join(out, f'demo_tree_{scale}')
  if task and task not in TASK_LAYOUTS:
    raise MuseError(
      f'config.task={task!r}: the demo tree has no such task (it writes '
      f'{", ".join(TASK_LAYOUTS)}); pass --data_root=/path/to/your/tree'
    )
  names = ['muse2020'] + ([TASK_LAYOUTS[task]] if task and task != layout.TASK_2020 else [])
  for name in names:
    dl = LAYOUTS[name]
    if os.path.exists(os.path.join(root, dl.task, MARKER)):
      continue
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.demo_{name}_', dir=out)
    try:
      logging.info('writing the %s demo tree (%s layout) to %s', scale, name, root)
      make_tree(tmp, scale=scale, seed=0, layout_name=name)
      src, dst = (
        (tmp, root) if not dl.task else (os.path.join(tmp, dl.task), os.path.join(root, dl.task))
      )
      try:
        os.rename(src, dst)
      except OSError:  # written meanwhile by another process (or a foreign folder: refused)
        if not os.path.exists(os.path.join(dst, MARKER)):
          raise MuseError(
            f'{dst}: exists and is not a demo tree; move it away, or set MUSE_OUT to another folder'
          ) from None
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return root


def main(argv=None) -> int:
  # argparse, not absl flags: this module is imported by the job, which has its own --out/--scale.
  ap = console.ArgumentParser(
    prog='python -m muse_jax.data.demo', description=__doc__.split('\n')[0]
  )
  ap.add_argument(
    '--out',
    type=console.path,
    required=True,
    help='folder to write into (new, empty or a demo tree)',
  )
  ap.add_argument(
    '--scale',
    default='demo',
    choices=list(SCALES),
    help='tiny (unit tests), demo (default), full (benchmarks)',
  )
  ap.add_argument('--seed', type=int, default=0, help='same seed -> identical files')
  ap.add_argument(
    '--layout',
    default='muse2020',
    choices=list(LAYOUTS),
    help='release layout to write (module docstring), default muse2020',
  )
  ap.add_argument(
    '--features',
    default=','.join(DEFAULT_FEATURES),
    help='comma list of feature sets to write; name:dim for your own',
  )
  ap.add_argument(
    '--fraction',
    type=float,
    default=1.0,
    help="write only this share of each partition's videos (same files as the whole scale)",
  )
  args = ap.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  rc, s = console.call(
    make_tree, args.out, args.scale, args.seed, args.features, args.layout, args.fraction
  )
  if rc:
    return rc
  print(
    f'{s["root"]} ({s["layout"]}, {s["step_ms"]} ms, targets {",".join(s["targets"])}): '
    f'{s["videos"]} videos ('
    + ', '.join(f'{k} {len(v)}' for k, v in s['splits'].items())
    + f'), {s["frames"]} frames, feature sets '
    + ', '.join(f'{k} ({d})' for k, d in s['feature_sets'].items())
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
