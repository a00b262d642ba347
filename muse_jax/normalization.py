"""Inputs z-normalised with train statistics, and the NaN policy for cells that cannot be used.

Statistics come from the train partition only and are kept in the workdir (`norm_stats.npz`), so
evaluate, predict and `predictor.Predictor` apply exactly the training normalisation. Bad cells
are non-finite ones and finite ones no genuine feature reaches: missing-value markers such as 1e30
(`SENTINEL_ABS`) or cells over `config.max_abs_z` train std from the train mean. Left as they are,
one of them turns a whole video's predictions into NaN; `config.nan_policy` replaces them by the
train mean (one log line per file) or stops at the first, naming its file, line and column.
"""

import dataclasses
import json
import os
import warnings

from absl import logging
import numpy as np

from muse_jax import files
from muse_jax.data import build
from muse_jax.data import csv_table
from muse_jax.data import layout
from muse_jax.data import reader
from muse_jax.errors import MuseError

EPS = 1e-6  # added to the train std, as the authors' code does
# Cells this many train std from the train mean are treated like NaN (config.max_abs_z): no real
# feature gets there in train (a column's largest |z| over N frames is at most sqrt(N - 1)).
DEFAULT_MAX_ABS_Z = 1e3
# A float32 feature of this magnitude is a missing-value marker (1e30, FLT_MAX), never a value.
SENTINEL_ABS = 1e20
MAX_POLICY_LINES = 20  # per run: past that, one summary line (a release may have hundreds)
# What norm_stats.npz holds: these NormStats fields as arrays, and these in its JSON `meta`.
ARRAYS = ('mean', 'std', 'raw_mean', 'raw_std')
META = ('names', 'dims', 'normalized', 'n_train', 'columns', 'step_ms')


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
  normalized: list  # per name: was it normalised
  raw_mean: np.ndarray
  raw_std: np.ndarray
  n_train: int  # train frames: the bound is never below sqrt(n_train) (see below)
  path: str = ''  # the workdir file it was loaded from, for messages
  # Set by sources.prepare_data once fitted (they come from the build, not the train videos):
  columns: dict = None  # per feature set: its column names as trained (the build's order)
  step_ms: int = 0  # the label grid of the training data (0: no video long enough to tell)

  def apply(self, x):
    return (x - self.mean) / self.std

  def out_of_range(self, x, max_abs_z: float) -> np.ndarray:
    """Cells that are not finite, of a magnitude no feature has (SENTINEL_ABS), or over
    max(max_abs_z, sqrt(n_train)) train std from the train mean (a column constant over train:
    that many of its own units from its value; a column without any usable train value: every
    cell). Over N frames no train value of a column lies
    more than sqrt(N - 1) std from its mean, so genuine train data is never out of range."""
    with np.errstate(invalid='ignore', over='ignore'):
      ok = np.abs(x) < SENTINEL_ABS  # NaN compares False
      bound = max(max_abs_z, float(np.sqrt(max(self.n_train, 1))))
      scale = np.where(
        self.raw_std > 0, self.raw_std, np.where(np.isnan(self.raw_std), -1.0, 1.0)
      ).astype(np.float32)
      ok &= np.abs(x - self.raw_mean) <= bound * scale
    return ~ok

  def fill(self) -> np.ndarray:
    """What a bad cell becomes (nan_policy zero): the train mean, i.e. 0 in a normalised column
    and the raw train mean in one that is not normalised."""
    out = np.zeros(self.mean.shape, np.float32)
    start = 0
    for is_norm, d in zip(self.normalized, self.dims):
      if not is_norm:
        out[start : start + d] = np.nan_to_num(self.raw_mean[start : start + d])
      start += d
    return out

  def save(self, path):
    with files.atomic_path(path, '.npz') as tmp:
      np.savez(
        tmp,
        **{k: getattr(self, k) for k in ARRAYS},
        meta=json.dumps({k: getattr(self, k) for k in META}),
      )

  @classmethod
  def load(cls, path):
    """The statistics `save` wrote. One format: a file without an array or meta field this
    version writes is another version's and refused by name, never read with defaults."""
    if not os.path.exists(path):
      raise MuseError(f'{path}: no normalisation statistics; train in this workdir first')
    with np.load(path) as z:
      meta = json.loads(str(z['meta'])) if 'meta' in z else None
      missing = [k for k in ARRAYS + ('meta',) if k not in z] or [k for k in META if k not in meta]
      if missing:
        raise MuseError(
          f'{path}: written by another version of muse_jax (no {missing[0]}); '
          'retrain in a new --workdir'
        )
      return cls(
        meta['names'],
        meta['dims'],
        z['mean'],
        z['std'],
        meta['normalized'],
        z['raw_mean'],
        z['raw_std'],
        meta['n_train'],
        path=path,
        columns=meta['columns'],
        step_ms=int(meta['step_ms']),
      )


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


