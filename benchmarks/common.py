"""Shared by the benchmarks: a cached full-scale demo tree, its tfds build, subset trees.

The full-scale tree (290 videos, ~560k frames at 4 Hz, like MuSe-CaR) is written once under
$MUSE_BENCH_DIR (default $TMPDIR/muse_jax_bench) and reused by every benchmark.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from muse_jax.data import build
from muse_jax.data import demo
from muse_jax.data import reader

WORK = os.environ.get('MUSE_BENCH_DIR', os.path.join(tempfile.gettempdir(), 'muse_jax_bench'))


def full_tree(features=('egemaps', 'fasttext'), root=None) -> str:
  """Root of the full-scale demo tree holding at least `features` (written on first use)."""
  if root:
    return os.path.abspath(root)
  root = os.path.join(WORK, 'tree_full')
  marker = os.path.join(root, demo.MARKER)
  have = json.load(open(marker)) if os.path.exists(marker) else {}
  if have.get('scale') != 'full' or not set(features) <= set(have.get('feature_sets', {})):
    t0 = time.perf_counter()
    demo.make_tree(root, scale='full', seed=0, features=list(features))
    print(
      f'# wrote the full-scale demo tree in {time.perf_counter() - t0:.0f} s: {root}', flush=True
    )
  return root


def data_dir(root: str) -> str:
  """One tfds data_dir per tree: a build belongs to its root (another root rebuilds it)."""
  return os.path.join(WORK, 'tfds_' + os.path.basename(os.path.normpath(root)))


def ensure_built(root, features) -> str:
  build.ensure_built(root, data_dir(root), list(features))
  return data_dir(root)


def subset_tree(root: str, fraction: float) -> str:
  """A tree with the first `fraction` of each partition's videos: symlinked data, own
  partition.csv (so it is a different root with its own build); one folder per (tree, fraction)."""
  if fraction >= 1:
    return root
  base = os.path.basename(os.path.normpath(root))
  out = os.path.join(
    WORK, f'tree_subset_{fraction:g}' if base == 'tree_full' else f'{base}_subset_{fraction:g}'
  )
  os.makedirs(os.path.join(out, 'metadata'), exist_ok=True)
  link = os.path.join(out, 'c1_muse_wild')
  if not os.path.exists(link):
    os.symlink(os.path.join(root, 'c1_muse_wild'), link)
  part = reader.read_partition(root)
  by_split = {}
  for vid, split in part.items():
    by_split.setdefault(split, []).append(vid)
  rows = ['Id,Proposal']
  for split, ids in by_split.items():
    rows += [f'{v},{split}' for v in ids[: max(1, round(len(ids) * fraction))]]
  path = os.path.join(out, 'metadata', 'partition.csv')
  text = '\n'.join(rows) + '\n'
  if not os.path.exists(path) or open(path).read() != text:
    with open(path, 'w') as f:
      f.write(text)
  return out


def tree_args(ap, epochs: int) -> None:
  """The arguments every training benchmark takes: which tree, sets, target, how long."""
  ap.add_argument('--root', help='a MuSe-layout tree (default: the full-scale demo tree)')
  ap.add_argument('--features', default='egemaps,fasttext')
  ap.add_argument('--target', default='valence')
  ap.add_argument('--epochs', type=int, default=epochs)
  ap.add_argument(
    '--fraction',
    type=float,
    default=1.0,
    help="use this fraction of each partition's videos (quicker runs)",
  )


def torch_python() -> str | None:
  """The torch venv's python (made by /work/shared/bench/setup_torch.sh), if there is one."""
  for venv in (os.environ.get('TORCH_VENV', ''), os.path.join(REPO, '.torch-venv')):
    exe = os.path.join(venv, 'bin', 'python')
    if venv and os.path.exists(exe):
      return exe
  return None


def torch_epoch_script() -> str | None:
  for p in (
    os.environ.get('TORCH_EPOCH', ''),
    os.path.join(os.path.dirname(REPO), 'shared', 'bench', 'torch_epoch.py'),
  ):
    if p and os.path.exists(p):
      return p
  return None


def run_json(cmd, env=None) -> dict:
  """Runs a command, returns the JSON object on its last stdout line."""
  out = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if out.returncode:
    raise RuntimeError(f'{cmd[:3]} failed:\n{out.stderr[-3000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def jax_epoch_command(root: str) -> list:
  """The command of benchmarks/jax_epoch.py (muse_jax's epoch timing) on a tree's build."""
  return [
    sys.executable,
    os.path.join(os.path.dirname(__file__), 'jax_epoch.py'),
    root,
    '--data_dir',
    data_dir(root),
  ]
