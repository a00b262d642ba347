"""One command that measures what a GPU/TPU user of muse_jax cares about, within a short slot.

  ./run.sh py benchmarks/device_check.py             # on a device: the full-scale demo tree
  ./run.sh py benchmarks/device_check.py --small     # CPU: a slice of it, fewer steps (~2 min)

It writes its own data (the full-scale demo tree, 290 videos like MuSe-CaR, or with --small the
first 1/16 of each partition's videos of it; `--root` takes a tree of yours) and prints one
markdown table, writing the same figures as JSON (--out; rewritten after every section, so a slot
that ends early keeps what was measured). Sections, in order:
  devices    backend, device kind and count, what 'auto' picks there (attention core, seed loop,
             dispatch), the mesh of --num_devices, the padded batch rule as a run applies it, and
             the multi-host flags of muse_jax.main;
  epochs     seconds per epoch (train, devel evaluation) of the paper config (configs/valence.py)
             through the real loop (train.train_and_evaluate), first epoch (compile) and steady
             state apart, cold compiles: 1 seed, 5 seeds vmapped, 5 seeds mapped, and 8 members
             of a sweep (learning rates, config.members) vmapped (--members; not with --small);
  attention  every core of muse_jax.ops.attention (plain, blocked, jax.nn.dot_product_attention
             with XLA's and cuDNN's kernel), forward+backward at the paper's batch and forward
             over the longest video, with their difference from the plain one;
  flops      the train step's FLOP/s (matmul FLOPs counted as benchmarks/jax_epoch.py does)
             against a large matmul measured in this process;
  memory     of the train step at batch 1024 (--batch) and of the whole-video evaluation of the
             longest video: XLA's compiled footprint, and the device's own peak where the backend
             reports one (measured in a fresh process per item);
  agreement  the same parameters and batch on this backend (each core) vs the CPU defaults,
             computed in a subprocess with JAX_PLATFORMS=cpu: max abs diff of predictions (train
             windows and the longest video) and of the CCC loss's gradients.
A core or measurement this backend does not have is a row saying so, never a crash; a section
that would start past --budget seconds is a row saying it was skipped. GPU memory is allocated
on demand here (XLA_PYTHON_CLIENT_PREALLOCATE=false, unless set), so the fresh processes find it
free; on a TPU, whose devices one process holds, the device-peak figures say they are unavailable.
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
import traceback

import numpy as np

import common  # sets sys.path to the repository

SECTIONS = ('devices', 'epochs', 'attention', 'flops', 'memory', 'agreement')
SEEDS_RUNS = (('1 seed', 1, 'auto'), ('seeds vmapped', None, 'vmap'), ('seeds mapped', None, 'map'))


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument(
    '--small',
    action='store_true',
    help='CPU sizes: 1/16 of the full tree, 2 epochs per run, fewer repeats',
  )
  ap.add_argument('--root', help='a MuSe-family tree to use instead of the demo tree')
  ap.add_argument(
    '--fraction',
    type=float,
    default=None,
    help="share of each partition's videos of the demo tree (default 1, --small 1/16)",
  )
  ap.add_argument('--epochs', type=int, default=None, help='per run (default 3, --small 2)')
  ap.add_argument('--seeds', type=int, default=5, help='seeds of the vmapped/mapped runs')
  ap.add_argument(
    '--members',
    type=int,
    default=None,
    help='members of a sweep (learning rates) vmapped in one more epochs row '
    '(default 8, --small 0: no row)',
  )
  ap.add_argument(
    '--batch',
    type=int,
    default=None,
    help="rows of a train step, as config.batch_size (default the paper's 1024): "
    'the flops and memory sections measure that step',
  )
  ap.add_argument(
    '--num_devices',
    type=int,
    default=0,
    help='devices of the mesh, as config.num_devices (0 = all)',
  )
  ap.add_argument(
    '--sections', default=','.join(SECTIONS), help='comma list of ' + ', '.join(SECTIONS)
  )
  ap.add_argument(
    '--budget',
    type=float,
    default=None,
    help='seconds: sections that would start later are skipped (default 240, --small 170)',
  )
  ap.add_argument('--out', default='device_check.json', help='JSON file of the figures')
  ap.add_argument('--work', default=None, help='scratch folder (default $MUSE_BENCH_DIR)')
  ap.add_argument('--_cpu_reference', nargs=2, metavar=('IN', 'OUT'), help=argparse.SUPPRESS)
  ap.add_argument('--_peak', nargs=4, metavar=('KIND', 'D_IN', 'ROWS', 'T'), help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
  a.fraction = a.fraction or (1 / 16 if a.small else 1.0)
  a.epochs = a.epochs or (2 if a.small else 3)
  a.members = (0 if a.small else 8) if a.members is None else a.members
  a.budget = a.budget or (170.0 if a.small else 240.0)
  a.repeats = 2 if a.small else 5
  a.attention_batch = 256 if a.small else 1024  # the paper's batch; 1/4 of it on a small CPU
  a.sections = [s for s in a.sections.split(',') if s]
  unknown = sorted(set(a.sections) - set(SECTIONS))
  if unknown:
    ap.error(f'unknown sections {unknown}; use {",".join(SECTIONS)}')
  return a


class Report:
  """Rows of (section, check, result, note) plus figures; printed as markdown, saved as JSON."""

  def __init__(self, path: str, meta: dict):
    self.path, self.meta, self.rows = path, meta, []

  def add(self, section, check, result, note='', **figures):
    self.rows.append(
      {
        'section': section,
        'check': check,
        'result': result,
        'note': note,
        'figures': {k: _plain(v) for k, v in figures.items()},
      }
    )
    print(f'# {section} | {check} | {result}' + (f' | {note}' if note else ''), flush=True)
    self.save()

  def save(self):
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump({'meta': self.meta, 'rows': self.rows}, f, indent=1)
    os.replace(tmp, self.path)

  def markdown(self) -> str:
    esc = lambda s: str(s).replace('|', '\\|')
    lines = ['| section | check | result | notes |', '|---|---|---|---|']
    lines += [
      f'| {r["section"]} | {esc(r["check"])} | {esc(r["result"])} | {esc(r["note"])} |'
      for r in self.rows
    ]
    return '\n'.join(lines)


def _plain(v):
  if isinstance(v, (np.floating, np.integer)):
    return v.item()
  if isinstance(v, (list, tuple)):
    return [_plain(x) for x in v]
  return v


def _why(e: Exception) -> str:
  """First line of an exception, short enough for a table cell."""
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0][:160] if text else ""}'


def _mb(n) -> str:
  return f'{n / 2**20:,.0f} MiB'


def timed(fn, repeats: int):
  """(first call seconds (compile + run), median of `repeats` further calls, the last output)."""
  import jax  # noqa: PLC0415

  t = time.perf_counter()
  out = jax.block_until_ready(fn())
  first = time.perf_counter() - t
  runs = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    runs.append(time.perf_counter() - t)
  return first, statistics.median(runs), out


# ------------------------------------------------------------------------------------------------
class Check:
  """The data, config and mesh every section shares; sections add rows to the report."""

  def __init__(self, a, report):
    import jax  # noqa: PLC0415

    from muse_jax import config_util  # noqa: PLC0415
    from muse_jax import sharding  # noqa: PLC0415
    from muse_jax import steps  # noqa: PLC0415

    self.a, self.report, self.jax = a, report, jax
    self.work = a.work or os.path.join(common.WORK, 'device_check')
    os.makedirs(self.work, exist_ok=True)
    self.root, self.tree = data_tree(a)
    self.data_dir = common.data_dir(self.root)
    c = config_util.load_config('valence')
    c.data_root, c.data_dir, c.num_devices = self.root, self.data_dir, a.num_devices
    c.num_epochs, c.early_stopping_patience = a.epochs, a.epochs + 1
    c.batch_size = a.batch or c.batch_size
    c.num_plot_videos, c.compilation_cache_dir = 0, 'none'
    self.config = c
    self.spec = config_util.validate_config(c)
    self.mesh = sharding.make_mesh(a.num_devices)
    self.platform = sharding.platform(self.mesh)
    self.impl = steps.attention_impl(c, self.platform)
    self.mapped = steps.seeds_mapped(c, self.platform)
    self._videos = None
    self.step_footprint = None  # set by the flops section, which compiles that step

  @property
  def videos(self):
    """The normalised videos and dims of the paper config (stats fitted in a scratch workdir)."""
    if self._videos is None:
      from muse_jax import sources  # noqa: PLC0415

      work = tempfile.mkdtemp(prefix='data_', dir=self.work)
      self._videos = sources.prepare_data(self.spec, work, fit_stats=True)
    return self._videos

  def train_batch(self, rows: int) -> dict:
    """`rows` train windows in a shuffled order (repeated when the tree has fewer: every row a
    real window, as in a full batch of a large tree), padded to the device multiple."""
    from muse_jax import input_pipeline as ip  # noqa: PLC0415

    videos, _ = self.videos
    w = ip.train_windows(self.config, videos['train'])
    rng = np.random.default_rng([self.spec.data_seed, 1])
    idx = np.concatenate(
      [rng.permutation(len(w.lengths)) for _ in range(-(-rows // len(w.lengths)))]
    )[:rows]
    n = self.mesh.devices.size
    return ip.pad_batch(*w.gather(idx), -(-rows // n) * n)

  def longest_video_batch(self) -> dict:
    """The evaluation batch of the longest devel/test video, as evaluation shapes it."""
    from muse_jax import input_pipeline as ip  # noqa: PLC0415

    videos, _ = self.videos
    v = max((v for s in ('devel', 'test') for v in videos.get(s, [])), key=lambda v: len(v.x))
    return next(ip.eval_batches([v], multiple=self.mesh.devices.size))[0]

  def state(self, seeds=(314,), impl=None):
    from muse_jax import steps  # noqa: PLC0415

    _, dims = self.videos
    return steps.create_state(
      self.config, sum(dims), len(self.spec.targets), list(seeds), impl or self.impl
    )


def data_tree(a) -> tuple:
  """(root, description) of the tree the check runs on; the demo tree is written on first use."""
  feats = ('egemaps', 'fasttext')
  if a.root:
    root = os.path.abspath(a.root)
    common.ensure_built(root, feats)
    return root, f'{root} (yours)'
  if a.fraction >= 1:
    root = common.full_tree(feats)
    what = 'the full-scale demo tree'
  else:
    from muse_jax.data import demo  # noqa: PLC0415

    root = os.path.join(common.WORK, f'tree_full_slice_{a.fraction:g}')
    marker = os.path.join(root, demo.MARKER)
    have = json.load(open(marker)) if os.path.exists(marker) else {}
    if have.get('fraction') != a.fraction or have.get('scale') != 'full':
      part = root + '.partial'  # written aside, then moved: an interrupted write is redone
      shutil.rmtree(part, ignore_errors=True)
      demo.make_tree(part, scale='full', seed=0, features=list(feats), fraction=a.fraction)
      shutil.rmtree(root, ignore_errors=True)
      os.replace(part, root)
    what = f"a slice of the full-scale demo tree (first {a.fraction:g} of each partition's videos)"
  common.ensure_built(root, feats)
  info = json.load(open(os.path.join(root, 'demo_tree.json')))
  return root, f'{what}: {info["videos"]} videos, {info["frames"]:,} frames'


# ------------------------------------------------------------------------------------------------
def devices(ck: Check):
  jax, rep = ck.jax, ck.report
  from muse_jax import input_pipeline as ip  # noqa: PLC0415
  from muse_jax import steps  # noqa: PLC0415

  d = jax.devices()
  rep.add(
    'devices',
    'backend, device kind',
    f'{jax.default_backend()}, {d[0].device_kind}',
    f'jax {jax.__version__}',
    backend=jax.default_backend(),
    device_kind=d[0].device_kind,
  )
  rep.add(
    'devices',
    'devices (local / all), processes',
    f'{jax.local_device_count()} / {jax.device_count()}, {jax.process_count()}',
    local=jax.local_device_count(),
    total=jax.device_count(),
    processes=jax.process_count(),
  )
  n = ck.mesh.devices.size
  rep.add(
    'devices',
    f'mesh (--num_devices {ck.a.num_devices})',
    f'{n} {ck.platform} device(s) on axis data',
    'config.num_devices=N uses the first N (0 = all)',
    mesh_devices=n,
  )
  dispatch = (
    'synchronous (runtime.host_memory)'
    if ck.platform == 'cpu' and not jax.config.read('jax_cpu_enable_async_dispatch')
    else 'asynchronous'
  )
  rep.add(
    'devices',
    "'auto' picks",
    f'attention {ck.impl}, seeds {"mapped" if ck.mapped else "vmapped"}, {dispatch} dispatch',
    'config.attention / config.seed_loop override',
    attention=ck.impl,
    seeds_mapped=ck.mapped,
    dispatch=dispatch.split()[0],
  )
  videos, _ = ck.videos
  n_win = len(ip.train_windows(ck.config, videos['train']).lengths)
  unit = n * steps.micro_batches(ck.config)
  rows = ip.step_rows(n_win, ck.config.batch_size, unit)
  longest = max(len(v.x) for s in ('devel', 'test') for v in videos.get(s, []))
  bucket = ip.bucket_length(longest)
  rep.add(
    'devices',
    f'padded batch: {n_win} train windows, batch {ck.config.batch_size}',
    f'{len(rows)} steps of {" or ".join(map(str, sorted(set(rows), reverse=True)))} rows '
    f'({rows[0] // n} per device)',
    f'each step padded with empty rows to a multiple of {unit} (devices x micro-batches)',
    train_windows=n_win,
    step_rows=sorted(set(rows)),
    rows_per_device=rows[0] // n,
  )
  rep.add(
    'devices',
    f'evaluation of the longest video ({longest} frames)',
    f'bucket {bucket}, batches of {ip.eval_batch_rows(bucket, n)} row(s)',
    'videos padded to a length bucket, rows to a multiple of the devices',
    longest=longest,
    bucket=bucket,
    eval_rows=ip.eval_batch_rows(bucket, n),
  )
  flags = multi_host_flags()
  rep.add(
    'devices',
    'multi-host',
    f'{jax.process_count()} process(es)',
    'muse_jax.main ' + ', '.join(f'--{f}' for f in flags),
    flags=flags,
  )


def multi_host_flags() -> list:
  """The flags of muse_jax.main that start a multi-host job (their help says 'Multi-host')."""
  import importlib  # noqa: PLC0415

  from absl import flags  # noqa: PLC0415

  importlib.import_module('muse_jax.main')  # defines its flags
  return [
    f.name
    for f in flags.FLAGS.get_flags_for_module('muse_jax.main')
    if f.help.startswith('Multi-host')
  ]


def epochs(ck: Check):
  from muse_jax import train  # noqa: PLC0415

  one = None
  runs = [(label, seeds or ck.a.seeds, loop, '') for label, seeds, loop in SEEDS_RUNS]
  if ck.a.members:  # a sweep's members: one seed, each its own learning rate (muse_jax.sweep)
    lrs = np.geomspace(1e-3, 1e-2, ck.a.members)
    runs.append(
      (
        'sweep members vmapped',
        ck.a.members,
        'vmap',
        json.dumps([{'seed': ck.config.seed, 'learning_rate': float(lr)} for lr in lrs]),
      )
    )
  for label, seeds, loop, members in runs:
    c = ck.config.copy_and_resolve_references()
    c.num_seeds, c.seed_loop, c.members = seeds, loop, members
    work = tempfile.mkdtemp(prefix='epochs_', dir=ck.work)
    name = f'{seeds} {label}' if seeds > 1 else label
    t0 = time.perf_counter()
    try:  # one run's failure (say, out of memory with 5 seeds vmapped) is its row only
      train.train_and_evaluate(c, work)
    except Exception as e:  # noqa: BLE001
      ck.report.add('epochs', f'epoch, {name}', 'failed', _why(e), seeds=seeds, seed_loop=loop)
      continue
    total = time.perf_counter() - t0
    log = [json.loads(l) for l in open(os.path.join(work, 'metrics.jsonl'))]
    steady = log[1:] or log
    med = {
      k: statistics.median(r[k] for r in steady)
      for k in ('seconds', 'train_seconds', 'eval_seconds')
    }
    first = log[0]
    one = one or (med if seeds == 1 else None)
    ratio = med['seconds'] / one['seconds'] if one else float('nan')
    ck.report.add(
      'epochs',
      f'epoch, {name}',
      f'{med["seconds"]:.2f} s (train {med["train_seconds"]:.2f} + devel '
      f'{med["eval_seconds"]:.2f})' + (f' = {ratio:.2f}x one seed' if seeds > 1 and one else ''),
      f'first epoch {first["seconds"]:.2f} s (train {first["train_seconds"]:.2f} + devel '
      f'{first["eval_seconds"]:.2f}); whole run {total:.1f} s; median of {len(steady)} '
      'steady epoch(s)',
      seeds=seeds,
      seed_loop=loop,
      steady_s=med['seconds'],
      steady_train_s=med['train_seconds'],
      steady_eval_s=med['eval_seconds'],
      first_s=first['seconds'],
      first_train_s=first['train_seconds'],
      first_eval_s=first['eval_seconds'],
      run_s=total,
      ratio_vs_one_seed=ratio,
    )


def attention(ck: Check):
  jax, jnp = ck.jax, ck.jax.numpy
  from muse_jax.ops import attention as ops  # noqa: PLC0415

  m = ck.config.model
  h, dh = m.n_heads, m.d_rnn // m.n_heads
  batch = ck.train_batch(ck.a.attention_batch)
  lengths = jnp.asarray(batch['lengths'])
  b, t = batch['x'].shape[:2]
  rng = np.random.default_rng(0)
  q, k, v, ct = (jnp.asarray(rng.normal(size=(b, t, h, dh)), jnp.float32) for _ in range(4))
  ct = ct * (lengths > 0)[:, None, None, None]  # empty (device-padding) rows differ by design
  video = ck.longest_video_batch()
  tl = video['x'].shape[1]
  qv = jnp.asarray(rng.normal(size=(1, tl, h, dh)), jnp.float32)
  lv = jnp.asarray(video['lengths'][:1])
  ref = {}
  for impl in ops.IMPLS:
    fwd_bwd = jax.jit(
      jax.value_and_grad(
        lambda q, k, v, impl=impl: jnp.sum(ops.attention(q, k, v, lengths, impl) * ct),
        argnums=(0, 1, 2),
      )
    )
    fwd_long = jax.jit(lambda q, impl=impl: ops.attention(q, q, q, lv, impl))
    try:
      first, med, out = timed(lambda: fwd_bwd(q, k, v), ck.a.repeats)
      out = jax.device_get(out[1])
      first_l, med_l, out_l = timed(lambda: fwd_long(qv), ck.a.repeats)
      out_l = np.asarray(out_l)[:, : int(lv[0])]
    except Exception as e:  # noqa: BLE001
      ck.report.add(
        'attention',
        f'{impl}',
        f'unavailable on {ck.jax.default_backend()}',
        _why(e),
        available=False,
      )
      continue
    ref = ref or {'grads': out, 'long': out_l}
    diff = max(float(np.max(np.abs(a - r))) for a, r in zip(out, ref['grads']))
    diff_l = float(np.max(np.abs(out_l - ref['long'])))
    ck.report.add(
      'attention',
      f'{impl}: fwd+bwd [{b}, {t}, {h}, {dh}]',
      f'{med * 1e3:.1f} ms; fwd over {tl} frames {med_l * 1e3:.1f} ms',
      f'first call {first:.2f} s / {first_l:.2f} s; max abs diff from plain: grads '
      f'{diff:.1e}, long fwd {diff_l:.1e}' + (' (bfloat16 inputs)' if impl == 'cudnn' else ''),
      available=True,
      fwd_bwd_s=med,
      long_fwd_s=med_l,
      first_s=first,
      diff_grads=diff,
      diff_long=diff_l,
      shape=[b, t, h, dh],
      long_frames=tl,
    )


def train_step_parts(ck: Check, rows: int):
  """(jitted step, state, batch, keys, active) of the paper config for one seed at `rows`."""
  from muse_jax import losses  # noqa: PLC0415
  from muse_jax import sharding  # noqa: PLC0415
  from muse_jax import steps  # noqa: PLC0415

  model, tx, state = ck.state()
  step = steps.make_train_step(model, tx, losses.get_loss('ccc'), None, seeds_map=ck.mapped)
  batch = sharding.shard(ck.train_batch(rows), ck.mesh)
  state = sharding.replicate(state, ck.mesh)
  keys = sharding.replicate(steps.dropout_keys([314]), ck.mesh)
  active = sharding.replicate(np.array([True]), ck.mesh)
  return model, step, state, batch, keys, active


def footprint(compiled) -> dict:
  """XLA's memory figures of a compiled executable (bytes); total = arguments + outputs +
  temporaries - aliased (donated) buffers."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  f = {k: int(getattr(m, f'{k}_size_in_bytes', 0)) for k in ('argument', 'output', 'temp', 'alias')}
  f['total'] = f['argument'] + f['output'] + f['temp'] - f['alias']
  return f