def compute_stats(spec, train_videos, dims) -> NormStats:
  """Train-partition mean/std per column; identity for unnormalised inputs.

  Accumulated video by video (no copy of the train data). Left out: non-finite cells, cells of
  a magnitude no feature has (|x| >= SENTINEL_ABS: missing-value markers such as 1e30 or FLT_MAX,
  which would otherwise set the scale of their column), and cells out of range after a first
  pass (NormStats.out_of_range; a second pass only when some may be). The normalisation then
  treats those cells by config.nan_policy. A column constant over train is centred but not
  divided by its (zero) std, which would blow any other value up to ~1e6: one warning per set.
  """
  names = list(spec.inputs)
  x0 = train_videos[0].x
  with np.errstate(invalid='ignore'), warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)  # an all-NaN column: its shift is 0
    shift = np.nan_to_num(
      np.nanmean(np.where(np.abs(x0) < SENTINEL_ABS, x0, np.nan).astype(np.float64), axis=0)
    )
  mean, std, far, count = _moments(train_videos, shift)
  n_train = sum(len(v.x) for v in train_videos)
  bound = max_abs_z(spec)
  first = NormStats(
    names,
    list(dims),
    mean.astype(np.float32),
    std.astype(np.float32),
    [],
    mean.astype(np.float32),
    std.astype(np.float32),
    n_train,
  )
  limit = max(bound, np.sqrt(max(n_train, 1))) * np.where(std > 0, std, 1.0)
  if (far + np.abs(mean - shift) > limit).any():  # some cell may be out of range: count them
    n_out = sum(
      int(np.count_nonzero(first.out_of_range(v.x, bound) & np.isfinite(v.x))) for v in train_videos
    )
    if n_out:
      mean, std, _, count = _moments(train_videos, shift, lambda x: first.out_of_range(x, bound))
      logging.warning(
        'train statistics: %d finite cells over %g train std from the mean left '
        'out (config.max_abs_z); they are treated by nan_policy',
        n_out,
        bound,
      )
  constant = (std <= 1e-6 * np.abs(mean)) & (count > 0)  # float32 data: constant up to rounding
  # No usable train cell at all (every one NaN or a marker): nothing to scale by. Divided by the
  # bare EPS, any devel value would become ~1e6; such a column is left unscaled, centred on 0.
  empty = count == 0
  mean = np.where(empty, 0.0, mean)
  # raw_std NaN marks such a column for out_of_range: every value of it is out of range.
  raw_mean, raw_std = mean.copy(), np.where(empty, np.nan, np.where(constant, 0.0, std))
  std = np.where(constant | empty, 1.0, std + EPS)
  normalized = list(spec.normalized)
  labels = column_labels(spec, dims)
  start = 0
  for name, d in zip(names, dims):
    cols = slice(start, start + d)
    if name not in normalized:
      mean[cols], std[cols] = 0.0, 1.0
    if empty[cols].any():
      idx = np.flatnonzero(empty[cols])
      logging.warning(
        '%s: %d column(s) with no usable value in the train partition (%s); every '
        'value there was NaN, Inf or a missing-value marker: the column is ignored '
        '(every value treated by nan_policy)',
        name,
        len(idx),
        ', '.join(labels[start + j] for j in idx[:5]) + (', ...' if len(idx) > 5 else ''),
      )
    if name in normalized and constant[cols].any():
      idx = np.flatnonzero(constant[cols])
      logging.warning(
        '%s: %d column(s) constant over the train partition (%s); centred, not scaled',
        name,
        len(idx),
        ', '.join(f'{labels[start + j]} = {raw_mean[start + j]:.6g}' for j in idx[:5])
        + (', ...' if len(idx) > 5 else ''),
      )
    start += d
  return NormStats(
    names,
    list(dims),
    mean.astype(np.float32),
    std.astype(np.float32),
    [n in normalized for n in names],
    raw_mean.astype(np.float32),
    raw_std.astype(np.float32),
    n_train,
  )


def max_abs_z(spec) -> float:
  return float(spec.config.get('max_abs_z', DEFAULT_MAX_ABS_Z))


def column_labels(spec, dims) -> list:
  """A name per input column for messages: '<set>:<column header>' (as built), else '<set>[j]'."""
  out = []
  for name, d in zip(spec.inputs, dims):
    info = (build.build_info(spec.data_dir, name) or {}) if d > 1 else {}
    cols = info.get('columns') or []
    out += (
      [f'{name}:{c}' for c in cols]
      if len(cols) == d
      else [name]
      if d == 1
      else [f'{name}[{j}]' for j in range(d)]
    )
  return out


