"""Reads a MuSe-family tree (any layout of `layout.py`) into `Video`s, one video at a time.

`root` is always the folder holding metadata/partition.csv (`layout.resolve` finds it); its
`layout.of(root)` says where feature sets (`<set>/<Id>.csv`: timestamp,segment_id,<D>) and targets
(`<target>/<Id>.csv`: timestamp, value and segment_id in any order) live. Columns are always read
by name. Pure numpy/pandas so that it can be tested and used without tfds; `muse_car.py` turns its
output into a tfds dataset.

Policies for the quirks of real releases (each one is logged with the file it concerns):
  * partition.csv: the id column is `Id` (or `id`, `subject_id`, ...), the partition column
    `Proposal`/`Partition`/`split`; a column not found by name is taken where the baselines take
    it, the id from the first column, the partition from the last (logged). A row repeated under
    the same partition is dropped; an id listed under two partitions, or a partition other than
    train/devel/test, is an error. Ids are strings (`'1'`, `'subj_07'`), sorted naturally.
  * Feature files of ids that partition.csv does not list are ignored (logged once per set).
  * Targets are the layout's label folders (any names). Label files may be missing for test
    videos (the challenge withheld them): such a video still yields a Video with NaN labels,
    `labelled` False, and the timestamps of its feature file as its grid. A train/devel video
    without any label file is an error; one missing only some targets is kept with those marked
    unlabelled (counted, logged by the build), and a run asking for such a target refuses it.
  * Everything is put on the LABEL grid, matching feature rows BY TIMESTAMP: feature rows before
    the first or after the last label timestamp are dropped; up to `PAD_TOLERANCE_ROWS` label rows
    missing at the end of the feature file are filled by repeating its last row; anything else (a
    gap, an off-grid row inside the labelled span, disjoint timestamps, a much shorter file) is an
    error naming the video, the feature set and the first mismatching timestamp.
  * All label files of a video must share timestamps and segment ids (error naming both).
  * The grid step of a video is its timestamps' smallest step (`grid_step`); every step must be
    a multiple of it (gaps are fine, jitter is an error naming the line); feature rows on the grid
    inside a gap of the labels are dropped. The build checks that all videos share one step and
    keeps it with the data (250 ms for MuSe-CaR, 500 ms for Ulm-TSST); runs hold it with the model.
  * A label file holding only NaN is a withheld label (MuSe 2021 physio test videos): that target
    is unlabelled, its timestamps still give the video's grid.
  * Inf cells become NaN; NaN cells are kept as NaN (the training pipeline decides what to do
    with them); zero-vector rows (no face found) are kept. Counts go into each video's stats,
    which the build sums and logs once per set (a release has hundreds of files).
  * Malformed CSVs are errors naming the file and, where it applies, the line and column: empty
    file, header only, ragged row, non-numeric cell, non-integral or repeated or out-of-order
    timestamp, wrong label columns, a feature file whose width differs from the set's.
All user-fixable problems raise `MuseError` with a one-line message.
"""

import csv
import io
import os

from absl import logging
import numpy as np

from muse_jax.data import layout
from muse_jax.data.csv_table import Table
from muse_jax.data.csv_table import check_header
from muse_jax.data.csv_table import read_header
from muse_jax.data.csv_table import read_table
from muse_jax.data.layout import SPLITS
from muse_jax.data.video import Video
from muse_jax.errors import MuseError

LABEL_COLUMNS = layout.COLUMNS_2020  # the columns of a label file (any order)
# Columns of a feature or label file that are never features or values: MuSe 2022 files may hold
# the subject's id in the second column (where 2020/2021 hold segment_id).
META_COLUMNS = ('timestamp', 'segment_id', 'subject_id', 'video_id', 'file_id', 'id')
# A feature file may end this many label rows (2 s at 4 Hz) early; the gap is filled by repeating
# its last row. Real releases differ by a few rows at the end; more than that is misalignment.
PAD_TOLERANCE_ROWS = 8

_PARTITION_ID_COLUMNS = ('id', 'video_id', 'subject_id', 'subject', 'vid')
_PARTITION_NAME_COLUMNS = ('proposal', 'partition', 'split', 'set')


