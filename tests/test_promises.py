"""README promises no other test checks: the main job (`./run.sh`) and its linear column,
evaluate and predict through the CLI, config.json's absolute paths, evaluate's and predict's
refusals, late fusion's best-N ranking, process 0 building alone, full and read-only disks
without mount rights.

The CLI checks share one tiny workdir trained by the command a user runs (one CPU device, the
session's compilation cache): a first run meets a full disk at its second checkpoint, the same
command then resumes it; later checks run evaluate/predict on it or on copies.
"""

import json
import os
import re
import shutil

import jax
import numpy as np
import pandas as pd
import pytest

from muse_jax import config_util
from muse_jax import reproduce
from muse_jax import sources
from muse_jax.data import build
from muse_jax.data import layout

from helpers import ok
from helpers import one_error
from helpers import run_main
from helpers import tiny_config
from helpers import write_lines

TARGETS = ('arousal', 'valence')
EPOCH_LINE = re.compile(r'\] epoch +[1-9]\d* ')  # a trained epoch (0: the untrained score)


def _tree_files(folder) -> dict:
  """{path: (size, mtime_ns)} of every file under `folder` (but a workdir's lock, which every run
  takes): what a rewrite would change."""
  out = {}
  for parent, _, names in os.walk(folder):
    for name in names:
      if name == '.lock':
        continue
      st = os.stat(os.path.join(parent, name))
      out[os.path.join(parent, name)] = (st.st_size, st.st_mtime_ns)
  return out


def _ccc(a, b) -> float:
  """Concordance correlation coefficient as the challenge scores it: covariance and variances
  with n - 1 (np.cov's default), the squared mean difference as is."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  n = len(a)
  cov = np.sum((a - a.mean()) * (b - b.mean())) / (n - 1)
  return 2 * cov / (a.var(ddof=1) + b.var(ddof=1) + (a.mean() - b.mean()) ** 2)


# ------------------------------------------------------------------------------------------------
# The main job (`./run.sh`): demo tree -> build -> one model per target -> table with the
# frame-wise linear baseline beside it. Re-running reuses what is done.


@pytest.fixture(scope='module')
def job_run(tmp_path_factory):
  """`./run.sh`'s command on the tiny scale (a child: muse_jax.job and muse_jax.reproduce define
  the same absl flags, so they cannot share a process), run twice."""
  out = str(tmp_path_factory.mktemp('job'))
  first = ok(run_main(f'--out={out}', '--scale=tiny', module='muse_jax.job', cwd=out))
  with open(os.path.join(out, 'results.md'), encoding='utf-8') as f:
    table = f.read()
  state = _job_state(out)
  again = ok(run_main(f'--out={out}', '--scale=tiny', module='muse_jax.job', cwd=out))
  with open(os.path.join(out, 'results.md'), encoding='utf-8') as f:
    table_again = f.read()
  return out, first, table, state, again, table_again, _job_state(out)


def _job_state(out) -> dict:
  """What a retrain would change: the tree, the build, each run's checkpoints and metric log."""
  state = {d: _tree_files(os.path.join(out, d)) for d in ('demo_tree_tiny', 'tfds')}
  for target in TARGETS:
    work = os.path.join(out, 'runs', f'tiny_{target}')
    state[target] = _tree_files(os.path.join(work, 'checkpoints'))
    with open(os.path.join(work, 'metrics.jsonl'), encoding='utf-8') as f:
      state[f'{target} metrics'] = f.read()
  return state


def _table_rows(text) -> dict:
  """{target: [cells after the target]} of the job's markdown table."""
  lines = [l for l in text.splitlines() if l.startswith('|')]
  assert lines[0].split('|')[2].strip() == 'frame-wise linear (devel CCC)', lines[0]
  return {c[0]: c[1:] for c in ([x.strip() for x in l.strip('|').split('|')] for l in lines[2:])}


