"""Command line: `python -m muse_jax.main --config=configs/valence.py [--workdir=DIR] [--mode=...]`.

Thin by design (as the flax examples): flags -> config (`config_cli`) -> `runtime.configure`
(process settings, once) -> `train.train_and_evaluate`, `inference.evaluate`,
`inference.predict`, a sweep (`sweep.run`) or a sweep's ensemble (`sweep_report.write_ensemble`).
User errors (bad data, config or workdir) end as one line `error: ...` and exit status 2 (`cli`).

The design card's command works as written: without `--workdir` a run writes to
`runs/<config name>` under the current folder; without a data root it uses the workdir's own tree
or the generated demo tree (`config_cli.default_data`), and says so in the log and the summary.
"""

import os
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

from muse_jax import cli
from muse_jax import config_cli
from muse_jax import config_util
from muse_jax.errors import MuseError

config_util.ensure_configs_importable()

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file (configs/*.py).', lock_config=True
)
flags.DEFINE_string(
  'workdir',
  None,
  'Folder for checkpoints, logs, predictions, results; default '
  'runs/<config name> under the current folder.',
)
flags.DEFINE_enum(
  'mode',
  'train',
  ['train', 'evaluate', 'predict'],
  'train (resumes if the workdir has a checkpoint); evaluate (metrics and '
  'predictions again, eval_results.json); predict (predictions only, no labels '
  'needed, into <workdir>/predict/).',
)
flags.DEFINE_string(
  'data_root',
  None,
  'MuSe-layout tree; overrides config.data_root. Neither set: '
  "the workdir's tree, else the generated demo tree.",
)
flags.DEFINE_string('data_dir', None, 'tfds data_dir; overrides config.data_dir.')
flags.DEFINE_multi_string(
  'sweep',
  [],
  'A sweep axis, field=value1,value2 (repeat for a product; '
  "values holding commas (feature_sets, loss_weights): split by ';'); or "
  'get_sweep() in the config file. '
  'Trains every setting x num_seeds seeds, chooses on devel '
  '(muse_jax.sweep).',
)
flags.DEFINE_string(
  'sweep_search',
  '',
  'random:N: N settings drawn from the --sweep axes (ranges '
  'lo:hi, log-uniform for rates; lists a,b,c) instead of their product; '
  "optuna:N[:B]: Optuna's TPE proposes them B at a time (pip install -e "
  '.[search]).',
)
flags.DEFINE_string(
  'sweep_shard',
  '',
  "I/N: train only the I-th share of the sweep's groups (one "
  'process of N on a cluster, same --workdir); the last to finish writes the '
  'report, or python -m muse_jax.sweep_report W.',
)
flags.DEFINE_bool(
  'distributed',
  False,
  'Multi-host: jax.distributed.initialize() with the '
  "cluster's auto-detection (Cloud TPU, SLURM, Open MPI, Kubernetes).",
)
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process (0 .. num_processes-1).')
flags.mark_flags_as_required(['config'])


def main(argv):
  cli.no_arguments(argv)
  config = config_cli.loaded(_CONFIG)
  import jax  # noqa: PLC0415  (after the flags: --help stays fast)

  from muse_jax import runtime  # noqa: PLC0415  (JAX: after the flags)

  if FLAGS.distributed or FLAGS.coordinator_address:  # before anything creates a JAX backend
    jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
    )
  runtime.configure(config)  # before process_index() below, which starts the backend
  if jax.process_index() != 0:  # process 0 speaks for the job
    logging.set_verbosity(logging.WARNING)
  if jax.process_count() > 1:
    logging.info(
      'process %d of %d, %d local / %d global devices',
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
    )
  from muse_jax import inference  # noqa: PLC0415  (JAX-heavy: after runtime.configure)
  from muse_jax import outputs  # noqa: PLC0415  (JAX-heavy: after runtime.configure)
  from muse_jax import sweep  # noqa: PLC0415  (JAX-heavy: after runtime.configure)
  from muse_jax import sweep_report  # noqa: PLC0415  (JAX-heavy: after runtime.configure)
  from muse_jax import train  # noqa: PLC0415  (JAX-heavy: after runtime.configure)

  with config.unlocked():
    if FLAGS.data_root is not None:
      config.data_root = os.path.expanduser(FLAGS.data_root)
    if FLAGS.data_dir is not None:
      config.data_dir = os.path.expanduser(FLAGS.data_dir)
  workdir = config_cli.workdir_of(FLAGS.workdir)
  demo_root = config_cli.default_data(config, workdir, FLAGS.mode)
  logging.info('mode %s, workdir %s', FLAGS.mode, workdir)
  path = config_cli.config_path(sys.argv)
  sweep_list = config_util.load_sweep(path) if path and not FLAGS.sweep else None
  if (FLAGS.sweep_search and not FLAGS.sweep) or (
    FLAGS.sweep_shard and not FLAGS.sweep and sweep_list is None
  ):
    raise MuseError(
      '--sweep_search and --sweep_shard need a sweep: --sweep=field=values '
      '(a search: ranges lo:hi or lists a,b,c)'
      + ('' if FLAGS.sweep_search else ', or get_sweep() in the config file')
    )
  is_sweep = bool(FLAGS.sweep) or sweep_list is not None
  if is_sweep and FLAGS.mode != 'train':
    raise MuseError(
      f'--mode={FLAGS.mode} of a sweep: evaluate or predict the chosen run (or '
      'its ensemble, --config.eval_seed=sweep_ensemble) with the config it was '
      'trained with: --config=configs/workdir.py:W'
    )
  if is_sweep:
    report = sweep.run(
      config,
      workdir,
      sweep.axes_of(config, FLAGS.sweep),
      sweep_list,
      FLAGS.sweep_shard,
      FLAGS.sweep_search,
    )
    text = (
      sweep_report.markdown(report)
      if report
      else f'shard {FLAGS.sweep_shard} done; the report follows when every shard has finished'
    )
  elif str(config.get('eval_seed', '')).strip().lower() == 'sweep_ensemble' and (
    FLAGS.mode != 'train'
  ):
    text = outputs.summary(sweep_report.write_ensemble(config, workdir, FLAGS.mode))
  else:
    run = {
      'train': train.train_and_evaluate,
      'evaluate': inference.evaluate,
      'predict': inference.predict,
    }[FLAGS.mode]
    text = outputs.summary(run(config, workdir))
  if jax.process_index() == 0:
    print(text)
    if demo_root:
      print(config_cli.demo_line(demo_root))


if __name__ == '__main__':
  cli.run_app(main, flags_parser=config_cli.parse_flags)