def flops(ck: Check):
  import jax_epoch  # noqa: PLC0415

  _, dims = ck.videos
  rows = ck.config.batch_size
  _, step, state, batch, keys, active = train_step_parts(ck, rows)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, keys, active).compile()
  compile_s = time.perf_counter() - t0
  ck.step_footprint = footprint(compiled)  # the memory rows' figure of this very step
  runs = []
  for i in range(ck.a.repeats + 1):
    t = time.perf_counter()
    state, loss, _ = compiled(state, batch, keys, active)
    loss.block_until_ready()
    if i:
      runs.append(time.perf_counter() - t)
  step_s = statistics.median(runs)
  c = ck.config.copy_and_resolve_references()
  c.num_seeds = 1
  per_step = jax_epoch.step_flops(c, sum(dims), len(ck.spec.targets))
  n = 2048 if ck.platform == 'cpu' else 8192
  mm = jax_epoch.matmul_flops(n)  # on one device; the step runs on the whole mesh
  dev = ck.mesh.devices.size
  peak = mm * dev
  ck.report.add(
    'flops',
    f'train step, batch {rows}, 1 seed',
    f'{per_step / step_s / 1e9:,.1f} GFLOP/s = {per_step / step_s / peak:.1%} of '
    + ('matmul' if dev == 1 else f"{dev} x one device's matmul"),
    f'{step_s * 1e3:.0f} ms per step (compile {compile_s:.1f} s), '
    f'{per_step / 1e9:.1f} GFLOP counted from its matmuls',
    step_s=step_s,
    compile_s=compile_s,
    step_flops=per_step,
    flops_per_s=per_step / step_s,
    fraction_of_matmul=per_step / step_s / peak,
    mesh_devices=dev,
  )
  ck.report.add(
    'flops',
    f'matmul {n} x {n}, float32, one device',
    f'{mm / 1e9:,.1f} GFLOP/s',
    "jnp.matmul at JAX's default precision (on GPUs with TF32, TF32)",
    flops_per_s=mm,
    n=n,
  )