def test_main_job_table_linear_column_and_rerun(job_run):
  """A finite row per target whose model columns are the runs' results; the linear column is a
  ridge fit on train scored on devel; a rerun reuses everything (one test: one job run)."""
  out, first, table, state, again, table_again, state_again = job_run
  rows = _table_rows(table)
  assert list(rows) == list(TARGETS)  # every label folder of the demo tree
  for target, cells in rows.items():
    linear, devel, test = (float(c.split()[0]) for c in cells[:3])  # CCC [low, high]
    assert all(c.split()[1].startswith('[') for c in cells[:2]), cells  # devel: with interval
    assert np.isfinite([linear, devel, test]).all() and np.isfinite(float(cells[4]))
    with open(os.path.join(out, 'runs', f'tiny_{target}', 'results.json'), encoding='utf-8') as f:
      results = json.load(f)
    assert [devel, test] == pytest.approx(
      [results['devel'][target]['ccc'], results['test'][target]['ccc']], abs=6e-5
    )
    assert cells[3] == f'{results["best_epoch"]} / {results["epochs_run"]}'
    assert linear == pytest.approx(_ridge_devel_ccc(out, target), abs=1e-4), target
  assert len(EPOCH_LINE.findall(first)) >= 2 * len(TARGETS)
  # The rerun: the same table (but the seconds), no trained epoch, nothing rewritten.
  assert not EPOCH_LINE.findall(again)
  assert again.count('resuming after epoch') == len(TARGETS)
  assert {t: c[:4] for t, c in _table_rows(table_again).items()} == {
    t: c[:4] for t, c in rows.items()
  }
  assert state_again == state


def _ridge_devel_ccc(out, target) -> float:
  """The frame-wise linear baseline, recomputed: the run's inputs (raw, joined) z-normalised with
  train statistics as the model sees them (std + 1e-6, as the authors' code does), a ridge
  (alpha 1, intercept not shrunk) solved as an augmented least-squares problem over the train
  frames, and the CCC of its predictions over the concatenated devel videos."""
  root = os.path.join(out, 'demo_tree_tiny')
  spec = config_util.parse(tiny_config(root, os.path.join(out, 'tfds'), targets=(target,)))
  videos, _ = sources.load_videos(spec)
  x = np.concatenate([v.x for v in videos['train']]).astype(np.float64)
  y = np.concatenate([v.y[:, 0] for v in videos['train']]).astype(np.float64)
  assert np.isfinite(x).all() and np.isfinite(y).all()  # no cell the NaN policy would touch
  mean, std = x.mean(0), x.std(0)
  assert (std > 0).all()  # no constant column (those are centred, not scaled)
  z = lambda a: (np.asarray(a, np.float64) - mean) / (std + 1e-6)
  d = x.shape[1]
  a = np.vstack([np.hstack([z(x), np.ones((len(x), 1))]), np.hstack([np.eye(d), np.zeros((d, 1))])])
  w = np.linalg.lstsq(a, np.concatenate([y, np.zeros(d)]), rcond=None)[0]
  devel = [v for v in videos['devel'] if v.has_labels]
  assert devel
  return _ccc(
    np.concatenate([z(v.x) @ w[:-1] + w[-1] for v in devel]),
    np.concatenate([v.y[:, 0] for v in devel]),
  )


# ------------------------------------------------------------------------------------------------
# Through the CLI on one trained workdir: a run whose checkpoint of epoch 2 met a full disk, then
# the same command again (both started from their own folder with relative paths).

CHECKPOINT_2_FULL = json.dumps(
  {'errno': 'ENOSPC', 'path': '/checkpoints/2.orbax-checkpoint-tmp', 'at': 'write'}
)
# Training goes through tests/scripted_main.py: the devel score its schedule sees improves every
# epoch, so the kept epoch is the last on any CPU (whether a real one improves is float-level).
SCRIPTED = json.dumps({314: [0.8, 0.9]})


class Trained:
  """The workdir `base`/work; `args(...)` gives its command with absolute paths."""

  def __init__(self, base, tree, fault, fault_checkpoints, log):
    self.base, self.tree, self.log = base, tree, log
    self.fault, self.fault_checkpoints = fault, fault_checkpoints
    self.workdir = os.path.join(base, 'work')
    self.data_dir = os.path.join(base, 'tfds')

  def args(self, *more, workdir=None, data_root=None, data_dir=None):
    return (
      f'--workdir={workdir or self.workdir}',
      f'--data_root={data_root or self.tree}',
      f'--data_dir={data_dir or self.data_dir}',
      '--config.num_epochs=2',
      *more,
    )

  def json(self, name, workdir=None):
    with open(os.path.join(workdir or self.workdir, name), encoding='utf-8') as f:
      return json.load(f)


