"""Where a release keeps what: the MuSe family of layouts, detected from the tree
(docs/data_format.md).

Every layout has `metadata/partition.csv` at its root and one CSV per video and feature set or
target; they differ in where the feature and label folders are and in the label columns' order:

  muse2020  MuSe-Wild 2020 (MuSe-CaR): <root>/metadata/partition.csv,
            <root>/c1_muse_wild/feature_segments/label_aligned/<set>/<Id>.csv,
            <root>/c1_muse_wild/label_segments/<target>/<Id>.csv  (timestamp,value,segment_id)
  muse2020_task  another continuous task of the 2020 release, beside c1_muse_wild in the same
            root (c3_muse_trust: arousal, valence, trustworthiness): the same shape under
            <root>/<task>/, and the release's <root>/metadata/partition.csv. Its layout root is
            the task folder (so every path and build of it is its own); the partition file is
            one level up.
  muse2021  a task folder of MuSe 2021 (c1_muse_wilder, c3_muse_stress, c4_muse_physio) or 2022
            (c3_muse_stress_2022): <task>/metadata/partition.csv, <task>/feature_segments/<set>/,
            <task>/label_segments/<target>/  (timestamp,segment_id,value)
  plain     any other per-frame corpus: <root>/metadata/partition.csv, <root>/features/<set>/,
            <root>/labels/<target>/  (timestamp,segment_id,value)

A release root may hold several tasks (the 2021 release is <root>/<task>/...; the 2020 one holds
c1_muse_wild and c3_muse_trust): `resolve` picks the one asked for, or the only one; a 2020 root
means the paper's task, c1_muse_wild, unless config.task names another (logged when it holds
others). Targets are the label folders found; the grid step is read from
the label timestamps (reader.grid_step), never assumed. Everything that names a path, a partition
or a target asks the `Layout` of its root (`of(root)`).
"""

import dataclasses
import os
import re

from absl import logging

from muse_jax.errors import MuseError

PARTITION_CSV = os.path.join('metadata', 'partition.csv')
SPLITS = ('train', 'devel', 'test')
SEGMENT_ID = 'segment_id'  # the column of every file, and the input name of its values
DEFAULT_STEP_MS = 250  # the grid of the extraction tools when nothing else tells (MuSe-CaR)

TASK_2020 = 'c1_muse_wild'
# Folders of the 2020 release that are no per-frame regression task (topic classes per segment).
NOT_CONTINUOUS_2020 = ('c2_muse_topic',)
LABEL_ALIGNED = os.path.join('feature_segments', 'label_aligned')
COLUMNS_2020 = ('timestamp', 'value', 'segment_id')
COLUMNS_2021 = ('timestamp', 'segment_id', 'value')


@dataclasses.dataclass(frozen=True)
class Kind:
  name: str
  feature_dir: str  # relative to the layout's root
  label_dir: str
  label_columns: tuple  # the release's column order (predictions are written in it)
  describe: str


KINDS = {
  'muse2020': Kind(
    'muse2020',
    os.path.join(TASK_2020, 'feature_segments', 'label_aligned'),
    os.path.join(TASK_2020, 'label_segments'),
    COLUMNS_2020,
    'MuSe 2020 release root (metadata/, c1_muse_wild/feature_segments/'
    'label_aligned/, c1_muse_wild/label_segments/)',
  ),
  'muse2020_task': Kind(
    'muse2020_task',
    LABEL_ALIGNED,
    'label_segments',
    COLUMNS_2020,
    'task folder of a MuSe 2020 release beside c1_muse_wild (e.g. '
    'c3_muse_trust: feature_segments/label_aligned/, label_segments/; the '
    "partition file is the release root's metadata/partition.csv)",
  ),
  'muse2021': Kind(
    'muse2021',
    'feature_segments',
    'label_segments',
    COLUMNS_2021,
    'MuSe 2021/2022 task folder (metadata/, feature_segments/, label_segments/)',
  ),
  'plain': Kind(
    'plain', 'features', 'labels', COLUMNS_2021, 'plain layout (metadata/, features/, labels/)'
  ),
}


