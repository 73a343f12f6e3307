"""Heads of a Llama model as docs/THEORY.md's softmax-attention layers (claims C1, C2, C7).

Query head h of layer l at position t reads, for every j <= t,

    anchor  z_j = R_j W^K_g x_hat_j     (the rotated key; g = h // (H / H_kv))
    value   v_j = W^V_g x_hat_j
    query   q_t = R_t W^Q_h x_hat_t      (the rotated query)

with x_hat = RMSNorm of the layer input and tau = sqrt(d_head). Because the
rotation R_j depends on the position, W^K is a different linear map for each
token: docs/THEORY.md's objects are the anchors z_j themselves. C1 (``thm3.1``) reads

    o_h(t) = sum_{j<=t} softmax_j(<z_j, q_t>/tau) v_j = (W_0 + dW) phi(q_t),
    W_0 = (1/D') sum_{j in demos} v_j phi(z_j)^T,   dW = (1/D') sum_{j in rest} v_j phi(z_j)^T.

To run it through :func:`icl_kd.decompose` unchanged, each position becomes one
lifted token x~_j = [z_j; v_j; q_j] (3 d_head) and the head one
AttentionParams of coordinate projections (:func:`lifted_params`):
W^K x~ = z, W^V x~ = v, W^Q x~ = q. Then ``decompose`` is exactly the head,
and its ``w0`` / ``dw`` are the dual weights above.

Where the attention sink goes. The prompts of :mod:`icl_kd.llm.icl_tasks` start
with ``<|endoftext|>`` (position 0), which takes the sink's mass. The split
used here puts the sink into dW, with the query line: W_0 holds exactly the
demonstration tokens (what changes when the demonstrations change, the object
of C5 and E1), and D' — hence eta* = N / (2 D') — includes the sink. The share
of D' on the sink is reported next to every eta* (:func:`partition_shares`).

The grouped-query heads of one key/value head share anchors and values and
differ only in the query: they are not independent observations.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from icl_kd.attention import AttentionParams, Decomposition, decompose
from icl_kd.llm.loader import LlamaConfig
from icl_kd.llm.model import LlamaParams, qkv, rope_tables


class HeadInputs(NamedTuple):
  """What every head of one layer reads, for a sequence of T tokens.

  Attributes:
    anchors: (H_kv, T, d_head) rotated keys z_j of each key/value head.
    values: (H_kv, T, d_head) values v_j.
    queries: (H, T, d_head) rotated queries q_t of each query head.
    kv_head: (H,) int, the key/value head each query head reads.
    tau: sqrt(d_head).
  """
  anchors: jax.Array
  values: jax.Array
  queries: jax.Array
  kv_head: jax.Array
  tau: float


def head_inputs(params: LlamaParams, config: LlamaConfig, layer: int, x, *,
                rotary: bool = True) -> HeadInputs:
  """The theory's objects of every head of ``layer`` from the layer's input x (T, d).

  Computed in x's dtype with the weights cast to it: pass float64 layer inputs
  (e.g. the float32 model's ``hidden_states[layer]`` cast up) for a float64 check.
  """
  if not 0 <= layer < config.num_layers:
    raise ValueError(f"layer must lie in [0, {config.num_layers}), got {layer}")
  x = jnp.asarray(x)
  if x.ndim != 2 or x.shape[1] != config.hidden_size:
    raise ValueError(f"x must have shape (T, {config.hidden_size}), got {x.shape}")
  lp = jax.tree_util.tree_map(lambda w: w[layer], params.layers)
  return layer_head_inputs(lp, config, x, rotary=rotary)


def layer_head_inputs(lp, config: LlamaConfig, x, *, rotary: bool = True) -> HeadInputs:
  """:func:`head_inputs` from one layer's weights ``lp`` (LayerParams without the L axis).

  ``rotary=False`` gives the un-rotated keys W^K_g x_hat_j and queries W^Q_h x_hat_t (the
  same projections without RoPE: the rotation by angle 0), a sensitivity variant; the
  heads of the model read the rotated ones.
  """
  lp = jax.tree_util.tree_map(lambda w: jnp.asarray(w).astype(x.dtype), lp)
  cos, sin = rope_tables(x.shape[0], config, x.dtype)
  if not rotary:
    cos, sin = jnp.ones_like(cos), jnp.zeros_like(sin)
  q, k, v = qkv(lp, config, x, cos, sin)
  kv = jnp.arange(config.num_heads) // config.group_size
  return HeadInputs(jnp.swapaxes(k, 0, 1), jnp.swapaxes(v, 0, 1), jnp.swapaxes(q, 0, 1), kv,
                    config.tau)


def lifted_params(head_dim: int, dtype) -> AttentionParams:
  """Coordinate projections on lifted tokens [z; v; q] (3 d_head): W^K, W^V, W^Q pick z, v, q."""
  eye, zero = jnp.eye(head_dim, dtype=dtype), jnp.zeros((head_dim, head_dim), dtype)
  return AttentionParams(w_q=jnp.concatenate([zero, zero, eye], axis=1),
                         w_k=jnp.concatenate([eye, zero, zero], axis=1),
                         w_v=jnp.concatenate([zero, eye, zero], axis=1))


def lifted_kv_params(head_dim: int, dtype) -> AttentionParams:
  """The same coordinate projections on the tokens [z; v; q] of a key/value head: W^K picks
  z, W^V picks v, W^Q picks q. Demonstration tokens are lifted as [z; v; 0] and a query
  as [0; 0; q] (:func:`lift`), so that C5's kernels k_V, k_x read (z, v) only."""
  return lifted_params(head_dim, dtype)


def lift(anchors=None, values=None, queries=None) -> jax.Array:
  """Tokens [z; v; q] (..., 3 d_head) from any of anchors, values, queries (..., d_head);
  the missing parts are zeros (demonstrations: [z; v; 0]; a query: [0; 0; q])."""
  ref = next(a for a in (anchors, values, queries) if a is not None)
  zero = jnp.zeros_like(ref)
  return jnp.concatenate([zero if a is None else a for a in (anchors, values, queries)], axis=-1)


def lifted_tokens(inputs: HeadInputs, head) -> jax.Array:
  """x~_j = [z_j; v_j; q_j] for query head ``head``, (T, 3 d_head)."""
  g = inputs.kv_head[head]
  return jnp.concatenate([inputs.anchors[g], inputs.values[g], inputs.queries[head]], axis=1)


def head_decompose(inputs: HeadInputs, head, position: int, demo_start: int,
                   demo_end: int) -> Decomposition:
  """C1 for query head ``head`` at ``position``: demos = positions [demo_start, demo_end).

  The prefix (dW) is every other position before ``position``: the tokens before
  the demonstrations (the sink) and those between them and the query; the query
  attends to itself. Static ints give static shapes (one compile per split).

  Claim ``thm3.1``; checked in tests/test_llm.py and ``python -m icl_kd.experiments llm``.
  """
  if not 0 <= demo_start < demo_end <= position:
    raise ValueError(f"need 0 <= demo_start < demo_end <= position, got {demo_start}, "
                     f"{demo_end}, {position}")
  tok = lifted_tokens(inputs, head)
  dh = inputs.anchors.shape[-1]
  prefix = jnp.concatenate([tok[:demo_start], tok[demo_end:position]], axis=0)
  return decompose(lifted_params(dh, tok.dtype), tok[demo_start:demo_end], prefix,
                   tok[position], tau=inputs.tau, include_query=True)


class Shares(NamedTuple):
  """Parts of the partition function D' at one position (fractions summing to 1)."""
  sink: jax.Array
  demos: jax.Array
  rest: jax.Array


def partition_shares(scores: jax.Array, demo_start: int | jax.Array,
                     demo_end: int | jax.Array) -> Shares:
  """Shares of D' on positions [0, demo_start) (sink), [demo_start, demo_end) (demos), the rest.

  ``scores`` (..., T) are one position's scores (-inf on future keys).
  """
  p = jax.nn.softmax(scores, axis=-1)
  j = jnp.arange(scores.shape[-1])
  sink = jnp.sum(jnp.where(j < demo_start, p, 0.0), axis=-1)
  demos = jnp.sum(jnp.where((j >= demo_start) & (j < demo_end), p, 0.0), axis=-1)
  return Shares(sink, demos, 1.0 - sink - demos)
