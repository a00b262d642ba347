"""Configs at the edge: loading `configs/*.py`, parsing the list fields once, validating all.

A config file reads like a hyperparameter table (ml_collections, `get_config()`); its list fields
take tuples or comma strings ('egemaps,fasttext' works on the command line). `validate_config`
turns a config into a `Spec`, with every list parsed and every path made absolute, or stops with
one line naming the field; the rest of the program reads the Spec and never re-parses.
"""

import dataclasses
import importlib.util
import json
import os
import sys
from typing import TYPE_CHECKING

from muse_jax.data import layout
from muse_jax.data.layout import parse_list  # the list fields' parser: config_util.parse_list
from muse_jax.errors import MuseError

if TYPE_CHECKING:  # annotations only: ml_collections loads where a config is made
  import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, 'configs')
FUSION_PREFIX = 'run:'  # input names of late fusion's sources: run:<workdir name>/<target>
LOSSES = ('ccc', 'mse', 'l1')
NAN_POLICIES = ('zero', 'error')
NONFINITE_POLICIES = ('stop', 'skip')
ATTENTION = ('auto', 'blocked', 'plain', 'dot_product', 'cudnn')
# What one member of a run may set for itself (config.members): fields that change no array shape
# and no data, only a member's initialisation and its host-side schedule, so members that differ
# in them train side by side in one compiled step (as seeds do).
MEMBER_FIELDS = (
  'seed',
  'learning_rate',
  'min_learning_rate',
  'plateau_patience',
  'plateau_factor',
  'early_stopping_patience',
  'model.rnn_dropout',
  'model.out_dropout',
  'model.attn_dropout',
  'loss_weights',
)
# Traced per member, in steps.MEMBER_RATES' order.
MEMBER_RATES = ('model.rnn_dropout', 'model.out_dropout', 'model.attn_dropout')


def get_field(config, name: str):
  """A dotted field's value ('model.out_dropout'), or None where there is none."""
  node = config
  for part in name.split('.'):
    if not hasattr(node, 'keys') or part not in node.keys():
      return None
    node = node[part]
  return node


def ensure_configs_importable() -> None:
  """Config files import their defaults as `from configs import default`; make the repo's
  configs/ importable wherever the command is run from."""
  if REPO not in sys.path:
    sys.path.insert(1, REPO)


