"""The main job (`./run.sh`): demo tree -> dataset -> train both targets -> results table.

Shows the whole product on generated data in a few minutes on 2 CPU cores: the model's devel CCC
next to a frame-wise linear baseline on the same inputs. Re-running resumes/reuses what is done.
"""

import os
import time

from absl import flags

from muse_jax import baselines
from muse_jax import cli
from muse_jax import config_util
from muse_jax import outputs
from muse_jax import runtime
from muse_jax import sources
from muse_jax import train
from muse_jax.data import demo
from muse_jax.data import layout

FLAGS = flags.FLAGS


def run(out: str, config_name: str = 'demo', scale: str = 'demo') -> list:
  """Returns one row per target: dict(target, linear, model devel/test CCC, epochs, seconds)."""
  out = os.path.abspath(out)
  root = demo.tree_in(out, scale)
  rows = []
  for target in layout.resolve(root).targets():
    config = config_util.load_config(config_name)
    config.data_root, config.data_dir = root, os.path.join(out, 'tfds')
    config.targets = (target,)
    workdir = os.path.join(out, 'runs', f'{scale}_{target}')
    t0 = time.time()
    results = train.train_and_evaluate(config, workdir)
    seconds = time.time() - t0
    videos, _ = sources.prepare_data(config_util.parse(config), workdir, fit_stats=False)
    linear = baselines.ridge_metrics(
      videos['train'],
      videos['devel'],
      [target],
      bootstrap=(config.bootstrap_samples, config.bootstrap_seed),
    )
    rows.append(
      {
        'target': target,
        'linear_devel': linear[target]['ccc'],
        'linear_ci': linear[target].get('ccc_ci95'),
        'devel': results['devel'][target]['ccc'],
        'devel_ci': results['devel'][target].get('ccc_ci95'),
        'test': results['test'][target]['ccc'] if results.get('test') else None,
        'test_ci': results['test'][target].get('ccc_ci95') if results.get('test') else None,
        'best_epoch': results['best_epoch'],
        'epochs': results['epochs_run'],
        'seconds': seconds,
        'workdir': workdir,
      }
    )
  return rows


def table(rows) -> str:
  """Markdown; each CCC with its 95% interval (videos resampled) where there is one."""

  def cell(value, ci):
    if value is None:
      return 'n/a'
    return f'{value:.4f}' + (f' [{ci[0]:.2f}, {ci[1]:.2f}]' if ci and ci[0] is not None else '')

  lines = [
    '| target | frame-wise linear (devel CCC) | muse_jax model (devel CCC) | '
    'model (test CCC) | best / run epochs | seconds |',
    '|---|---|---|---|---|---|',
  ]
  for r in rows:
    lines.append(
      f'| {r["target"]} | {cell(r["linear_devel"], r.get("linear_ci"))} | '
      f'{cell(r["devel"], r.get("devel_ci"))} | {cell(r["test"], r.get("test_ci"))} | '
      f'{r["best_epoch"]} / {r["epochs"]} | {r["seconds"]:.0f} |'
    )
  return '\n'.join(lines)


def main(argv):
  cli.no_arguments(argv)
  runtime.configure(config_util.load_config(FLAGS.config))
  t0 = time.time()
  out = os.path.abspath(os.path.expanduser(FLAGS.out))
  rows = run(out, FLAGS.config, FLAGS.scale)
  text = table(rows)
  outputs.write_text(os.path.join(out, 'results.md'), text + '\n')
  print('\n' + text)
  print(f'\nworkdirs: {", ".join(r["workdir"] for r in rows)}; total {time.time() - t0:.0f} s')


def _define_flags():
  """The command's flags, defined only when it runs (python -m): the job and reproduce share
  flag names, and importing both modules (tests, notebooks) must not collide."""
  flags.DEFINE_string('out', 'out', 'Output folder: demo tree, tfds build, one workdir per target.')
  flags.DEFINE_string('config', 'demo', 'Config name under configs/ or a path.')
  flags.DEFINE_string('scale', 'demo', 'Demo tree size: tiny | demo | full.')


if __name__ == '__main__':
  _define_flags()
  cli.run_app(main)