natural_key = layout.natural_key  # ids and folder names, one order everywhere


def _find(columns: list, name: str):
  low = [c.lower() for c in columns]
  return low.index(name) if name in low else None


def _time_column(table: Table) -> np.ndarray:
  """The `timestamp` column as int64, strictly increasing (errors name the line)."""
  t = table.values[:, _find(table.columns, 'timestamp')]
  bad = ~np.isfinite(t) | (t != np.round(t))
  if bad.any():
    i = int(np.argmax(bad))
    _fail(
      f'{table.path}: line {table.lines[i]}: timestamp {float(t[i])} is not a whole number of ms'
    )
  t = t.astype(np.int64)
  step = np.diff(t)
  if (step <= 0).any():
    i = int(np.argmax(step <= 0)) + 1
    what = 'repeats' if step[i - 1] == 0 else 'goes back in time after'
    _fail(
      f'{table.path}: line {table.lines[i]}: timestamp {t[i]} {what} line {table.lines[i - 1]} '
      f'({t[i - 1]}); rows must be in strictly increasing time order'
    )
  return t


def _segment_column(table: Table) -> np.ndarray:
  """segment_id as int32; a file without one (MuSe 2022) is one segment, 1 (logged once)."""
  j = _find(table.columns, 'segment_id')
  if j is None:
    _once(
      '%s (and others like it): no segment_id column; every row is segment 1',
      os.path.dirname(table.path),
    )
    return np.ones(len(table.values), np.int32)
  s = table.values[:, j]
  bad = ~np.isfinite(s) | (s != np.round(s))
  if bad.any():
    i = int(np.argmax(bad))
    _fail(f'{table.path}: line {table.lines[i]}: segment_id {float(s[i])} is not an integer')
  return s.astype(np.int32)


_said = set()


def _once(msg: str, *args) -> None:
  """Logs a policy line once per process: the partition file is read by every build and run."""
  if (msg, args) not in _said:
    _said.add((msg, args))
    logging.info(msg, *args)


def _fail(msg: str):
  raise MuseError(msg)


def _inf_to_nan(x: np.ndarray, path: str) -> int:
  inf = np.isinf(x)
  n = int(inf.sum())
  if n:
    x[inf] = np.nan
    logging.warning('%s: %d Inf cells set to NaN', path, n)
  return n


# ------------------------------------------------------------------------------------------------
# Partition and feature sets.


