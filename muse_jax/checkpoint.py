"""Checkpoints: one orbax CheckpointManager per workdir, two epochs kept.

A checkpoint holds the training state, each seed's best-so-far parameters and all host counters
(`meta`: epoch, schedules, skipped steps, the untrained devel score), so a killed job resumes
exactly and evaluate/predict restore the best parameters from the same place. Its `signature`
(model config, inputs, dims, targets, seeds, grid step) is checked on every restore.

One format: a meta without a field this version writes, or with one it does not know, is another
version's and refused by name (`_check_format`), never given a default: muse_jax 0.1.0 is its
first release, so no older format is read.
"""

import dataclasses
import json
import os

from absl import logging
import jax
import orbax.checkpoint as ocp

from muse_jax import schedule
from muse_jax.errors import MuseError

# What train.py writes as a checkpoint's meta, each epoch.
META_FIELDS = ('epoch', 'skipped_steps', 'signature', 'trackers', 'initial_devel')


def checkpoint_manager(workdir: str, read_only: bool = False):
  path = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  # cleanup_tmp_directories: a save cut by a kill leaves `<step>.orbax-checkpoint-tmp`; never
  # read as a checkpoint, it is removed when the next run opens the workdir. Two epochs are kept:
  # a latest one damaged on disk (truncated, a full disk) falls back to the one before (restore).
  options = ocp.CheckpointManagerOptions(
    max_to_keep=2,
    read_only=read_only,
    enable_async_checkpointing=False,
    create=not read_only,
    cleanup_tmp_directories=not read_only,
  )
  return ocp.CheckpointManager(path, options=options, item_names=('state', 'meta'))


def model_signature(spec, dims, step_ms: int) -> dict:
  """What a checkpoint's arrays depend on; restore refuses a workdir written for another one.
  `step_ms`: the label grid the model learnt on (its windows are in frames of that step)."""
  return {
    'model': json.loads(spec.config.model.to_json()),
    'inputs': list(spec.inputs),
    'dims': list(dims),
    'targets': list(spec.targets),
    'seeds': list(spec.seeds),
    'step_ms': int(step_ms),
  }


def _check_format(meta, signature, workdir) -> None:
  """Refuses the meta of another version of muse_jax, by the first field it lacks or does not
  know (in the meta, its signature, its trackers): read with defaults, it would resume or score
  a model under settings it never had."""
  tracker = [f.name for f in dataclasses.fields(schedule.SeedTracker)]
  parts = [('', meta, META_FIELDS)]
  if isinstance(meta.get('signature'), dict):
    parts.append(('signature.', meta['signature'], list(signature)))
  if isinstance(meta.get('trackers'), list):
    parts += [('trackers.', t, tracker) for t in meta['trackers'] if isinstance(t, dict)]
  for prefix, saved, fields in parts:
    why = [f'no {prefix}{k}' for k in fields if k not in saved] + [
      f'unknown field {prefix}{k}' for k in saved if k not in fields
    ]
    if why:
      raise MuseError(
        f'{workdir}: its checkpoint was written by another version of muse_jax '
        f'({why[0]}); retrain in a new --workdir'
      )


def _check_signature(saved, signature, workdir) -> None:
  diff = [k for k in signature if signature[k] != saved[k]]
  if diff:
    k = 'step_ms' if 'step_ms' in diff else diff[0]
    if k == 'step_ms':
      raise MuseError(
        f'{workdir}: the model learnt on a {saved[k]} ms grid, but this '
        f'data is on a {signature[k]} ms grid; its windows and dynamics are in '
        'frames, so give it data on its own grid (or train one on this grid)'
      )
    what = f'{k} ({saved[k]} in the checkpoint, {signature[k]} now)'
    if k == 'model':  # name the fields that differ, not two whole dicts
      old, new = saved[k], signature[k]
      what = (
        'model config ('
        + ', '.join(
          f'model.{f} {old.get(f)} in the checkpoint, {new.get(f)} now'
          for f in sorted(set(old) | set(new))
          if old.get(f) != new.get(f)
        )
        + ')'
      )
    raise MuseError(
      f'{workdir}: its checkpoint was written for a different {what}; use another '
      'workdir or the config it was trained with'
    )


def restore(mngr, state, signature, workdir):
  """(state, meta) of the newest readable epoch. A newest epoch that cannot be read (cut short
  on disk) is reported and the one before is used; only once an older one has been read are the
  newer ones deleted (in a writable workdir: training redoes them). If none can be read, nothing
  is deleted: the failure may not be the checkpoint's (memory, permissions, a network mount)."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  steps = sorted(mngr.all_steps(), reverse=True)
  failed = []
  for i, step in enumerate(steps):
    try:
      meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
      _check_format(meta, signature, workdir)
      _check_signature(meta['signature'], signature, workdir)
      restored = mngr.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
      )['state']
    except MuseError:
      raise
    except Exception as e:  # noqa: BLE001
      failed.append((step, e))
      older = f'falling back to epoch {steps[i + 1]}' if i + 1 < len(steps) else 'no older epoch'
      text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
      logging.warning(
        '%s: checkpoint of epoch %d is unreadable (%s: %s); %s',
        mngr.directory,
        step,
        type(e).__name__,
        text,
        older,
      )
      continue
    for bad, _ in failed:
      try:
        mngr.delete(bad)
      except Exception:  # noqa: BLE001
        pass  # a read-only manager (evaluate, predict) leaves the workdir as it is
    return restored, meta
  step, e = failed[0]
  raise MuseError(
    f'{mngr.directory}: no checkpoint could be read (epoch {step}: '
    f'{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ""}); '
    'if the files are damaged, train again in a new --workdir'
  ) from None


def save(mngr, epoch: int, state, meta: dict) -> None:
  try:
    mngr.save(
      epoch,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )
  except OSError as e:
    if not e.filename:  # a failed write(2) names no file: name the checkpoint (errors.disk_error)
      e.filename = os.path.join(str(mngr.directory), f'{epoch}.orbax-checkpoint-tmp')
    raise


def open_trained(workdir: str):
  """The read-only manager of a trained workdir (evaluate, predict); one line if there is none."""
  if os.path.isdir(os.path.join(workdir, 'checkpoints')):
    mngr = checkpoint_manager(workdir, read_only=True)
    if mngr.latest_step() is not None:
      return mngr
  raise MuseError(f'{workdir}: no checkpoint found; train first (--mode=train)')
