"""Data loading benchmark: the one-off tfds build, then what every training run pays for its data.

  python benchmarks/data_bench.py [--root FULL_TREE] [--work DIR] [--features egemaps,fasttext]

Without --root, a full-scale demo tree (290 videos, ~560k frames, like MuSe-CaR) is generated once
into --work (default: $TMPDIR/muse_jax_bench) and reused. Each per-run measurement is a fresh
process (as a training run is), timed after its imports, repeated --repeat times (median):
  * baseline: re-parse the CSVs with pandas as the PyTorch reference does every run
    (/work/shared/bench/torch_epoch.py `load`: features joined per frame, NaN -> 0), then cut the
    train videos into windows of 200 frames with hop 100;
  * muse_jax: `load_feature_set` for each set, then the same windows (views per set); and, apart,
    the same joined NaN-free arrays as the baseline's (`+ join`), for an equal-output figure.
Train-statistics z-normalisation costs the same on both sides and is left out of both.
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
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from muse_jax.data import build
from muse_jax.data import demo
from muse_jax.data import layout

WIN, HOP = 200, 100


def torch_baseline_load(root, feats, target):
  """The logic of torch_epoch.py `load`, verbatim (pandas CSV parsing, every run)."""
  part = pd.read_csv(os.path.join(root, 'metadata/partition.csv'))
  seen, data = set(), {}
  for vid, p in part.values[:, :2]:
    if vid in seen:
      continue
    seen.add(vid)
    lab = os.path.join(root, 'c1_muse_wild/label_segments', target, f'{vid}.csv')
    if not os.path.exists(lab):
      continue
    xs = [
      pd.read_csv(
        os.path.join(root, 'c1_muse_wild/feature_segments/label_aligned', f, f'{vid}.csv')
      ).values[:, 2:]
      for f in feats
    ]
    y = pd.read_csv(lab)['value'].values
    n = min(len(y), *(len(x) for x in xs))
    data.setdefault(p, []).append(
      (np.nan_to_num(np.hstack([x[:n] for x in xs]).astype(np.float32)), y[:n].astype(np.float32))
    )
  return data


def cut(n):
  """(start, end) of the train windows of an n-frame video (the last one may be shorter)."""
  out = []
  for s in range(0, n, HOP):
    e = min(s + WIN, n)
    out.append((s, e))
    if e == n:
      break
  return out


def run_baseline(root, data_dir, feats, target):
  del data_dir
  t0 = time.perf_counter()
  data = torch_baseline_load(root, feats, target)
  wins = [(x[s:e], y[s:e]) for x, y in data['train'] for s, e in cut(len(x))]
  return {'seconds': time.perf_counter() - t0, 'windows': len(wins)}


def run_muse_jax(root, data_dir, feats, target):
  del root
  t0 = time.perf_counter()
  sets = [build.load_feature_set(data_dir, f) for f in feats]
  wins = []
  for i, v in enumerate(sets[0]['train']):
    if v.has(target):
      xs = [s['train'][i].x for s in sets]
      y = v.label(target)
      wins += [([x[a:b] for x in xs], y[a:b]) for a, b in cut(len(y))]
  t1 = time.perf_counter()
  joined = {
    split: [
      np.nan_to_num(np.hstack([s[split][i].x for s in sets]), copy=False)
      for i in range(len(videos))
    ]
    for split, videos in sets[0].items()
  }
  t2 = time.perf_counter()
  del joined
  return {'seconds': t1 - t0, 'join_seconds': t2 - t1, 'windows': len(wins)}


RUNNERS = {'pandas': run_baseline, 'muse_jax': run_muse_jax}


def child(args):
  print(
    json.dumps(RUNNERS[args.child](args.root, args.data_dir, args.features.split(','), args.target))
  )


def in_fresh_process(mode, args, root, data_dir):
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    '--child',
    mode,
    '--root',
    root,
    '--data_dir',
    data_dir,
    '--features',
    args.features,
    '--target',
    args.target,
  ]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def check_same_data(root, data_dir, feats, target, n=3):
  """The built data equals the CSVs parsed by pandas (first n train videos)."""
  sets = [build.load_feature_set(data_dir, f) for f in feats]
  for i in range(n):
    vid = sets[0]['train'][i].id
    y = pd.read_csv(layout.label_path(root, target, vid))['value'].to_numpy(np.float32)
    np.testing.assert_array_equal(sets[0]['train'][i].label(target), y)
    for f, s in zip(feats, sets):
      x = pd.read_csv(layout.feature_path(root, f, vid)).to_numpy()[: len(y), 2:]
      np.testing.assert_array_equal(s['train'][i].x[: len(x)], x.astype(np.float32))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--root', help='an existing MuSe-layout tree (default: full-scale demo tree)')
  ap.add_argument('--work', default=os.path.join(tempfile.gettempdir(), 'muse_jax_bench'))
  ap.add_argument('--features', default='egemaps,fasttext')
  ap.add_argument('--target', default='valence')
  ap.add_argument('--repeat', type=int, default=3)
  ap.add_argument('--child', choices=list(RUNNERS), help=argparse.SUPPRESS)
  ap.add_argument('--data_dir', help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.child:
    return child(a)
  feats = a.features.split(',')
  figures = {}
  root = a.root
  if root is None:
    root = os.path.join(a.work, 'tree_full')
    marker = os.path.join(root, demo.MARKER)
    want = {f: demo.FEATURE_SETS[f] for f in feats}
    have = json.load(open(marker)) if os.path.exists(marker) else {}
    if have.get('scale') != 'full' or have.get('feature_sets') != want:
      t0 = time.perf_counter()
      demo.make_tree(root, scale='full', seed=0, features=feats)
      figures['write_tree_s'] = round(time.perf_counter() - t0, 2)
  csv_bytes = sum(
    os.path.getsize(os.path.join(d, f))
    for d, _, fs in os.walk(root)
    for f in fs
    if f.endswith('.csv')
  )
  os.makedirs(a.work, exist_ok=True)
  data_dir = tempfile.mkdtemp(prefix='tfds_', dir=a.work)
  t0 = time.perf_counter()
  build.ensure_built(root, data_dir, feats)
  figures['build_once_s'] = round(time.perf_counter() - t0, 2)
  check_same_data(root, data_dir, feats, a.target)

  runs = {'pandas': [], 'muse_jax': []}
  for _ in range(a.repeat):  # interleaved, so both sides see the same machine load
    for mode in runs:
      runs[mode].append(in_fresh_process(mode, a, root, data_dir))
  assert abs(runs['pandas'][0]['windows'] - runs['muse_jax'][0]['windows']) <= 1
  base = statistics.median(r['seconds'] for r in runs['pandas'])
  ours = statistics.median(r['seconds'] for r in runs['muse_jax'])
  join = statistics.median(r['join_seconds'] for r in runs['muse_jax'])
  figures.update(
    {
      'root': root,
      'features': a.features,
      'csv_mb': round(csv_bytes / 2**20, 1),
      'train_windows': runs['muse_jax'][0]['windows'],
      'pandas_csv_per_run_s': round(base, 3),
      'muse_jax_per_run_s': round(ours, 3),
      'speedup': round(base / ours, 1),
      'muse_jax_plus_join_s': round(ours + join, 3),
      'speedup_with_join': round(base / (ours + join), 1),
      'runs': {m: [{k: round(v, 3) for k, v in r.items()} for r in rs] for m, rs in runs.items()},
      'load_average': os.getloadavg(),
      'cpus': os.cpu_count(),
    }
  )
  print(json.dumps(figures, indent=1))
  print(
    f'per run: pandas CSV {base:.2f} s vs muse_jax {ours:.2f} s -> {base / ours:.1f}x '
    f'({ours + join:.2f} s, {base / (ours + join):.1f}x with the join); '
    f'one-off build {figures["build_once_s"]:.1f} s'
  )
  shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == '__main__':
  main()
