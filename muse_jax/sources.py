"""The run's inputs, video by video: built feature sets and late fusion's first-level runs,
joined on the label grid, then normalised (`prepare_data`).

Sources, in column order: the configured feature sets (built into tfds on first use,
`data.build`), then for late fusion the prediction CSVs of `config.fusion_runs` (`fusion.py`), then
the segment id. They are joined video by video on the label grid (early fusion); joined inputs too
large for memory go to an unlinked file in the workdir as they are made (`_Spill`). Labels come
from the first source and keep only the run's targets.
"""

import os
import shutil
import tempfile

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from muse_jax import fusion
from muse_jax import normalization
from muse_jax.data import build
from muse_jax.data import layout
from muse_jax.data import reader
from muse_jax.data.video import Video
from muse_jax.errors import MuseError

# Labels beyond this get a warning naming the file: every MuSe release's lie within [-1, 1].
LABEL_WARN_ABS = 5.0


def prepare_data(spec, workdir: str, fit_stats: bool, require=('train', 'devel')) -> tuple:
  """({split: [Video]} joined and normalised, dims per input): stats fitted on train (training,
  kept in the workdir) or read from the workdir (evaluate, predict)."""
  config = spec.config
  if jax.process_count() > 1:  # one process builds the dataset, the others wait and then read it
    if jax.process_index() == 0:
      ensure_built(spec)
    multihost_utils.sync_global_devices('muse_jax dataset built')
  # Large inputs go to an unlinked file in the workdir as they are read, never all into memory.
  spill_dir = None if config.inputs_on_disk == 'no' else workdir
  spill_over = 0.25 * _physical_memory() if config.inputs_on_disk == 'auto' else None
  videos, dims = load_videos(spec, spill_dir, spill_over, require)
  stats_path = os.path.join(workdir, 'norm_stats.npz')
  fit = fit_stats and not os.path.exists(stats_path)
  stats = (
    normalization.compute_stats(spec, videos['train'], dims)
    if fit
    else normalization.NormStats.load(stats_path)
  )
  step = grid_step(spec)
  if fit:
    stats.step_ms = step
  elif stats.step_ms and step and stats.step_ms != step:
    raise MuseError(
      f'{spec.data_root}: this data is on a {step} ms grid, but the model in '
      f'{workdir} learnt on a {stats.step_ms} ms grid; its windows are in frames, so '
      'give it data on its own grid (or train a model on this one)'
    )
  columns = {
    n: (build.build_info(spec.data_dir, n) or {}).get('columns') for n in spec.feature_sets
  }
  if fit:
    stats.columns = columns
  else:
    _check_columns(spec, stats, columns)
  normalization.normalize(spec, videos, stats)
  if fit and jax.process_index() == 0:  # only once the data passed: a fixed file is refitted
    stats.save(stats_path)
  return videos, dims


