"""Where a train step's time goes, and how fast its op shapes can run on this machine at all.

  ./run.sh py benchmarks/step_profile.py [--batch 1024] [--win 200] [--seeds 1,5] [--trace DIR]
                                         [--reuse_cpu_buffers 1]

The paper's model (388 inputs -> 64, attention 1 x 8 heads, biLSTM 64, head 64) on random data,
forward + backward of the CCC loss, jitted, min of --repeat runs, all in one process:
  * ablations: the full step with blocked (the CPU default) and unblocked attention, without
    attention, with a unidirectional LSTM, and the full step with S seeds, vmapped or mapped;
  * their useful FLOPs (counted from the matmuls, jax_epoch.step_flops) per second, as a share of
    a 2048^3 float32 matmul's FLOP/s: the target's yardstick; and a floor: those FLOPs at that
    peak plus the step's transcendentals (LSTM gates, softmax exps; counted likewise) at the
    machine's measured exp/tanh/logistic rate;
  * ceilings: the step's own matmul shapes timed alone (the recurrence's h @ W_hh inside a
    200-step scan, the input projection, the attention score products of one block): what share
    of peak those shapes reach even with nothing else around them.
Each step also reports its minor page faults per call (muse_jax.runtime.host_memory: with
--reuse_cpu_buffers 0 every step faults its temporaries in again).
--trace DIR also writes a jax.profiler trace of the full step and prints its 15 longest ops.
--per_call N only times N calls of the full step, one line each (RESULTS: "two speeds").
"""

import argparse
import collections
import glob
import gzip
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
from jax_epoch import matmul_flops
from jax_epoch import step_flops
import ml_collections
import numpy as np

from muse_jax import config_util
from muse_jax import losses
from muse_jax import models
from muse_jax import runtime
from muse_jax import steps
from muse_jax.ops import attention


def timed(f, args, repeat) -> tuple:
  """(min seconds over `repeat` calls after a warm-up, minor page faults per call)."""
  jax.block_until_ready(f(*args))
  times = []
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(repeat):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - t)
  return min(times), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeat


def best_of(f, args, repeat):
  return timed(f, args, repeat)[0]


def counts(kw, a, seeds=1, blocked=True) -> tuple:
  """(useful FLOPs, transcendentals) of one step: XLA's cost analysis counts loop bodies once,
  so both are counted from the model's shapes. Transcendentals: 5 per LSTM cell output (3
  logistic, 2 tanh) and one exp per attention score, twice when blocks are rematerialised."""
  c = config_util.load_config('valence')
  c.batch_size, c.win_len, c.num_seeds = a.batch, a.win, seeds
  c.model.update(kw)
  m, k = c.model, (2 if c.model.rnn_bi else 1)
  trans = 5 * a.win * k * m.d_rnn * m.rnn_n_layers + m.attn_n_layers * m.n_heads * a.win**2 * (
    2 if blocked else 1
  )
  return step_flops(c, 388, 1), float(a.batch * seeds * trans)


