"""A sweep of N members against N separate runs of the same settings, side by side in one call.

  ./run.sh py benchmarks/sweep_bench.py [--members 8] [--epochs 3] [--config demo]
      [--early_stopping]

The members differ in learning rate (log-spaced over 1e-3..1e-2, one seed each): what a sweep
trains as one compiled program. The separate runs are what users do today: one
`python -m muse_jax.main` process per setting. Both on the demo tree (`out/demo_tree_demo`,
written if missing), every process with cold compiles (no persistent cache), one after the
other on this machine. Printed: wall time, first epoch (compile + one epoch), steady epoch (median
of the others, from metrics.jsonl), member-epochs trained, and the ratio sweep / separate.
Early stopping is off unless --early_stopping keeps the config's (the demo's: patience 8), so
that members stop as they would in use; a stopped member costs the sweep nothing where seeds
are mapped (CPU), so both sides then train the same member-epochs.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from muse_jax.data import demo

import common  # sets sys.path to the repository


def _run(args, workdir, *flags) -> dict:
  env = {
    k: v
    for k, v in os.environ.items()
    if k not in ('JAX_COMPILATION_CACHE_DIR', 'XLA_FLAGS', 'SCRIPTED_DEVEL')
  }
  cmd = (
    [
      sys.executable,
      '-m',
      'muse_jax.main',
      f'--config=configs/{args.config}.py',
      f'--workdir={workdir}',
      f'--data_root={args.root}',
      f'--data_dir={args.data_dir}',
      f'--config.num_epochs={args.epochs}',
      '--config.compilation_cache_dir=none',
    ]
    + ([] if args.early_stopping else ['--config.early_stopping_patience=1000'])
    + list(flags)
  )
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO, env=env, check=False)
  wall = time.perf_counter() - t0
  if proc.returncode:
    sys.exit(f'failed: {" ".join(cmd)}\n{proc.stderr[-3000:]}')
  return {'wall': wall, **_epochs(workdir)}


def _epochs(workdir) -> dict:
  """First and steady epoch seconds of a run, or summed over a sweep's groups."""
  paths = [os.path.join(workdir, 'metrics.jsonl')]
  if not os.path.exists(paths[0]):
    groups = os.path.join(workdir, 'groups')
    paths = [os.path.join(groups, g, 'metrics.jsonl') for g in sorted(os.listdir(groups))]
  first, steady, trained = 0.0, 0.0, 0
  for p in paths:
    with open(p, encoding='utf-8') as f:
      records = [json.loads(l) for l in f]
    secs = [r['seconds'] for r in records]
    first += secs[0]
    steady += statistics.median(secs[1:]) if len(secs) > 1 else float('nan')
    trained += sum(s['train_loss'] is not None for r in records for s in r['seeds'])
  return {'first': first, 'steady': steady, 'member_epochs': trained}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--members', type=int, default=8)
  ap.add_argument('--epochs', type=int, default=3)
  ap.add_argument('--config', default='demo')
  ap.add_argument('--root', default='', help='a tree (default: the demo tree of out/)')
  ap.add_argument(
    '--early_stopping',
    action='store_true',
    help="keep the config's early stopping (default: off, every epoch trained)",
  )
  ap.add_argument(
    '--seed_loop',
    default='auto',
    help="the sweep's config.seed_loop: auto (map on CPU), vmap or map",
  )
  args = ap.parse_args()
  args.root = args.root or demo.tree_in(demo.default_out(), 'demo')
  work = tempfile.mkdtemp(
    prefix='sweep_bench_', dir=common.WORK if os.path.isdir(common.WORK) else None
  )
  args.data_dir = os.path.join(work, 'tfds')
  lrs = [float(f'{v:.3g}') for v in np.geomspace(1e-3, 1e-2, args.members)]
  # Build the dataset first, so neither side pays for it.
  _run(args, os.path.join(work, 'warm'), '--config.num_epochs=1')
  sweep = _run(
    args,
    os.path.join(work, 'sweep'),
    '--sweep=learning_rate=' + ','.join(map(str, lrs)),
    f'--config.seed_loop={args.seed_loop}',
  )
  sep = [
    _run(args, os.path.join(work, f'run_{i}'), f'--config.learning_rate={lr}')
    for i, lr in enumerate(lrs)
  ]
  total = {k: sum(r[k] for r in sep) for k in ('wall', 'first', 'steady', 'member_epochs')}
  print(
    f'# {args.members} members (learning rates {lrs}), {args.epochs} epochs, configs/'
    f'{args.config}.py on {args.root}; sweep seed_loop {args.seed_loop}; early stopping '
    f'{"as configured" if args.early_stopping else "off"}'
  )
  print('| | sweep (one program) | separate runs (sum) | sweep / separate |')
  print('|---|---|---|---|')
  for k, name in (
    ('wall', 'wall time'),
    ('first', 'first epoch (compile)'),
    ('steady', 'steady epoch'),
  ):
    print(f'| {name} | {sweep[k]:.1f} s | {total[k]:.1f} s | {sweep[k] / total[k]:.2f}x |')
  print(f'| member-epochs trained | {sweep["member_epochs"]} | {total["member_epochs"]} | |')
  shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  main()
