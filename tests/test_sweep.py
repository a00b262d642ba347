"""Sweeps in one program (`--sweep`, `get_sweep()`): members on the seed axis, groups by shape,
each member's own schedule, sweep.json/md/png, refusals before any compute, resume.

Runs are tiny, in child processes with one CPU device; the schedule's devel scores are scripted
(tests/scripted_main.py) where a test needs a plateau cut or an early stop at a known epoch.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from muse_jax import config_util
from muse_jax import sweep
from muse_jax.errors import MuseError

import helpers

REPO = helpers.REPO
# 2 dropout rates (a member's own) x 2 head widths (shapes: a group each) x 2 seeds = 8 members.
FLAGS = ('--sweep=model.out_dropout=0,0.3', '--sweep=model.d_out_fc=16,8', '--config.num_seeds=2')


# Devel scores the schedules see, per seed.
SCRIPT = {'314': [0.5, 0.6], '315': [0.4, 0.7]}


def _run(tree, data_dir, workdir, *flags, script=None, module=False):
  """2 epochs, through scripted_main (`script` or SCRIPT), or `module`: the real command."""
  return helpers.run(
    helpers.train_command(
      workdir,
      tree,
      data_dir,
      '--config.num_epochs=2',
      '--config.bootstrap_samples=100',
      *flags,
      scripted=not module,
    ),
    SCRIPTED_DEVEL=json.dumps(script or SCRIPT),
  )


def _with_its_config(workdir, *flags):
  """The command on `workdir` with the config it was trained with (configs/workdir.py)."""
  return helpers.run(helpers.command(*flags, config=f'configs/workdir.py:{workdir}'), REPO)


_ok = helpers.passed
_json = helpers.read_json


def _preds(workdir, target, vid):
  with open(os.path.join(workdir, 'predictions', target, f'{vid}.csv'), encoding='utf-8') as f:
    return np.array([float(l.split(',')[1]) for l in f.read().splitlines()[1:]])


@pytest.fixture(scope='module')
def swept(tiny_tree, tmp_path_factory):
  base = tmp_path_factory.mktemp('sweep')
  w = str(base / 'W')
  proc = _ok(_run(tiny_tree, str(base / 'tfds'), w, *FLAGS))
  return {'base': base, 'W': w, 'proc': proc, 'report': _json(os.path.join(w, 'sweep.json'))}


def test_sweep_trains_the_product_times_seeds_in_groups_by_shape(swept):
  r = swept['report']
  assert r['settings'] == 4 and r['members'] == 8
  # The dropout rate is a member's own (traced in one step); the head's width changes shapes:
  # a group each.
  assert [(g['name'], g['shared'], g['members']) for g in r['groups']] == [
    ('g0', {'model.d_out_fc': 16}, 4),
    ('g1', {'model.d_out_fc': 8}, 4),
  ]
  for g in r['groups']:
    res = _json(os.path.join(g['workdir'], 'results.json'))
    assert [s['overrides'] for s in res['seeds']] == [
      {'model.out_dropout': 0.0, 'seed': 314},
      {'model.out_dropout': 0.0, 'seed': 315},
      {'model.out_dropout': 0.3, 'seed': 314},
      {'model.out_dropout': 0.3, 'seed': 315},
    ]
    # one compiled program for all four members: one 'data:' line (one run) per group
  assert swept['proc'].stderr.count('] data: ') == 2
  rows = r['rows']
  assert [
    (x['setting']['model.out_dropout'], x['setting']['model.d_out_fc'], x['seed']) for x in rows
  ][:4] == [(0.0, 16, 314), (0.0, 16, 315), (0.3, 16, 314), (0.3, 16, 315)]
  scores = [x['devel']['mean_ccc'] for x in rows]
  assert r['best']['row'] == int(np.argmax(scores))  # highest devel mean CCC, ties by order
  best = rows[r['best']['row']]
  assert r['best']['overrides'] == best['overrides'] and r['best']['test'] is not None
  assert all('test' not in x for x in rows)  # test only for the chosen member
  for s in r['per_setting']:
    own = [x['devel']['mean_ccc'] for x in rows if x['setting'] == s['setting']]
    assert s['devel_ccc_std'] == pytest.approx(np.std(own, ddof=1))
  for f in ('sweep.md', 'sweep.png'):
    assert os.path.getsize(os.path.join(swept['W'], f)) > 0
  with open(os.path.join(swept['W'], 'sweep.md'), encoding='utf-8') as f:
    md = f.read()
  assert md in swept['proc'].stdout and '**best**' in md
  # The ensemble of the best 5 members by devel, recomputed from their saved predictions.
  e = r['ensemble']
  top = sorted(range(len(rows)), key=lambda i: -rows[i]['devel']['mean_ccc'])[:5]
  assert e['k'] == 5 and e['rows'] == top
  z = {
    g['name']: np.load(os.path.join(g['workdir'], 'member_predictions.npz')) for g in r['groups']
  }
  for split in ('devel', 'test'):
    ids = [n.split('/')[1] for n in z['g0'].files if n.startswith(split) and n.endswith('/pred')]
    y = np.concatenate([z['g0'][f'{split}/{v}/label'] for v in ids]).astype(np.float64)
    p = np.concatenate(
      [
        np.mean([z[rows[i]['group']][f'{split}/{v}/pred'][rows[i]['member']] for i in top], axis=0)
        for v in ids
      ]
    ).astype(np.float64)
    for k, t in enumerate(['arousal', 'valence']):
      ok = ~np.isnan(y[:, k])
      a, b = y[ok, k], p[ok, k]
      ccc = 2 * np.cov(a, b)[0, 1] / (a.var(ddof=1) + b.var(ddof=1) + (a.mean() - b.mean()) ** 2)
      assert e[split][t]['ccc'] == pytest.approx(ccc, abs=1e-5)
  assert 'Ensemble of the best 5 members by devel' in md
  # The chosen member's run is a normal run that wrote the chosen member's predictions.
  res = _json(os.path.join(r['best']['workdir'], 'results.json'))
  assert res['best_member'] == r['best']['member'] and r['best']['written']
  assert res['devel'] == r['best']['devel']


def test_a_member_equals_a_separate_run_with_its_settings(swept, tiny_tree):
  sep, data_dir = str(swept['base'] / 'separate'), str(swept['base'] / 'tfds')
  # Members share the batch order (config.data_seed, default the config's seed: 314), as seeds do.
  member_of_g1 = ('--config.model.d_out_fc=8', '--config.seed=315', '--config.data_seed=314')
  _ok(_run(tiny_tree, data_dir, sep, '--config.model.out_dropout=0.3', *member_of_g1))
  one = _json(os.path.join(sep, 'results.json'))
  g1 = _json(os.path.join(swept['W'], 'groups', 'g1', 'results.json'))
  # Dropout 0.3, seed 315 of the d_out_fc=8 group: its rate traced in the members' step, the
  # separate run's a field of its model: the same masks, the same model.
  member = g1['seeds'][3]
  assert member['overrides'] == {'model.out_dropout': 0.3, 'seed': 315}
  for split in ('devel', 'test'):
    for t in one['targets']:
      assert member[split][t]['ccc'] == pytest.approx(one[split][t]['ccc'], abs=1e-4)
  # A sweep of one value per axis is the plain run: same metrics and predictions.
  w1 = str(swept['base'] / 'W1')
  _ok(_run(tiny_tree, data_dir, w1, '--sweep=model.out_dropout=0.3', *member_of_g1))
  g0 = os.path.join(w1, 'groups', 'g0')
  again = _json(os.path.join(g0, 'results.json'))
  assert again['devel']['mean_ccc'] == pytest.approx(one['devel']['mean_ccc'], abs=1e-5)
  vid = next(iter(one['per_video']['devel']))
  np.testing.assert_allclose(_preds(g0, 'arousal', vid), _preds(sep, 'arousal', vid), atol=1e-5)


def test_each_member_keeps_its_own_schedule(tiny_tree, tmp_path):
  # Seed 314's devel score falls after epoch 1: a member with plateau_patience 0 halves its rate
  # after epoch 2, one with patience 5 does not; early_stopping_patience 1 stops after epoch 2.
  members = [
    {'seed': 314, 'plateau_patience': 0},
    {'seed': 314, 'plateau_patience': 5},
    {'seed': 314, 'early_stopping_patience': 1},
  ]
  w = str(tmp_path / 'w')
  proc = _ok(
    _run(
      tiny_tree,
      str(tmp_path / 'tfds'),
      w,
      '--config.num_epochs=4',
      '--config.num_seeds=3',
      f'--config.members={json.dumps(members)}',
      script={'314': [0.5, 0.4, 0.3, 0.2]},
    )
  )
  assert proc.stderr.count('(stopped: best epoch 1)') == 1  # the third member, after epoch 2
  assert proc.stderr.count('epoch   4 seed 314') == 2
  with open(os.path.join(w, 'metrics.jsonl'), encoding='utf-8') as f:
    epochs = [json.loads(l) for l in f]
  lrs = [[s['lr'] for s in e['seeds']] for e in epochs]
  assert np.allclose(lrs[0], 0.005) and np.allclose(lrs[1], 0.005)  # float32 rates
  assert lrs[2][0] == pytest.approx(0.0025) and lrs[2][1] == pytest.approx(0.005)
  res = _json(os.path.join(w, 'results.json'))
  assert [s['best_epoch'] for s in res['seeds']] == [1, 1, 1]
  assert res['epochs_run'] == 4


def test_sweep_plan_groups_and_validates_before_any_compute():
  c = config_util.load_config('tiny')
  axes = sweep.axes_of(
    c,
    [
      'learning_rate=0.002,0.005',
      'feature_sets=egemaps;egemaps,fasttext',
      'early_stopping_patience=3',
    ],
  )
  assert axes == [
    ('learning_rate', [0.002, 0.005]),
    ('feature_sets', [('egemaps',), ('egemaps', 'fasttext')]),
    ('early_stopping_patience', [3]),
  ]
  groups = sweep.plan(c, sweep.settings_of(c, axes))
  assert [g['shared'] for g in groups] == [
    {'feature_sets': ('egemaps',)},
    {'feature_sets': ('egemaps', 'fasttext')},
  ]
  assert [len(g['members']) for g in groups] == [2, 2]
  spec = config_util.validate_config(groups[1]['config'])
  assert spec.seeds == (314, 314) and spec.members[1] == {
    'learning_rate': 0.005,
    'early_stopping_patience': 3,
    'seed': 314,
  }
  assert spec.member_config(1).learning_rate == 0.005 and spec.config.learning_rate == 0.005
  # The ready example: the schedule settings share a group, the dropout is another.
  ex = config_util.load_config('sweep_valence')
  groups = sweep.plan(ex, sweep.settings_of(ex, [], config_util.load_sweep('sweep_valence')))
  assert [(g['shared'], len(g['members'])) for g in groups] == [
    ({}, 5)
  ]  # learning rates, a patience and a dropout rate: all a member's own
  for spec_, msg in [
    (['no_such=1,2'], '--sweep no_such: unknown config field'),
    (['model.d_rnnn=8'], '--sweep model.d_rnnn: unknown config field'),
    (['num_epochs=a'], '--sweep num_epochs=a: not an integer'),
    (['learning_rate=x'], '--sweep learning_rate=x: not a number'),
    (['members=1'], '--sweep members: not a sweep axis'),
    (['learning_rate'], 'write --sweep=field=value1,value2'),
    (['learning_rate=1', 'learning_rate=2'], 'is given twice'),
  ]:
    with pytest.raises(MuseError, match=msg.replace('(', r'\(')):
      sweep.axes_of(c, spec_)
  with pytest.raises(MuseError, match=r'with num_seeds=2: each swept seed starts its own seeds'):
    c2 = config_util.load_config('tiny')
    c2.num_seeds = 2
    sweep.plan(c2, sweep.settings_of(c2, sweep.axes_of(c2, ['seed=1,2'])))
  with pytest.raises(MuseError, match=r'get_sweep\(\)\[0\] sets num_seeds: not a sweep axis'):
    sweep.settings_of(c, [], [{'num_seeds': 3}])
  with pytest.raises(
    MuseError,
    match=r'model.rnn_dropout=0.2: the RNN drops out between its '
    r'layers only, and it has rnn_n_layers=1',
  ):
    sweep.plan(c, sweep.settings_of(c, sweep.axes_of(c, ['model.rnn_dropout=0,0.2'])))
  assert len(sweep.plan(c, [{'learning_rate': 0.1}, {'learning_rate': 0.1}])[0]['members']) == 1
  with pytest.raises(MuseError, match=r'sweep group .*learning_rate must be > 0, got -1.0'):
    sweep.plan(c, sweep.settings_of(c, sweep.axes_of(c, ['learning_rate=-1,0.1'])))
  with pytest.raises(MuseError, match=r'model.d_rnn=7 is not divisible by'):
    sweep.plan(c, sweep.settings_of(c, sweep.axes_of(c, ['model.d_rnn=16,7'])))


def test_sweep_refusals_are_one_line_and_train_nothing(tiny_tree, tmp_path):
  for flags, msg in [
    (['--sweep=no_such=1,2'], 'unknown config field'),
    (['--sweep=learning_rate=-1,0.1'], 'learning_rate must be > 0'),
    (['--sweep=learning_rate=0.1', '--mode=evaluate'], '--mode=evaluate of a sweep'),
  ]:
    w = tmp_path / 'w'
    helpers.one_error(_run(tiny_tree, str(tmp_path / 'tfds'), str(w), *flags, module=True), msg)
    assert not os.path.exists(w / 'groups')


def test_sweep_rerun_resumes_and_the_chosen_run_evaluates(swept, tiny_tree):
  proc = _ok(_run(tiny_tree, str(swept['base'] / 'tfds'), swept['W'], *FLAGS))
  assert ' loss ' not in proc.stderr  # finished groups re-report, nothing trains
  again = _json(os.path.join(swept['W'], 'sweep.json'))
  assert again == swept['report']
  # W itself reads as the chosen member's run (its group's files linked in).
  for name in ('config.json', 'results.json', 'predictions', 'checkpoints'):
    assert os.path.realpath(os.path.join(swept['W'], name)) == os.path.realpath(
      os.path.join(swept['report']['best']['workdir'], name)
    )
  # The chosen run evaluates with the config it was trained with (configs/workdir.py), through
  # W: no --workdir, so the run the config came from.
  best = swept['W']
  _ok(_with_its_config(best, '--mode=evaluate'))
  ev = _json(os.path.join(best, 'eval_results.json'))
  assert ev['devel']['mean_ccc'] == pytest.approx(
    swept['report']['best']['devel']['mean_ccc'], abs=1e-6
  )


def test_sweep_ensemble_evaluates_predicts_and_predicts_one_recording(swept, tiny_tree, tmp_path):
  """eval_seed 'sweep_ensemble': the best k members' mean, restored from the groups'
  checkpoints, written into W as a run's outputs; its scores match the report's ensemble
  (scored from member_predictions.npz, no model run) and its predictions the members' mean."""
  w = str(tmp_path / 'W')
  shutil.copytree(swept['W'], w, symlinks=True)  # W's links are relative: the copy reads itself
  ens = swept['report']['ensemble']
  rows = [swept['report']['rows'][i] for i in ens['rows']]
  assert ens['k'] == 5 and len({r['group'] for r in rows}) == 2  # members of both groups
  _ok(
    _with_its_config(
      w, '--mode=evaluate', '--config.eval_seed=sweep_ensemble', '--config.bootstrap_samples=100'
    )
  )
  ev = _json(os.path.join(w, 'eval_results.json'))
  assert ev['eval_seed'] == 'sweep_ensemble' and ev['ensemble']['k'] == 5
  for split in ('devel', 'test'):
    assert ev[split]['mean_ccc'] == pytest.approx(ens[split]['mean_ccc'], abs=1e-5)
  assert not os.path.islink(os.path.join(w, 'predictions'))  # W's own now; the groups keep theirs
  assert _json(os.path.join(w, 'predictions.json'))['eval_seed'] == 'sweep_ensemble'
  member = {}
  for r in rows:
    with np.load(os.path.join(w, 'groups', r['group'], 'member_predictions.npz')) as z:
      names = [n for n in z.files if n.startswith('devel/') and n.endswith('/pred')]
      member.setdefault(names[0], []).append(z[names[0]][r['member']])
  ((name, preds),) = member.items()
  target = _json(os.path.join(w, 'config.json'))['targets'][0]
  expected = np.mean(np.stack(preds).astype(np.float64), axis=0)[:, 0]
  np.testing.assert_allclose(_preds(w, target, name.split('/')[1]), expected, rtol=1e-5, atol=1e-6)
  # Predict on a tree (here the same one): the same predictions, in predict/.
  _ok(_with_its_config(w, '--mode=predict', '--config.eval_seed=sweep_ensemble'))
  vid = name.split('/')[1]
  with open(os.path.join(w, 'predict', target, f'{vid}.csv'), encoding='utf-8') as f:
    predicted = np.array([float(l.split(',')[1]) for l in f.read().splitlines()[1:]])
  np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)
  # One recording: Predictor(W, 'sweep_ensemble') is the mean of its members' Predictors.
  from muse_jax import predictor as predictor_lib  # noqa: PLC0415

  p = predictor_lib.Predictor(w, 'sweep_ensemble')
  x = np.random.default_rng(0).normal(size=(30, sum(p.dims))).astype(np.float32)
  each = [
    predictor_lib.Predictor(os.path.join(w, 'groups', r['group']), [r['member']])(x) for r in rows
  ]
  np.testing.assert_allclose(p(x), np.mean(each, axis=0), rtol=1e-5, atol=1e-6)
  # Not a sweep's workdir, or one run trained with it: one line each, nothing written.
  group = os.path.join(w, 'groups', rows[0]['group'])
  proc = _with_its_config(group, '--mode=evaluate', '--config.eval_seed=sweep_ensemble')
  assert proc.returncode == 2 and 'no sweep.json' in proc.stderr.splitlines()[-1], proc.stderr
  proc = _run(
    tiny_tree,
    str(swept['base'] / 'tfds'),
    str(tmp_path / 'plain'),
    '--config.eval_seed=sweep_ensemble',
    module=True,
  )
  assert proc.returncode == 2 and "'sweep_ensemble' is the ensemble of a sweep" in proc.stderr
  assert not os.path.exists(tmp_path / 'plain' / 'checkpoints')


