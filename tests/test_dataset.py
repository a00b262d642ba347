"""Reader + tfds build on tiny generated trees: values, splits, quirks, errors, staleness."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds

from muse_jax.data import build
from muse_jax.data import demo
from muse_jax.data import layout
from muse_jax.data import reader
from muse_jax.errors import MuseError

SETS = ('egemaps', 'fasttext', 'vggface', 'vggish')


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  """A tiny tree with a user-named 128-d set; egemaps holds the longer file, vggish the shorter."""
  root = str(tmp_path_factory.mktemp('ds') / 'root')
  summary = demo.make_tree(
    root, scale='tiny', seed=3, features='egemaps,fasttext,vggface,vggish:128'
  )
  assert summary['quirks']['longer_feature_file']['feature_set'] == 'egemaps'
  assert summary['quirks']['shorter_feature_file']['feature_set'] == 'vggish'
  return root, summary


@pytest.fixture(scope='module')
def built(tree, tmp_path_factory):
  root, _ = tree
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  build.ensure_built(root, data_dir, SETS)
  return data_dir, {name: build.load_feature_set(data_dir, name) for name in SETS}


def by_id(loaded):
  return {v.id: (split, v) for split, vs in loaded.items() for v in vs}


def csv_values(path):
  return pd.read_csv(path).to_numpy(np.float64)


def test_built_dataset_equals_the_csvs(tree, built):
  root, summary = tree
  _, loaded = built
  ids = [
    summary['splits']['train'][0],
    summary['splits']['devel'][0],
    summary['quirks']['longer_feature_file']['id'],
  ]
  for name in SETS:
    videos = by_id(loaded[name])
    for vid in ids:
      _, v = videos[vid]
      feats = csv_values(layout.feature_path(root, name, vid))
      ar = pd.read_csv(layout.label_path(root, 'arousal', vid))
      va = pd.read_csv(layout.label_path(root, 'valence', vid))
      n = len(ar)
      assert v.x.dtype == np.float32 and v.timestamp.dtype == np.int64
      assert v.segment_id.dtype == np.int32 and v.x.shape[0] == n
      np.testing.assert_array_equal(v.x[: len(feats)], feats[:n, 2:].astype(np.float32))
      np.testing.assert_array_equal(v.timestamp, ar['timestamp'].to_numpy())
      np.testing.assert_array_equal(v.segment_id, ar['segment_id'].to_numpy())
      np.testing.assert_array_equal(v.label('arousal'), ar['value'].to_numpy(np.float32))
      np.testing.assert_array_equal(v.label('valence'), va['value'].to_numpy(np.float32))
      assert v.has('arousal') is True and v.has('valence') is True


def test_splits_follow_partition_and_duplicates_are_dropped(tree, built):
  root, summary = tree
  _, loaded = built
  part = reader.read_partition(root)
  assert list(part) == sorted(part, key=int)  # natural (numeric) order
  dup = summary['quirks']['duplicated_partition_id']
  with open(os.path.join(root, layout.PARTITION_CSV)) as f:
    assert sum(line.split(',')[0] == dup for line in f) == 2
  for name in SETS:
    for split in layout.SPLITS:
      ids = [v.id for v in loaded[name][split]]
      assert ids == summary['splits'][split]  # once each, natural order


def test_test_videos_without_labels_get_unlabelled_examples(tree, built):
  root, summary = tree
  _, loaded = built
  missing = summary['quirks']['unlabelled_test_ids']
  assert missing
  videos = by_id(loaded['egemaps'])
  for vid in missing:
    split, v = videos[vid]
    assert split == 'test' and not v.has('arousal') and not v.has('valence')
    assert np.isnan(v.label('arousal')).all() and np.isnan(v.label('valence')).all()
    feats = csv_values(layout.feature_path(root, 'egemaps', vid))
    np.testing.assert_array_equal(v.timestamp, feats[:, 0])  # the feature file's own grid
  labelled = [v for v in loaded['egemaps']['test'] if v.id not in missing]
  assert labelled and all(v.has('valence') for v in labelled)


def test_longer_feature_file_is_truncated_and_shorter_one_padded(tree, built):
  root, summary = tree
  _, loaded = built
  q = summary['quirks']['longer_feature_file']
  _, v = by_id(loaded[q['feature_set']])[q['id']]
  n = len(pd.read_csv(layout.label_path(root, 'arousal', q['id'])))
  feats = csv_values(layout.feature_path(root, q['feature_set'], q['id']))
  assert len(feats) == n + q['extra_rows'] and v.x.shape[0] == n

  q = summary['quirks']['shorter_feature_file']
  _, v = by_id(loaded[q['feature_set']])[q['id']]
  feats = csv_values(layout.feature_path(root, q['feature_set'], q['id']))[:, 2:]
  labels = pd.read_csv(layout.label_path(root, 'arousal', q['id']))
  assert len(feats) == len(labels) - q['missing_rows']
  np.testing.assert_array_equal(v.timestamp, labels['timestamp'].to_numpy())
  np.testing.assert_array_equal(v.x[: len(feats)], feats.astype(np.float32))
  np.testing.assert_array_equal(
    v.x[len(feats) :], np.repeat(feats[-1:].astype(np.float32), q['missing_rows'], 0)
  )


def test_user_named_feature_folder_is_discovered(tree, built):
  root, _ = tree
  _, loaded = built
  assert reader.discover_feature_sets(root) == {
    'egemaps': 88,
    'fasttext': 300,
    'vggface': 512,
    'vggish': 128,
  }
  assert all(v.x.shape[1] == 128 for vs in loaded['vggish'].values() for v in vs)


def test_nan_and_zero_rows_kept_inf_becomes_nan(tree, built, tmp_path):
  root, summary = tree
  _, loaded = built
  nan = sum(np.isnan(v.x).sum() for vs in loaded['vggface'].values() for v in vs)
  zero = sum((v.x == 0).all(1).sum() for vs in loaded['vggface'].values() for v in vs)
  assert nan == summary['quirks']['nan_cells']['vggface'] > 0
  assert zero >= 1
  info = build.build_info(built[0], 'vggface')
  assert sum(s['nan_cells'] for s in info['stats'].values()) == nan
  copy = small_copy(root, tmp_path, 'egemaps')
  vid = summary['splits']['train'][0]
  edit_line(layout.feature_path(copy, 'egemaps', vid), 3, lambda c: c[:4] + ['-inf'] + c[5:])
  v = reader.read_video(copy, 'egemaps', vid, 'train')
  assert np.isnan(v.x[1, 2]) and np.isfinite(v.x[0]).all()


def test_2021_label_column_order_is_read_by_name(tree, tmp_path):
  root, summary = tree
  copy = small_copy(root, tmp_path, 'egemaps')
  vid = summary['splits']['train'][0]
  before = reader.read_video(copy, 'egemaps', vid, 'train')
  path = layout.label_path(copy, 'valence', vid)
  pd.read_csv(path)[['timestamp', 'segment_id', 'value']].to_csv(path, index=False)
  after = reader.read_video(copy, 'egemaps', vid, 'train')
  for k in ('y', 'segment_id', 'timestamp'):
    np.testing.assert_array_equal(getattr(before, k), getattr(after, k))


def test_empty_split_is_fine(tree, tmp_path):
  root, _ = tree
  copy = small_copy(root, tmp_path, 'egemaps')
  path = os.path.join(copy, layout.PARTITION_CSV)
  with open(path) as f:
    lines = [l for l in f if not l.strip().endswith(',devel')]
  with open(path, 'w') as f:
    f.writelines(lines)
  build.ensure_built(copy, str(tmp_path / 'tfds'), 'egemaps')
  loaded = build.load_feature_set(str(tmp_path / 'tfds'), 'egemaps')
  assert loaded['devel'] == [] and loaded['train'] and loaded['test']


def test_stale_build_is_rebuilt_others_untouched(tree, tmp_path):
  root, summary = tree
  copy = small_copy(root, tmp_path, 'egemaps', 'fasttext')
  data_dir = str(tmp_path / 'tfds')
  build.ensure_built(copy, data_dir, ['egemaps', 'fasttext'])
  stamp = lambda name: (
    os.stat(os.path.join(build.builder_dir(data_dir, name), 'dataset_info.json')).st_mtime_ns
  )
  first = {n: stamp(n) for n in ('egemaps', 'fasttext')}
  build.ensure_built(copy, data_dir, 'egemaps,fasttext')
  assert {n: stamp(n) for n in first} == first  # up to date: nothing rebuilt
  shutil.copytree(
    os.path.join(copy, layout.KINDS['muse2020'].feature_dir, 'egemaps'),
    os.path.join(copy, layout.KINDS['muse2020'].feature_dir, 'mine'),
  )
  build.ensure_built(copy, data_dir, ['egemaps', 'mine'])
  assert stamp('egemaps') == first['egemaps']  # a new folder does not rebuild others
  vid = summary['splits']['train'][1]
  edit_line(layout.feature_path(copy, 'egemaps', vid), 2, lambda c: c[:2] + ['12345.5'] + c[3:])
  build.ensure_built(copy, data_dir, ['egemaps', 'fasttext'])
  assert stamp('egemaps') != first['egemaps'] and stamp('fasttext') == first['fasttext']
  _, v = by_id(build.load_feature_set(data_dir, 'egemaps'))[vid]
  assert v.x[0, 0] == np.float32(12345.5)


def test_load_works_in_a_fresh_process(built):
  data_dir, loaded = built
  code = (
    'import json, sys; from muse_jax.data import build; '
    'd = build.load_feature_set(sys.argv[1], "vggish"); '
    'print(json.dumps({s: [[v.id, v.x.shape[1]] for v in vs] '
    'for s, vs in d.items()}))'
  )
  out = subprocess.run(
    [sys.executable, '-c', code, data_dir], capture_output=True, text=True, check=True, timeout=120
  ).stdout
  got = json.loads(out.strip().splitlines()[-1])
  assert got == {s: [[v.id, 128] for v in vs] for s, vs in loaded['vggish'].items()}


def test_record_index_is_stored_and_matches_the_data(built):
  data_dir, loaded = built
  for name in ('egemaps', 'vggish'):
    stored = build.build_info(data_dir, name)['records']
    path = build.builder_dir(data_dir, name)
    assert stored == build.record_index(tfds.builder_from_directory(path).as_data_source())
    fs = build.FeatureSet(data_dir, name)
    assert fs.dim == loaded[name]['train'][0].x.shape[1]
    for split, vs in loaded[name].items():
      assert fs.ids(split) == [v.id for v in vs]
      assert sorted(stored.get(split, [])) == sorted([v.id, len(v.timestamp)] for v in vs)
      for v in vs[:2]:
        got = fs.read(split, v.id)
        assert fs.rows(split, v.id) == len(v.timestamp)
        for k in ('id', 'timestamp', 'segment_id', 'x', 'y', 'targets', 'labelled'):
          np.testing.assert_array_equal(getattr(got, k), getattr(v, k))


def test_build_of_another_version_is_rebuilt_never_read_with_defaults(
  tree, built, tmp_path, caplog
):
  """A muse_build.json without a field this version writes (here the record index) is another
  version's build: ensure_built rebuilds it like a stale one, and FeatureSet, which never
  indexes a build in memory instead, refuses it with the command that rebuilds it."""
  root, _ = tree
  data_dir, loaded = built
  copy = str(tmp_path / 'd')
  shutil.copytree(data_dir, copy)
  path = build.builder_dir(copy, 'vggish')
  info_path = os.path.join(path, build.FINGERPRINT_FILE)
  info = json.load(open(info_path))
  del info['records']
  json.dump(info, open(info_path, 'w'))
  with pytest.raises(MuseError) as e:
    build.FeatureSet(copy, 'vggish')
  assert str(e.value) == (
    f'{path}: written by another version of muse_jax (no records in '
    f'{build.FINGERPRINT_FILE}); rebuild it: python -m muse_jax.data.build '
    f'--root ROOT --data_dir {copy} --features vggish'
  )
  with caplog.at_level('WARNING'):
    build.ensure_built(root, copy, ['vggish'])
  assert (
    'stale build' in caplog.text
    and 'written by another version of muse_jax (no records)' in caplog.text
  )
  assert build.build_info(copy, 'vggish')['records']
  again = build.load_feature_set(copy, 'vggish')
  for split, vs in loaded['vggish'].items():
    assert [v.id for v in again[split]] == [v.id for v in vs]
    for a, b in zip(again[split], vs):
      np.testing.assert_array_equal(a.x, b.x)
  # A record index that does not fit the stored data is refused too (not re-indexed).
  info = json.load(open(info_path))
  info['records']['train'] = info['records']['train'][1:]
  json.dump(info, open(info_path, 'w'))
  with pytest.raises(MuseError, match='its record index does not match the data; delete'):
    build.FeatureSet(copy, 'vggish')


def test_large_split_builds_without_tensorflow(tree, built, tmp_path, monkeypatch):
  """Splits over tfds' 1 GB in-memory buffer go through its bucket files (here: every split)."""
  from tensorflow_datasets.core import shuffle

  root, _ = tree
  data_dir, loaded = built
  monkeypatch.setattr(shuffle, 'MAX_MEM_BUFFER_SIZE', 1)
  build.ensure_built(root, str(tmp_path / 'd'), ['egemaps'])
  again = build.load_feature_set(str(tmp_path / 'd'), 'egemaps')
  for split, vs in loaded['egemaps'].items():
    assert [v.id for v in again[split]] == [v.id for v in vs]
    for a, b in zip(again[split], vs):
      np.testing.assert_array_equal(a.x, b.x)
  assert not list((tmp_path / 'd').rglob('bucket_*'))


