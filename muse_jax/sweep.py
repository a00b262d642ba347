"""Sweeps in one program: many settings trained side by side, chosen on devel.

  python -m muse_jax.main --config=configs/valence.py --workdir=W \
      --sweep=learning_rate=0.002,0.005 --sweep=model.out_dropout=0,0.3 --config.num_seeds=5

trains every member of the product of the axes times the seeds (here 2 x 2 x 5 = 20). A config
file may instead define `get_sweep()`, a list of override dicts (configs/sweep_valence.py), and
`--sweep_search=random:N` draws N settings from the axes (ranges lo:hi, log-uniform for rates;
lists a,b,c), seeded by config.seed; `--sweep_search=optuna:N[:B]` lets Optuna's TPE propose them
B at a time, each batch trained as one sweep before the next is proposed (`_optuna`).

Why it is cheap: muse_jax trains its seeds as one compiled step (a leading seed axis, each seed
with its own parameters, optimiser state, learning rate, plateau schedule, early stop and best
parameters). A member is a seed with its own settings: members that differ only in fields that
keep every shape and the data (`config_util.MEMBER_FIELDS`: seed, learning_rate,
min_learning_rate, plateau_patience, plateau_factor, early_stopping_patience, model.rnn_dropout,
model.out_dropout, model.attn_dropout, loss_weights: rates and weights are traced into the
step) share that step
(`config.members`; they share the batch order, config.data_seed, default the config's seed:
a member with a swept seed equals a separate run with that seed and that data_seed). Other
fields (feature sets, normalisation, windows, batch, targets, model sizes, the loss) form groups
that run one after another in this process,
each an
ordinary run compiled once: `W/groups/g<i>/`, resumable like any run (kill -9 and rerun the same
command). Every member's setting is validated before any compute.

What it writes: `W/sweep.json` and `W/sweep.md` (one row per member: its overrides, seed, best
epoch and devel metrics with their intervals; the axes; the best member by mean devel CCC, ties
by order, with its test metrics, and its group's workdir, a normal run of it, whose files are
also linked into W: evaluate, predict, late fusion and Predictor take W (or that group) as any
run; per setting the seed mean +- std), and `W/sweep.png`
(devel CCC against each swept field, seeds as points), and the ensemble of the best
`config.sweep_ensemble` (5) members by devel: the mean of their predictions, each at its best
epoch (from each group's member_predictions.npz). Test metrics are reported for the chosen member
and that ensemble only: choosing on test is what a sweep must not invite.

On several devices, `config.member_devices=M` shards the member axis over M of them (a `member`
x `data` mesh, muse_jax.sharding); by default members are replicated, data parallel over all.
On a cluster of separate jobs, `--sweep_shard=I/N` trains the groups k with k % N == I into the
same workdir; every shard writes the same `W/sweep_plan.json` (a different sweep in that workdir
is refused), and the one that finds every group finished writes the report
(`python -m muse_jax.sweep_report W` does it by hand).
"""

import itertools
import json
import os

from absl import logging
import jax
import numpy as np

from muse_jax import config_util
from muse_jax import outputs
from muse_jax import sweep_report
from muse_jax import train
from muse_jax import workdir as workdir_lib
from muse_jax.errors import MuseError
from muse_jax.sweep_report import PLAN_JSON

# Fields whose values hold commas: their --sweep values are separated by ';'.
SEMICOLON = ('feature_sets', 'targets', 'normalize', 'loss_weights')
# Fields that are the sweep's own business, never an axis.
NOT_AXES = ('members', 'num_seeds', 'data_root', 'data_dir', 'task', 'eval_seed', 'fusion_runs')


def _field(config, name: str):
  """(parent ConfigDict, leaf name, current value) of a dotted field; one line if unknown."""
  node, parts = config, name.split('.')
  for i, part in enumerate(parts):
    keys = list(node.keys()) if hasattr(node, 'keys') else []
    if part not in keys:
      where = '.'.join(parts[:i]) or 'the config'
      raise MuseError(f'--sweep {name}: unknown config field ({where} has: {", ".join(keys)})')
    if i < len(parts) - 1:
      node = node[part]
  return node, parts[-1], node[parts[-1]]


