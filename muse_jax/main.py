"""Command line: `python -m muse_jax.main --config=configs/valence.py --workdir=DIR [--mode=...]`.

Thin by design (as the flax examples): flags -> config -> train/evaluate/predict in train.py.
User errors (bad data, config or workdir) end as one line `error: ...` and exit status 2.
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from muse_jax import cli
from muse_jax import config_util

config_util.ensure_configs_importable()

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, logs, predictions, results.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate', 'predict'],
                  'train (resumes if the workdir has a checkpoint), evaluate or predict.')
flags.DEFINE_string('data_root', None, 'MuSe-layout tree; overrides config.data_root.')
flags.DEFINE_string('data_dir', None, 'tfds data_dir; overrides config.data_dir.')
flags.DEFINE_bool('distributed', False, 'Multi-host: jax.distributed.initialize() with the '
                  "cluster's auto-detection (Cloud TPU, SLURM, Open MPI, Kubernetes).")
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process (0 .. num_processes-1).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import jax  # pylint: disable=import-outside-toplevel
  from muse_jax import host_memory  # pylint: disable=import-outside-toplevel
  if _CONFIG.value.get('reuse_cpu_buffers', True) is True:
    host_memory.prefer_sync_dispatch()  # before anything creates a JAX backend
  if FLAGS.distributed or FLAGS.coordinator_address:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    if jax.process_index() != 0:  # process 0 speaks for the job
      logging.set_verbosity(logging.WARNING)
    logging.info('process %d of %d, %d local / %d global devices', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
  from muse_jax import train  # pylint: disable=import-outside-toplevel
  config = _CONFIG.value
  with config.unlocked():
    if FLAGS.data_root is not None:
      config.data_root = FLAGS.data_root
    if FLAGS.data_dir is not None:
      config.data_dir = FLAGS.data_dir
  logging.info('mode %s, workdir %s', FLAGS.mode, FLAGS.workdir)
  run = {'train': train.train_and_evaluate, 'evaluate': train.evaluate,
         'predict': train.predict}[FLAGS.mode]
  results = run(config, FLAGS.workdir)
  if jax.process_index() == 0:
    print(summary(results))


def summary(results: dict) -> str:
  lines = [f'best epoch {results["best_epoch"]}']
  for split in ('devel', 'test'):
    m = results.get(split)
    if m:
      lines.append(f'{split}: ' + '  '.join(
          f'{t} CCC {m[t]["ccc"]:.4f}' for t in results['targets']))
  return '\n'.join(lines)


def _parse_flags(argv):
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    sys.stderr.write(f'error: command line: {msg} (see --helpfull)\n')
    sys.exit(2)


if __name__ == '__main__':
  cli.run_app(main, flags_parser=_parse_flags)
