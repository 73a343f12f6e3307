"""A Llama-architecture causal language model in JAX (forward pass and its parts).

Llama (Touvron et al., 2023, "LLaMA: Open and Efficient Foundation Language
Models", arXiv:2302.13971) with grouped-query attention (Ainslie et al., 2023,
arXiv:2305.13245). For token ids t_1..t_T, x = E[t] (T, d), then per layer

    x_hat = RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g_attn
    head h (query) reading key/value head g = h // (H / H_kv):
      q_t = R_t W^Q_h x_hat_t,   k_j = R_j W^K_g x_hat_j,   v_j = W^V_g x_hat_j
      o_h(t) = sum_{j <= t} softmax_j(<k_j, q_t> / sqrt(d_head)) v_j
    x = x + W^O [o_1; ...; o_H]
    x = x + W_down (SiLU(W_gate RMSNorm'(x)) * W_up RMSNorm'(x))

and logits = E RMSNorm''(x) (tied embeddings). R_t is the rotary embedding
(Su et al., 2021, "RoFormer", arXiv:2104.09864) in the half-split form of the
Hugging Face implementation: for a head vector u = [u_1; u_2] (two halves of
d_head / 2), R_t u = [u_1 cos(t w) - u_2 sin(t w); u_2 cos(t w) + u_1 sin(t w)]
with w_i = theta^(-2i / d_head), positions t = 0, 1, ...

Functions act on one sequence; batches come from ``jax.vmap``. Nothing here is
jitted: :class:`icl_kd.llm.Llama` jits them once per padded length bucket.
Positions after the real tokens (padding) cannot change earlier positions
(causal attention), so a sequence padded on the right gives the same values on
its real positions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_kd.dual import HIGHEST
from icl_kd.llm.loader import LlamaConfig

jax.tree_util.register_static(LlamaConfig)


class LayerParams(NamedTuple):
  """The weights of every decoder layer, stacked on a leading layer axis L.

  Attributes (Linear weights (out, in)):
    attn_norm: (L, d) RMSNorm gain before attention.
    w_q: (L, H * d_head, d); w_k, w_v: (L, H_kv * d_head, d); w_o: (L, d, H * d_head).
    ffn_norm: (L, d) RMSNorm gain before the MLP.
    w_gate, w_up: (L, d_ff, d); w_down: (L, d, d_ff).
  """
  attn_norm: jax.Array
  w_q: jax.Array
  w_k: jax.Array
  w_v: jax.Array
  w_o: jax.Array
  ffn_norm: jax.Array
  w_gate: jax.Array
  w_up: jax.Array
  w_down: jax.Array


class LlamaParams(NamedTuple):
  """All weights: token embeddings E (V, d) (also the output map), final norm gain (d,), layers."""
  embed: jax.Array
  final_norm: jax.Array
  layers: LayerParams


def params_from_tensors(config: LlamaConfig, tensors: dict, dtype) -> LlamaParams:
  """LlamaParams from the (HF-layout) tensors of :func:`icl_kd.llm.loader.read_gguf`."""
  names = {"attn_norm": "attn_norm", "w_q": "attn_q", "w_k": "attn_k", "w_v": "attn_v",
           "w_o": "attn_output", "ffn_norm": "ffn_norm", "w_gate": "ffn_gate", "w_up": "ffn_up",
           "w_down": "ffn_down"}
  layers = LayerParams(**{f: jnp.asarray(np.stack([tensors[f"blk.{i}.{n}"]
                                                   for i in range(config.num_layers)]), dtype)
                          for f, n in names.items()})
  if not config.tied_embeddings:
    raise ValueError("only tied-embedding models are supported (the GGUF has an 'output.weight')")
  return LlamaParams(jnp.asarray(tensors["token_embd"], dtype),
                     jnp.asarray(tensors["output_norm"], dtype), layers)


def rms_norm(x: jax.Array, gain: jax.Array, *, eps) -> jax.Array:
  """x / sqrt(mean(x^2) + eps) * gain over the last axis of x (..., d)."""
  var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(var + eps) * gain.reshape((1,) * (x.ndim - 1) + (-1,))


def rope_tables(num_positions: int, config: LlamaConfig, dtype) -> tuple[jax.Array, jax.Array]:
  """cos and sin of the rotary angles t * w_i, each (T, d_head) (the half repeated)."""
  dh = config.head_dim
  inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, dh, 2, dtype=dtype) / dh))   # (dh/2,)
  ang = jnp.arange(num_positions, dtype=dtype)[:, None] * inv_freq[None, :]          # (T, dh/2)
  ang = jnp.concatenate([ang, ang], axis=1)                                          # (T, dh)
  return jnp.cos(ang), jnp.sin(ang)


def apply_rope(u: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """R_t u for head vectors u (T, n, d_head) at positions 0..T-1 (half-split form)."""
  half = u.shape[-1] // 2
  rot = jnp.concatenate([-u[..., half:], u[..., :half]], axis=-1)
  return u * cos[:, None, :] + rot * sin[:, None, :]


def _linear(x: jax.Array, w: jax.Array) -> jax.Array:
  return jnp.dot(x, w.T, precision=HIGHEST)


def qkv(lp: LayerParams, config: LlamaConfig, x: jax.Array, cos, sin):
  """A layer's rotated queries (T, H, dh), rotated keys (T, H_kv, dh), values (T, H_kv, dh).

  ``lp`` holds one layer's weights (no leading L axis); x (T, d) is the layer's input.
  """
  t, dh = x.shape[0], config.head_dim
  xn = rms_norm(x, lp.attn_norm, eps=config.rms_norm_eps)
  q = _linear(xn, lp.w_q).reshape(t, config.num_heads, dh)
  k = _linear(xn, lp.w_k).reshape(t, config.num_kv_heads, dh)
  v = _linear(xn, lp.w_v).reshape(t, config.num_kv_heads, dh)
  return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def attention(lp: LayerParams, config: LlamaConfig, x: jax.Array, cos, sin):
  """Every query head's output o_h (T, H, dh) and causal scores <k_j, q_t>/sqrt(dh) (H, T, T).

  Scores of future keys (j > t) are -inf.
  """
  t = x.shape[0]
  q, k, v = qkv(lp, config, x, cos, sin)
  g = config.group_size
  k = jnp.repeat(k, g, axis=1)                                               # (T, H, dh)
  v = jnp.repeat(v, g, axis=1)
  s = jnp.einsum("qhd,khd->hqk", q, k, precision=HIGHEST) / jnp.sqrt(
      jnp.asarray(config.head_dim, x.dtype))                                 # (H, T, T)
  causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
  s = jnp.where(causal[None], s, -jnp.inf)
  p = jax.nn.softmax(s, axis=-1)
  return jnp.einsum("hqk,khd->qhd", p, v, precision=HIGHEST), s


def decoder_layer(lp: LayerParams, config: LlamaConfig, x: jax.Array, cos, sin):
  """One pre-norm decoder layer: (output (T, d), head outputs (T, H, dh), scores (H, T, T))."""
  t = x.shape[0]
  heads, s = attention(lp, config, x, cos, sin)
  x = x + _linear(heads.reshape(t, -1), lp.w_o)
  xn = rms_norm(x, lp.ffn_norm, eps=config.rms_norm_eps)
  mlp = _linear(jax.nn.silu(_linear(xn, lp.w_gate)) * _linear(xn, lp.w_up), lp.w_down)
  return x + mlp, heads, s


class ForwardOutput(NamedTuple):
  """The forward pass of one sequence of T tokens.

  Attributes:
    logits: (T, V) next-token logits.
    hidden_states: (L + 1, T, d); hidden_states[l] is the input of layer l
      (hidden_states[0] the embeddings), hidden_states[L] the last layer's output
      (before the final norm).
    head_outputs: (L, T, H, d_head) every query head's output o_h at every position.
  """
  logits: jax.Array
  hidden_states: jax.Array
  head_outputs: jax.Array


def _check_ids(config: LlamaConfig, ids) -> jax.Array:
  ids = jnp.asarray(ids)
  if ids.ndim != 1 or not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"ids must be a rank-1 integer array (T,), got shape {ids.shape} and "
                     f"dtype {ids.dtype}")
  if ids.shape[0] < 1:
    raise ValueError("ids must hold at least one token, got 0")
  if not isinstance(ids, jax.core.Tracer):
    a = np.asarray(ids)
    if a.min() < 0 or a.max() >= config.vocab_size:
      raise ValueError(f"ids must lie in [0, {config.vocab_size}), got values in "
                       f"[{a.min()}, {a.max()}]")
  return ids


def _layers(params: LlamaParams, config: LlamaConfig, x: jax.Array, stat_pos=None):
  """Scans the layers; returns (final x, layer inputs (L, T, d), heads (L, T, H, dh), stats)."""
  cos, sin = rope_tables(x.shape[0], config, x.dtype)

  def body(h, lp):
    out, heads, s = decoder_layer(lp, config, h, cos, sin)
    row = None if stat_pos is None else s[:, stat_pos, :]                    # (H, T)
    return out, (h, heads, row)

  x, (inputs, heads, rows) = jax.lax.scan(body, x, params.layers)
  return x, inputs, heads, rows


def final_logits(params: LlamaParams, config: LlamaConfig, x: jax.Array) -> jax.Array:
  """logits = E RMSNorm(x) for the last layer's output x (..., d) -> (..., V)."""
  return _linear(rms_norm(x, params.final_norm, eps=config.rms_norm_eps), params.embed)