def memory(ck: Check):
  from muse_jax import sharding  # noqa: PLC0415
  from muse_jax import steps  # noqa: PLC0415

  _, dims = ck.videos
  rows = ck.config.batch_size
  if ck.step_footprint is None:
    _, step, state, batch, keys, active = train_step_parts(ck, rows)
    ck.step_footprint = footprint(step.lower(state, batch, keys, active).compile())
    del state, batch
  items = [('train step', 'step', rows, ck.config.win_len, ck.step_footprint)]
  model, _, state = ck.state()
  video = ck.longest_video_batch()
  params = sharding.replicate(state.params, ck.mesh)
  ev = steps.make_eval_step(model, ck.mapped)
  items.append(
    (
      f'whole-video evaluation, {int(video["lengths"].max())} frames',
      'eval',
      video['x'].shape[0],
      video['x'].shape[1],
      footprint(ev.lower(params, sharding.shard(video, ck.mesh)).compile()),
    )
  )
  # A TPU's chips belong to this process: a fresh one could not open them.
  has_stats = ck.jax.default_backend() != 'tpu' and ck.jax.devices()[0].memory_stats() is not None
  for label, kind, n, t, f in items:
    peak, note = (
      None,
      (
        f'{ck.jax.default_backend()} reports no device memory statistics'
        if ck.jax.default_backend() != 'tpu'
        else 'no device peak on TPU (this process holds the chips)'
      ),
    )
    if has_stats:
      try:
        peak = peak_in_fresh_process(ck, kind, sum(dims), n, t)
        note = f'device peak {_mb(peak)} (fresh process: parameters, batch and step)'
      except Exception as e:  # noqa: BLE001
        note = f'device peak unavailable: {_why(e)}'
    ck.report.add(
      'memory',
      f'{label} [{n} x {t}]',
      f'XLA footprint {_mb(f["total"])}' if f else 'XLA reports no footprint',
      (f'temporaries {_mb(f["temp"])}, arguments {_mb(f["argument"])}; ' if f else '') + note,
      rows=n,
      frames=t,
      peak_bytes=peak,
      **{f'{k}_bytes': v for k, v in f.items()},
    )


