"""From the built tfds dataset to fixed-shape, masked batches.

Stages, in order: read the configured feature sets (building them on first use) and, for late
fusion, the predictions of `config.fusion_runs` (muse_jax.fusion) -> join them video by video on
the label grid (early fusion; large inputs go to a mapped file as they are joined) -> z-normalise with train-partition statistics (kept in the
workdir so evaluate/predict reuse exactly the training normalisation) -> NaN policy -> cut train
videos into windows / pad devel and test videos whole into a few length buckets.

Every batch has a fixed shape so the jitted step compiles once: train batches are always
`batch_size` windows (the last one is filled with empty, fully masked rows) and evaluation batches
come from a short ladder of bucket lengths.
"""
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Iterator

from absl import logging
import numpy as np

from muse_jax import fusion
from muse_jax.data import build
from muse_jax.data import reader
from muse_jax.errors import MuseError

SPLITS = ('train', 'devel', 'test')
TARGETS = ('arousal', 'valence')
EPS = 1e-6  # added to the train std, as the authors' code does
# Cells this many train std from the train mean are treated like NaN (config.max_abs_z): no real
# feature gets there in train (a column's largest |z| over N frames is at most sqrt(N - 1)).
DEFAULT_MAX_ABS_Z = 1e3
# Labels beyond this get a warning naming the file: every MuSe release's lie within [-1, 1].
LABEL_WARN_ABS = 5.0
# A float32 feature of this magnitude is a missing-value marker (1e30, FLT_MAX), never a value.
SENTINEL_ABS = 1e20
SEGMENT_ID = 'segment_id'


@dataclasses.dataclass
class Video:
  """One video on its label grid, features joined and normalised."""
  id: str
  timestamp: np.ndarray   # [T] int64, ms
  segment_id: np.ndarray  # [T] int32
  x: np.ndarray           # [T, D] float32
  y: np.ndarray           # [T, K] float32, NaN where there is no label
  has_labels: bool        # all targets labelled (test videos may not be)


@dataclasses.dataclass
class NormStats:
  """Per-column statistics of the train partition; columns follow `names` x `dims`.

  `mean`/`std` are what is applied (identity for unnormalised inputs, std 1 for columns constant
  over train); `raw_mean`/`raw_std` are the train statistics of every column, which the
  out-of-range check uses whether a column is normalised or not.
  """
  names: list
  dims: list
  mean: np.ndarray
  std: np.ndarray
  normalized: list        # per name: was it normalised
  raw_mean: np.ndarray = None
  raw_std: np.ndarray = None
  n_train: int = 0        # train frames: the bound is never below sqrt(n_train) (see below)
  path: str = ''          # the workdir file it was loaded from, for messages

  def apply(self, x):
    return (x - self.mean) / self.std

  def out_of_range(self, x, max_abs_z: float) -> np.ndarray:
    """Cells that are not finite, of a magnitude no feature has (SENTINEL_ABS), or over
    max(max_abs_z, sqrt(n_train)) train std from the train mean (a column constant over train:
    that many of its own units from its value). Over N frames no train value of a column lies
    more than sqrt(N - 1) std from its mean, so genuine train data is never out of range.
    Statistics of an older version (no raw_*): only the first two checks."""
    with np.errstate(invalid='ignore', over='ignore'):
      ok = np.abs(x) < SENTINEL_ABS  # NaN compares False
      if self.raw_mean is not None:
        bound = max(max_abs_z, float(np.sqrt(max(self.n_train, 1))))
        scale = np.where(self.raw_std > 0, self.raw_std, 1.0).astype(np.float32)
        ok &= np.abs(x - self.raw_mean) <= bound * scale
    return ~ok

  def save(self, path):
    tmp = path + '.tmp.npz'
    np.savez(tmp, mean=self.mean, std=self.std, raw_mean=self.raw_mean, raw_std=self.raw_std,
             meta=json.dumps({'names': self.names, 'dims': self.dims,
                              'normalized': self.normalized, 'n_train': self.n_train}))
    os.replace(tmp, path)

  @classmethod
  def load(cls, path):
    if not os.path.exists(path):
      raise MuseError(f'{path}: no normalisation statistics; train in this workdir first')
    with np.load(path) as z:
      meta = json.loads(str(z['meta']))
      raw = (z['raw_mean'], z['raw_std']) if 'raw_mean' in z else (None, None)
      return cls(meta['names'], meta['dims'], z['mean'], z['std'], meta['normalized'], *raw,
                 n_train=meta.get('n_train', 0), path=path)


