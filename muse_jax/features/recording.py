"""A trained workdir's targets predicted on a new recording (raw audio, a transcript).

  python -m muse_jax.features predict --workdir W --wav F [--transcript T] [--model_dir DIR] \
      --out OUTDIR

Extracts the feature sets the model reads (egemaps, egemaps_lld from the audio; bert from the
transcript) on the model's own grid (its training data's step), runs `predictor.Predictor`
(which applies the workdir's train-partition normalisation) and writes `OUTDIR/<target>.csv`
(`timestamp,value`) and `OUTDIR/prediction.png`. The extraction must match what the model was
trained on: a model trained on the challenge's own egemaps files sees features from a different
extractor setting, so train on sets made with `python -m muse_jax.features` for the most
faithful predictions.
"""

import os

import numpy as np

from muse_jax import outputs
from muse_jax import predictor as predictor_lib
from muse_jax.data.layout import SEGMENT_ID
from muse_jax.errors import MuseError

AUDIO_SETS = ('egemaps', 'egemaps_lld')
TEXT_SETS = ('bert',)


def extract_inputs(
  inputs: list,
  dims: list,
  wav: str,
  transcript: str | None = None,
  model_dir: str | None = None,
  win_s: float = 3.0,
  segment_id: int = 1,
  step_ms: int = 250,
) -> tuple:
  """Raw joined features [T, sum(dims)] in the model's column order, and their timestamps, on
  the model's grid (`step_ms`, `Predictor.step_ms`)."""
  from muse_jax.features import audio  # noqa: PLC0415  (pandas, openSMILE: only when extracting)
  from muse_jax.features import text  # noqa: PLC0415  (pandas, openSMILE: only when extracting)
  from muse_jax.features import writer  # noqa: PLC0415  (pandas, openSMILE: only when extracting)

  sets = [n for n in inputs if n != SEGMENT_ID]
  unknown = [n for n in sets if n not in AUDIO_SETS + TEXT_SETS]
  if unknown:
    raise MuseError(
      f'the model reads {unknown}, which cannot be extracted from a recording here '
      f'(audio gives {list(AUDIO_SETS)}, a transcript gives {list(TEXT_SETS)}); '
      'train a model on those sets to predict on raw recordings'
    )
  encoder = None
  if any(n in TEXT_SETS for n in sets):
    if not transcript:
      raise MuseError(
        'the model reads text features (bert): pass --transcript T (a CSV with '
        'start_ms,end_ms,text) and --model_dir DIR (the encoder it was trained with)'
      )
    from muse_jax.features import bert  # noqa: PLC0415  (JAX: only for text sets)

    encoder = bert.Encoder(model_dir)  # checked first: a wrong encoder fails before the audio work
    for name, dim in zip(inputs, dims):
      if name in TEXT_SETS and encoder.dim != dim:
        raise MuseError(
          f'the model reads {name} with {dim} columns but the encoder in '
          f'{encoder.model_dir} gives {encoder.dim}; pass the --model_dir it was '
          'trained with'
        )
  x = audio.load_audio(wav)
  n = writer.num_frames(audio.duration_ms(x), step_ms)
  parts = []
  for name, dim in zip(inputs, dims):
    if name == SEGMENT_ID:
      values = np.full((n, 1), segment_id, np.float64)
    elif name == 'egemaps':
      values = audio.functionals(x, win_s, step_ms)[1]
    elif name == 'egemaps_lld':
      values = audio.lld_4hz(x, step_ms)[1]
    else:
      values = text.text_features(transcript, encoder, n, step_ms)
    if values.shape[1] != dim:
      raise MuseError(
        f'the model reads {name} with {dim} columns but extraction gives '
        f'{values.shape[1]}; it was trained on a different version of this set'
      )
    parts.append(np.asarray(values, np.float64))
  return np.concatenate(parts, axis=1), writer.grid(n, step_ms)


def write_outputs(
  out: str, timestamps: np.ndarray, preds: np.ndarray, targets: list, title: str
) -> dict:
  """OUTDIR/<target>.csv (timestamp,value) and OUTDIR/prediction.png; returns the paths."""
  import pandas as pd  # noqa: PLC0415  (features extra)

  plt = outputs.pyplot()
  os.makedirs(out, exist_ok=True)
  paths = {}
  for k, target in enumerate(targets):
    paths[target] = os.path.join(out, f'{target}.csv')
    pd.DataFrame({'timestamp': timestamps, 'value': preds[:, k]}).to_csv(
      paths[target], index=False, float_format='%.6f'
    )
  fig, ax = plt.subplots(figsize=(10, 3.5))
  for k, target in enumerate(targets):
    ax.plot(timestamps / 1000.0, preds[:, k], label=target, lw=1.2)
  ax.axhline(0.0, color='0.6', lw=0.6)
  ax.set_xlabel('time (s)')
  ax.set_ylabel('prediction')
  ax.set_title(title)
  ax.legend(loc='upper right')
  fig.tight_layout()
  paths['plot'] = os.path.join(out, 'prediction.png')
  fig.savefig(paths['plot'], dpi=100)
  plt.close(fig)
  return paths


def predict_recording(
  workdir: str,
  wav: str,
  out: str,
  transcript: str | None = None,
  model_dir: str | None = None,
  win_s: float = 3.0,
  seed_index: int | str | None = None,
) -> dict:
  predictor = predictor_lib.Predictor(workdir, seed_index)
  raw, timestamps = extract_inputs(
    list(predictor.inputs),
    list(predictor.dims),
    wav,
    transcript,
    model_dir,
    win_s,
    step_ms=predictor.step_ms,
  )
  preds = np.asarray(predictor(raw, timestamps))
  return write_outputs(
    out,
    timestamps,
    preds,
    list(predictor.targets),
    f'{os.path.basename(wav)}: {", ".join(predictor.targets)} '
    f'({os.path.basename(os.path.abspath(workdir))})',
  )
