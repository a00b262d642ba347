"""Nothing silently wrong, through the command a user runs (`python -m muse_jax.main`).

A catalogue of what real users feed the tool: finite missing-value markers, constant columns,
columns written in another order or with a pandas index, `;`-separated files, a partition
without devel videos, labels off the release's scale, two runs on one workdir, a resume with
another config, broken paths, full and read-only disks, a damaged checkpoint, Ctrl-C. Each ends
either in exit 0 with trained, finite outputs and a log line saying what was done, or in exit 2
with one `error:` line and no traceback. Runs are 1-2 tiny epochs in a child process with one
CPU device, sharing the session's compilation cache.

Whether an epoch beats the untrained model on devel (else exit 2, `schedule.check_trained`), and
when a run early-stops, follow from devel CCCs that move at float precision with the CPU's
kernels. So the runs that must train to the end go through tests/scripted_main.py: the devel
score the schedule sees improves every epoch (SCRIPTED), above any untrained model's real score;
parameters, predictions and the scores written are the real ones. The run that must never beat
the untrained model is the real command.
"""

import json
import os
import re
import shutil
import signal
import subprocess

import numpy as np
import pytest

from muse_jax.data import build
from muse_jax.data import layout
from muse_jax.data import reader

import helpers
import scripted

SETS = 'egemaps,fasttext'
SENTINEL = '1e30'
# Seed 314's devel score per epoch as its schedule sees it: a new best every epoch.
SCRIPTED = {314: scripted.IMPROVING}


class Tree(helpers.TreeCopy):
  """A fresh copy of the pristine tree (conftest), the CLI on it, and edits that break it."""

  def __init__(self, pristine, tmp):
    src, self.summary = pristine
    super().__init__(src, tmp)
    self.splits = self.summary['splits']

  def build(self):
    build.ensure_built(self.root, self.data_dir, SETS)

  def set_row(self, path, line, value, first_col=2):
    """Every cell of 1-based `line` from column first_col on (the feature cells) := value."""
    lines = self.lines(path)
    cells = lines[line - 1].split(',')
    cells[first_col:] = [value] * (len(cells) - first_col)
    lines[line - 1] = ','.join(cells)
    self.write(path, lines)

  def command(self, *args, workdir=None, scripted=True):
    """The CLI; `scripted`: through tests/scripted_main.py (SCRIPTED devel scores)."""
    return helpers.train_command(
      workdir or self.workdir,
      self.root,
      self.data_dir,
      '--config.num_epochs=1',
      *args,
      scripted=scripted,
    )

  def run(self, *args, workdir=None, scripted=True):
    return helpers.run(
      self.command(*args, workdir=workdir, scripted=scripted),
      self.tmp,
      300,
      SCRIPTED_DEVEL=json.dumps(SCRIPTED),
    )

  def start(self, *args):
    """The CLI in the background, its log (stderr) piped."""
    return subprocess.Popen(
      self.command(*args),
      stderr=subprocess.PIPE,
      stdout=subprocess.DEVNULL,
      text=True,
      env=env(),
      cwd=self.tmp,
    )

  def predictions(self, workdir=None):
    base = os.path.join(workdir or self.workdir, 'predictions')
    out = {}
    for target in os.listdir(base):
      for name in os.listdir(os.path.join(base, target)):
        out[f'{target}/{name[:-4]}'] = np.loadtxt(
          os.path.join(base, target, name), delimiter=',', skiprows=1
        )
    return out

  def results(self, workdir=None):
    return helpers.read_json(os.path.join(workdir or self.workdir, 'results.json'))


def env():
  return helpers.child_env(SCRIPTED_DEVEL=json.dumps(SCRIPTED))


@pytest.fixture
def tree(pristine, tmp_path):
  return Tree(pristine, tmp_path)


one_error = helpers.one_error
ok = helpers.ok


def assert_trained_and_finite(tree, workdir=None):
  """Written: the last epoch's parameters (the scripted scores improve every epoch), which
  training moved away from the untrained ones; finite predictions of every video."""
  results = tree.results(workdir)
  assert results['best_epoch'] == results['epochs_run'] >= 1
  assert np.isfinite(results['devel']['mean_ccc'])
  assert results['devel']['mean_ccc'] != results['initial_devel_ccc']
  preds = tree.predictions(workdir)
  assert len(preds) == 2 * sum(len(v) for v in tree.splits.values())
  for name, p in preds.items():
    assert np.isfinite(p).all(), name


# ------------------------------------------------------------------------------------------------
# Input that used to end in exit 0 with garbage.


