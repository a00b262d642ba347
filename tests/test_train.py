"""End to end: train -> checkpoint -> evaluate/predict on a tiny generated tree."""

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest

from muse_jax import config_util
from muse_jax import inference
from muse_jax import modes
from muse_jax import normalization
from muse_jax import schedule
from muse_jax import sharding
from muse_jax import sources
from muse_jax import steps
from muse_jax import train
from muse_jax.data import layout
from muse_jax.data.video import Video
from muse_jax.errors import MuseError

import helpers
from helpers import tiny_config
from helpers import write_lines
import scripted


@pytest.fixture(scope='module')
def trained(tiny_tree, tmp_path_factory):
  work = str(tmp_path_factory.mktemp('work'))
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  config = tiny_config(tiny_tree, data_dir)
  results = train.train_and_evaluate(config, work)
  return config, work, results


def test_training_beats_untrained_model(trained):
  config, work, results = trained
  videos, dims = sources.prepare_data(config_util.parse(config), work, fit_stats=False)
  model, _, state = steps.create_state(config, sum(dims), 2)
  mesh = sharding.make_mesh()
  _, untrained = inference.evaluate_split(
    steps.make_eval_step(model), state.params, videos['devel'], ['arousal', 'valence'], mesh
  )
  assert results['devel']['mean_ccc'] > untrained[0]['mean_ccc'] + 0.1
  # The run scored the same untrained model first: what its kept parameters had to beat.
  assert results['initial_devel_ccc'] == pytest.approx(untrained[0]['mean_ccc'], abs=1e-6)
  assert 1 <= results['best_epoch'] <= results['epochs_run'] <= config.num_epochs


def test_evaluate_reproduces_best_epoch_metrics(trained):
  config, work, results = trained
  again = modes.evaluate(config, work)
  assert again['devel'] == results['devel']
  assert again['test'] == results['test']
  logged = [json.loads(l) for l in open(os.path.join(work, 'metrics.jsonl'))]
  best = [r for r in logged if r['epoch'] == results['best_epoch']][0]['seeds'][0]
  assert best['devel']['mean_ccc'] == pytest.approx(results['devel']['mean_ccc'], abs=1e-6)


def test_predictions_cover_every_video_on_its_own_grid(trained):
  config, work, _ = trained
  videos, _ = sources.load_videos(config_util.parse(config))
  for vs in videos.values():
    for v in vs:
      for target in ('arousal', 'valence'):
        with open(os.path.join(work, 'predictions', target, f'{v.id}.csv')) as f:
          rows = list(csv.reader(f))
        assert rows[0] == ['timestamp', 'value', 'segment_id']
        ts = np.array([int(r[0]) for r in rows[1:]])
        np.testing.assert_array_equal(ts, v.timestamp)
        np.testing.assert_array_equal([int(r[2]) for r in rows[1:]], v.segment_id)
        assert np.all(np.isfinite([float(r[1]) for r in rows[1:]]))
  assert os.listdir(os.path.join(work, 'plots'))
  assert os.listdir(os.path.join(work, 'tb'))


def test_predict_mode_needs_no_labels_and_matches_evaluate(trained, tmp_path):
  """--mode=predict on a new tree: its videos, no label files at all, listed as test. The
  predictions are those evaluate wrote for the same videos (same parameters, same inputs)."""
  config, work, results = trained
  root = str(tmp_path / 'new')
  ids = sorted(
    os.listdir(os.path.join(config.data_root, layout.KINDS['muse2020'].feature_dir, 'egemaps'))
  )[:3]
  for name in ('egemaps', 'fasttext'):
    os.makedirs(layout.feature_folder(root, name))
    for f in ids:
      shutil.copy(
        os.path.join(config.data_root, layout.KINDS['muse2020'].feature_dir, name, f),
        layout.feature_folder(root, name),
      )
  os.makedirs(os.path.dirname(os.path.join(root, layout.PARTITION_CSV)))
  write_lines(
    os.path.join(root, layout.PARTITION_CSV), ['Id,Proposal'] + [f'{f[:-4]},test' for f in ids]
  )
  new = config.copy_and_resolve_references()
  new.data_root, new.data_dir = root, str(tmp_path / 'tfds')
  out = modes.predict(new, work)
  assert out['videos'] == {'train': 0, 'devel': 0, 'test': 3} and out['seed'] == results['seed']
  assert out['best_epoch'] == results['best_epoch']
  assert 'devel' not in out and not os.path.exists(os.path.join(work, 'predict', 'devel'))
  for target in ('arousal', 'valence'):
    got = sorted(os.listdir(os.path.join(work, 'predict', target)))
    assert got == ids
    for f in ids:  # the training tree's own predictions of these videos (on its label grid)
      mine = pd.read_csv(os.path.join(work, 'predict', target, f))
      theirs = pd.read_csv(os.path.join(work, 'predictions', target, f)).set_index('timestamp')
      common = mine[mine.timestamp.isin(theirs.index)]
      assert len(common) >= 0.9 * len(theirs), f
      np.testing.assert_allclose(
        common.value, theirs.loc[common.timestamp, 'value'], rtol=1e-4, atol=1e-4
      )
  assert json.load(open(os.path.join(work, 'predict.json')))['data_root'] == root


