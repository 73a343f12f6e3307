"""Trainable attention models (Flax) whose weights map onto :class:`AttentionParams`.

- :class:`SoftmaxAttentionLayer`: one softmax-attention layer, parameters
  ``w_q, w_k`` (d_k, d) and ``w_v`` (d_v, d) exactly as in docs/THEORY.md; the
  query token attends to the demonstrations and to itself. Its output is
  ``softmax_attention`` of the core library, so ``decompose`` (claim C1,
  ``thm3.1``) applies to a trained layer through :func:`attention_params`.
- :class:`LinearAttentionLayer`: linear self-attention,
  h(x') = (1/N) sum_i W^V x_i <W^K x_i, W^Q x'> (von Oswald et al., 2023,
  "Transformers learn in-context by gradient descent").
- :class:`Transformer`: a small pre-LayerNorm transformer with sinusoidal
  positional encodings (Vaswani et al., 2017), several layers of multi-head
  softmax attention and an optional MLP. Demonstrations attend to the
  demonstrations; the query (the last token) attends to everything,
  itself included. :func:`head_attention_params` extracts each head as
  AttentionParams (the output projection folded into W^V), and
  :func:`transformer_intermediates` returns every layer's actual attention
  inputs and per-head outputs, so C1 can be checked per layer and head (E4).

Every module acts on ONE prompt, ``(demos (N, d_in), query (d_in,))``, and
returns a vector; regression models read the prediction from its last
coordinate (:func:`icl_predict`). Batches come from ``jax.vmap``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from icl_kd.attention import AttentionParams, softmax_attention
from icl_kd.dual import HIGHEST


def _params_dict(variables) -> dict:
  """Accepts ``{"params": {...}}`` or the inner parameter dict."""
  if not hasattr(variables, "keys"):
    raise TypeError(f"variables must be a Flax variable dict, got {type(variables).__name__}")
  return variables["params"] if "params" in variables else variables


def _weight_init(scale: float, fan_in: int):
  return nn.initializers.normal(stddev=scale / math.sqrt(fan_in))


class SoftmaxAttentionLayer(nn.Module):
  """h(x') = sum_j softmax_j(<W^K x_j, W^Q x'>/tau) W^V x_j over [demos; x'] (C1).

  Attributes:
    d_k: key/query dimension.
    d_v: value dimension (1 for a scalar regression read-out).
    tau: softmax temperature.
    include_query: whether x' attends to itself (as in ``decompose``).
    init_scale: entries are N(0, init_scale^2 / d) at initialisation.
    dtype: parameter dtype.
  """
  d_k: int
  d_v: int = 1
  tau: float = 1.0
  include_query: bool = True
  init_scale: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, demos: jax.Array, query: jax.Array) -> jax.Array:
    d = query.shape[-1]
    init = _weight_init(self.init_scale, d)
    params = AttentionParams(self.param("w_q", init, (self.d_k, d), self.dtype),
                             self.param("w_k", init, (self.d_k, d), self.dtype),
                             self.param("w_v", init, (self.d_v, d), self.dtype))
    context = jnp.concatenate([demos, query[None]]) if self.include_query else demos
    return softmax_attention(params, context, query, tau=self.tau)          # (d_v,)


class LinearAttentionLayer(nn.Module):
  """h(x') = (1/N) sum_i W^V x_i <W^K x_i, W^Q x'> (linear self-attention).

  Attributes as :class:`SoftmaxAttentionLayer` (no temperature, no self-attention).
  """
  d_k: int
  d_v: int = 1
  init_scale: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, demos: jax.Array, query: jax.Array) -> jax.Array:
    d = query.shape[-1]
    init = _weight_init(self.init_scale, d)
    w_q = self.param("w_q", init, (self.d_k, d), self.dtype)
    w_k = self.param("w_k", init, (self.d_k, d), self.dtype)
    w_v = self.param("w_v", init, (self.d_v, d), self.dtype)
    keys = jnp.dot(demos, w_k.T, precision=HIGHEST)                         # (N, d_k)
    values = jnp.dot(demos, w_v.T, precision=HIGHEST)                       # (N, d_v)
    scores = jnp.dot(keys, jnp.dot(w_q, query, precision=HIGHEST), precision=HIGHEST)  # (N,)
    return jnp.dot(scores, values, precision=HIGHEST) / demos.shape[0]      # (d_v,)


def attention_params(variables) -> AttentionParams:
  """The AttentionParams of a :class:`SoftmaxAttentionLayer` or :class:`LinearAttentionLayer`."""
  p = _params_dict(variables)
  missing = {"w_q", "w_k", "w_v"} - set(p.keys())
  if missing:
    raise ValueError(f"variables lack the attention parameters {sorted(missing)}; "
                     f"got {sorted(p.keys())}")
  return AttentionParams(jnp.asarray(p["w_q"]), jnp.asarray(p["w_k"]), jnp.asarray(p["w_v"]))


def sinusoidal_positions(length: int, d_model: int, *, dtype=jnp.float32) -> jax.Array:
  """PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] = cos(...) (Vaswani et al., 2017); (T, d)."""
  pos = jnp.arange(length, dtype=dtype)[:, None]                            # (T, 1)
  i = jnp.arange((d_model + 1) // 2, dtype=dtype)[None, :]                  # (1, d/2)
  angle = pos / jnp.power(jnp.asarray(10000.0, dtype), 2 * i / d_model)     # (T, d/2)
  pe = jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1)                 # (T, d/2, 2)
  return pe.reshape(length, -1)[:, :d_model]


def prompt_mask(n_demos: int) -> jax.Array:
  """(N+1, N+1) boolean mask: demonstrations see demonstrations; the query sees all."""
  t = n_demos + 1
  row_is_query = jnp.arange(t) == n_demos                                   # (T,)
  col_is_demo = jnp.arange(t) < n_demos                                     # (T,)
  return row_is_query[:, None] | col_is_demo[None, :]


class Block(nn.Module):
  """Pre-LayerNorm block: h + MHA(LN(h)), then h + MLP(LN(h)) when d_mlp > 0."""
  n_heads: int
  d_model: int
  d_mlp: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
    n_h, d_m = self.n_heads, self.d_model
    d_h = d_m // n_h
    x = nn.LayerNorm(name="ln_attn", dtype=self.dtype, param_dtype=self.dtype)(h)  # (T, d_m)
    self.sow("intermediates", "attn_inputs", x)
    init = _weight_init(1.0, d_m)
    w_q = self.param("w_q", init, (n_h, d_h, d_m), self.dtype)
    w_k = self.param("w_k", init, (n_h, d_h, d_m), self.dtype)
    w_v = self.param("w_v", init, (n_h, d_h, d_m), self.dtype)
    w_o = self.param("w_o", _weight_init(1.0, d_m), (n_h, d_m, d_h), self.dtype)
    q = jnp.einsum("hkd,td->htk", w_q, x, precision=HIGHEST)               # (H, T, d_h)
    k = jnp.einsum("hkd,td->htk", w_k, x, precision=HIGHEST)               # (H, T, d_h)
    v = jnp.einsum("hkd,td->htk", w_v, x, precision=HIGHEST)               # (H, T, d_h)
    s = jnp.einsum("htk,hsk->hts", q, k, precision=HIGHEST) / math.sqrt(d_h)  # (H, T, T)
    s = jnp.where(mask[None, :, :], s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)                                          # (H, T, T)
    o = jnp.einsum("hts,hsk->htk", p, v, precision=HIGHEST)                # (H, T, d_h)
    heads = jnp.einsum("hdk,htk->htd", w_o, o, precision=HIGHEST)          # (H, T, d_m)
    self.sow("intermediates", "head_outputs", heads)
    h = h + jnp.sum(heads, axis=0)
    if self.d_mlp > 0:
      y = nn.LayerNorm(name="ln_mlp", dtype=self.dtype, param_dtype=self.dtype)(h)
      y = nn.Dense(self.d_mlp, name="mlp_in", dtype=self.dtype, param_dtype=self.dtype)(y)
      y = nn.Dense(d_m, name="mlp_out", dtype=self.dtype, param_dtype=self.dtype)(nn.gelu(y))
      h = h + y
    return h


class Transformer(nn.Module):
  """Multi-layer, multi-head softmax transformer over [demos; query] with positions.

  Attributes:
    n_layers, n_heads, d_model: depth, heads per layer, width (d_model % n_heads == 0).
    d_mlp: MLP width (0: attention only).
    d_out: output dimension (read at the query position).
    positions: add sinusoidal positional encodings (the model is then
      sensitive to the order of the demonstrations).
    dtype: parameter and compute dtype.
  """
  n_layers: int = 2
  n_heads: int = 2
  d_model: int = 32
  d_mlp: int = 64
  d_out: int = 1
  positions: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, demos: jax.Array, query: jax.Array) -> jax.Array:
    if self.d_model % self.n_heads:
      raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
    n = demos.shape[0]
    tokens = jnp.concatenate([demos, query[None]])                          # (T, d_in)
    h = nn.Dense(self.d_model, use_bias=False, name="embed", dtype=self.dtype,
                 param_dtype=self.dtype)(tokens)                            # (T, d_m)
    if self.positions:
      h = h + sinusoidal_positions(n + 1, self.d_model, dtype=h.dtype)
    mask = prompt_mask(n)
    for layer in range(self.n_layers):
      h = Block(self.n_heads, self.d_model, self.d_mlp, dtype=self.dtype,
                name=f"block_{layer}")(h, mask)
    h = nn.LayerNorm(name="ln_f", dtype=self.dtype, param_dtype=self.dtype)(h[-1])
    return nn.Dense(self.d_out, name="readout", dtype=self.dtype, param_dtype=self.dtype)(h)


def head_attention_params(variables, layer: int, head: int, *,
                          fold_output: bool = True) -> AttentionParams:
  """AttentionParams of one head of a :class:`Transformer`.

  W^Q = w_q[head], W^K = w_k[head] (d_h, d_model); W^V = w_o[head] w_v[head]
  (d_model, d_model) with the output projection folded in (the head's
  contribution to the residual stream), or w_v[head] (d_h, d_model) when
  ``fold_output`` is False. The temperature is sqrt(d_h) (:func:`head_tau`).
  """
  p = _params_dict(variables)
  name = f"block_{layer}"
  if name not in p:
    layers = sorted(k for k in p if k.startswith("block_"))
    raise ValueError(f"layer must index one of {layers}, got {layer!r}")
  b = p[name]
  n_heads = b["w_q"].shape[0]
  if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < n_heads:
    raise ValueError(f"head must be an int in [0, {n_heads}), got {head!r}")
  w_v = b["w_v"][head]
  if fold_output:
    w_v = jnp.dot(b["w_o"][head], w_v, precision=HIGHEST)                   # (d_m, d_m)
  return AttentionParams(jnp.asarray(b["w_q"][head]), jnp.asarray(b["w_k"][head]), w_v)


def stacked_head_params(variables, *, fold_output: bool = True) -> AttentionParams:
  """Every head of a :class:`Transformer` at once: AttentionParams with leading axes (L, H).

  Entry [layer, head] equals :func:`head_attention_params` (variables, layer, head);
  the stacked form lets ``jax.vmap`` run one computation over all heads.
  """
  p = _params_dict(variables)
  blocks = [p[f"block_{i}"] for i in range(len([k for k in p if k.startswith("block_")]))]
  if not blocks:
    raise ValueError("variables hold no transformer blocks (block_0, block_1, ...)")
  w_q = jnp.stack([b["w_q"] for b in blocks])                              # (L, H, d_h, d_m)
  w_k = jnp.stack([b["w_k"] for b in blocks])                              # (L, H, d_h, d_m)
  w_v = jnp.stack([b["w_v"] for b in blocks])                              # (L, H, d_h, d_m)
  if fold_output:
    w_o = jnp.stack([b["w_o"] for b in blocks])                            # (L, H, d_m, d_h)
    w_v = jnp.einsum("lhmk,lhkd->lhmd", w_o, w_v, precision=HIGHEST)       # (L, H, d_m, d_m)
  return AttentionParams(w_q, w_k, w_v)


def head_tau(variables, layer: int = 0) -> float:
  """The softmax temperature sqrt(d_h) of a :class:`Transformer` layer."""
  return math.sqrt(_params_dict(variables)[f"block_{layer}"]["w_q"].shape[1])


class Intermediates(NamedTuple):
  """A :class:`Transformer` forward pass with what every attention layer saw.

  Attributes:
    output: (d_out,) the model's output.
    attn_inputs: (L, N+1, d_model) each layer's attention inputs LN(h).
    head_outputs: (L, H, N+1, d_model) each head's contribution to the residual.
  """
  output: jax.Array
  attn_inputs: jax.Array
  head_outputs: jax.Array


def transformer_intermediates(model: Transformer, variables, demos, query) -> Intermediates:
  """Runs ``model`` on one prompt and collects each layer's attention inputs and heads."""
  out, state = model.apply({"params": _params_dict(variables)}, demos, query,
                           mutable=["intermediates"])
  inter = state["intermediates"]
  names = [f"block_{i}" for i in range(model.n_layers)]
  inputs = jnp.stack([inter[n]["attn_inputs"][0] for n in names])
  heads = jnp.stack([inter[n]["head_outputs"][0] for n in names])
  return Intermediates(out, inputs, heads)


def icl_predict(model: nn.Module, variables, demos, query) -> jax.Array:
  """The scalar regression prediction: the last coordinate of the model's output."""
  return model.apply({"params": _params_dict(variables)}, demos, query)[-1]
