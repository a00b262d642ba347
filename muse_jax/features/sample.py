"""A synthetic recording for tests and the README: audio, transcript and a tiny random BERT.

The real MuSe-CaR media are under an EULA and a real encoder is a download, so the extra is
exercised on these instead: a gliding tone in bursts plus noise (any rate, mono or stereo), a
transcript whose sentences match the bursts, and a BERT of a few thousand random weights saved in
the Hugging Face layout (config.json, model.safetensors, tokenizer.json built with `tokenizers`).
"""

import json
import os

import numpy as np

VOCAB = (
  '[PAD]',
  '[UNK]',
  '[CLS]',
  '[SEP]',
  '[MASK]',
  'the',
  'car',
  'is',
  'fast',
  'slow',
  'and',
  'i',
  'like',
  'seats',
  'engine',
  'drive',
  'road',
  'very',
  'good',
  'bad',
  'not',
  'it',
  '##s',
  '.',
  ',',
  '!',
)
SENTENCES = (
  'the car is fast .',
  'i like the seats !',
  'the engine is not very good',
  'it drives , and it drives well',
  'slow road .',
)


def write_wav(
  path: str, seconds: float = 12.0, sample_rate: int = 16000, channels: int = 1, seed: int = 0
) -> str:
  """Tone bursts (a voice-like glide at 120-220 Hz with harmonics) plus noise, as PCM16."""
  import soundfile as sf  # noqa: PLC0415  (features extra: loaded only when used)

  rng = np.random.default_rng(seed)
  t = np.arange(int(round(seconds * sample_rate))) / sample_rate
  f0 = 170 + 50 * np.sin(2 * np.pi * 0.4 * t)
  phase = 2 * np.pi * np.cumsum(f0) / sample_rate
  voice = sum(np.sin(h * phase) / h for h in (1, 2, 3, 4))
  bursts = (np.sin(2 * np.pi * 0.25 * t + 0.5) > -0.2).astype(np.float64)
  x = 0.25 * voice * bursts + 0.02 * rng.standard_normal(len(t))
  if channels > 1:
    x = np.stack([x * (1 - 0.2 * c) for c in range(channels)], axis=1)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  sf.write(path, np.clip(x, -1, 1), sample_rate, subtype='PCM_16')
  return path


def write_transcript(path: str, seconds: float = 12.0) -> str:
  """One sentence every 2.5 s (1.8 s long), with a comma-holding line quoted as CSV needs."""
  import pandas as pd  # noqa: PLC0415  (features extra: loaded only when used)

  rows = []
  for i, start in enumerate(np.arange(0.3, seconds - 1.0, 2.5)):
    end = min(start + 1.8, seconds)
    rows.append((int(start * 1000), int(end * 1000), SENTENCES[i % len(SENTENCES)]))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  pd.DataFrame(rows, columns=['start_ms', 'end_ms', 'text']).to_csv(path, index=False)
  return path


def tiny_bert_weights(
  hidden: int, layers: int, intermediate: int, vocab: int, max_positions: int, seed: int
) -> dict:
  """Random BertModel tensors under the Hugging Face names (torch [out, in] Linear layout)."""
  rng = np.random.default_rng(seed)

  def w(*shape, scale=0.2):
    return (scale * rng.standard_normal(shape)).astype(np.float32)

  t = {
    'embeddings.word_embeddings.weight': w(vocab, hidden, scale=1.0),
    'embeddings.position_embeddings.weight': w(max_positions, hidden),
    'embeddings.token_type_embeddings.weight': w(2, hidden),
    'embeddings.LayerNorm.weight': 1 + w(hidden, scale=0.1),
    'embeddings.LayerNorm.bias': w(hidden, scale=0.1),
    'pooler.dense.weight': w(hidden, hidden),
    'pooler.dense.bias': w(hidden),
  }
  for i in range(layers):
    p = f'encoder.layer.{i}.'
    for name in (
      'attention.self.query',
      'attention.self.key',
      'attention.self.value',
      'attention.output.dense',
    ):
      t[p + name + '.weight'], t[p + name + '.bias'] = w(hidden, hidden), w(hidden)
    t[p + 'intermediate.dense.weight'] = w(intermediate, hidden)
    t[p + 'intermediate.dense.bias'] = w(intermediate)
    t[p + 'output.dense.weight'] = w(hidden, intermediate)
    t[p + 'output.dense.bias'] = w(hidden)
    for name in ('attention.output.LayerNorm', 'output.LayerNorm'):
      t[p + name + '.weight'] = 1 + w(hidden, scale=0.1)
      t[p + name + '.bias'] = w(hidden, scale=0.1)
  return t


def write_tiny_bert(
  model_dir: str,
  hidden: int = 16,
  layers: int = 2,
  heads: int = 2,
  intermediate: int = 32,
  max_positions: int = 32,
  seed: int = 0,
) -> str:
  """A random BERT sentence encoder in the Hugging Face layout (WordPiece, uncased)."""
  from safetensors.numpy import save_file  # noqa: PLC0415  (features extra: loaded only when used)
  from tokenizers import Tokenizer  # noqa: PLC0415  (features extra: loaded only when used)
  from tokenizers import models  # noqa: PLC0415  (features extra: loaded only when used)
  from tokenizers import normalizers  # noqa: PLC0415  (features extra: loaded only when used)
  from tokenizers import pre_tokenizers  # noqa: PLC0415  (features extra: loaded only when used)
  from tokenizers import processors  # noqa: PLC0415  (features extra: loaded only when used)

  os.makedirs(model_dir, exist_ok=True)
  vocab = {tok: i for i, tok in enumerate(VOCAB)}
  tok = Tokenizer(models.WordPiece(vocab, unk_token='[UNK]'))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(
    single='[CLS] $A [SEP]',
    pair='[CLS] $A [SEP] $B:1 [SEP]:1',
    special_tokens=[('[CLS]', vocab['[CLS]']), ('[SEP]', vocab['[SEP]'])],
  )
  tok.save(os.path.join(model_dir, 'tokenizer.json'))
  config = {
    'architectures': ['BertModel'],
    'model_type': 'bert',
    'hidden_act': 'gelu',
    'hidden_size': hidden,
    'intermediate_size': intermediate,
    'num_attention_heads': heads,
    'num_hidden_layers': layers,
    'max_position_embeddings': max_positions,
    'type_vocab_size': 2,
    'vocab_size': len(VOCAB),
    'layer_norm_eps': 1e-12,
    'pad_token_id': 0,
    'position_embedding_type': 'absolute',
  }
  with open(os.path.join(model_dir, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(config, f, indent=2)
  save_file(
    tiny_bert_weights(hidden, layers, intermediate, len(VOCAB), max_positions, seed),
    os.path.join(model_dir, 'model.safetensors'),
  )
  return model_dir


def make_sample(
  out: str, seconds: float = 12.0, sample_rate: int = 44100, channels: int = 2
) -> dict:
  """out/sample.wav (stereo 44.1 kHz by default), out/transcript.csv, out/tiny_bert/."""
  return {
    'wav': write_wav(os.path.join(out, 'sample.wav'), seconds, sample_rate, channels),
    'transcript': write_transcript(os.path.join(out, 'transcript.csv'), seconds),
    'model_dir': write_tiny_bert(os.path.join(out, 'tiny_bert')),
  }
