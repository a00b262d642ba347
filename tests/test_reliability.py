"""Reliability: kill -9 and rerun, non-finite losses, bit-for-bit determinism.

The kill and determinism tests run the real command (`python -m muse_jax.main`) in child
processes, as a user or a cluster scheduler would; they share the session's compilation cache
through JAX_* environment variables, so only the first child compiles.
"""

import json
import os
import re
import shutil
import signal
import subprocess

import jax
import numpy as np
import pytest

from muse_jax import config_util
from muse_jax import input_pipeline as ip
from muse_jax import sources
from muse_jax import train
from muse_jax.data import layout
from muse_jax.data import reader
from muse_jax.errors import MuseError

import helpers
from helpers import tiny_config
import scripted

# Exercises every piece of host state a resume must restore: two seeds side by side, dropout
# (keys folded with the step), plateau lr cuts and a seed that early-stops before the end. When
# those happen is scripted (tests/scripted_main.py), not left to float-level training dynamics:
# seed 314 improves up to epoch 3, then its lr is cut at epochs 5 and 7 and it stops after epoch
# 8 (patience 5); seed 315 improves every epoch and runs all 10. The predictions written are the
# seeds' ensemble, each seed at its own best epoch (3 and 10): resume must restore both.
HARD = [
  '--config.num_epochs=10',
  '--config.learning_rate=0.03',
  '--config.plateau_patience=1',
  '--config.early_stopping_patience=5',
  '--config.num_seeds=2',
  '--config.model.out_dropout=0.3',
  '--config.model.attn_dropout=0.1',
  '--config.eval_seed=ensemble',
]
# Above any untrained model's real score: what the kept parameters must beat (inference.score_best).
SCRIPTED = {314: [0.7, 0.8, 0.9], 315: [0.5 + 0.05 * e for e in range(1, 11)]}
# Some exporters write FLT_MAX for a missing value: finite, so the reader keeps it, but the CCC
# loss of any window holding two of them overflows (their sum is inf) and the step goes NaN.
SENTINEL = '3e38'
EPOCH_LINE = re.compile(r'\] epoch +([1-9]\d*) ')  # trained epochs (0: the untrained score)


def env():
  return helpers.child_env(SCRIPTED_DEVEL=json.dumps(SCRIPTED))


def command(workdir, tree, data_dir, *args, scripted=None):
  """The real CLI; with HARD (or scripted=True), through tests/scripted_main.py (devel scores of
  the schedule scripted: SCRIPTED)."""
  if scripted is None:
    scripted = args[: len(HARD)] == tuple(HARD)
  return helpers.train_command(workdir, tree, data_dir, *args, scripted=scripted)


def run(workdir, tree, data_dir, *args, scripted=None):
  return helpers.run(
    command(workdir, tree, data_dir, *args, scripted=scripted),
    os.path.dirname(workdir),
    SCRIPTED_DEVEL=json.dumps(SCRIPTED),
  )


def run_and_kill(workdir, tree, data_dir, after_epochs, *args):
  """Starts the command and SIGKILLs it once it has logged `after_epochs` epochs."""
  proc = subprocess.Popen(
    command(workdir, tree, data_dir, *args),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    env=env(),
    cwd=os.path.dirname(workdir),
  )
  seen, log = set(), []
  for line in proc.stderr:
    log.append(line)
    m = EPOCH_LINE.search(line)
    if m:
      seen.add(int(m.group(1)))
      if len(seen) == after_epochs:
        os.kill(proc.pid, signal.SIGKILL)
        break
  proc.stderr.close()
  assert proc.wait(timeout=60) == -signal.SIGKILL, ''.join(log[-20:])
  return sorted(seen)


def outputs(workdir):
  """What a run leaves for the user: results (no timings), per-epoch log, prediction bytes."""

  def untimed(d):
    return {k: v for k, v in d.items() if not k.endswith('seconds')}

  with open(os.path.join(workdir, 'results.json'), encoding='utf-8') as f:
    results = untimed(json.load(f))
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    metrics = [untimed(json.loads(line)) for line in f]
  preds = {}
  base = os.path.join(workdir, 'predictions')
  for target in sorted(os.listdir(base)):
    for name in sorted(os.listdir(os.path.join(base, target))):
      with open(os.path.join(base, target, name), 'rb') as f:
        preds[f'{target}/{name}'] = f.read()
  return results, metrics, preds