def _typed(name: str, text, current):
  """A value of --sweep (text) or get_sweep() in the type of the field it sets."""
  if not isinstance(text, str) or isinstance(current, (tuple, list)):
    value = text
  elif isinstance(current, bool):
    if text.strip().lower() not in ('true', 'false', '1', '0'):
      raise MuseError(f'--sweep {name}={text}: not a boolean (true/false)')
    value = text.strip().lower() in ('true', '1')
  elif isinstance(current, int):
    try:
      value = int(text)
    except ValueError:
      raise MuseError(f'--sweep {name}={text}: not an integer, as {name}={current!r}') from None
  elif isinstance(current, float):
    try:
      value = float(text)
    except ValueError:
      raise MuseError(f'--sweep {name}={text}: not a number, as {name}={current!r}') from None
  else:
    value = text
  if (
    isinstance(current, bool) != isinstance(value, bool)
    or (
      isinstance(current, (int, float))
      and not isinstance(current, bool)
      and not isinstance(value, (int, float))
    )
    or (
      isinstance(current, int)
      and not isinstance(current, bool)
      and isinstance(value, float)
      and not value.is_integer()
    )
  ):
    raise MuseError(f'sweep {name}={value!r}: wrong type for {name}={current!r}')
  if isinstance(current, float) and isinstance(value, int):
    value = float(value)
  if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float):
    value = int(value)
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)  # as JSON read it back
  if isinstance(current, (tuple, list)) and isinstance(value, str):
    value = tuple(config_util.parse_list(value))  # 'egemaps,fasttext' -> ('egemaps', 'fasttext')
  return value


def axes_of(config, specs) -> list:
  """[(field, [values])] of --sweep=field=v1,v2 flags (repeatable), values typed by the field."""
  axes = []
  for spec in specs:
    name, sep, values = spec.partition('=')
    name = name.strip()
    if not sep or not name or not values.strip():
      raise MuseError(
        f'--sweep {spec!r}: write --sweep=field=value1,value2 (e.g. '
        '--sweep=learning_rate=0.002,0.005)'
      )
    if name in NOT_AXES:
      raise MuseError(
        f'--sweep {name}: not a sweep axis ({", ".join(NOT_AXES)} are set per run; '
        'seeds: --config.num_seeds)'
      )
    if name in (a[0] for a in axes):
      raise MuseError(f'--sweep {name} is given twice; list its values once, comma separated')
    _, _, current = _field(config, name)
    if ':' in values and isinstance(current, (int, float)) and not isinstance(current, bool):
      axes.append((name, _range(name, values, current)))
      continue
    if isinstance(current, (tuple, list)) or name in SEMICOLON:
      parts = values.split(';')  # values holding commas: 'egemaps,fasttext;vggface'
    else:
      parts = values.split(',')
    axes.append(
      (
        name,
        [_typed(name, v.strip(), current) for v in parts if v.strip() or name == 'loss_weights'],
      )
    )  # '' = equal weights
  return axes


def _range(name: str, text: str, current) -> dict:
  """lo:hi (or lo:hi:log / lo:hi:lin) of a numeric field, for --sweep_search=random:N: rates
  (fields ending in learning_rate) are drawn log-uniform, other fields uniform."""
  parts = text.split(':')
  scale = (
    parts[2].strip() if len(parts) == 3 else ('log' if name.endswith('learning_rate') else 'lin')
  )
  try:
    lo, hi = (_typed(name, p.strip(), current) for p in parts[:2])
  except MuseError:
    lo = hi = None
  if (
    len(parts) not in (2, 3)
    or lo is None
    or scale not in ('log', 'lin')
    or not lo < hi
    or (scale == 'log' and lo <= 0)
  ):
    raise MuseError(
      f'--sweep {name}={text}: a range is lo:hi with lo < hi (lo:hi:log for a '
      'log-uniform draw, lo > 0), e.g. --sweep=learning_rate=1e-4:1e-2'
    )
  return {'range': [lo, hi], 'scale': scale, 'integer': isinstance(current, int)}