def natural_key(s: str):
  """Sort key putting '2' before '10' (numeric order for numeric ids, sane order otherwise)."""
  return tuple((0, int(t), '') if t.isdigit() else (1, 0, t) for t in re.split(r'(\d+)', s) if t)


def parse_list(value) -> list:
  """Tuple/list/comma string config fields -> list of names (feature sets, targets, runs). Here,
  not in config_util, because the data tools' own --features take the same lists."""
  if isinstance(value, str):
    value = (value,)
  out = []
  for v in value:
    out += [s.strip() for s in str(v).split(',') if s.strip()]
  return out


@dataclasses.dataclass(frozen=True)
class Layout:
  kind: str  # a key of KINDS
  root: str  # absolute: the folder holding metadata/partition.csv
  task: str  # c1_muse_wild, c3_muse_stress, ...; for plain, the root folder's name

  @property
  def spec(self) -> Kind:
    return KINDS[self.kind]

  @property
  def label_columns(self) -> tuple:
    return self.spec.label_columns

  @property
  def partition_path(self) -> str:
    if self.kind == 'muse2020_task':  # the release's one file, beside the task folders
      return os.path.join(os.path.dirname(self.root), PARTITION_CSV)
    return os.path.join(self.root, PARTITION_CSV)

  def feature_folder(self, feature_set: str = '') -> str:
    base = os.path.join(self.root, self.spec.feature_dir)
    return os.path.join(base, feature_set) if feature_set else base

  def label_folder(self, target: str = '') -> str:
    base = os.path.join(self.root, self.spec.label_dir)
    return os.path.join(base, target) if target else base

  def feature_path(self, feature_set: str, vid: str) -> str:
    return os.path.join(self.feature_folder(feature_set), f'{vid}.csv')

  def label_path(self, target: str, vid: str) -> str:
    return os.path.join(self.label_folder(target), f'{vid}.csv')

  def targets(self) -> tuple:
    """Every label folder holding at least one CSV, in natural order (any name is a target)."""
    base = self.label_folder()
    if not os.path.isdir(base):
      return ()
    out = []
    for name in os.listdir(base):
      folder = os.path.join(base, name)
      if name.startswith('.') or not os.path.isdir(folder):
        continue
      with os.scandir(folder) as it:
        if any(e.name.endswith('.csv') and not e.name.startswith('.') for e in it):
          out.append(name)
    return tuple(sorted(out, key=natural_key))

  def check_targets(self, targets) -> tuple:
    """`targets` ('all' = every one found) checked against the tree: one line if unknown."""
    found = self.targets()
    targets = tuple(targets)
    if targets == ('all',):
      targets = found
    unknown = [t for t in targets if t not in found]
    if unknown or not targets:
      raise MuseError(
        f'unknown target {unknown[0] if unknown else "(none)"!r}: '
        f'{self.label_folder()} holds label folders for '
        f'{", ".join(found) or "no target"}; set config.targets to some of these '
        "(--config.targets=a,b) or to 'all'"
      )
    return targets

  @property
  def layout_dir(self) -> str:
    """The folder a build of this layout lives under in the data_dir: '' for the 2020 release
    (its builds predate the others), else the task, so tasks never share a build."""
    return '' if self.kind == 'muse2020' else self.task