@pytest.fixture(scope='module')
def trained(tiny_tree, tmp_path_factory):
  base = str(tmp_path_factory.mktemp('cli_run'))
  rel = os.path.relpath(tiny_tree, base)
  assert not os.path.isabs(rel)
  args = ('--workdir=work', f'--data_root={rel}', '--data_dir=tfds', '--config.num_epochs=2')
  fault = run_main(
    *args, cwd=base, module='fault_main', MUSE_FAULT=CHECKPOINT_2_FULL, SCRIPTED_DEVEL=SCRIPTED
  )
  kept = sorted(os.listdir(os.path.join(base, 'work', 'checkpoints')))
  log = ok(run_main(*args, cwd=base, module='scripted_main', SCRIPTED_DEVEL=SCRIPTED))
  return Trained(base, os.path.abspath(os.path.join(base, rel)), fault, kept, log)


@pytest.fixture(scope='module')
def unlabelled(trained):
  """A new tree: the training tree's feature files only (no label folder), every video as test."""
  root = os.path.join(trained.base, 'new')
  ids = None
  for name in ('egemaps', 'fasttext'):
    src, dst = layout.feature_folder(trained.tree, name), layout.feature_folder(root, name)
    shutil.copytree(src, dst)
    ids = sorted(n[:-4] for n in os.listdir(dst))
  os.makedirs(os.path.join(root, os.path.dirname(layout.PARTITION_CSV)))
  write_lines(
    os.path.join(root, layout.PARTITION_CSV), ['Id,Proposal'] + [f'{i},test' for i in ids]
  )
  return root, ids


def test_config_json_records_absolute_paths_given_relative_ones(trained):
  saved = trained.json('config.json')
  assert saved['data_root'] == trained.tree and saved['data_dir'] == trained.data_dir
  assert os.path.isdir(os.path.join(trained.data_dir, 'muse_car'))  # the build is where it says


def test_evaluate_through_the_cli_reproduces_training_metrics(trained, tmp_path):
  """The same command with --mode=evaluate, from another folder with absolute paths."""
  results_file = os.path.join(trained.workdir, 'results.json')
  with open(results_file, encoding='utf-8') as f:
    before = f.read()
  ok(run_main(*trained.args('--mode=evaluate'), cwd=str(tmp_path)))
  with open(results_file, encoding='utf-8') as f:
    assert f.read() == before  # training's results stay as they were
  results, again = json.loads(before), trained.json('eval_results.json')
  assert again['seed'] == results['seed'] and again['best_epoch'] == results['best_epoch']
  for split in ('devel', 'test'):
    for target in TARGETS:
      assert set(again[split][target]) == set(results[split][target])
      for name, value in results[split][target].items():
        assert again[split][target][name] == pytest.approx(value, abs=1e-5, nan_ok=True), (
          split,
          target,
          name,
        )
  assert trained.json('predictions.json')['written_by'] == 'evaluate'


def test_predict_through_the_cli_needs_no_labels(trained, unlabelled, tmp_path):
  root, ids = unlabelled
  ok(
    run_main(
      *trained.args(
        '--mode=predict', data_root=root, data_dir=os.path.join(trained.base, 'tfds_new')
      ),
      cwd=str(tmp_path),
    )
  )
  out = os.path.join(trained.workdir, 'predict')
  assert trained.json('predict.json')['videos'] == {'train': 0, 'devel': 0, 'test': len(ids)}
  for target in TARGETS:
    assert sorted(n[:-4] for n in os.listdir(os.path.join(out, target))) == ids
    for vid in ids:
      mine = pd.read_csv(os.path.join(out, target, f'{vid}.csv'))
      assert list(mine.columns) == ['timestamp', 'value', 'segment_id'] and len(mine)
      assert np.isfinite(mine.value).all()
      # Same parameters and train statistics as training's own predictions of the video.
      theirs = pd.read_csv(os.path.join(trained.workdir, 'predictions', target, f'{vid}.csv'))
      theirs = theirs.set_index('timestamp')
      common = mine[mine.timestamp.isin(theirs.index)]
      assert len(common) >= 0.9 * len(theirs), vid
      np.testing.assert_allclose(
        common.value, theirs.loc[common.timestamp, 'value'], rtol=1e-4, atol=1e-4
      )


