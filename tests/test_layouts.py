"""Every MuSe-family layout end to end, on generated trees with each release's quirks.

What holds on any tree of a layout: it is detected from the folders, its targets are its label
folders, its grid step is read from the data and held with the model, predictions come in its own
column order for every video, and a model never silently reads data on another grid.
"""

import json
import os

import numpy as np
import pandas as pd
import pytest

from muse_jax import config_util
from muse_jax import modes
from muse_jax import predictor as predictor_lib
from muse_jax import train
from muse_jax.data import build
from muse_jax.data import demo
from muse_jax.data import layout
from muse_jax.data import reader
from muse_jax.errors import MuseError

from helpers import tiny_config
import scripted

NEW_LAYOUTS = [k for k in demo.LAYOUTS if k != 'muse2020']  # muse2020: the rest of the suite


@pytest.fixture(scope='module')
def trees(tmp_path_factory) -> dict:
  """{layout name: demo summary} of one tiny tree per layout (egemaps only), each under its own
  release root."""
  base = tmp_path_factory.mktemp('layouts')
  return {
    name: demo.make_tree(str(base / name), 'tiny', 0, 'egemaps', name) for name in demo.LAYOUTS
  }


def _release_root(summary) -> str:
  """The folder a user points --data_root at: the release root (the task's parent for 2021)."""
  root = summary['root']
  return os.path.dirname(root) if demo.LAYOUTS[summary['layout']].task else root


@pytest.mark.parametrize('name', list(demo.LAYOUTS))
def test_each_layout_is_detected_and_built_with_its_targets_and_grid(trees, name, tmp_path):
  s = trees[name]
  for root in {_release_root(s), s['root']}:  # the release root or the task folder itself
    lay = layout.resolve(root)
    assert (lay.root, lay.task, lay.kind) == (s['root'], s['task'], demo.LAYOUTS[name].kind)
    assert lay.targets() == tuple(sorted(s['targets'], key=reader.natural_key))
  part = reader.read_partition(s['root'])
  assert {p: [v for v, q in part.items() if q == p] for p in layout.SPLITS} == s['splits']
  build.ensure_built(s['root'], str(tmp_path), 'egemaps')
  fs = build.FeatureSet(str(tmp_path), 'egemaps')
  assert fs.step_ms == s['step_ms'] and set(fs.targets) == set(s['targets'])
  unlabelled = set(s['quirks']['unlabelled_test_ids'])
  for split in layout.SPLITS:
    assert fs.ids(split) == s['splits'][split]
    for vid in fs.ids(split):
      v = fs.read(split, vid)
      assert reader.grid_step(v.timestamp) == s['step_ms']
      assert v.has_labels == (vid not in unlabelled)
      if v.has_labels:  # on the label grid, whatever the feature file had around it
        path = layout.of(s['root']).label_path(s['targets'][0], vid)
        np.testing.assert_array_equal(v.timestamp, pd.read_csv(path)['timestamp'].to_numpy())
        assert np.isfinite(v.y).all()


def test_a_root_with_several_tasks_asks_for_one(tmp_path):
  root = str(tmp_path / 'muse2021')
  demo.make_tree(root, 'tiny', 0, 'egemaps', 'muse2021_stress')
  demo.make_tree(root, 'tiny', 0, 'egemaps', 'muse2021_physio')
  with pytest.raises(
    MuseError,
    match=r'holds several tasks: c3_muse_stress, c4_muse_physio; '
    r'choose one with --config\.task=NAME',
  ):
    layout.resolve(root)
  assert layout.resolve(root, 'c4_muse_physio').targets() == ('anno12_EDA',)
  with pytest.raises(
    MuseError,
    match=r"no task 'c2_muse_sent' here; found: c3_muse_stress, "
    r'c4_muse_physio',
  ):
    layout.resolve(root, 'c2_muse_sent')
  config = tiny_config(
    root, str(tmp_path / 'tfds'), targets=('valence',), feature_sets=('egemaps',)
  )
  with pytest.raises(MuseError, match='several tasks'):
    config_util.validate_config(config)
  config.task = 'c4_muse_physio'  # the default target (valence) is not one of physio's
  with pytest.raises(
    MuseError,
    match=r"unknown target 'valence': .*c4_muse_physio/label_segments "
    r'holds label folders for anno12_EDA',
  ):
    config_util.validate_config(config)
  config.targets = ('all',)
  spec = config_util.validate_config(config)
  assert spec.targets == ('anno12_EDA',) and spec.data_root.endswith('c4_muse_physio')
  assert spec.data_dir == os.path.join(str(tmp_path / 'tfds'), 'c4_muse_physio')


def test_no_layout_is_one_line_naming_the_expected_ones(tmp_path):
  (tmp_path / 'metadata').mkdir()
  with pytest.raises(
    MuseError,
    match=r'no known layout .*MuSe 2020 release root.*MuSe '
    r'2021/2022 task folder.*plain layout',
  ):
    layout.resolve(str(tmp_path))


