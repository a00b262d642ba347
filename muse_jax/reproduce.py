"""The paper's pipeline end to end (`./run.sh reproduce [ROOT]`): one results table.

Per target: a unimodal run for every feature set of the tree, the early-fusion runs (e.g.
egemaps+fasttext, the sets of configs/valence.py), then late fusion over all of them. Without
ROOT it runs on the generated demo tree (written into --out) with demo-sized runs (configs/demo.py,
configs/late_fusion_demo.py); with ROOT, a release in any layout of docs/data_format.md
(MuSe-CaR 2020/2021, Ulm-TSST stress/physio, a plain tree; --task when it holds several), with
the paper's settings (configs/default.py, configs/late_fusion.py) for each target of the tree.
Every run is an ordinary `train.train_and_evaluate` workdir, `<out>/runs/<target>/<inputs>`;
the table goes to `<out>/results.md`.

Resumable: a run whose results.json exists for the same config is read back, not retrained; an
interrupted one resumes from its checkpoint.
"""

import dataclasses
import json
import os
import time

from absl import flags
from absl import logging
import numpy as np

from muse_jax import cli
from muse_jax import compare
from muse_jax import config_util
from muse_jax import outputs
from muse_jax import runtime
from muse_jax import train
from muse_jax import workdir as workdir_lib
from muse_jax.data import demo
from muse_jax.data import layout
from muse_jax.data import reader
from muse_jax.errors import MuseError

FLAGS = flags.FLAGS

UNIMODAL, EARLY, LATE = 'unimodal', 'early fusion', 'late fusion'


@dataclasses.dataclass
class Run:
  kind: str
  inputs: str
  target: str
  workdir: str
  results: dict
  fused: tuple = ()  # late fusion: the first-level runs it read


def train_once(config, workdir: str) -> dict:
  """results.json of a finished run with this config, else train (or resume) it.

  A workdir started with another config is an error, not a silent resume of mixed settings.
  """
  spec = config_util.validate_config(config)
  want = dict(workdir_lib.config_record(config), targets=list(spec.targets))
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      have = json.load(f)
    diff = workdir_lib.same_config(have, want)
    if diff:
      raise MuseError(
        f'{workdir}: started with another config (differs in {", ".join(diff)}); '
        'delete that workdir or pick another --out'
      )
    if os.path.exists(os.path.join(workdir, 'results.json')):
      logging.info('%s: finished, skipped', workdir)
      with open(os.path.join(workdir, 'results.json'), encoding='utf-8') as f:
        return json.load(f)
  return train.train_and_evaluate(config, workdir)


def run(
  out: str,
  root: str = '',
  scale: str = 'demo',
  config_name: str = '',
  fusion_config: str = '',
  features=(),
  early_fusion=('egemaps+fasttext',),
  fusion_top: int = 3,
  targets=(),
  num_epochs: int = 0,
  task: str = '',
  eval_seed: str = '',
) -> list:
  """Trains (or reads back) every run; returns [Run] in table order, target by target."""
  out = os.path.abspath(out)
  root = os.path.abspath(os.path.expanduser(root)) if root else demo.tree_in(out, scale, task)
  lay = layout.resolve(root, task)
  is_demo = os.path.exists(os.path.join(lay.root, demo.MARKER))
  config_name = config_name or ('demo' if is_demo else 'default')
  fusion_config = fusion_config or ('late_fusion_demo' if is_demo else 'late_fusion')
  targets = lay.check_targets(targets) if targets else lay.targets()
  if not targets:
    raise MuseError(f'{lay.label_folder()}: no label folders, so nothing to train on')
  available = list(reader.discover_feature_sets(lay.root))
  sets = list(features) or available
  unknown = [s for s in sets if s not in available]
  if unknown:
    raise MuseError(f'--features {unknown} not in {root} (it has {", ".join(available)})')
  groups = [(UNIMODAL, [s]) for s in sets]
  for combo in early_fusion:
    parts = [p.strip() for p in combo.split('+') if p.strip()]
    if all(p in available for p in parts):
      groups.append((EARLY, parts))
    else:
      logging.warning(
        'early fusion %s left out: %s lacks %s',
        combo,
        root,
        [p for p in parts if p not in available],
      )

  def configured(name, target):
    c = config_util.load_config(name)
    c.data_root, c.data_dir, c.task = root, os.path.join(out, 'tfds'), task
    c.targets = (target,)
    if num_epochs:
      c.num_epochs = num_epochs
    if eval_seed:
      c.eval_seed = eval_seed
    return c

  runs = []
  for target in targets:
    first = []
    for kind, parts in groups:
      c = configured(config_name, target)
      c.feature_sets = tuple(parts)
      workdir = os.path.join(out, 'runs', target, '+'.join(parts))
      first.append(Run(kind, '+'.join(parts), target, workdir, train_once(c, workdir)))
    runs += first
    picked = best_runs(first, fusion_top)
    c = configured(fusion_config, target)
    c.fusion_runs = ','.join(r.workdir for r in picked)
    workdir = os.path.join(out, 'runs', target, 'late_fusion')
    what = f'best {fusion_top} runs by devel' if 0 < fusion_top < len(first) else 'all runs above'
    runs.append(
      Run(LATE, what, target, workdir, train_once(c, workdir), tuple(r.inputs for r in picked))
    )
  return runs