def test_shards_merged_are_the_whole_sweep(swept, tiny_tree, tmp_path):
  w = str(tmp_path / 'W')
  flags = FLAGS
  data_dir = str(swept['base'] / 'tfds')
  first = _ok(_run(tiny_tree, data_dir, w, *flags, '--sweep_shard=1/2'))
  assert 'groups g0 still to finish' in first.stderr
  assert os.path.isdir(os.path.join(w, 'groups', 'g1'))
  assert not os.path.exists(os.path.join(w, 'groups', 'g0'))
  assert not os.path.exists(os.path.join(w, 'sweep.json'))
  helpers.one_error(
    helpers.run([sys.executable, '-m', 'muse_jax.sweep_report', w], timeout=300),
    'groups g0 have not finished',
  )
  _ok(_run(tiny_tree, data_dir, w, *flags, '--sweep_shard=0/2'))  # the last one writes it
  merged = _json(os.path.join(w, 'sweep.json'))
  whole = swept['report']
  assert [r['overrides'] for r in merged['rows']] == [r['overrides'] for r in whole['rows']]
  for a, b in zip(merged['rows'], whole['rows']):
    assert a['devel']['mean_ccc'] == pytest.approx(b['devel']['mean_ccc'], abs=1e-6)
  assert merged['best']['overrides'] == whole['best']['overrides']
  # Another sweep into the same workdir, or a bad shard, is refused before any compute.
  proc = _run(tiny_tree, data_dir, w, '--sweep=learning_rate=0.001', module=True)
  assert proc.returncode == 2 and 'holds another sweep' in proc.stderr
  proc = _run(tiny_tree, data_dir, str(tmp_path / 'x'), *flags, '--sweep_shard=2/2', module=True)
  assert proc.returncode == 2 and '--sweep_shard=2/2: write I/N with 0 <= I < N' in proc.stderr