def parse_list(value) -> list:
  """Tuple/list/comma string config fields -> list ('a,b' works on the command line)."""
  if isinstance(value, str):
    value = (value,)
  out = []
  for v in value:
    out += [s.strip() for s in str(v).split(',') if s.strip()]
  return out


def fusion_runs(config) -> list:
  """Workdirs whose predictions are input columns (late fusion); [] for feature-only runs."""
  return [os.path.abspath(os.path.expanduser(r)) for r in parse_list(config.get('fusion_runs', ''))]


def input_names(config) -> list:
  names = parse_list(config.feature_sets)
  names += fusion.input_names(fusion_runs(config), parse_list(config.targets))
  return names + ([SEGMENT_ID] if config.add_segment_id else [])


def normalized_names(config) -> list:
  norm = parse_list(config.normalize)
  names = input_names(config)
  if norm == ['all']:
    return names
  if norm == ['none']:
    return []
  unknown = sorted(set(norm) - set(names))
  if unknown:
    raise MuseError(f'config.normalize names {unknown} that are not inputs of this run {names}; '
                    "use 'all', 'none' or a comma list of input names")
  return norm


def _join_grid(vid, per_set):
  """Common frame count of one video across feature sets.

  The reader puts every set on the video's label grid, so sets agree whenever labels exist. For
  videos without labels the grid is each feature file's own: sets may then differ by a few rows at
  the end (documented quirk) -> keep the common prefix, with a log line; any other disagreement is
  an error naming the video and the sets.
  """
  names = list(per_set)
  ts = [per_set[n]['timestamp'] for n in names]
  n = min(len(t) for t in ts)
  for name, t in zip(names, ts):
    if not np.array_equal(t[:n], ts[0][:n]):
      bad = int(np.argmax(t[:n] != ts[0][:n]))
      raise MuseError(f'video {vid}: feature sets {names[0]} and {name} disagree at row {bad} '
                      f'(timestamp {ts[0][bad]} vs {t[bad]}); fix the feature files')
  if any(len(t) != n for t in ts):
    logging.info('video %s: feature sets differ in length %s; using the common %d rows',
                 vid, {k: len(t) for k, t in zip(names, ts)}, n)
  return n


