"""The way in: the design card's command as written, paths and arguments as people type them, and
the 2020 release's other continuous task (c3_muse_trust).

Runs are tiny (2 epochs of configs/tiny.py) in a child process with one CPU device; their devel
scores are scripted (tests/scripted_main.py) so that what is asserted never depends on a float
trajectory. The demo tree a run without a data root writes is pre-placed as the `tiny` one (the
writing itself is tested on its own, `test_tree_in_*`).
"""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import pytest

from muse_jax import config_util
from muse_jax.data import build
from muse_jax.data import demo
from muse_jax.data import layout
from muse_jax.errors import MuseError

import helpers

SCRIPTED, TINY = helpers.SCRIPTED_MAIN, helpers.TINY
# Devel scores the schedule sees, per seed (tiny.py trains seed 314): above any untrained CCC.
SCRIPT = json.dumps({'314': [0.5, 0.6]})


def run(cmd, cwd, **extra):
  return helpers.run(cmd, cwd, SCRIPTED_DEVEL=SCRIPT, **extra)


one_error = helpers.one_error


ok = helpers.passed
read_json = helpers.read_json


# ------------------------------------------------------------------------------------------------
# 1. The design card's command: no --workdir, no data root.


def test_design_card_command_trains_on_the_demo_tree_into_runs(tiny_tree, tmp_path):
  out = tmp_path / 'out'
  demo_root = out / 'demo_tree_demo'  # where a run without a data root looks (MUSE_OUT)
  shutil.copytree(tiny_tree, demo_root)
  cwd = tmp_path / 'here'
  cwd.mkdir()
  cmd = [sys.executable, SCRIPTED, f'--config={TINY}', '--config.num_epochs=2']
  proc = ok(run(cmd, cwd, MUSE_OUT=str(out)))
  workdir = cwd / 'runs' / 'tiny'
  assert f'no --workdir given: writing to {workdir}' in proc.stderr
  assert 'no data root given' in proc.stderr and str(demo_root) in proc.stderr
  assert f'data: the generated demo tree {demo_root} (synthetic, not MuSe-CaR)' in proc.stdout
  saved = read_json(workdir / 'config.json')
  assert saved['data_root'] == str(demo_root)
  assert saved['data_dir'] == str(out / 'tfds')  # the demo's builds, beside the tree
  assert os.path.isdir(out / 'tfds' / 'muse_car' / 'egemaps')
  results = read_json(workdir / 'results.json')
  assert results['epochs_run'] == 2 and results['best_epoch'] >= 1
  # evaluate with no data root and no workdir: the workdir's own tree, not the demo by default
  proc = ok(run(cmd + ['--mode=evaluate'], cwd, MUSE_OUT=str(tmp_path / 'elsewhere')))
  assert f'using the tree {workdir} was trained on, {demo_root}' in proc.stderr
  assert os.path.exists(workdir / 'eval_results.json')
  assert not os.path.exists(tmp_path / 'elsewhere')  # no second demo tree was written
  assert 'generated demo tree' in proc.stdout


def test_evaluate_and_predict_of_a_new_workdir_without_data_root_are_one_line(tmp_path):
  for mode in ('evaluate', 'predict'):
    proc = run(
      [
        sys.executable,
        '-m',
        'muse_jax.main',
        f'--config={TINY}',
        f'--mode={mode}',
        f'--workdir={tmp_path / "none"}',
      ],
      tmp_path,
      MUSE_OUT=str(tmp_path / 'out'),
    )
    one_error(proc, 'checkpoint')
    assert not os.path.exists(tmp_path / 'out')  # no demo tree written for nothing to score


def test_tree_in_writes_each_task_once_and_in_one_piece(tmp_path):
  out = tmp_path / 'out'
  root = demo.tree_in(str(out), 'tiny')
  assert root == str(out / 'demo_tree_tiny')
  assert layout.resolve(root) == layout.Layout('muse2020', root, 'c1_muse_wild')
  part = os.path.join(root, 'metadata', 'partition.csv')
  before = os.stat(part).st_mtime_ns
  assert demo.tree_in(str(out), 'tiny') == root and os.stat(part).st_mtime_ns == before
  # A task adds its own folder beside c1_muse_wild, sharing the release's partition file.
  assert demo.tree_in(str(out), 'tiny', 'c3_muse_trust') == root
  assert os.stat(part).st_mtime_ns == before
  trust = layout.resolve(root, 'c3_muse_trust')
  assert trust.root == os.path.join(root, 'c3_muse_trust')
  assert trust.targets() == ('arousal', 'trustworthiness', 'valence')
  assert demo.tree_in(str(out), 'tiny', 'c3_muse_stress') == root
  assert layout.resolve(root, 'c3_muse_stress').kind == 'muse2021'
  assert sorted(os.listdir(out)) == ['demo_tree_tiny']  # no temporary folder left behind
  with pytest.raises(MuseError, match="config.task='c9_nothing': the demo tree has no such task"):
    demo.tree_in(str(out), 'tiny', 'c9_nothing')


