"""What the CCC intervals cost: partition metrics with and without the video bootstrap, on the
full-scale demo tree's devel and test partitions (290 videos, ~560k frames like MuSe-CaR).

  ./run.sh py benchmarks/bootstrap_bench.py [--samples 1000] [--repeats 5]

Labels are the tree's (its build, read as training reads them); predictions are the labels plus
smooth noise, so the figures are those of a real run's scoring at the end of training or in
--mode=evaluate: `metrics.partition_metrics` per partition, once without intervals and once with
`--samples` video resamples (config.bootstrap_samples), best of `--repeats`, side by side.
"""

import argparse
import time

import numpy as np

from muse_jax import metrics
from muse_jax.data import build

import common  # sets sys.path to the repository


def _best(fn, repeats: int) -> float:
  out = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return min(out)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--samples', type=int, default=1000)
  ap.add_argument('--repeats', type=int, default=5)
  args = ap.parse_args()
  root = common.full_tree(('egemaps',))
  data = build.load_feature_set(common.ensure_built(root, ('egemaps',)), 'egemaps')
  rng = np.random.default_rng(0)
  print(
    '| partition | videos | frames | metrics, no interval | with '
    f'{args.samples} resamples | bootstrap share |'
  )
  print('|---|---|---|---|---|---|')
  for split in ('devel', 'test'):
    videos = [v for v in data[split] if v.has_labels]
    labels = [v.y for v in videos]
    preds = [np.nan_to_num(y) + 0.3 * np.cumsum(rng.normal(size=y.shape), 0) / 30 for y in labels]
    targets = list(videos[0].targets)
    plain = _best(lambda: metrics.partition_metrics(labels, preds, targets), args.repeats)
    boot = _best(
      lambda: metrics.partition_metrics(labels, preds, targets, args.samples, 0), args.repeats
    )
    frames = sum(len(y) for y in labels)
    print(
      f'| {split} | {len(videos)} | {frames:,} | {plain * 1e3:.1f} ms | {boot * 1e3:.1f} ms | '
      f'{(boot - plain) * 1e3:.1f} ms ({(boot - plain) / boot:.0%}) |'
    )


if __name__ == '__main__':
  main()
