"""eGeMAPS (openSMILE eGeMAPSv02) on the 250 ms label grid: `egemaps` and `egemaps_lld`.

`egemaps`: the 88 functionals over a window of `win_s` seconds centred on each grid point
(timestamps 0, 250, ... up to the audio length), cut to the recording at both ends. Windows that
fit inside the recording come from one openSMILE run in fixed frame mode (low-level descriptors
computed once over the whole recording, functionals every 250 ms), which is about ten times
faster than one run per window; only the few windows cut by either end of the recording run
alone. `egemaps_lld`: the 25 low-level descriptors (10 ms frames) averaged over the 250 ms around
each grid point; like openSMILE's own functionals of `*_sma3nz` descriptors, unvoiced frames
count as 0 there.

Audio of any sample rate and channel count is mixed down to mono and resampled to 16 kHz (the
rate eGeMAPS was defined at) before extraction.
"""

import os
import tempfile
import warnings

import numpy as np

from muse_jax.errors import MuseError
from muse_jax.features import writer

SAMPLE_RATE = 16000
MIN_DURATION_S = 0.5  # shorter recordings leave openSMILE's frames empty (NaN functionals)
EGEMAPS = 'egemaps'
EGEMAPS_LLD = 'egemaps_lld'


def load_audio(path: str) -> np.ndarray:
  """Any file libsndfile reads (wav, flac, ogg, mp3, ...) -> mono float32 at 16 kHz in [-1, 1]."""
  import soundfile as sf  # noqa: PLC0415  (features extra: loaded only when used)

  if not os.path.isfile(path):
    raise MuseError(
      f'{path}: no such audio file; give the recording (wav, flac, ogg, mp3) with --wav'
    )
  try:
    x, sr = sf.read(path, dtype='float32', always_2d=True)
  except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
    reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    raise MuseError(
      f'{path}: not a readable audio file ({reason}); convert it to WAV, e.g. '
      '`ffmpeg -i IN -ac 1 -ar 16000 OUT.wav`'
    ) from None
  if x.shape[0] == 0 or x.shape[1] == 0:
    raise MuseError(f'{path}: the recording is empty (no samples); give a non-empty recording')
  x = x.mean(axis=1)  # downmix
  if not np.all(np.isfinite(x)):
    raise MuseError(f'{path}: the recording has NaN or infinite samples; re-encode it')
  if sr != SAMPLE_RATE:
    import audresample  # noqa: PLC0415  (features extra: loaded only when used)

    x = audresample.resample(x[None], sr, SAMPLE_RATE)[0]
  if len(x) < MIN_DURATION_S * SAMPLE_RATE:
    raise MuseError(
      f'{path}: the recording lasts {len(x) / SAMPLE_RATE:.3f} s; eGeMAPS needs at '
      f'least {MIN_DURATION_S} s'
    )
  # openSMILE scales by 32768 into int16: values outside [-1, 1) would wrap around.
  return np.clip(x, -1.0, 32767 / 32768).astype(np.float32)


def duration_ms(x: np.ndarray) -> float:
  return len(x) * 1000.0 / SAMPLE_RATE


def _smile(level: str, options: dict | None = None):
  import opensmile  # noqa: PLC0415  (features extra: loaded only when used)

  return opensmile.Smile(
    feature_set=opensmile.FeatureSet.eGeMAPSv02,
    feature_level=getattr(opensmile.FeatureLevel, level),
    options=options or {},
  )


def _run(smile, x: np.ndarray) -> np.ndarray:
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # "Segment too short": shows up as NaN, checked by callers
    return smile.process_signal(x, SAMPLE_RATE).to_numpy(np.float64)