def _config_module(path: str):
  """The module of `configs/demo.py`, an absolute path, or a bare name like 'demo'."""
  ensure_configs_importable()
  path = os.path.expanduser(path)
  if not path.endswith('.py'):
    path = os.path.join(CONFIGS, f'{path}.py')
  spec = importlib.util.spec_from_file_location(f'_muse_config_{os.path.basename(path)[:-3]}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(path: str):
  """`configs/demo.py`, an absolute path, or a bare name like 'demo' -> its get_config()."""
  return _config_module(path).get_config()


def load_sweep(path: str):
  """The config file's get_sweep() (a list of override dicts), or None when it has none
  (`path` as --config gives it: a ':arg' suffix is the config's, not the file's)."""
  module = _config_module(path.split(':')[0])
  return module.get_sweep() if hasattr(module, 'get_sweep') else None


def fusion_input_names(runs: list, targets: list) -> list:
  """`run:<workdir basename>/<target>` per run and target, in that order (the column order)."""
  names = [os.path.basename(os.path.normpath(r)) for r in runs]
  for i, name in enumerate(names):
    if name in names[:i]:
      raise MuseError(
        f'config.fusion_runs: {runs[names.index(name)]} and {runs[i]} share the name '
        f'{name!r}; input columns are named after workdir folders, rename one'
      )
  return [f'{FUSION_PREFIX}{name}/{t}' for name in names for t in targets]


def data_dir_of(config) -> str:
  """The user's data_dir (config, $TFDS_DATA_DIR or ~/tensorflow_datasets), absolute."""
  d = config.get('data_dir') or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  return os.path.abspath(os.path.expanduser(d))


def loss_weights(config, targets) -> tuple:
  """config.loss_weights as one float per target: '' (equal), numbers in target order, or
  'name=w' entries (targets not named weigh 1); a comma string or a tuple."""
  raw = config.loss_weights
  items = parse_list(raw) if isinstance(raw, str) else [str(v) for v in raw]
  if not items:
    return ()
  if all('=' in i for i in items):
    named = {}
    for i in items:
      name, _, w = i.partition('=')
      named[name.strip()] = w
    unknown = sorted(set(named) - set(targets))
    if unknown:
      raise MuseError(
        f'config: loss_weights names {unknown[0]!r}, not a target of this run '
        f'({", ".join(targets)})'
      )
    items = [named.get(t, '1') for t in targets]
  elif len(items) != len(targets):
    raise MuseError(
      f'config: loss_weights has {len(items)} values for {len(targets)} targets '
      f'({", ".join(targets)}); give one per target or name=weight pairs'
    )
  try:
    weights = tuple(float(w) for w in items)
  except ValueError:
    raise MuseError(f'config: loss_weights {items} are not all numbers') from None
  if not all(w >= 0 and w < float('inf') for w in weights) or not any(weights):
    raise MuseError(f'config: loss_weights {weights} must be finite, >= 0 and not all 0')
  return weights


@dataclasses.dataclass(frozen=True)
class Spec:
  """A config with its list fields parsed and paths absolute; `config` holds the scalars."""

  config: 'ml_collections.ConfigDict'
  feature_sets: tuple[str, ...]
  targets: tuple[str, ...]
  fusion_runs: tuple[str, ...]  # absolute workdirs of first-level runs (late fusion), else ()
  inputs: tuple[str, ...]  # input names in column order: sets, fusion runs, segment_id
  normalized: tuple[str, ...]  # the inputs that are z-normalised
  seeds: tuple[int, ...]
  data_seed: int
  data_root: str  # absolute, '' when not set: the folder holding metadata/ (the layout's)
  data_dir: str  # absolute: where this layout's builds live (layout.task_data_dir)
  layout: 'layout.Layout | None' = None  # the layout of data_root (None: not set or found)
  loss_weights: tuple[float, ...] = ()  # one per target, () = equal
  eval_seed: int | str = 'best'  # what evaluate/predict write: 'best', 'ensemble' or an index
  members: tuple[dict, ...] = ()  # per member (seed axis) its MEMBER_FIELDS overrides

  def member_config(self, i: int):
    """The config member `i` trains with (its schedule fields); the config itself without
    members."""
    if not self.members or not self.members[i]:
      return self.config
    return with_overrides(self.config, self.members[i])


def with_overrides(config, overrides: dict):
  """A copy of `config` with dotted fields set ('model.out_dropout': 0.3); fields must exist."""
  import ml_collections  # noqa: PLC0415  (60 ms: members, sweeps only)

  c = ml_collections.ConfigDict(config.to_dict())
  for k, v in overrides.items():
    *parents, leaf = k.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def parse_members(value, config) -> tuple:
  """config.members (a JSON list of {field: value} objects, one per member, fields of
  MEMBER_FIELDS; '' = none) -> tuple of dicts; one line for what cannot be read."""
  if not value:
    return ()
  try:
    members = json.loads(value) if isinstance(value, str) else list(value)
  except ValueError as e:
    raise MuseError(
      f'config.members is not JSON ({e}); a list of objects such as '
      '[{"seed": 43, "learning_rate": 0.002}, ...]'
    ) from None
  if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
    raise MuseError('config.members must be a non-empty JSON list of objects, one per member')
  out = []
  for i, m in enumerate(members):
    unknown = sorted(set(m) - set(MEMBER_FIELDS))
    if unknown:
      raise MuseError(
        f'config.members[{i}]: {unknown[0]!r} cannot differ between the members of '
        f'one run (they share one compiled step); per member: '
        f'{", ".join(MEMBER_FIELDS)}'
      )
    for k, v in m.items():
      base = get_field(config, k)
      if (
        isinstance(base, int)
        and not isinstance(base, bool)
        and isinstance(v, float)
        and (v.is_integer())
      ):
        v = int(v)
      if type(v) is not type(base) and not (
        isinstance(base, float) and isinstance(v, int) and not isinstance(v, bool)
      ):
        raise MuseError(
          f'config.members[{i}].{k}={v!r}: need a {type(base).__name__} like config.{k}={base!r}'
        )
      m[k] = float(v) if isinstance(base, float) else v
    out.append(dict(m))
  return tuple(out)


def eval_seed(value, num_seeds: int):
  """config.eval_seed as 'best', 'ensemble' or a seed index in [0, num_seeds)."""
  if isinstance(value, str) and value.strip().lower() in ('best', 'ensemble'):
    return value.strip().lower()
  try:
    index = int(value) if not isinstance(value, (bool, float)) else None
  except ValueError:
    index = None
  if index is not None and 0 <= index < num_seeds:
    return index
  if isinstance(value, str) and value.strip().lower() == 'sweep_ensemble':
    raise MuseError(
      "config.eval_seed='sweep_ensemble' is the ensemble of a sweep's best members: "
      'a sweep (--sweep) or --mode=evaluate/predict of its workdir takes it, not one '
      "run (whose seeds' ensemble is 'ensemble')"
    )
  raise MuseError(
    f"config.eval_seed={value!r} is invalid: use 'best' (the seed with the best "
    f"devel CCC), 'ensemble' (the mean of the seeds' predictions) or a seed index "
    f'in [0, num_seeds={num_seeds})'
  )


def parse(config, strict: bool = False, tree_targets: bool = True) -> Spec:
  """The Spec of a config, without validating it (validate_config does both). The data root is
  resolved to its layout (a release root holding several tasks needs config.task); `strict`:
  a root that cannot be resolved, or targets it does not have, are errors (else left as given).
  `tree_targets` False (predict on a tree without labels): targets are the model's, not checked."""
  sets = tuple(parse_list(config.feature_sets))
  targets = tuple(parse_list(config.targets))
  root = config.get('data_root') or ''
  root = os.path.abspath(os.path.expanduser(root)) if root else ''
  lay, data_dir = None, data_dir_of(config)
  if root:
    try:
      lay = layout.resolve(root, config.get('task', ''))
      if tree_targets:
        targets = lay.check_targets(targets)
    except MuseError:
      if strict:
        raise
    if lay is not None:
      root, data_dir = lay.root, layout.task_data_dir(data_dir, lay)
  runs = tuple(
    os.path.abspath(os.path.expanduser(r)) for r in parse_list(config.get('fusion_runs', ''))
  )
  inputs = sets + tuple(fusion_input_names(list(runs), list(targets)))
  inputs += (layout.SEGMENT_ID,) if config.add_segment_id else ()
  norm = parse_list(config.normalize)
  if norm == ['all']:
    normalized = inputs
  elif norm == ['none']:
    normalized = ()
  else:
    unknown = sorted(set(norm) - set(inputs))
    if unknown:
      raise MuseError(
        f'config.normalize names {unknown} that are not inputs of this run '
        f"{list(inputs)}; use 'all', 'none' or a comma list of input names"
      )
    normalized = tuple(norm)
  try:
    weights = loss_weights(config, targets)
  except MuseError:
    if strict:
      raise
    weights = ()
  members = parse_members(config.get('members', ''), config)
  if members and len(members) != config.num_seeds:
    raise MuseError(
      f'config.members lists {len(members)} members but num_seeds is '
      f'{config.num_seeds}; they must agree (one seed axis entry per member)'
    )
  seeds = (
    tuple(m.get('seed', config.seed + i) for i, m in enumerate(members))
    if members
    else tuple(config.seed + i for i in range(config.num_seeds))
  )
  return Spec(
    config=config,
    feature_sets=sets,
    targets=targets,
    fusion_runs=runs,
    inputs=inputs,
    normalized=normalized,
    seeds=seeds,
    data_seed=config.seed if config.data_seed < 0 else config.data_seed,
    data_root=root,
    data_dir=data_dir,
    layout=lay,
    loss_weights=weights,
    eval_seed=eval_seed(config.get('eval_seed', 'best'), config.num_seeds),
    members=members,
  )


def validate_config(config, tree_targets: bool = True) -> Spec:
  """Fails fast, with one line, on values that cannot work (before data loading or compute)."""

  def need(ok, msg):
    if not ok:
      raise MuseError(f'config: {msg}')

  spec = parse(config, strict=True, tree_targets=tree_targets)
  sets, targets = list(spec.feature_sets), list(spec.targets)
  need(
    sets or spec.fusion_runs,
    'feature_sets is empty; name at least one feature folder, '
    'e.g. egemaps (or finished runs in fusion_runs, for late fusion)',
  )
  need(len(set(sets)) == len(sets), f'feature_sets lists a set twice: {sets}')
  need(
    targets and len(set(targets)) == len(targets) and 'all' not in targets,
    f'targets {targets}: name one or more targets (label folders of the tree), each once',
  )
  need(config.win_len >= 1, f'win_len must be >= 1, got {config.win_len}')
  need(
    1 <= config.hop_len <= config.win_len,
    f'hop_len must be in [1, win_len={config.win_len}], got {config.hop_len}',
  )
  need(config.batch_size >= 1, f'batch_size must be >= 1, got {config.batch_size}')
  need(
    config.micro_batch_size >= 0,
    f'micro_batch_size must be >= 0 (0 = whole batch), got {config.micro_batch_size}',
  )
  need(config.loss in LOSSES, f'loss must be one of {LOSSES}, got {config.loss!r}')
  need(
    config.nan_policy in NAN_POLICIES,
    f'nan_policy must be one of {NAN_POLICIES}, got {config.nan_policy!r}',
  )
  for field in ('bootstrap_samples', 'bootstrap_seed', 'sweep_ensemble'):
    v = config.get(field, 0)
    need(
      isinstance(v, int) and not isinstance(v, bool) and v >= 0,
      f'{field} must be an integer >= 0, got {v!r}',
    )
  need(config.get('max_abs_z', 1.0) > 0, f'max_abs_z must be > 0, got {config.get("max_abs_z")}')
  need(
    config.nonfinite_policy in NONFINITE_POLICIES,
    f'nonfinite_policy must be one of {NONFINITE_POLICIES}, got {config.nonfinite_policy!r}',
  )
  for i in range(len(spec.members) or 1):
    _check_schedule(
      spec.member_config(i), need, f'members[{i}].' if spec.members else '', spec.targets
    )
  need(config.num_epochs >= 1, f'num_epochs must be >= 1, got {config.num_epochs}')
  need(config.num_seeds >= 1, f'num_seeds must be >= 1, got {config.num_seeds}')
  need(
    config.get('seed_loop', 'auto') in ('auto', 'vmap', 'map'),
    f"seed_loop must be 'auto', 'vmap' or 'map', got {config.get('seed_loop')!r}",
  )
  need(
    config.get('attention', 'auto') in ATTENTION,
    f'attention must be one of {ATTENTION}, got {config.get("attention")!r}',
  )
  need(
    config.get('attention', 'auto') not in ('dot_product', 'cudnn')
    or not config.model.get('attn_dropout', 0.0),
    f'attention {config.get("attention")!r} (jax.nn.dot_product_attention) has no dropout on '
    f'the attention weights, but model.attn_dropout={config.model.get("attn_dropout")}: use '
    "attention 'plain' (or 'auto'), or model.attn_dropout=0",
  )
  need(
    config.inputs_on_disk in ('auto', 'yes', 'no'),
    f"inputs_on_disk must be 'auto', 'yes' or 'no', got {config.inputs_on_disk!r}",
  )
  need(config.num_devices >= 0, f'num_devices must be >= 0 (0 = all), got {config.num_devices}')
  md = config.get('member_devices', 1)
  need(
    isinstance(md, int) and md >= 1 and config.num_seeds % md == 0,
    f'member_devices must be an integer >= 1 dividing num_seeds={config.num_seeds} (each '
    f'device holds num_seeds / member_devices members), got {md!r}',
  )
  need(
    md == 1 or config.get('seed_loop', 'auto') != 'map',
    "member_devices > 1 shards members over devices in one vmapped step: seed_loop 'map' "
    'cannot, use auto or vmap',
  )
  need(
    isinstance(config.get('reuse_cpu_buffers', True), bool),
    f'reuse_cpu_buffers must be True or False, got {config.get("reuse_cpu_buffers")!r}',
  )
  need(
    isinstance(config.get('compilation_cache_dir', 'auto'), str),
    "compilation_cache_dir must be 'auto', a folder or 'none', got "
    f'{config.get("compilation_cache_dir")!r}',
  )
  model_fields(config.model, len(targets))
  return spec


def _check_schedule(c, need, where: str, targets=()) -> None:
  """The fields a member may set for itself, checked for the config and for each member."""
  need(c.learning_rate > 0, f'{where}learning_rate must be > 0, got {c.learning_rate}')
  need(
    c.min_learning_rate >= 0, f'{where}min_learning_rate must be >= 0, got {c.min_learning_rate}'
  )
  need(0 < c.plateau_factor < 1, f'{where}plateau_factor must be in (0, 1), got {c.plateau_factor}')
  need(c.plateau_patience >= 0, f'{where}plateau_patience must be >= 0, got {c.plateau_patience}')
  need(
    c.early_stopping_patience >= 1,
    f'{where}early_stopping_patience must be >= 1, got {c.early_stopping_patience}',
  )
  for f in MEMBER_RATES:
    v = get_field(c, f)
    need(v is None or 0.0 <= v < 1.0, f'{where}{f} must be a rate in [0, 1), got {v!r}')
    if where and v:  # a member's own rate must act (else its comparison shows nothing)
      need(
        not (f == 'model.rnn_dropout' and c.model.get('rnn_n_layers', 1) < 2),
        f'{where}{f}={v}: the RNN drops out between its layers only, and it has '
        f'rnn_n_layers={c.model.get("rnn_n_layers", 1)}',
      )
      need(
        not (f == 'model.out_dropout' and c.model.get('name') == 'late_fusion'),
        f'{where}{f}={v}: the late_fusion model has no output dropout',
      )
      need(
        not (
          f == 'model.attn_dropout'
          and (c.model.get('name') == 'late_fusion' or not c.model.get('attn_n_layers', 1))
        ),
        f'{where}{f}={v}: the model has no attention layer',
      )
      need(
        not (f == 'model.attn_dropout' and c.get('attention', 'auto') in ('dot_product', 'cudnn')),
        f'{where}{f}={v}: attention {c.get("attention")!r} has no dropout on the weights',
      )
  if where:  # a member's own loss weights (the config's are checked by parse)
    try:
      loss_weights(c, list(targets))
    except MuseError as e:
      need(False, f'{where}{str(e).removeprefix("config: ")}')


_SIZES = {'d_rnn': 1, 'rnn_n_layers': 1, 'attn_n_layers': 0, 'n_heads': 1, 'd_out_fc': 1}
_DROPOUTS = ('rnn_dropout', 'attn_dropout', 'out_dropout')
_FLAGS = ('rnn_bi', 'pos_encoding')
_RNN_TYPES = ('gru', 'lstm')


def model_fields(model_cfg, n_targets: int) -> tuple:
  """(model name, keyword arguments) of `config.model`, validated: one line per bad field.

  Fields that belong only to the other model are ignored, so a config can switch `name` without
  deleting fields; fields no model knows are typos and rejected. Missing fields take the module's
  defaults.
  """
  from muse_jax import models  # noqa: PLC0415  (flax: only when needed)

  cfg = dict(model_cfg)
  name = cfg.pop('name', None)
  if name not in models.MODELS:
    raise MuseError(f'config.model.name={name!r} is unknown; use one of {sorted(models.MODELS)}')
  fields = {n: models.config_fields(c) for n, c in models.MODELS.items()}
  known = set().union(*fields.values()) - {'n_targets'}
  unknown = sorted(set(cfg) - known)
  if unknown:
    raise MuseError(f'config.model.{unknown[0]} is not a model field; known: {sorted(known)}')
  if isinstance(n_targets, bool) or not isinstance(n_targets, int) or n_targets < 1:
    raise MuseError(f'n_targets={n_targets!r} is invalid: need at least one target')
  cls = models.MODELS[name]
  kw = {f: cfg.get(f, cls.__dataclass_fields__[f].default) for f in fields[name]}
  kw['n_targets'] = n_targets

  def bad(field, why):
    return MuseError(f'config.model.{field}={kw[field]!r} is invalid: {why}')

  def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)

  for f, lo in _SIZES.items():
    if f in kw and not (isinstance(kw[f], int) and not isinstance(kw[f], bool) and kw[f] >= lo):
      raise bad(f, f'need an integer >= {lo}')
  for f in _DROPOUTS:
    if f in kw and not (is_num(kw[f]) and 0.0 <= kw[f] < 1.0):
      raise bad(f, 'need a rate in [0, 1)')
  for f in _FLAGS:
    if f in kw and not isinstance(kw[f], bool):
      raise bad(f, 'need True or False')
  if kw.get('rnn_type', 'lstm') not in _RNN_TYPES:
    raise bad('rnn_type', f'use one of {list(_RNN_TYPES)}')
  if kw.get('attn_n_layers') and kw['d_rnn'] % kw['n_heads']:
    raise MuseError(
      f'config.model.d_rnn={kw["d_rnn"]} is not divisible by config.model.n_heads={kw["n_heads"]}'
    )
  out_bias = (kw['out_bias'],) if is_num(kw['out_bias']) else kw['out_bias']
  if (
    not isinstance(out_bias, (list, tuple))
    or len(out_bias) not in (1, n_targets)
    or not all(map(is_num, out_bias))
  ):
    raise bad('out_bias', f'need 1 or {n_targets} (one per target) numbers')
  kw['out_bias'] = tuple(float(v) for v in out_bias)
  return name, kw