def search_of(text: str) -> int:
  """--sweep_search=random:N -> N (0 without a random search)."""
  if not text or text.startswith('optuna:'):
    return 0
  kind, _, n = text.partition(':')
  if kind != 'random' or not n.isdigit() or int(n) < 1:
    raise MuseError(
      f'--sweep_search={text}: write random:N or optuna:N[:B] (N settings drawn '
      'from the --sweep axes: ranges lo:hi, lists a,b,c)'
    )
  return int(n)


def optuna_of(text: str) -> tuple | None:
  """--sweep_search=optuna:N[:B] -> (N trials, B per batch; default 8), else None."""
  if not text or not text.startswith('optuna:'):
    return None
  parts = text.split(':')[1:]
  if not 1 <= len(parts) <= 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
    raise MuseError(
      f'--sweep_search={text}: write optuna:N or optuna:N:B (N trials, proposed B '
      'at a time, each batch trained as one sweep)'
    )
  return int(parts[0]), int(parts[1]) if len(parts) == 2 else 8


def _draw(axes, n: int, seed: int) -> list:
  """n settings drawn from the axes (ranges and lists), seeded: the same command, the same
  settings, so a rerun resumes the same sweep."""
  rng = np.random.default_rng([seed, 0x5EED])
  out = []
  for _ in range(n):
    setting = {}
    for name, values in axes:
      if isinstance(values, dict):
        lo, hi = values['range']
        u = rng.uniform()
        v = (
          np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))
          if values['scale'] == 'log'
          else lo + u * (hi - lo)
        )
        setting[name] = int(round(v)) if values['integer'] else float(f'{v:.4g}')
      else:
        setting[name] = values[int(rng.integers(len(values)))]
    out.append(setting)
  return out


def settings_of(config, axes, sweep_list=None, search: int = 0) -> list:
  """The settings ({field: value}) of the product of the axes, of `search` random draws from
  them, or of a get_sweep() list."""
  if search:
    return _draw(axes, search, config.seed)
  ranged = [a[0] for a in axes if isinstance(a[1], dict)]
  if ranged and sweep_list is None:
    raise MuseError(
      f'--sweep {ranged[0]}: a range (lo:hi) needs --sweep_search=random:N (or '
      'optuna:N); a grid lists values: --sweep=field=a,b,c'
    )
  if sweep_list is not None:
    out = []
    for i, s in enumerate(sweep_list):
      if not isinstance(s, dict):
        raise MuseError(f'get_sweep()[{i}] is {type(s).__name__}, not a dict of overrides')
      bad = [k for k in s if k in NOT_AXES]
      if bad:
        raise MuseError(
          f'get_sweep()[{i}] sets {bad[0]}: not a sweep axis ({", ".join(NOT_AXES)}'
          ' are set per run; seeds: --config.num_seeds)'
        )
      out.append({k: _typed(k, v, _field(config, k)[2]) for k, v in s.items()})
    return out
  return [
    dict(zip([a[0] for a in axes], combo)) for combo in itertools.product(*[a[1] for a in axes])
  ]


def _distinct(settings: list) -> list:
  """Settings in order, each once: a repeated one (drawn twice, listed twice) would train the
  same members again and count them twice in its seed mean."""
  out, seen = [], set()
  for s in settings:
    key = json.dumps(s, sort_keys=True)
    if key in seen:
      logging.info('sweep: setting %s is given more than once; trained once', key)
      continue
    seen.add(key)
    out.append(s)
  return out