def functionals(x: np.ndarray, win_s: float = 3.0, step_ms: int = writer.STEP_MS) -> tuple:
  """Returns (88 names, [T, 88]) for grid points 0 .. duration; see the module docstring."""
  if not 0.25 <= win_s <= 60:
    raise MuseError(f'--win_s {win_s}: the window must be between 0.25 and 60 seconds')
  n = writer.num_frames(duration_ms(x), step_ms)
  length_s = len(x) / SAMPLE_RATE
  centres = writer.grid(n, step_ms) / 1000.0
  lo, hi = centres - win_s / 2, centres + win_s / 2
  inside = np.nonzero((lo >= -1e-9) & (hi <= length_s + 1e-9))[0]
  single = _smile('Functionals')
  names = list(single.feature_names)
  out = np.full((n, len(names)), np.nan)
  if len(inside):
    k0 = inside[0]
    start = int(round(lo[k0] * SAMPLE_RATE))
    with tempfile.TemporaryDirectory() as tmp:
      conf = os.path.join(tmp, 'frame_mode.conf.inc')
      with open(conf, 'w', encoding='utf-8') as f:
        f.write(
          f'frameMode = fixed\nframeSize = {win_s}\nframeStep = {step_ms / 1000}\n'
          'frameCenterSpecial = left\nnoPostEOIprocessing = 0\n'
        )
      # Frame i of this run covers [lo[k0] + i * step, + win_s]: grid point k0 + i.
      fixed = _run(_smile('Functionals', {'frameModeFunctionalsConf': conf}), x[start:])
    take = inside[inside - k0 < len(fixed)]
    out[take] = fixed[take - k0]
  for k in np.nonzero(np.isnan(out).any(axis=1))[0]:  # windows cut by the recording's ends
    a = int(round(max(lo[k], 0.0) * SAMPLE_RATE))
    b = int(round(min(hi[k], length_s) * SAMPLE_RATE))
    out[k] = _run(single, x[a:b])[0]
  return names, out


def lld_4hz(x: np.ndarray, step_ms: int = writer.STEP_MS) -> tuple:
  """Returns (25 names, [T, 25]): descriptors averaged over [t - step / 2, t + step / 2) per grid
  point t (4 Hz on MuSe-CaR's 250 ms grid; the name is the set's)."""
  import pandas as pd  # noqa: PLC0415  (features extra: loaded only when used)

  smile = _smile('LowLevelDescriptors')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    frame = smile.process_signal(x, SAMPLE_RATE)
  values = frame.to_numpy(np.float64)
  starts = pd.TimedeltaIndex(frame.index.get_level_values('start')).total_seconds().to_numpy()
  ends = pd.TimedeltaIndex(frame.index.get_level_values('end')).total_seconds().to_numpy()
  mid = (starts + ends) / 2
  n = writer.num_frames(duration_ms(x), step_ms)
  edges = (writer.grid(n + 1, step_ms) - step_ms / 2) / 1000.0
  first = np.searchsorted(mid, edges)  # frames of grid point k: first[k] .. first[k + 1]
  cumsum = np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
  sums, counts = cumsum[first[1:]] - cumsum[first[:-1]], np.diff(first)
  out = sums / np.maximum(counts, 1)[:, None]
  empty = np.nonzero(counts == 0)[0]  # the last grid point can lie past the last frame
  if len(empty):
    nearest = np.abs(mid[None, :] - (writer.grid(n, step_ms)[empty] / 1000.0)[:, None]).argmin(
      axis=1
    )
    out[empty] = values[nearest]
  return list(frame.columns), out


def extract(
  wav: str, root: str, vid: str, win_s: float = 3.0, segment_id: int = 1, step_ms: int | None = None
) -> dict:
  """Writes `egemaps` and `egemaps_lld` of one recording into ROOT, on `step_ms` (default: the
  grid of ROOT's labels, else 250 ms); returns {set: path}."""
  vid = writer.check_id(vid)
  step_ms = writer.tree_step(root) if step_ms is None else writer.check_step(step_ms)
  x = load_audio(wav)
  paths = {}
  for name, (columns, values) in (
    (EGEMAPS, functionals(x, win_s, step_ms)),
    (EGEMAPS_LLD, lld_4hz(x, step_ms)),
  ):
    if not np.all(np.isfinite(values)):
      bad = int(np.argmax(~np.isfinite(values).all(axis=1)))
      raise MuseError(
        f'{wav}: openSMILE gave no {name} values at {bad * step_ms} ms; '
        'is the recording long enough and not corrupt?'
      )
    paths[name] = writer.write_features(root, name, vid, values, columns, segment_id, step_ms)
  return paths
