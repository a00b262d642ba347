"""The accelerator path on a real GPU or TPU: skipped with a reason where there is none.

The rest of the suite runs on the CPU backend with simulated devices (conftest.py sets
JAX_PLATFORMS=cpu, for this process and its children); these tests drop that setting in their
own child, so the machine's accelerator runs them. `./run.sh device-check` runs this file on a
GPU slot, beside benchmarks/device_check.py. The CPU path of the same code (attention 'plain',
vmapped seeds, asynchronous dispatch forced on CPU) is tested everywhere in test_parallel.py.
"""

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import helpers

TINY, SCRIPTED = helpers.TINY, helpers.SCRIPTED_MAIN
# Devel scores the schedule sees (seeds 314, 315): a new best every epoch on any device, so both
# runs keep their last epoch and exit 0 whatever the kernels' rounding.
SCRIPT = json.dumps({'314': [0.5, 0.6, 0.7], '315': [0.5, 0.6, 0.7]})


def _device_env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_PLATFORMS', 'XLA_FLAGS')}
  env.update(SCRIPTED_DEVEL=SCRIPT, **extra)
  return env


@functools.lru_cache(maxsize=1)
def _backend() -> str:
  """The backend JAX picks on this machine when nothing forces the CPU ('cpu' if none else)."""
  code = 'import jax; print(jax.default_backend())'
  try:
    proc = subprocess.run(
      [sys.executable, '-c', code],
      capture_output=True,
      text=True,
      env=_device_env(),
      timeout=180,
      check=False,
    )
  except subprocess.TimeoutExpired:
    return 'cpu'
  return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout else 'cpu'


def _skip_without_accelerator():
  backend = _backend()
  if backend == 'cpu':
    pytest.skip(
      'no GPU or TPU on this machine (JAX finds only the CPU): the accelerator path '
      'runs on one, e.g. through ./run.sh device-check'
    )
  return backend


def _train(tree, workdir, data_dir, env, *flags):
  cmd = [
    sys.executable,
    SCRIPTED,
    f'--config={TINY}',
    f'--workdir={workdir}',
    f'--data_root={tree}',
    f'--data_dir={data_dir}',
    '--config.num_epochs=3',
    '--config.num_seeds=2',
  ] + list(flags)
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
  assert proc.returncode == 0 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'results.json'), encoding='utf-8') as f:
    return proc, json.load(f)


def test_training_on_the_accelerator_runs_there_and_scores_like_the_cpu(tiny_tree, tmp_path):
  backend = _skip_without_accelerator()
  proc, dev = _train(tiny_tree, tmp_path / 'dev', tmp_path / 'tfds', _device_env())
  assert f' {backend} device(s)' in proc.stderr  # the loop's data line names the platform
  assert 'plain attention' in proc.stderr and 'vmapped' in proc.stderr  # what auto picks there
  _, cpu = _train(tiny_tree, tmp_path / 'cpu', tmp_path / 'tfds', _device_env(JAX_PLATFORMS='cpu'))
  assert dev['epochs_run'] == 3 and dev['best_epoch'] == 3
  for split in ('devel', 'test'):
    for t in dev['targets']:
      a, b = dev[split][t]['ccc'], cpu[split][t]['ccc']
      assert np.isfinite(a) and abs(a - b) < 0.1, (split, t, a, b)  # other kernels, same model
