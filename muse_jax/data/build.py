"""Builds the tfds dataset of a MuSe tree once, rebuilds it when the tree changes, loads it fast.

Every training run calls `ensure_built(root, data_dir, sets)` then reads each set video by video
(`FeatureSet`) or whole (`load_feature_set`): parsing thousands of CSVs happens once per tree, not
once per run.

  python -m muse_jax.data.build --root ROOT --data_dir DIR [--task T] [--features a,b]

`root` is the folder holding metadata/ (a layout root, `layout.resolve`); `data_dir` the folder
of that task's builds (`layout.task_data_dir`: a task's builds in `<data_dir>/<task>/`, the 2020
release's directly in `<data_dir>`, so tasks with same-named feature sets never share a build).

Staleness: beside each build (`<data_dir>/muse_car/<set>/<version>/muse_build.json`) we keep a
fingerprint of its sources: the absolute root, and path, size and mtime of partition.csv, every
label file of every target and every file of that feature folder. A different fingerprint (a file
edited, added or removed, another root, a newer reader policy) rebuilds that set, with a log line
saying why.
Other sets' sources are not part of it, so adding a feature folder never rebuilds the others.

The same file holds the build's record index (`records`: split -> [[id, rows], ...] in record
order): tfds stores videos in its own order, so reading one video by id needs it.

One format: a build is a cache of the tree, so one of another version (another reader policy, or
a `muse_build.json` without a field this version writes, `INFO_FIELDS`) is stale like an edited
tree and rebuilt by `ensure_built`; `FeatureSet` never reads one with defaults.
"""

import concurrent.futures
import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import time

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from muse_jax import console
from muse_jax import files
from muse_jax.data import layout
from muse_jax.data import muse_car
from muse_jax.data import reader
from muse_jax.data.video import Video
from muse_jax.errors import MuseError

try:
  import fcntl
except ImportError:  # not POSIX: builds are not locked
  fcntl = None

FINGERPRINT_FILE = 'muse_build.json'
# Bump when the reader policies or the storage format change: older builds are then rebuilt.
POLICY_VERSION = 4  # 3: feature columns matched by name; 4: any layout, targets and grid step
# What `_build` writes into muse_build.json: the fingerprint, then what the build found.
INFO_FIELDS = (
  'root',
  'feature_set',
  'policy',
  'layout',
  'task',
  'targets',
  'files',
  'digest',
  'built_s',
  'dim',
  'stats',
  'records',
  'columns',
  'step_ms',
)
_READ_THREADS = max(1, min(4, os.cpu_count() or 1))


def builder_dir(data_dir: str, name: str) -> str:
  return os.path.join(
    os.path.abspath(os.path.expanduser(data_dir)), muse_car.NAME, name, muse_car.VERSION
  )


def _names(feature_sets) -> list:
  return list(dict.fromkeys(layout.parse_list(feature_sets)))


def _listing(root: str, rel: str) -> list:
  folder = os.path.join(root, rel)
  if not os.path.isdir(folder):
    return []
  out = []
  with os.scandir(folder) as it:
    for e in it:
      if e.name.endswith('.csv') and e.is_file():
        st = e.stat()
        out.append([os.path.join(rel, e.name), st.st_size, st.st_mtime_ns])
  return sorted(out)


def fingerprint(root: str, name: str) -> dict:
  """What a build of `name` depends on; cheap (stat calls only)."""
  lay = layout.of(root)
  root = lay.root
  part = os.path.relpath(lay.partition_path, root)  # ../metadata/partition.csv: c3_muse_trust
  files = [f for f in _listing(root, os.path.dirname(part)) if f[0] == part]
  targets = lay.targets()
  for t in targets:
    files += _listing(root, os.path.relpath(lay.label_folder(t), root))
  files += _listing(root, os.path.relpath(lay.feature_folder(name), root))
  blob = json.dumps(
    [root, name, POLICY_VERSION, muse_car.VERSION, lay.kind, targets, files]
  ).encode()
  return {
    'root': root,
    'feature_set': name,
    'policy': POLICY_VERSION,
    'layout': lay.kind,
    'task': lay.task,
    'targets': list(targets),
    'files': files,
    'digest': hashlib.sha256(blob).hexdigest(),
  }