def assert_same_outputs(a, b):
  ra, ma, pa = outputs(a)
  rb, mb, pb = outputs(b)
  assert ra == rb
  assert ma == mb
  assert sorted(pa) == sorted(pb)
  for name in pa:
    assert pa[name] == pb[name], name


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def uninterrupted(tiny_tree, data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('a') / 'work')
  proc = run(workdir, tiny_tree, data_dir, *HARD)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = helpers.read_json(os.path.join(workdir, 'results.json'))
  assert results['epochs_run'] == 10  # seed 315 keeps the run going to the end
  assert results['seed'] == 'ensemble' and results['ensemble']['best_epochs'] == [3, 10]
  stopped = [int(e) for e in re.findall(r'\] epoch +(\d+) seed 314 .*\(stopped', proc.stderr)]
  assert stopped == [8], stopped  # seed 314 stops after epoch 8, said once
  assert not re.search(r'\] epoch +(9|10) seed 314 ', proc.stderr)  # then it is quiet
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    lrs = [json.loads(l)['seeds'][0]['lr'] for l in f]
  assert lrs[:8] == pytest.approx([0.03] * 5 + [0.015] * 2 + [0.0075])  # two plateau cuts
  return workdir


# ------------------------------------------------------------------------------------------------
# kill -9, then the same command again.


def test_kill_9_and_rerun_ends_exactly_as_uninterrupted(
  uninterrupted, tiny_tree, data_dir, tmp_path
):
  workdir = str(tmp_path / 'work')
  run_and_kill(workdir, tiny_tree, data_dir, 1, *HARD)  # during or right after epoch 1's save
  run_and_kill(workdir, tiny_tree, data_dir, 4, *HARD)  # a few epochs later, resumed
  ckpt = os.path.join(workdir, 'checkpoints')
  steps = [int(n) for n in os.listdir(ckpt) if n.isdigit()]
  assert steps and max(steps) < 10
  # What a kill in the middle of writing leaves: an unfinished orbax save of the next epoch, a
  # metrics line cut short, an output file that never got renamed.
  junk = os.path.join(ckpt, f'{max(steps) + 1}.orbax-checkpoint-tmp')
  os.makedirs(os.path.join(junk, 'state'), exist_ok=True)
  with open(os.path.join(junk, 'state', 'manifest.ocdbt'), 'wb') as f:
    f.write(b'\0half')
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8') as f:
    f.write('{"epoch": 99, "seco')
  with open(os.path.join(workdir, 'results.json.tmp99999'), 'w', encoding='utf-8') as f:
    f.write('{"best_ep')

  proc = run(workdir, tiny_tree, data_dir, *HARD)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'resuming after epoch {max(steps)}' in proc.stderr
  assert_same_outputs(uninterrupted, workdir)
  assert set(os.listdir(ckpt)) == {'9', '10'}  # the half-written save was removed, not read
  assert not os.path.exists(os.path.join(workdir, 'results.json.tmp99999'))  # cleaned up


# ------------------------------------------------------------------------------------------------
# Determinism: same config and seed, fresh workdirs, same bits.


def test_same_command_twice_gives_identical_outputs(uninterrupted, tiny_tree, data_dir, tmp_path):
  workdir = str(tmp_path / 'work')
  proc = run(workdir, tiny_tree, data_dir, *HARD)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert_same_outputs(uninterrupted, workdir)


def test_same_config_twice_in_process_on_8_devices(tiny_tree, data_dir, tmp_path, monkeypatch):
  """Sharded over the session's 8 simulated devices: cross-device reductions are exact too.
  (Devel scores of the schedule scripted: 3 epochs beat the untrained model on any CPU.)"""
  scripted.script_devel(monkeypatch)
  assert jax.device_count() == 8
  config = tiny_config(tiny_tree, data_dir, num_epochs=3, num_seeds=2)
  config.model.out_dropout = 0.3
  train.train_and_evaluate(config, str(tmp_path / 'a'))
  train.train_and_evaluate(config, str(tmp_path / 'b'))
  assert_same_outputs(str(tmp_path / 'a'), str(tmp_path / 'b'))