def test_random_search_draws_from_ranges_and_lists():
  c = config_util.load_config('tiny')
  axes = sweep.axes_of(
    c, ['learning_rate=1e-4:1e-2', 'model.out_dropout=0,0.3', 'plateau_patience=1:4']
  )
  assert axes[0] == ('learning_rate', {'range': [1e-4, 1e-2], 'scale': 'log', 'integer': False})
  assert axes[2][1] == {'range': [1, 4], 'scale': 'lin', 'integer': True}
  drawn = sweep.settings_of(c, axes, search=sweep.search_of('random:200'))
  assert drawn == sweep.settings_of(c, axes, search=200)  # seeded: the same command, same draws
  lrs = np.array([d['learning_rate'] for d in drawn])
  assert lrs.min() >= 1e-4 and lrs.max() <= 1e-2
  # log-uniform: about half the draws below the geometric middle 1e-3 (a uniform draw: ~9%)
  assert 0.35 < np.mean(lrs < 1e-3) < 0.65
  assert {d['model.out_dropout'] for d in drawn} == {0.0, 0.3}
  assert {d['plateau_patience'] for d in drawn} == {1, 2, 3, 4}
  groups = sweep.plan(c, drawn[:6])
  assert len(groups) == 1 and len(groups[0]['members']) == 6  # every field a member's own
  for bad, msg in [
    (['learning_rate=1e-2:1e-4'], 'a range is lo:hi with lo < hi'),
    (['learning_rate=0:1e-2:log'], 'a range is lo:hi'),
    (['num_epochs=a:b'], 'a range is lo:hi'),
  ]:
    with pytest.raises(MuseError, match=msg):
      sweep.axes_of(c, bad)
  with pytest.raises(MuseError, match=r'needs --sweep_search=random:N'):
    sweep.settings_of(c, axes)
  with pytest.raises(MuseError, match=r'--sweep_search=grid:3: write random:N'):
    sweep.search_of('grid:3')