def read_partition(root: str) -> dict:
  """{video id (str) -> 'train'|'devel'|'test'}, in natural id order."""
  path = layout.of(root).partition_path
  if not os.path.isfile(path):
    _fail(
      f'{path}: partition file not found; is {root} the root of a MuSe release or task '
      '(holding metadata/partition.csv)?'
    )
  with open(path, 'rb') as f:
    text = f.read().removeprefix(b'\xef\xbb\xbf').decode('utf-8', errors='replace')
  rows = [
    (i + 1, r)
    for i, r in enumerate(csv.reader(io.StringIO(text)))
    if r and any(c.strip() for c in r)
  ]
  if not rows:
    _fail(f'{path}: empty file; expected the header Id,Proposal and one row per video')
  check_header(path, [c.strip() for c in rows[0][1]], index_ok=True)  # columns found by name
  header = [c.strip().lower() for c in rows[0][1]]
  id_col = next((header.index(c) for c in _PARTITION_ID_COLUMNS if c in header), None)
  part_col = next((header.index(c) for c in _PARTITION_NAME_COLUMNS if c in header), None)
  if id_col is None or part_col is None:
    if len(header) < 2:
      _fail(f'{path}: header is {rows[0][1]}; expected the columns Id and Proposal (or Partition)')
    if any(c in SPLITS for c in header):
      _fail(
        f'{path}: line 1 ({",".join(rows[0][1])}) is a video, not a header; add the header '
        'row Id,Proposal'
      )
    # The baselines' reading (MuSe 2021/2022): id first, partition last, whatever their names.
    id_col = 0 if id_col is None else id_col
    part_col = len(header) - 1 if part_col is None else part_col
    if part_col == id_col:
      _fail(
        f'{path}: header is {rows[0][1]}; no partition column besides the id column '
        f'{rows[0][1][id_col]!r}; name it Proposal (or Partition)'
      )
    _once(
      '%s: no Id/Proposal columns by name; id from column %r, partition from column %r',
      path,
      rows[0][1][id_col],
      rows[0][1][part_col],
    )
  if len(rows) == 1:
    _fail(f'{path}: empty partition (header only); list one video per row as Id,Proposal')
  out, where = {}, {}
  for line, r in rows[1:]:
    if len(r) != len(header):
      _fail(f'{path}: line {line} has {len(r)} fields but the header has {len(header)}')
    vid, part = r[id_col].strip(), r[part_col].strip().lower()
    if not vid:
      _fail(f'{path}: line {line}: empty Id')
    if part not in SPLITS:
      _fail(
        f'{path}: line {line}: unknown partition {r[part_col].strip()!r} for video {vid}; '
        f'use one of {", ".join(SPLITS)}'
      )
    if vid in out:
      if out[vid] != part:
        _fail(
          f'{path}: line {line}: video {vid} is listed as {part} but line {where[vid]} lists '
          f'it as {out[vid]}; a video belongs to one partition'
        )
      _once(
        '%s: line %d repeats video %s (%s) from line %d; duplicate dropped',
        path,
        line,
        vid,
        part,
        where[vid],
      )
      continue
    out[vid], where[vid] = part, line
  return {vid: out[vid] for vid in sorted(out, key=natural_key)}


def _feature_files(root: str, name: str) -> list:
  folder = layout.feature_folder(root, name)
  files = sorted(
    (f for f in os.listdir(folder) if f.endswith('.csv') and not f.startswith('.')), key=natural_key
  )
  if not files:
    _fail(f'{folder}: feature folder is empty (no <Id>.csv files); add the files or remove it')
  return files


def feature_dim(root: str, name: str) -> int:
  """Dimension D of a feature set, from the header of its first file (an error if unusable)."""
  return len(set_columns(root, name))


def set_columns(root: str, name: str) -> list:
  """The feature column names of a set: those of its first file (natural id order). Every other
  file must have the same names, in any order (read_video_with_stats)."""
  folder = layout.feature_folder(root, name)
  if not os.path.isdir(folder):
    _fail(f'{folder}: no such feature folder')
  first = os.path.join(folder, _feature_files(root, name)[0])
  return [c for c, _ in _feature_columns(first)]


def _feature_columns(path: str) -> list:
  """[(name, index in the file)] of the feature columns of a feature file's header."""
  columns = read_header(path)
  low = [c.lower() for c in columns]
  if 'timestamp' not in low:
    _fail(
      f"{path}: no 'timestamp' column in the header; feature files start with "
      'timestamp,segment_id followed by the feature columns'
    )
  out = [(c, i) for i, c in enumerate(columns) if c.lower() not in META_COLUMNS]
  if not out:
    _fail(f'{path}: no feature columns besides {", ".join(c for c in columns)}')
  seen = {}
  for c, i in out:
    if c in seen:
      _fail(
        f'{path}: columns {seen[c] + 1} and {i + 1} are both named {c!r}; feature columns are '
        'read by name, so each needs its own'
      )
    seen[c] = i
  return out


def _column_order(path: str, expected: list) -> list:
  """Indices of `expected` (the set's feature names) in this file's columns; errors name the
  first column that differs."""
  have = _feature_columns(path)
  names = [c for c, _ in have]
  if names == expected:
    return [i for _, i in have]
  if len(names) != len(expected):
    _fail(
      f'{path}: {len(names)} feature columns, but this feature set has {len(expected)} (from '
      'its first file); all videos of a feature set need the same columns'
    )
  where = dict(have)
  missing = [c for c in expected if c not in where]
  if missing:
    j = next(j for j, c in enumerate(names) if c not in expected)
    _fail(
      f'{path}: column {have[j][1] + 1} is named {names[j]!r}, which the first file of this '
      f'feature set does not have (it has {missing[0]!r} instead); all files of a feature set '
      'need the same column names (any order)'
    )
  logging.info("%s: feature columns in another order than the set's first file; read by name", path)
  return [where[c] for c in expected]


