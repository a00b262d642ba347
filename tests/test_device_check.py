"""benchmarks/device_check.py --small, the command prepared for a GPU slot, kept working on CPU:
every section measured (only cuDNN unavailable here), the multi-device figures as a run applies
them, and the figures agree with the CPU defaults in a JAX_PLATFORMS=cpu subprocess."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

import helpers

REPO = helpers.REPO


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
  """Its data folder (MUSE_BENCH_DIR): the tree slice is written once per module and worker."""
  return tmp_path_factory.mktemp('bench')


def device_check(bench, tmp_path, *args, devices=1):
  """(exit status, stdout, stderr, JSON report) of `device_check.py --small ARGS` on `devices`
  simulated CPU devices, on 1/32 of the full-scale tree (half of --small's slice: the same
  sections and figures on less data)."""
  out = tmp_path / 'dc.json'
  env = dict(
    os.environ,
    MUSE_BENCH_DIR=str(bench),
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
  )
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, 'benchmarks', 'device_check.py'),
      '--small',
      f'--out={out}',
      '--budget=100000',
      '--fraction=0.03125',
      *args,
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=900,
  )
  report = json.load(open(out)) if out.exists() else None
  return proc.returncode, proc.stdout, proc.stderr, report


def test_devices_section_shows_the_padded_batch_of_a_cluster_run(bench, tmp_path):
  """On 8 devices with --num_devices 3 (a count that divides nothing): the mesh, the rows each
  step and evaluation batch are padded to, as the trainer computes them, and muse_jax.main's
  multi-host flags, each documented in the README."""
  rc, _, err, report = device_check(
    bench, tmp_path, '--sections=devices', '--num_devices=3', '--batch=32', devices=8
  )
  assert rc == 0, err[-3000:]
  dev = {r['check']: r['figures'] for r in report['rows']}
  assert dev['devices (local / all), processes'] == {'local': 8, 'total': 8, 'processes': 1}
  assert dev['mesh (--num_devices 3)']['mesh_devices'] == 3
  assert dev["'auto' picks"] == {
    'attention': 'blocked',
    'seeds_mapped': True,
    'dispatch': 'synchronous',
  }
  # README's rule, worked by hand (its example: 1024 windows on 3 devices -> 1026 rows, 342 per
  # device): with 32-window steps (the slice has fewer than 1024 windows), a full step is padded
  # to 33 rows, 11 per device, the last step holds the rest, padded to a multiple of 3 likewise.
  pad = next(f for c, f in dev.items() if c.startswith('padded batch'))
  full, rest = divmod(pad['train_windows'], 32)
  assert full >= 1 and rest % 3, pad  # both kinds of step, and the last one is padded too
  assert pad['step_rows'] == sorted({33, rest + 3 - rest % 3}), pad
  assert pad['rows_per_device'] == 11
  # Evaluation: the longest video padded to the first length of the ladder 64, 96, 128, 192, ...
  # (powers of two and their 1.5x) that holds it; as many videos per batch as 2^22 attention
  # cells allow (at most 64, at least one), rounded up to a multiple of the 3 devices.
  ev = next(f for c, f in dev.items() if c.startswith('evaluation of the longest'))
  ladder = sorted(b for k in range(6, 20) for b in (2**k, 3 * 2 ** (k - 1)))
  bucket = next(b for b in ladder if b >= ev['longest'])
  videos = max(1, min(64, 2**22 // bucket**2))
  assert (ev['bucket'], ev['eval_rows']) == (bucket, videos + (-videos) % 3), (ev, bucket)
  flags = dev['multi-host']['flags']
  readme = open(os.path.join(REPO, 'README.md'), encoding='utf-8').read()
  assert set(flags) == {'distributed', 'coordinator_address', 'num_processes', 'process_id'}
  assert all(f'--{f}' in readme for f in flags) and '--config.num_devices' in readme
  rc, _, err, _ = device_check(bench, tmp_path, '--sections=devices', '--num_devices=9', devices=8)
  assert rc == 2 and err.strip().splitlines()[-1].startswith('error: config.num_devices=9')


def test_device_check_small_on_cpu(bench, tmp_path):
  # 2 seeds and 256-row steps: every section and figure as --small has them, with less work.
  rc, stdout, err, report = device_check(bench, tmp_path, '--seeds=2', '--batch=256')
  assert rc == 0, err[-3000:]
  rows = report['rows']
  by = lambda section: [r for r in rows if r['section'] == section]
  assert {r['section'] for r in rows} == {
    'devices',
    'epochs',
    'attention',
    'flops',
    'memory',
    'agreement',
  }
  assert not [r for r in rows if r['check'] in ('failed', 'skipped')], rows
  unavailable = [(r['section'], r['check']) for r in rows if r['figures'].get('available') is False]
  assert all('cudnn' in c for _, c in unavailable) and len(unavailable) == 2, unavailable
  assert 'slice of the full-scale demo tree (first 0.03125' in report['meta']['data']

  # The printed table is the JSON's rows, one line each.
  table = [l for l in stdout.splitlines() if l.startswith('| ') and 'section' not in l]
  assert len(table) == len(rows)

  dev = {r['check']: r['figures'] for r in by('devices')}
  assert dev['mesh (--num_devices 0)']['mesh_devices'] == 1

  # Epochs: 1 seed, seeds vmapped, seeds mapped through the real loop.
  ep = [r['figures'] for r in by('epochs')]
  assert [(f['seeds'], f['seed_loop']) for f in ep] == [(1, 'auto'), (2, 'vmap'), (2, 'map')]
  for f in ep:
    assert all(math.isfinite(f[k]) and f[k] > 0 for k in ('steady_s', 'first_s', 'run_s'))
    assert f['seeds'] == 1 or f['ratio_vs_one_seed'] > 1  # 2 seeds are 2 models' work

  # Attention cores agree with the plain one; FLOP/s, memory figures are real numbers.
  att = [r['figures'] for r in by('attention') if r['figures']['available']]
  assert len(att) == 3 and all(f['shape'] == [256, 200, 8, 8] for f in att)
  assert all(f['diff_grads'] < 1e-3 and f['diff_long'] < 1e-4 for f in att), att
  fl = [r['figures'] for r in by('flops')]
  assert all(f['flops_per_s'] > 0 for f in fl) and 0 < fl[0]['fraction_of_matmul'] < 2
  mem = [r['figures'] for r in by('memory')]
  assert [f['rows'] for f in mem][0] == 256 and all(f['total_bytes'] > 0 for f in mem)
  assert mem[0]['temp_bytes'] > 256 * 200 * 64 * 4  # at least one activation of the batch

  # Agreement with the CPU defaults computed in a JAX_PLATFORMS=cpu subprocess.
  ag = [r for r in by('agreement') if r['figures']['available']]
  assert len(ag) == 3 and all(r['check'].endswith('vs CPU blocked') for r in ag)
  for r in ag:
    f = r['figures']
    assert f['diff_preds'] < 1e-4 and f['diff_long'] < 1e-4, r
    assert f['diff_grads'] < 1e-3 * f['max_grad'], r
  auto = next(r for r in ag if '(auto)' in r['check'])
  assert re.match(r'blocked', auto['check']) and auto['figures']['diff_preds'] < 1e-6


def test_refuses_to_measure_the_cpu_on_a_gpu_machine(tmp_path):
  """A slot whose JAX lacks the CUDA plugin would measure the host CPU: one line, exit 2."""
  fake = tmp_path / 'bin'
  fake.mkdir()
  (fake / 'nvidia-smi').write_text('#!/bin/sh\necho "GPU 0: NVIDIA H200 (UUID: GPU-0)"\n')
  (fake / 'nvidia-smi').chmod(0o755)
  env = dict(os.environ, PATH=f'{fake}{os.pathsep}{os.environ["PATH"]}', JAX_PLATFORMS='cpu')
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, 'benchmarks', 'device_check.py'),
      f'--out={tmp_path / "dc.json"}',
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith(
    'error: nvidia-smi lists 1 GPU(s), but JAX runs on its CPU backend'
  ), proc.stderr
  assert not (tmp_path / 'dc.json').exists()