def test_members_own_attention_dropout_equals_a_separate_run(tiny_tree, tmp_path):
  data_dir = str(tmp_path / 'tfds')
  w = str(tmp_path / 'w')
  _ok(_run(tiny_tree, data_dir, w, '--sweep=model.attn_dropout=0,0.2', '--config.attention=plain'))
  g = _json(os.path.join(w, 'groups', 'g0', 'results.json'))
  sep = str(tmp_path / 'sep')
  _ok(_run(tiny_tree, data_dir, sep, '--config.model.attn_dropout=0.2', '--config.attention=plain'))
  one = _json(os.path.join(sep, 'results.json'))
  for t in one['targets']:
    assert g['seeds'][1]['devel'][t]['ccc'] == pytest.approx(one['devel'][t]['ccc'], abs=1e-4)
  assert g['seeds'][0]['devel']['arousal']['ccc'] != g['seeds'][1]['devel']['arousal']['ccc']


def test_members_own_loss_weights_equal_separate_runs(tiny_tree, tmp_path):
  data_dir = str(tmp_path / 'tfds')
  w = str(tmp_path / 'w')
  _ok(_run(tiny_tree, data_dir, w, '--sweep=loss_weights=;arousal=3'))
  g = _json(os.path.join(w, 'groups', 'g0', 'results.json'))
  assert [s['overrides'] for s in g['seeds']] == [
    {'loss_weights': '', 'seed': 314},
    {'loss_weights': 'arousal=3', 'seed': 314},
  ]
  sep = str(tmp_path / 'sep')
  _ok(_run(tiny_tree, data_dir, sep, '--config.loss_weights=arousal=3'))
  one = _json(os.path.join(sep, 'results.json'))
  for t in one['targets']:
    assert g['seeds'][1]['devel'][t]['ccc'] == pytest.approx(one['devel'][t]['ccc'], abs=1e-4)
  # The weights change training: the two members differ.
  assert g['seeds'][0]['devel']['arousal']['ccc'] != g['seeds'][1]['devel']['arousal']['ccc']
  with pytest.raises(MuseError, match=r"members\[1\]\.loss_weights names 'nope'"):
    c = config_util.load_config('tiny')
    sweep.plan(c, sweep.settings_of(c, sweep.axes_of(c, ['loss_weights=;nope=2,valence=1'])))