# ------------------------------------------------------------------------------------------------
# Non-finite losses: 'stop' keeps the last good checkpoint, 'skip' drops exactly the bad steps.


def sentinel_tree(tiny_tree, dst):
  """A copy of the tiny tree and its shortest train video (its windows fall in few batches)."""
  root = os.path.join(str(dst), 'root')
  shutil.copytree(tiny_tree, root)

  def frames(vid):
    with open(layout.label_path(root, 'arousal', vid), encoding='utf-8') as f:
      return sum(1 for _ in f)

  vid = min((v for v, p in reader.read_partition(root).items() if p == 'train'), key=frames)
  return root, vid


def write_sentinel(root, vid):
  path = layout.label_path(root, 'arousal', vid)
  with open(path, encoding='utf-8') as f:
    lines = f.read().splitlines()
  col = lines[0].split(',').index('value')
  rows = [l.split(',') for l in lines[1:]]
  for r in rows:
    r[col] = SENTINEL
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join([lines[0]] + [','.join(r) for r in rows]) + '\n')


def bad_steps(config, workdir, epochs) -> list:
  """(epoch, 1-based step) of every train batch holding a sentinel label, in training order."""
  videos, _ = sources.prepare_data(config_util.parse(config), workdir, fit_stats=False)
  w = ip.make_windows(videos['train'], config.win_len, config.hop_len)
  return [
    (e, i + 1)
    for e in epochs
    for i, b in enumerate(ip.train_batches(w, config.batch_size, config.seed, e))
    if np.abs(b['y']).max() > 1e37
  ]


def test_nonfinite_stop_keeps_last_good_checkpoint_then_skip_goes_on(
  tiny_tree, tmp_path, monkeypatch
):
  scripted.script_devel(monkeypatch)  # the in-process runs end in exit 0 on any CPU
  root, vid = sentinel_tree(tiny_tree, tmp_path)
  data_dir, workdir = str(tmp_path / 'tfds'), str(tmp_path / 'work')
  train.train_and_evaluate(tiny_config(root, data_dir, num_epochs=2), workdir)
  write_sentinel(root, vid)  # the data changes under a resumable workdir

  proc = run(workdir, root, data_dir, '--config.num_epochs=4')
  config = tiny_config(root, data_dir, num_epochs=4)
  bad = bad_steps(config, workdir, [3, 4])
  epoch, step = bad[0]
  assert epoch == 3
  err = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert proc.returncode == 2 and len(err) == 1 and 'Traceback' not in proc.stderr, proc.stderr
  assert err[0].startswith(f'error: non-finite loss or gradient at epoch 3, step {step} of ')
  assert 'seed 314; the workdir keeps the last good checkpoint (epoch 2)' in err[0]
  assert '--config.nonfinite_policy=skip' in err[0]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['1', '2']  # newest: 2
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    assert [json.loads(l)['epoch'] for l in f] == [1, 2]

  # The message's advice: skip the bad steps. The same workdir resumes after epoch 2.
  config.nonfinite_policy = 'skip'
  results = train.train_and_evaluate(config, workdir)
  assert results['epochs_run'] == 4 and results['skipped_steps'] == len(bad) > 0
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    logged = [json.loads(l) for l in f]
  assert [r['skipped_steps'] for r in logged] == [0, 0, sum(e == 3 for e, _ in bad), len(bad)]
  assert all(np.isfinite(r['seeds'][0]['train_loss']) for r in logged)
  assert np.isfinite(results['devel']['mean_ccc'])


def test_nonfinite_in_first_epoch_leaves_no_checkpoint(tiny_tree, data_dir, tmp_path):
  # A learning rate far too high: the parameters blow up within the first steps.
  config = tiny_config(tiny_tree, data_dir, learning_rate=1e8)
  with pytest.raises(MuseError) as e:
    train.train_and_evaluate(config, str(tmp_path / 'work'))
  msg = str(e.value)
  assert re.fullmatch(
    r'non-finite loss or gradient at epoch 1, step \d+ of \d+, seed 314; '
    r'no checkpoint was written; lower learning_rate, check the inputs, or set '
    r'--config.nonfinite_policy=skip',
    msg,
  ), msg
  assert not os.listdir(os.path.join(tmp_path, 'work', 'checkpoints'))