def test_quirks_of_real_files_end_in_trained_finite_outputs(tree):
  """One tree with each quirk that must not end in garbage, one run: finite missing-value
  markers in a devel and a test video, a column constant over train, a file with its columns in
  another order, a label file 50x off the release scale."""
  header = tree.lines(tree.feat(tree.splits['train'][0]))[0].split(',')
  col = 7  # a file column of egemaps: feature col - 2
  for split, vids in tree.splits.items():
    for vid in vids:
      lines = tree.lines(tree.feat(vid))
      for i in range(1, len(lines)):
        cells = lines[i].split(',')
        cells[col] = '0.5' if split == 'train' else str(0.5 + 0.1 * (i % 3))
        lines[i] = ','.join(cells)
      tree.write(tree.feat(vid), lines)
  devel, test = tree.splits['devel'][0], tree.splits['test'][0]
  tree.set_row(tree.feat(devel), 5, SENTINEL)
  tree.set_row(tree.feat(test), 3, '-' + SENTINEL)
  vid = tree.splits['train'][1]
  before = reader.read_video(tree.root, 'egemaps', vid).x
  lines = [l.split(',') for l in tree.lines(tree.feat(vid))]
  order = [0, 1] + list(range(len(lines[0]) - 1, 1, -1))  # feature columns reversed
  tree.write(tree.feat(vid), [','.join(r[i] for i in order) for r in lines])
  np.testing.assert_array_equal(reader.read_video(tree.root, 'egemaps', vid).x, before)
  scaled = max(
    (tree.label(v, 'valence') for v in tree.splits['train']),  # x50 lands beyond 5
    key=lambda p: np.abs(np.loadtxt(p, delimiter=',', skiprows=1)).max(),
  )
  lines = [l.split(',') for l in tree.lines(scaled)]
  k = lines[0].index('value')
  for r in lines[1:]:
    r[k] = str(float(r[k]) * 50)
  tree.write(scaled, [','.join(r) for r in lines])

  log = ok(tree.run())
  for vid_, split in ((devel, 'devel'), (test, 'test')):
    assert (
      f'{tree.feat(vid_)}: video {vid_} ({split}): 88 cells (of them 88 finite but over '
      '1000 train std) set to the train mean (nan_policy zero)' in log
    )
  assert (
    f'egemaps: 1 column(s) constant over the train partition (egemaps:{header[col]} = 0.5);'
    ' centred, not scaled'
  ) in log
  with np.load(os.path.join(tree.workdir, 'norm_stats.npz')) as z:
    assert z['std'][col - 2] == 1.0 and z['mean'][col - 2] == pytest.approx(0.5)
  assert f"{tree.feat(vid)}: feature columns in another order than the set's first file" in log
  assert f'{scaled}: label value' in log and 'far off the release scale' in log
  assert_trained_and_finite(tree)


def test_finite_sentinel_with_nan_policy_error_names_file_line_column(tree):
  devel = tree.splits['devel'][0]
  tree.set_row(tree.feat(devel), 5, SENTINEL)
  header = tree.lines(tree.feat(devel))[0].split(',')
  one_error(
    tree.run('--config.nan_policy=error'),
    f'{tree.feat(devel)}: line 5, column 3 ({header[2]!r}), video {devel} (devel)',
    '1e+30, over 1000 train std from the train mean',
    '--config.nan_policy=zero',
  )


def test_renamed_feature_column_is_one_line(tree):
  vid = tree.splits['train'][1]
  lines = tree.lines(tree.feat(vid))
  header = lines[0].split(',')
  old, header[10] = header[10], 'my_feature'
  tree.write(tree.feat(vid), [','.join(header)] + lines[1:])
  one_error(
    tree.run(),
    f"{tree.feat(vid)}: column 11 is named 'my_feature'",
    f'(it has {old!r} instead)',
    'same column names',
  )


def test_written_pandas_index_column_is_one_line(tree):
  folder = os.path.join(tree.root, layout.KINDS['muse2020'].feature_dir, 'fasttext')
  for name in os.listdir(folder):
    lines = tree.lines(os.path.join(folder, name))
    tree.write(
      os.path.join(folder, name), [',' + lines[0]] + [f'{i},{l}' for i, l in enumerate(lines[1:])]
    )
  one_error(
    tree.run(),
    'fasttext',
    'the first column has no name',
    'looks like a written row index',
    'index=False',
  )


def test_semicolon_separated_csv_is_one_line(tree):
  path = tree.label(tree.splits['devel'][0], 'valence')
  tree.write(path, [l.replace(',', ';') for l in tree.lines(path)])
  one_error(
    tree.run(), f'{path}: the header has no commas but 2 semicolons', "the separator looks like ';'"
  )


def test_partition_without_devel_videos_is_one_line(tree):
  path = tree.partition
  tree.write(path, [l.replace(',devel', ',train') for l in tree.lines(path)])
  one_error(tree.run(), f'{path}: the devel partition has no videos')