def peak_in_fresh_process(ck: Check, kind: str, d_in: int, rows: int, t: int) -> int:
  """The device peak of one step or evaluation in a new process on this backend (rows padded
  to the mesh, as a run pads them)."""
  n = ck.mesh.devices.size
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    '--_peak',
    kind,
    str(d_in),
    str(-(-rows // n) * n),
    str(t),
    '--num_devices',
    str(ck.a.num_devices),
  ]
  backend = ck.jax.default_backend()
  proc = subprocess.run(
    cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS=backend)
  )
  if proc.returncode:
    raise RuntimeError((proc.stderr.strip().splitlines() or ['no output'])[-1])
  return int(json.loads(proc.stdout.strip().splitlines()[-1])['peak_bytes'])


def peak_child(a) -> None:
  """--_peak: one step (or one evaluation) on random inputs of that shape; prints the peak."""
  import jax  # noqa: PLC0415

  from muse_jax import config_util  # noqa: PLC0415
  from muse_jax import losses  # noqa: PLC0415
  from muse_jax import runtime  # noqa: PLC0415
  from muse_jax import sharding  # noqa: PLC0415
  from muse_jax import steps  # noqa: PLC0415

  kind, d_in, rows, t = a._peak[0], *map(int, a._peak[1:])
  c = config_util.load_config('valence')
  c.num_devices = a.num_devices
  runtime.configure(c)
  assert jax.devices()[0].memory_stats() is not None, f'{jax.default_backend()}: no memory stats'
  mesh = sharding.make_mesh(a.num_devices)
  impl, mapped = (
    steps.attention_impl(c, sharding.platform(mesh)),
    steps.seeds_mapped(c, sharding.platform(mesh)),
  )
  model, tx, state = steps.create_state(c, d_in, 1, [314], impl)
  rng = np.random.default_rng(0)
  lengths = np.full(rows, t, np.int32)
  batch = {
    'x': rng.normal(size=(rows, t, d_in)).astype(np.float32),
    'y': rng.uniform(-1, 1, (rows, t, 1)).astype(np.float32),
    'lengths': lengths,
    'mask': np.ones((rows, t), bool),
  }
  batch = sharding.shard(batch, mesh)
  state = sharding.replicate(state, mesh)
  if kind == 'step':
    step = steps.make_train_step(model, tx, losses.get_loss('ccc'), None, seeds_map=mapped)
    out = step(
      state,
      batch,
      sharding.replicate(steps.dropout_keys([314]), mesh),
      sharding.replicate(np.array([True]), mesh),
    )
  else:
    out = steps.make_eval_step(model, mapped)(state.params, batch)
  jax.block_until_ready(out)
  print(
    json.dumps(
      {'peak_bytes': max(d.memory_stats()['peak_bytes_in_use'] for d in mesh.devices.flat)}
    )
  )


