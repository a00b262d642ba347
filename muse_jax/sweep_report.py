"""A sweep's results: its report, and its ensemble as a run's outputs.

- `write_report`: W/sweep.json, sweep.md and sweep.png from the plan and each group's
  results.json (shards merged are the whole sweep), the best member's run linked into W, and the
  ensemble of the best `config.sweep_ensemble` members scored from each group's
  member_predictions.npz (no model is run).
- `write_ensemble`: eval_seed 'sweep_ensemble' (`--mode=evaluate` or `--mode=predict` of W, or a
  sweep trained with it): that ensemble's predictions restored from the groups' checkpoints and
  written into W as any run's (predictions/, predictions.json, eval_results.json; predict/).

`python -m muse_jax.sweep_report W` writes the report by hand: each shard (--sweep_shard=I/N)
trains its share of the groups into the same workdir and the last to finish writes it itself;
this merges them after a shard was run again, or checks a sweep in progress (a group still
running is one error line naming it).
"""

import json
import os
import sys

from absl import logging
import jax
import ml_collections
import numpy as np

from muse_jax import cli
from muse_jax import config_util
from muse_jax import inference
from muse_jax import metrics
from muse_jax import modes
from muse_jax import outputs
from muse_jax import workdir as workdir_lib
from muse_jax.data import layout
from muse_jax.errors import MuseError

SWEEP_JSON, SWEEP_MD, SWEEP_PNG = 'sweep.json', 'sweep.md', 'sweep.png'
PLAN_JSON = 'sweep_plan.json'


def unfinished(workdir: str, record: dict) -> list:
  return [
    g['name']
    for g in record['groups']
    if not os.path.exists(os.path.join(workdir, 'groups', g['name'], 'results.json'))
  ]


def write_report(workdir: str) -> dict:
  """sweep.json, sweep.md and sweep.png of a sweep whose groups have all finished (from its plan
  and each group's results.json: shards merged are the whole sweep)."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  record = workdir_lib.read_json(os.path.join(workdir, PLAN_JSON))
  if record is None:
    raise MuseError(f'{workdir}: no {PLAN_JSON}; not the workdir of a sweep (--sweep)')
  missing = unfinished(workdir, record)
  if missing:
    raise MuseError(
      f'{workdir}: groups {", ".join(missing)} have not finished; run their '
      '--sweep_shard (the same command resumes), then merge'
    )
  results = {
    g['name']: workdir_lib.read_json(os.path.join(workdir, 'groups', g['name'], 'results.json'))
    for g in record['groups']
  }
  axes = [(a['field'], a['values']) for a in record['axes']]
  report = _report(axes, record['settings'], record['groups'], results, workdir)
  report['ensemble'] = _ensemble(
    workdir,
    report['rows'],
    record['ensemble'],
    record['bootstrap'],
    {g: r['targets'] for g, r in results.items()},
  )
  if jax.process_index() == 0:
    outputs.write_json(os.path.join(workdir, SWEEP_JSON), report)
    outputs.write_text(os.path.join(workdir, SWEEP_MD), markdown(report) + '\n')
    _plot(report, os.path.join(workdir, SWEEP_PNG))
    _link_best(workdir, report['best']['group'])
  return report


def _link_best(workdir: str, group: str) -> None:
  """Makes W itself read as the chosen member's run: every file of its group's workdir (whose
  written predictions are the chosen member's: it is that group's best) linked into W, so
  evaluate, predict (--config=configs/workdir.py:W), late fusion and Predictor take W as any
  run. Links of an earlier best are replaced; W's own files (eval_results.json of an evaluate
  of W, the sweep's reports) are left alone."""
  src = os.path.join('groups', group)
  for name in sorted(os.listdir(os.path.join(workdir, src))):
    if name == workdir_lib.LOCK_FILE:
      continue
    link = os.path.join(workdir, name)
    if os.path.islink(link):
      os.remove(link)
    elif os.path.exists(link):
      continue
    os.symlink(os.path.join(src, name), link)