def test_training_that_never_beats_the_untrained_model_is_an_error(tree):
  # A learning rate so small that no parameter changes in float32: epoch 1 scores exactly what
  # the untrained model does, on any CPU. (A devel label of 1e30 rides along: named, not fatal.)
  devel_path = tree.label(tree.splits['devel'][1], 'arousal')
  lines = [l.split(',') for l in tree.lines(devel_path)]
  lines[4][lines[0].index('value')] = SENTINEL
  tree.write(devel_path, [','.join(r) for r in lines])
  proc = tree.run('--config.learning_rate=1e-30', scripted=False)  # the real schedule
  msg = one_error(
    proc, 'training never beat the untrained model on devel', 'no predictions were written'
  )
  assert 'seed 314' in msg
  assert f'{devel_path}: label value 1e+30 is far off the release scale' in proc.stderr
  assert not os.path.exists(os.path.join(tree.workdir, 'predictions'))
  assert not os.path.exists(os.path.join(tree.workdir, 'results.json'))


# ------------------------------------------------------------------------------------------------
# The workdir: one run at a time, a resume that keeps config.json true.


def test_two_runs_on_one_workdir_started_together(tree):
  tree.build()  # so that both runs below start at once
  procs = [tree.start('--config.num_epochs=3') for _ in range(2)]
  errs = [p.communicate(timeout=300)[1] for p in procs]
  codes = sorted(p.returncode for p in procs)
  assert codes == [0, 2], errs
  lost = errs[[p.returncode for p in procs].index(2)]
  err = [l for l in lost.splitlines() if l.startswith('error:')]
  assert len(err) == 1 and 'Traceback' not in lost, lost
  assert f'{tree.workdir}: in use by the run of pid ' in err[0] and ' on host ' in err[0]
  with open(os.path.join(tree.workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    assert [json.loads(l)['epoch'] for l in f] == [1, 2, 3]  # one run's epochs, not two


def test_resume_with_another_config_and_a_damaged_latest_checkpoint(tree):
  ok(tree.run('--config.num_epochs=2'))
  ckpt = os.path.join(tree.workdir, 'checkpoints')
  assert sorted(os.listdir(ckpt)) == ['1', '2']
  msg = one_error(
    tree.run('--config.learning_rate=1e-4'),
    'resuming with learning_rate=0.0001',
    'trained with learning_rate=0.005',
    'cannot change in a run in progress',
  )
  assert 'config.json' in msg
  with open(os.path.join(tree.workdir, 'config.json'), encoding='utf-8') as f:
    assert json.load(f)['learning_rate'] == 0.005  # still the truth
  for folder, _, files in os.walk(os.path.join(ckpt, '2', 'state')):
    for name in files:  # every file of epoch 2's state cut to half, as by a full disk
      path = os.path.join(folder, name)
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
  log = ok(tree.run('--config.num_epochs=3'))
  assert 'resumed with num_epochs=3 (was 2); applied, config.json updated' in log
  assert 'checkpoint of epoch 2 is unreadable' in log and 'falling back to epoch 1' in log
  assert 'resuming after epoch 1' in log
  with open(os.path.join(tree.workdir, 'config.json'), encoding='utf-8') as f:
    assert json.load(f)['num_epochs'] == 3
  assert tree.results()['epochs_run'] == 3
  assert sorted(os.listdir(ckpt)) == ['2', '3']


# ------------------------------------------------------------------------------------------------
# What used to be a traceback.


def test_command_line_and_path_mistakes(tree):
  proc = tree.run('--config.foo=1')
  one_error(proc, "unknown config field 'foo'")
  cmd = tree.command()
  cmd[3] = f'--config={helpers.REPO}/configs/no_such.py'
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=tree.tmp, timeout=120)
  one_error(proc, f'{helpers.REPO}/configs/no_such.py: config file not found', 'tiny')
  afile = os.path.join(tree.tmp, 'afile')
  open(afile, 'w', encoding='utf-8').close()
  one_error(tree.run(workdir=afile), f'{afile}: --workdir is a file')
  one_error(tree.run(workdir=os.path.join(afile, 'sub', 'w')), f'is under {afile}, which is a file')


def _can_mount() -> bool:
  if os.geteuid() != 0 or shutil.which('unshare') is None:
    return False
  return (
    subprocess.run(
      ['unshare', '-m', 'sh', '-c', 'mount -t tmpfs -o size=1M tmpfs /mnt'],
      capture_output=True,
      check=False,
    ).returncode
    == 0
  )


needs_mount = pytest.mark.skipif(not _can_mount(), reason='needs root and mount namespaces')


def in_namespace(tree, script, *args, workdir=None):
  """Runs the CLI after `script` (shell, in a private mount namespace: nothing leaks out)."""
  cmd = ' '.join(f"'{a}'" for a in tree.command(*args, workdir=workdir))
  return subprocess.run(
    ['unshare', '-m', 'sh', '-c', f'set -e; {script}; exec {cmd}'],
    capture_output=True,
    text=True,
    env=env(),
    cwd=tree.tmp,
    timeout=300,
  )


@needs_mount
def test_read_only_workdir_and_read_only_built_data_dir(tree):
  tree.build()
  ro = os.path.join(tree.tmp, 'ro')
  os.makedirs(ro)
  one_error(
    in_namespace(
      tree, f'mount -t tmpfs tmpfs {ro}; mount -o remount,ro {ro}', workdir=os.path.join(ro, 'w')
    ),
    f'{ro}/w: cannot write to it (it is on a read-only file system)',
  )
  # An up-to-date build on a read-only mount is just read.
  proc = in_namespace(
    tree,
    f'mount --bind {tree.data_dir} {tree.data_dir}; mount -o remount,ro,bind {tree.data_dir}',
    workdir=os.path.join(tree.tmp, 'w2'),
  )
  ok(proc)
  assert_trained_and_finite(tree, os.path.join(tree.tmp, 'w2'))


@needs_mount
def test_disk_full_keeps_the_last_good_checkpoint_then_resumes(tree):
  tree.build()  # elsewhere: only the workdir is on the small disk
  small = os.path.join(tree.tmp, 'small')
  os.makedirs(small)
  workdir = os.path.join(small, 'w')
  cmd = lambda *a: ' '.join(f"'{x}'" for x in tree.command(*a, workdir=workdir))
  out = lambda i: os.path.join(tree.tmp, f'run{i}')
  script = f"""
    mount -t tmpfs -o size=4m tmpfs {small}
    {cmd()} 2>{out(1)}.err; echo $? >{out(1)}.rc
    free=$(df -k --output=avail {small} | tail -n 1)
    head -c $(( (free - 600) * 1024 )) /dev/zero >{small}/filler || true
    {cmd('--config.num_epochs=3')} 2>{out(2)}.err; echo $? >{out(2)}.rc
    rm {small}/filler
    {cmd('--config.num_epochs=3')} 2>{out(3)}.err; echo $? >{out(3)}.rc
    cp -r {workdir} {tree.tmp}/kept"""
  subprocess.run(
    ['unshare', '-m', 'sh', '-c', script], env=env(), cwd=tree.tmp, timeout=600, check=True
  )
  runs = []
  for i in (1, 2, 3):
    with open(f'{out(i)}.err', encoding='utf-8') as f, open(f'{out(i)}.rc', encoding='utf-8') as g:
      runs.append(subprocess.CompletedProcess([], int(g.read()), '', f.read()))
  ok(runs[0])
  one_error(
    runs[1],
    f'{workdir}: disk full',
    'the checkpoint of epoch 2',
    'the workdir keeps the last good checkpoint (epoch 1)',
    'free space and rerun the same command',
  )
  assert 'resuming after epoch 1' in ok(runs[2])
  assert tree.results(os.path.join(tree.tmp, 'kept'))['epochs_run'] == 3


@needs_mount
def test_disk_full_during_the_build_is_one_line(tree):
  small = os.path.join(tree.tmp, 'small')
  os.makedirs(small)
  proc = in_namespace(
    tree, f'mount -t tmpfs -o size=300k tmpfs {small}', f'--data_dir={small}/tfds'
  )
  one_error(proc, 'the disk is full', 'rerun the same command')


def test_ctrl_c_is_one_line_and_the_same_command_resumes(tree):
  proc = tree.start('--config.num_epochs=8')
  log = []
  for line in proc.stderr:
    log.append(line)
    if '] epoch   2' in line:
      proc.send_signal(signal.SIGINT)
      break
  rest = proc.stderr.read()
  assert proc.wait(timeout=60) == 130
  text = ''.join(log) + rest
  assert 'Traceback' not in text
  assert [l for l in text.splitlines() if l.startswith('error:')] == [
    'error: interrupted; rerun the same command to resume'
  ]
  # The interrupted run's lock file still names it; nobody holds the lock: taken over.
  again = ok(tree.run('--config.num_epochs=8'))
  assert f'lock of the run of pid {proc.pid} on host' in again and 'taken over' in again
  # It goes on after the last saved epoch, trains each later one once, to the end (the scripted
  # scores improve every epoch: no early stop).
  done = int(re.search(r'resuming after epoch (\d+) ', again).group(1))
  assert [int(e) for e in re.findall(r'\] epoch +(\d+) ', again)] == list(range(done + 1, 9))
  assert tree.results()['epochs_run'] == tree.results()['best_epoch'] == 8
  with open(os.path.join(tree.workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    assert [json.loads(l)['epoch'] for l in f] == list(range(1, 9))  # each epoch once