def test_tree_in_refuses_a_foreign_folder_in_its_place(tmp_path):
  (tmp_path / 'demo_tree_tiny').mkdir()
  (tmp_path / 'demo_tree_tiny' / 'mine.txt').write_text('user data')
  with pytest.raises(MuseError, match='exists and is not a demo tree'):
    demo.tree_in(str(tmp_path), 'tiny')
  assert (tmp_path / 'demo_tree_tiny' / 'mine.txt').read_text() == 'user data'


# ------------------------------------------------------------------------------------------------
# 2. Paths and arguments as people type them.


@pytest.mark.parametrize(
  'cmd',
  [
    ['-m', 'muse_jax.main', f'--config={TINY}', '--workdir=W', 'extra'],
    ['-m', 'muse_jax.job', '--out=O', 'extra'],
    ['-m', 'muse_jax.reproduce', '--out=O', 'extra'],
    ['-m', 'muse_jax.data.demo', '--out=O', 'extra'],
    ['-m', 'muse_jax.data.build', '--root=R', '--data_dir=D', 'extra'],
    ['-m', 'muse_jax.features', 'sample', '--out=O', 'extra'],
  ],
  ids=['main', 'job', 'reproduce', 'demo', 'build', 'features'],
)
def test_stray_argument_is_one_error_line(cmd, tmp_path):
  proc = run([sys.executable] + cmd, tmp_path)
  one_error(
    proc,
    "'extra'"
    if 'muse_jax.main' in cmd or 'muse_jax.job' in cmd or 'muse_jax.reproduce' in cmd
    else 'extra',
  )
  assert os.listdir(tmp_path) == []  # refused before anything was written


def test_argparse_usage_errors_are_one_line(tmp_path):
  one_error(
    run([sys.executable, '-m', 'muse_jax.data.build', '--data_dir=D'], tmp_path),
    'the following arguments are required: --root',
  )
  one_error(
    run([sys.executable, '-m', 'muse_jax.data.demo', '--out=O', '--scale=huge'], tmp_path),
    "argument --scale: invalid choice: 'huge'",
  )


def _at_home(home, cwd, *args):
  """`python ARGS` in `cwd` with HOME=`home`: ~ means `home`."""
  return run([sys.executable, *args], cwd, HOME=str(home))


def test_tilde_is_expanded_in_every_path_flag_and_field(tmp_path):
  home = tmp_path / 'home'
  home.mkdir()
  # The data CLIs: demo --out, build --root/--data_dir.
  demo_args = ('--out=~/tree', '--scale=tiny', '--features=egemaps,fasttext')
  ok(_at_home(home, tmp_path, '-m', 'muse_jax.data.demo', *demo_args))
  assert os.path.isfile(home / 'tree' / 'metadata' / 'partition.csv')
  build_args = ('--root=~/tree', '--data_dir=~/tfds', '--features=egemaps')
  ok(_at_home(home, tmp_path, '-m', 'muse_jax.data.build', *build_args))
  assert os.path.isdir(home / 'tfds' / 'muse_car' / 'egemaps')
  # main: --workdir, --data_root, --data_dir flags; the config's fusion_runs and cache folder.
  main_args = ('--workdir=~/w', '--data_root=~/tree', '--data_dir=~/tfds2')
  proc = ok(
    _at_home(home, tmp_path, SCRIPTED, f'--config={TINY}', '--config.num_epochs=1', *main_args)
  )
  saved = read_json(home / 'w' / 'config.json')
  assert saved['data_root'] == str(home / 'tree') and saved['data_dir'] == str(home / 'tfds2')
  assert os.path.isdir(home / 'tfds2' / 'muse_car' / 'fasttext')
  assert not os.path.exists(tmp_path / '~')  # nothing under a folder literally named ~
  del proc
  c = config_util.load_config('tiny')
  c.fusion_runs, c.data_root, c.data_dir = '~/w', '~/tree', '~/tfds'
  spec = config_util.parse(c)
  home_now = os.path.expanduser('~')
  assert spec.fusion_runs == (os.path.join(home_now, 'w'),)
  assert spec.data_dir == os.path.join(home_now, 'tfds')
  assert spec.data_root == os.path.join(home_now, 'tree')  # no tree there: kept as given
  code = (
    'import os, jax; from muse_jax.runtime import compile_cache; '
    "print(compile_cache.enable('~/cc'))"
  )
  env_cc = dict(HOME=str(home))
  proc = subprocess.run(
    [sys.executable, '-c', code],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    env={k: v for k, v in helpers.child_env(**env_cc).items() if k != 'JAX_COMPILATION_CACHE_DIR'},
    timeout=120,
  )
  assert proc.stdout.strip() == str(home / 'cc') and os.path.isdir(home / 'cc'), proc.stderr