def test_library_calls_leave_the_process_alone(tiny_tree, tmp_path):
  """train_and_evaluate from a notebook: no mallopt, no dispatch or compilation-cache change;
  runtime.configure applies them once, and a second, different setting is refused aloud."""
  code = f"""
import json
import jax
from muse_jax import runtime, schedule, train
from muse_jax.runtime import host_memory
from helpers import tiny_config
import scripted
schedule.SeedTracker.update = scripted.update()  # 1 epoch beats the untrained model on any CPU
c = tiny_config({tiny_tree!r}, {str(tmp_path / 'tfds')!r}, num_epochs=1)
train.train_and_evaluate(c, {str(tmp_path / 'w')!r})
print(json.dumps([jax.config.jax_compilation_cache_dir, host_memory._asked,
                  jax.config.read('jax_cpu_enable_async_dispatch')]))
from absl import logging
logging.set_verbosity(logging.INFO)
c.compilation_cache_dir = {str(tmp_path / 'cache_a')!r}
print(json.dumps(runtime.configure(c)))
c.compilation_cache_dir = {str(tmp_path / 'cache_b')!r}
print(json.dumps(runtime.configure(c)))
"""
  # One CPU device, as in a notebook; no compilation cache given.
  env = {
    k: v
    for k, v in helpers.child_env().items()
    if k != 'JAX_COMPILATION_CACHE_DIR' and not k.startswith('JAX_PERSISTENT_CACHE')
  }
  proc = subprocess.run(
    [sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=str(tmp_path)
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  after_train, first, second = [json.loads(l) for l in proc.stdout.strip().splitlines()[-3:]]
  assert after_train == [None, None, True]  # nothing set behind the caller
  assert first == {'reuse_cpu_buffers': False, 'compilation_cache_dir': str(tmp_path / 'cache_a')}
  assert second == first  # per process: the first decides ...
  assert f'{tmp_path / "cache_b"} ignored' in proc.stderr  # ... and a second one is not silent


def test_accelerator_choices_follow_the_mesh_devices_not_the_backend():
  config = tiny_config('', '')
  assert steps.attention_impl(config, 'cpu') == 'blocked'
  assert steps.attention_impl(config, 'gpu') == steps.attention_impl(config, 'tpu') == 'plain'
  assert steps.seeds_mapped(config, 'cpu') and not steps.seeds_mapped(config, 'gpu')
  config.attention, config.seed_loop = 'plain', 'vmap'
  assert steps.attention_impl(config, 'cpu') == 'plain' and not steps.seeds_mapped(config, 'cpu')
  config.attention = 'fast'
  with pytest.raises(MuseError, match='attention must be one of'):
    config_util.validate_config(config)
  config.attention = 'dot_product'
  assert steps.attention_impl(config, 'cpu') == steps.attention_impl(config, 'gpu') == 'dot_product'
  config.model.attn_dropout = 0.1  # the fused kernels have no dropout on the weights: refused
  with pytest.raises(MuseError, match='no dropout on the attention weights'):
    config_util.validate_config(config)
  config.attention, config.model.attn_dropout = 'cudnn', 0.0
  assert steps.attention_impl(config, 'gpu') == 'cudnn'
  with pytest.raises(MuseError, match='needs GPU devices'):
    steps.attention_impl(config, 'cpu')


def _listing(folder) -> dict:
  """Every path under `folder` with its mtime (ns) and size."""
  out = {}
  for root, dirs, names in os.walk(folder):
    for name in dirs + names:
      path = os.path.join(root, name)
      st = os.stat(path)
      out[os.path.relpath(path, folder)] = (st.st_mtime_ns, st.st_size)
  return out


def test_rerun_of_finished_workdir_resumes_not_retrains(trained, caplog):
  """A deterministic retrain would report the same numbers, so this looks at what a rerun does:
  no epoch trained or scored (no epoch line), no checkpoint step written or touched, the metric
  log as it was."""
  config, work, results = trained
  ckpt = os.path.join(work, 'checkpoints')
  before = _listing(ckpt)
  with open(os.path.join(work, 'metrics.jsonl'), 'rb') as f:
    metrics = f.read()
  caplog.set_level(logging.INFO)
  caplog.set_level(logging.INFO, logger='absl')
  again = train.train_and_evaluate(config, work)
  logs = [r.getMessage() for r in caplog.records]
  assert any(m.startswith(f'resuming after epoch {results["epochs_run"]} ') for m in logs), logs
  assert not [m for m in logs if m.startswith('epoch ')], logs  # nothing trained, nor scored
  assert _listing(ckpt) == before  # no new step, none rewritten
  with open(os.path.join(work, 'metrics.jsonl'), 'rb') as f:
    assert f.read() == metrics
  assert again['best_epoch'] == results['best_epoch'] and again['devel'] == results['devel']


def test_resume_after_interruption_equals_uninterrupted(tiny_tree, tmp_path, monkeypatch):
  """Scripted devel scores (tests/scripted.py): best at epoch 2, before the interruption, so the
  resumed run must restore the best parameters and the schedule's record of them."""
  scripted.script_devel(monkeypatch, {314: [0.8, 0.9, 0.85, 0.85]})
  data_dir = str(tmp_path / 'tfds')
  full = train.train_and_evaluate(
    tiny_config(tiny_tree, data_dir, num_epochs=4), str(tmp_path / 'a')
  )
  train.train_and_evaluate(tiny_config(tiny_tree, data_dir, num_epochs=2), str(tmp_path / 'b'))
  resumed = train.train_and_evaluate(
    tiny_config(tiny_tree, data_dir, num_epochs=4), str(tmp_path / 'b')
  )
  assert resumed['devel'] == full['devel']
  assert resumed['best_epoch'] == full['best_epoch'] == 2
  assert resumed['epochs_run'] == full['epochs_run'] == 4


def test_evaluate_without_checkpoint_is_a_clear_error(tiny_tree, tmp_path):
  config = tiny_config(tiny_tree, str(tmp_path / 'tfds'))
  with pytest.raises(MuseError, match='no checkpoint'):
    modes.evaluate(config, str(tmp_path / 'empty'))


def test_restore_refuses_other_model_config(trained, tmp_path):
  config, work, _ = trained
  other = tiny_config(config.data_root, config.data_dir)
  other.model.d_rnn = 32
  with pytest.raises(MuseError, match='different model'):
    modes.evaluate(other, work)


def _edit_checkpoint_meta(workdir, edit) -> None:
  """Applies `edit` to the meta of every checkpoint kept in `workdir` (orbax's JSON file)."""
  ckpt = os.path.join(workdir, 'checkpoints')
  for step in os.listdir(ckpt):
    path = os.path.join(ckpt, step, 'meta', 'metadata')
    if os.path.isfile(path):
      with open(path, encoding='utf-8') as f:
        meta = json.load(f)
      edit(meta)
      with open(path, 'w', encoding='utf-8') as f:
        json.dump(meta, f)


@pytest.mark.parametrize(
  'edit,why',
  [
    (lambda m: m['signature'].pop('step_ms'), 'no signature.step_ms'),
    (lambda m: m.pop('initial_devel'), 'no initial_devel'),
    (lambda m: m['trackers'][0].pop('since_best'), 'no trackers.since_best'),
    (lambda m: m['trackers'][0].update(momentum=0.9), 'unknown field trackers.momentum'),
  ],
  ids=['step_ms', 'initial_devel', 'tracker_field', 'unknown_field'],
)
def test_checkpoint_of_another_version_is_refused_not_defaulted(trained, tmp_path, edit, why):
  """One format per file kind (docs/troubleshooting.md): a checkpoint whose meta lacks a field
  this version writes (the grid step was once read as 250 ms when absent, a tracker field would
  take its dataclass default) or holds one it does not know is one line, never read."""
  config, work, _ = trained
  copy = str(tmp_path / 'copy')
  shutil.copytree(work, copy)
  _edit_checkpoint_meta(copy, edit)
  with pytest.raises(MuseError) as e:
    modes.evaluate(config, copy)
  assert str(e.value) == (
    f'{copy}: its checkpoint was written by another version of muse_jax '
    f'({why}); retrain in a new --workdir'
  )


@pytest.mark.parametrize('field', ['raw_mean', 'meta', 'step_ms', 'columns'])
def test_norm_stats_of_another_version_are_refused_not_defaulted(trained, tmp_path, field):
  """norm_stats.npz without an array or meta field this version writes (raw statistics, whose
  absence once skipped the out-of-range check; the grid step or column names, whose absence
  skipped their checks) is one line naming it."""
  _, work, _ = trained
  with np.load(os.path.join(work, 'norm_stats.npz')) as z:
    arrays = dict(z)
  meta = json.loads(str(arrays['meta']))
  if field in meta:
    del meta[field]
    arrays['meta'] = json.dumps(meta)
  else:
    del arrays[field]
  path = str(tmp_path / 'norm_stats.npz')
  np.savez(path, **arrays)
  with pytest.raises(MuseError) as e:
    normalization.NormStats.load(path)
  assert str(e.value) == (
    f'{path}: written by another version of muse_jax (no {field}); retrain in a new --workdir'
  )
  assert normalization.NormStats.load(os.path.join(work, 'norm_stats.npz')).step_ms == 250


@pytest.mark.parametrize(
  'field,value,message',
  [
    ('hop_len', 500, 'hop_len'),
    ('feature_sets', (), 'feature_sets is empty'),
    ('targets', ('joy',), 'targets'),
    ('loss', 'huber', 'loss'),
  ],
)
def test_impossible_config_values_fail_before_compute(tiny_tree, tmp_path, field, value, message):
  config = tiny_config(tiny_tree, str(tmp_path / 'tfds'), **{field: value})
  with pytest.raises(MuseError, match=message):
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'tfds')  # nothing was built


def test_unknown_feature_set_names_the_available_ones(tiny_tree, tmp_path):
  config = tiny_config(tiny_tree, str(tmp_path / 'tfds'), feature_sets=('egemaps', 'nosuchset'))
  with pytest.raises(MuseError, match='nosuchset'):
    train.train_and_evaluate(config, str(tmp_path / 'w'))


@pytest.mark.parametrize(
  'arg,message',
  [
    ('--config.hop_len=500', 'hop_len'),
    ('--config.no_such_field=1', 'no_such_field'),
  ],
)
def test_cli_errors_are_one_line(tiny_tree, tmp_path, arg, message):
  helpers.one_error(
    helpers.run_main(
      f'--workdir={tmp_path}/w',
      f'--data_root={tiny_tree}',
      f'--data_dir={tmp_path}/tfds',
      arg,
      cwd=str(tmp_path),
      timeout=120,
    ),
    message,
  )


def test_inputs_spilled_to_disk_train_identically(tiny_tree, tmp_path, monkeypatch):
  scripted.script_devel(monkeypatch)  # 2 epochs beat the untrained model on any CPU
  data_dir = str(tmp_path / 'tfds')
  in_ram = train.train_and_evaluate(
    tiny_config(tiny_tree, data_dir, num_epochs=2, inputs_on_disk='no'), str(tmp_path / 'ram')
  )
  config = tiny_config(tiny_tree, data_dir, num_epochs=2, inputs_on_disk='yes')
  on_disk = train.train_and_evaluate(config, str(tmp_path / 'disk'))
  assert on_disk['devel'] == in_ram['devel'] and on_disk['test'] == in_ram['test']
  videos, _ = sources.prepare_data(
    config_util.parse(config), str(tmp_path / 'disk'), fit_stats=False
  )
  assert isinstance(videos['train'][0].x, np.memmap)
  assert not [f for f in os.listdir(tmp_path / 'disk') if f.startswith('.inputs')]  # unlinked


def test_load_videos_spilled_equals_in_memory(tiny_tree, tmp_path):
  """Spilled inputs: the same arrays, views of one mapped file that no longer has a name, and
  normalisation keeps them there."""
  config = tiny_config(tiny_tree, str(tmp_path / 'tfds'), add_segment_id=True)
  in_ram, dims = sources.load_videos(config_util.parse(config))
  spill = str(tmp_path / 'spill')
  on_disk, dims2 = sources.load_videos(config_util.parse(config), spill_dir=spill)
  assert dims2 == dims
  assert not os.listdir(spill)  # unlinked
  kept, _ = sources.load_videos(
    config_util.parse(config), spill_dir=spill, spill_over=1 << 40
  )  # under the threshold
  assert not isinstance(kept['train'][0].x, np.memmap)
  stats = normalization.compute_stats(config_util.parse(config), in_ram['train'], dims)
  for videos in (in_ram, on_disk):
    normalization.normalize(config_util.parse(config), videos, stats)
  for split in layout.SPLITS:
    assert [v.id for v in on_disk[split]] == [v.id for v in in_ram[split]]
    for a, b in zip(on_disk[split], in_ram[split]):
      assert isinstance(a.x, np.memmap) and a.x.shape == b.x.shape
      np.testing.assert_array_equal(a.x, b.x)
      np.testing.assert_array_equal(a.y, b.y)
      np.testing.assert_array_equal(a.timestamp, b.timestamp)
  first = on_disk['train'][0].x
  assert first.base is on_disk['test'][-1].x.base  # one map for every split


def test_inputs_on_disk_without_space_is_one_line_error(tiny_tree, tmp_path, monkeypatch):
  config = tiny_config(tiny_tree, str(tmp_path / 'tfds'))
  monkeypatch.setattr(sources.shutil, 'disk_usage', lambda path: types.SimpleNamespace(free=1000))
  with pytest.raises(MuseError, match=r'spill: cannot hold the inputs on disk \(0.0 GiB free'):
    sources.load_videos(config_util.parse(config), spill_dir=str(tmp_path / 'spill'))


def test_seed_tracker_plateau_cuts_and_early_stop():
  """The schedule on a scripted devel sequence (the real runs' timing is float-level)."""
  config = tiny_config(
    '',
    '',
    plateau_patience=1,
    plateau_factor=0.5,
    min_learning_rate=0.002,
    early_stopping_patience=4,
  )
  t = schedule.SeedTracker(lr=0.005, seed=314)
  seen = []
  for epoch, ccc in enumerate([0.1, 0.2, float('nan'), 0.2, 0.15, 0.1, 0.9], start=1):
    if not t.active:
      break
    seen.append((t.update(ccc, epoch, config), t.lr, t.active))
  assert seen == [
    (True, 0.005, True),
    (True, 0.005, True),
    (False, 0.005, True),
    (False, 0.0025, True),
    (False, 0.0025, True),
    (False, 0.002, False),
  ]  # NaN never improves; the lr floor; 0.9 never seen
  assert (t.best_epoch, t.best_ccc, t.since_best) == (2, 0.2, 4)


def test_guards_refuse_untrained_or_non_finite_outputs(tmp_path):
  """The last checks before anything is written (the CLI tests reach the first one for real)."""
  t = schedule.SeedTracker(lr=0.005, seed=314)  # best_epoch 0: no epoch ever scored
  with pytest.raises(MuseError, match=r'devel CCC of seed 314 is not finite \(in no epoch'):
    schedule.check_trained(str(tmp_path), t, 314, float('nan'), None, 0)
  t.update(0.2, 1, tiny_config('', ''))
  with pytest.raises(
    MuseError,
    match=r'never beat the untrained model on devel \(seed 314: best '
    r'devel CCC 0.2000 at epoch 1, untrained 0.2500\)',
  ):
    schedule.check_trained(str(tmp_path), t, 314, 0.2, [0.25], 0)
  schedule.check_trained(str(tmp_path), t, 314, 0.2, [0.1], 0)  # beat it: no error
  v = Video(
    '7',
    np.array([0, 250, 500]),
    np.ones(3, np.int32),
    np.zeros((3, 1), np.float32),
    np.zeros((3, 1), np.float32),
    ('valence',),
    (True,),
  )
  inference.check_finite([np.zeros((3, 1))], [v], 'test', 'seed 314')
  with pytest.raises(
    MuseError,
    match=r'non-finite prediction for test video 7 at timestamp 250 '
    r'\(seed 314\)',
  ):
    inference.check_finite([np.array([[0.0], [np.nan], [0.0]])], [v], 'test', 'seed 314')


def test_another_trees_column_order_is_refused_not_permuted(tmp_path):
  """Predict on a tree whose feature files order the columns otherwise: one line, not inputs fed
  to the model in another order (the build stores a set in its first file's order)."""
  spec = config_util.parse(tiny_config(str(tmp_path), str(tmp_path), feature_sets=('egemaps',)))
  stats = types.SimpleNamespace(columns={'egemaps': ['a', 'b', 'c']})
  sources._check_columns(spec, stats, {'egemaps': ['a', 'b', 'c']})  # same order: fine
  with pytest.raises(
    MuseError,
    match=r"column 2 of feature set egemaps is 'c', the model was "
    r"trained with 'b' there",
  ):
    sources._check_columns(spec, stats, {'egemaps': ['a', 'c', 'b']})