def test_predict_refuses_to_replace_the_training_build(trained, unlabelled, tmp_path):
  root, _ = unlabelled
  before = _tree_files(trained.data_dir)
  one_error(
    run_main(*trained.args('--mode=predict', data_root=root), cwd=str(tmp_path)),
    f'{trained.data_dir}: holds the build of the training tree {trained.tree}',
    f'predicting on {root} would replace it',
    'pass another --data_dir',
  )
  assert _tree_files(trained.data_dir) == before


def test_evaluate_refuses_another_preprocessing(trained, tmp_path):
  """How the tree becomes inputs must be training's: one line naming the field, nothing run
  (data_root: a copy of the training tree, with its own data_dir)."""
  copy = str(tmp_path / 'copy')
  shutil.copytree(trained.tree, copy)
  cases = {
    'normalize': ('--config.normalize=none',),
    'nan_policy': ('--config.nan_policy=error',),
    'data_root': (),
  }
  before = _tree_files(trained.workdir)
  for field, more in cases.items():
    other = {'data_root': copy, 'data_dir': str(tmp_path / 'tfds')} if field == 'data_root' else {}
    line = one_error(
      run_main(*trained.args('--mode=evaluate', *more, **other), cwd=str(tmp_path)),
      f'{trained.workdir}: evaluating with {field}=',
      f'trained with {field}=',
      f'{field} cannot change',
    )
    assert line.count(f'{field}=') == 2, line
  assert _tree_files(trained.workdir) == before
  assert not os.path.exists(tmp_path / 'tfds')  # nothing built either


# ------------------------------------------------------------------------------------------------
# Full and read-only disks, without mount rights: the failure injected where the kernel reports
# it (tests/fault_main.py). Each ends in one line naming the path, exit 2, no traceback; the
# workdir keeps what it had.


def test_disk_full_at_a_checkpoint_keeps_the_last_good_one_and_the_same_command_resumes(trained):
  one_error(
    trained.fault,
    f'{trained.workdir}/checkpoints/2',
    'cannot write (the disk is full)',
    'last good checkpoint',
    'rerun the same command',
  )
  assert '1' in trained.fault_checkpoints and '2' not in trained.fault_checkpoints
  assert 'resuming after epoch 1' in trained.log
  assert sorted(os.listdir(os.path.join(trained.workdir, 'checkpoints'))) == ['1', '2']
  assert trained.json('results.json')['epochs_run'] == 2


def _copy(trained, tmp_path) -> str:
  """A copy of the trained workdir, without what other tests' predict runs added."""
  work = str(tmp_path / 'work')
  shutil.copytree(trained.workdir, work, ignore=shutil.ignore_patterns('predict', 'predict.json'))
  return work


def _faulty(trained, tmp_path, workdir, fault, *args):
  """The command on `workdir` (the trained one's args) meeting `fault` (tests/fault_main.py)."""
  return run_main(
    *trained.args(*args, workdir=workdir),
    cwd=str(tmp_path),
    module='fault_main',
    MUSE_FAULT=json.dumps(fault),
  )


def _predict_meeting(trained, tmp_path, errno, where, at) -> tuple:
  """--mode=predict on a copy of the trained workdir, its file `where` (under the copy) meeting
  a disk fault; the copy's checkpoints stay as they were. (The copy, the process.)"""
  work = _copy(trained, tmp_path)
  checkpoints = _tree_files(os.path.join(work, 'checkpoints'))
  fault = {'errno': errno, 'path': f'{work}/{where}', 'at': at}
  proc = _faulty(trained, tmp_path, work, fault, '--mode=predict')
  assert _tree_files(os.path.join(work, 'checkpoints')) == checkpoints
  return work, proc


def test_disk_full_writing_predictions_leaves_every_file_whole(trained, tmp_path):
  work, proc = _predict_meeting(trained, tmp_path, 'ENOSPC', 'predict/', 'write')
  one_error(proc, f'{work}/predict/', 'cannot write (the disk is full)')
  assert not os.path.exists(os.path.join(work, 'predict.json'))
  for parent, _, names in os.walk(os.path.join(work, 'predict')):
    assert not names, (parent, names)  # none written half (nor under a temporary name)


