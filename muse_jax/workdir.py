"""A run's workdir: checked before any work, held by one run at a time, its config kept true.

Why a lock: two runs on one workdir (a resubmitted cluster job, a second terminal) both train,
both save checkpoints and interleave `metrics.jsonl`; each would end with exit 0 and outputs that
belong to neither. The lock is an exclusive `flock` on `<workdir>/.lock`, so the kernel releases
it when its holder dies (even by kill -9): a lock file left by a dead run is simply taken over,
with one log line. The file names the holder (pid, host, start time) for the message the next
run prints.

Why a config check on resume: the checkpoint holds the parameters, optimiser state and schedule of
one config. A resumed run with another learning rate would keep the old one while config.json
recorded the new one. Fields that cannot change mid-run stop the run, naming the field; fields
that can (`RESUMABLE`) are applied, logged and written to config.json.
"""

import contextlib
import datetime
import errno
import json
import os
import shutil
import socket
import tempfile

from absl import logging

from muse_jax import config_util
from muse_jax.data import layout
from muse_jax.errors import MuseError

try:
  import fcntl
except ImportError:  # not POSIX: workdirs are not locked
  fcntl = None

LOCK_FILE = '.lock'
CONFIG_FILE = 'config.json'
# Fields a resumed run may change: they do not touch what the checkpoint holds (parameters,
# optimiser state, schedule) or what the data is. num_epochs and nonfinite_policy change how the
# run goes on, which is why one resumes with them; the others change only how it runs or what
# it writes at the end.
RESUMABLE = (
  'num_epochs',
  'nonfinite_policy',
  'num_plot_videos',
  'eval_seed',
  'num_devices',
  'member_devices',
  'bootstrap_samples',
  'bootstrap_seed',
  'sweep_ensemble',
  'sweep_storage',
  'micro_batch_size',
  'inputs_on_disk',
  'reuse_cpu_buffers',
  'compilation_cache_dir',
  'seed_loop',
  'attention',
  'data_dir',
)


def _fail_os(workdir: str, e: OSError, doing: str):
  why = e.strerror or str(e)
  hint = {
    errno.EROFS: 'it is on a read-only file system',
    errno.EACCES: 'permission denied',
    errno.ENOTDIR: 'a part of the path is a file',
    errno.EEXIST: 'it is a file',
    errno.ENOSPC: 'the disk is full',
  }.get(e.errno, why)
  raise MuseError(f'{workdir}: cannot {doing} ({hint}); choose a writable folder as --workdir')