def load_videos(config, spill_dir: str | None = None, spill_over: float | None = None) -> tuple:
  """Reads and joins the configured feature sets, then the fusion runs' predictions, by video.

  Returns ({split: [Video]}, dims): features not yet normalised; dims per input name. Only one
  video's raw arrays are in memory at a time. With `spill_dir`, when the joined inputs would take
  more than `spill_over` bytes (None: always), each video's x is written to a file there as it is
  made, and becomes a view of that file mapped into memory (see `_Spill`): loading then holds about
  one video, and training pages in what batches touch instead of pinning the whole set.
  """
  root, data_dir = ensure_built(config)
  sets = {name: build.FeatureSet(data_dir, name) for name in parse_list(config.feature_sets)}
  targets = parse_list(config.targets)
  runs = fusion_runs(config)
  predicted = {}
  if runs:  # late fusion: labels and grid from a built set, one column per (run, target)
    grid_set = fusion.grid_feature_set(runs, list(sets))
    grid = sets.get(grid_set) or build.FeatureSet(data_dir, grid_set)
    predicted = fusion.load_runs(runs, targets, root, _grid_videos(grid))
  names = list(sets) + list(predicted)  # input sources, in column order
  dims = [sets[n].dim for n in sets] + [1] * len(predicted) + ([1] if config.add_segment_id else [])
  predicted = {name: {split: {v['id']: v for v in vs} for split, vs in by_split.items()}
               for name, by_split in predicted.items()}

  def ids(name, split):
    return sets[name].ids(split) if name in sets else list(predicted[name].get(split, {}))

  def rows(name, split, vid):
    return (sets[name].rows(split, vid) if name in sets
            else len(predicted[name][split][vid]['timestamp']))

  order = {}
  for split in SPLITS:
    order[split] = ids(names[0], split)
    for name in names[1:]:
      if set(ids(name, split)) != set(order[split]):
        diff = sorted(set(ids(name, split)) ^ set(order[split]))[:5]
        raise MuseError(f'{split}: feature sets {names[0]} and {name} hold different videos '
                        f'(e.g. {diff}); rebuild or fix the tree')
  for split in ('train', 'devel'):  # devel selects the epoch, the seed and the lr schedule
    if not order[split]:
      raise MuseError(f'{os.path.join(root, reader.PARTITION_CSV)}: the {split} partition has no '
                      f'videos; list some as {split} (training needs train and devel videos)')
  far_off = []
  spill = None
  if spill_dir is not None:
    # The joined length of a video is its shortest source (_join_grid): the exact size up front.
    total = sum(min(rows(n, split, vid) for n in names) for split in SPLITS for vid in order[split])
    if spill_over is None or total * sum(dims) * 4 > spill_over:
      spill = _Spill(spill_dir, total, sum(dims))
  out = {}
  for split in SPLITS:
    videos = []
    for vid in order[split]:
      per_set = {name: sets[name].read(split, vid) if name in sets else predicted[name][split][vid]
                 for name in names}
      n = _join_grid(vid, per_set)
      first = per_set[names[0]]
      cols = [per_set[name]['features'][:n] for name in names]
      if config.add_segment_id:
        cols.append(first['segment_id'][:n, None].astype(np.float32))
      y = np.stack([np.asarray(first[t][:n], np.float32) for t in targets], axis=1)
      has = all(bool(first[f'has_{t}']) for t in targets)
      if not has:
        y[:] = np.nan
      else:
        a = np.nan_to_num(np.abs(y), nan=0.0, posinf=np.inf)
        if (a > LABEL_WARN_ABS).any():
          r, k = np.unravel_index(np.argmax(a), a.shape)
          far_off.append((reader.label_path(root, targets[k], vid), float(y[r, k])))
      x = np.concatenate(cols, axis=1).astype(np.float32, copy=False)
      if spill:
        spill.write(x)
        x = None  # set by spill.map
      videos.append(Video(vid, np.asarray(first['timestamp'][:n]),
                          np.asarray(first['segment_id'][:n]), x, y, has))
    out[split] = videos
  for path, value in far_off[:5]:
    logging.warning('%s: label value %.6g is far off the release scale (labels of the MuSe '
                    'releases lie within [-1, 1]); check the file, or that every label file has '
                    'the same scale', path, value)
  if len(far_off) > 5:
    logging.warning('%d more label files hold values beyond +-%g', len(far_off) - 5,
                    LABEL_WARN_ABS)
  if spill:
    spill.map([v for split in SPLITS for v in out[split]])
  return out, dims


def _grid_videos(grid: build.FeatureSet) -> dict:
  """A set's videos without their features (late fusion needs only its labels and grid)."""
  out = {}
  for split in SPLITS:
    out[split] = []
    for vid in grid.ids(split):
      v = grid.read(split, vid)
      del v['features']  # freed here: fusion.load_runs sets its own
      out[split].append(v)
  return out


