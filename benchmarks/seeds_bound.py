"""Can S seeds in parallel ever take <= 2x one seed on this machine? A bound from measurements.

  ./run.sh py benchmarks/seeds_bound.py [--seeds 5] [--batch 1024] [--repeat 3]

The paper's train step (step_profile.model_step: forward + backward of the CCC loss, batch 1024 x
200 x 388, random data) timed in child processes, one on all cores and one pinned to a single
core (os.sched_setaffinity before JAX starts, so XLA sizes its thread pools to it):
  * one seed, and S seeds mapped (the CPU default, config.seed_loop) and vmapped;
  * a 2048^3 float32 matmul, the FLOP/s yardstick, and a streaming elementwise pass (memory
    bandwidth), on the same cores.
S seeds are S times the arithmetic. On n cores they cannot take less than their time on one core
divided by n (perfect scaling, the same kernels; the faster of mapped and vmapped counts, so a
larger vmapped op's better efficiency is credited). If that bound is above 2x one seed's step on
all cores, the target is out of reach on this machine whatever the scheduling. It also shows how
far one seed is from using every core: its one-core time / its all-core time vs the core count.
"""

import argparse
import json
import os
import subprocess
import sys


def child(a):
  """Runs in a fresh process (pinned by the parent's --cores): prints one JSON line."""
  if a.cores:
    os.sched_setaffinity(0, set(range(a.cores)))
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from muse_jax import runtime  # noqa: PLC0415

  runtime.configure()  # as training's entry points do (must precede JAX's CPU client)
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from jax_epoch import matmul_flops  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  import step_profile as sp  # noqa: PLC0415

  batch = sp.random_batch(a.batch, a.win)
  out = {'cores': len(os.sched_getaffinity(0)), 'peak_flops': matmul_flops()}
  # A streaming elementwise pass (256 MB in, 256 MB out): memory bandwidth, shared by all cores.
  big = jnp.asarray(np.random.default_rng(0).normal(size=(1 << 26,)), jnp.float32)
  out['stream_bytes_per_s'] = (
    2 * big.nbytes / sp.best_of(jax.jit(lambda x: x * 2.0 + 1.0), (big,), a.repeat)
  )
  for name, seeds, mapped in [
    ('one seed', 1, False),
    ('seeds mapped', a.seeds, True),
    ('seeds vmapped', a.seeds, False),
  ]:
    f, args = sp.model_step({}, batch, seeds, mapped)
    # More calls for the short step: one process's calls run at two speeds (RESULTS.md).
    out[name] = sp.best_of(f, args, a.repeat * (2 if seeds == 1 else 1))
  print(json.dumps(out), flush=True)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--seeds', type=int, default=5)
  ap.add_argument('--batch', type=int, default=1024)
  ap.add_argument('--win', type=int, default=200)
  ap.add_argument('--repeat', type=int, default=3)
  ap.add_argument('--cores', type=int, default=0, help=argparse.SUPPRESS)  # child: pin to N
  a = ap.parse_args()
  if a.cores:
    return child(a)
  runs = {}
  n_all = len(os.sched_getaffinity(0))
  for cores in (n_all, 1):
    cmd = [
      sys.executable,
      os.path.abspath(__file__),
      f'--cores={cores}',
      f'--seeds={a.seeds}',
      f'--batch={a.batch}',
      f'--win={a.win}',
      f'--repeat={a.repeat}',
    ]
    runs[cores] = json.loads(
      subprocess.run(cmd, check=True, capture_output=True, text=True)
      .stdout.strip()
      .splitlines()[-1]
    )
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from step_profile import counts  # noqa: PLC0415

  flops = counts({}, a)[0]
  every, one = runs[n_all], runs[1]
  best_one_core = min(one['seeds mapped'], one['seeds vmapped'])
  bound = best_one_core / n_all
  report = {
    'cores': n_all,
    'seeds': a.seeds,
    'runs': runs,
    'flops_per_seed_step': flops,
    'ratio_measured': min(every['seeds mapped'], every['seeds vmapped']) / every['one seed'],
    'bound_s': bound,
    'target_s': 2 * every['one seed'],
    'ratio_bound': bound / every['one seed'],
    'one_seed_core_scaling': one['one seed'] / every['one seed'],
  }
  print(f'{"":24s} {"all " + str(n_all) + " cores":>14s} {"1 core":>10s}')
  print(
    f'{"matmul peak GFLOP/s":24s} {every["peak_flops"] / 1e9:14.1f} {one["peak_flops"] / 1e9:10.1f}'
  )
  print(
    f'{"elementwise stream GB/s":24s} {every["stream_bytes_per_s"] / 1e9:14.1f} '
    f'{one["stream_bytes_per_s"] / 1e9:10.1f}'
  )
  for k in ('one seed', 'seeds mapped', 'seeds vmapped'):
    share = lambda r: (a.seeds if k != 'one seed' else 1) * flops / r[k] / r['peak_flops']
    print(
      f'{k:24s} {every[k]:12.3f} s {one[k]:8.3f} s   of peak: {share(every):.1%} / {share(one):.1%}'
    )
  print(
    f'one seed on {n_all} cores vs 1: {report["one_seed_core_scaling"]:.2f}x faster '
    f'(perfect: {n_all}x)'
  )
  print(f'{a.seeds} seeds / one seed, measured on {n_all} cores: {report["ratio_measured"]:.2f}x')
  print(
    f'{a.seeds} seeds, lower bound (best one-core time / {n_all}): {bound:.2f} s = '
    f'{report["ratio_bound"]:.2f}x one seed (target <= 2x: {report["target_s"]:.2f} s)'
  )
  print(json.dumps(report))


if __name__ == '__main__':
  main()