def test_kill_9_mid_sweep_and_rerun_ends_as_uninterrupted(swept, tiny_tree, tmp_path):
  """Killed while its second group trains (the first finished), the same command resumes: the
  finished group is read back, the killed one resumes from its checkpoint, and the report is
  the uninterrupted sweep's, to the bit."""
  w = str(tmp_path / 'W')
  data_dir = str(swept['base'] / 'tfds')
  head = helpers.train_command(
    w,
    tiny_tree,
    data_dir,
    '--config.num_epochs=2',
    '--config.bootstrap_samples=100',
    *FLAGS,
    scripted=True,
  )
  env = helpers.child_env(SCRIPTED_DEVEL=json.dumps(SCRIPT))
  child = subprocess.Popen(head, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt = os.path.join(w, 'groups', 'g1', 'checkpoints')
  deadline = time.time() + 300
  while (
    child.poll() is None
    and time.time() < deadline
    and not (os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt)))
  ):
    time.sleep(0.05)
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert os.path.exists(os.path.join(w, 'groups', 'g0', 'results.json'))
  assert not os.path.exists(os.path.join(w, 'sweep.json'))
  proc = _ok(_run(tiny_tree, data_dir, w, *FLAGS))
  assert 'resuming after epoch' in proc.stderr
  again = _json(os.path.join(w, 'sweep.json'))
  whole = swept['report']
  assert [r['devel'] for r in again['rows']] == [r['devel'] for r in whole['rows']]
  assert again['best']['test'] == whole['best']['test']
  assert again['ensemble']['devel'] == whole['ensemble']['devel']