class _Spill:
  """Joined inputs written to one file as they are made, then mapped: `v.x` stays a numpy array
  (a view of the map), so windows, batches and evaluation work unchanged, and the OS pages the
  data in as it is touched instead of pinning it in memory. For sets too large to hold, e.g.
  deepspectrum (4096-d) over all of MuSe-CaR. The file is unlinked as soon as it is open: it
  disappears with the process, even after a kill -9."""

  def __init__(self, folder: str, rows: int, dim: int):
    self.folder, self.rows, self.dim, self.lengths = folder, rows, dim, []
    try:
      os.makedirs(folder, exist_ok=True)
      free = shutil.disk_usage(folder).free
      if free < rows * dim * 4:
        self._fail(f'{free / 2**30:.1f} GiB free, {rows * dim * 4 / 2**30:.1f} GiB needed')
      fd, path = tempfile.mkstemp(prefix='.inputs.', suffix='.f32', dir=folder)
      os.unlink(path)
    except OSError as e:
      self._fail(e.strerror or str(e))
    self.file = os.fdopen(fd, 'w+b')

  def _fail(self, why: str):
    raise MuseError(f'{self.folder}: cannot hold the inputs on disk ({why}); free space there, '
                    'use another workdir or set --config.inputs_on_disk=no')

  def write(self, x: np.ndarray) -> None:
    """Appends one video's x (its view is set by `map`)."""
    assert x.dtype == np.float32 and x.shape[1] == self.dim, (x.dtype, x.shape, self.dim)
    try:
      self.file.write(memoryview(np.ascontiguousarray(x)))
    except OSError as e:
      self.file.close()
      self._fail(e.strerror or str(e))
    self.lengths.append(len(x))

  def map(self, videos: list) -> None:
    """Sets each video's x to its rows of the mapped file; `videos` in the order written."""
    rows = sum(self.lengths)
    assert rows == self.rows and [len(v.timestamp) for v in videos] == self.lengths
    self.file.flush()
    mm = (np.memmap(self.file, np.float32, 'r+', shape=(rows, self.dim)) if rows
          else np.zeros((0, self.dim), np.float32))
    self.file.close()  # the map keeps the data
    start = 0
    for v in videos:
      n = len(v.timestamp)
      v.x = mm[start:start + n]
      start += n
    logging.info('inputs (%.1f GiB) written to a memory-mapped file in %s',
                 rows * self.dim * 4 / 2**30, self.folder)


def ensure_built(config) -> tuple:
  """Builds the configured feature sets if missing or stale; returns (root, data_dir)."""
  root = os.path.abspath(os.path.expanduser(config.data_root)) if config.data_root else ''
  if not root:
    raise MuseError('config.data_root is empty: point it at a MuSe-layout tree '
                    '(--data_root=/path/to/muse_root or --config.data_root=...)')
  data_dir = data_dir_of(config)
  sets = parse_list(config.feature_sets)
  runs = fusion_runs(config)
  grid_set = [fusion.grid_feature_set(runs, sets)] if runs else []
  build.ensure_built(root, data_dir, list(dict.fromkeys(sets + grid_set)))
  return root, data_dir


def data_dir_of(config) -> str:
  d = config.data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  return os.path.abspath(os.path.expanduser(d))


def _moments(videos, shift, exclude=None):
  """(mean, std, largest |x - shift|, count) per column over the videos' usable cells: finite,
  under SENTINEL_ABS and not flagged by `exclude(x)`. Float64 sums of shifted values, so sums
  of squares stay exact."""
  d = len(shift)
  total, total_sq, count, far = np.zeros(d), np.zeros(d), np.zeros(d), np.zeros(d)
  for v in videos:
    with np.errstate(invalid='ignore'):
      ok = np.abs(v.x) < SENTINEL_ABS
    if exclude is not None:
      ok &= ~exclude(v.x)
    x = np.where(ok, v.x.astype(np.float64) - shift, 0.0)
    total += x.sum(0)
    total_sq += (x * x).sum(0)
    count += ok.sum(0)
    if len(x):
      far = np.maximum(far, np.abs(x).max(0))
  n = np.maximum(count, 1)
  mean = total / n
  return mean + shift, np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0)), far, count