def plan(config, settings: list) -> list:
  """Groups: [{'name', 'shared' (overrides of every member), 'members' ([{setting, seed}]),
  'config'}], validated. Settings are grouped by their fields outside MEMBER_FIELDS; each
  setting trains num_seeds members (seed, seed+1, ...; a swept seed starts its own run)."""
  settings = _distinct(settings)
  seeds = sorted({s['seed'] for s in settings if 'seed' in s})
  if config.num_seeds > 1 and any(b - a < config.num_seeds for a, b in zip(seeds, seeds[1:])):
    raise MuseError(
      f'--sweep seed={",".join(map(str, seeds))} with num_seeds={config.num_seeds}: '
      'each swept seed starts its own seeds seed, seed+1, ...: these overlap (the '
      f'same member twice); space them by at least {config.num_seeds}'
    )
  groups = {}
  for setting in settings:
    shared = {k: v for k, v in setting.items() if k not in config_util.MEMBER_FIELDS}
    key = json.dumps(shared, sort_keys=True)
    groups.setdefault(key, {'shared': shared, 'settings': []})['settings'].append(setting)
  out = []
  for i, g in enumerate(groups.values()):
    base = config_util.with_overrides(config, g['shared'])
    members = []
    for setting in g['settings']:
      own = {k: v for k, v in setting.items() if k in config_util.MEMBER_FIELDS}
      first = own.get('seed', base.seed)
      for j in range(base.num_seeds):
        members.append({'setting': setting, 'member': dict(own, seed=first + j)})
    c = config_util.with_overrides(base, {})
    c.num_seeds = len(members)
    if _ensemble_written(c):  # each group writes its best member; W, the sweep's ensemble
      c.eval_seed = 'best'
    c.members = json.dumps([m['member'] for m in members])
    try:
      config_util.validate_config(c)
    except MuseError as e:
      raise MuseError(f'sweep group {g["shared"] or "(base config)"}: {e}') from None
    out.append({'name': f'g{i}', 'shared': g['shared'], 'members': members, 'config': c})
  return out


def parse_shard(text: str) -> tuple:
  """--sweep_shard=I/N -> (I, N): this process trains the groups k with k % N == I."""
  if not text:
    return 0, 1
  i, sep, n = text.partition('/')
  try:
    i, n = int(i), int(n)
  except ValueError:
    i = n = -1
  if not sep or n < 1 or not 0 <= i < n:
    raise MuseError(
      f'--sweep_shard={text}: write I/N with 0 <= I < N (e.g. 0/4 for the first of 4 processes)'
    )
  return i, n


def _plan_record(axes, settings, groups, config) -> dict:
  """What every shard must agree on, JSON as written (tuples as lists)."""
  return json.loads(
    json.dumps(
      {
        'axes': [{'field': f, 'values': v} for f, v in axes],
        'settings': settings,
        'ensemble': config.get('sweep_ensemble', 5),
        'bootstrap': [config.get('bootstrap_samples', 1000), config.get('bootstrap_seed', 0)],
        'groups': [
          {'name': g['name'], 'shared': g['shared'], 'members': g['members']} for g in groups
        ],
      }
    )
  )


