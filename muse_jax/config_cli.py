"""How the command line becomes a config: the --config file and its overrides (one line for a
missing file, a file that fails to load, an unknown field), the default workdir
(`runs/<config name>`) and the default data root (the workdir's own tree, else the generated
demo tree). `muse_jax.main` stays a list of flags and one dispatch."""

import os
import sys

from absl import flags
from absl import logging

from muse_jax import config_util
from muse_jax import workdir as workdir_lib
from muse_jax.data import demo
from muse_jax.errors import MuseError


def workdir_of(flag: str | None) -> str:
  """--workdir (with ~ expanded), or runs/<config name> under the current folder (logged)."""
  if flag:
    return os.path.abspath(os.path.expanduser(flag))
  path = config_path(sys.argv) or 'run'
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
  return (
    f'data: the generated demo tree {root} (synthetic, not MuSe-CaR); pass '
    '--data_root=/path/to/a/MuSe/tree to train on real data'
  )


def default_data(config, workdir: str, mode: str) -> str:
  """Fills an empty data root: the tree the workdir was trained on (rerun, evaluate, predict),
  else, to train, the generated demo tree, written once under demo.default_out(); its build then
  goes to <that folder>/tfds unless a data_dir is set. Returns the demo root when it is used.
  (Evaluate or predict of a workdir that never trained stop at its missing checkpoint.)"""
  if config.get('data_root'):
    return ''
  saved = workdir_lib.saved_config(workdir) if os.path.isdir(workdir) else None
  if saved is None and os.path.isfile(os.path.join(workdir, 'sweep_plan.json')):
    saved = workdir_lib.saved_config(os.path.join(workdir, 'groups', 'g0'))  # a sweep's tree
  if saved and saved.get('data_root'):
    with config.unlocked():
      config.data_root = saved['data_root']
      if not config.get('data_dir') and saved.get('data_dir'):
        config.data_dir = saved['data_dir']
    logging.info(
      'no data root given: using the tree %s was trained on, %s', workdir, config.data_root
    )
    return config.data_root if demo.is_demo_tree(config.data_root) else ''
  if mode != 'train':
    return ''
  out = demo.default_out()
  root = demo.tree_in(out, 'demo', task=config.get('task', ''))
  with config.unlocked():
    config.data_root = root
    if not config.get('data_dir'):
      config.data_dir = os.path.join(out, 'tfds')
  logging.info('no data root given: %s', demo_line(root)[len('data: ') :])
  return root


def loaded(config_flag):
  """The parsed config; a config file that is missing or fails to load is one line."""
  try:
    config = config_flag.value
    config.get('seed')  # a file that failed to load gives a stand-in that raises on use
    return config
  except Exception as e:  # noqa: BLE001
    path = config_path(sys.argv) or '?'
    if _missing(path):
      raise MuseError(_missing(path)) from None
    cause = e.__cause__ or e
    raise MuseError(
      f'{path}: config file failed to load ({type(cause).__name__}: '
      f'{str(cause).strip().splitlines()[-1] if str(cause).strip() else ""})'
    ) from None


def config_path(argv) -> str | None:
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
  return (
    f'{path}: config file not found; pass --config=configs/<name>.py (the repository has: '
    f'{", ".join(_known_configs())})'
  )


def _known_configs() -> list:
  return sorted(
    n[:-3] for n in os.listdir(config_util.CONFIGS) if n.endswith('.py') and not n.startswith('_')
  )


def parse_flags(argv):
  # `--config=~/my.py`: the shell leaves ~ after = alone, and config_flags does not expand it.
  argv = [
    f'--config={os.path.expanduser(a[len("--config=") :])}' if a.startswith('--config=') else a
    for a in argv
  ]
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001
    path = config_path(argv)
    if path and _missing(path):
      raise MuseError(_missing(path)) from None
    msg = _unknown_field(argv)
    cause = e
    while cause.__cause__ is not None and not isinstance(cause, SyntaxError):
      cause = cause.__cause__
    if isinstance(cause, SyntaxError):
      msg = (
        f'{cause.filename}: line {cause.lineno}: config file failed to load (SyntaxError: '
        f'{cause.msg})'
      )
    elif msg is None:
      msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    raise MuseError(f'command line: {msg} (see --helpfull)') from None


def _unknown_field(argv) -> str | None:
  """ "unknown config field 'x'" when a --config.x override names no field of the config file."""
  path = config_path(argv)
  if path is None:
    return None
  try:
    config = config_util.load_config(os.path.abspath(path))
  except Exception:  # noqa: BLE001
    return None  # the config file itself is the problem: reported when it is loaded
  for a in argv:
    if not a.startswith('--config.'):
      continue
    field = a[len('--config.') :].split('=', 1)[0]
    node = config
    for i, part in enumerate(field.split('.')):
      keys = list(node.keys()) if hasattr(node, 'keys') else []
      if part not in keys:
        near = [k for k in keys if k.lower().startswith(part.lower()[:3])][:5]
        parent = '.'.join(field.split('.')[:i])
        return (
          f'unknown config field {field!r}'
          + (f' (fields of {parent}: ' if parent else ' (similar fields: ' if near else '')
          + (', '.join(keys) if parent else ', '.join(near))
          + (')' if parent or near else '')
        )
      node = node[part]
  return None