# ------------------------------------------------------------------------------------------------
def model_outputs(model, params, batch, video):
  """(train-window predictions, CCC-loss gradients, longest-video predictions) as numpy."""
  from flax import traverse_util  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from muse_jax import losses  # noqa: PLC0415

  apply = jax.jit(lambda p, x, l: model.apply({'params': p}, x, l, deterministic=True))
  loss = jax.jit(
    jax.grad(
      lambda p, b: losses.get_loss('ccc')(
        model.apply({'params': p}, b['x'], b['lengths'], deterministic=True), b['y'], b['mask']
      )
    )
  )
  b = {k: jnp.asarray(v) for k, v in batch.items()}
  preds = np.asarray(apply(params, b['x'], b['lengths']))
  grads = traverse_util.flatten_dict(jax.device_get(loss(params, b)), sep='/')
  long = np.asarray(apply(params, jnp.asarray(video['x']), jnp.asarray(video['lengths'])))
  return preds, {k: np.asarray(v) for k, v in grads.items()}, long


def cpu_reference(a) -> None:
  """--_cpu_reference IN OUT (JAX_PLATFORMS=cpu): the CPU defaults' outputs of the same inputs."""
  from flax import traverse_util  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import ml_collections  # noqa: PLC0415

  from muse_jax import config_util  # noqa: PLC0415
  from muse_jax import models  # noqa: PLC0415
  from muse_jax import steps  # noqa: PLC0415

  assert jax.default_backend() == 'cpu', jax.default_backend()
  z = np.load(a._cpu_reference[0])
  meta = json.loads(str(z['meta']))
  impl = steps.attention_impl(ml_collections.ConfigDict({'attention': 'auto'}), 'cpu')
  model = models.create_model(*config_util.model_fields(meta['model'], meta['targets']), impl)
  params = traverse_util.unflatten_dict(
    {k[2:]: z[k] for k in z.files if k.startswith('p:')}, sep='/'
  )
  batch = {k[2:]: z[k] for k in z.files if k.startswith('b:')}
  video = {k[2:]: z[k] for k in z.files if k.startswith('v:')}
  preds, grads, long = model_outputs(model, params, batch, video)
  np.savez(
    a._cpu_reference[1],
    preds=preds,
    long=long,
    impl=impl,
    **{f'g:{k}': v for k, v in grads.items()},
  )


