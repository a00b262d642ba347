"""Numbers with their uncertainty: the interval on every partition CCC a run reports, and the
paired comparison of two runs (`python -m muse_jax.compare`), on generated 2020 and 2021 trees.

Expected values are recomputed here with numpy from the runs' prediction CSVs and the tree's
label CSVs (pandas reads them), with the resampling rule written out again, never through the
code under test. Runs are tiny and their devel scores scripted (tests/scripted_main.py).
"""

import json
import os
import shutil
import sys

import numpy as np
import pandas as pd
import pytest

from muse_jax import compare
from muse_jax.data import demo
from muse_jax.data import layout

import helpers

SAMPLES = 400
# Devel scores the schedules see, per seed.
SCRIPT = json.dumps({'314': [0.5, 0.6], '315': [0.4, 0.7]})


def _train(tree, data_dir, workdir, *flags):
  return helpers.passed(
    helpers.run(
      helpers.train_command(
        workdir,
        tree,
        data_dir,
        '--config.num_epochs=2',
        f'--config.bootstrap_samples={SAMPLES}',
        *flags,
        scripted=True,
      ),
      SCRIPTED_DEVEL=SCRIPT,
    )
  )


_json = helpers.read_json


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Two runs on a 2020 tree (A: egemaps, 2 seeds; B: egemaps+fasttext, 2 seeds) and two on a
  2021 tree (one seed each), with the printed summaries of the 2020 ones."""
  base = tmp_path_factory.mktemp('compare')
  t2020 = str(base / 'muse2020')
  demo.make_tree(t2020, scale='tiny', features='egemaps,fasttext')
  t2021 = str(base / 'muse2021')
  demo.make_tree(t2021, scale='tiny', features='egemaps,fasttext', layout_name='muse2021_wilder')
  t2021 = os.path.join(t2021, 'c1_muse_wilder')
  out = {'tree': t2020, 'tree2021': t2021}
  for name, sets in (('a', 'egemaps'), ('b', 'egemaps,fasttext')):
    w = str(base / name)
    out[name] = w
    out[f'{name}_stdout'] = _train(
      t2020, str(base / 'tfds'), w, f'--config.feature_sets={sets}', '--config.num_seeds=2'
    ).stdout
  for name, sets in (('c', 'egemaps'), ('d', 'fasttext')):
    out[name] = str(base / name)
    _train(t2021, str(base / 'tfds21'), out[name], f'--config.feature_sets={sets}')
  return out


# An independent reference: labels and predictions from the CSVs, CCC and the resampling rule
# written out here.


def _ccc(y, p):
  y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
  my, mp = y.mean(), p.mean()
  n = len(y)
  vy, vp = ((y - my) ** 2).sum() / (n - 1), ((p - mp) ** 2).sum() / (n - 1)
  cov = ((y - my) * (p - mp)).sum() / (n - 1)
  return 2 * cov / (vy + vp + (my - mp) ** 2)


def _frames(tree, workdir, target, split):
  """Per labelled video of `split`: (labels, predictions) on the labelled frames, from CSVs."""
  lay = layout.resolve(tree)
  part = pd.read_csv(lay.partition_path).drop_duplicates()
  ids = sorted((str(i) for i in part[part.iloc[:, -1] == split].iloc[:, 0]), key=int)
  out = []
  for vid in ids:
    lab_path = lay.label_path(target, vid)
    if not os.path.exists(lab_path):
      continue
    lab = pd.read_csv(lab_path)
    pred = pd.read_csv(os.path.join(workdir, 'predictions', target, f'{vid}.csv'))
    both = pred.merge(lab, on='timestamp', suffixes=('_p', '_y'))
    both = both[both['value_y'].notna()]
    out.append((both['value_y'].to_numpy(np.float64), both['value_p'].to_numpy(np.float64)))
  return out


def _draws(v, samples, seed):
  """The documented rule: blocks of max(1, 2**16 // V) rows of rng.integers(0, V, (rows, V))."""
  rng = np.random.default_rng(seed)
  rows, out = max(1, (1 << 16) // v), []
  while len(out) < samples:
    out.extend(rng.integers(0, v, size=(min(rows, samples - len(out)), v)))
  return out


def _interval(vals):
  return np.percentile(vals, 2.5), np.percentile(vals, 97.5)


def test_every_partition_ccc_carries_its_video_bootstrap_interval(runs):
  res = _json(os.path.join(runs['b'], 'results.json'))
  seed_of = {s['seed']: s for s in res['seeds']}
  for split in ('devel', 'test'):
    for t in res['targets']:
      frames = _frames(runs['tree'], runs['b'], t, split)
      y = np.concatenate([f[0] for f in frames])
      p = np.concatenate([f[1] for f in frames])
      assert abs(res[split][t]['ccc'] - _ccc(y, p)) < 1e-5
      if len(frames) < 2:  # one labelled video: nothing to resample, no interval
        assert res[split][t]['ccc_ci95'] == [None, None]
        continue
      boot = [
        _ccc(
          np.concatenate([frames[i][0] for i in idx]), np.concatenate([frames[i][1] for i in idx])
        )
        for idx in _draws(len(frames), SAMPLES, 0)
      ]
      lo, hi = _interval(boot)
      got = res[split][t]['ccc_ci95']
      assert abs(got[0] - lo) < 1e-4 and abs(got[1] - hi) < 1e-4, (split, t, got, (lo, hi))
    assert len(res[split]['mean_ccc_ci95']) == 2
    # The seeds' own entries, the chosen one's, and the ensemble entry carry theirs.
    for s in res['seeds']:
      assert all(len(s[split][t]['ccc_ci95']) == 2 for t in res['targets'])
    assert res[split] == seed_of[res['seed']][split]
    assert all(len(res['ensemble'][split][t]['ccc_ci95']) == 2 for t in res['targets'])
  # Printed where people read it: `devel: arousal CCC 0.6825 [0.61, 0.74]  valence ...`
  ci = res['devel']['arousal']['ccc_ci95']
  assert (
    f'devel: arousal CCC {res["devel"]["arousal"]["ccc"]:.4f} [{ci[0]:.2f}, {ci[1]:.2f}]'
    in runs['b_stdout']
  )
  # The seeds' spread is the sample standard deviation (ddof 1), as papers report it.
  devel = [s['devel']['mean_ccc'] for s in res['seeds']]
  assert res['devel_ccc_std'] == pytest.approx(np.std(devel, ddof=1), abs=1e-12)
  assert '(sample std)' in runs['b_stdout']


def test_bootstrap_is_off_with_zero_samples_and_config_fields_are_checked(runs, tmp_path):
  proc = helpers.run(
    helpers.command(
      f'--workdir={tmp_path / "w"}', f'--data_root={runs["tree"]}', '--config.bootstrap_samples=-1'
    ),
    timeout=300,
  )
  assert proc.returncode == 2 and 'bootstrap_samples must be an integer >= 0' in proc.stderr
  # evaluate may change it (it only changes what is reported): 0 turns the intervals off.
  w = str(tmp_path / 'b')
  shutil.copytree(runs['b'], w)
  _evaluate(w, '--config.bootstrap_samples=0')
  ev = _json(os.path.join(w, 'eval_results.json'))
  assert 'ccc_ci95' not in ev['devel']['arousal'] and 'mean_ccc_ci95' not in ev['devel']
  assert ev['devel']['arousal']['ccc'] == pytest.approx(
    _json(os.path.join(w, 'results.json'))['devel']['arousal']['ccc'], abs=1e-6
  )


def _evaluate(workdir, *flags):
  """--mode=evaluate of a copied run with the config it was trained with (configs/workdir.py)."""
  helpers.ok(
    helpers.run(
      helpers.command(
        f'--workdir={workdir}', '--mode=evaluate', *flags, config=f'configs/workdir.py:{workdir}'
      ),
      helpers.REPO,
    )
  )


def _cli(*args):
  return helpers.run(
    [sys.executable, '-m', 'muse_jax.compare'] + [str(a) for a in args], timeout=300
  )


def test_compare_cli_paired_difference_matches_a_numpy_reference(runs, tmp_path):
  out = tmp_path / 'cmp' / 'ab.json'
  proc = _cli(runs['a'], runs['b'], '--out', out, '--samples', SAMPLES)
  assert proc.returncode == 0, proc.stderr[-3000:]
  c = _json(out)
  assert os.path.isfile(tmp_path / 'cmp' / 'ab.png')  # the per-video scatter beside it
  assert c['split'] == 'devel' and set(c['targets']) == {'arousal', 'valence'}
  for t, r in c['targets'].items():
    fa = _frames(runs['tree'], runs['a'], t, 'devel')
    fb = _frames(runs['tree'], runs['b'], t, 'devel')
    assert c['videos'] == len(fa)
    ya = np.concatenate([f[0] for f in fa])
    assert r['ccc_a'] == pytest.approx(_ccc(ya, np.concatenate([f[1] for f in fa])), abs=1e-6)
    assert r['ccc_b'] == pytest.approx(_ccc(ya, np.concatenate([f[1] for f in fb])), abs=1e-6)
    assert r['ccc_a'] == pytest.approx(
      _json(os.path.join(runs['a'], 'results.json'))['devel'][t]['ccc'], abs=1e-5
    )
    d = []
    for idx in _draws(len(fa), SAMPLES, 0):
      y = np.concatenate([fa[i][0] for i in idx])
      d.append(
        _ccc(y, np.concatenate([fb[i][1] for i in idx]))
        - _ccc(y, np.concatenate([fa[i][1] for i in idx]))
      )
    lo, hi = _interval(d)
    assert r['diff_ci95'] == pytest.approx([lo, hi], abs=1e-6)
    assert r['p_b_not_better'] == pytest.approx(np.mean(np.asarray(d) <= 0))
    assert f'| {t} | {r["ccc_a"]:.4f} | {r["ccc_b"]:.4f} | {r["diff"]:+.4f} |' in proc.stdout
  # Both trained two seeds: the seed-level view, with the sample std of each run's seeds.
  seeds_a = [
    s['devel']['arousal']['ccc'] for s in _json(os.path.join(runs['a'], 'results.json'))['seeds']
  ]
  assert c['seeds']['arousal']['std_a'] == pytest.approx(np.std(seeds_a, ddof=1))
  assert c['seeds']['arousal']['n_a'] == 2 and 'seeds A: mean ± std (n)' in proc.stdout
  assert 'seed 31' in c['predictions']['a'] and 'written by train' in c['predictions']['a']


def test_compare_invariants(runs, tmp_path):
  ab = compare.compare(runs['a'], runs['b'], samples=SAMPLES)
  ba = compare.compare(runs['b'], runs['a'], samples=SAMPLES)
  aa = compare.compare(runs['a'], runs['a'], samples=SAMPLES)
  for t in ab['targets']:
    assert aa['targets'][t]['diff'] == 0.0 and aa['targets'][t]['diff_ci95'] == [0.0, 0.0]
    assert ba['targets'][t]['diff'] == -ab['targets'][t]['diff']
    assert ba['targets'][t]['diff_ci95'] == [
      -ab['targets'][t]['diff_ci95'][1],
      -ab['targets'][t]['diff_ci95'][0],
    ]
  assert compare.compare(runs['a'], runs['b'], samples=SAMPLES) == ab  # same seed, same numbers
  other = compare.compare(runs['a'], runs['b'], samples=SAMPLES, seed=1)
  assert other['targets']['arousal']['diff_ci95'] != ab['targets']['arousal']['diff_ci95']
  # One of B's devel videos made perfect (its predictions = its labels): B - A can only grow.
  b2 = str(tmp_path / 'b2')
  shutil.copytree(runs['b'], b2)
  lay = layout.resolve(runs['tree'])
  vid = next(iter(ab['per_video']))
  for t in ab['targets']:
    lab = pd.read_csv(lay.label_path(t, vid))
    pred_path = os.path.join(b2, 'predictions', t, f'{vid}.csv')
    pred = pd.read_csv(pred_path)
    pred['value'] = pred['timestamp'].map(dict(zip(lab['timestamp'], lab['value'])))
    pred.to_csv(pred_path, index=False)
  better = compare.compare(runs['a'], b2, samples=SAMPLES)
  for t in ab['targets']:
    assert better['targets'][t]['diff'] > ab['targets'][t]['diff']
    assert better['per_video'][vid][t][1] == pytest.approx(1.0)


def test_compare_on_a_2021_tree_and_of_evaluate_predictions(runs, tmp_path):
  c = compare.compare(runs['c'], runs['d'], split='test', samples=SAMPLES)
  assert c['videos'] >= 1 and set(c['targets']) == {'arousal', 'valence'}
  assert c['seeds'] == {}  # one seed each: no seed-level view
  # Predictions rewritten by --mode=evaluate with another eval_seed are compared as they are.
  a2 = str(tmp_path / 'a2')
  shutil.copytree(runs['a'], a2)
  _evaluate(a2, '--config.eval_seed=1')
  c = compare.compare(runs['a'], a2, samples=SAMPLES)
  assert c['predictions']['b'] == 'seed 315 (written by evaluate)'
  ev = _json(os.path.join(a2, 'eval_results.json'))
  assert c['targets']['arousal']['ccc_b'] == pytest.approx(ev['devel']['arousal']['ccc'], abs=1e-5)


def test_compare_refuses_what_cannot_be_compared(runs, tmp_path):
  one_error = helpers.one_error
  one_error(_cli(runs['a'], runs['c']), 'runs of different trees are not compared')

  def edited(name, edit):
    w = str(tmp_path / name)
    shutil.copytree(runs['b'], w)
    edit(w)
    return w

  def results_edit(**fields):
    def edit(w):
      path = os.path.join(w, 'results.json')
      res = _json(path)
      res.update(fields)
      with open(path, 'w', encoding='utf-8') as f:
        json.dump(res, f)

    return edit

  one_error(
    _cli(runs['a'], edited('grid', results_edit(step_ms=500))),
    'runs of different grids are not compared',
  )
  one_error(
    _cli(runs['a'], edited('targets', results_edit(targets=['trustworthiness']))),
    'no common target to compare',
  )
  no_devel = edited(
    'nodevel',
    lambda w: [
      os.remove(os.path.join(w, 'predictions', t, f'{v}.csv'))
      for t in ('arousal', 'valence')
      for v in compare.compare(runs['a'], runs['b'], samples=1)['per_video']
    ],
  )
  one_error(_cli(runs['a'], no_devel), 'no common devel video with labels')
  one_error(_cli(runs['a'], tmp_path), 'not a finished muse_jax run')
  one_error(_cli(runs['a'], runs['b'], '--split', 'train'), 'argument --split: invalid choice')
