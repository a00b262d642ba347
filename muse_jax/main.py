"""Command line: `python -m muse_jax.main --config=configs/valence.py [--workdir=DIR] [--mode=...]`.

Thin by design (as the flax examples): flags -> config (`config_cli`) -> `runtime.configure`
(process settings, once) -> `train.train_and_evaluate`, `modes.evaluate`,
`modes.predict`, or a sweep and a sweep's ensemble (`sweep.command`). Flags' full help:
`--helpfull`; what they do: README.md and docs/usage.md.
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

config_util.ensure_configs_importable()

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/*.py', lock_config=True)
flags.DEFINE_string('workdir', None, 'Run folder; default runs/<config name> here.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate', 'predict'], 'train (resumes) or not.')
flags.DEFINE_string('data_root', None, "A tree; default the workdir's tree, else the demo tree.")
flags.DEFINE_string('data_dir', None, 'tfds data_dir; overrides config.data_dir.')
flags.DEFINE_multi_string('sweep', [], 'A sweep axis field=v1,v2 (repeat for a product).')
flags.DEFINE_string('sweep_search', '', 'random:N or optuna:N[:B]: a search over the axes.')
flags.DEFINE_string('sweep_shard', '', "I/N: this process's share of the sweep's groups.")
flags.DEFINE_bool('distributed', False, 'Multi-host: jax.distributed.initialize(), auto-detected.')
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
    n = (jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    logging.info('process %d of %d, %d local / %d global devices', *n)
  from muse_jax import modes  # noqa: PLC0415  (JAX-heavy: after runtime.configure)
  from muse_jax import outputs  # noqa: PLC0415  (JAX-heavy: after runtime.configure)
  from muse_jax import sweep  # noqa: PLC0415  (JAX-heavy: after runtime.configure)
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
  text = sweep.command(
    config, workdir, FLAGS.mode, FLAGS.sweep, sweep_list, FLAGS.sweep_shard, FLAGS.sweep_search
  )  # a sweep, or a sweep's ensemble; else None
  if text is None:
    modes = {'evaluate': modes.evaluate, 'predict': modes.predict}
    text = outputs.summary(modes.get(FLAGS.mode, train.train_and_evaluate)(config, workdir))
  if jax.process_index() == 0:
    print(text)
    if demo_root:
      print(config_cli.demo_line(demo_root))


if __name__ == '__main__':
  cli.run_app(main, flags_parser=config_cli.parse_flags)
