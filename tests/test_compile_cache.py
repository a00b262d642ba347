"""Persistent compilation cache (muse_jax.compile_cache), through the real command.

Each run is a fresh process without the test session's JAX_* cache variables, as a user's run:
the first fills the folder given by config.compilation_cache_dir, a rerun of the same programs
adds nothing to it and reports the same metrics even with an entry made unreadable (compiled again
with a warning), and 'none' writes no cache anywhere. Three cold-compiling runs: the suite's
slowest test, so each trains one epoch, with the devel scores its schedule sees scripted
(tests/scripted_main.py): whether one epoch beats the untrained model, which a run must to exit 0,
is float-level luck.
"""

import json
import os
import subprocess

import helpers
import scripted


def _run(workdir, tree, data_dir, cache, **extra_env):
  env = {k: v for k, v in helpers.child_env().items() if not k.startswith('JAX_')}
  env.update(SCRIPTED_DEVEL=json.dumps({314: scripted.IMPROVING}), **extra_env)
  proc = subprocess.run(
    helpers.train_command(
      workdir,
      tree,
      data_dir,
      '--config.num_epochs=1',
      '--config.targets=valence',
      f'--config.compilation_cache_dir={cache}',
      scripted=True,
    ),
    capture_output=True,
    text=True,
    env=env,
    cwd=os.path.dirname(workdir),
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc, helpers.read_json(os.path.join(workdir, 'results.json'))


def _entries(folder):
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _paths(root, skip):
  """Every file and folder under root (relative), but those under the top-level names `skip`."""
  out = set()
  for d, dirs, names in os.walk(root):
    rel = os.path.relpath(d, root)
    out |= {os.path.normpath(os.path.join(rel, n)) for n in dirs + names}
  return {p for p in out if p.split(os.sep)[0] not in skip}


def test_rerun_loads_every_step_from_the_cache_with_the_same_results(tiny_tree, tmp_path):
  cache, data_dir = str(tmp_path / 'xla'), str(tmp_path / 'tfds')
  proc, first = _run(str(tmp_path / 'run1'), tiny_tree, data_dir, cache)
  assert f'compilation cache: {cache}' in proc.stderr
  filled = _entries(cache)
  assert len(filled) >= 3, filled  # train step, last-batch step, evaluation buckets
  assert oct(os.stat(cache).st_mode & 0o777) == oct(0o700)

  biggest = max(filled, key=lambda n: os.path.getsize(os.path.join(cache, n)))
  with open(os.path.join(cache, biggest), 'wb') as f:  # e.g. a disk error, a killed writer
    f.write(b'not an executable')
  proc, again = _run(str(tmp_path / 'run2'), tiny_tree, data_dir, cache)  # a new run, same shapes
  assert 'Error reading persistent compilation cache entry' in proc.stderr
  assert _entries(cache) == filled  # nothing compiled that was not in the cache
  assert again['devel'] == first['devel'] and again['test'] == first['test']

  # 'none': the same programs that filled the empty folder above (run1) are cached nowhere. Where
  # they could land if 'none' were not honoured: the default folder (XDG_CACHE_HOME/muse_jax, in
  # a fresh folder here; matplotlib keeps its font cache there too), a folder named 'none' in the
  # working folder (tmp_path), or `cache`.
  home = tmp_path / 'home'
  home.mkdir()
  before = _paths(tmp_path, skip=('run3', 'home'))
  proc, off = _run(str(tmp_path / 'run3'), tiny_tree, data_dir, 'none', XDG_CACHE_HOME=str(home))
  assert 'compilation cache:' not in proc.stderr
  assert off['devel'] == first['devel']
  assert not (home / 'muse_jax').exists()
  assert _paths(tmp_path, skip=('run3', 'home')) == before
