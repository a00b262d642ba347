"""Peak memory of a training run per stage, and what a 4096-d feature set needs.

  python benchmarks/memory_bench.py [--root TREE] [--fraction F] [--features a,b] [--epochs 1]
      [--config configs/valence.py] [--inputs_on_disk auto|yes|no] [--batch_size N] [--data_only]

Trains a config (default configs/valence.py, the paper's: egemaps + fasttext + segment id, batch
1024, windows 200 / hop 100) for --epochs epochs in a child process, by default on the full-scale
demo tree (290 videos, ~560k frames like MuSe-CaR; written once under $TMPDIR/muse_jax_bench, as
data_bench.py does), else on --root (with --fraction: the first share of each partition's videos,
benchmarks/common.py subset_tree), with --features / --inputs_on_disk / --batch_size overriding
the config; --data_only stops after the data stages. Reports:
  * the child's peak resident memory (ru_maxrss from wait4);
  * per stage, from a sampler thread in the child (10 ms) and the kernel's high-water mark: the
    peak while in the stage and what stays resident after it, and the peak of anonymous memory
    (resident minus file-backed pages: inputs on disk are file pages of their map, which count
    in RSS once touched but are page cache the kernel can write back and drop). Stages: imports;
    data = load + join, train statistics, normalise, windows; training = the epochs' steps
    (compilation included), the per-epoch devel evaluation, the final evaluation of every split
    and the outputs.
Then it checks an arithmetic model of the data stages (bytes per frame and column) against the
measurement, and applies it to deepspectrum (4096-d) over all of MuSe-CaR.
"""

# Imports inside functions: the child measures them as its first stage.
# noqa: PLC0415
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
WORK = os.environ.get('MUSE_BENCH_DIR', os.path.join(tempfile.gettempdir(), 'muse_jax_bench'))
GIB = 2.0**30
PAGE = os.sysconf('SC_PAGE_SIZE')


# ------------------------------------------------------------------------------------------------
# Child: one training run, memory sampled per stage.


def _rss(anon: bool = False) -> int:
  """Resident bytes; anon: without file-backed and shared pages (statm: resident - shared)."""
  with open('/proc/self/statm') as f:
    fields = f.read().split()
  return (int(fields[1]) - (int(fields[2]) if anon else 0)) * PAGE


def _hwm() -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) * 1024
  return 0


class Stages:
  """Peak and retained RSS per stage. A stage's peak is the sampler's maximum, or the kernel's
  high-water mark when that rose during the stage (then it is exact, even for short spikes)."""

  def __init__(self):
    self.stack, self.peak, self.after, self.seconds, self.order = ['imports'], {}, {}, {}, []
    self.anon = {}  # peak anonymous memory per stage (sampled)
    self._lock = threading.Lock()
    self._t = {'imports': time.perf_counter()}
    self._hwm = {'imports': 0}
    threading.Thread(target=self._sample, daemon=True).start()

  def _sample(self):
    while True:
      rss, anon = _rss(), _rss(anon=True)
      with self._lock:
        top = self.stack[-1]
        self.peak[top] = max(self.peak.get(top, 0), rss)
        self.anon[top] = max(self.anon.get(top, 0), anon)
      time.sleep(0.01)

  def enter(self, name):
    with self._lock:
      self.stack.append(name)
      self._t[name], self._hwm[name] = time.perf_counter(), _hwm()
      if name not in self.order:
        self.order.append(name)

  def leave(self):
    hwm, rss, anon = _hwm(), _rss(), _rss(anon=True)
    with self._lock:
      name = self.stack.pop()
      exact = hwm if hwm > self._hwm[name] else 0
      self.peak[name] = max(self.peak.get(name, 0), exact, rss)
      self.anon[name] = max(self.anon.get(name, 0), anon)
      self.after[name] = rss
      self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - self._t[name]

  def wrap(self, module, fn_name, stage):
    fn = getattr(module, fn_name)

    def wrapped(*args, **kwargs):
      self.enter(stage() if callable(stage) else stage)
      try:
        return fn(*args, **kwargs)
      finally:
        self.leave()

    setattr(module, fn_name, wrapped)


def _capture(make, slot, captured, bigger=None):
  """Wraps a step factory: keeps the compiled step and the abstract arguments of one call (the
  first, or the largest by `bigger`) for XLA's memory analysis after the run."""
  import jax

  def abstract(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None))

  def factory(*a, **k):
    fn = make(*a, **k)

    def call(*args):
      size = bigger(args) if bigger else 0
      if slot not in captured or size > captured[slot][2]:
        captured[slot] = (fn, jax.tree.map(abstract, args), size)
      return fn(*args)

    return call

  return factory