def compute_stats(config, train_videos, dims) -> NormStats:
  """Train-partition mean/std per column; identity for unnormalised inputs.

  Accumulated video by video (no copy of the train data). Left out: non-finite cells, cells of
  a magnitude no feature has (|x| >= SENTINEL_ABS: missing-value markers such as 1e30 or FLT_MAX,
  which would otherwise set the scale of their column), and cells out of range after a first
  pass (NormStats.out_of_range; a second pass only when some may be). The normalisation then
  treats those cells by config.nan_policy. A column constant over train is centred but not
  divided by its (zero) std, which would blow any other value up to ~1e6: one warning per set.
  """
  names = input_names(config)
  x0 = train_videos[0].x
  with np.errstate(invalid='ignore'):
    shift = np.nan_to_num(np.nanmean(np.where(np.abs(x0) < SENTINEL_ABS, x0, np.nan).astype(
        np.float64), axis=0))
  mean, std, far, count = _moments(train_videos, shift)
  n_train = sum(len(v.x) for v in train_videos)
  bound = float(config.get('max_abs_z', DEFAULT_MAX_ABS_Z))
  first = NormStats(names, list(dims), mean.astype(np.float32), std.astype(np.float32), [],
                    mean.astype(np.float32), std.astype(np.float32), n_train)
  limit = max(bound, np.sqrt(max(n_train, 1))) * np.where(std > 0, std, 1.0)
  if (far + np.abs(mean - shift) > limit).any():  # some cell may be out of range: count them
    n_out = sum(int(np.count_nonzero(first.out_of_range(v.x, bound) & np.isfinite(v.x)))
                for v in train_videos)
    if n_out:
      mean, std, _, count = _moments(train_videos, shift, lambda x: first.out_of_range(x, bound))
      logging.warning('train statistics: %d finite cells over %g train std from the mean left '
                      'out (config.max_abs_z); they are treated by nan_policy', n_out, bound)
  constant = (std <= 1e-6 * np.abs(mean)) & (count > 0)  # float32 data: constant up to rounding
  raw_mean, raw_std = mean.copy(), np.where(constant, 0.0, std)
  std = np.where(constant, 1.0, std + EPS)
  normalized = normalized_names(config)
  labels = column_labels(config, dims)
  start = 0
  for name, d in zip(names, dims):
    cols = slice(start, start + d)
    if name not in normalized:
      mean[cols], std[cols] = 0.0, 1.0
    elif constant[cols].any():
      idx = np.flatnonzero(constant[cols])
      logging.warning('%s: %d column(s) constant over the train partition (%s); centred, not '
                      'scaled', name, len(idx), ', '.join(
                          f'{labels[start + j]} = {raw_mean[start + j]:.6g}' for j in idx[:5])
                      + (', ...' if len(idx) > 5 else ''))
    start += d
  return NormStats(names, list(dims), mean.astype(np.float32), std.astype(np.float32),
                   [n in normalized for n in names], raw_mean.astype(np.float32),
                   raw_std.astype(np.float32), n_train)


def column_labels(config, dims) -> list:
  """A name per input column for messages: '<set>:<column header>' (as built), else '<set>[j]'."""
  out = []
  data_dir = data_dir_of(config)
  for name, d in zip(input_names(config), dims):
    info = (build.build_info(data_dir, name) or {}) if d > 1 else {}
    cols = info.get('columns') or []
    out += ([f'{name}:{c}' for c in cols] if len(cols) == d
            else [name] if d == 1 else [f'{name}[{j}]' for j in range(d)])
  return out


def _cell_source(config, stats: NormStats, v: Video, split: str, row: int, col: int) -> str:
  """Where a joined input cell comes from: the feature file, its line, timestamp and column."""
  start = 0
  for name, d in zip(stats.names, stats.dims):
    if col < start + d:
      break
    start += d
  t = int(v.timestamp[row])
  where = f'video {v.id} ({split}), timestamp {t}'
  root = os.path.abspath(os.path.expanduser(config.data_root or '.'))
  path = reader.feature_path(root, name, v.id)
  if name != SEGMENT_ID and os.path.exists(path):
    try:
      number, header = reader.feature_column(root, name, v.id, col - start)
      table = reader.read_table(path)
      hit = np.flatnonzero(table.column(next(c for c in table.columns
                                              if c.lower() == 'timestamp')) == t)
      line = f'line {table.lines[hit[0]]}, ' if len(hit) else ''
      return f'{path}: {line}column {number} ({header!r}), {where}'
    except (MuseError, StopIteration, IndexError):
      pass
  return f'{where}: input {name}, column {col - start + 1}'


MAX_POLICY_LINES = 20  # per run: past that, one summary line (a release may have hundreds)


