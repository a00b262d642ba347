"""Loading config files (configs/*.py with `get_config()`) outside the absl flag machinery."""
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, 'configs')


def ensure_configs_importable() -> None:
  """Config files import their defaults as `from configs import default`; make the repo's
  configs/ importable wherever the command is run from."""
  if REPO not in sys.path:
    sys.path.insert(1, REPO)


def load_config(path: str):
  """`configs/demo.py`, an absolute path, or a bare name like 'demo' -> its get_config()."""
  ensure_configs_importable()
  if not path.endswith('.py'):
    path = os.path.join(CONFIGS, f'{path}.py')
  spec = importlib.util.spec_from_file_location(
      f'_muse_config_{os.path.basename(path)[:-3]}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