def _devel_ccc(r: Run) -> float:
  return r.results['devel'][r.target]['ccc'] if r.results.get('devel') else float('nan')


def best_runs(first: list, top: int) -> list:
  """The `top` first-level runs with the best devel CCC (all when top is 0), in run order.

  Weak runs hurt more than they add: a second level trained on train-partition predictions
  trusts a run as much as it fits train, and weak runs are the ones that overfit most.
  """
  ranked = sorted(first, key=lambda r: -np.nan_to_num(_devel_ccc(r), nan=-np.inf))
  keep = ranked[:top] if top > 0 else first
  return [r for r in first if r in keep]


def _cell(results: dict, split: str, target: str, ci: bool = False) -> str:
  m = results.get(split)
  if not m:
    return 'n/a'
  low_high = m[target].get('ccc_ci95') if ci else None
  return f'{m[target]["ccc"]:.4f}' + (
    f' [{low_high[0]:.2f}, {low_high[1]:.2f}]' if low_high and low_high[0] is not None else ''
  )


def _seed_cells(results: dict, target: str) -> list:
  """The best seed's devel CCC, the seeds' mean ± std and their ensemble's devel / test CCC."""
  seeds = [s for s in results['seeds'] if s.get('devel')]
  if len(seeds) < 2:
    return ['1 seed', '', '']
  ccc = [s['devel'][target]['ccc'] for s in seeds]
  best = next(s for s in seeds if s['seed'] == results['best_seed'])
  ens = results.get('ensemble') or {}
  return [
    f'{best["devel"][target]["ccc"]:.4f}',
    f'{np.mean(ccc):.4f} ± {np.std(ccc, ddof=1):.4f} ({len(ccc)})',
    f'{_cell(ens, "devel", target)} / {_cell(ens, "test", target)}',
  ]


def table(runs: list) -> str:
  """Markdown: one row per run; per target the devel and test CCC of what the run wrote
  (eval_seed), then the best seed's devel CCC, the seeds' mean ± std and their ensemble's."""
  targets = list(dict.fromkeys(r.target for r in runs))
  rows = list(dict.fromkeys((r.kind, r.inputs) for r in runs))
  by = {(r.kind, r.inputs, r.target): r for r in runs}
  head = ['run', 'inputs']
  for t in targets:
    head += [
      f'{t} devel',
      f'{t} test',
      f'{t} devel, best seed',
      f'{t} devel, seed mean ± std (seeds)',
      f'{t} ensemble devel / test',
    ]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for kind, inputs in rows:
    cells = [kind, inputs]
    for t in targets:
      r = by.get((kind, inputs, t))
      cells += (
        [
          _cell(r.results, 'devel', t, ci=True),
          _cell(r.results, 'test', t),
          *_seed_cells(r.results, t),
        ]
        if r
        else [''] * 5
      )
    lines.append('| ' + ' | '.join(cells) + ' |')
  written = sorted({str(r.results.get('eval_seed', 'best')) for r in runs})
  late = [r for r in runs if r.kind == LATE]
  lines += [
    '',
    'CCC over the concatenated videos of each partition; test only where labels '
    f'exist. devel / test: what each run wrote (eval_seed {", ".join(written)}: best = '
    'the seed with the best devel CCC, as the paper keeps; ensemble = the mean of the '
    "seeds' predictions, each at its best epoch); devel [95% interval, videos "
    'resampled]; seed std: sample std (ddof 1).',
    '',
    'Late fusion inputs: ' + '; '.join(f'{r.target}: {", ".join(r.fused)}' for r in late) + '.',
    '',
    'Late fusion minus the best first-level run, devel CCC, with the 95% interval of '
    'the difference (paired bootstrap over devel videos: python -m muse_jax.compare) '
    'and the share of resamples in which late fusion was not better: '
    + '; '.join(_versus(runs, r) for r in late)
    + '.',
  ]
  return '\n'.join(lines)