def test_concurrent_builds_of_one_set(tree, tmp_path):
  root, _ = tree
  copy = small_copy(root, tmp_path, 'egemaps')
  code = (
    'import sys; from muse_jax.data import build; build.ensure_built(*sys.argv[1:3], "egemaps")'
  )
  procs = [
    subprocess.Popen(
      [sys.executable, '-c', code, copy, str(tmp_path / 'd')],
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
    )
    for _ in range(2)
  ]
  assert all(p.wait(timeout=120) == 0 for p in procs), [p.stderr.read()[-500:] for p in procs]
  assert build.load_feature_set(str(tmp_path / 'd'), 'egemaps')['train']


def test_cli(tree, tmp_path, capsys):
  root, _ = tree
  copy = small_copy(root, tmp_path, 'egemaps')
  assert build.main(['--root', copy, '--data_dir', str(tmp_path / 'd')]) == 0
  assert 'egemaps (88-d): train' in capsys.readouterr().out
  assert build.main(['--root', copy, '--data_dir', str(tmp_path / 'd'), '--features', 'x']) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and '\n' not in err and 'egemaps (88)' in err


# ------------------------------------------------------------------------------------------------
# Bad inputs: each one a single-line MuseError naming the file.


def small_copy(root, dst, *sets):
  """Partition, labels and the given feature sets of `root`, copied under `dst`."""
  out = os.path.join(str(dst), 'tree')
  for rel in ['metadata', layout.KINDS['muse2020'].label_dir] + [
    os.path.join(layout.KINDS['muse2020'].feature_dir, s) for s in sets
  ]:
    shutil.copytree(os.path.join(root, rel), os.path.join(out, rel))
  return out