def test_tilde_in_the_feature_and_job_commands(tmp_path):
  home = tmp_path / 'home'
  home.mkdir()
  ok(_at_home(home, tmp_path, '-m', 'muse_jax.features', 'sample', '--out=~/s', '--seconds=2'))
  assert os.path.isfile(home / 's' / 'sample.wav')
  # The job and reproduce take ~ in --out (they stop at once here: an unknown scale).
  for module in ('muse_jax.job', 'muse_jax.reproduce'):
    one_error(
      _at_home(home, tmp_path, '-m', module, '--out=~/o', '--scale=huge'), "unknown scale 'huge'"
    )
    assert not os.path.exists(tmp_path / '~')


# ------------------------------------------------------------------------------------------------
# 3. c3_muse_trust, the 2020 release's other continuous task.


@pytest.fixture(scope='module')
def release(tmp_path_factory):
  """A 2020 release root holding c1_muse_wild and c3_muse_trust (tiny, egemaps + fasttext)."""
  root = str(tmp_path_factory.mktemp('release') / 'muse2020')
  demo.make_tree(root, scale='tiny', features='egemaps,fasttext')
  demo.make_tree(root, scale='tiny', features='egemaps,fasttext', layout_name='muse2020_trust')
  return root


def test_2020_root_means_c1_muse_wild_and_says_which_tasks_it_holds(release, monkeypatch):
  layout._TOLD.discard(release)
  said = []  # the log line itself, whatever absl's verbosity another test left in this process
  monkeypatch.setattr(layout.logging, 'info', lambda msg, *args: said.append(msg % args))
  lay = layout.resolve(release)
  assert (lay.kind, lay.root, lay.task) == ('muse2020', release, 'c1_muse_wild')
  assert lay.targets() == ('arousal', 'valence')
  assert any('holds the tasks c1_muse_wild, c3_muse_trust; using c1_muse_wild' in l for l in said)
  assert layout.resolve(release, 'c1_muse_wild') == lay
  trust = layout.resolve(release, 'c3_muse_trust')
  assert trust == layout.resolve(os.path.join(release, 'c3_muse_trust'))  # its folder, directly
  assert (trust.kind, trust.task) == ('muse2020_task', 'c3_muse_trust')
  assert trust.partition_path == os.path.join(release, 'metadata', 'partition.csv')
  assert trust.label_folder('trustworthiness') == os.path.join(
    release, 'c3_muse_trust', 'label_segments', 'trustworthiness'
  )
  assert trust.feature_folder('egemaps') == os.path.join(
    release, 'c3_muse_trust', 'feature_segments', 'label_aligned', 'egemaps'
  )
  assert trust.label_columns == ('timestamp', 'value', 'segment_id')
  # Builds of the two tasks never share a folder.
  assert layout.task_data_dir('/d', lay) == '/d'
  assert layout.task_data_dir('/d', trust) == '/d/c3_muse_trust'
  with pytest.raises(
    MuseError, match="no task 'c2_muse_topic' here; found: c1_muse_wild, c3_muse_trust"
  ):
    layout.resolve(release, 'c2_muse_topic')
  with pytest.raises(
    MuseError, match='c1_muse_wild folder of a MuSe 2020 release; point --data_root at its parent'
  ):
    layout.resolve(os.path.join(release, 'c1_muse_wild'))


