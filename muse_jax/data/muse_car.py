"""tfds builder `muse_car`: one example per video of a MuSe-family tree (any `layout.py` layout).

The releases are under an EULA, so nothing is downloaded: the layout's root (the folder holding
metadata/) is the manual dir (`tfds.download.DownloadConfig(manual_dir=root)`). There is one
builder config per feature set, named after its folder and discovered from the tree
(`config_for`), so a user's own folder (e.g. vggish, 128-d) works without code changes and adding
a set never rebuilds the others; tasks build under their own folder (`build.builder_dir`). Every
target of the tree is stored (`labels` [T, K], names in the config), so one build serves runs on
any of them.
Parsing and the policies for the quirks of real data live in `reader.py`. Use `build.py`
(`ensure_built`, `load_feature_set`) rather than this module directly.
"""

import contextlib
import dataclasses
import errno
import importlib.util
import os
import types

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

try:
  import resource
except ImportError:  # not POSIX
  resource = None
try:
  from tensorflow_datasets.core import shuffle as _tfds_shuffle
except ImportError:  # moved in another tfds version: see shuffle_buckets_without_tensorflow
  _tfds_shuffle = None

from muse_jax.data import layout
from muse_jax.data import reader
from muse_jax.errors import MuseError

NAME = 'muse_car'
VERSION = '1.0.0'


@dataclasses.dataclass(eq=False)
class MuseCarConfig(tfds.core.BuilderConfig):
  """One feature set: its folder name, dimension D and the tree's targets (label folders)."""

  dim: int = 0
  targets: tuple = ()


class _UncompressedArrayRecord(tfds.core.file_adapters.ArrayRecordFileAdapter):
  """ArrayRecord without tfds' default brotli: float features barely compress (~20%), and
  decompression dominated every run's load time (benchmarks/RESULTS.md)."""

  @classmethod
  def write_examples(cls, path, iterator):
    from array_record.python import array_record_module  # noqa: PLC0415  (only when building)

    writer = array_record_module.ArrayRecordWriter(os.fspath(path), 'group_size:1,uncompressed')
    for _, serialized_example in iterator:
      writer.write(serialized_example)
    writer.close()


@contextlib.contextmanager
def uncompressed_writes():
  """Makes tfds write array_record files uncompressed while building (readers need no change).

  tfds has no option for it, so its adapter table is patched for the duration; should that
  internal ever move, builds fall back to tfds' default compression (slower, same data).
  """
  table = getattr(tfds.core.file_adapters, 'ADAPTER_FOR_FORMAT', None)
  key = tfds.core.file_adapters.FileFormat.ARRAY_RECORD
  if not isinstance(table, dict) or key not in table:
    yield
    return
  old = table[key]
  table[key] = _UncompressedArrayRecord
  try:
    yield
  finally:
    table[key] = old


class _LocalGfile:
  """The part of tf.io.gfile that tfds' shuffler uses, on local files."""

  @staticmethod
  def GFile(path, mode):
    try:
      return open(path, mode)
    except OSError as e:  # 1000 bucket files are open at once: raise the soft limit, once
      if e.errno != errno.EMFILE or resource is None:
        raise
      _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
      resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
      return open(path, mode)

  exists = staticmethod(os.path.exists)
  remove = staticmethod(os.remove)


class _NeverRaised(Exception):
  pass


@contextlib.contextmanager
def shuffle_buckets_without_tensorflow():
  """Lets tfds build splits over 1 GB without TensorFlow installed.

  tfds' writer keeps a split's examples in memory up to 1 GB, then moves them to temporary
  bucket files through tf.io.gfile: without TensorFlow a large set (e.g. deepspectrum, 4096-d)
  could not be built. While building, the shuffler's `tf` is a local-file stand-in; should that
  internal move, nothing is patched (large builds then need TensorFlow, as before).
  """
  shuffle = _tfds_shuffle
  if shuffle is None or not hasattr(shuffle, 'tf') or importlib.util.find_spec('tensorflow'):
    yield
    return
  old = shuffle.tf
  shuffle.tf = types.SimpleNamespace(
    io=types.SimpleNamespace(gfile=_LocalGfile),
    errors=types.SimpleNamespace(ResourceExhaustedError=_NeverRaised),
  )
  try:
    yield
  finally:
    shuffle.tf = old


def config_for(name: str, dim: int, targets=()) -> MuseCarConfig:
  return MuseCarConfig(
    name=name,
    dim=dim,
    targets=tuple(targets),
    version=VERSION,
    description=f'label-aligned feature set {name} ({dim}-d), targets '
    f'{", ".join(targets) or "none"}',
  )


def _array(shape, dtype):
  # Raw bytes: serialising [T, D] floats as a proto float_list took ~70% of a full build.
  return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)


class _LocalInfo(tfds.core.DatasetInfo):
  """DatasetInfo that never looks in tfds' public bucket: these datasets are built from the
  user's tree, are never hosted there, and a build must work offline (a tfds version or setting
  with the bucket on would ask it for precomputed metadata when a builder is made)."""

  def initialize_from_bucket(self) -> None:
    pass


