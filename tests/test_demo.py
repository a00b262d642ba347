"""The generated demo tree: exact layout, every documented quirk, determinism, learnability."""

import filecmp
import io
import json
import os

import numpy as np
import pandas as pd
import pytest

from muse_jax.data import demo
from muse_jax.data import demo_files
from muse_jax.data import layout
from muse_jax.data import reader
from muse_jax.errors import MuseError


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_layout_names_and_dimensions(tiny_tree):
  root = tiny_tree
  with open(os.path.join(root, layout.PARTITION_CSV)) as f:
    assert f.readline().strip() == 'Id,Proposal'
  assert reader.discover_feature_sets(root) == {
    k: demo.FEATURE_SETS[k] for k in demo.DEFAULT_FEATURES
  }
  part = reader.read_partition(root)
  n = len(part)
  counts = {p: sum(q == p for q in part.values()) for p in layout.SPLITS}
  assert counts == {
    'train': round(0.57 * n),
    'devel': round(0.21 * n),
    'test': n - round(0.57 * n) - round(0.21 * n),
  }
  vid = next(v for v, p in part.items() if p == 'train')
  for target in ('arousal', 'valence'):
    with open(layout.label_path(root, target, vid)) as f:
      assert f.readline().strip() == 'timestamp,value,segment_id'  # the 2020 order
  header = pd.read_csv(layout.feature_path(root, 'egemaps', vid), nrows=1).columns
  assert list(header[:3]) == ['timestamp', 'segment_id', 'F0semitoneFrom27.5Hz_sma3nz_amean']
  assert len(set(header)) == 90 and 'equivalentSoundLevel_dBp' in header
  au = pd.read_csv(layout.feature_path(root, 'au', vid), nrows=1).columns
  assert 'AU01_r' in au and 'AU28_c' in au and len(au) == 37


def test_grid_segments_and_lengths(tiny_tree):
  starts, lengths = [], []
  for vid, p in reader.read_partition(tiny_tree).items():
    v = reader.read_video(tiny_tree, 'egemaps', vid, p)
    t, seg = v.timestamp, v.segment_id
    assert (t % 250 == 0).all() and (np.diff(t) == 250).all()
    assert seg[0] == 1 and set(np.diff(seg)) <= {0, 1}  # 1, 2, ... in contiguous runs
    starts.append(t[0])
    lengths.append(len(t))
  assert sum(s > 0 for s in starts) >= len(starts) // 2
  assert 40 <= min(lengths) < max(lengths) <= 150


def test_every_documented_quirk_is_present(tiny_tree):
  root = tiny_tree
  with open(os.path.join(root, demo.MARKER)) as f:
    q = json.load(f)['quirks']
  with open(os.path.join(root, layout.PARTITION_CSV)) as f:
    ids = [line.split(',')[0] for line in f.read().splitlines()[1:]]
  assert ids.count(q['duplicated_partition_id']) == 2
  for vid in q['unlabelled_test_ids']:
    assert not os.path.exists(layout.label_path(root, 'arousal', vid))
    assert os.path.exists(layout.feature_path(root, 'egemaps', vid))
  for name in ('au', 'vggface'):
    assert q['zero_rows'][name] > 0 and q['nan_cells'][name] > 0
  for key, sign in (('longer_feature_file', 1), ('shorter_feature_file', -1)):
    f = q[key]
    n_feat = len(pd.read_csv(layout.feature_path(root, f['feature_set'], f['id'])))
    n_lab = len(pd.read_csv(layout.label_path(root, 'arousal', f['id'])))
    assert n_feat - n_lab == sign * f.get('extra_rows', f.get('missing_rows'))
  vg = pd.read_csv(layout.feature_path(root, 'vggface', q['shorter_feature_file']['id']))
  assert vg.shape[1] == 514


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
  a = demo.make_tree(str(tmp_path / 'a'), 'tiny', seed=7, features='egemaps,au')
  demo.make_tree(str(tmp_path / 'b'), 'tiny', seed=7, features='egemaps,au')
  files = _files(a['root'])
  assert files == _files(str(tmp_path / 'b'))
  _, mismatch, errors = filecmp.cmpfiles(a['root'], str(tmp_path / 'b'), files, shallow=False)
  assert not mismatch and not errors
  demo.make_tree(str(tmp_path / 'c'), 'tiny', seed=8, features='egemaps,au')
  vid = a['splits']['train'][0]
  path = os.path.join(layout.KINDS['muse2020'].feature_dir, 'egemaps', f'{vid}.csv')
  assert not os.path.exists(tmp_path / 'c' / path) or not filecmp.cmp(
    tmp_path / 'a' / path, tmp_path / 'c' / path, shallow=False
  )
  # Other sets in between change nothing of these (labels, partition, egemaps, au).
  demo.make_tree(str(tmp_path / 'd'), 'tiny', seed=7, features='egemaps,vggface,au')
  _, mismatch, errors = filecmp.cmpfiles(
    a['root'], str(tmp_path / 'd'), [f for f in files if demo.MARKER not in f], shallow=False
  )
  assert not mismatch and not errors
  # Rewriting a demo tree in place is allowed, and yields the same bytes again.
  demo.make_tree(a['root'], 'tiny', seed=7, features='egemaps,au')
  _, mismatch, _ = filecmp.cmpfiles(a['root'], str(tmp_path / 'b'), files, shallow=False)
  assert not mismatch