def run(
  config, workdir: str, axes: list, sweep_list=None, shard: str = '', search: str = ''
) -> dict | None:
  """Trains this process's share of the groups (all of them without `shard`), resuming what is
  done; once every group has finished, writes sweep.json, sweep.md and sweep.png and returns the
  report (None while other shards' groups are still running)."""
  index, count = parse_shard(shard)
  tpe = optuna_of(search)
  if tpe:
    if count > 1:
      raise MuseError(
        '--sweep_shard with --sweep_search=optuna: its batches are proposed one '
        'after the other from the results so far; run it as one process (a study '
        'shared by machines: config.sweep_storage)'
      )
    return _optuna(config, workdir, axes, *tpe)
  settings = settings_of(config, axes, sweep_list, search_of(search))
  if not settings:
    raise MuseError('the sweep has no setting (an axis without values?)')
  groups = plan(config, settings)  # every refusal before any compute
  record = _plan_record(axes, settings, groups, config)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, PLAN_JSON)
  saved = workdir_lib.read_json(path)
  changeable = ('ensemble', 'bootstrap')  # what a rerun may change: the report's, not the runs'
  if saved is not None and {k: v for k, v in saved.items() if k not in changeable} != {
    k: v for k, v in record.items() if k not in changeable
  }:
    raise MuseError(
      f'{workdir}: holds another sweep ({PLAN_JSON} differs: other axes, settings '
      'or seeds); rerun that sweep, or use a new --workdir'
    )
  writer = jax.process_index() == 0  # multi-host: process 0 writes the sweep's files
  if writer and saved != record:
    outputs.write_json(path, record)
  mine = [g for k, g in enumerate(groups) if k % count == index]
  logging.info(
    'sweep: %d setting(s) x %d seed(s) = %d members in %d group(s) (one compiled '
    'program each)%s: %s',
    len(settings),
    config.num_seeds,
    sum(len(g['members']) for g in groups),
    len(groups),
    f'; shard {index}/{count} trains {len(mine)}' if count > 1 else '',
    '; '.join(f'{g["name"]} {g["shared"] or "base"}: {len(g["members"])} members' for g in mine),
  )
  for g in mine:
    gw = os.path.join(workdir, 'groups', g['name'])
    logging.info('sweep group %s (%s): %s', g['name'], g['shared'] or 'base config', gw)
    train.train_and_evaluate(g['config'], gw)
  if not writer:
    return None
  missing = sweep_report.unfinished(workdir, record)
  if missing:
    logging.info(
      'sweep: shard %d/%d done; groups %s still to finish (their shards); the last '
      'shard to finish writes the report, or: python -m muse_jax.sweep_report %s',
      index,
      count,
      ', '.join(missing),
      workdir,
    )
    return None
  return _finish(config, workdir)


def _suggest(trial, axes) -> dict:
  """One setting from an Optuna trial: ranges as floats (log for rates) or ints, lists as
  categories (by index where values are not plain scalars, e.g. feature-set tuples)."""
  out = {}
  for name, values in axes:
    if isinstance(values, dict):
      lo, hi = values['range']
      out[name] = (
        trial.suggest_int(name, lo, hi)
        if values['integer']
        else trial.suggest_float(name, lo, hi, log=values['scale'] == 'log')
      )
    elif all(isinstance(v, (bool, int, float, str)) for v in values):
      out[name] = trial.suggest_categorical(name, list(values))
    else:
      out[name] = values[trial.suggest_categorical(f'{name}#', list(range(len(values))))]
  return out