def test_members_sharded_over_devices_train_as_replicated(tiny_tree, tmp_path, monkeypatch):
  """On the session's 8 simulated devices: 4 members with their own learning rates, sharded 2
  per device pair (member_devices=2: a 2 x 4 mesh) or replicated on all 8, train the same."""
  import jax  # noqa: PLC0415

  from muse_jax import train  # noqa: PLC0415

  import scripted  # noqa: PLC0415

  scripted.script_devel(monkeypatch)
  assert jax.device_count() == 8
  members = json.dumps(
    [{'seed': 314, 'learning_rate': lr} for lr in (0.002, 0.005)]
    + [{'seed': 315, 'learning_rate': lr} for lr in (0.002, 0.005)]
  )
  out = {}
  for md in (1, 2):
    c = helpers.tiny_config(
      tiny_tree,
      str(tmp_path / 'tfds'),
      num_epochs=1,
      num_seeds=4,
      members=members,
      member_devices=md,
      seed_loop='vmap',
      bootstrap_samples=0,
    )
    out[md] = train.train_and_evaluate(c, str(tmp_path / f'md{md}'))
  for a, b in zip(out[1]['seeds'], out[2]['seeds']):
    for split in ('devel', 'test'):
      assert a[split]['mean_ccc'] == pytest.approx(b[split]['mean_ccc'], abs=1e-5)
  assert [s['overrides'] for s in out[2]['seeds']] == json.loads(members)
  from muse_jax import sharding  # noqa: PLC0415

  mesh = sharding.make_mesh(0, 2)
  assert dict(mesh.shape) == {'member': 2, 'data': 4} and sharding.data_devices(mesh) == 4
  placed = sharding.place_members({'w': np.zeros((4, 3)), 'step': np.zeros(())}, mesh, 4)
  assert placed['w'].sharding.spec == jax.sharding.PartitionSpec('member')
  assert len(placed['w'].addressable_shards) == 8 and placed['w'].addressable_shards[
    0
  ].data.shape == (2, 3)  # each device: 2 of the 4 members
  assert placed['step'].sharding.spec == jax.sharding.PartitionSpec()
  with pytest.raises(MuseError, match='member_devices must be an integer >= 1 dividing num_seeds'):
    c = helpers.tiny_config(
      tiny_tree, str(tmp_path / 'tfds'), num_seeds=4, members=members, member_devices=3
    )
    config_util.validate_config(c)