def child(args):
  stages = Stages()
  stages.order.append('imports')
  import jax

  from muse_jax import config_util
  from muse_jax import inference
  from muse_jax import input_pipeline as ip
  from muse_jax import normalization
  from muse_jax import runtime
  from muse_jax import sources
  from muse_jax import steps
  from muse_jax import train

  config = _config(args)
  runtime.configure(config)  # as main does
  jax.numpy.zeros(1).block_until_ready()  # the backend is part of the baseline
  stages.leave()
  # Outside any wrapped call we are in the epoch loop: model init, compilation, train steps.
  stages.stack.append('training: steps')
  stages.order.append('training: steps')
  stages.enter('data')
  stages.wrap(sources, 'load_videos', 'data: load + join')
  stages.wrap(normalization, 'compute_stats', 'data: train statistics')
  stages.wrap(normalization, 'normalize', 'data: normalise')
  stages.wrap(ip, 'make_windows', 'data: windows')
  in_finish = []
  stages.wrap(
    inference,
    'evaluate_split',
    lambda: 'finish: evaluate every split' if in_finish else 'training: devel eval',
  )
  stages.wrap(inference, 'score_best', lambda: in_finish.append(1) or 'finish: restore + outputs')
  prepare = sources.prepare_data

  def wrapped_prepare(*a, **k):
    try:
      return prepare(*a, **k)
    finally:
      stages.leave()  # 'data' ends; windows are cut next, in their own stage

  sources.prepare_data = wrapped_prepare
  captured = {}
  steps.make_train_step = _capture(steps.make_train_step, 'train step', captured)
  # The largest eval batch for memory: attention scores grow with rows x length^2.
  steps.make_eval_step = _capture(
    steps.make_eval_step,
    'eval step (largest)',
    captured,
    bigger=lambda a: a[1]['x'].shape[0] * a[1]['x'].shape[1] ** 2,
  )

  config.data_root, config.data_dir = args.root, args.data_dir
  t0 = time.perf_counter()
  if args.data_only:
    videos, _ = sources.prepare_data(config_util.parse(config), args.workdir, fit_stats=True)
    ip.train_windows(config, videos['train'])
    results = {'devel': {'mean_ccc': float('nan')}}
  else:
    results = train.train_and_evaluate(config, args.workdir)
  seconds = time.perf_counter() - t0
  xla = {}
  for slot, (fn, abstract, _) in captured.items():
    m = fn.lower(*abstract).compile().memory_analysis()
    xla[slot] = {
      'temp': m.temp_size_in_bytes,
      'arguments': m.argument_size_in_bytes,
      'outputs': m.output_size_in_bytes,
      'batch': list(abstract[1]['x'].shape),
    }
  print(
    json.dumps(
      {
        'seconds': seconds,
        'devel_ccc': results['devel']['mean_ccc'],
        'order': stages.order,
        'peak': stages.peak,
        'anon': stages.anon,
        'after': stages.after,
        'stage_seconds': stages.seconds,
        'hwm': _hwm(),
        'devices': jax.device_count(),
        'xla': xla,
      }
    )
  )


# ------------------------------------------------------------------------------------------------
# Parent: tree, build, child, arithmetic.


def _config(a):
  """The config with the command line's overrides."""
  from muse_jax import config_util

  config = config_util.load_config(a.config)
  config.num_epochs = a.epochs
  config.compilation_cache_dir = 'none'  # compiles measured as a first run makes them
  if a.features:
    config.feature_sets = tuple(a.features.split(','))
  if a.inputs_on_disk:
    config.inputs_on_disk = a.inputs_on_disk
  if a.batch_size:
    config.batch_size = a.batch_size
  return config