def agreement(ck: Check):
  jax = ck.jax
  from flax import traverse_util  # noqa: PLC0415

  from muse_jax import config_util  # noqa: PLC0415
  from muse_jax import models  # noqa: PLC0415
  from muse_jax.ops import attention as ops  # noqa: PLC0415

  _, _, state = ck.state()
  params = jax.tree.map(lambda x: np.asarray(x[0]), state.params)
  batch = ck.train_batch(256)
  video = ck.longest_video_batch()
  video = {k: v[:1] for k, v in video.items()}
  n_t = len(ck.spec.targets)
  model_cfg = {k: v for k, v in ck.config.model.items()}
  path_in = os.path.join(ck.work, 'agreement_in.npz')
  path_out = os.path.join(ck.work, 'agreement_cpu.npz')
  np.savez(
    path_in,
    meta=json.dumps({'model': model_cfg, 'targets': n_t}),
    **{f'p:{k}': v for k, v in traverse_util.flatten_dict(params, sep='/').items()},
    **{f'b:{k}': v for k, v in batch.items()},
    **{f'v:{k}': v for k, v in video.items()},
  )
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  t0 = time.perf_counter()
  proc = subprocess.run(
    [sys.executable, os.path.abspath(__file__), '--_cpu_reference', path_in, path_out],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  if proc.returncode:
    raise RuntimeError(f'CPU reference failed: {proc.stderr.strip().splitlines()[-1:]}')
  cpu = np.load(path_out)
  cpu_s = time.perf_counter() - t0
  lengths, n = batch['lengths'], int(video['lengths'][0])
  valid = np.arange(batch['x'].shape[1])[None, :] < lengths[:, None]
  ref_grads = {k[2:]: cpu[k] for k in cpu.files if k.startswith('g:')}
  scale = max(float(np.max(np.abs(g))) for g in ref_grads.values())
  for impl in ops.IMPLS:
    try:
      model = models.create_model(*config_util.model_fields(model_cfg, n_t), impl)
      preds, grads, long = model_outputs(model, params, batch, video)
    except Exception as e:  # noqa: BLE001
      ck.report.add(
        'agreement',
        f'{impl} vs CPU {cpu["impl"]}',
        f'unavailable on {jax.default_backend()}',
        _why(e),
        available=False,
      )
      continue
    d_pred = float(np.max(np.abs(preds - cpu['preds'])[valid]))
    d_long = float(np.max(np.abs(long[0, :n] - cpu['long'][0, :n])))
    d_grad = max(float(np.max(np.abs(grads[k] - g))) for k, g in ref_grads.items())
    ck.report.add(
      'agreement',
      f'{impl}{" (auto)" if impl == ck.impl else ""} vs CPU {cpu["impl"]}',
      f'predictions {d_pred:.1e}, longest video {d_long:.1e}, gradients {d_grad:.1e}',
      f'max abs diff; {len(lengths)} train windows, {n} frames; largest gradient '
      f'{scale:.1e}; CPU side {cpu_s:.0f} s in a subprocess',
      available=True,
      diff_preds=d_pred,
      diff_long=d_long,
      diff_grads=d_grad,
      max_grad=scale,
    )


def nvidia_gpus() -> int:
  """GPUs nvidia-smi lists (0 without the tool or a driver)."""
  try:
    out = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return 0
  return sum(l.startswith('GPU ') for l in out.stdout.splitlines()) if out.returncode == 0 else 0


# ------------------------------------------------------------------------------------------------
def main(argv=None):
  a = parse_args(argv)
  if a._cpu_reference:
    return cpu_reference(a)
  if a._peak:
    return peak_child(a)
  t_start = time.perf_counter()
  # The memory rows measure each item's device peak in a fresh process, which must find the
  # device's memory free: allocate on demand instead of JAX's default 75 % up front (GPU).
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  # Cold compiles: the first epoch shows what a user waits for (a cache dir set in the
  # environment would win over config.compilation_cache_dir, see runtime.compile_cache).
  os.environ.pop('JAX_COMPILATION_CACHE_DIR', None)
  import jax  # noqa: PLC0415

  from muse_jax import config_util  # noqa: PLC0415
  from muse_jax import runtime  # noqa: PLC0415
  from muse_jax.errors import MuseError  # noqa: PLC0415

  c = config_util.load_config('valence')
  c.compilation_cache_dir = 'none'
  runtime.configure(c)
  gpus = nvidia_gpus()
  if gpus and jax.default_backend() == 'cpu' and not a.small:
    print(
      f'error: nvidia-smi lists {gpus} GPU(s), but JAX runs on its CPU backend (no CUDA '
      "plugin here): ./run.sh sets up jax[cuda12] or jax[cuda13] by the driver ('./run.sh "
      "accel' says which), or pip install 'jax[cuda13]'; --small measures the CPU on purpose",
      file=sys.stderr,
    )
    return 2
  meta = {
    'command': ' '.join(['device_check.py'] + (argv or sys.argv[1:])),
    'small': a.small,
    'date': time.strftime('%Y-%m-%d %H:%M'),
    'jax': jax.__version__,
    'backend': jax.default_backend(),
    'load_average': os.getloadavg(),
  }
  report = Report(a.out, meta)
  try:
    ck = Check(a, report)
  except MuseError as e:  # e.g. --num_devices over what this host has, or a tree that fails
    print(f'error: {e}', file=sys.stderr)
    return 2
  except Exception as e:  # noqa: BLE001
    traceback.print_exc()
    report.add('data', 'failed', _why(e))  # the JSON says why there are no figures
    return 1
  meta['data'], meta['root'] = ck.tree, ck.root
  print(f'# device check on {meta["backend"]}: {ck.tree}', flush=True)
  for name in a.sections:
    elapsed = time.perf_counter() - t_start
    if elapsed > a.budget:
      report.add(name, 'skipped', f'over the time budget ({elapsed:.0f} s > {a.budget:.0f} s)')
      continue
    t0 = time.perf_counter()
    try:
      globals()[name](ck)
    except Exception as e:  # noqa: BLE001
      traceback.print_exc()
      report.add(name, 'failed', _why(e))
    meta.setdefault('section_s', {})[name] = round(time.perf_counter() - t0, 1)
  meta['total_s'] = round(time.perf_counter() - t_start, 1)
  report.save()
  print(
    f'\nDevice check on {meta["backend"]} ({jax.devices()[0].device_kind}), '
    f'{ck.tree}; {meta["total_s"]:.0f} s in all; figures in {a.out}\n'
  )
  print(report.markdown())
  return 0


if __name__ == '__main__':
  sys.exit(main())