def prepare(workdir: str, writable: bool = True) -> str:
  """The absolute workdir, created if missing; one-line errors for a file, a path under a file,
  or (writable) a folder this process cannot write."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise MuseError(
      f'{workdir}: --workdir is a file, not a folder; choose a folder (it is created if missing)'
    )
  parent = os.path.dirname(workdir)
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent and not os.path.isdir(parent):
    raise MuseError(f'{workdir}: --workdir is under {parent}, which is a file; choose a folder')
  if not writable:
    return workdir
  try:
    os.makedirs(workdir, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix='.write_test.', dir=workdir)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    _fail_os(workdir, e, 'write to it')
  return workdir


def _holder(path: str) -> dict:
  try:
    with open(path, encoding='utf-8') as f:
      return json.loads(f.read() or '{}')
  except (OSError, ValueError):
    return {}


def _describe(h: dict) -> str:
  if not h:
    return 'another run'
  return f'the run of pid {h.get("pid")} on host {h.get("host")}' + (
    f', started {h["started"]}' if h.get('started') else ''
  )


@contextlib.contextmanager
def locked(workdir: str, what: str = 'run'):
  """Holds `<workdir>/.lock` for the block; a second run gets a one-line MuseError naming the
  holder. A lock file whose holder died (nobody holds the flock) is taken over with a log line."""
  path = os.path.join(workdir, LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    _fail_os(workdir, e, 'create its lock file')
  f = os.fdopen(fd, 'r+', encoding='utf-8')
  try:
    if fcntl is not None:
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        raise MuseError(
          f'{workdir}: in use by {_describe(_holder(path))}; wait for it to '
          'finish (or stop it), or use another --workdir'
        ) from None
      except OSError as e:  # a file system without locks (some NFS and FUSE mounts)
        logging.warning(
          '%s: cannot lock the workdir (%s); make sure no other run uses it',
          workdir,
          e.strerror or e,
        )
    old = _holder(path)
    if old and old.get('pid') != os.getpid():
      logging.warning(
        '%s: lock of %s, which is no longer running, taken over', workdir, _describe(old)
      )
    me = {
      'pid': os.getpid(),
      'host': socket.gethostname(),
      'what': what,
      'started': datetime.datetime.now().isoformat(timespec='seconds'),
    }
    f.seek(0)
    f.truncate()
    f.write(json.dumps(me))
    f.flush()
    try:
      yield
    finally:
      f.seek(0)
      f.truncate()  # a clean exit leaves an empty lock file: nothing to take over
      f.flush()
  finally:
    f.close()  # releases the flock


def flat(d: dict, prefix: str = '') -> dict:
  """{'model': {'d_rnn': 64}} -> {'model.d_rnn': 64}."""
  out = {}
  for k, v in d.items():
    out.update(flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {f'{prefix}{k}': v})
  return out


def _same(a, b) -> bool:
  """Equal config values; list fields compare by items ('a,b' on the command line, ('a', 'b')
  in a config file)."""
  if a == b:
    return True

  def items(v):
    return config_util.parse_list(v) if isinstance(v, (str, list, tuple)) else None

  return items(a) is not None and items(a) == items(b)


def _tree(record: dict) -> dict:
  """A flat record with `data_root` as the layout root it resolves to (with its `task`): a
  release root plus a task and that task's folder are the same tree. Left as is when the tree
  cannot be resolved (moved, or now ambiguous: training records the layout root it used)."""
  root = record.get('data_root')
  if root:
    try:
      lay = layout.resolve(root, record.get('task') or '')
    except MuseError:
      return record
    record = dict(record, data_root=lay.root, task=lay.task)
  return record


def same_config(saved: dict, config: dict) -> list:
  """The fields (flat names) that differ between two config records (`config_record`: paths
  absolute), over the fields both have; list fields by items, the tree by the layout root it
  resolves to. Not a version check: a config file need not set every field (the code has a
  default for those it reads with .get, and a user's own file may leave them out), so one that
  only one of the two records holds is not a change."""
  old, new = _tree(flat(saved)), _tree(flat(config))
  return [k for k in sorted(new) if k in old and not _same(old[k], new[k])]


def read_json(path: str, default=None):
  """A JSON file's content, or `default` when it does not exist; one line when it cannot be
  read (cut short, not JSON)."""
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    return default
  except (OSError, ValueError) as e:
    raise MuseError(f'{path}: unreadable ({e}); restore it, or use a new --workdir') from None


@contextlib.contextmanager
def held(workdir: str, what: str):
  """The workdir's lock (`locked`), held by process 0 for the whole job. In a multi-host job the
  others learn whether it got it, so a refused job ends on every process instead of leaving them
  waiting at the next barrier."""
  import jax  # noqa: PLC0415  (JAX only when a lock is taken: main's --help stays fast)

  if jax.process_count() == 1:
    with locked(workdir, what):
      yield
    return
  from jax.experimental import multihost_utils  # noqa: PLC0415  (multi-host only)
  import numpy as np  # noqa: PLC0415  (multi-host only)

  lock = locked(workdir, what) if jax.process_index() == 0 else contextlib.nullcontext()
  error = None
  try:
    lock.__enter__()
  except MuseError as e:
    error = e
  refused = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
  if refused:
    raise error or MuseError(
      f'{workdir}: process 0 could not take the workdir lock (its log says why)'
    )
  try:
    yield
  finally:
    lock.__exit__(None, None, None)


def saved_config(workdir: str) -> dict | None:
  return read_json(os.path.join(workdir, CONFIG_FILE))


def sweep_ensemble_parts(workdir: str) -> tuple:
  """([(group workdir, [member indices])], the ensemble's entry of sweep.json): the members of a
  sweep's ensemble of its best k (eval_seed 'sweep_ensemble'), by group, in the order the report
  ranked them. Groups are found under this W (a moved workdir still reads)."""
  report = read_json(os.path.join(workdir, 'sweep.json'))
  if report is None:
    raise MuseError(
      f"{workdir}: no sweep.json; eval_seed 'sweep_ensemble' is the ensemble of a "
      "sweep's best members: use it on the --workdir of a finished --sweep (or "
      "eval_seed 'ensemble' for this run's seeds)"
    )
  ens = report.get('ensemble')
  if not ens or not ens.get('rows'):
    raise MuseError(
      f'{workdir}: the sweep has no ensemble (config.sweep_ensemble=0, or no '
      'member was scored on devel)'
    )
  parts = {}
  for i in ens['rows']:
    row = report['rows'][i]
    parts.setdefault(row['group'], []).append(row['member'])
  return [(os.path.join(workdir, 'groups', g), m) for g, m in parts.items()], ens


# What evaluate must share with training: how the tree becomes normalised inputs.
PREPROCESSING = (
  'data_root',
  'task',
  'normalize',
  'add_segment_id',
  'nan_policy',
  'max_abs_z',
  'fusion_runs',
)
PATHS = ('data_root', 'data_dir')  # stored absolute: a resume from another folder still matches


def config_record(config) -> dict:
  """The config as config.json holds it: JSON, with its paths absolute."""
  out = json.loads(config.to_json_best_effort())
  for k in PATHS:
    if out.get(k):
      out[k] = os.path.abspath(os.path.expanduser(out[k]))
  return out


def check_resume(
  workdir: str, config: dict, evaluating: bool = False, other_tree: bool = False
) -> list:
  """On resume (or evaluate): a one-line MuseError for the first field that cannot change
  mid-run; returns the changed fields that can, as (field, old, new), and logs them. Fields only
  one side's config file sets are not compared (`same_config`). A workdir without config.json
  has nothing to compare: evaluate of one never trained stops at its missing checkpoint, and a
  checkpoint is checked against the model and inputs on restore either way. `other_tree`
  (predict): data_root and data_dir may differ too."""
  saved = saved_config(workdir)
  if saved is None:
    return []
  old, new = flat(saved), flat(config)
  changed = [(k, old[k], new[k]) for k in same_config(saved, config)]
  doing = 'evaluating' if evaluating else 'resuming'
  if evaluating:  # only what turns the data into inputs; the checkpoint checks the model
    changed = [c for c in changed if c[0] in PREPROCESSING or c[0] in RESUMABLE]
  if other_tree:
    changed = [c for c in changed if c[0] not in PATHS + ('task',)]
  for k, a, b in changed:
    if k not in RESUMABLE:
      raise MuseError(
        f'{workdir}: {doing} with {k}={json.dumps(b)}, but this workdir was trained with '
        f'{k}={json.dumps(a)}; {k} cannot change in a run in progress: rerun with the config it '
        'was started with (its config.json), or use a new --workdir'
      )
  for k, a, b in changed:
    if evaluating:
      logging.info(
        '%s: evaluating with %s=%s (trained with %s)', workdir, k, json.dumps(b), json.dumps(a)
      )
    else:
      logging.warning(
        '%s: resumed with %s=%s (was %s); applied, config.json updated',
        workdir,
        k,
        json.dumps(b),
        json.dumps(a),
      )
  return changed


def check_space(workdir: str, need: int, what: str, kept: str) -> None:
  """A one-line MuseError when the workdir's disk has less than `need` bytes free for `what`.

  Checked before each checkpoint: a save that runs out of space midway fails inside orbax's and
  tensorstore's writer threads, which print dozens of tracebacks before the error surfaces.
  """
  try:
    free = shutil.disk_usage(workdir).free
  except OSError:
    return
  if free < need:
    raise MuseError(
      f'{workdir}: disk full ({free / 2**20:.1f} MiB free, {what} needs about '
      f'{need / 2**20:.1f} MiB); {kept}; free space and rerun the same command to '
      'resume'
    )