def model_bytes(
  frames: int,
  train_frames: int,
  train_windows: int,
  dim: int,
  win: int,
  batch: int,
  step_temp: int = 0,
  targets: int = 1,
) -> dict:
  """Bytes of live arrays per stage, from the array shapes of input_pipeline and train.

  dim counts every input column (feature sets + segment id); f32 = 4 B, f64 = 8 B.
    load + join: videos are read and joined one at a time, so the joined inputs plus one video:
                 frames x dim x 4. With inputs on disk each joined video is written to the file
                 as it is made: anonymous memory holds one video, the rest is page cache;
    videos:      kept for the whole run: frames x dim x 4 (on disk: file pages of the map,
                 resident once touched, dropped by the kernel under memory pressure);
    statistics:  accumulated video by video: videos + one video in float64 (negligible);
    windows:     spans into the videos, gathered per batch: nothing kept;
    training:    videos + two batches, the step's and the next one being gathered (one step is
                 in flight at a time; 2 x batch x win x dim x 4) + the XLA temporaries of the
                 train step (`step_temp`, measured: mostly attention scores, batch x heads x
                 win^2 x 4 B each, which do not depend on dim; micro_batch_size divides them).
  """
  del train_frames, train_windows, targets  # no longer shape any stage
  videos = frames * dim * 4
  return {
    'load + join': videos,
    'videos (kept)': videos,
    'train statistics': videos,
    'windows (kept)': 0,
    'training': videos + 2 * batch * win * dim * 4 + step_temp,
  }