def _optuna(config, workdir: str, axes: list, n_trials: int, batch: int) -> dict | None:
  """TPE proposes `batch` settings at a time; each batch trains as one sweep (one compiled step
  for the members of a group), its groups `W/groups/b<k>_g<i>`; each trial is told its setting's
  mean devel CCC over seeds, then the next batch is proposed. The study lives in
  config.sweep_storage (default sqlite:///W/optuna.db; any URL Optuna takes, for a study
  several machines share). A rerun resumes: proposed batches are read back from the plan."""
  try:
    import optuna  # noqa: PLC0415  (an optional extra)
  except ModuleNotFoundError:
    raise MuseError(
      '--sweep_search=optuna needs Optuna: pip install -e .[search] (or pip install optuna)'
    ) from None
  if not axes:
    raise MuseError('--sweep_search=optuna needs --sweep axes (ranges lo:hi, lists a,b,c)')
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  storage = config.get('sweep_storage') or f'sqlite:///{os.path.join(workdir, "optuna.db")}'
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.create_study(
    study_name='muse_jax_sweep',
    storage=storage,
    load_if_exists=True,
    direction='maximize',
    sampler=optuna.samplers.TPESampler(seed=config.seed),
  )
  path = os.path.join(workdir, PLAN_JSON)
  saved = workdir_lib.read_json(path) or {}
  axes_record = json.loads(json.dumps([{'field': f, 'values': v} for f, v in axes]))
  if saved and (saved.get('axes') != axes_record or saved.get('search') != [n_trials, batch]):
    raise MuseError(
      f'{workdir}: holds another sweep ({PLAN_JSON}: other axes or search); rerun '
      'that sweep, or use a new --workdir'
    )
  batches = saved.get('batches', [])
  settings, groups = [], []
  for k in range(-(-n_trials // batch)):
    if k < len(batches):  # proposed before (a rerun): the same settings, already told or not
      numbers, proposed = batches[k]['trials'], batches[k]['settings']
    else:
      trials = [study.ask() for _ in range(min(batch, n_trials - k * batch))]
      numbers, proposed = [t.number for t in trials], [_suggest(t, axes) for t in trials]
      batches.append(json.loads(json.dumps({'trials': numbers, 'settings': proposed})))
      proposed = batches[-1]['settings']
    mine = plan(config, [settings_of(config, axes, [s])[0] for s in proposed])
    for g in mine:
      g['name'] = f'b{k}_{g["name"]}'
    settings += proposed
    groups += mine
    record = dict(
      _plan_record(axes, settings, groups, config), search=[n_trials, batch], batches=batches
    )
    if jax.process_index() == 0:
      outputs.write_json(path, record)
    scored = []  # (setting key, devel mean CCC) of every member of this batch
    for g in mine:
      gw = os.path.join(workdir, 'groups', g['name'])
      logging.info('sweep batch %d, group %s (%s): %s', k, g['name'], g['shared'] or 'base', gw)
      res = train.train_and_evaluate(g['config'], gw)
      scored += [
        (
          json.dumps(m['setting'], sort_keys=True, default=list),
          s['devel']['mean_ccc'] if s.get('devel') else float('nan'),
        )
        for s, m in zip(res['seeds'], g['members'])
      ]
    for number, setting in zip(numbers, proposed):
      key = json.dumps(settings_of(config, axes, [setting])[0], sort_keys=True, default=list)
      own = [v for s, v in scored if s == key]
      value = float(np.nanmean(own)) if own and np.isfinite(own).any() else None
      study.tell(
        number,
        value,
        state=None if value is not None else optuna.trial.TrialState.FAIL,
        skip_if_finished=True,
      )
  return _finish(config, workdir) if jax.process_index() == 0 else None


def command(config, workdir: str, mode: str, axes: list, sweep_list, shard: str, search: str):
  """What `python -m muse_jax.main` prints for a sweep (--sweep, get_sweep()) or for a sweep's
  ensemble (evaluate or predict with eval_seed 'sweep_ensemble'); None for any other run."""
  if (search and not axes) or (shard and not axes and sweep_list is None):
    raise MuseError(
      '--sweep_search and --sweep_shard need a sweep: --sweep=field=values '
      '(a search: ranges lo:hi or lists a,b,c)'
      + ('' if search else ', or get_sweep() in the config file')
    )
  if not axes and sweep_list is None:
    if _ensemble_written(config) and mode != 'train':
      return outputs.summary(sweep_report.write_ensemble(config, workdir, mode))
    return None
  if mode != 'train':
    raise MuseError(
      f'--mode={mode} of a sweep: evaluate or predict the chosen run (or its '
      'ensemble, --config.eval_seed=sweep_ensemble) with the config it was '
      'trained with: --config=configs/workdir.py:W'
    )
  report = run(config, workdir, axes_of(config, axes), sweep_list, shard, search)
  if report is None:
    return f'shard {shard} done; the report follows when every shard has finished'
  return sweep_report.markdown(report)


def _finish(config, workdir: str) -> dict:
  """The report; with eval_seed 'sweep_ensemble', W's predictions become the ensemble's."""
  report = sweep_report.write_report(workdir)
  if _ensemble_written(config):
    sweep_report.write_ensemble(config, workdir, 'evaluate')
  return report


def _ensemble_written(config) -> bool:
  return str(config.get('eval_seed', '')).strip().lower() == 'sweep_ensemble'