def _ensemble(workdir: str, rows: list, k: int, boot, targets_of: dict) -> dict | None:
  """The mean of the best k members' predictions (by devel mean CCC, each at its best epoch),
  scored on devel and test: what the sweep bought beyond its single best member."""
  if k < 1:
    return None
  best = max(
    (i for i, r in enumerate(rows) if r['devel'] and np.isfinite(r['devel']['mean_ccc'])),
    key=lambda i: (rows[i]['devel']['mean_ccc'], -i),
    default=None,
  )
  if best is None:
    return None
  # Members whose predictions can be averaged: the same targets and videos as the best one's
  # (a sweep over targets or feature sets has groups that cannot).
  same = {g for g, t in targets_of.items() if t == targets_of[rows[best]['group']]}
  scored = [
    i
    for i, r in enumerate(rows)
    if r['devel'] and np.isfinite(r['devel']['mean_ccc']) and r['group'] in same
  ]
  top = sorted(scored, key=lambda i: (-rows[i]['devel']['mean_ccc'], i))[:k]
  loaded = {}
  for i in top:
    g = rows[i]['group']
    if g not in loaded:
      with np.load(os.path.join(workdir, 'groups', g, outputs.MEMBER_PREDICTIONS)) as z:
        loaded[g] = {name: z[name] for name in z.files}
  out = {'k': len(top), 'rows': top, 'members': [rows[i]['overrides'] for i in top]}
  targets = targets_of[rows[best]['group']]  # the runs' column order (results.json is sorted)
  first = loaded[rows[top[0]]['group']]
  for split in ('devel', 'test'):
    ids = [
      n.split('/')[1]
      for n in first
      if n.startswith(f'{split}/') and n.endswith('/pred') and all(n in z for z in loaded.values())
    ]
    if not ids:
      out[split] = None
      continue
    labels = [first[f'{split}/{v}/label'] for v in ids]
    preds = [
      np.mean(
        [
          loaded[rows[i]['group']][f'{split}/{v}/pred'][rows[i]['member']].astype(np.float64)
          for i in top
        ],
        axis=0,
      )
      for v in ids
    ]
    out[split] = metrics.partition_metrics(labels, preds, targets, int(boot[0]), int(boot[1]))
  return out


def _report(axes, settings, groups, results, workdir) -> dict:
  rows = []
  for g in groups:
    res = results[g['name']]
    for i, m in enumerate(g['members']):
      entry = res['seeds'][i]
      rows.append(
        {
          'group': g['name'],
          'member': i,
          'overrides': dict(m['setting'], seed=m['member']['seed']),
          'setting': m['setting'],
          'seed': entry['seed'],
          'best_epoch': entry['best_epoch'],
          'epochs_run': res['epochs_run'],
          'devel': entry['devel'],
        }
      )
  score = [r['devel']['mean_ccc'] if r['devel'] else -np.inf for r in rows]
  best_i = int(np.argmax(np.nan_to_num(score, nan=-np.inf)))
  best = rows[best_i]
  res = results[best['group']]
  chosen = res['seeds'][best['member']]
  per_setting = []
  for setting in settings:
    own = [r['devel']['mean_ccc'] for r in rows if r['setting'] == setting and r['devel']]
    per_setting.append(
      {
        'setting': setting,
        'seeds': len(own),
        'devel_ccc_mean': float(np.mean(own)) if own else None,
        'devel_ccc_std': float(np.std(own, ddof=1)) if len(own) > 1 else None,
      }
    )
  return {
    'axes': [{'field': f, 'values': v} for f, v in axes],
    'settings': len(settings),
    'members': len(rows),
    'groups': [
      {
        'name': g['name'],
        'shared': g['shared'],
        'members': len(g['members']),
        'workdir': os.path.join(workdir, 'groups', g['name']),
      }
      for g in groups
    ],
    'rows': rows,
    'best': {
      'row': best_i,
      'overrides': best['overrides'],
      'group': best['group'],
      'member': best['member'],
      'workdir': os.path.join(workdir, 'groups', best['group']),
      'devel': chosen['devel'],
      'test': chosen.get('test'),
      'written': res.get('best_member') == best['member'],
    },
    'per_setting': per_setting,
  }


def _fmt_ci(m: dict, key: str = 'mean_ccc') -> str:
  ci = m.get(f'{key}_ci95') if m else None
  return f' [{ci[0]:.2f}, {ci[1]:.2f}]' if ci and ci[0] is not None else ''


