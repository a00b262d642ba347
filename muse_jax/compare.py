"""Is run B better than run A? `python -m muse_jax.compare WORKDIR_A WORKDIR_B [--split devel]`.

One partition CCC per system moves a lot with things that are not the method (a seed, a handful
of videos), so a difference is reported with its uncertainty: both runs' predictions (the
challenge CSVs in `<workdir>/predictions/`, whatever wrote them: training, `--mode=evaluate`, a
late-fusion run; `predictions.json` says which) are scored on the videos both predicted that have
labels, then the same video resamples are applied to both (a paired bootstrap, `bootstrap`): the
difference B - A, its 95% interval and the share of resamples in which B was not better. A
difference whose interval holds 0 is not a demonstrated gain.

When both runs trained several seeds, the seed-level view too: each run's seed mean +- std (the
sample std, ddof 1) from its results and the difference of the means with a bootstrap interval
over seeds, so "B's seeds beat A's" is told apart from "B's chosen seed beat A's".

Refused (one line): runs of different trees, grids or targets, or with no common scored video.
Labels are read from the tree the runs were trained on (their config.json), through the layout.
"""

import os
import sys

import numpy as np

from muse_jax import bootstrap
from muse_jax import cli
from muse_jax import metrics
from muse_jax import outputs
from muse_jax import workdir as workdir_lib
from muse_jax.data import csv_table
from muse_jax.data import layout
from muse_jax.data import reader
from muse_jax.errors import MuseError

SEED_RESAMPLES = 10000


class Run:
  """A finished workdir as compare reads it: its tree, grid, targets, predictions and seeds."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(os.path.expanduser(workdir))
    config = workdir_lib.read_json(os.path.join(self.workdir, 'config.json'))
    results = workdir_lib.read_json(os.path.join(self.workdir, 'results.json'))
    if config is None or results is None or not os.path.isdir(self.predictions()):
      raise MuseError(
        f'{self.workdir}: not a finished muse_jax run (needs config.json, '
        'results.json and predictions/); train it first'
      )
    written = outputs.read_written(self.workdir)  # what predictions/ hold, scored in which file
    results = workdir_lib.read_json(os.path.join(self.workdir, written['results'])) or results
    root = config.get('data_root') or ''
    try:
      self.layout = layout.resolve(root, config.get('task') or '')
    except MuseError as e:
      raise MuseError(
        f'{self.workdir}: its tree {root or "(none)"} cannot be read ({e}); labels '
        'come from the tree a run was trained on'
      ) from None
    self.results = results
    self.targets = list(results.get('targets') or [])
    self.step_ms = results.get('step_ms')
    self.what = f'{written["what"]} (written by {written["written_by"]})'

  def predictions(self, target: str = '') -> str:
    base = os.path.join(self.workdir, 'predictions')
    return os.path.join(base, target) if target else base

  def read(self, target: str, vid: str) -> tuple | None:
    """(timestamps, values) of one prediction CSV, or None when the run did not predict it."""
    path = os.path.join(self.predictions(target), f'{vid}.csv')
    if not os.path.exists(path):
      return None
    table = csv_table.read_table(path)
    low = [c.lower() for c in table.columns]
    if 'timestamp' not in low or 'value' not in low:
      raise MuseError(f'{path}: columns {",".join(table.columns)}; expected timestamp and value')
    return (
      table.values[:, low.index('timestamp')].astype(np.int64),
      table.values[:, low.index('value')].astype(np.float64),
    )

  def seed_scores(self, split: str, target: str | None) -> list:
    """Each trained seed's partition CCC of `target` (None: the mean over targets)."""
    out = []
    for s in self.results.get('seeds') or []:
      m = s.get(split)
      if m:
        out.append(m['mean_ccc'] if target is None else m[target]['ccc'])
    return out


def _common(a: Run, b: Run, split: str) -> tuple:
  """(targets, video ids) both runs can be compared on; one-line refusals otherwise."""
  if a.layout.root != b.layout.root:
    raise MuseError(
      f'{b.workdir} was trained on {b.layout.root}, {a.workdir} on '
      f'{a.layout.root}: runs of different trees are not compared'
    )
  if a.step_ms != b.step_ms:
    raise MuseError(
      f'{a.workdir} predicts on a {a.step_ms} ms grid, {b.workdir} on '
      f'{b.step_ms} ms: runs of different grids are not compared'
    )
  targets = [t for t in a.targets if t in b.targets]
  if not targets:
    raise MuseError(
      f'{a.workdir} predicts {", ".join(a.targets)}, {b.workdir} '
      f'{", ".join(b.targets)}: no common target to compare'
    )
  part = reader.read_partition(a.layout.root)
  ids = [
    v
    for v, p in part.items()
    if p == split
    and all(
      os.path.exists(os.path.join(r.predictions(t), f'{v}.csv')) for r in (a, b) for t in targets
    )
  ]
  return targets, ids