def test_a_2020_root_with_only_c3_muse_trust_resolves_to_it(tmp_path):
  root = str(tmp_path / 'trust_only')
  demo.make_tree(root, scale='tiny', features='egemaps', layout_name='muse2020_trust')
  assert sorted(os.listdir(root)) == ['c3_muse_trust', 'metadata']
  lay = layout.resolve(root)
  assert (lay.kind, lay.task) == ('muse2020_task', 'c3_muse_trust')


def test_c3_muse_trust_trains_builds_and_evaluates_through_the_cli(release, tmp_path):
  data_dir, workdir = tmp_path / 'tfds', tmp_path / 'w'
  proc = ok(
    run(
      [
        sys.executable,
        '-m',
        'muse_jax.data.build',
        f'--root={release}',
        '--task=c3_muse_trust',
        f'--data_dir={data_dir}',
        '--features=egemaps',
      ],
      tmp_path,
    )
  )
  assert 'targets arousal,trustworthiness,valence' in proc.stdout
  assert os.path.isdir(data_dir / 'c3_muse_trust' / 'muse_car' / 'egemaps')
  assert not os.path.exists(data_dir / 'muse_car')  # c1_muse_wild's place stays free
  cmd = [
    sys.executable,
    SCRIPTED,
    f'--config={TINY}',
    '--config.num_epochs=2',
    f'--workdir={workdir}',
    '--config.task=c3_muse_trust',
    '--config.targets=trustworthiness',
  ]
  ok(run(cmd + [f'--data_root={release}', f'--data_dir={data_dir}'], tmp_path))
  results = read_json(workdir / 'results.json')
  assert results['task'] == 'c3_muse_trust' and results['targets'] == ['trustworthiness']
  assert read_json(workdir / 'config.json')['data_root'] == os.path.join(release, 'c3_muse_trust')
  preds = workdir / 'predictions' / 'trustworthiness'
  trust = layout.resolve(release, 'c3_muse_trust')
  labelled = sorted(f for f in os.listdir(trust.label_folder('trustworthiness')))
  assert set(labelled) <= set(os.listdir(preds))
  with open(preds / labelled[0], encoding='utf-8') as f:
    assert f.readline().strip() == 'timestamp,value,segment_id'  # the 2020 release's order
  # evaluate and predict take the task like any run (the tree from the workdir)
  ok(run(cmd + ['--mode=evaluate'], tmp_path))
  assert read_json(workdir / 'eval_results.json')['task'] == 'c3_muse_trust'
  ok(run(cmd + ['--mode=predict'], tmp_path))
  assert os.listdir(workdir / 'predict' / 'trustworthiness')


# ------------------------------------------------------------------------------------------------
# The build never asks the network.


def test_build_is_offline(tiny_tree, tmp_path, monkeypatch, caplog):
  tried = []

  def refuse(*args, **kwargs):
    tried.append(args[:2])
    raise OSError('network disabled in this test')

  # As if tfds' bucket were on (a tfds version or setting that probes it): the build must still
  # not ask (try_download_gcs=False).
  from tensorflow_datasets.core.utils import gcs_utils  # noqa: PLC0415

  monkeypatch.setattr(gcs_utils, '_is_gcs_disabled', False)
  monkeypatch.setattr(socket, 'create_connection', refuse)
  monkeypatch.setattr(socket, 'getaddrinfo', refuse)
  monkeypatch.setattr(socket.socket, 'connect', refuse)
  with caplog.at_level(logging.INFO):
    build.ensure_built(tiny_tree, str(tmp_path / 'tfds'), ['egemaps'])
  assert tried == []
  assert os.path.isdir(tmp_path / 'tfds' / 'muse_car' / 'egemaps')
  assert 'gs://' not in caplog.text and 'GCS' not in caplog.text


def test_config_given_as_two_words_or_under_home(tmp_path):
  home = tmp_path / 'home'
  home.mkdir()
  shutil.copy(TINY, home / 'my.py')
  for flags in (['--config', TINY], ['--config=~/my.py']):
    proc = run(
      [sys.executable, '-m', 'muse_jax.main', *flags, '--workdir=W', 'extra'],
      tmp_path,
      HOME=str(home),
    )
    one_error(proc, "unexpected argument 'extra'")  # the config loaded: the stray word is next
