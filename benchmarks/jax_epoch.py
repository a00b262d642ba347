"""muse_jax's counterpart of /work/shared/bench/torch_epoch.py: trains the paper's model on a
MuSe-layout tree through the real training loop (train.train_and_evaluate) and prints JSON: data
seconds, per-epoch seconds (train and devel evaluation apart), compile seconds, devel CCC per
epoch, FLOPs per train step and a large float32 matmul's FLOP/s measured in the same process.

  python benchmarks/jax_epoch.py ROOT --features egemaps,fasttext --target valence --epochs 5
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from muse_jax import config_util
from muse_jax import input_pipeline as ip
from muse_jax import normalization
from muse_jax import runtime
from muse_jax import sources
from muse_jax import steps
from muse_jax import train


def matmul_flops(n=2048, reps=5) -> float:
  """FLOP/s of an n^3 float32 matmul: the machine's practical peak for this process."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  mm = jax.jit(lambda a: a @ a)
  jax.block_until_ready(mm(a))
  best = float('inf')
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(mm(a))
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


def step_flops(config, d_in, n_targets) -> float:
  """Useful FLOPs of one train step of the Regressor, counted from its matmuls.

  XLA's cost analysis is no help here: it counts a while loop's body once, not once per trip,
  so the recurrence (and the CPU path's attention blocks) would be counted 1/T-th. Convention of
  model-FLOPs utilisation: forward matmul FLOPs x 3 (backward = 2 x forward), minus the gradient
  of the inputs, which training does not compute; padded rows and steps count (they are computed).
  """
  m, t = config.model, config.win_len
  d, gates = m.d_rnn, {'lstm': 4, 'gru': 3}[m.rnn_type]
  k = 2 if m.rnn_bi else 1
  proj = 2 * t * d_in * d if d_in != d else 0
  attn = m.attn_n_layers * (2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d)
  rnn, width = 0, d
  for _ in range(m.rnn_n_layers):
    rnn += k * (2 * t * width * gates * d + 2 * t * d * gates * d)
    width = k * d
  head = 2 * t * width * m.d_out_fc + 2 * t * m.d_out_fc * n_targets
  forward = proj + attn + rnn + head
  input_grad = proj if proj else 2 * t * d * 3 * d * bool(m.attn_n_layers)
  return float(config.batch_size * config.num_seeds * (3 * forward - input_grad))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('root')
  ap.add_argument('--features', default='egemaps')
  ap.add_argument('--target', default='valence')
  ap.add_argument('--epochs', type=int, default=5)
  ap.add_argument('--win', type=int, default=200)
  ap.add_argument('--hop', type=int, default=100)
  ap.add_argument('--batch', type=int, default=1024)
  ap.add_argument('--seeds', type=int, default=1)
  ap.add_argument('--micro_batch', type=int, default=0)
  ap.add_argument('--seed', type=int, default=314)
  ap.add_argument(
    '--data_dir', default=os.path.join(tempfile.gettempdir(), 'muse_jax_bench', 'tfds')
  )
  ap.add_argument('--no_flops', action='store_true')
  ap.add_argument('--seed_loop', default='auto', help='config.seed_loop: auto | vmap | map')
  ap.add_argument(
    '--reuse_cpu_buffers',
    type=int,
    default=1,
    help='config.reuse_cpu_buffers (0: large buffers page-faulted in every step)',
  )
  ap.add_argument(
    '--compilation_cache_dir',
    default='none',
    help="config.compilation_cache_dir; 'none' (default here) measures cold compiles",
  )
  a = ap.parse_args()
  c = config_util.load_config('valence')
  c.data_root, c.data_dir = a.root, a.data_dir
  c.feature_sets, c.targets, c.add_segment_id = tuple(a.features.split(',')), (a.target,), False
  c.normalize = 'all'  # as every figure in RESULTS.md was measured (valence.py is now raw)
  c.win_len, c.hop_len, c.batch_size = a.win, a.hop, a.batch
  c.num_epochs, c.early_stopping_patience = a.epochs, a.epochs + 1
  c.num_seeds, c.seed, c.micro_batch_size = a.seeds, a.seed, a.micro_batch
  c.reuse_cpu_buffers, c.seed_loop = bool(a.reuse_cpu_buffers), a.seed_loop
  c.compilation_cache_dir = a.compilation_cache_dir
  work = tempfile.mkdtemp(prefix='jax_epoch_')
  runtime.configure(c)  # as the entry points do: train_and_evaluate leaves the process alone
  t0 = time.perf_counter()
  train.train_and_evaluate(c, work)
  total = time.perf_counter() - t0
  log = [json.loads(l) for l in open(os.path.join(work, 'metrics.jsonl'))]
  epoch_s = [r['seconds'] for r in log]
  steady = epoch_s[1:] or epoch_s
  out = {
    'total_s': round(total, 3),
    'epochs': len(log),
    'epoch_s': [round(s, 3) for s in epoch_s],
    'epoch_s_median': round(statistics.median(steady), 3),
    'train_s_median': round(statistics.median(r['train_seconds'] for r in log[1:] or log), 3),
    'eval_s_median': round(statistics.median(r['eval_seconds'] for r in log[1:] or log), 3),
    'compile_s': round(epoch_s[0] - statistics.median(steady), 3),
    'outside_epochs_s': round(total - sum(epoch_s), 3),
    'devel_ccc': [[round(s['devel']['mean_ccc'], 4) for s in r['seeds']] for r in log],
    'seeds': a.seeds,
    'devices': jax.device_count(),
    'jax': jax.__version__,
  }
  if not a.no_flops:
    d_in = int(normalization.NormStats.load(os.path.join(work, 'norm_stats.npz')).mean.shape[0])
    # Rows computed per epoch: full batches, and the last one padded only to the device and
    # micro-batch multiple (input_pipeline.train_batches).
    n = len(ip.train_windows(c, sources.load_videos(config_util.parse(c))[0]['train']).lengths)
    rows = sum(ip.step_rows(n, c.batch_size, jax.device_count() * steps.micro_batches(c)))
    out['flops_per_step'] = step_flops(c, d_in, 1)  # a full batch
    out['steps_per_epoch'] = log[-1]['steps']
    out['train_windows'], out['rows_per_epoch'] = n, rows
    out['step_flops_per_s'] = out['flops_per_step'] * rows / c.batch_size / out['train_s_median']
    out['matmul_flops_per_s'] = matmul_flops()
    out['fraction_of_matmul'] = round(out['step_flops_per_s'] / out['matmul_flops_per_s'], 3)
  print(json.dumps(out))


if __name__ == '__main__':
  main()