def test_loss_weights_by_target_name(trees, tmp_path):
  config = tiny_config(
    trees['muse2021_stress']['root'],
    str(tmp_path),
    targets=('all',),
    loss_weights='valence=2,physio-arousal=0.5',
  )
  spec = config_util.validate_config(config)
  assert spec.targets == ('arousal', 'physio-arousal', 'valence')
  assert spec.loss_weights == (1.0, 0.5, 2.0)
  config.loss_weights = 'dominance=1'
  with pytest.raises(MuseError, match="loss_weights names 'dominance', not a target"):
    config_util.validate_config(config)
  config.loss_weights = '1,2'
  with pytest.raises(MuseError, match=r'loss_weights has 2 values for 3 targets'):
    config_util.validate_config(config)


def _predictions(folder, target, vid):
  return pd.read_csv(os.path.join(folder, target, f'{vid}.csv'))


@pytest.mark.parametrize('name', NEW_LAYOUTS)
def test_train_evaluate_predict_on_each_layout(trees, name, tmp_path, monkeypatch):
  # Whether a layout's tiny tree beats its untrained model on devel (which a run must, to write
  # anything) is float-level luck on some: the schedule sees scripted scores (tests/scripted.py).
  scripted.script_devel(monkeypatch)
  s = trees[name]
  dl = demo.LAYOUTS[name]
  config = tiny_config(
    _release_root(s), str(tmp_path / 'tfds'), targets=('all',), feature_sets=('egemaps',)
  )
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, workdir)
  assert results['step_ms'] == s['step_ms'] and results['task'] == s['task']
  assert set(results['targets']) == set(s['targets'])
  assert np.isfinite(results['devel']['mean_ccc'])
  assert len(results['seeds']) == config.num_seeds
  # Predictions: the release's column order, every video of every partition, on its grid.
  want_cols = list(layout.of(s['root']).label_columns)
  for ids in s['splits'].values():
    for vid in ids:
      for target in s['targets']:
        p = _predictions(os.path.join(workdir, 'predictions'), target, vid)
        assert list(p.columns) == want_cols and np.isfinite(p['value']).all()
        assert reader.grid_step(p['timestamp'].to_numpy()) == s['step_ms']
        label = layout.of(s['root']).label_path(target, vid)
        if os.path.exists(label):  # on its label file's rows (physio: also withheld NaN files)
          np.testing.assert_array_equal(p['timestamp'], pd.read_csv(label)['timestamp'])
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    assert json.load(f)['targets'] == list(results['targets'])  # 'all' as resolved
  ev = modes.evaluate(config, workdir)
  assert ev['devel'] == results['devel'] and ev['step_ms'] == s['step_ms']
  pr = modes.predict(config, workdir)
  assert pr['videos'] == {k: len(v) for k, v in s['splits'].items()}
  assert dl.step_ms == s['step_ms']


def test_a_model_refuses_data_on_another_grid(trees, tmp_path, monkeypatch):
  """A 500 ms model fed a 250 ms tree (same features, same targets) stops with one line."""
  stress = trees['muse2021_stress']
  config = tiny_config(
    stress['root'],
    str(tmp_path / 'tfds'),
    targets=('arousal', 'valence'),
    feature_sets=('egemaps',),
    num_epochs=2,
  )
  workdir = str(tmp_path / 'run')
  # Whether 2 epochs beat the untrained model is float-level luck: scripted (tests/scripted.py).
  scripted.script_devel(monkeypatch)
  train.train_and_evaluate(config, workdir)
  other = tiny_config(
    trees['muse2021_wilder']['root'],
    str(tmp_path / 'tfds_250'),
    targets=('arousal', 'valence'),
    feature_sets=('egemaps',),
    num_epochs=2,
  )
  with pytest.raises(
    MuseError,
    match=r'this data is on a 250 ms grid, but the model in .* '
    r'learnt on a 500 ms grid',
  ):
    modes.predict(other, workdir)
  predictor = predictor_lib.Predictor(workdir)
  assert predictor.step_ms == 500
  x = np.zeros((20, predictor.dims[0]), np.float32)
  assert predictor(x, np.arange(20) * 500).shape == (20, 2)
  with pytest.raises(MuseError, match=r'on a 250 ms grid, but the model learnt on a 500 ms grid'):
    predictor(x, np.arange(20) * 250)