def _frames(a: Run, b: Run, root: str, targets: list, ids: list) -> tuple:
  """Per video [T, K] labels and both runs' predictions on the labelled frames' grid rows."""
  labels, pa, pb, kept = [], [], [], []
  for vid in ids:
    ys, xa, xb = [], [], []
    t0 = None
    for t in targets:
      got_a, got_b = a.read(t, vid), b.read(t, vid)
      if t0 is None:
        t0 = got_a[0]
      for got, run in ((got_a, a), (got_b, b)):
        if not np.array_equal(got[0], t0):
          raise MuseError(
            f'{run.predictions(t)}/{vid}.csv: its timestamps differ from '
            f'{a.predictions(targets[0])}/{vid}.csv; runs of different grids are '
            'not compared'
          )
      label = reader.read_label(root, t, vid)
      y = np.full(len(t0), np.nan)
      if label is not None:
        lt, lv = np.asarray(label[0], np.int64), np.asarray(label[2], np.float64)
        idx = np.minimum(np.searchsorted(lt, t0), max(len(lt) - 1, 0))
        hit = (lt[idx] == t0) if len(lt) else np.zeros(len(t0), bool)
        y[hit] = lv[idx[hit]]
      ys.append(y)
      xa.append(got_a[1])
      xb.append(got_b[1])
    y = np.stack(ys, 1)
    if np.isnan(y).all():
      continue  # a video without labels (withheld test labels) has nothing to score
    labels.append(y)
    pa.append(np.stack(xa, 1))
    pb.append(np.stack(xb, 1))
    kept.append(vid)
  return labels, pa, pb, kept


def _seed_view(a: Run, b: Run, split: str, targets: list, seed: int) -> dict:
  """Seed mean +- std (ddof 1) of each run and the difference of the means with a bootstrap
  interval over seeds (each run's seeds resampled on their own), per target and for the mean."""
  out = {}
  rng = np.random.default_rng(seed)
  for key in targets + ['mean_ccc']:
    sa = np.asarray(a.seed_scores(split, None if key == 'mean_ccc' else key))
    sb = np.asarray(b.seed_scores(split, None if key == 'mean_ccc' else key))
    if len(sa) < 2 or len(sb) < 2:
      return {}
    ma = sa[rng.integers(0, len(sa), (SEED_RESAMPLES, len(sa)))].mean(1)
    mb = sb[rng.integers(0, len(sb), (SEED_RESAMPLES, len(sb)))].mean(1)
    d = mb - ma
    out[key] = {
      'mean_a': float(sa.mean()),
      'std_a': float(sa.std(ddof=1)),
      'n_a': len(sa),
      'mean_b': float(sb.mean()),
      'std_b': float(sb.std(ddof=1)),
      'n_b': len(sb),
      'diff': float(sb.mean() - sa.mean()),
      'diff_ci95': [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))],
    }
  return out


def compare(
  workdir_a: str, workdir_b: str, split: str = 'devel', samples: int = 1000, seed: int = 0
) -> dict:
  """The comparison as `--out` writes it: {split, videos, a, b, predictions, targets: {t:
  {ccc_a, ccc_b, diff, diff_ci95, p_b_not_better}}, mean_ccc (several targets), seeds (the
  seed-level view, when both runs trained several seeds), per_video: {id: {t: [a, b]}}}."""
  if split not in ('devel', 'test'):
    raise MuseError(f'--split {split!r}: compare on devel or test')
  if samples < 1:
    raise MuseError(f'--samples {samples}: need at least 1 resample')
  a, b = Run(workdir_a), Run(workdir_b)
  targets, ids = _common(a, b, split)
  labels, pa, pb, kept = _frames(a, b, a.layout.root, targets, ids)
  if not kept:
    raise MuseError(
      f'{a.workdir} and {b.workdir} have no common {split} video with labels to compare on'
    )
  out = {
    'split': split,
    'videos': len(kept),
    'a': a.workdir,
    'b': b.workdir,
    'predictions': {'a': a.what, 'b': b.what},
    'bootstrap_samples': samples,
    'bootstrap_seed': seed,
    'targets': {},
  }
  for k, t in enumerate(targets):
    out['targets'][t] = bootstrap.paired_difference(
      [p[:, k] for p in pa], [p[:, k] for p in pb], [y[:, k] for y in labels], samples, seed
    )
  if len(targets) > 1:
    out['mean_ccc'] = bootstrap.paired_difference(pa, pb, labels, samples, seed)
  out['seeds'] = _seed_view(a, b, split, targets, seed)
  va = metrics.per_video_ccc(labels, pa, targets)
  vb = metrics.per_video_ccc(labels, pb, targets)
  out['per_video'] = {vid: {t: [x[t], z[t]] for t in targets} for vid, x, z in zip(kept, va, vb)}
  return out