def _cell_source(spec, stats: NormStats, v, split: str, row: int, col: int) -> str:
  """Where a joined input cell comes from: the feature file, its line, timestamp and column."""
  start = 0
  for name, d in zip(stats.names, stats.dims):  # noqa: B007  (name: read after the loop)
    if col < start + d:
      break
    start += d
  t = int(v.timestamp[row])
  where = f'video {v.id} ({split}), timestamp {t}'
  root = spec.data_root or os.path.abspath('.')
  path = layout.feature_path(root, name, v.id)
  if name != layout.SEGMENT_ID and os.path.exists(path):
    try:
      number, header = reader.feature_column(root, name, v.id, col - start)
      table = csv_table.read_table(path)
      hit = np.flatnonzero(
        table.column(next(c for c in table.columns if c.lower() == 'timestamp')) == t
      )
      line = f'line {table.lines[hit[0]]}, ' if len(hit) else ''
      return f'{path}: {line}column {number} ({header!r}), {where}'
    except (MuseError, StopIteration, IndexError):
      pass
  return f'{where}: input {name}, column {col - start + 1}'


def normalize(spec, videos: dict, stats: NormStats) -> dict:
  """Applies stats and the NaN policy in place; returns videos.

  Bad cells are non-finite ones (NaN cells of the release, Inf cells the reader turned into NaN)
  and finite ones over config.max_abs_z train std from the train mean (missing-value markers such
  as 1e30: left as they are, one of them turns a whole video's predictions into NaN).
  Policy 'zero' sets them to the train mean (0 after normalisation; the raw train mean in an
  input that is not normalised), with one log line per file; 'error' stops at the first one,
  naming its file, line and column.
  """
  names = list(spec.inputs)
  where = stats.path or 'normalisation statistics'
  if stats.names != names:
    raise MuseError(
      f'{where}: this workdir was trained on inputs {stats.names}, this config asks '
      f'for {names}; use a fresh workdir, or the inputs it was trained on'
    )
  bound = max_abs_z(spec)
  shown = max(bound, float(np.sqrt(max(stats.n_train, 1))))  # the bound in effect, for messages
  root = spec.data_root or os.path.abspath('.')
  fill = stats.fill()
  n_cells, n_files, lines = 0, 0, 0
  for split, vs in videos.items():
    for v in vs:
      if v.x.shape[1] != stats.mean.shape[0]:
        raise MuseError(
          f'{where}: {stats.mean.shape[0]} input columns, video {v.id} has '
          f'{v.x.shape[1]}; use a fresh workdir'
        )
      bad = stats.out_of_range(v.x, bound)
      if bad.any():
        if spec.config.nan_policy == 'error':
          r, c = np.argwhere(bad)[0]
          what = (
            'NaN or Inf'
            if not np.isfinite(v.x[r, c])
            else (f'{float(v.x[r, c]):.6g}, over {shown:g} train std from the train mean')
          )
          raise MuseError(
            f'{_cell_source(spec, stats, v, split, r, c)}: {what} '
            '(config.nan_policy is error); fix the file, or set '
            '--config.nan_policy=zero to replace such cells by the train mean'
          )
        start = 0
        for name, d in zip(stats.names, stats.dims):
          b = bad[:, start : start + d]
          if b.any():
            k, far = int(b.sum()), int((b & np.isfinite(v.x[:, start : start + d])).sum())
            n_cells, n_files = n_cells + k, n_files + 1
            if lines < MAX_POLICY_LINES:
              lines += 1
              path = (
                layout.feature_path(root, name, v.id)
                if name in spec.feature_sets
                else f'input {name}'
              )
              logging.info(
                '%s: video %s (%s): %d cells %sset to the train mean (nan_policy zero)',
                path,
                v.id,
                split,
                k,
                f'(of them {far} finite but over {shown:g} train std) ' if far else 'NaN or Inf ',
              )
          start += d
      # In place: inputs mapped from disk stay in the map instead of being copied into memory.
      np.subtract(v.x, stats.mean, out=v.x)
      np.divide(v.x, stats.std, out=v.x)
      if bad.any():
        v.x[bad] = np.broadcast_to(fill, v.x.shape)[bad]
  if n_files > lines:
    logging.info(
      'NaN policy zero: %d non-finite or out-of-range input cells in %d files set to '
      'the train mean (%d files not listed above)',
      n_cells,
      n_files,
      n_files - lines,
    )
  return videos