def _versus(runs: list, late: Run) -> str:
  first = [r for r in runs if r.target == late.target and r.kind != LATE]
  best = max(first, key=lambda r: np.nan_to_num(_devel_ccc(r), nan=-np.inf))
  text = f'{late.target} {_devel_ccc(late) - _devel_ccc(best):+.4f}'
  try:
    c = compare.compare(best.workdir, late.workdir, 'devel')['targets'][late.target]
    text += (
      f' [{c["diff_ci95"][0]:+.4f}, {c["diff_ci95"][1]:+.4f}], P(not better) '
      f'{c["p_b_not_better"]:.3f}'
    )
  except MuseError as e:  # e.g. a run without labelled devel videos: the plain difference
    logging.warning('late fusion vs %s: no paired interval (%s)', best.workdir, e)
  return text + f' (vs {best.inputs})'


def main(argv):
  if len(argv) > 1:
    raise MuseError(
      f'unexpected arguments {argv[1:]}; the tree is --root (./run.sh reproduce ROOT passes it)'
    )
  runtime.configure(config_util.load_config(FLAGS.config or 'default'))
  t0 = time.time()
  out = os.path.abspath(os.path.expanduser(FLAGS.out))
  runs = run(
    out,
    os.path.expanduser(FLAGS.root),
    FLAGS.scale,
    FLAGS.config,
    FLAGS.fusion_config,
    FLAGS.features,
    FLAGS.early_fusion,
    FLAGS.fusion_top,
    FLAGS.targets,
    FLAGS.num_epochs,
    FLAGS.task,
    FLAGS.eval_seed,
  )
  trained = sum(r.results.get('seconds', 0.0) for r in runs)
  text = table(runs) + (
    f'\n\n{len(runs)} runs; wall time of this invocation '
    f'{time.time() - t0:.0f} s (the runs took {trained:.0f} s when trained).'
  )
  outputs.write_text(os.path.join(out, 'results.md'), text + '\n')
  print('\n' + text)
  print(f'\nruns in {os.path.join(out, "runs")}; table in {os.path.join(out, "results.md")}')


def _define_flags():
  """The command's flags, defined only when it runs (python -m): the job and reproduce share
  flag names, and importing both modules (tests, notebooks) must not collide."""
  flags.DEFINE_string('out', 'out/reproduce', 'Output folder: demo tree, tfds build, runs, table.')
  flags.DEFINE_string(
    'root', '', 'A MuSe-family tree (release root or task folder); empty: the demo tree.'
  )
  flags.DEFINE_string('task', '', 'The task, when --root holds several (e.g. c3_muse_stress).')
  flags.DEFINE_string('scale', 'demo', 'Demo tree size when --root is empty: tiny | demo | full.')
  flags.DEFINE_string(
    'config',
    '',
    'First-level config under configs/ or a path; empty: demo for '
    'the demo tree, default (the paper) for --root.',
  )
  flags.DEFINE_string(
    'fusion_config',
    '',
    'Late-fusion config under configs/ or a path; empty: '
    'late_fusion_demo for the demo tree, late_fusion (the paper) for --root.',
  )
  flags.DEFINE_list('features', [], 'Feature sets for unimodal runs; empty: every set of the tree.')
  flags.DEFINE_list(
    'early_fusion',
    ['egemaps+fasttext'],
    'Early-fusion runs, sets joined by +; combinations with a set the tree lacks are left out.',
  )
  flags.DEFINE_integer(
    'fusion_top',
    3,
    'Late fusion over the best N first-level runs by devel CCC, '
    'as the paper fused its best models (0: all of them).',
  )
  flags.DEFINE_list(
    'targets',
    [],
    'Targets, one model per run and target; empty: every target (label folder) of the tree.',
  )
  flags.DEFINE_integer('num_epochs', 0, 'Overrides num_epochs of every run (0: the configs).')
  flags.DEFINE_string(
    'eval_seed',
    '',
    "What every run writes (and late fusion so reads): 'best' "
    "(the paper's best devel seed), 'ensemble' (the mean of the seeds' "
    "predictions) or a seed index; empty: the configs' ('best').",
  )


if __name__ == '__main__':
  _define_flags()
  cli.run_app(main)
