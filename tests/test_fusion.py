"""Early fusion (joined, normalised feature sets), late fusion over finished runs, reproduce."""

import json
import os
import shutil
import sys

import numpy as np
import pytest

from muse_jax import compare
from muse_jax import config_util
from muse_jax import fusion
from muse_jax import input_pipeline as ip
from muse_jax import modes
from muse_jax import normalization
from muse_jax import reproduce
from muse_jax import sources
from muse_jax.data import build
from muse_jax.data import video as video_lib
from muse_jax.data.video import Video
from muse_jax.errors import MuseError

import helpers
from helpers import tiny_config

# ------------------------------------------------------------------------------------------------
# Early fusion


def test_early_fusion_joins_sets_in_config_order_and_normalises_each_as_asked(tiny_tree, tmp_path):
  data_dir = str(tmp_path / 'tfds')
  config = tiny_config(
    tiny_tree,
    data_dir,
    feature_sets=('fasttext', 'egemaps'),
    normalize='fasttext',
    add_segment_id=True,
  )
  videos, dims = sources.load_videos(config_util.parse(config))
  assert dims == [300, 88, 1]
  raw = {v.id: v.x.copy() for vs in videos.values() for v in vs}
  stats = normalization.compute_stats(config_util.parse(config), videos['train'], dims)
  assert stats.names == ['fasttext', 'egemaps', 'segment_id']
  assert stats.normalized == [True, False, False]
  normalization.normalize(config_util.parse(config), videos, stats)

  alone = {
    name: {v.id: v for vs in build.load_feature_set(data_dir, name).values() for v in vs}
    for name in ('fasttext', 'egemaps')
  }
  for split, vs in videos.items():
    assert vs, split
    for v in vs:
      n = len(v.x)
      ft, eg = alone['fasttext'][v.id], alone['egemaps'][v.id]
      np.testing.assert_array_equal(v.timestamp, ft.timestamp[:n])
      np.testing.assert_allclose(
        v.x[:, :300], (ft.x[:n] - stats.mean[:300]) / stats.std[:300], rtol=1e-5, atol=1e-5
      )
      np.testing.assert_array_equal(v.x[:, 300:388], eg.x[:n])  # untouched
      np.testing.assert_array_equal(v.x[:, 388], ft.segment_id[:n])
      np.testing.assert_array_equal(raw[v.id][:, 300:], v.x[:, 300:])
  train_x = np.concatenate([v.x for v in videos['train']]).astype(np.float64)
  np.testing.assert_allclose(train_x[:, :300].mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(train_x[:, :300].std(0), 1.0, atol=1e-3)
  assert np.abs(train_x[:, 300:388].mean(0)).max() > 1.0  # egemaps keeps its own scales


def test_join_grid_keeps_shared_timestamps_and_names_disagreeing_sets():
  t = np.arange(10) * 250
  at = lambda ts: video_lib.unlabelled(
    '7', ts, np.ones(len(ts)), np.arange(len(ts))[:, None] * 1.0, ('arousal',)
  )
  joined = sources._join_grid('7', {'a': at(t), 'b': at(t[:8])})
  assert [len(v.timestamp) for v in joined.values()] == [8, 8]
  # A set starting one step earlier (MuSe 2022): its first row is left out, rows stay paired.
  joined = sources._join_grid('7', {'a': at(t[1:]), 'b': at(t)})
  np.testing.assert_array_equal(joined['a'].timestamp, joined['b'].timestamp)
  np.testing.assert_array_equal(joined['b'].x[:, 0], np.arange(1, 10))
  np.testing.assert_array_equal(joined['a'].x[:, 0], np.arange(9))
  with pytest.raises(
    MuseError,
    match=r'video 7: feature sets a and b are on different grids '
    r'\(timestamp 751 of b',
  ):
    sources._join_grid('7', {'a': at(t), 'b': at(np.r_[t[:3], t[3:] + 1])})


def test_whole_video_windows_hold_one_video_each(tiny_tree, tmp_path):
  config = tiny_config(
    tiny_tree, str(tmp_path / 'tfds'), feature_sets=('egemaps',), whole_videos=True
  )
  videos, _ = sources.load_videos(config_util.parse(config))
  w = ip.train_windows(config, videos['train'])
  assert sorted(w.lengths) == sorted(len(v.x) for v in videos['train'])
  assert w.win_len == max(w.lengths)


# ------------------------------------------------------------------------------------------------
# Late fusion and the pipeline, on one set of tiny runs (valence: egemaps weak, fasttext strong)


@pytest.fixture(scope='module')
def pipeline(tiny_tree, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('reproduce'))
  runs = reproduce.run(
    out,
    tiny_tree,
    config_name='tiny',
    features=('egemaps', 'fasttext'),
    early_fusion=(),
    targets=('valence',),
  )
  return out, runs


def test_late_fusion_trains_on_the_runs_and_beats_the_worse_input(pipeline):
  _, runs = pipeline
  assert [(r.kind, r.inputs) for r in runs] == [
    ('unimodal', 'egemaps'),
    ('unimodal', 'fasttext'),
    ('late fusion', 'all runs above'),
  ]
  devel = [r.results['devel']['valence']['ccc'] for r in runs]
  assert devel[2] > min(devel[:2]) + 0.05, devel
  late = runs[2].workdir
  stats = normalization.NormStats.load(os.path.join(late, 'norm_stats.npz'))
  assert stats.names == ['run:egemaps/valence', 'run:fasttext/valence'] and stats.dims == [1, 1]
  assert len(runs[2].results['seeds']) == 5
  preds = lambda w: sorted(os.listdir(os.path.join(w, 'predictions', 'valence')))
  assert preds(late) == preds(runs[0].workdir)  # every video of every partition
  # What late fusion logs of each input: the choice its CSVs come from, and who wrote them.
  seed = runs[0].results['seed']
  assert fusion.written_choice(runs[0].workdir) == (
    f'predictions of seed {seed} (eval_seed best, best epoch '
    f'{runs[0].results["best_epoch"]}) written by train, scored in results.json'
  )


def test_runs_without_this_versions_predictions_json_are_refused(pipeline, tmp_path):
  """predictions.json says what a run's predictions/ are: late fusion and compare refuse a run
  without it (another version's, or one killed before it) or with one lacking a field, instead
  of reading the predictions as an unrecorded choice."""
  _, runs = pipeline
  run = str(tmp_path / 'egemaps')
  shutil.copytree(runs[0].workdir, run)
  path = os.path.join(run, 'predictions.json')
  with open(path, encoding='utf-8') as f:
    written = json.load(f)

  def refused(message):  # by late fusion and by compare alike
    for read in (fusion.written_choice, compare.Run):
      with pytest.raises(MuseError) as e:
        read(run)
      assert str(e.value) == message

  os.remove(path)
  refused(
    f'{path}: not found, so {run} is unfinished or of another version of '
    'muse_jax (this one writes it with predictions/); rerun its training, '
    'or retrain it in a new --workdir'
  )
  del written['results']
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(written, f)
  refused(
    f'{path}: written by another version of muse_jax (no results); '
    'retrain the run in a new --workdir'
  )


def test_late_fusion_evaluate_restores_the_same_model(pipeline):
  out, runs = pipeline
  late = runs[2]
  config = config_util.load_config(os.path.join(helpers.REPO, 'configs', 'late_fusion.py'))
  config.data_root, config.data_dir = _data(out)
  config.targets, config.fusion_runs = ('valence',), ','.join(r.workdir for r in runs[:2])
  again = modes.evaluate(config, late.workdir)
  assert again['devel'] == late.results['devel']
  # The config it was trained with, read back (configs/workdir.py): its own model fields.
  from configs import workdir  # noqa: PLC0415

  again = modes.evaluate(workdir.get_config(late.workdir), late.workdir)
  assert again['devel'] == late.results['devel']


def _data(out):
  """(data_root, data_dir) the pipeline's runs used."""
  with open(os.path.join(out, 'runs', 'valence', 'egemaps', 'config.json')) as f:
    c = json.load(f)
  return c['data_root'], c['data_dir']


def test_missing_predictions_name_the_run_target_and_video(pipeline, tmp_path):
  out, runs = pipeline
  broken = str(tmp_path / 'fasttext')
  shutil.copytree(runs[1].workdir, broken, ignore=shutil.ignore_patterns('checkpoints', 'tb'))
  vid = sorted(os.listdir(os.path.join(broken, 'predictions', 'valence')))[0][:-4]
  os.remove(os.path.join(broken, 'predictions', 'valence', f'{vid}.csv'))
  config = config_util.load_config('late_fusion')
  config.data_root, config.data_dir = _data(out)
  config.targets, config.fusion_runs = ('valence',), f'{runs[0].workdir},{broken}'
  with pytest.raises(
    MuseError,
    match=rf'run {broken} has no valence predictions for \w+ video '
    rf'{vid}',
  ):
    sources.load_videos(config_util.parse(config))
  config.targets = ('arousal',)  # the runs predict valence only
  with pytest.raises(MuseError, match='no arousal predictions'):
    sources.load_videos(config_util.parse(config))


def test_fusion_runs_must_be_finished_runs_with_distinct_names(pipeline, tmp_path):
  out, runs = pipeline
  config = config_util.load_config('late_fusion')
  config.data_root, config.data_dir = _data(out)
  config.fusion_runs = f'{runs[0].workdir},{tmp_path}/egemaps'
  with pytest.raises(MuseError, match='share the name'):
    config_util.validate_config(config)
  config.fusion_runs = f'{runs[0].workdir},{tmp_path}/nothing'
  with pytest.raises(MuseError, match='no config.json'):
    sources.load_videos(config_util.parse(config))


def test_predictions_align_by_timestamp_and_may_end_early_only_without_labels(tmp_path):
  run = tmp_path / 'r'
  os.makedirs(run / 'predictions' / 'valence')
  (run / 'config.json').write_text(json.dumps({'data_root': str(tmp_path)}))
  (run / 'predictions.json').write_text(
    json.dumps(
      {
        'written_by': 'train',
        'what': 'seed 1',
        'eval_seed': 'best',
        'seed': 1,
        'best_epoch': 1,
        'results': 'results.json',
      }
    )
  )
  t = 1000 + 250 * np.arange(6)

  def video(vid, labelled):
    return Video(
      vid,
      t,
      np.ones(6, np.int32),
      np.zeros((6, 3), np.float32),
      np.zeros((6, 2), np.float32),
      ('arousal', 'valence'),
      (labelled, labelled),
    )

  def predict(vid, ts):
    rows = ''.join(f'{x},{x / 1000},1\n' for x in ts)
    path = run / 'predictions' / 'valence' / f'{vid}.csv'
    path.write_text('timestamp,value,segment_id\n' + rows)

  predict('1', np.r_[750, t])  # an extra row before the grid: ignored
  predict('2', t[:4])  # unlabelled: ends 2 frames early
  grid = {'train': [video('1', True)], 'test': [video('2', False)]}
  out = fusion.load_runs([str(run)], ['valence'], str(tmp_path), grid)['run:r/valence']
  np.testing.assert_allclose(out['train'][0].x[:, 0], t / 1000)
  assert len(out['test'][0].timestamp) == 4 and out['test'][0].x.shape == (4, 1)
  predict('1', t[:4])  # labelled: must cover the grid
  with pytest.raises(MuseError, match=r'no prediction for timestamp 2000 of train video 1'):
    fusion.load_runs([str(run)], ['valence'], str(tmp_path), grid)


def test_reproduce_cli_resumes_and_writes_the_table(pipeline, tiny_tree):
  out, runs = pipeline
  cmd = [
    sys.executable,
    '-m',
    'muse_jax.reproduce',
    f'--out={out}',
    f'--root={tiny_tree}',
    '--config=tiny',
    '--features=egemaps,fasttext',
    '--early_fusion=',
    '--targets=valence',
  ]
  proc = helpers.run(cmd, helpers.REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stderr.count('finished, skipped') == 3  # nothing retrained
  with open(os.path.join(out, 'results.md')) as f:
    text = f.read()
  assert text.splitlines()[0].startswith('| run | inputs | valence devel | valence test |')
  for r in runs:
    assert f'{r.results["devel"]["valence"]["ccc"]:.4f}' in text
  assert (
    'valence devel, best seed | valence devel, seed mean ± std (seeds) | valence ensemble'
    in (text.splitlines()[0])
  )
  late = next(r for r in runs if r.kind == 'late fusion').results  # 5 seeds
  ens = late['ensemble']
  assert (
    f'± {late["devel_ccc_std"]:.4f} (5) | {ens["devel"]["valence"]["ccc"]:.4f} / '
    f'{ens["test"]["valence"]["ccc"]:.4f} |'
  ) in text
  assert 'Late fusion minus the best first-level run' in text
  # Each run's devel cell carries its interval; late fusion's gain carries the paired one, the
  # same figures `python -m muse_jax.compare BEST LATE` gives (it reads late-fusion runs too).
  for r in runs:
    ci = r.results['devel']['valence']['ccc_ci95']
    assert f'{r.results["devel"]["valence"]["ccc"]:.4f} [{ci[0]:.2f}, {ci[1]:.2f}]' in text
  first = [r for r in runs if r.kind != 'late fusion']
  best = max(first, key=lambda r: r.results['devel']['valence']['ccc'])
  c = compare.compare(best.workdir, next(r for r in runs if r.kind == 'late fusion').workdir)
  v = c['targets']['valence']
  assert (
    f'valence {v["diff"]:+.4f} [{v["diff_ci95"][0]:+.4f}, {v["diff_ci95"][1]:+.4f}], '
    f'P(not better) {v["p_b_not_better"]:.3f} (vs {best.inputs})'
  ) in text
  assert c['seeds'] == {}  # the first-level run trained one seed: no seed-level view
  assert text in proc.stdout + '\n'
  # Finished runs wrote the best seed's predictions: another eval_seed is refused, not mixed in.
  proc = helpers.run(cmd + ['--eval_seed=ensemble'], helpers.REPO, timeout=300)
  assert proc.returncode == 2 and 'started with another config (differs in eval_seed)' in (
    proc.stderr
  ), proc.stderr[-2000:]