def _check_columns(spec, stats, columns: dict) -> None:
  """Features are read by name but stored in the order of a set's first file: another tree
  (predict) may order them otherwise, which would feed the model permuted inputs."""
  for name, have in columns.items():
    want = stats.columns.get(name)
    if want and have and want != have:
      j = next((j for j, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
      at = lambda cols: repr(cols[j]) if j < len(cols) else 'nothing'
      raise MuseError(
        f'{layout.feature_folder(spec.data_root, name)}: column {j + 1} of feature '
        f'set {name} is {at(have)}, the model was trained with {at(want)} there; '
        'give this tree the training columns in the same order'
      )


def _physical_memory() -> int:
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return 1 << 40  # unknown: never spill automatically


def load_videos(
  spec, spill_dir: str | None = None, spill_over: float | None = None, require=('train', 'devel')
) -> tuple:
  """Reads and joins the configured feature sets, then the fusion runs' predictions, by video.

  Returns ({split: [Video]}, dims): features not yet normalised; dims per input name. Only one
  video's raw arrays are in memory at a time. With `spill_dir`, when the joined inputs would take
  more than `spill_over` bytes (None: always), each video's x is written to a file there as it is
  made, and becomes a view of that file mapped into memory (see `_Spill`): loading then holds about
  one video, and training pages in what batches touch instead of pinning the whole set.
  `require`: the partitions that must hold videos (training selects on devel; predict needs none).
  """
  root, data_dir = ensure_built(spec)
  sets = {name: build.FeatureSet(data_dir, name) for name in spec.feature_sets}
  targets = list(spec.targets)
  runs = list(spec.fusion_runs)
  add_segment_id = spec.config.add_segment_id
  predicted = {}
  if runs:  # late fusion: labels and grid from a built set, one column per (run, target)
    grid_set = fusion.grid_feature_set(runs, list(sets))
    grid = sets.get(grid_set) or build.FeatureSet(data_dir, grid_set)
    predicted = fusion.load_runs(runs, targets, root, _grid_videos(grid))
  names = list(sets) + list(predicted)  # input sources, in column order
  dims = [sets[n].dim for n in sets] + [1] * len(predicted) + ([1] if add_segment_id else [])
  predicted = {
    name: {split: {v.id: v for v in vs} for split, vs in by_split.items()}
    for name, by_split in predicted.items()
  }

  def ids(name, split):
    return sets[name].ids(split) if name in sets else list(predicted[name].get(split, {}))

  def rows(name, split, vid):
    return (
      sets[name].rows(split, vid) if name in sets else len(predicted[name][split][vid].timestamp)
    )

  order = {}
  for split in layout.SPLITS:
    order[split] = ids(names[0], split)
    for name in names[1:]:
      if set(ids(name, split)) != set(order[split]):
        diff = sorted(set(ids(name, split)) ^ set(order[split]))[:5]
        raise MuseError(
          f'{split}: feature sets {names[0]} and {name} hold different videos '
          f'(e.g. {diff}); rebuild or fix the tree'
        )
  for split in require:  # devel selects the epoch, the seed and the lr schedule
    if not order[split]:
      raise MuseError(
        f'{layout.of(root).partition_path}: the {split} partition has no '
        f'videos; list some as {split} (training needs train and devel videos)'
      )
  far_off = []
  spill = None
  if spill_dir is not None:
    # The joined length of a video is at most its shortest source (_join_grid): a bound up front.
    total = sum(
      min(rows(n, split, vid) for n in names) for split in layout.SPLITS for vid in order[split]
    )
    if spill_over is None or total * sum(dims) * 4 > spill_over:
      spill = _Spill(spill_dir, total, sum(dims))
  out = {}
  for split in layout.SPLITS:
    videos = []
    for vid in order[split]:
      per_set = {
        name: sets[name].read(split, vid) if name in sets else predicted[name][split][vid]
        for name in names
      }
      per_set = _join_grid(vid, per_set)
      first = per_set[names[0]].select(targets)
      if split in require and not first.has_labels:
        lacking = targets[first.labelled.index(False)]
        raise MuseError(
          f'{layout.label_path(root, lacking, vid)}: label file missing for '
          f'{split} video {vid}; add it, or train without {lacking} '
          '(config.targets): train and devel videos need labels of every target'
        )
      cols = [per_set[name].x for name in names]
      if add_segment_id:
        cols.append(first.segment_id[:, None].astype(np.float32))
      y = np.asarray(first.y, np.float32)
      if not first.has_labels:
        y = np.full_like(y, np.nan)
      else:
        a = np.nan_to_num(np.abs(y), nan=0.0, posinf=np.inf)
        if (a > LABEL_WARN_ABS).any():
          r, k = np.unravel_index(np.argmax(a), a.shape)
          far_off.append((layout.label_path(root, targets[k], vid), float(y[r, k])))
      x = np.concatenate(cols, axis=1).astype(np.float32, copy=False)
      if spill:
        spill.write(x)
        x = None  # set by spill.map
      videos.append(
        Video(
          vid,
          np.asarray(first.timestamp),
          np.asarray(first.segment_id),
          x,
          y,
          tuple(targets),
          first.labelled,
        )
      )
    out[split] = videos
  for path, value in far_off[:5]:
    logging.warning(
      '%s: label value %.6g is far off the release scale (labels of the MuSe '
      'releases lie within [-1, 1]); check the file, or that every label file has '
      'the same scale',
      path,
      value,
    )
  if len(far_off) > 5:
    logging.warning('%d more label files hold values beyond +-%g', len(far_off) - 5, LABEL_WARN_ABS)
  if spill:
    spill.map([v for split in layout.SPLITS for v in out[split]])
  return out, dims


def _grid_videos(grid: build.FeatureSet) -> dict:
  """A set's videos without their features (late fusion needs only its labels and grid)."""
  out = {}
  for split in layout.SPLITS:
    out[split] = []
    for vid in grid.ids(split):
      v = grid.read(split, vid)
      v.x = None  # freed here: fusion.load_runs sets its own
      out[split].append(v)
  return out


def _join_grid(vid, per_set) -> dict:
  """The sources of one video on one grid: {name: Video} with the same timestamps.

  The reader puts every set on the video's label grid, so sets agree whenever labels exist. For
  videos without labels the grid is each feature file's own: sets may then differ by a few rows
  at either end (documented quirks: a file a few rows short; MuSe 2022 sets starting at 0 where
  others start one step later) -> keep the timestamps all sets share, with a log line; sets whose
  shared rows are not one contiguous run (a gap, another grid) are an error naming both.
  """
  names = list(per_set)
  ts = [per_set[n].timestamp for n in names]
  if all(len(t) == len(ts[0]) and np.array_equal(t, ts[0]) for t in ts):
    return per_set
  common = ts[0]
  for t in ts[1:]:
    common = np.intersect1d(common, t, assume_unique=True)
  out = {}
  step = reader.grid_step(common)
  for name, t in zip(names, ts):
    idx = np.searchsorted(t, common)
    left = np.setdiff1d(t, common)  # rows only this set has: must be ends on the same grid
    if (
      not len(common)
      or idx[-1] - idx[0] + 1 != len(common)
      or (step and ((left - common[0]) % step).any())
    ):
      odd = left[(left - common[0]) % step != 0] if step and len(common) else left
      raise MuseError(
        f'video {vid}: feature sets {names[0]} and {name} are on different grids '
        f'(timestamp {odd[0] if len(odd) else t[0]} of {name} is not in every set); '
        'fix the feature files'
      )
    out[name] = per_set[name].rows(int(idx[0]), int(idx[-1]) + 1)
  logging.info(
    'video %s: feature sets cover %s rows; using the %d rows at the timestamps all of '
    'them have (%d..%d ms)',
    vid,
    {k: len(t) for k, t in zip(names, ts)},
    len(common),
    common[0],
    common[-1],
  )
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
    raise MuseError(
      f'{self.folder}: cannot hold the inputs on disk ({why}); free space there, '
      'use another workdir or set --config.inputs_on_disk=no'
    )

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
    assert rows <= self.rows and [len(v.timestamp) for v in videos] == self.lengths
    self.file.flush()
    mm = (
      np.memmap(self.file, np.float32, 'r+', shape=(rows, self.dim))
      if rows
      else np.zeros((0, self.dim), np.float32)
    )
    self.file.close()  # the map keeps the data
    start = 0
    for v in videos:
      n = len(v.timestamp)
      v.x = mm[start : start + n]
      start += n
    logging.info(
      'inputs (%.1f GiB) written to a memory-mapped file in %s',
      rows * self.dim * 4 / 2**30,
      self.folder,
    )


def grid_step(spec) -> int:
  """The label grid's step (ms) of the run's built sets: read from the data by the build, one
  for all sets (and late fusion's grid set); 0 if no video is long enough to tell."""
  sets, runs = list(spec.feature_sets), list(spec.fusion_runs)
  names = list(dict.fromkeys(sets + ([fusion.grid_feature_set(runs, sets)] if runs else [])))
  steps = {n: int((build.build_info(spec.data_dir, n) or {}).get('step_ms') or 0) for n in names}
  known = {n: s for n, s in steps.items() if s}
  if len(set(known.values())) > 1:
    raise MuseError(
      f'{spec.data_root}: feature sets are on different grids '
      f'({", ".join(f"{n} {s} ms" for n, s in known.items())}); early fusion joins '
      'them frame by frame, so put them on one grid'
    )
  return next(iter(known.values()), 0)


def ensure_built(spec) -> tuple:
  """Builds the configured feature sets if missing or stale; returns (root, data_dir)."""
  if not spec.data_root:
    raise MuseError(
      'config.data_root is empty: point it at a MuSe-layout tree '
      '(--data_root=/path/to/muse_root or --config.data_root=...)'
    )
  sets, runs = list(spec.feature_sets), list(spec.fusion_runs)
  grid_set = [fusion.grid_feature_set(runs, sets)] if runs else []
  build.ensure_built(spec.data_root, spec.data_dir, list(dict.fromkeys(sets + grid_set)))
  return spec.data_root, spec.data_dir