def test_read_only_disk_is_one_line_naming_the_path(trained, tmp_path):
  # At the start: the workdir's write probe.
  fresh = str(tmp_path / 'fresh')
  fault = {'errno': 'EROFS', 'path': fresh, 'at': 'open'}
  one_error(
    _faulty(trained, tmp_path, fresh, fault),
    f'{fresh}: cannot write to it (it is on a read-only file system)',
  )
  # Midway: the disk turned read-only before predict wrote its summary.
  work, proc = _predict_meeting(trained, tmp_path, 'EROFS', 'predict.json', 'open')
  one_error(proc, f'{work}/predict.json: cannot write (the file system is read-only)')
  assert not [n for n in os.listdir(work) if n.startswith('predict.json')]


# ------------------------------------------------------------------------------------------------
# Late fusion over the best N first-level runs (`--fusion_top`), ranked by devel CCC.


def test_late_fusion_reads_exactly_the_best_n_runs_by_devel_ccc(tiny_tree, tmp_path, monkeypatch):
  """Five first-level runs (4 sets + egemaps+fasttext), faked as finished with chosen devel CCCs:
  the late-fusion run reads the best N of them, in run order; a run without a finite devel CCC
  ranks last; 0 (or N >= the number of runs) reads all."""
  devel = {
    'au': 0.5,
    'egemaps': 0.3,
    'fasttext': 0.7,
    'vggface': float('nan'),
    'egemaps+fasttext': 0.6,
  }
  fused = []  # each late-fusion run's fusion_runs

  def finished(config, workdir):
    inputs = os.path.basename(workdir)
    if inputs == 'late_fusion':
      fused.append(config_util.parse_list(config.fusion_runs))
      return {'devel': {'valence': {'ccc': 0.0}}}
    return {'devel': {'valence': {'ccc': devel[inputs]}}}

  monkeypatch.setattr(reproduce, 'train_once', finished)
  out = str(tmp_path / 'out')
  for top, want in (
    (3, {'fasttext', 'egemaps+fasttext', 'au'}),
    (4, {'fasttext', 'egemaps+fasttext', 'au', 'egemaps'}),
    (0, set(devel)),
    (5, set(devel)),
    (9, set(devel)),
  ):
    runs = reproduce.run(out, tiny_tree, config_name='tiny', targets=('valence',), fusion_top=top)
    first, late = runs[:-1], runs[-1]
    assert sorted(r.inputs for r in first) == sorted(devel)
    order = [r.inputs for r in first if r.inputs in want]  # run order, not rank order
    assert late.kind == reproduce.LATE and list(late.fused) == order, top
    assert fused[-1] == [os.path.join(out, 'runs', 'valence', i) for i in order]
    assert late.inputs == (f'best {top} runs by devel' if 0 < top < 5 else 'all runs above')


# ------------------------------------------------------------------------------------------------
# Several hosts: process 0 builds the dataset, the others wait at a barrier and then read it.


@pytest.mark.parametrize('index', [0, 1])
def test_only_process_0_builds_the_dataset(tiny_tree, tmp_path, monkeypatch, index):
  """Two processes simulated in one: `index` is this process. Builds are recorded with the
  process that made them; at the barrier, process 0 is done building (it is played here for
  process 1). Only process 0 writes the train statistics."""
  spec = config_util.validate_config(tiny_config(tiny_tree, str(tmp_path / 'tfds')))
  workdir = str(tmp_path / 'work')
  os.makedirs(workdir)
  me, events = [index], []
  real_build = build._build

  def recorded_build(*args, **kwargs):
    events.append(('build', me[0], args[2]))  # (root, data_dir, name, ...)
    return real_build(*args, **kwargs)

  def barrier(name):
    events.append(('barrier', me[0], name))
    if index == 1:  # what process 0 has done by the time it reaches the barrier
      me[0] = 0
      sources.ensure_built(spec)
      me[0] = 1

  monkeypatch.setattr(build, '_build', recorded_build)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(jax, 'process_index', lambda: me[0])
  monkeypatch.setattr(sources.multihost_utils, 'sync_global_devices', barrier)
  videos, dims = sources.prepare_data(spec, workdir, fit_stats=True)
  kinds = [(e[0], e[1]) for e in events]
  if index == 0:
    assert kinds == [('build', 0), ('build', 0), ('barrier', 0)], events  # egemaps, fasttext
  else:
    assert kinds == [('barrier', 1), ('build', 0), ('build', 0)], events
  assert dims == [88, 300] and videos['train'] and videos['devel']
  assert os.path.exists(os.path.join(workdir, 'norm_stats.npz')) == (index == 0)