def feature_column(root: str, name: str, vid: str, j: int) -> tuple:
  """(1-based column number in video vid's file, header name) of the set's feature j."""
  column = set_columns(root, name)[j]
  return dict(_feature_columns(layout.feature_path(root, name, vid)))[column] + 1, column


def discover_feature_sets(root: str) -> dict:
  """{feature set name -> dimension} for every usable folder of the layout's feature folder.

  Never a fixed list: users add their own folders (e.g. vggish, 128-d). An empty or unreadable
  folder is left out with a warning here (it should not block runs on other sets) and is an error
  when it is asked for by name (`feature_dim`).
  """
  base = layout.feature_folder(root)
  if not os.path.isdir(base):
    _fail(f'{base}: feature folder not found; is {root} the root of a MuSe release or task?')
  out = {}
  for name in sorted(os.listdir(base), key=natural_key):
    if name.startswith('.') or not os.path.isdir(os.path.join(base, name)):
      continue
    try:
      out[name] = feature_dim(root, name)
    except MuseError as e:
      logging.warning('feature set %s left out: %s', name, e)
  return out


def check_feature_set(root: str, name: str) -> int:
  """D of a requested feature set; unknown names are an error listing the available ones."""
  if (
    not name
    or name.startswith('.')
    or os.sep in name
    or not os.path.isdir(layout.feature_folder(root, name))
  ):
    available = discover_feature_sets(root)
    _fail(
      f'unknown feature set {name!r}; {layout.feature_folder(root)} holds: '
      f'{", ".join(f"{k} ({d})" for k, d in available.items()) or "none"}; choose from these '
      '(config.feature_sets, or --features)'
    )
  return feature_dim(root, name)


def unlisted_feature_files(root: str, name: str, ids) -> list:
  """Ids with a feature file that partition.csv does not list (they are ignored)."""
  have = {f[:-4] for f in _feature_files(root, name)}
  return sorted(have - set(ids), key=natural_key)


# ------------------------------------------------------------------------------------------------
# One video.


def _read_label(root: str, target: str, vid: str):
  """(timestamp, segment_id, value) of one label file, or None if the file does not exist."""
  path = layout.label_path(root, target, vid)
  if not os.path.exists(path):
    return None
  table = read_table(path)
  low = [c.lower() for c in table.columns]
  extra = [c for c in table.columns if c.lower() not in META_COLUMNS + ('value',)]
  if 'timestamp' not in low or 'value' not in low or extra or len(set(low)) != len(low):
    _fail(
      f'{path}: label columns are {",".join(table.columns)}; expected timestamp, value and '
      'segment_id (any order; segment_id may be missing or be subject_id)'
    )
  value = table.values[:, low.index('value')].astype(np.float32)
  n_inf = _inf_to_nan(value, path)
  n_nan = int(np.isnan(value).sum()) - n_inf
  if n_nan and n_nan < len(value):
    logging.info('%s: %d NaN label values kept as NaN', path, n_nan)
  t = _time_column(table)
  _check_grid(t, path, table.lines)
  return t, _segment_column(table), value


def read_label(root: str, target: str, vid: str):
  """(timestamp, segment_id, value) of a video's label file as training reads it (columns by
  name, Inf as NaN, grid checked), or None when the file does not exist (muse_jax.compare)."""
  return _read_label(root, target, vid)


def grid_step(t: np.ndarray) -> int:
  """The grid a video is on: the smallest step between its timestamps, in ms (0 for fewer than
  two rows). Gaps between segments are whole multiples of it (`_check_grid`)."""
  if len(t) < 2:
    return 0
  d = np.diff(np.asarray(t, np.int64))
  return int(d[d > 0].min()) if (d > 0).any() else 0