def forward(params: LlamaParams, config: LlamaConfig, ids) -> ForwardOutput:
  """Runs the model on one sequence of token ids (T,) (see the module docstring)."""
  ids = _check_ids(config, ids)
  x = jnp.take(params.embed, ids, axis=0)                                     # (T, d)
  x, inputs, heads, _ = _layers(params, config, x)
  hidden = jnp.concatenate([inputs, x[None]], axis=0)                         # (L+1, T, d)
  return ForwardOutput(final_logits(params, config, x), hidden, heads)


class Scored(NamedTuple):
  """Teacher-forced read-out of one sequence at A positions (see :func:`score`).

  Attributes:
    greedy: (A,) int, the argmax next token at each read position.
    target_logprob: (A,) log p(target | prefix) of the given targets.
    scores: (L, H, T) every head's scores <k_j, q_t>/sqrt(d_head) at position
      ``stat_pos`` (-inf for j > stat_pos).
  """
  greedy: jax.Array
  target_logprob: jax.Array
  scores: jax.Array


def score(params: LlamaParams, config: LlamaConfig, ids, read_pos, targets, stat_pos) -> Scored:
  """Greedy tokens and target log-probabilities at positions ``read_pos`` (A,), and the
  attention scores of every head at ``stat_pos``; the vocabulary map is applied only at
  the A read positions."""
  ids = _check_ids(config, ids)
  x = jnp.take(params.embed, ids, axis=0)
  x, _, _, rows = _layers(params, config, x, stat_pos)
  logits = final_logits(params, config, x[read_pos])                          # (A, V)
  logp = jax.nn.log_softmax(logits, axis=-1)
  tl = jnp.take_along_axis(logp, targets[:, None], axis=1)[:, 0]
  return Scored(jnp.argmax(logits, axis=-1), tl, rows)