def _missing(info: dict) -> str | None:
  """The first field of INFO_FIELDS a build's info lacks (None: this version's format)."""
  return next((k for k in INFO_FIELDS if k not in info), None)


def _why_stale(old: dict, new: dict) -> str:
  if _missing(old):
    return f'written by another version of muse_jax (no {_missing(old)})'
  if old['root'] != new['root']:
    return f'built from another root ({old["root"]})'
  if old['policy'] != new['policy']:
    return f'built by reader policy {old["policy"]}, now {new["policy"]}'
  before = {f[0]: f[1:] for f in old['files']}
  after = {f[0]: f[1:] for f in new['files']}
  changed = sorted(set(before) ^ set(after)) + sorted(
    k for k in set(before) & set(after) if before[k] != after[k]
  )
  if changed:
    return f'{len(changed)} source files changed, added or removed (e.g. {changed[0]})'
  return 'sources changed'


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _build(root: str, data_dir: str, name: str, dim: int, fp: dict) -> dict:
  tfds.disable_progress_bar()
  builder = muse_car.MuseCar(
    config=muse_car.config_for(name, dim, fp['targets']),
    data_dir=data_dir,
    file_format='array_record',
  )
  t0 = time.time()
  try:
    with muse_car.uncompressed_writes(), muse_car.shuffle_buckets_without_tensorflow():
      # Offline by construction: the sources are the tree (manual_dir); never ask tfds' bucket
      # for a prepared copy (try_download_gcs), whatever a tfds version defaults to.
      builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=root, try_download_gcs=False)
      )
  except Exception:  # noqa: BLE001
    if builder.error is not None:  # tfds rewraps and prefixes exceptions; give the user ours
      raise MuseError(builder.error) from None
    raise
  path = builder_dir(data_dir, name)
  records = record_index(tfds.builder_from_directory(path).as_data_source())
  steps = {int(k): v for k, v in builder.steps.items()}
  info = dict(
    fp,
    built_s=round(time.time() - t0, 3),
    dim=dim,
    stats=builder.stats,
    records=records,
    columns=builder.columns,
    step_ms=next(iter(steps)) if steps else 0,
  )
  assert set(info) == set(INFO_FIELDS), sorted(info)  # what FeatureSet and _up_to_date require
  files.atomic_write(os.path.join(path, FINGERPRINT_FILE), json.dumps(info))
  logging.info(
    'built %s (%d-d) from %s (%s, targets %s, %s ms grid) in %.1f s: %s',
    name,
    dim,
    root,
    fp['layout'],
    ','.join(fp['targets']) or 'none',
    info['step_ms'] or '?',
    info['built_s'],
    {s: v.get('videos', 0) for s, v in builder.stats.items()},
  )
  for line in muse_car.summary_lines(name, builder.stats):
    logging.info('%s', line)
  return info


@contextlib.contextmanager
def _lock(data_dir: str, name: str):
  base = os.path.join(data_dir, muse_car.NAME)
  try:
    os.makedirs(base, exist_ok=True)
    f = open(os.path.join(base, f'.{name}.lock'), 'w')
  except OSError as e:
    raise MuseError(
      f'{data_dir}: cannot build feature set {name} there ({e.strerror}); point '
      '--data_dir at a writable folder'
    ) from None
  with f:
    if fcntl is not None:
      fcntl.flock(f, fcntl.LOCK_EX)
    yield


def _up_to_date(path: str, fp: dict) -> tuple:
  """(whether the build in `path` matches fingerprint `fp` and is of this version's format, its
  stored info or None)."""
  old = _read_json(os.path.join(path, FINGERPRINT_FILE))
  done = os.path.exists(os.path.join(path, 'dataset_info.json'))
  return bool(done and old and not _missing(old) and old['digest'] == fp['digest']), old


