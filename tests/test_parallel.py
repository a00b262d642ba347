"""Data parallelism over simulated devices, multi-host over loopback, seeds side by side.

conftest.py gives this process 8 CPU devices (XLA_FLAGS, set before JAX initialises).
"""

import json
import os
import re
import socket
import subprocess
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from muse_jax import config_util
from muse_jax import inference
from muse_jax import input_pipeline as ip
from muse_jax import losses
from muse_jax import metrics
from muse_jax import modes
from muse_jax import predictor as predictor_lib
from muse_jax import schedule
from muse_jax import sharding
from muse_jax import steps
from muse_jax import train
from muse_jax.data.video import Video
from muse_jax.errors import MuseError

import helpers
from helpers import tiny_config
import scripted


def _synthetic_windows(n=13, t=48, d=10, seed=0):
  """n single-window videos of random lengths in [1, t]."""
  rng = np.random.default_rng(seed)
  videos = []
  for i, length in enumerate(rng.integers(1, t + 1, size=n)):
    x = rng.normal(size=(length, d)).astype(np.float32)
    y = np.cumsum(x[:, :2], axis=0).astype(np.float32) / 10
    videos.append(
      Video(
        str(i),
        np.arange(length) * 250,
        np.ones(length, np.int32),
        x,
        y,
        ('arousal', 'valence'),
        (True, True),
      )
    )
  return ip.make_windows(videos, t, t)


def _one_step(mesh, batch_size=13):
  """Loss, gradients (what data parallelism averages) and params after one train step."""
  config = config_util.load_config('tiny')
  config.num_seeds = 2
  model, tx, state = steps.create_state(config, 10, 2)
  loss_fn = losses.get_loss('ccc')
  step = steps.make_train_step(model, tx, loss_fn, None)
  n = mesh.devices.size
  batch = sharding.shard(next(ip.train_batches(_synthetic_windows(), batch_size, 0, 0, n)), mesh)
  params = sharding.replicate(state.params, mesh)

  @jax.jit
  def grads(params, batch):
    def loss_of(p):
      pred = model.apply({'params': p}, batch['x'], batch['lengths'])
      return loss_fn(pred, batch['y'], batch['mask'])

    return jax.vmap(jax.grad(loss_of))(params)

  g = jax.device_get(grads(params, batch))
  keys = sharding.replicate(steps.dropout_keys(list(config_util.parse(config).seeds)), mesh)
  active = sharding.replicate(np.array([True, True]), mesh)
  state, loss, _ = step(sharding.replicate(state, mesh), batch, keys, active)
  return jax.device_get(state.params), g, np.asarray(loss)


def test_a_stopped_seed_is_not_trained_and_mapped_not_even_computed():
  """Mapped seeds (CPU's default) skip a stopped seed's step (lax.cond: its loss is NaN, nothing
  ran); vmapped seeds compute it and discard it. Either way its parameters and optimiser state
  stay as they were, and the active seed's step is the same in both programs."""
  config = config_util.load_config('tiny')
  config.num_seeds = 2
  model, tx, state = steps.create_state(config, 10, 2)
  batch = next(ip.train_batches(_synthetic_windows(), 13, 0, 0, 1))
  keys = steps.dropout_keys([314, 315])
  out = {}
  for mapped in (True, False):
    step = steps.make_train_step(model, tx, losses.get_loss('ccc'), None, seeds_map=mapped)
    new, loss, finite = step(jax.tree.map(jnp.copy, state), batch, keys, np.array([True, False]))
    out[mapped] = jax.device_get(new), np.asarray(loss), np.asarray(finite)
  before = jax.device_get(state)
  for mapped, (new, loss, finite) in out.items():
    assert finite.all() and np.isfinite(loss[0])
    assert np.isnan(loss[1]) == mapped  # mapped: the stopped seed's step did not run
    for a, b in zip(
      jax.tree.leaves((new.params, new.opt_state)),
      jax.tree.leaves((before.params, before.opt_state)),
    ):
      np.testing.assert_array_equal(a[1], b[1])  # the stopped seed: untouched
    changed = [
      not np.array_equal(a[0], b[0])
      for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(before.params))
    ]
    assert all(changed)  # the active seed trained
  assert out[True][1][0] == pytest.approx(out[False][1][0], rel=1e-5)
  # Adam's first move is about +-lr where the gradient is meaningful, noise where it is at
  # rounding level (see the 8-device test): compare the meaningful moves.
  for a, b, p in zip(
    jax.tree.leaves(out[True][0].params),
    jax.tree.leaves(out[False][0].params),
    jax.tree.leaves(before.params),
  ):
    moved = np.abs(b[0] - p[0]) > 0.5 * config.learning_rate
    np.testing.assert_allclose(a[0][moved], b[0][moved], atol=1e-5)
    assert moved.mean() > 0.5