def test_optuna_proposes_batches_that_train_as_sweeps(tiny_tree, tmp_path):
  """TPE in batches of 2 over a learning-rate range: 4 trials = 2 batches, each one group (one
  compiled step), every trial told its setting's devel score; a rerun reads both batches back."""
  optuna = pytest.importorskip('optuna')
  w = str(tmp_path / 'W')
  flags = ['--sweep=learning_rate=1e-3:1e-2', '--sweep_search=optuna:4:2']
  proc = _ok(_run(tiny_tree, str(tmp_path / 'tfds'), w, *flags))
  r = _json(os.path.join(w, 'sweep.json'))
  assert [g['name'] for g in r['groups']] == ['b0_g0', 'b1_g0'] and r['members'] == 4
  study = optuna.load_study(
    study_name='muse_jax_sweep', storage=f'sqlite:///{os.path.join(w, "optuna.db")}'
  )
  done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
  assert len(done) == 4
  by_lr = {round(x['setting']['learning_rate'], 12): x['devel']['mean_ccc'] for x in r['rows']}
  for t in done:
    assert t.value == pytest.approx(by_lr[round(t.params['learning_rate'], 12)])
    assert 1e-3 <= t.params['learning_rate'] <= 1e-2
  again = _ok(_run(tiny_tree, str(tmp_path / 'tfds'), w, *flags))
  assert (
    ' loss ' not in again.stderr
    and len(
      optuna.load_study(
        study_name='muse_jax_sweep', storage=f'sqlite:///{os.path.join(w, "optuna.db")}'
      ).trials
    )
    == 4
  )
  assert _json(os.path.join(w, 'sweep.json'))['rows'] == r['rows']
  del proc


