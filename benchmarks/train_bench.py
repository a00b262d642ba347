"""Training speed: muse_jax vs the PyTorch reference, side by side in one run.

  ./run.sh py benchmarks/train_bench.py [--root TREE] [--epochs 4] [--repeat 2] [--scaling]

On the full-scale demo tree (290 videos, ~560k frames) with the paper's config (valence,
egemaps + fasttext, biLSTM 64, attention 1 x 8 heads, win 200 / hop 100, batch 1024): runs
muse_jax (benchmarks/jax_epoch.py, the real training loop) and, when a torch venv exists
(/work/shared/bench/setup_torch.sh .torch-venv), the reference torch_epoch.py, alternating, each in
a fresh process, and prints median steady-state epoch seconds (train + devel evaluation; compile
apart), whole-run seconds and the ratio muse_jax / torch; plus the train step's achieved FLOP/s as a
fraction of a large float32 matmul's FLOP/s in the same process. --scaling adds epoch time versus
number of videos (1/4, 1/2, all) and window length (100, 200, 400).
"""

import argparse
import json
import os
import platform
import statistics
import time

import common


def jax_run(root, a, **kw):
  args = dict(
    features=a.features, target=a.target, epochs=a.epochs, win=200, hop=100, batch=1024, seeds=1
  )
  args.update(kw)
  cmd = common.jax_epoch_command(root) + [f'--{k}={v}' for k, v in args.items()]
  return common.run_json(cmd)


def torch_run(root, a, py, script):
  t0 = time.perf_counter()
  out = common.run_json(
    [py, script, root, '--features', a.features, '--target', a.target, '--epochs', str(a.epochs)]
  )
  out['total_s'] = time.perf_counter() - t0
  # Same steady-state definition as muse_jax's: drop the first epoch.
  out['steady_s'] = statistics.median(out['epoch_s'][1:] or out['epoch_s'])
  return out


def scaling(full, feats, a) -> dict:
  """Steady-state epoch seconds versus number of videos (1/4, 1/2, all) and window length."""
  out = {'scaling_videos': {}, 'scaling_win': {}}
  for frac in (0.25, 0.5, 1.0):
    sub = common.subset_tree(full, frac)
    common.ensure_built(sub, feats)
    r = jax_run(sub, a, epochs=3)
    out['scaling_videos'][frac] = {
      'epoch_s': r['epoch_s_median'],
      'train_s': r['train_s_median'],
      'eval_s': r['eval_s_median'],
    }
    print('# videos', frac, json.dumps(r), flush=True)
  for win in (100, 200, 400):
    r = jax_run(full, a, epochs=3, win=win, hop=win // 2)
    out['scaling_win'][win] = {
      'epoch_s': r['epoch_s_median'],
      'train_s': r['train_s_median'],
      'eval_s': r['eval_s_median'],
    }
    print('# win', win, json.dumps(r), flush=True)
  out['load_average'] = os.getloadavg()
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.tree_args(ap, epochs=4)
  ap.add_argument('--repeat', type=int, default=2)
  ap.add_argument('--scaling', action='store_true')
  ap.add_argument('--only_scaling', action='store_true', help='skip the muse_jax vs torch runs')
  a = ap.parse_args()
  feats = a.features.split(',')
  full = common.full_tree(feats, a.root)
  root = common.subset_tree(full, a.fraction)
  t0 = time.perf_counter()
  common.ensure_built(root, feats)
  print(f'# dataset ready in {time.perf_counter() - t0:.1f} s', flush=True)
  if a.only_scaling:
    print(json.dumps(scaling(full, feats, a), indent=1))
    return
  py, script = common.torch_python(), common.torch_epoch_script()
  runs = {'muse_jax': [], 'torch': []}
  for _ in range(a.repeat):  # alternating, so both see the same machine state
    runs['muse_jax'].append(jax_run(root, a))
    print('# muse_jax', json.dumps(runs['muse_jax'][-1]), flush=True)
    if py and script:
      runs['torch'].append(torch_run(root, a, py, script))
      print('# torch', json.dumps(runs['torch'][-1]), flush=True)
  j = runs['muse_jax']
  report = {
    'machine': f'{platform.machine()} {os.cpu_count()} cores',
    'features': a.features,
    'fraction_of_videos': a.fraction,
    'epochs_per_run': a.epochs,
    'runs': a.repeat,
    'muse_jax_epoch_s': statistics.median(r['epoch_s_median'] for r in j),
    'muse_jax_train_s': statistics.median(r['train_s_median'] for r in j),
    'muse_jax_eval_s': statistics.median(r['eval_s_median'] for r in j),
    'muse_jax_compile_s': statistics.median(r['compile_s'] for r in j),
    'muse_jax_total_s': statistics.median(r['total_s'] for r in j),
    'step_gflops_per_s': statistics.median(r['step_flops_per_s'] for r in j) / 1e9,
    'matmul_gflops_per_s': statistics.median(r['matmul_flops_per_s'] for r in j) / 1e9,
    'fraction_of_matmul': statistics.median(r['fraction_of_matmul'] for r in j),
  }
  if runs['torch']:
    t = runs['torch']
    report.update(
      {
        'torch_epoch_s': statistics.median(r['steady_s'] for r in t),
        'torch_load_s': statistics.median(r['load_s'] for r in t),
        'torch_total_s': statistics.median(r['total_s'] for r in t),
        'torch_threads': t[0]['threads'],
      }
    )
    report['epoch_ratio_muse_jax_over_torch'] = report['muse_jax_epoch_s'] / report['torch_epoch_s']
    report['total_ratio_muse_jax_over_torch'] = report['muse_jax_total_s'] / report['torch_total_s']
  if a.scaling:
    report.update(scaling(full, feats, a))
  report['load_average'] = os.getloadavg()
  print(json.dumps(report, indent=1))
  if 'epoch_ratio_muse_jax_over_torch' in report:
    print(
      f'steady-state epoch: muse_jax {report["muse_jax_epoch_s"]:.2f} s vs torch '
      f'{report["torch_epoch_s"]:.2f} s -> ratio {report["epoch_ratio_muse_jax_over_torch"]:.2f}'
    )
  print(
    f'train step: {report["step_gflops_per_s"]:.1f} GFLOP/s = '
    f'{100 * report["fraction_of_matmul"]:.0f}% of matmul peak '
    f'({report["matmul_gflops_per_s"]:.1f} GFLOP/s)'
  )


if __name__ == '__main__':
  main()