def markdown(r: dict) -> str:
  fields = [a['field'] for a in r['axes']] or sorted(
    {k for row in r['rows'] for k in row['setting']}
  )
  lines = [
    f'{r["members"]} members ({r["settings"]} settings) in {len(r["groups"])} group(s); '
    'devel mean CCC [95% interval, videos resampled]',
    '',
    '| group | ' + ' | '.join(fields) + ' | seed | best epoch | devel mean CCC |',
    '|---|' + '---|' * len(fields) + '---|---|---|',
  ]
  for i, row in enumerate(r['rows']):
    mark = ' **best**' if i == r['best']['row'] else ''
    dev = f'{row["devel"]["mean_ccc"]:.4f}{_fmt_ci(row["devel"])}' if row['devel'] else 'n/a'
    lines.append(
      f'| {row["group"]} | '
      + ' | '.join(str(row['setting'].get(f, '')) for f in fields)
      + f' | {row["seed"]} | {row["best_epoch"]} | {dev}{mark} |'
    )
  lines += ['', '| setting | seeds | devel mean CCC, mean ± std (sample) |', '|---|---|---|']
  for s in r['per_setting']:
    mean = f'{s["devel_ccc_mean"]:.4f}' if s['devel_ccc_mean'] is not None else 'n/a'
    std = f' ± {s["devel_ccc_std"]:.4f}' if s['devel_ccc_std'] is not None else ''
    lines.append(f'| {json.dumps(s["setting"])} | {s["seeds"]} | {mean}{std} |')
  b = r['best']
  test = f'{b["test"]["mean_ccc"]:.4f}{_fmt_ci(b["test"])}' if b.get('test') else 'n/a'
  lines += [
    '',
    f'Best by devel: {json.dumps(b["overrides"])}: devel {b["devel"]["mean_ccc"]:.4f}'
    f'{_fmt_ci(b["devel"])}, test {test} (test reported for the chosen member and the '
    f'ensemble only). Its run: {b["workdir"]}.',
  ]
  e = r.get('ensemble')
  if e and e.get('devel'):
    test = f'{e["test"]["mean_ccc"]:.4f}{_fmt_ci(e["test"])}' if e.get('test') else 'n/a'
    lines.append(
      f'Ensemble of the best {e["k"]} members by devel (rows '
      f'{", ".join(str(i + 1) for i in e["rows"])}): devel '
      f'{e["devel"]["mean_ccc"]:.4f}{_fmt_ci(e["devel"])}, test {test}.'
    )
  return '\n'.join(lines)


def _plot(r: dict, path: str) -> None:
  fields = [a['field'] for a in r['axes']]
  if not fields:
    return
  plt = outputs.pyplot()
  fig, axes = plt.subplots(1, len(fields), figsize=(4 * len(fields), 3.4), squeeze=False)
  for ax, f in zip(axes[0], fields):
    values = [a['values'] for a in r['axes'] if a['field'] == f][0]
    ranged = isinstance(values, dict)
    for row in r['rows']:
      if row['devel']:
        x = row['setting'][f] if ranged else values.index(row['setting'][f])
        ax.scatter(x, row['devel']['mean_ccc'], s=14, color='tab:blue')
    if ranged:
      ax.set_xscale('log' if values['scale'] == 'log' else 'linear')
    else:
      ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_xlabel(f)
    ax.set_ylabel('devel mean CCC')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _group_config(config, group: str, mode: str):
  """The config a group of the ensemble is read with: its own config.json, with what a run may
  change on evaluate (`workdir.RESUMABLE`) and the tree (checked as evaluate and predict check
  it) taken from `config`; its own best members, never the sweep's eval_seed."""
  saved = workdir_lib.saved_config(group)
  if saved is None:
    raise MuseError(f'{group}: no config.json; the sweep group did not finish training')
  c = ml_collections.ConfigDict(saved)
  for field in workdir_lib.RESUMABLE + ('data_root', 'task'):
    if field in config and field != 'eval_seed' and (field != 'data_dir' or config.get(field)):
      c[field] = config[field]
  c.eval_seed = 'best'
  return c