def _check_grid(t: np.ndarray, path: str, lines) -> None:
  """Every step a whole multiple of the smallest: one grid, possibly with gaps; anything else
  (jitter, two rates in one file) would be matched to nothing or read at the wrong rate."""
  step = grid_step(t)
  if step:
    d = np.diff(np.asarray(t, np.int64))
    bad = np.flatnonzero(d % step)
    if len(bad):
      steps, counts = np.unique(d, return_counts=True)
      common = int(steps[np.argmax(counts)])  # name the row off the usual step, not its neighbour
      step = common if (d % common).any() else step
      i = int(np.flatnonzero(d % step)[0]) + 1
      _fail(
        f'{path}: line {lines[i]}: timestamp {t[i]} is {d[i - 1]} ms after the row before, '
        f"not a multiple of the file's grid step {step} ms; every row must lie on one grid"
      )


def _align(label_t: np.ndarray, feat_t: np.ndarray, feat_lines: np.ndarray, where: str) -> tuple:
  """Row of the feature file for each label timestamp: (index [T], padded rows, dropped rows)."""
  n = len(label_t)
  idx = np.searchsorted(feat_t, label_t)
  idx_c = np.minimum(idx, len(feat_t) - 1)
  hit = feat_t[idx_c] == label_t
  k = n if hit.all() else int(np.argmin(hit))  # leading run of matched label rows
  if k < n and (hit[k:].any() or k == 0):
    _fail(
      f'{where}: no feature row for label timestamp {label_t[k]} (label row {k + 1} of {n}'
      f'{"; the timestamps do not overlap" if not hit.any() else ""}); '
      'feature rows must cover the label grid'
    )
  missing = n - k
  if missing > PAD_TOLERANCE_ROWS:
    _fail(
      f'{where}: feature file ends at timestamp {feat_t[-1]}, {missing} label rows before the '
      f'labels do (first missing timestamp {label_t[k]}; at most {PAD_TOLERANCE_ROWS} can be '
      'padded); the feature file looks truncated'
    )
  inside = (feat_t >= label_t[0]) & (feat_t <= label_t[-1])
  used = np.zeros(len(feat_t), bool)
  used[idx[:k]] = True
  step = grid_step(label_t)
  # Rows on the label grid inside a gap of the labels (unlabelled stretches) are dropped.
  off_grid = inside & ~used & (((feat_t - label_t[0]) % step != 0) if step else True)
  if off_grid.any():
    i = int(np.argmax(off_grid))
    _fail(
      f'{where}: line {feat_lines[i]}: timestamp {feat_t[i]} is not on the label grid; '
      'feature rows inside the labelled span must match label timestamps'
    )
  if missing:
    idx = np.concatenate([idx[:k], np.full(missing, idx[k - 1])])
  dropped = int(len(feat_t) - used.sum())
  return idx, missing, dropped