def normalize(config, videos: dict, stats: NormStats) -> dict:
  """Applies stats and the NaN policy in place; returns videos.

  Bad cells are non-finite ones (NaN cells of the release, Inf cells the reader turned into NaN)
  and finite ones over config.max_abs_z train std from the train mean (missing-value markers such
  as 1e30: left as they are, one of them turns a whole video's predictions into NaN).
  Policy 'zero' sets them to 0 after normalisation, i.e. the train mean, with one log line per
  file; 'error' stops at the first one, naming its file, line and column.
  """
  names = input_names(config)
  where = stats.path or 'normalisation statistics'
  if stats.names != names:
    raise MuseError(f'{where}: this workdir was trained on inputs {stats.names}, this config asks '
                    f'for {names}; use a fresh workdir, or the inputs it was trained on')
  bound = float(config.get('max_abs_z', DEFAULT_MAX_ABS_Z))
  shown = max(bound, float(np.sqrt(max(stats.n_train, 1))))  # the bound in effect, for messages
  root = os.path.abspath(os.path.expanduser(config.data_root or '.'))
  n_cells, n_files, lines = 0, 0, 0
  for split, vs in videos.items():
    for v in vs:
      if v.x.shape[1] != stats.mean.shape[0]:
        raise MuseError(f'{where}: {stats.mean.shape[0]} input columns, video {v.id} has '
                        f'{v.x.shape[1]}; use a fresh workdir')
      bad = stats.out_of_range(v.x, bound)
      if bad.any():
        if config.nan_policy == 'error':
          r, c = np.argwhere(bad)[0]
          what = 'NaN or Inf' if not np.isfinite(v.x[r, c]) else (
              f'{float(v.x[r, c]):.6g}, over {shown:g} train std from the train mean')
          raise MuseError(f'{_cell_source(config, stats, v, split, r, c)}: {what} '
                          '(config.nan_policy is error); fix the file, or set '
                          '--config.nan_policy=zero to replace such cells by the train mean')
        start = 0
        for name, d in zip(stats.names, stats.dims):
          b = bad[:, start:start + d]
          if b.any():
            k, far = int(b.sum()), int((b & np.isfinite(v.x[:, start:start + d])).sum())
            n_cells, n_files = n_cells + k, n_files + 1
            if lines < MAX_POLICY_LINES:
              lines += 1
              path = (reader.feature_path(root, name, v.id)
                      if name in parse_list(config.feature_sets) else f'input {name}')
              logging.info('%s: video %s (%s): %d cells %sset to the train mean (nan_policy '
                           'zero)', path, v.id, split, k,
                           f'(of them {far} finite but over {shown:g} train std) ' if far
                           else 'NaN or Inf ')
          start += d
      # In place: inputs mapped from disk stay in the map instead of being copied into memory.
      np.subtract(v.x, stats.mean, out=v.x)
      np.divide(v.x, stats.std, out=v.x)
      v.x[bad] = 0.0
  if n_files > lines:
    logging.info('NaN policy zero: %d non-finite or out-of-range input cells in %d files set to '
                 'the train mean (%d files not listed above)', n_cells, n_files, n_files - lines)
  return videos


def train_windows(config, videos) -> 'Windows':
  """Train windows of config.win_len every hop_len, or whole videos (config.whole_videos, as the
  paper's late fusion trains): one window per video, as long as the longest."""
  if config.get('whole_videos', False):
    n = max(len(v.x) for v in videos)
    return make_windows(videos, n, n)
  return make_windows(videos, config.win_len, config.hop_len)


@dataclasses.dataclass
class Windows:
  """Train windows as spans of the videos, not copies: a batch's windows are gathered when it is
  drawn, so the train data is held once (windows with hop < win would otherwise duplicate it)."""
  videos: list
  spans: np.ndarray    # [N, 3]: video index, start, end
  win_len: int

  @property
  def lengths(self) -> np.ndarray:
    return (self.spans[:, 2] - self.spans[:, 1]).astype(np.int32)

  def gather(self, idx) -> tuple:
    """(x [n, win, D], y [n, win, K], lengths [n]) of windows idx, zero-padded to win_len."""
    v0 = self.videos[0]
    x = np.zeros((len(idx), self.win_len, v0.x.shape[1]), np.float32)
    y = np.zeros((len(idx), self.win_len, v0.y.shape[1]), np.float32)
    for j, (i, s, e) in enumerate(self.spans[idx]):
      x[j, :e - s] = self.videos[i].x[s:e]
      y[j, :e - s] = self.videos[i].y[s:e]
    return x, y, self.lengths[idx]