@pytest.mark.parametrize('layout_name', ['muse2022_stress', 'plain'])
def test_sweep_on_other_layouts(layout_name, tmp_path):
  from muse_jax.data import demo  # noqa: PLC0415
  from muse_jax.data import layout  # noqa: PLC0415

  out = str(tmp_path / 'tree')
  demo.make_tree(out, scale='tiny', features='egemaps,fasttext', layout_name=layout_name)
  root = layout.resolve(out).root
  w = str(tmp_path / 'W')
  targets = ','.join(layout.resolve(out).targets())
  _ok(
    _run(
      root,
      str(tmp_path / 'tfds'),
      w,
      '--sweep=learning_rate=0.002,0.005',
      f'--config.targets={targets}',
      '--config.num_epochs=1',
      '--config.eval_seed=sweep_ensemble',
      script={'314': [0.5]},
    )
  )
  r = _json(os.path.join(w, 'sweep.json'))
  assert r['members'] == 2 and len(r['groups']) == 1 and r['best']['devel'] is not None
  # Trained with eval_seed sweep_ensemble: W's predictions are its ensemble's, scored as the
  # report scored it; the group wrote its best member's.
  assert _json(os.path.join(w, 'predictions.json'))['eval_seed'] == 'sweep_ensemble'
  assert _json(os.path.join(w, 'groups', 'g0', 'predictions.json'))['eval_seed'] == 'best'
  assert _json(os.path.join(w, 'eval_results.json'))['devel']['mean_ccc'] == pytest.approx(
    r['ensemble']['devel']['mean_ccc'], abs=1e-5
  )