def random_batch(batch: int, win: int) -> tuple:
  """(x [B, T, 388], y [B, T, 1], lengths [B] in [T/2, T]): random data of the paper's shapes."""
  rng = np.random.default_rng(0)
  lengths = jnp.asarray(rng.integers(win // 2, win + 1, size=batch), jnp.int32)
  return (
    jnp.asarray(rng.normal(size=(batch, win, 388)), jnp.float32),
    jnp.asarray(rng.normal(size=(batch, win, 1)), jnp.float32),
    lengths,
  )


def model_step(kw, batch, seeds=1, mapped=False, impl='blocked'):
  """Jitted value_and_grad of the CCC loss over `seeds` parameter sets, vmapped or mapped one
  after the other (config.seed_loop) exactly as training runs them (steps.over_seeds), and its
  args."""
  x, y, lengths = batch
  model = models.Regressor(**kw, attention=impl)
  keys = jax.random.split(jax.random.key(0), seeds)
  params = jax.vmap(lambda k: model.init(k, x[:2], lengths[:2]))(keys)
  mask = attention.length_mask(lengths, x.shape[1])
  loss = lambda p: losses.get_loss('ccc')(model.apply(p, x, lengths), y, mask)
  grad = jax.value_and_grad(loss)
  return jax.jit(steps.over_seeds(grad, mapped, 1)), (params,)


def ceilings(a, peak, repeat):
  """FLOP/s of the step's matmul shapes alone, as a share of peak."""
  rng = np.random.default_rng(0)
  arr = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  h, w = arr(2, a.batch, 64), arr(2, 64, 256)

  def recurrence(h, w):  # a.win sequential steps of the biLSTM's hidden matmul
    return jax.lax.scan(
      lambda c, _: (jnp.tanh(jnp.einsum('kbh,khg->kbg', c, w)[..., :64]), None),
      h,
      None,
      length=a.win,
    )[0]

  x, wi = arr(a.batch * a.win, 388), arr(388, 64)
  c = 2  # windows per attention block at the default block size
  q, k = arr(a.batch // c, c, a.win, 8, 8), arr(a.batch // c, c, a.win, 8, 8)

  def scores(q, k):  # the score product of every block of a batch, one block at a time
    return jax.lax.map(lambda qk: jnp.einsum('bqhd,bkhd->bhqk', *qk).max(), (q, k))

  out = {}
  for name, f, args, flops in [
    ('recurrence h @ W_hh (scan)', recurrence, (h, w), 2 * 2 * a.batch * 64 * 256 * a.win),
    ('input projection', lambda x, w: x @ w, (x, wi), 2 * a.batch * a.win * 388 * 64),
    ('attention scores (blocks)', scores, (q, k), 2 * a.batch * 8 * a.win * a.win * 8),
  ]:
    s = best_of(jax.jit(f), args, repeat)
    out[name] = {
      's': round(s, 4),
      'gflops_per_s': round(flops / s / 1e9, 1),
      'share_of_peak': round(flops / s / peak, 3),
    }
  return out


def transcendental_rate(repeat) -> float:
  """exp / tanh / logistic evaluations per second over a 64M-element array (both cores)."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1 << 26,)), jnp.float32)
  f = jax.jit(lambda x: jnp.exp(-x) + jnp.tanh(x) + jax.nn.sigmoid(x))
  return 3 * x.size / best_of(f, (x,), repeat)


def top_ops(trace_dir, n=15):
  path = sorted(glob.glob(os.path.join(trace_dir, 'plugins/profile/*/*.trace.json.gz')))[-1]
  events = json.load(gzip.open(path))['traceEvents']
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and not e['name'].startswith(('$', 'Thunk', 'Slinky')):
      total[e['name']] += e['dur']
      count[e['name']] += 1
  return [(name, round(us / 1e3, 1), count[name]) for name, us in total.most_common(n)]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--batch', type=int, default=1024)
  ap.add_argument('--win', type=int, default=200)
  ap.add_argument('--seeds', default='1,5')
  ap.add_argument('--repeat', type=int, default=3)
  ap.add_argument('--trace', default='')
  ap.add_argument(
    '--per_call',
    type=int,
    default=0,
    help='only time N calls of the full step, one line each (wall, CPU, faults, '
    'context switches): shows whether calls of one process vary',
  )
  ap.add_argument(
    '--reuse_cpu_buffers',
    type=int,
    default=1,
    help='muse_jax.runtime.host_memory, as training does (0: buffers faulted in per step)',
  )
  a = ap.parse_args()
  reuse = runtime.configure(
    ml_collections.ConfigDict(
      {'reuse_cpu_buffers': bool(a.reuse_cpu_buffers), 'compilation_cache_dir': 'none'}
    )
  )['reuse_cpu_buffers']
  batch = random_batch(a.batch, a.win)
  peak = matmul_flops()
  print(
    f'# matmul peak {peak / 1e9:.1f} GFLOP/s; batch {a.batch} x {a.win} x 388; '
    f'{os.cpu_count()} cpus, jax {jax.__version__}; large buffers reused: {reuse}',
    flush=True,
  )

  base = {}
  if a.per_call:
    f, args = model_step(base, batch)
    jax.block_until_ready(f(*args))
    for _ in range(a.per_call):
      r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
      jax.block_until_ready(f(*args))
      s, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
      print(
        f'{s:6.3f} s  user {r1.ru_utime - r0.ru_utime:5.2f} s  sys '
        f'{r1.ru_stime - r0.ru_stime:4.2f} s  faults {r1.ru_minflt - r0.ru_minflt:6d}  '
        f'context switches {r1.ru_nvcsw - r0.ru_nvcsw:6d}',
        flush=True,
      )
    return
  variants = [
    ('full, blocked attention (CPU default)', base, 'blocked'),
    ('full, plain attention', base, 'plain'),
    ('no attention', dict(attn_n_layers=0), 'plain'),
    ('no attention, unidirectional LSTM', dict(attn_n_layers=0, rnn_bi=False), 'plain'),
  ]
  rows = []
  for name, kw, impl in variants:
    flops, trans = counts(kw, a, blocked=impl == 'blocked')
    f, args = model_step(kw, batch, impl=impl)
    rows.append((name, *timed(f, args, a.repeat), flops, trans))
  for n in [int(v) for v in a.seeds.split(',') if int(v) > 1]:
    for mapped in (False, True):
      f, args = model_step(base, batch, n, mapped)
      rows.append(
        (
          f'full, {n} seeds {"mapped" if mapped else "vmapped"}',
          *timed(f, args, a.repeat),
          n * rows[0][3],
          n * rows[0][4],
        )
      )
  rate = transcendental_rate(a.repeat)
  report = {
    'peak_gflops_per_s': round(peak / 1e9, 1),
    'steps': [],
    'ceilings': {},
    'transcendentals_per_s': rate,
    'reuse_cpu_buffers': reuse,
  }
  print(f'# transcendentals (exp, tanh, logistic): {rate / 1e9:.2f} G/s')
  # floor: the step's matmul FLOPs at peak plus its transcendentals at the measured rate.
  print(
    f'{"fwd+bwd of the CCC loss":38s} {"s":>6s} {"GFLOP":>6s} {"GFLOP/s":>8s} '
    f'{"of peak":>8s} {"G transc.":>9s} {"floor s":>7s} {"faults":>8s}'
  )
  for name, s, faults, flops, trans in rows:
    floor = flops / peak + trans / rate
    print(
      f'{name:38s} {s:6.3f} {flops / 1e9:6.1f} {flops / s / 1e9:8.1f} {flops / s / peak:8.1%} '
      f'{trans / 1e9:9.2f} {floor:7.3f} {faults:8.0f}'
    )
    report['steps'].append(
      {
        'name': name,
        's': round(s, 4),
        'gflop': round(flops / 1e9, 2),
        'share_of_peak': round(flops / s / peak, 3),
        'g_transcendentals': round(trans / 1e9, 3),
        'floor_s': round(floor, 4),
        'page_faults_per_step': round(faults),
      }
    )
  report['ceilings'] = ceilings(a, peak, a.repeat)
  for name, c in report['ceilings'].items():
    print(
      f'ceiling: {name:32s} {c["s"]:7.3f} s {c["gflops_per_s"]:8.1f} GFLOP/s '
      f'{c["share_of_peak"]:8.1%} of peak'
    )
  if a.trace:
    f, args = model_step(base, batch)
    jax.block_until_ready(f(*args))
    with jax.profiler.trace(a.trace):
      jax.block_until_ready(f(*args))
    report['top_ops'] = top_ops(a.trace)
    for name, ms, n in report['top_ops']:
      print(f'op {name:40s} {ms:9.1f} ms  x{n}')
  print(json.dumps(report))


if __name__ == '__main__':
  main()