def edit_line(path, line, fn):
  """Applies fn to the cells of 1-based `line` (fn returns cells, or None to delete the line)."""
  with open(path) as f:
    lines = f.read().splitlines()
  cells = fn(lines[line - 1].split(','))
  lines[line - 1 : line] = [] if cells is None else [','.join(cells)]
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def _write(path, text):
  with open(path, 'w') as f:
    f.write(text)


def _append(path, text):
  with open(path, 'a') as f:
    f.write(text)


def _rows(path, fn):
  with open(path) as f:
    lines = f.read().splitlines()
  _write(path, '\n'.join(fn(lines)) + '\n')


def _shift_times(path, ms):
  df = pd.read_csv(path)
  df['timestamp'] += ms
  df.to_csv(path, index=False)


# (case, mutation(root, vid, other), words the message must contain; {v}/{o} = vid/other)
FEAT = lambda r, v: layout.feature_path(r, 'egemaps', v)
AROUSAL = lambda r, v: layout.label_path(r, 'arousal', v)
VALENCE = lambda r, v: layout.label_path(r, 'valence', v)
PART = lambda r: os.path.join(r, layout.PARTITION_CSV)
BAD_INPUTS = [
  ('missing partition', lambda r, v, o: os.remove(PART(r)), ['partition.csv', 'not found']),
  ('empty partition file', lambda r, v, o: _write(PART(r), ''), ['partition.csv', 'empty']),
  (
    'header-only partition',
    lambda r, v, o: _write(PART(r), 'Id,Proposal\n'),
    ['partition.csv', 'empty partition'],
  ),
  (
    'unknown partition',
    lambda r, v, o: _append(PART(r), '999,validation\n'),
    ['partition.csv', "'validation'"],
  ),
  (
    'id in two partitions',
    lambda r, v, o: _append(PART(r), f'{v},devel\n'),
    ['partition.csv', 'video {v}'],
  ),
  ('missing feature file', lambda r, v, o: os.remove(FEAT(r, v)), ['egemaps/{v}.csv']),
  (
    'missing train labels',
    lambda r, v, o: (os.remove(AROUSAL(r, v)), os.remove(VALENCE(r, v))),
    ['arousal/{v}.csv', 'train'],
  ),
  ('empty feature csv', lambda r, v, o: _write(FEAT(r, v), ''), ['{v}.csv', 'empty file']),
  (
    'header-only label',
    lambda r, v, o: _rows(VALENCE(r, v), lambda ls: ls[:1]),
    ['valence/{v}.csv', 'header only'],
  ),
  (
    'short row',
    lambda r, v, o: edit_line(FEAT(r, v), 5, lambda c: c[:-1]),
    ['{v}.csv', 'line 5', 'fields'],
  ),
  (
    'long row',
    lambda r, v, o: edit_line(FEAT(r, v), 5, lambda c: c + ['1.0']),
    ['{v}.csv', 'line 5', 'fields'],
  ),
  (
    'non-numeric cell',
    lambda r, v, o: edit_line(FEAT(r, v), 4, lambda c: c[:2] + ['abc'] + c[3:]),
    ['{v}.csv', 'line 4', 'column 3', "'abc'"],
  ),
  (
    'non-numeric label',
    lambda r, v, o: edit_line(AROUSAL(r, v), 6, lambda c: [c[0], '0;5', c[2]]),
    ['arousal/{v}.csv', 'line 6', "'0;5'"],
  ),
  (
    'duplicated timestamp',
    lambda r, v, o: _rows(AROUSAL(r, v), lambda ls: ls[:3] + ls[2:]),
    ['arousal/{v}.csv', 'line 4', 'repeats'],
  ),
  (
    'out-of-order timestamps',
    lambda r, v, o: _rows(FEAT(r, v), lambda ls: ls[:2] + [ls[3], ls[2]] + ls[4:]),
    ['{v}.csv', 'line 4'],
  ),
  (
    'fractional timestamp',
    lambda r, v, o: edit_line(FEAT(r, v), 3, lambda c: ['250.5'] + c[1:]),
    ['{v}.csv', 'line 3', 'whole number'],
  ),
  (
    'wrong label columns',
    lambda r, v, o: _rows(VALENCE(r, v), lambda ls: ['time,value,segment_id'] + ls[1:]),
    ['valence/{v}.csv', 'label columns'],
  ),
  (
    'label grids disagree',
    lambda r, v, o: _rows(VALENCE(r, v), lambda ls: ls[:-1]),
    ['valence/{v}.csv', 'disagree'],
  ),
  (
    'dimension differs',
    lambda r, v, o: _rows(FEAT(r, o), lambda ls: [l.rsplit(',', 1)[0] for l in ls]),
    ['{o}.csv', '87', '88'],
  ),
  (
    'gap in feature rows',
    lambda r, v, o: edit_line(FEAT(r, v), 10, lambda c: None),
    ['{v}.csv', 'no feature row for label timestamp'],
  ),
  (
    'much shorter feature file',
    lambda r, v, o: _rows(FEAT(r, v), lambda ls: ls[:-20]),
    ['{v}.csv', 'truncated'],
  ),
  (
    'disjoint timestamps',
    lambda r, v, o: _shift_times(FEAT(r, v), 10_000_000),
    ['{v}.csv', 'do not overlap'],
  ),
  (
    'off-grid feature row',
    lambda r, v, o: _rows(
      FEAT(r, v),
      lambda ls: (
        ls[:5] + [','.join([str(int(ls[4].split(',')[0]) + 125)] + ls[4].split(',')[1:])] + ls[5:]
      ),
    ),
    ['{v}.csv', 'not on the label grid'],
  ),
]


