"""Persistent compilation cache (muse_jax.compile_cache), through the real command.

Each run is a fresh process without the test session's JAX_* cache variables, as a user's run:
the first fills the folder given by config.compilation_cache_dir, a rerun of the same programs
adds nothing to it and reports the same metrics even with an entry made unreadable (compiled again
with a warning), and 'none' leaves the folder alone. Three cold-compiling runs: the suite's
slowest test, so each trains one epoch.
"""
import json
import os
import subprocess

from test_reliability import command  # pylint: disable=wrong-import-order


def _run(workdir, tree, data_dir, cache):
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_') and k != 'XLA_FLAGS'}
  proc = subprocess.run(
      command(workdir, tree, data_dir, '--config.num_epochs=1', '--config.targets=valence',
              f'--config.compilation_cache_dir={cache}'),
      capture_output=True, text=True, env=env, cwd=os.path.dirname(workdir), timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'results.json'), encoding='utf-8') as f:
    return proc, json.load(f)


def _entries(folder):
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


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

  proc, off = _run(str(tmp_path / 'run3'), tiny_tree, data_dir, 'none')
  assert 'compilation cache:' not in proc.stderr
  assert off['devel'] == first['devel']
  assert _entries(cache) == filled
