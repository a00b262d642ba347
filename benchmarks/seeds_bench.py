"""Seeds side by side: `config.num_seeds=5` (one compiled step; `config.seed_loop`) vs 5
sequential single-seed runs of the paper config on the full-scale demo tree.

  ./run.sh py benchmarks/seeds_bench.py [--root TREE] [--epochs 3] [--seeds 5]

Prints steady-state seconds per epoch (train + devel evaluation) for one seed, for N seeds in
parallel, the N sequential runs' total, and the ratio parallel / one seed (target <= 2).
"""

import argparse
import json
import os
import statistics
import time

import common


def run(root, a, seeds, seed):
  cmd = common.jax_epoch_command(root) + [
    f'--features={a.features}',
    f'--target={a.target}',
    f'--epochs={a.epochs}',
    f'--seeds={seeds}',
    f'--seed={seed}',
    '--no_flops',
  ]
  if a.batch:
    cmd.append(f'--batch={a.batch}')
  if a.micro_batch:
    cmd.append(f'--micro_batch={a.micro_batch}')
  if seeds > 1:
    cmd.append(f'--seed_loop={a.seed_loop}')
  t0 = time.perf_counter()
  out = common.run_json(cmd)
  out['wall_s'] = time.perf_counter() - t0
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.tree_args(ap, epochs=3)
  ap.add_argument('--seeds', type=int, default=5)
  ap.add_argument('--batch', type=int, default=0, help="0 = the paper's 1024")
  ap.add_argument('--seed_loop', default='auto', help='config.seed_loop of the N-seed run')
  ap.add_argument(
    '--micro_batch',
    type=int,
    default=0,
    help='gradient accumulation slice (bounds memory); 0 = whole batch (5 seeds x '
    '1024 windows fit in 24 GiB since attention is computed in blocks)',
  )
  a = ap.parse_args()
  feats = a.features.split(',')
  root = common.subset_tree(common.full_tree(feats, a.root), a.fraction)
  common.ensure_built(root, feats)
  parallel = run(root, a, a.seeds, 314)
  print('# parallel', json.dumps(parallel), flush=True)
  singles = []
  for i in range(a.seeds):
    singles.append(run(root, a, 1, 314 + i))
    print('# single', json.dumps(singles[-1]), flush=True)
  one = statistics.median(r['epoch_s_median'] for r in singles)
  report = {
    'seeds': a.seeds,
    'epochs_per_run': a.epochs,
    'fraction_of_videos': a.fraction,
    'one_seed_epoch_s': one,
    'parallel_epoch_s': parallel['epoch_s_median'],
    'ratio_parallel_over_one_seed': parallel['epoch_s_median'] / one,
    'sequential_epoch_s': sum(r['epoch_s_median'] for r in singles),
    'speedup_vs_sequential': sum(r['epoch_s_median'] for r in singles) / parallel['epoch_s_median'],
    'parallel_wall_s': parallel['wall_s'],
    'sequential_wall_s': sum(r['wall_s'] for r in singles),
    'load_average': os.getloadavg(),
  }
  print(json.dumps(report, indent=1))
  print(
    f'{a.seeds} seeds in parallel: {report["parallel_epoch_s"]:.2f} s/epoch vs one seed '
    f'{one:.2f} s/epoch -> {report["ratio_parallel_over_one_seed"]:.2f}x '
    f'({report["speedup_vs_sequential"]:.2f}x faster than {a.seeds} sequential runs)'
  )


if __name__ == '__main__':
  main()