def _windows(lengths, win, hop) -> int:
  n = 0
  for length in lengths:
    n += max(1, -(-(max(length - win, 0)) // hop) + 1)
  return n


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--root', help='a MuSe-layout tree (default: the full-scale demo tree)')
  ap.add_argument(
    '--fraction', type=float, default=1.0, help="use this fraction of each partition's videos"
  )
  ap.add_argument('--features', default='', help="feature sets (default: the config's)")
  ap.add_argument('--config', default=os.path.join(REPO, 'configs', 'valence.py'))
  ap.add_argument(
    '--inputs_on_disk',
    choices=('auto', 'yes', 'no'),
    help="config.inputs_on_disk (default: the config's)",
  )
  ap.add_argument('--batch_size', type=int, default=0, help="default: the config's")
  ap.add_argument('--epochs', type=int, default=1)
  ap.add_argument('--data_only', action='store_true', help='stop after the data stages')
  ap.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  ap.add_argument('--data_dir', help=argparse.SUPPRESS)
  ap.add_argument('--workdir', help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.child:
    return child(a)

  from muse_jax import config_util
  from muse_jax.data import build

  import common

  config = _config(a)
  sets = config_util.parse_list(config.feature_sets)
  root = common.subset_tree(common.full_tree(sets, a.root), a.fraction)
  t0 = time.perf_counter()
  data_dir = common.ensure_built(root, sets)  # outside the child: a run normally finds it built
  print(f'# data built or up to date in {time.perf_counter() - t0:.1f} s', flush=True)

  workdir = tempfile.mkdtemp(prefix='memory_bench_', dir=WORK)
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    '--child',
    '--root',
    root,
    '--data_dir',
    data_dir,
    '--workdir',
    workdir,
    '--config',
    a.config,
    '--epochs',
    str(a.epochs),
    '--features',
    a.features,
    '--batch_size',
    str(a.batch_size),
  ]
  cmd += (['--inputs_on_disk', a.inputs_on_disk] if a.inputs_on_disk else []) + (
    ['--data_only'] if a.data_only else []
  )
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env.pop('XLA_FLAGS', None)
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
  out = proc.stdout.read()
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode:
    sys.exit(f'child failed with status {proc.returncode}')
  got = json.loads(out.strip().splitlines()[-1])
  wall = time.perf_counter() - t0
  maxrss = usage.ru_maxrss * 1024  # KiB on Linux
  shutil.rmtree(workdir, ignore_errors=True)

  # Shapes of this tree, for the arithmetic (from the record index: nothing is loaded).
  readers = {s: build.FeatureSet(data_dir, s) for s in sets}
  stats = build.build_info(data_dir, sets[0])['stats']
  frames = sum(v['frames'] for v in stats.values())
  train_frames = stats['train']['frames']
  lengths = [readers[sets[0]].rows('train', v) for v in readers[sets[0]].ids('train')]
  n_win = _windows(lengths, config.win_len, config.hop_len)
  extra = 1 if config.add_segment_id else 0
  d_in = sum(r.dim for r in readers.values()) + extra

  what = 'data stages only' if a.data_only else f'{a.epochs} epoch(s)'
  print(
    f'\nmemory_bench: {a.config} ({"+".join(sets)}, {d_in} input columns), batch '
    f'{config.batch_size}, windows {config.win_len}/{config.hop_len}, inputs_on_disk '
    f'{config.inputs_on_disk}, {what} on {root}\n{frames} frames ({train_frames} train, '
    f'{n_win} train windows; inputs {frames * d_in * 4 / GIB:.2f} GiB); child '
    f'{got["seconds"]:.0f} s (wall {wall:.0f} s), {got["devices"]} device(s), devel CCC '
    f'{got["devel_ccc"]:.3f}'
  )
  print(f'\npeak resident memory of the child (ru_maxrss): {maxrss / GIB:.2f} GiB')
  base = got['after']['imports']
  print(f'{"stage (RSS)":34s} {"peak GiB":>9s} {"anon GiB":>9s} {"after GiB":>10s} {"seconds":>8s}')
  for name in got['order']:
    if name == 'data' or name not in got['peak']:
      continue
    after, sec = got['after'].get(name), got['stage_seconds'].get(name)
    print(
      f'{name:34s} {got["peak"][name] / GIB:9.2f} {got["anon"].get(name, 0) / GIB:9.2f} '
      f'{after / GIB if after else float("nan"):10.2f} '
      f'{sec if sec is not None else float("nan"):8.1f}'
    )
  print(
    '(peak: resident incl. file pages of mapped inputs; anon: without them; after = resident '
    'when the stage ends; freed heap is not always returned to the OS)'
  )
  if got['xla']:
    print('\nXLA buffers of the compiled steps (memory_analysis):')
  for slot, m in got['xla'].items():
    print(
      f'  {slot:28s} batch {m["batch"]}: temporaries {m["temp"] / GIB:.2f} GiB, arguments '
      f'{m["arguments"] / GIB:.2f} GiB, outputs {m["outputs"] / GIB:.3f} GiB'
    )
  data_kept = got['after']['data: windows'] - base
  data_peak = max(v for k, v in got['peak'].items() if k.startswith('data'))
  data_anon = max(v for k, v in got['anon'].items() if k.startswith('data'))
  print(
    f'\nparts: imports + JAX runtime {base / GIB:.2f} GiB | data: peak '
    f'{(data_peak - base) / GIB:.2f} GiB above imports, of it anonymous '
    f'{(data_anon - got["anon"]["imports"]) / GIB:.2f} GiB; {data_kept / GIB:.2f} GiB kept '
    'for training (videos + windows)',
    end='',
  )
  if a.data_only:
    print()
  else:
    train_peak = max(v for k, v in got['peak'].items() if not k.startswith('data'))
    print(f' | training: peak {(train_peak - base - data_kept) / GIB:.2f} GiB above the kept data')

  step_temp = got['xla']['train step']['temp'] if 'train step' in got['xla'] else 0
  model = model_bytes(
    frames, train_frames, n_win, d_in, config.win_len, config.batch_size, step_temp
  )
  measured = {
    'load + join': got['peak']['data: load + join'] - base,
    'videos (kept)': got['after']['data: normalise'] - base,
    'train statistics': got['peak']['data: train statistics'] - base,
    'windows (kept)': got['after']['data: windows'] - got['after']['data: normalise'],
    'training': got['peak'].get('training: steps', float('nan')) - base,
  }
  print(f'\narithmetic model vs measured RSS (above imports), {d_in} columns:')
  for k, v in model.items():
    if k != 'training' or not a.data_only:
      print(f'  {k:22s} model {v / GIB:6.2f} GiB   measured {measured[k] / GIB:6.2f} GiB')

  ratio = train_frames / frames
  big_frames = 560_000
  for label, dim in (
    ('deepspectrum alone (4096 columns)', 4096),
    ('deepspectrum + egemaps + fasttext + segment id', 4096 + 88 + 300 + 1),
  ):
    if a.data_only:
      break
    m = model_bytes(
      big_frames,
      int(big_frames * ratio),
      int(n_win * big_frames / frames),
      dim,
      config.win_len,
      config.batch_size,
      step_temp,
    )
    worst = max(m.values()) + base
    print(
      f'\n{label}, {big_frames} frames ({ratio:.0%} train), batch {config.batch_size}, '
      f'windows {config.win_len}/{config.hop_len}:'
    )
    for k, v in m.items():
      print(f'  {k:22s} {v / GIB:7.2f} GiB{"  > 24 GiB" if v + base > 24 * GIB else ""}')
    print(
      f'  -> peak about {worst / GIB:.1f} GiB with the runtime ({m["videos (kept)"] / GIB:.1f} '
      'GiB of it page cache with inputs_on_disk)'
    )
  print(
    json.dumps(
      {
        'maxrss_gib': round(maxrss / GIB, 3),
        'stages_peak_gib': {k: round(v / GIB, 3) for k, v in got['peak'].items()},
        'stages_anon_gib': {k: round(v / GIB, 3) for k, v in got['anon'].items()},
        'xla_gib': {k: round(v['temp'] / GIB, 3) for k, v in got['xla'].items()},
      }
    )
  )


if __name__ == '__main__':
  main()