class MuseCar(tfds.core.GeneratorBasedBuilder):
  """Videos on their label grid: features [T, D], labels [T, K] of every target (NaN if absent)."""

  VERSION = tfds.core.Version(VERSION)
  BUILDER_CONFIGS = []  # discovered from the tree: pass config=config_for(name, dim)
  # tfds derives this from the package via importlib_resources (not installed, not needed).
  code_path = epath.Path(__file__)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'The MuSe data is released under an EULA. Set manual_dir to the root of your copy: the '
    'folder holding metadata/partition.csv (docs/data_format.md).'
  )

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.error = None  # message of the MuseError of a failed build (tfds rewraps exceptions)
    self.stats = {}  # per split: what the reader policies did, summed over videos
    self.columns = []  # the set's feature column names, in stored order
    self.steps = {}  # grid step (ms) -> [number of videos, first such video]

  # tfds prints 'Downloading and preparing dataset Unknown size ...' to stdout around every
  # build; build.py logs one line per build instead.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo(builder=self, ...) rather than dataset_info_from_configs: no metadata files
    # next to this module, and no TensorFlow needed.
    return _LocalInfo(
      builder=self,
      description='MuSe-family continuous per-frame labels ('
      + (', '.join(self.builder_config.targets) or 'none')
      + ') on the label grid.',
      features=tfds.features.FeaturesDict(
        {
          'id': tfds.features.Text(),
          'timestamp': _array((None,), np.int64),
          'segment_id': _array((None,), np.int32),
          'features': _array((None, self.builder_config.dim), np.float32),
          # [T * K] and [K], flat: tfds cannot decode a zero-width [T, 0] (no label folders).
          'labels': _array((None,), np.float32),
          'has_labels': _array((None,), np.bool_),
        }
      ),
      homepage='https://www.muse-challenge.org/',
    )

  def _split_generators(self, dl_manager):
    root = str(dl_manager.manual_dir)
    name = self.builder_config.name
    try:
      partition = reader.read_partition(root)
      reader.check_feature_set(root, name)
      self.columns = reader.set_columns(root, name)
      extra = reader.unlisted_feature_files(root, name, partition)
    except MuseError as e:
      self.error = str(e)
      raise
    if extra:
      logging.info(
        '%s: %d feature files of videos not in partition.csv ignored (e.g. %s)',
        name,
        len(extra),
        ', '.join(extra[:5]),
      )
    splits = {}
    for split in layout.SPLITS:
      ids = [v for v, p in partition.items() if p == split]
      if not ids:  # tfds cannot write an empty split: leave it out, load_feature_set gives []
        logging.warning('%s: partition.csv lists no %s videos; no %s split', root, split, split)
        continue
      splits[split] = self._generate_examples(root, name, split, ids)
    return splits

  def _generate_examples(self, root, name, split, ids):
    total = self.stats.setdefault(split, {})
    for vid in ids:
      try:
        video, stats = reader.read_video_with_stats(
          root, name, vid, split, self.columns, self.builder_config.targets
        )
      except MuseError as e:
        self.error = str(e)
        raise
      step = stats.pop('step_ms')
      if step and self.steps and step not in self.steps:
        other, (_, first) = next(iter(self.steps.items()))
        self.error = (
          f'{layout.feature_path(root, name, vid)}: video {vid} is on a {step} ms '
          f'grid but video {first} (and others) on {other} ms; every video of a tree '
          'needs the same grid step (resample the odd ones)'
        )
        raise MuseError(self.error)
      if step:
        self.steps.setdefault(step, [0, vid])[0] += 1
      for k, v in stats.items():
        total[k] = total.get(k, 0) + v
      yield vid, example(video)


def example(video) -> dict:
  """A reader Video as a tfds example (`build.video_of` reverses it)."""
  return {
    'id': video.id,
    'timestamp': video.timestamp,
    'segment_id': video.segment_id,
    'features': video.x,
    'labels': np.asarray(video.y, np.float32).reshape(-1),
    'has_labels': np.asarray(video.labelled, np.bool_).reshape(-1),
  }


def summary_lines(name: str, stats: dict) -> list:
  """One line per policy that touched a set, summed over its files (not one line per file)."""
  total = {
    k: sum(s.get(k, 0) for s in stats.values())
    for k in ('zero_rows', 'zero_row_files', 'nan_cells', 'nan_files')
  }
  lines = []
  if total['zero_rows']:
    lines.append(
      f'{name}: {total["zero_rows"]} zero-vector rows (e.g. no face found) kept, in '
      f'{total["zero_row_files"]} files'
    )
  if total['nan_cells']:
    lines.append(
      f'{name}: {total["nan_cells"]} NaN cells kept as NaN (config.nan_policy decides), '
      f'in {total["nan_files"]} files'
    )
  for split, s in stats.items():
    if s.get('unlabelled'):
      lines.append(
        f'{name}: {s["unlabelled"]} {split} videos have no label files; kept with NaN '
        'labels (no metrics for them)'
      )
    if s.get('partly_labelled'):
      lines.append(
        f'{name}: {s["partly_labelled"]} {split} videos lack the label files of some '
        'targets; kept, those targets marked unlabelled (runs on them refuse '
        'train/devel videos without them)'
      )
  return lines