def test_cli_and_refusal_to_overwrite_real_data(tmp_path, capsys):
  out = tmp_path / 'cli'
  assert demo.main(['--out', str(out), '--scale', 'tiny', '--features', 'pose,mine:7']) == 0
  assert reader.discover_feature_sets(str(out)) == {'pose': 6, 'mine': 7}
  assert '12 videos' in capsys.readouterr().out
  real = tmp_path / 'real'
  real.mkdir()
  (real / 'notes.txt').write_text('mine')
  assert demo.main(['--out', str(real), '--scale', 'tiny']) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and 'refusing to overwrite' in err and err.count('\n') == 1
  with pytest.raises(MuseError, match='unknown feature set'):
    demo.make_tree(str(tmp_path / 'x'), 'tiny', features='nosuch')


def test_format_rows_round_trips():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(50, 6)) * np.array([1e-3, 0.1, 1, 10, 1e3, 1e5])
  x[3, 2], x[4, 0], x[5, 1] = np.nan, -0.0, -0.00001
  decimals = np.array([5, 4, 3, 2, 1, 0])
  got = pd.read_csv(io.BytesIO(demo_files.format_rows(x, decimals)), header=None).to_numpy()
  want = np.rint(x * 10.0**decimals) / 10.0**decimals
  np.testing.assert_array_equal(got, want)
  assert b'-0.0000,' not in demo_files.format_rows(x, decimals)  # no negative zero


def test_full_scale_matches_muse_car_size():
  lay = demo._layout(demo.SCALES['full'], 0)
  assert len(lay['ids']) == 290 and 540_000 <= lay['lens'].sum() <= 580_000
  assert lay['lens'].min() >= 240 and lay['lens'].max() <= 7200


# ------------------------------------------------------------------------------------------------
# Learnability: frame-wise linear regression must be clearly beaten once temporal context is used.


def _ccc(y, p):
  c = np.cov(y, p)
  return 2 * c[0, 1] / (c[0, 0] + c[1, 1] + (y.mean() - p.mean()) ** 2)


def _smooth_lag(x, lag, win):
  """Moving average over `win` frames, delayed by `lag` frames (features lead the labels)."""
  c = np.cumsum(np.pad(x, ((win // 2 + 1, win - 1 - win // 2), (0, 0)), mode='edge'), axis=0)
  xs = (c[win:] - c[:-win]) / win
  return np.concatenate([np.repeat(xs[:1], lag, 0), xs[: len(xs) - lag]]) if lag else xs


def _ridge_ccc(train, devel, target, alpha=10.0):
  x = np.concatenate([v[0] for v in train])
  mu, sd = x.mean(0), x.std(0) + 1e-6
  design = lambda vs: np.hstack(
    [(np.concatenate([v[0] for v in vs]) - mu) / sd, np.ones((sum(len(v[0]) for v in vs), 1))]
  )
  a = design(train)
  reg = alpha * np.eye(a.shape[1])
  reg[-1, -1] = 0
  y = np.concatenate([v[1].label(target) for v in train])
  w = np.linalg.solve(a.T @ a + reg, a.T @ y)
  return _ccc(np.concatenate([v[1].label(target) for v in devel]), design(devel) @ w)


@pytest.fixture(scope='module')
def demo_videos(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('demo') / 'root')
  demo.make_tree(root, 'demo', seed=0, features='egemaps,fasttext')
  out = {}
  for vid, p in reader.read_partition(root).items():
    if p != 'test':
      vs = {n: reader.read_video(root, n, vid, p) for n in ('egemaps', 'fasttext')}
      out.setdefault(p, []).append(vs)
  return out


@pytest.mark.parametrize(
  'sets,target',
  [
    (('egemaps',), 'arousal'),
    (('fasttext',), 'valence'),
    (('egemaps', 'fasttext'), 'arousal'),
    (('egemaps', 'fasttext'), 'valence'),
  ],
)
def test_labels_need_temporal_context(demo_videos, sets, target):
  def views(split, context):
    out = []
    for v in demo_videos[split]:
      xs = [np.nan_to_num(v[n].x).astype(np.float64) for n in sets]
      if context:
        xs = [_smooth_lag(x, demo.VIEWS[n].lag, 16) for x, n in zip(xs, sets)]
      out.append((np.hstack(xs), v[sets[0]]))
    return out

  frame = _ridge_ccc(views('train', False), views('devel', False), target)
  context = _ridge_ccc(views('train', True), views('devel', True), target)
  assert 0.1 < frame < 0.45, frame
  assert context > 0.6 and context - frame > 0.25, (frame, context)