def table(c: dict) -> str:
  lines = [
    f'{c["split"]}: {c["videos"]} videos scored by both; A = {c["a"]} ({c["predictions"]["a"]}),'
    f' B = {c["b"]} ({c["predictions"]["b"]})',
    '',
    '| target | CCC A | CCC B | B - A | 95% interval | P(B not better) |',
    '|---|---|---|---|---|---|',
  ]
  rows = dict(c['targets'])
  if 'mean_ccc' in c:
    rows['mean'] = c['mean_ccc']
  for t, r in rows.items():
    lo, hi = r['diff_ci95']
    lines.append(
      f'| {t} | {r["ccc_a"]:.4f} | {r["ccc_b"]:.4f} | {r["diff"]:+.4f} | '
      f'[{lo:+.4f}, {hi:+.4f}] | {r["p_b_not_better"]:.3f} |'
    )
  if c.get('seeds'):
    lines += [
      '',
      '| target | seeds A: mean ± std (n) | seeds B: mean ± std (n) | B - A | '
      '95% interval (seeds resampled) |',
      '|---|---|---|---|---|',
    ]
    for t, s in c['seeds'].items():
      lines.append(
        f'| {"mean" if t == "mean_ccc" else t} | {s["mean_a"]:.4f} ± {s["std_a"]:.4f}'
        f' ({s["n_a"]}) | {s["mean_b"]:.4f} ± {s["std_b"]:.4f} ({s["n_b"]}) | '
        f'{s["diff"]:+.4f} | [{s["diff_ci95"][0]:+.4f}, {s["diff_ci95"][1]:+.4f}] |'
      )
  lines += [
    '',
    'Paired bootstrap over videos (the same resamples for both runs); an interval '
    'holding 0 is no demonstrated difference. Seed std: sample std (ddof 1).',
  ]
  return '\n'.join(lines)


def plot(c: dict, path: str) -> None:
  """Per-video CCC, A against B (one panel per target); points above the diagonal: B better."""
  plt = outputs.pyplot()
  targets = list(c['targets'])
  fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 4.2), squeeze=False)
  for ax, t in zip(axes[0], targets):
    xy = np.array([v[t] for v in c['per_video'].values()])
    ax.scatter(xy[:, 0], xy[:, 1], s=14)
    lo, hi = float(min(xy.min(), 0.0)), float(max(xy.max(), 1.0))
    ax.plot([lo, hi], [lo, hi], color='grey', lw=0.8)
    r = c['targets'][t]
    ax.set_title(
      f'{t}: B - A {r["diff"]:+.3f} [{r["diff_ci95"][0]:+.3f}, {r["diff_ci95"][1]:+.3f}]',
      fontsize=9,
    )
    ax.set_xlabel('per-video CCC, A')
    ax.set_ylabel('per-video CCC, B')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(args) -> dict:
  c = compare(args.workdir_a, args.workdir_b, args.split, args.samples, args.seed)
  if args.out:
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    outputs.write_json(out, c)
    plot(c, os.path.splitext(out)[0] + '.png')
  return c


def main(argv=None) -> int:
  p = cli.ArgumentParser(prog='python -m muse_jax.compare', description=__doc__.split('\n')[0])
  p.add_argument('workdir_a', type=cli.path, help='run A (the baseline)')
  p.add_argument('workdir_b', type=cli.path, help='run B (the candidate)')
  p.add_argument('--split', default='devel', choices=['devel', 'test'])
  p.add_argument(
    '--out',
    type=cli.path,
    default=None,
    help='JSON file to write (and a per-video scatter, same name .png)',
  )
  p.add_argument('--samples', type=int, default=1000, help='video resamples (default 1000)')
  p.add_argument('--seed', type=int, default=0, help='resamples seed (same seed, same interval)')
  args = p.parse_args(argv)
  rc, c = cli.call(run, args)
  if rc:
    return rc
  print(table(c))
  if args.out:
    out = os.path.abspath(args.out)
    print(f'\nwritten: {out} and {os.path.splitext(out)[0]}.png')
  return 0


if __name__ == '__main__':
  sys.exit(main())