def task_data_dir(data_dir: str, lay: Layout) -> str:
  """Where a layout's builds live: `<data_dir>/<task>` (the 2020 release: `<data_dir>`)."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  return os.path.join(data_dir, lay.layout_dir) if lay.layout_dir else data_dir


def _is_2020_task(root: str) -> bool:
  """A task folder of the 2020 release other than c1_muse_wild (c3_muse_trust)."""
  name = os.path.basename(root)
  return (
    name != TASK_2020
    and name not in NOT_CONTINUOUS_2020
    and not name.startswith('.')
    and os.path.isdir(os.path.join(root, LABEL_ALIGNED))
    and os.path.isfile(os.path.join(os.path.dirname(root), PARTITION_CSV))
  )


def _kind_of(root: str) -> str | None:
  if not os.path.isfile(os.path.join(root, PARTITION_CSV)):
    return 'muse2020_task' if _is_2020_task(root) else None
  for name, k in KINDS.items():
    if name != 'muse2020_task' and os.path.isdir(os.path.join(root, k.feature_dir)):
      return name
  return None


def of(root: str) -> Layout:
  """The layout of `root`, the folder holding metadata/partition.csv (after `resolve`)."""
  root = os.path.abspath(os.path.expanduser(root))
  kind = _kind_of(root)
  if kind is None:
    # An unfinished tree (features being extracted into a new folder, a broken copy): the shape
    # its folders show, else the 2020 layout (what the feature tools always wrote); readers then
    # fail naming the missing file or folder.
    kind = next(
      (
        name
        for name, k in KINDS.items()
        if name != 'muse2020_task'
        and (
          os.path.isdir(os.path.join(root, k.feature_dir))
          or os.path.isdir(os.path.join(root, k.label_dir))
        )
      ),
      'muse2020',
    )
  task = TASK_2020 if kind == 'muse2020' else os.path.basename(root)
  return Layout(kind, root, task)


def tasks(root: str) -> dict:
  """{task name: its root} of every layout at `root` or one folder below it."""
  root = os.path.abspath(os.path.expanduser(root))
  out = {}
  if _kind_of(root):
    out[of(root).task] = root
  if os.path.isdir(root):
    for name in sorted(os.listdir(root), key=natural_key):
      sub = os.path.join(root, name)
      if not name.startswith('.') and os.path.isdir(sub) and _kind_of(sub):
        out.setdefault(name, sub)
  return out


_TOLD = set()  # release roots whose choice of task was logged (once per process)


def resolve(root: str, task: str = '') -> Layout:
  """The layout `--data_root` (a release root or a task folder) and `config.task` point at."""
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise MuseError(
      f'{root}: data root not found; point --data_root at a release root or task '
      'folder (docs/data_format.md)'
    )
  if _is_2020_task(root) and task in ('', os.path.basename(root)):
    return of(root)  # c3_muse_trust's own folder
  if os.path.isdir(os.path.join(root, LABEL_ALIGNED)):
    raise MuseError(
      f'{root}: this is the {os.path.basename(root)} folder of a MuSe 2020 release; '
      'point --data_root at its parent (the folder holding metadata/)'
      + (
        f', with --config.task={os.path.basename(root)}'
        if os.path.basename(root) != TASK_2020
        else ''
      )
    )
  found = tasks(root)
  if task:
    if task in found:
      return of(found[task])
    raise MuseError(
      f'{root}: no task {task!r} here; found: {", ".join(found) or "none"} (config.task)'
    )
  if _kind_of(root):  # a layout root itself (a 2020 root may hold other tasks too)
    others = [t for t in found if found[t] != root]
    if others and root not in _TOLD:
      _TOLD.add(root)
      logging.info(
        '%s holds the tasks %s; using %s (choose another with --config.task=NAME)',
        root,
        ', '.join(found),
        of(root).task,
      )
    return of(root)
  if len(found) == 1:
    return of(next(iter(found.values())))
  if found:
    raise MuseError(
      f'{root} holds several tasks: {", ".join(found)}; choose one with --config.task=NAME'
    )
  for k in KINDS.values():  # the shape of a layout without its partition file
    if os.path.isdir(os.path.join(root, k.feature_dir)) or os.path.isdir(
      os.path.join(root, k.label_dir)
    ):
      path = os.path.join(root, PARTITION_CSV)
      raise MuseError(
        f'{path}: partition file not found; {root} looks like a {k.describe}, '
        'which lists its videos there (Id,Proposal: one row per video)'
        if not os.path.isfile(path)
        else f'{path}: found, but the feature folder {os.path.join(root, k.feature_dir)} is missing'
      )
  raise MuseError(
    f'{root}: no known layout (no metadata/partition.csv with its feature folder, '
    'here or one folder below); expected one of: ' + '; '.join(k.describe for k in KINDS.values())
  )


# Path helpers of an exact root (the folder holding metadata/), for the readers and writers.
def feature_path(root: str, feature_set: str, vid: str) -> str:
  return of(root).feature_path(feature_set, vid)


def label_path(root: str, target: str, vid: str) -> str:
  return of(root).label_path(target, vid)


def feature_folder(root: str, feature_set: str = '') -> str:
  return of(root).feature_folder(feature_set)