def write_ensemble(config, workdir: str, mode: str) -> dict:
  """The ensemble of the sweep's best k members (sweep.json) written into W as a run's outputs:
  `mode` 'evaluate': every partition's metrics in eval_results.json and the predictions in
  predictions/ (W's own folder, no longer the best member's link); 'predict': the predictions
  for every video of config.data_root in predict/ and predict.json. Each member is restored
  from its group's checkpoint and read with its group's own statistics; the mean is weighted by
  members, so it is the frame-wise mean of the k members' predictions."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  parts, ens = workdir_lib.sweep_ensemble_parts(workdir)
  predicting = mode == 'predict'
  got, specs = [], []
  with workdir_lib.held(workdir, mode):
    for group, members in parts:
      c = _group_config(config, group, mode)
      with workdir_lib.held(group, mode):
        if predicting:
          spec = modes.predict_spec(c, group)
          modes.check_predict(spec, group)
        else:
          spec = config_util.validate_config(c)
          modes.check_evaluate(c, group)
        got.append(
          modes.predictions_of(spec, group, () if predicting else ('train', 'devel'), members)
        )
        specs.append(spec)
    videos, k = got[0]['videos'], sum(len(g['picked']) for g in got)
    for g, (group, _) in zip(got[1:], parts[1:]):
      if any([v.id for v in g['videos'][s]] != [v.id for v in videos[s]] for s in layout.SPLITS):
        raise MuseError(
          f'{group}: reads other videos than {parts[0][0]}; its members cannot be '
          'averaged with theirs'
        )
    preds = {
      s: [
        (sum(len(g['picked']) * g['preds'][s][i].astype(np.float64) for g in got) / k).astype(
          np.float32
        )
        for i in range(len(videos[s]))
      ]
      for s in layout.SPLITS
    }
    spec = specs[0]
    name = f'the best {k} sweep members (rows {", ".join(str(i + 1) for i in ens["rows"])})'
    results = {
      'targets': list(spec.targets),
      'layout': spec.layout.kind,
      'task': spec.layout.task,
      'step_ms': got[0]['step_ms'],
      'eval_seed': 'sweep_ensemble',
      'seed': 'sweep_ensemble',
      'best_epoch': max(max(g['best_epochs']) for g in got),
      'ensemble': {
        'name': name,
        'k': k,
        'rows': ens['rows'],
        'members': ens['members'],
        'groups': [os.path.relpath(p, workdir) for p, _ in parts],
      },
    }
    for s in layout.SPLITS:
      inference.check_finite(preds[s], videos[s], s, name)
    if predicting:
      results.update(
        data_root=spec.data_root,
        predictions=os.path.join(workdir, 'predict'),
        videos={s: len(v) for s, v in videos.items()},
      )
    else:
      boot = inference.bootstrap_of(config)
      for s in layout.SPLITS:
        labelled = [i for i, v in enumerate(videos[s]) if v.has_labels]
        results[s] = (
          metrics.partition_metrics(
            [videos[s][i].y for i in labelled],
            [preds[s][i] for i in labelled],
            list(spec.targets),
            *boot,
          )
          if labelled
          else None
        )
    if jax.process_index() == 0:
      _write_outputs(workdir, mode, results, videos, preds, spec, name)
  logging.info('%s: predictions of %s written', workdir, name)
  return results


def _write_outputs(workdir, mode, results, videos, preds, spec, name) -> None:
  """W's own files (a link to the best member's is replaced: its group keeps its own)."""
  names = (
    ('predict', 'predict.json')
    if mode == 'predict'
    else ('predictions', 'predictions.json', 'eval_results.json')
  )
  for n in names:
    if os.path.islink(os.path.join(workdir, n)):
      os.remove(os.path.join(workdir, n))
  folder = os.path.join(workdir, names[0])
  for s in layout.SPLITS:
    outputs.write_predictions(
      folder, videos[s], preds[s], list(spec.targets), spec.layout.label_columns
    )
  if mode == 'predict':
    outputs.write_json(os.path.join(workdir, 'predict.json'), results)
    return
  outputs.write_json(os.path.join(workdir, 'eval_results.json'), results)
  outputs.write_json(
    os.path.join(workdir, 'predictions.json'),
    {
      'written_by': 'evaluate',
      'what': name,
      'eval_seed': 'sweep_ensemble',
      'seed': 'sweep_ensemble',
      'best_epoch': results['best_epoch'],
      'results': 'eval_results.json',
    },
  )


def main(argv=None) -> int:
  p = cli.ArgumentParser(prog='python -m muse_jax.sweep_report', description=__doc__.split('\n')[0])
  p.add_argument('workdir', type=cli.path, help='the --workdir of the sweep')
  args = p.parse_args(argv)
  rc, report = cli.call(write_report, args.workdir)
  if rc:
    return rc
  print(markdown(report))
  return 0


if __name__ == '__main__':
  sys.exit(main())
