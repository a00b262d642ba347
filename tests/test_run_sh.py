"""run.sh's setup installs the JAX plugin of the machine's accelerator (`./run.sh accel` says
which), so a GPU slot never measures jaxlib's CPU backend by mistake."""

import os
import re
import subprocess

import pytest

import helpers

REPO = helpers.REPO


def accel(tmp_path, driver=None, override=None):
  """`./run.sh accel` with a fake nvidia-smi reporting `driver` (None: no GPU)."""
  fake = tmp_path / 'bin'
  fake.mkdir(exist_ok=True)
  smi = fake / 'nvidia-smi'
  smi.write_text(
    '#!/bin/sh\n'
    + (
      f'echo {driver}\n'
      if driver
      # as a missing driver does:
      else 'echo "NVIDIA-SMI has failed because it couldn\'t communicate '
      'with the NVIDIA driver."; exit 9\n'
    )
  )
  smi.chmod(0o755)
  env = dict(os.environ, PATH=f'{fake}{os.pathsep}{os.environ["PATH"]}')
  env.pop('MUSE_JAX_ACCEL', None)
  if override:
    env['MUSE_JAX_ACCEL'] = override
  return subprocess.run(
    ['bash', os.path.join(REPO, 'run.sh'), 'accel'],
    capture_output=True,
    text=True,
    env=env,
    timeout=60,
  )


@pytest.mark.parametrize(
  'driver, want',
  [('580.65.06', 'cuda13'), ('590.12', 'cuda13'), ('550.54.15', 'cuda12'), (None, 'cpu')],
)
def test_accelerator_from_the_driver(tmp_path, driver, want):
  if driver is None and any(re.fullmatch(r'accel\d+', n) for n in os.listdir('/dev')):
    want = 'tpu'
  proc = accel(tmp_path, driver)
  assert proc.returncode == 0 and proc.stdout.strip() == want, proc.stderr


def test_accelerator_override(tmp_path):
  assert accel(tmp_path, '580.65.06', override='cpu').stdout.strip() == 'cpu'
  bad = accel(tmp_path, override='rocm')
  assert bad.returncode == 1 and 'MUSE_JAX_ACCEL=rocm: use cpu, cuda12, cuda13 or tpu' in bad.stderr