def ensure_built(root: str, data_dir: str, feature_sets) -> None:
  """Builds every missing or stale feature set of `root` into `data_dir`.

  `feature_sets`: list or comma string of feature folder names. Unknown names are a
  MuseError listing the available ones; so is any problem in the sources (see reader.py). An
  up-to-date build is only read: the lock is taken to build, so a read-only data_dir works.
  """
  root = os.path.abspath(os.path.expanduser(root))
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  names = _names(feature_sets)
  if not names:
    raise MuseError(
      f'no feature set requested; {root} has: ' + ', '.join(reader.discover_feature_sets(root))
    )
  reader.read_partition(root)  # fail early on a missing/broken partition file
  dims = {name: reader.check_feature_set(root, name) for name in names}
  for name in names:
    path = builder_dir(data_dir, name)
    if _up_to_date(path, fingerprint(root, name))[0]:
      logging.info('%s: up to date in %s', name, path)
      continue
    with _lock(data_dir, name):  # two runs starting at once build a set once
      fp = fingerprint(root, name)
      done, old = _up_to_date(path, fp)
      if done:  # the other run built it while this one waited
        continue
      if os.path.exists(path):
        why = _why_stale(old, fp) if old else 'no fingerprint (interrupted or foreign build)'
        logging.warning('%s: stale build in %s (%s); rebuilding', name, path, why)
        shutil.rmtree(path)
      _build(root, data_dir, name, dims[name], fp)


def build_info(data_dir: str, name: str) -> dict:
  """The fingerprint and policy counts stored beside a build (None if absent)."""
  return _read_json(os.path.join(builder_dir(data_dir, name), FINGERPRINT_FILE))


def built_feature_sets(data_dir: str) -> list:
  base = os.path.join(os.path.abspath(os.path.expanduser(data_dir)), muse_car.NAME)
  if not os.path.isdir(base):
    return []
  return sorted(
    (
      n
      for n in os.listdir(base)
      if os.path.exists(os.path.join(base, n, muse_car.VERSION, 'dataset_info.json'))
    ),
    key=reader.natural_key,
  )


def _id(ex) -> str:
  vid = ex['id']
  return vid.decode() if isinstance(vid, bytes) else str(vid)


def video_of(ex, targets) -> Video:
  """A stored example as the reader's Video (`muse_car.example` reversed)."""
  t = np.asarray(ex['timestamp'], np.int64)
  if np.asarray(ex['has_labels']).size != len(targets):
    raise MuseError(
      f'stored video {_id(ex)} has {np.asarray(ex["has_labels"]).size} targets, '
      f"its build's {FINGERPRINT_FILE} names {len(targets)}; delete the build to "
      'redo it'
    )
  return Video(
    _id(ex),
    t,
    np.asarray(ex['segment_id'], np.int32),
    np.asarray(ex['features'], np.float32),
    np.asarray(ex['labels'], np.float32).reshape(len(t), len(targets)),
    tuple(targets),
    tuple(bool(h) for h in np.asarray(ex['has_labels']).reshape(len(targets))),
  )


def record_index(sources) -> dict:
  """{split: [[id, rows], ...]} in record order: one pass, one record in memory at a time."""
  out = {}
  for split, src in sources.items():
    out[split] = []
    for i in range(len(src)):
      ex = src[i]
      out[split].append([_id(ex), len(ex['timestamp'])])
  return out


def _positions(records, sizes: dict):
  """{split: {id: (record number, rows)}} from a record index; None if it does not fit `sizes`."""
  try:
    where = {
      split: {str(vid): (i, int(rows)) for i, (vid, rows) in enumerate(recs)}
      for split, recs in records.items()
    }
  except (AttributeError, TypeError, ValueError):
    return None
  return where if {s: len(w) for s, w in where.items()} == sizes else None


