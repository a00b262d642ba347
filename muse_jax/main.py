"""Command line: `python -m muse_jax.main --config=configs/valence.py [--workdir=DIR] [--mode=...]`.

Thin by design (as the flax examples): flags -> config -> `runtime.configure` (process settings,
once) -> `train.train_and_evaluate`, `inference.evaluate` or `inference.predict`. User errors (bad
data, config or workdir) end as one line `error: ...` and exit status 2 (`cli`).

The design card's command works as written: without `--workdir` a run writes to
`runs/<config name>` under the current folder; without a data root it uses the workdir's own tree
(a rerun, evaluate or predict of a finished run) or, for a new workdir, the generated demo tree
(`data.demo.tree_in`, written once), and says so in the log and the printed summary.
"""
import os
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

from muse_jax import cli
from muse_jax import config_util
from muse_jax.errors import MuseError

config_util.ensure_configs_importable()

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, logs, predictions, results; default '
                    'runs/<config name> under the current folder.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate', 'predict'],
                  'train (resumes if the workdir has a checkpoint); evaluate (metrics and '
                  'predictions again, eval_results.json); predict (predictions only, no labels '
                  'needed, into <workdir>/predict/).')
flags.DEFINE_string('data_root', None, 'MuSe-layout tree; overrides config.data_root. Neither set: '
                    "the workdir's tree, else the generated demo tree.")
flags.DEFINE_string('data_dir', None, 'tfds data_dir; overrides config.data_dir.')
flags.DEFINE_multi_string('sweep', [], 'A sweep axis, field=value1,value2 (repeat for a product; '
                          "values holding commas (feature_sets, loss_weights): split by ';'); or "
                          'get_sweep() in the config file. '
                          'Trains every setting x num_seeds seeds, chooses on devel '
                          '(muse_jax.sweep).')
flags.DEFINE_string('sweep_search', '', 'random:N: N settings drawn from the --sweep axes (ranges '
                    'lo:hi, log-uniform for rates; lists a,b,c) instead of their product; '
                    "optuna:N[:B]: Optuna's TPE proposes them B at a time (pip install -e "
                    '.[search]).')
flags.DEFINE_string('sweep_shard', '', 'I/N: train only the I-th share of the sweep\'s groups (one '
                    'process of N on a cluster, same --workdir); the last to finish writes the '
                    'report, or python -m muse_jax.sweep_report W.')
flags.DEFINE_bool('distributed', False, 'Multi-host: jax.distributed.initialize() with the '
                  "cluster's auto-detection (Cloud TPU, SLURM, Open MPI, Kubernetes).")
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process (0 .. num_processes-1).')
flags.mark_flags_as_required(['config'])