def test_features_are_written_on_the_trees_own_grid(trees, tmp_path):
  import shutil  # noqa: PLC0415

  from muse_jax.features import writer  # noqa: PLC0415

  root = str(tmp_path / 'c3_muse_stress')
  shutil.copytree(trees['muse2021_stress']['root'], root)
  assert writer.tree_step(root) == 500
  path = writer.write_features(
    root, 'mine', 'new', np.zeros((4, 2)), ['a', 'b'], step_ms=writer.tree_step(root)
  )
  assert path == os.path.join(root, 'feature_segments', 'mine', 'new.csv')
  assert pd.read_csv(path)['timestamp'].tolist() == [0, 500, 1000, 1500]
  assert writer.tree_step(str(tmp_path / 'new_tree')) == 250  # nothing to tell: MuSe-CaR's
  with pytest.raises(MuseError, match='--step_ms 0.5'):
    writer.check_step(0.5)


def _plain_tree(tmp_path, label_t, feat_t, partition='1,train\n2,devel\n', targets=('a',)):
  root = tmp_path / 'plain'
  for d in ['metadata', 'features/f'] + [f'labels/{t}' for t in targets]:
    (root / d).mkdir(parents=True, exist_ok=True)
  (root / 'metadata' / 'partition.csv').write_text('Id,Partition\n' + partition)
  for vid in ('1', '2'):
    (root / 'features' / 'f' / f'{vid}.csv').write_text(
      'timestamp,segment_id,x\n' + ''.join(f'{t},1,{t / 1000}\n' for t in feat_t)
    )
    for target in targets:
      (root / 'labels' / target / f'{vid}.csv').write_text(
        'timestamp,segment_id,value\n' + ''.join(f'{t},1,0.5\n' for t in label_t)
      )
  return str(root)


def test_grid_steps_gaps_and_jitter(tmp_path):
  # Labels with a gap (an unannotated stretch), features continuous: rows in the gap dropped.
  root = _plain_tree(tmp_path, [0, 100, 200, 500, 600], range(0, 800, 100))
  v, stats = reader.read_video_with_stats(root, 'f', '1', 'train')
  assert v.timestamp.tolist() == [0, 100, 200, 500, 600] and reader.grid_step(v.timestamp) == 100
  np.testing.assert_allclose(v.x[:, 0], [0, 0.1, 0.2, 0.5, 0.6])
  assert stats['dropped_rows'] == 3 and stats['step_ms'] == 100
  # A label row off the grid (jitter): one line naming the file and line.
  root = _plain_tree(tmp_path / 'j', [0, 100, 200, 301, 400], range(0, 500, 100))
  with pytest.raises(
    MuseError,
    match=r'a/1\.csv: line 5: timestamp 301 is 101 ms after the row '
    r'before, not a multiple of the file\'s grid step 100 ms',
  ):
    reader.read_video(root, 'f', '1', 'train')


def test_partition_without_header_and_2020_root_holding_2021_tasks(tmp_path, trees):
  root = _plain_tree(tmp_path, [0, 100], [0, 100])
  (tmp_path / 'plain' / 'metadata' / 'partition.csv').write_text('1,train\n2,devel\n')
  with pytest.raises(MuseError, match=r'line 1 \(1,train\) is a video, not a header'):
    reader.read_partition(root)
  (tmp_path / 'plain' / 'metadata' / 'partition.csv').write_text('vid_name,age,fold\n1,3,train\n')
  assert reader.read_partition(root) == {'1': 'train'}  # the baselines' reading: first, last
  # A 2020 release root that also holds a 2021 task folder is still the 2020 tree.
  import shutil  # noqa: PLC0415

  both = tmp_path / 'both'
  shutil.copytree(trees['muse2020']['root'], both)
  shutil.copytree(trees['muse2021_physio']['root'], both / 'c4_muse_physio')
  assert layout.resolve(str(both)).kind == 'muse2020'
  assert layout.resolve(str(both), 'c4_muse_physio').targets() == ('anno12_EDA',)
  with pytest.raises(MuseError, match='c1_muse_wild folder of a MuSe 2020 release; point'):
    layout.resolve(str(both / 'c1_muse_wild'))


def test_a_target_without_usable_labels_blocks_only_runs_on_it(tmp_path):
  root = _plain_tree(tmp_path, [0, 100, 200], [0, 100, 200], targets=('a', 'b'))
  (tmp_path / 'plain' / 'labels' / 'b' / '1.csv').write_text(
    'timestamp,segment_id,value\n0,1,\n100,1,\n200,1,\n'
  )  # only NaN
  os.remove(tmp_path / 'plain' / 'labels' / 'b' / '2.csv')
  for vid in ('1', '2'):
    v = reader.read_video(root, 'f', vid, 'train')
    assert v.labelled == (True, False) and v.timestamp.tolist() == [0, 100, 200]
  (tmp_path / 'plain' / 'labels' / 'a' / '1.csv').write_text(
    'timestamp,segment_id,value\n0,1,nan\n100,1,nan\n200,1,nan\n'
  )
  with pytest.raises(MuseError, match=r'a/1\.csv: label file holds only NaN for train video 1'):
    reader.read_video(root, 'f', '1', 'train')
  assert not reader.read_video(root, 'f', '1', 'test').labelled[1]