class FeatureSet:
  """A built feature set, read one video at a time (for sets too large to hold at once).

  `ids(split)`: video ids in natural order; `rows(split, id)`: its frame count; `dim`: columns;
  `read(split, id)`: its `Video` (as `reader.read_video` made it). Works in a fresh
  process: the builder is restored from its directory, the config need not be declared.
  """

  def __init__(self, data_dir: str, name: str):
    self.name, self.path = name, builder_dir(data_dir, name)
    if not os.path.exists(os.path.join(self.path, 'dataset_info.json')):
      built = built_feature_sets(data_dir)
      raise MuseError(
        f'{self.path}: feature set {name!r} is not built (built: '
        f'{", ".join(built) or "none"}); run python -m muse_jax.data.build --root '
        f'ROOT --data_dir {data_dir} --features {name}'
      )
    info = build_info(data_dir, name)
    if info is None or _missing(info):  # ensure_built rebuilds such a build; never read here
      why = (
        f'no readable {FINGERPRINT_FILE} (an interrupted or foreign build)'
        if info is None
        else f'written by another version of muse_jax (no {_missing(info)} in {FINGERPRINT_FILE})'
      )
      raise MuseError(
        f'{self.path}: {why}; rebuild it: python -m muse_jax.data.build --root '
        f'ROOT --data_dir {data_dir} --features {name}'
      )
    builder = tfds.builder_from_directory(self.path)
    self.dim = int(builder.info.features['features'].shape[1])
    self._sources = builder.as_data_source()
    self.targets = tuple(info['targets'])
    self.step_ms = int(info['step_ms'])  # the label grid's step (0: no video long enough to tell)
    sizes = {split: len(src) for split, src in self._sources.items()}
    self._where = _positions(info['records'], sizes)
    if self._where is None:
      raise MuseError(
        f'{self.path}/{FINGERPRINT_FILE}: its record index does not match the data; '
        f'delete {self.path} to rebuild it'
      )

  def ids(self, split: str) -> list:
    """Video ids of `split` in natural order ([] for a split without videos)."""
    return sorted(self._where.get(split, {}), key=reader.natural_key)

  def rows(self, split: str, vid: str) -> int:
    return self._where[split][vid][1]

  def read(self, split: str, vid: str) -> Video:
    v = video_of(self._sources[split][self._where[split][vid][0]], self.targets)
    if v.id != vid or len(v.timestamp) != self.rows(split, vid):
      raise MuseError(
        f'{self.path}/{FINGERPRINT_FILE}: its record index does not match the data '
        f'({split} video {vid}); delete {self.path} to rebuild it'
      )
    return v


def load_feature_set(data_dir: str, name: str) -> dict:
  """{split -> [Video]} of a built set, videos in natural id order; splits with no videos map
  to []."""
  fs = FeatureSet(data_dir, name)
  # Reads overlap with decoding in a few threads (array_record releases the GIL).
  with concurrent.futures.ThreadPoolExecutor(_READ_THREADS) as pool:
    return {
      split: list(pool.map(functools.partial(fs.read, split), fs.ids(split)))
      for split in layout.SPLITS
    }


def main(argv=None) -> int:
  # argparse, not absl flags: this module is imported by the training code, which has its own.
  ap = console.ArgumentParser(
    prog='python -m muse_jax.data.build', description=__doc__.split('\n')[0]
  )
  ap.add_argument(
    '--root',
    type=console.path,
    required=True,
    help='release root or task folder (docs/data_format.md: every MuSe layout)',
  )
  ap.add_argument('--task', default='', help='the task, when the root holds several')
  ap.add_argument(
    '--data_dir', type=console.path, required=True, help='tfds data_dir to build into'
  )
  ap.add_argument(
    '--features', default='', help='comma list of feature sets (default: every folder in the tree)'
  )
  args = ap.parse_args(argv)
  logging.set_verbosity(logging.INFO)

  def build_all():
    lay = layout.resolve(args.root, args.task)
    data_dir = layout.task_data_dir(args.data_dir, lay)
    names = _names(args.features) or list(reader.discover_feature_sets(lay.root))
    ensure_built(lay.root, data_dir, names)
    return names, data_dir

  rc, out = console.call(build_all)  # one `error:` line for bad data or a full disk
  if rc:
    return rc
  names, data_dir = out
  for name in names:
    info = build_info(data_dir, name) or {}
    stats = info.get('stats', {})
    print(
      f'{name} ({info.get("dim")}-d): '
      + ', '.join(
        f'{s} {v.get("videos", 0)} videos / {v.get("frames", 0)} frames' for s, v in stats.items()
      )
      + f', {info.get("step_ms")} ms grid, targets '
      f'{",".join(info.get("targets", [])) or "none"} -> {builder_dir(data_dir, name)}'
    )
  return 0


if __name__ == '__main__':
  sys.exit(main())