@pytest.mark.parametrize('case,mutate,words', BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_one_line_error(tree, tmp_path, case, mutate, words):
  root, summary = tree
  copy = small_copy(root, tmp_path, 'egemaps')
  quirky = {summary['quirks']['longer_feature_file']['id']}
  train = [v for v in summary['splits']['train'] if v not in quirky]
  first = sorted(reader.read_partition(root), key=reader.natural_key)[0]  # defines D
  vid = train[0]
  other = next(v for v in train[1:] if v != first)
  mutate(copy, vid, other)
  with pytest.raises(MuseError) as e:
    build.ensure_built(copy, str(tmp_path / 'tfds'), ['egemaps'])
  msg = str(e.value)
  assert '\n' not in msg, case
  for w in words:
    assert w.format(v=vid, o=other) in msg, (case, msg)


def test_feature_set_errors(tree, tmp_path):
  root, _ = tree
  copy = small_copy(root, tmp_path, 'egemaps')
  with pytest.raises(MuseError, match=r"unknown feature set 'nosuch'.*egemaps \(88\)"):
    build.ensure_built(copy, str(tmp_path / 'd'), ['egemaps', 'nosuch'])
  os.makedirs(os.path.join(copy, layout.KINDS['muse2020'].feature_dir, 'vggish'))
  assert reader.discover_feature_sets(copy) == {'egemaps': 88}  # skipped, with a warning
  with pytest.raises(MuseError, match='vggish: feature folder is empty'):
    build.ensure_built(copy, str(tmp_path / 'd'), ['vggish'])
  with pytest.raises(MuseError, match='not built'):
    build.load_feature_set(str(tmp_path / 'd'), 'vggish')