def test_eight_devices_are_simulated():
  assert jax.device_count() == 8


def test_train_step_on_8_devices_equals_1_device():
  p1, g1, l1 = _one_step(sharding.make_mesh(1))
  p8, g8, l8 = _one_step(sharding.make_mesh(8))
  # Other device counts sum in another order: equal to float32 rounding, on any CPU.
  np.testing.assert_allclose(l8, l1, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g8), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
  # Adam's first update is lr * g / (|g| + eps): where |g| is at rounding level its sign is noise,
  # so compare the updated parameters where the gradient is meaningful.
  for a, b, g in zip(jax.tree.leaves(p8), jax.tree.leaves(p1), jax.tree.leaves(g1)):
    meaningful = np.abs(g) > 1e-3 * np.abs(g).max()
    np.testing.assert_allclose(a[meaningful], b[meaningful], atol=1e-5)
    assert meaningful.mean() > 0.5


# The whole-run comparisons below are of different programs (device counts, vmapped or mapped
# seeds, processes): they agree to rounding per step, and Adam's first steps turn rounding-level
# gradients into +-lr moves, so they train one epoch and compare to a tolerance that holds on any
# CPU (the one-step tests above check the mechanism tightly). Their schedules see scripted devel
# scores (tests/scripted.py): whether one epoch beats the untrained model, which a run must to
# write anything, is float-level luck; the parameters and the scores compared are the real ones.
TOL = 2e-3


@pytest.fixture(scope='module')
def one_epoch(tiny_tree, tmp_path_factory):
  """configs/tiny.py for one epoch in this process (seed 314), on 1 device and on the session's
  8: {'data_dir': its build, 1: results, 8: results}; the tests below compare other programs to
  these runs."""
  out = {'data_dir': str(tmp_path_factory.mktemp('tfds'))}
  with pytest.MonkeyPatch.context() as mp:
    scripted.script_devel(mp)
    for n in (1, 8):
      out[n] = train.train_and_evaluate(
        tiny_config(tiny_tree, out['data_dir'], num_epochs=1, num_devices=n),
        str(tmp_path_factory.mktemp(f'devices{n}')),
      )
  return out


def test_short_run_same_devel_ccc_on_1_and_8_devices(one_epoch):
  r1, r8 = one_epoch[1], one_epoch[8]
  for t in ('arousal', 'valence'):
    assert r8['devel'][t]['ccc'] == pytest.approx(r1['devel'][t]['ccc'], abs=TOL)
  # The epoch moved the model far more than TOL: a sharding bug could not hide in the tolerance.
  assert abs(r1['devel']['mean_ccc'] - r1['initial_devel_ccc']) > 10 * TOL