def read_video_with_stats(
  root: str,
  feature_set: str,
  vid: str,
  partition: str | None = None,
  columns: list | None = None,
  targets=None,
) -> tuple:
  """`read_video` plus a dict of what the policies did (nan/inf cells, zero rows, padding...)."""
  fpath = layout.feature_path(root, feature_set, vid)
  if not os.path.exists(fpath):
    _fail(
      f'{fpath}: feature file missing for video {vid}, which metadata/partition.csv lists; '
      'add it or remove the video from the partition file'
    )
  targets = layout.of(root).targets() if targets is None else tuple(targets)
  labels = {t: _read_label(root, t, vid) for t in targets}
  withheld = {}  # label files holding only NaN: no labels, but their grid is the video's
  for t, lab in labels.items():
    if lab is not None and len(lab[2]) and not np.isfinite(lab[2]).any():
      withheld[t], labels[t] = lab, None  # MuSe 2021 physio ships withheld test labels so
  if withheld:
    _once(
      '%s: label files that hold only NaN are read as withheld (no labels, their grid kept)',
      layout.of(root).label_folder(),
    )
  missing = [t for t in targets if labels[t] is None]
  present = [t for t in targets if labels[t] is not None]
  if missing and not present and partition in ('train', 'devel'):
    _fail(
      f'{layout.label_path(root, missing[0], vid)}: label file '
      f'{"holds only NaN" if missing[0] in withheld else "missing"} for {partition} video '
      f'{vid}; only test videos may come without labels'
    )
  for other in present[1:]:
    (ta, sa, _), (tv, sv, _) = labels[present[0]], labels[other]
    if len(ta) != len(tv) or (ta != tv).any() or (sa != sv).any():
      n = min(len(ta), len(tv))
      diff = np.flatnonzero((ta[:n] != tv[:n]) | (sa[:n] != sv[:n]))
      i = int(diff[0]) if len(diff) else n
      what = (
        f'row {i + 1}: timestamp/segment_id {ta[i]}/{sa[i]} vs {tv[i]}/{sv[i]}'
        if i < n
        else f'lengths {len(ta)} vs {len(tv)} rows'
      )
      _fail(
        f'{layout.label_path(root, other, vid)}: the {present[0]} and {other} grids of video '
        f'{vid} disagree ({what}); all label files of a video must share timestamps'
      )

  columns = set_columns(root, feature_set) if columns is None else columns
  idx_cols = _column_order(fpath, columns)
  table = read_table(fpath)
  if sum(c.lower() not in META_COLUMNS for c in table.columns) != len(columns):
    _fail(f'{fpath}: header changed while reading; re-run')
  feat_t = _time_column(table)
  x = table.values[:, idx_cols].astype(np.float32)
  stats = dict(
    videos=1,
    frames=0,
    nan_cells=0,
    inf_cells=0,
    zero_rows=0,
    padded_rows=0,
    dropped_rows=0,
    unlabelled=int(not present),
    partly_labelled=int(bool(missing and present)),
  )
  grid = labels[present[0]] if present else next(iter(withheld.values()), None)
  if grid is not None:
    t, seg, _ = grid
    where = f'{fpath}: video {vid}, feature set {feature_set}'
    idx, padded, dropped = _align(t, feat_t, table.lines, where)
    if dropped:
      logging.info(
        '%s: %d feature rows outside the label grid (%d..%d ms) dropped',
        fpath,
        dropped,
        t[0],
        t[-1],
      )
    if padded:
      logging.warning(
        '%s: ends %d rows before the labels; last row repeated to fill', fpath, padded
      )
    x = x[idx]
    stats.update(padded_rows=padded, dropped_rows=dropped)
  else:
    t, seg = feat_t, _segment_column(table)
    _check_grid(t, fpath, table.lines)
  stats['inf_cells'] = _inf_to_nan(x, fpath)
  stats['nan_cells'] = int(np.isnan(x).sum()) - stats['inf_cells']
  stats['zero_rows'] = int((x == 0).all(axis=1).sum())
  stats['frames'] = len(t)
  stats['step_ms'] = grid_step(t)
  # Per file only in the stats: the build logs one line per set (muse_car.summary_lines).
  stats.update(nan_files=int(stats['nan_cells'] > 0), zero_row_files=int(stats['zero_rows'] > 0))
  nan = np.full(len(t), np.nan, np.float32)
  y = (
    np.stack([labels[k][2] if labels[k] is not None else nan for k in targets], axis=1)
    if targets
    else np.zeros((len(t), 0), np.float32)
  )
  video = Video(
    vid,
    np.asarray(t, np.int64),
    np.asarray(seg, np.int32),
    np.ascontiguousarray(x, np.float32),
    y,
    targets,
    tuple(labels[k] is not None for k in targets),
  )
  return video, stats


def read_video(root: str, feature_set: str, vid: str, *args, **options) -> Video:
  """One video on its label grid: features [T, D] of the set, labels [T, K] of every target
  of the layout (or `targets`)
  (NaN and `labelled` False without a label file). With
  `partition` 'train'/'devel', missing label files are an error. Feature columns are matched by
  name to `columns` (default: the set's first file, `set_columns`) and returned in that order.
  Further arguments: partition, columns, targets, as `read_video_with_stats` takes them.
  """
  return read_video_with_stats(root, feature_set, vid, *args, **options)[0]