def main(argv):
  cli.no_arguments(argv)
  config = _config()
  import jax  # pylint: disable=import-outside-toplevel
  from muse_jax import runtime  # pylint: disable=import-outside-toplevel
  if FLAGS.distributed or FLAGS.coordinator_address:  # before anything creates a JAX backend
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  runtime.configure(config)  # before process_index() below, which starts the backend
  if jax.process_index() != 0:  # process 0 speaks for the job
    logging.set_verbosity(logging.WARNING)
  if jax.process_count() > 1:
    logging.info('process %d of %d, %d local / %d global devices', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
  from muse_jax import inference, train  # pylint: disable=import-outside-toplevel
  with config.unlocked():
    if FLAGS.data_root is not None:
      config.data_root = os.path.expanduser(FLAGS.data_root)
    if FLAGS.data_dir is not None:
      config.data_dir = os.path.expanduser(FLAGS.data_dir)
  workdir = _workdir(FLAGS.workdir)
  demo_root = _default_data(config, workdir, FLAGS.mode)
  logging.info('mode %s, workdir %s', FLAGS.mode, workdir)
  path = _config_path(sys.argv)
  sweep_list = config_util.load_sweep(path) if path and not FLAGS.sweep else None
  if (FLAGS.sweep_search and not FLAGS.sweep) or (FLAGS.sweep_shard and not FLAGS.sweep
                                                  and sweep_list is None):
    raise MuseError('--sweep_search and --sweep_shard need a sweep: --sweep=field=values '
                    '(a search: ranges lo:hi or lists a,b,c)' + (
                        '' if FLAGS.sweep_search else ', or get_sweep() in the config file'))
  if FLAGS.sweep or sweep_list is not None:
    from muse_jax import sweep  # pylint: disable=import-outside-toplevel
    if FLAGS.mode != 'train':
      raise MuseError(f'--mode={FLAGS.mode} of a sweep: evaluate or predict the chosen run, '
                      f'which {os.path.join(workdir, sweep.SWEEP_JSON)} names (best.workdir), '
                      'with the config it was trained with: --config=configs/workdir.py:RUN')
    report = sweep.run(config, workdir, sweep.axes_of(config, FLAGS.sweep), sweep_list,
                       FLAGS.sweep_shard, FLAGS.sweep_search)
    if jax.process_index() == 0:
      print(sweep.markdown(report) if report else
            f'shard {FLAGS.sweep_shard} done; the report follows when every shard has finished')
      if demo_root:
        print(demo_line(demo_root))
    return
  run = {'train': train.train_and_evaluate, 'evaluate': inference.evaluate,
         'predict': inference.predict}[FLAGS.mode]
  results = run(config, workdir)
  if jax.process_index() == 0:
    print(summary(results))
    if demo_root:
      print(demo_line(demo_root))


def _workdir(flag: str | None) -> str:
  """--workdir (with ~ expanded), or runs/<config name> under the current folder (logged)."""
  if flag:
    return os.path.abspath(os.path.expanduser(flag))
  path = _config_path(sys.argv) or 'run'
  file, _, arg = path.partition(':')
  if os.path.basename(file) == 'workdir.py' and arg:  # the run it reads the config of
    workdir = os.path.abspath(os.path.expanduser(arg))
    logging.info('no --workdir given: the run whose config this is, %s', workdir)
    return workdir
  name = os.path.splitext(os.path.basename(file))[0] or 'run'
  workdir = os.path.abspath(os.path.join('runs', name))
  logging.info('no --workdir given: writing to %s (runs/<config name>)', workdir)
  return workdir


def demo_line(root: str) -> str:
  return (f'data: the generated demo tree {root} (synthetic, not MuSe-CaR); pass '
          '--data_root=/path/to/a/MuSe/tree to train on real data')


def _default_data(config, workdir: str, mode: str) -> str:
  """Fills an empty data root: the tree the workdir was trained on (rerun, evaluate, predict),
  else, to train, the generated demo tree, written once under demo.default_out(); its build then
  goes to <that folder>/tfds unless a data_dir is set. Returns the demo root when it is used.
  (Evaluate or predict of a workdir that never trained stop at its missing checkpoint.)"""
  if config.get('data_root'):
    return ''
  from muse_jax import workdir as run_dir  # pylint: disable=import-outside-toplevel
  from muse_jax.data import demo  # pylint: disable=import-outside-toplevel
  saved = run_dir.saved_config(workdir) if os.path.isdir(workdir) else None
  if saved is None and os.path.isfile(os.path.join(workdir, 'sweep_plan.json')):
    saved = run_dir.saved_config(os.path.join(workdir, 'groups', 'g0'))  # a sweep's tree
  if saved and saved.get('data_root'):
    with config.unlocked():
      config.data_root = saved['data_root']
      if not config.get('data_dir') and saved.get('data_dir'):
        config.data_dir = saved['data_dir']
    logging.info('no data root given: using the tree %s was trained on, %s', workdir,
                 config.data_root)
    return config.data_root if demo.is_demo_tree(config.data_root) else ''
  if mode != 'train':
    return ''
  out = demo.default_out()
  root = demo.tree_in(out, 'demo', task=config.get('task', ''))
  with config.unlocked():
    config.data_root = root
    if not config.get('data_dir'):
      config.data_dir = os.path.join(out, 'tfds')
  logging.info('no data root given: %s', demo_line(root)[len('data: '):])
  return root


def _config():
  """The parsed config; a config file that is missing or fails to load is one line."""
  try:
    config = _CONFIG.value
    config.get('seed')  # a file that failed to load gives a stand-in that raises on use
    return config
  except Exception as e:  # pylint: disable=broad-except
    path = _config_path(sys.argv) or '?'
    if _missing(path):
      raise MuseError(_missing(path)) from None
    cause = e.__cause__ or e
    raise MuseError(f'{path}: config file failed to load ({type(cause).__name__}: '
                    f'{str(cause).strip().splitlines()[-1] if str(cause).strip() else ""})') from None


def _config_path(argv) -> str | None:
  """The --config value as given (--config=X or --config X), or None."""
  for i, a in enumerate(argv):
    if a.startswith('--config='):
      return a.split('=', 1)[1]
    if a == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _missing(path: str) -> str | None:
  """The message for a --config file that does not exist (None if it does)."""
  if os.path.exists(os.path.expanduser(path.split(':')[0])):
    return None
  return (f'{path}: config file not found; pass --config=configs/<name>.py (the repository has: '
          f'{", ".join(_known_configs())})')


def _known_configs() -> list:
  return sorted(n[:-3] for n in os.listdir(config_util.CONFIGS)
                if n.endswith('.py') and not n.startswith('_'))


def summary(results: dict) -> str:
  """The lines printed at the end: best epoch and CCC per target (predict: where it wrote)."""
  ens = results.get('ensemble') if results.get('seed') == 'ensemble' else None
  written = (f'the ensemble of seeds {", ".join(map(str, ens["seeds"]))} (best epochs '
             f'{", ".join(map(str, ens["best_epochs"]))})' if ens else
             f'seed {results["seed"]} (epoch {results["best_epoch"]})')
  if 'predictions' in results and 'devel' not in results:
    return (f'predictions of {written} for {sum(results["videos"].values())} videos in '
            f'{results["predictions"]}')
  from muse_jax import inference  # pylint: disable=import-outside-toplevel
  lines = [f'predictions of {written}' if ens else f'best epoch {results["best_epoch"]}']
  for split in ('devel', 'test'):
    m = results.get(split)
    if m:
      lines.append(f'{split}: ' + '  '.join(
          f'{t} CCC {m[t]["ccc"]:.4f}{inference.interval(m[t])}' for t in results['targets']))
    elif split == 'test':
      lines.append('test: no labels in this tree, no test CCC (predictions are written)')
  lines += inference.seed_lines(results)  # several seeds: the best one, their spread, average
  return '\n'.join(lines)


def _parse_flags(argv):
  # `--config=~/my.py`: the shell leaves ~ after = alone, and config_flags does not expand it.
  argv = [f'--config={os.path.expanduser(a[len("--config="):])}' if a.startswith('--config=')
          else a for a in argv]
  try:
    return FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    path = _config_path(argv)
    if path and _missing(path):
      raise MuseError(_missing(path)) from None
    msg = _unknown_field(argv)
    cause = e
    while cause.__cause__ is not None and not isinstance(cause, SyntaxError):
      cause = cause.__cause__
    if isinstance(cause, SyntaxError):
      msg = (f'{cause.filename}: line {cause.lineno}: config file failed to load (SyntaxError: '
             f'{cause.msg})')
    elif msg is None:
      msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    raise MuseError(f'command line: {msg} (see --helpfull)') from None


def _unknown_field(argv) -> str | None:
  """"unknown config field 'x'" when a --config.x override names no field of the config file."""
  path = _config_path(argv)
  if path is None:
    return None
  try:
    config = config_util.load_config(os.path.abspath(path))
  except Exception:  # pylint: disable=broad-except
    return None  # the config file itself is the problem: reported when it is loaded
  for a in argv:
    if not a.startswith('--config.'):
      continue
    field = a[len('--config.'):].split('=', 1)[0]
    node = config
    for i, part in enumerate(field.split('.')):
      keys = list(node.keys()) if hasattr(node, 'keys') else []
      if part not in keys:
        near = [k for k in keys if k.lower().startswith(part.lower()[:3])][:5]
        parent = '.'.join(field.split('.')[:i])
        return (f"unknown config field {field!r}" + (f' (fields of {parent}: ' if parent else
                ' (similar fields: ' if near else '') +
                (', '.join(keys) if parent else ', '.join(near)) +
                (')' if parent or near else ''))
      node = node[part]
  return None


if __name__ == '__main__':
  cli.run_app(main, flags_parser=_parse_flags)