def make_windows(videos, win_len: int, hop_len: int) -> Windows:
  """Cuts each video into windows of win_len frames every hop_len (the last may be shorter)."""
  spans = []
  for i, v in enumerate(videos):
    n = len(v.x)
    for s in range(0, n, hop_len):
      e = min(s + win_len, n)
      spans.append((i, s, e))
      if e == n:
        break
  return Windows(videos, np.asarray(spans, np.int64).reshape(-1, 3), win_len)


def _mask(y, lengths):
  t = np.arange(y.shape[1])[None, :]
  return (t < lengths[:, None]) & np.all(np.isfinite(y), axis=-1)


def train_batches(w: Windows, batch_size: int, seed: int, epoch: int,
                  multiple: int = 1) -> Iterator[dict]:
  """One epoch of shuffled batches of `batch_size` windows, each padded with empty rows to a
  multiple of `multiple` (the device count x micro-batches). The last, partial batch is padded
  only to that multiple, not to a full batch: its size is the same every epoch, so a run
  compiles at most two step shapes, and no step computes a batch's worth of empty rows (on a
  small tree, whose windows fit in one batch, that was most of the work). The order depends only
  on (seed, epoch): a resumed run sees exactly the batches an uninterrupted one would, and the
  device count changes only the padding."""
  perm = np.random.default_rng([seed, epoch]).permutation(len(w.lengths))
  for b, rows in zip(range(0, len(perm), batch_size), step_rows(len(perm), batch_size, multiple)):
    yield pad_batch(*w.gather(perm[b:b + batch_size]), rows)


def step_rows(n_windows: int, batch_size: int, multiple: int = 1) -> list:
  """Rows of each step of an epoch (train_batches' padding): batch_size windows, the last step
  the rest, each rounded up to a multiple of `multiple`."""
  return [-(-min(batch_size, n_windows - b) // multiple) * multiple
          for b in range(0, n_windows, batch_size)]


def pad_batch(x, y, lengths, rows: int) -> dict:
  """Pads the batch axis to `rows` with empty (length 0, fully masked) rows."""
  n = len(lengths)
  if n < rows:
    pad = rows - n
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros((pad,) + y.shape[1:], y.dtype)])
    lengths = np.concatenate([lengths, np.zeros((pad,), lengths.dtype)])
  return {'x': x, 'y': np.nan_to_num(y), 'lengths': lengths.astype(np.int32),
          'mask': _mask(y, lengths)}


def bucket_length(n: int, minimum: int = 64) -> int:
  """Smallest ladder length >= n. The ladder (64, 96, 128, 192, 256, ...: powers of two and their
  1.5x) wastes at most a third of a batch on padding and keeps compilations to O(log max_len)."""
  b = minimum
  while True:
    for c in (b, b * 3 // 2):
      if c >= n:
        return c
    b *= 2


def eval_batch_rows(length: int, multiple: int = 1) -> int:
  """Videos per evaluation batch for a bucket: attention memory grows with length^2, so long
  buckets hold fewer videos (2^22 score cells per head; at least one video)."""
  rows = max(1, min(64, (1 << 22) // (length * length)))
  return -(-rows // multiple) * multiple


def eval_batches(videos, multiple: int = 1) -> Iterator[tuple]:
  """Whole videos grouped by length bucket: yields (batch, [video index]) with fixed shapes per
  bucket; every batch of a bucket has the same rows (empty rows pad the last one)."""
  buckets = {}
  for i, v in enumerate(videos):
    buckets.setdefault(bucket_length(len(v.x)), []).append(i)
  for length in sorted(buckets):
    idxs = buckets[length]
    rows = eval_batch_rows(length, multiple)
    for b in range(0, len(idxs), rows):
      part = idxs[b:b + rows]
      d, k = videos[0].x.shape[1], videos[0].y.shape[1]
      x = np.zeros((len(part), length, d), np.float32)
      y = np.full((len(part), length, k), np.nan, np.float32)
      lengths = np.zeros((len(part),), np.int32)
      for j, i in enumerate(part):
        n = len(videos[i].x)
        x[j, :n], y[j, :n], lengths[j] = videos[i].x, videos[i].y, n
      yield pad_batch(x, y, lengths, rows), part


def num_eval_shapes(videos, multiple: int = 1) -> int:
  return len({bucket_length(len(v.x)) for v in videos})