def test_seeds_side_by_side_equal_separate_runs(tiny_tree, tmp_path, monkeypatch, one_epoch):
  """Seeds in one program (looped, the CPU default) train as separate runs would; vmapped seeds
  train as looped ones (test_accelerator_path_trains_like_the_cpu_defaults), so as separate runs.
  Seed 314 alone is one_epoch's run on 1 device (tiny.py's seed; data_seed -1: the seed's)."""
  scripted.script_devel(monkeypatch)
  data_dir = one_epoch['data_dir']
  both = train.train_and_evaluate(
    tiny_config(tiny_tree, data_dir, num_epochs=1, num_seeds=2, num_devices=1, seed_loop='map'),
    str(tmp_path / 'map'),
  )
  for i, seed in enumerate((314, 315)):
    alone = (
      one_epoch[1]
      if seed == 314
      else train.train_and_evaluate(
        tiny_config(tiny_tree, data_dir, num_epochs=1, seed=seed, data_seed=314, num_devices=1),
        str(tmp_path / f'seed{seed}'),
      )
    )
    got = both['seeds'][i]
    assert got['seed'] == seed
    for t in ('arousal', 'valence'):
      assert got['devel'][t]['ccc'] == pytest.approx(alone['devel'][t]['ccc'], abs=TOL)
  cccs = [s['devel']['mean_ccc'] for s in both['seeds']]
  assert both['best_seed'] == (314, 315)[int(np.argmax(cccs))]
  assert both['devel_ccc_mean'] == pytest.approx(np.mean(cccs))
  assert cccs[0] != cccs[1]  # different init really gives different models


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_train_together_like_one(tiny_tree, tmp_path, one_epoch):
  """Two processes of 2 CPU devices each train as one process does (one_epoch's run on the
  session's 8 devices), within TOL."""
  data_dir, single = one_epoch['data_dir'], one_epoch[8]
  port = _free_port()
  env = helpers.child_env(SCRIPTED_DEVEL=json.dumps({314: scripted.IMPROVING}))
  env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count=2'
  procs = [
    subprocess.Popen(
      helpers.train_command(
        f'{tmp_path}/multi',
        tiny_tree,
        data_dir,
        f'--coordinator_address=127.0.0.1:{port}',
        '--num_processes=2',
        f'--process_id={i}',
        '--config.num_epochs=1',
        scripted=True,
      ),
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  multi = json.load(open(tmp_path / 'multi' / 'results.json'))
  for t in ('arousal', 'valence'):
    assert multi['devel'][t]['ccc'] == pytest.approx(single['devel'][t]['ccc'], abs=TOL)
  # Only process 0 writes outputs: predictions exist once, from one writer.
  assert os.listdir(tmp_path / 'multi' / 'predictions' / 'arousal')


def test_batches_are_padded_to_the_device_multiple_only():
  """Full batches and the last, partial one are padded to the next multiple (devices x micro
  batches), not the last one to a full batch; every window appears once per epoch."""
  w = _synthetic_windows(n=20)
  batches = list(ip.train_batches(w, 8, 0, 1, 3))
  assert [len(b['lengths']) for b in batches] == [9, 9, 6]
  assert [int((b['lengths'] > 0).sum()) for b in batches] == [8, 8, 4]
  rows = np.concatenate([b['x'][b['lengths'] > 0] for b in batches])
  x, _, _ = w.gather(np.arange(20))
  assert sorted(map(bytes, rows)) == sorted(map(bytes, x))


def test_micro_batches_give_the_whole_batch_gradient():
  config = config_util.load_config('tiny')
  model, tx, state = steps.create_state(config, 10, 2)
  loss_fn = losses.get_loss('ccc')
  batch = next(ip.train_batches(_synthetic_windows(n=16), 13, 0, 0, 16))  # 3 empty rows
  keys = steps.dropout_keys(list(config_util.parse(config).seeds))
  active = np.array([True])
  out = {}
  for m in (1, 4):
    step = steps.make_train_step(model, tx, loss_fn, None, n_micro=m)
    s = jax.tree.map(np.copy, jax.device_get(state))
    new, loss, _ = step(s, batch, keys, active)
    out[m] = (np.asarray(loss), jax.device_get(new.opt_state.inner_state[0].mu))  # 0.1 * grad
  np.testing.assert_allclose(out[4][0], out[1][0], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(out[4][1]), jax.tree.leaves(out[1][1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


# Devel scores the schedules see, per seed: a new best every epoch (exit 0 on any CPU).
ACCELERATOR_SCRIPT = {314: [0.7, 0.8], 315: [0.55, 0.6]}


def test_accelerator_path_trains_like_the_cpu_defaults(tiny_tree, tmp_path):
  """What 'auto' picks on GPU/TPU (unblocked attention, vmapped seeds, asynchronous dispatch),
  with the plain attention and with jax.nn.dot_product_attention, forced on CPU through the
  command: the same run as the CPU defaults (blocked attention, seeds one after the other,
  synchronous dispatch) within TOL. Predictions of seed 314 are written (eval_seed 0): which seed
  is best may differ by a rounding between the programs when the two score alike."""
  data_dir = str(tmp_path / 'tfds')
  common = ('--config.num_epochs=2', '--config.num_seeds=2', '--config.eval_seed=0')
  runs = {}
  for name, args in (
    ('cpu', ()),
    *(
      (
        attention,
        (
          f'--config.attention={attention}',
          '--config.seed_loop=vmap',
          '--config.reuse_cpu_buffers=False',
        ),
      )
      for attention in ('plain', 'dot_product')
    ),
  ):
    workdir = str(tmp_path / name)
    proc = helpers.run(
      helpers.train_command(workdir, tiny_tree, data_dir, *common, *args, scripted=True),
      str(tmp_path),
      SCRIPTED_DEVEL=json.dumps(ACCELERATOR_SCRIPT),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    picked = re.search(r'seeds \[314, 315\] \((.*?)\), (\w+) attention', proc.stderr)
    assert picked, proc.stderr[-3000:]
    assert 'of 2 seeds' in proc.stdout and 'of their ensemble' in proc.stdout, proc.stdout
    runs[name] = (
      picked.groups(),
      proc.stderr,
      json.load(open(os.path.join(workdir, 'results.json'))),
    )
  cpu_pick, cpu_log, cpu = runs['cpu']
  assert cpu_pick == ('one after the other', 'blocked')
  assert 'large CPU buffers are kept in the heap' in cpu_log  # synchronous dispatch ...
  assert abs(cpu['devel']['mean_ccc'] - cpu['initial_devel_ccc']) > 10 * TOL  # it trained
  for attention in ('plain', 'dot_product'):
    acc_pick, acc_log, acc = runs[attention]
    assert acc_pick == ('vmapped', attention)
    assert 'large CPU buffers are kept in the heap' not in acc_log  # ... and JAX's async default
    for a, b in zip(cpu['seeds'], acc['seeds']):
      for split in ('devel', 'test'):
        for t in ('arousal', 'valence'):
          assert b[split][t]['ccc'] == pytest.approx(a[split][t]['ccc'], abs=TOL)
    for target in ('arousal', 'valence'):
      for f in sorted(os.listdir(tmp_path / 'cpu' / 'predictions' / target)):
        got = [
          np.loadtxt(
            tmp_path / w / 'predictions' / target / f, delimiter=',', skiprows=1, usecols=1, ndmin=1
          )
          for w in ('cpu', attention)
        ]
        np.testing.assert_allclose(got[1], got[0], atol=5 * TOL)


def _fake_split(rng, n_videos, seeds_preds):
  videos = [
    types.SimpleNamespace(y=rng.uniform(-1, 1, (30 + 7 * i, 2)), has_labels=True)
    for i in range(n_videos)
  ]
  return videos, seeds_preds(videos)


def test_seed_ensemble_is_the_mean_of_the_seeds_predictions():
  rng = np.random.default_rng(0)
  trained = types.SimpleNamespace(best_epoch=3, best_ccc=0.5)
  trackers, initial, seeds = [trained] * 3, [0.1] * 3, [314, 315, 316]
  targets = ['arousal', 'valence']
  videos, preds = _fake_split(
    rng,
    4,
    lambda vs: [[rng.normal(size=v.y.shape).astype(np.float32) for v in vs] for _ in range(3)],
  )

  def ensemble(preds, trackers=trackers, initial=initial):
    return inference.score_ensemble(
      {'devel': (preds, None)}, {'devel': videos}, targets, trackers, seeds, initial
    )

  got = ensemble(preds)
  want = metrics.partition_metrics(
    [v.y for v in videos],
    [(preds[0][i].astype(float) + preds[1][i] + preds[2][i]) / 3 for i in range(4)],
    targets,
  )
  assert got['seeds'] == seeds and got['best_epochs'] == [3, 3, 3]
  for t in targets:
    assert got['devel'][t] == pytest.approx(want[t], rel=1e-6)
  # What evaluate/predict write for eval_seed='ensemble' is that same mean, per video.
  mean = inference.combine(preds, schedule.pick_seeds('ensemble', trackers, initial, best=1))
  for i in range(4):
    np.testing.assert_allclose(
      mean[i], (preds[0][i] + preds[1][i] + preds[2][i]) / 3, rtol=1e-5, atol=1e-6
    )
  # Identical seeds: the ensemble is that seed, to the last bit of its predictions and metrics.
  same = [preds[0]] * 3
  single = metrics.partition_metrics([v.y for v in videos], preds[0], targets)
  assert ensemble(same)['devel'] == single
  assert all((a == b).all() for a, b in zip(inference.combine(same, [0, 1, 2]), preds[0]))
  # A seed that never trained (best epoch 0) or never beat the untrained model is left out.
  untrained = types.SimpleNamespace(best_epoch=0, best_ccc=float('-inf'))
  out = ensemble([preds[0], preds[1], preds[2]], [trained, trained, untrained], [0.1, 0.6, 0.1])
  assert out['seeds'] == [314] and out['devel'] == single
  # A member predicting NaN: no ensemble score there (it is not quietly dropped).
  assert (
    ensemble([preds[0], [np.full_like(p, np.nan) for p in preds[1]], preds[2]])['devel'] is None
  )


def test_eval_seed_choices():
  trained = types.SimpleNamespace(best_epoch=3, best_ccc=0.5)
  untrained = types.SimpleNamespace(best_epoch=0, best_ccc=float('-inf'))
  assert [config_util.eval_seed(v, 3) for v in ('best', 'Ensemble', '2', 1)] == [
    'best',
    'ensemble',
    2,
    1,
  ]
  for bad in ('3', 3, 'mean', 1.0, '', -1, '-1'):  # -1: no alias of 'best' (one format)
    with pytest.raises(MuseError, match=r"config.eval_seed=.* is invalid: use 'best'"):
      config_util.eval_seed(bad, 3)
  trackers = [trained, untrained, trained]
  assert schedule.pick_seeds('best', trackers, None, best=2) == [2]
  assert schedule.pick_seeds(1, trackers, None, best=2) == [1]
  assert schedule.pick_seeds('ensemble', trackers, None, best=2) == [0, 2]
  # No member: the best seed, so that check_trained says what is wrong with it.
  assert schedule.pick_seeds('ensemble', [untrained] * 2, None, best=1) == [1]


def _read_predictions(folder, raw=False) -> dict:
  if raw:
    return {
      f'{t}/{n}': open(os.path.join(folder, t, n), 'rb').read()
      for t in sorted(os.listdir(folder))
      for n in sorted(os.listdir(os.path.join(folder, t)))
    }
  return {
    f'{t}/{n}': np.loadtxt(
      os.path.join(folder, t, n), delimiter=',', skiprows=1, usecols=1, ndmin=1
    )
    for t in sorted(os.listdir(folder))
    for n in sorted(os.listdir(os.path.join(folder, t)))
  }


# Each seed's devel score as its schedule sees it, per epoch (tests/scripted.py): seed 314 is
# best at epoch 2, seed 315 at epoch 3, both far above any untrained model's real score, so both
# are members of the ensemble on any CPU. Parameters, predictions and the reported metrics stay
# the real ones.
ENSEMBLE_SCRIPT = {314: [0.7, 0.9, 0.8], 315: [0.7, 0.8, 0.9]}


def test_eval_seed_ensemble_writes_the_mean_everywhere(tiny_tree, tmp_path, monkeypatch):
  """eval_seed='ensemble': results.json holds the ensemble of the seeds beside each seed, and each
  labelled devel/test video's CCC; training's end, evaluate, predict and Predictor all write the
  mean of the members' predictions, each member at its best epoch; evaluate reproduces it all
  exactly from the checkpoint."""
  scripted.script_devel(monkeypatch, ENSEMBLE_SCRIPT)
  config = tiny_config(
    tiny_tree, str(tmp_path / 'tfds'), num_epochs=3, num_seeds=2, eval_seed='ensemble'
  )
  work = str(tmp_path / 'w')
  results = train.train_and_evaluate(config, work)
  ens = results['ensemble']
  assert results['seed'] == 'ensemble' and results['eval_seed'] == 'ensemble'
  assert set(ens) == {'seeds', 'best_epochs', 'train', 'devel', 'test'}
  assert [(s['seed'], s['best_epoch']) for s in results['seeds']] == [(314, 2), (315, 3)]
  assert ens['seeds'] == [314, 315] and ens['best_epochs'] == [2, 3]  # two members, both kept
  for split in ('devel', 'test'):
    assert all(
      np.isfinite(ens[split][t][m]) for t in ('arousal', 'valence') for m in ('ccc', 'pcc', 'rmse')
    )
    cccs = [s[split]['mean_ccc'] for s in results['seeds']]
    assert results[f'{split}_ccc_mean'] == pytest.approx(np.mean(cccs), rel=1e-9, abs=1e-12)
    # ddof: see issue 29 (the seeds' spread is the sample std)
    assert results[f'{split}_ccc_std'] == pytest.approx(np.std(cccs, ddof=1), rel=1e-9, abs=1e-12)
  per_video = results['per_video']
  devel_ids = [
    l.split(',')[0]
    for l in open(os.path.join(tiny_tree, 'metadata', 'partition.csv'))
    if l.strip().endswith(',devel')
  ]
  assert sorted(per_video['devel']) == sorted(set(devel_ids))
  assert all(-1 <= c[t] <= 1 for c in per_video['devel'].values() for t in ('arousal', 'valence'))
  assert os.path.exists(os.path.join(work, 'plots', 'per_video_devel_ccc.png'))
  assert results['devel'] == ens['devel'] and results['test'] == ens['test']
  assert results['best_epoch'] == 3  # the latest of the members' best epochs
  written = _read_predictions(os.path.join(work, 'predictions'))
  written_bytes = _read_predictions(os.path.join(work, 'predictions'), raw=True)
  said = lambda: json.load(open(os.path.join(work, 'predictions.json')))
  assert said() == {
    'written_by': 'train',
    'what': 'the ensemble of seeds 314, 315',
    'eval_seed': 'ensemble',
    'seed': 'ensemble',
    'best_epoch': 3,
    'results': 'results.json',
  }
  # Each member's own predictions (evaluate with a seed index rewrites predictions/) ...
  per_seed = []
  for seed in ens['seeds']:
    config.eval_seed = str(seed - 314)
    assert modes.evaluate(config, work)['seed'] == seed
    per_seed.append(_read_predictions(os.path.join(work, 'predictions')))
    # predictions/ now hold that seed's, and say so (results.json still says training's choice).
    assert (said()['written_by'], said()['seed'], said()['results']) == (
      'evaluate',
      seed,
      'eval_results.json',
    )
    assert json.load(open(os.path.join(work, 'results.json')))['seed'] == 'ensemble'
  # Two different members (else their mean would be either one of them) ...
  assert any(not np.allclose(per_seed[0][n], per_seed[1][n], atol=1e-3) for n in written)
  for name, got in written.items():  # ... averaged: the ensemble (to the CSVs' 7 digits)
    np.testing.assert_allclose(
      got, np.mean([p[name] for p in per_seed], axis=0), rtol=1e-6, atol=1e-6
    )
  config.eval_seed = 'ensemble'
  again = modes.evaluate(config, work)
  assert {k: again[k] for k in ('seed', 'devel', 'test', 'ensemble', 'per_video')} == {
    k: results[k] for k in ('seed', 'devel', 'test', 'ensemble', 'per_video')
  }
  assert _read_predictions(os.path.join(work, 'predictions'), raw=True) == written_bytes
  out = modes.predict(config, work)
  assert out['seed'] == 'ensemble' and out['ensemble']['seeds'] == ens['seeds']
  assert _read_predictions(out['predictions'], raw=True) == written_bytes
  # Predictor: by default what results.json wrote (the ensemble), the mean of the members'.
  predictor = predictor_lib.Predictor(work)
  assert predictor.seeds == ens['seeds']
  x = np.random.default_rng(0).normal(size=(40, sum(predictor.dims))).astype(np.float32)
  members = [predictor_lib.Predictor(work, seed - 314)(x) for seed in ens['seeds']]
  np.testing.assert_allclose(predictor(x), np.mean(members, axis=0), rtol=1e-5, atol=1e-6)
