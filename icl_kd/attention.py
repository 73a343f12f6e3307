"""One softmax-attention layer and its exact reference model (claims C1, C7).

docs/THEORY.md C1 (``thm3.1``): for a context of demonstrations X_D (N, d), a query
prefix X_Q (M, d) and a query token x',

    h(x') = sum_j softmax_j W^V x_j = (W_0 + dW) phi(W^Q x'),
    W_0 = (1/D') sum_{i<=N} W^V x_i phi(W^K x_i)^T,
    dW  = (1/D') sum_{j<=M} W^V x'_j phi(W^K x'_j)^T   (+ x' itself if it attends to itself),

with D' = sum_j exp(<W^K x_j, W^Q x'>/tau) the softmax partition function. The
implicit learning rate (C2, C7) is eta* = N / (2 D').

Checked by ``proofs_check`` claims ``thm3.1`` and ``lr-proxy``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, Real

from icl_kd import _checks, generators
from icl_kd.dual import HIGHEST, DualWeights


class AttentionParams(NamedTuple):
  """Parameters of one softmax-attention layer (a pytree).

  Attributes:
    w_q: (d_k, d) query map W^Q.
    w_k: (d_k, d) key map W^K.
    w_v: (d_v, d) value map W^V (the teacher f_T(x) = W^V x).
  """
  w_q: Float[ArrayLike, "d_k d"]
  w_k: Float[ArrayLike, "d_k d"]
  w_v: Float[ArrayLike, "d_v d"]

  @property
  def d(self) -> int:
    return self.w_q.shape[1]

  @property
  def d_k(self) -> int:
    return self.w_q.shape[0]

  @property
  def d_v(self) -> int:
    return self.w_v.shape[0]


def init_params(d: int, d_k: int | None = None, d_v: int | None = None, *, key: PRNGKeyArray,
                scale: Real[ArrayLike, ""] = 1.0, dtype=None) -> AttentionParams:
  """Gaussian AttentionParams with entries N(0, scale^2 / d).

  Args:
    d: token dimension >= 1.
    d_k: key/query dimension >= 1 (default d).
    d_v: value dimension >= 1 (default d).
    key: a JAX PRNG key (``jax.random.key(seed)``), keyword-only.
    scale: standard deviation times sqrt(d).
    dtype: float32 or float64; default ``None`` is the type JAX gives a new
      float array (float64 when ``jax_enable_x64`` is on, float32 otherwise),
      so the result matches ``jax.random.normal(key, shape)`` tokens.

  Returns:
    AttentionParams with w_q, w_k (d_k, d) and w_v (d_v, d).
  """
  for name, value in (("d", d), ("d_k", d_k), ("d_v", d_v)):
    if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
                              or value < 1):
      raise ValueError(f"{name} must be a positive int, got {value!r}")
  _checks.check_key(key)
  dtype = _checks.resolve_dtype(dtype)
  d_k = d if d_k is None else d_k
  d_v = d if d_v is None else d_v
  kq, kk, kv = jax.random.split(key, 3)
  std = scale / jnp.sqrt(d)
  # generators.normal is jax.random.normal for JAX's own keys (a sweep's keys choose their
  # generator's transform: icl_kd.generators)
  return AttentionParams(std * generators.normal(kq, (d_k, d), dtype),
                         std * generators.normal(kk, (d_k, d), dtype),
                         std * generators.normal(kv, (d_v, d), dtype))


def check_params(params: AttentionParams) -> AttentionParams:
  """Validates AttentionParams: rank-2 float arrays with consistent d and d_k."""
  if not isinstance(params, AttentionParams):
    raise TypeError(f"params must be an AttentionParams(w_q, w_k, w_v), got {type(params).__name__}")
  w_q = _checks.as_float_array("params.w_q", params.w_q, ndim=2)
  w_k = _checks.as_float_array("params.w_k", params.w_k, ndim=2)
  w_v = _checks.as_float_array("params.w_v", params.w_v, ndim=2)
  if w_k.shape != w_q.shape:
    raise ValueError(f"params.w_k must have the shape of params.w_q {w_q.shape} (d_k, d), "
                     f"got {w_k.shape}")
  _checks.check_dim("params.w_v", w_v, 1, w_q.shape[1], "d, the token dimension of w_q")
  for name, arr, what in (("params.w_q", w_q, "d_k"), ("params.w_v", w_v, "d_v")):
    if arr.shape[0] == 0:
      raise ValueError(f"{name} has shape {arr.shape}: {what} = 0 is not supported (expected "
                       f"{what} >= 1; with d_k = 0 every score is 0 and attention is uniform, "
                       "with d_v = 0 the output is empty)")
  if w_q.shape[1] == 0:
    raise ValueError(f"params.w_q has shape {w_q.shape}: token dimension d = 0 is not supported "
                     "(expected d >= 1)")
  _checks.check_same_dtype(w_q=w_q, w_k=w_k, w_v=w_v)
  return AttentionParams(w_q, w_k, w_v)


def _check_tokens(name: str, x, d: int, *, allow_empty: bool) -> jax.Array:
  x = _checks.as_float_array(name, x, ndim=2)
  _checks.check_dim(name, x, 1, d, "d, the token dimension of params")
  if not allow_empty and x.shape[0] == 0:
    raise ValueError(f"{name} must hold at least one token, got shape {x.shape}")
  return x


def _check_query(query, d: int) -> jax.Array:
  query = _checks.as_float_array("query", query, ndim=1)
  if query.shape != (d,):
    raise ValueError(f"query must have shape ({d},) (d,), got {query.shape}")
  return query


def _check_mask(name: str, mask, n: int, rows: str) -> jax.Array | None:
  """A boolean (n,) mask (True = the row takes part), or None."""
  if mask is None:
    return None
  if isinstance(mask, (list, tuple)):
    mask = np.asarray(mask)
  if not isinstance(mask, (jax.Array, np.ndarray)):
    raise TypeError(f"{name} must be a boolean array (True = keep the row), got "
                    f"{type(mask).__name__}")
  if mask.dtype != np.bool_:
    raise TypeError(f"{name} must have dtype bool (True = keep the row), got {mask.dtype}")
  if mask.shape != (n,):
    raise ValueError(f"{name} must have shape ({n},) (one entry per row of {rows}), "
                     f"got {mask.shape}")
  return jnp.asarray(mask)


def _check_keeps_one(name: str, mask: jax.Array, rows: str) -> None:
  if _checks.is_concrete(mask) and not np.any(np.asarray(mask)):
    raise ValueError(f"{name} masks out every row of {rows}; at least one entry must be True")


def _scores(params: AttentionParams, context: jax.Array, query: jax.Array, tau) -> jax.Array:
  keys = jnp.dot(context, params.w_k.T, precision=HIGHEST)                   # (n, d_k)
  q = jnp.dot(params.w_q, query, precision=HIGHEST)                          # (d_k,)
  return jnp.dot(keys, q, precision=HIGHEST) / tau                           # (n,)


def attention_scores(params: AttentionParams, context: Float[ArrayLike, "n d"],
                     query: Float[ArrayLike, " d"], *,
                     tau: Real[ArrayLike, ""] = 1.0) -> Float[Array, " n"]:
  """Scores s_j = <W^K x_j, W^Q x'> / tau for every context row, shape (n,)."""
  params = check_params(params)
  context = _check_tokens("context", context, params.d, allow_empty=False)
  query = _check_query(query, params.d)
  dtype = _checks.check_same_dtype(params=params.w_q, context=context, query=query)
  tau = _checks.scalar_param("tau", tau, dtype)
  _checks.check_finite(**{"params.w_q": params.w_q, "params.w_k": params.w_k},
                       context=context, query=query)
  out = _scores(params, context, query, tau)
  return _checks.poison_if_nonfinite(out, params.w_q, params.w_k, context, query,
                                     positive=(tau,), positive_names=("tau",),
                                     names=("params.w_q", "params.w_k", "context", "query"))


def _attend(params: AttentionParams, context: jax.Array, query: jax.Array, tau,
            mask: jax.Array | None) -> jax.Array:
  """sum_j softmax_j(s) W^V x_j on checked inputs (masked rows get score -inf)."""
  s = _scores(params, context, query, tau)                                   # (n,)
  if mask is not None:
    s = jnp.where(mask, s, -jnp.inf)
  p = jax.nn.softmax(s)                                                      # (n,)
  values = jnp.dot(context, params.w_v.T, precision=HIGHEST)                 # (n, d_v)
  return jnp.dot(p, values, precision=HIGHEST)                               # (d_v,)


def softmax_attention(params: AttentionParams, context: Float[ArrayLike, "n d"],
                      query: Float[ArrayLike, " d"], *, tau: Real[ArrayLike, ""] = 1.0,
                      mask: Bool[ArrayLike, " n"] | None = None) -> Float[Array, " d_v"]:
  """Output of one softmax-attention layer at ``query``, shape (d_v,).

      h(x') = sum_j softmax_j(<W^K x_j, W^Q x'> / tau) W^V x_j

  over every row x_j of ``context`` (n, d); the query attends to itself only
  if the caller puts it in ``context``. The largest score is subtracted
  before exponentiating, so scores of +-1e3 do not overflow.

  Args:
    params: AttentionParams with w_q, w_k (d_k, d) and w_v (d_v, d).
    context: (n, d) tokens, n >= 1.
    query: (d,) query token x'.
    tau: temperature > 0 (the paper uses 1; transformers use sqrt(d_k)).
    mask: optional (n,) bool; rows where it is False take no part (their score
      is -inf), so a context padded to a fixed length gives the unpadded
      output. At least one row must be kept.

  Returns:
    (d_v,) output. Eagerly, non-finite inputs, tau <= 0 or a mask keeping no
    row raise ValueError; under jit/vmap they give an all-NaN output instead
    (an error under :func:`icl_kd.checked`).

  Claim ``thm3.1`` (C1): the left side; see :func:`decompose`.
  """
  params = check_params(params)
  context = _check_tokens("context", context, params.d, allow_empty=False)
  query = _check_query(query, params.d)
  mask = _check_mask("mask", mask, context.shape[0], "context")
  dtype = _checks.check_same_dtype(params=params.w_q, context=context, query=query)
  tau = _checks.scalar_param("tau", tau, dtype)
  _checks.check_finite(**{"params.w_q": params.w_q, "params.w_k": params.w_k,
                          "params.w_v": params.w_v}, context=context, query=query)
  keeps = ()
  if mask is not None:
    _check_keeps_one("mask", mask, "context")
    keeps = (jnp.sum(mask),)
  out = _attend(params, context, query, tau, mask)                           # (d_v,)
  return _checks.poison_if_nonfinite(
      out, *params, context, query, positive=(tau,) + keeps,
      names=("params.w_q", "params.w_k", "params.w_v", "context", "query"),
      positive_names=("tau", "the number of context rows kept by mask"))


class Decomposition(NamedTuple):
  """Both sides of C1 and the quantities of C2/C7 for one prompt.

  Attributes:
    attention: (d_v,) the layer's output h(x') (left side of C1).
    reference: (d_v,) (W_0 + dW) phi(W^Q x') evaluated in dual form (right side).
    w0: DualWeights of W_0 (anchors W^K x_i of the N demonstrations).
    dw: DualWeights of dW (anchors of the M prefix tokens, then x' if included).
    log_partition: log D'.
    eta: eta* = N / (2 D') (underflows to 0 for D' > 1e308; use ``log_eta``).
    log_eta: log eta*.
    entropy: entropy of the attention distribution (nats).
    scores: (N + M [+1],) scores <W^K x_j, W^Q x'>/tau, demonstrations first
      (-inf at masked rows, so ``jax.nn.softmax(scores)`` is the attention).
    max_abs_score: max_j |s_j| over the rows taking part; the rounding scale
      of the identity.
  """
  attention: Float[Array, " d_v"]
  reference: Float[Array, " d_v"]
  w0: DualWeights
  dw: DualWeights
  log_partition: Float[Array, ""]
  eta: Float[Array, ""]
  log_eta: Float[Array, ""]
  entropy: Float[Array, ""]
  scores: Float[Array, " n_ctx"]
  max_abs_score: Float[Array, ""]


_NO_PREFIX = "pass prefix=None for no query prefix"


def _missing_query(demos, prefix) -> TypeError:
  shape = getattr(prefix, "shape", None)
  if shape is not None and len(shape) == 1:
    return TypeError(
        f"decompose(params, demos, prefix, query): got 3 arrays, read as demos "
        f"{getattr(demos, 'shape', '?')} (N, d) and prefix {shape} (M, d), with query "
        f"(the (d,) query token) missing; {_NO_PREFIX}: decompose(params, demos, None, query)")
  return TypeError("decompose(params, demos, prefix, query): query (the (d,) query token x') is "
                   f"missing; {_NO_PREFIX}")


def decompose(params: AttentionParams, demos: Float[ArrayLike, "N d"],
              prefix: Float[ArrayLike, "M d"] | Sequence[Float[ArrayLike, " d"]] | None = None,
              query: Float[ArrayLike, " d"] | None = None, *, tau: Real[ArrayLike, ""] = 1.0,
              include_query: bool = True, demo_mask: Bool[ArrayLike, " N"] | None = None,
              prefix_mask: Bool[ArrayLike, " M"] | None = None) -> Decomposition:
  """Splits one attention read-out into the distilled weights W_0 and dW (C1).

  The context is ``demos`` (N, d), then ``prefix`` (M, d; ``None`` for no
  prefix, M = 0), then ``query`` (d,) itself when ``include_query`` (the query
  attends to itself).

      D'  = sum_j exp(s_j),  s_j = <W^K x_j, W^Q x'> / tau
      W_0 = (1/D') sum_{i<=N} W^V x_i phi(W^K x_i)^T
      dW  = (1/D') sum_{j>N}  W^V x_j phi(W^K x_j)^T
      h(x') = (W_0 + dW) phi(W^Q x')

  ``attention`` is computed as :func:`softmax_attention` computes it; ``reference``
  by evaluating the dual weights, a separate code path. Their relative error is
  what ``proofs_check`` claim ``thm3.1`` reports; ``eta``, ``log_partition``
  and ``entropy`` feed claims ``kd-step`` and ``lr-proxy``.

  Padded contexts: ``demo_mask`` (N,) and ``prefix_mask`` (M,) are boolean
  (True = the token takes part). A masked token contributes nothing: its score
  is -inf (so nothing to D' and the entropy), its coefficient in W_0 or dW is
  0, and N in eta* = N / (2 D') counts kept demonstrations only. Padding prompts
  of different lengths to one (N, M) therefore gives one compiled program
  under ``jax.jit`` and the same numbers as the unpadded prompts (masked
  anchors are set to a kept anchor, so log-space sums keep their scale).
  Padding must be finite; at least one demonstration must be kept.

  Args:
    params: AttentionParams (w_q, w_k (d_k, d), w_v (d_v, d)).
    demos: (N, d) demonstrations, N >= 1.
    prefix: (M, d) query prefix, or None (M = 0; an empty list means the same).
    query: (d,) query token x'.
    tau: temperature > 0.
    include_query: whether x' attends to itself (it is the last context row).
    demo_mask: optional (N,) bool.
    prefix_mask: optional (M,) bool.

  Returns:
    Decomposition. Eagerly, non-finite inputs, tau <= 0 or a demo_mask keeping
    nothing raise ValueError; under jit/vmap every field is NaN instead, unless
    the call is wrapped by :func:`icl_kd.checked`, which raises there too::

        checked = icl_kd.checked(jax.jit(icl_kd.decompose))
        checked(params, demos, None, query)   # NaN in demos: JaxRuntimeError
                                              # "demos contains non-finite values ..."

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from icl_kd import init_params, decompose
    >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    >>> params = init_params(4, key=k1)
    >>> demos, query = jax.random.normal(k2, (8, 4)), jax.random.normal(k3, (4,))
    >>> out = decompose(params, demos, None, query)
    >>> bool(jnp.allclose(out.attention, out.reference, rtol=1e-5, atol=1e-6))
    True
  """
  if query is None:
    raise _missing_query(demos, prefix)
  params = check_params(params)
  demos = _check_tokens("demos", demos, params.d, allow_empty=False)
  if prefix is None or (isinstance(prefix, (list, tuple)) and len(prefix) == 0):
    prefix = jnp.zeros((0, params.d), demos.dtype)
  prefix = _check_tokens("prefix", prefix, params.d, allow_empty=True)
  query = _check_query(query, params.d)
  demo_mask = _check_mask("demo_mask", demo_mask, demos.shape[0], "demos")
  prefix_mask = _check_mask("prefix_mask", prefix_mask, prefix.shape[0], "prefix")
  dtype = _checks.check_same_dtype(params=params.w_q, demos=demos, prefix=prefix, query=query)
  tau = _checks.scalar_param("tau", tau, dtype)
  _checks.check_finite(**{"params.w_q": params.w_q, "params.w_k": params.w_k,
                          "params.w_v": params.w_v}, demos=demos, prefix=prefix, query=query)

  n, m = demos.shape[0], prefix.shape[0]
  tail = jnp.concatenate([prefix, query[None]]) if include_query else prefix  # (M [+1], d)
  context = jnp.concatenate([demos, tail])                                   # (N + M [+1], d)
  masked = demo_mask is not None or prefix_mask is not None
  if masked:
    demo_mask = jnp.ones((n,), bool) if demo_mask is None else demo_mask
    prefix_mask = jnp.ones((m,), bool) if prefix_mask is None else prefix_mask
    _check_keeps_one("demo_mask", demo_mask, "demos")
    mask = jnp.concatenate([demo_mask, prefix_mask] + ([jnp.ones((1,), bool)]
                                                       if include_query else []))
  else:
    mask = None

  attention = _attend(params, context, query, tau, mask)                     # (d_v,)

  s_raw = _scores(params, context, query, tau)                               # (n_ctx,)
  keys = jnp.dot(context, params.w_k.T, precision=HIGHEST)                   # (n_ctx, d_k)
  values = jnp.dot(context, params.w_v.T, precision=HIGHEST)                 # (n_ctx, d_v)
  if masked:
    s = jnp.where(mask, s_raw, -jnp.inf)
    values = jnp.where(mask[:, None], values, 0.0)
    # A masked anchor takes the place of a kept one of its group (coefficient 0), so
    # the max-shifts of the log-space sums in DualWeights are those of the unpadded W.
    donor0 = keys[jnp.argmax(demo_mask)]                                     # (d_k,)
    anchors0 = jnp.where(demo_mask[:, None], keys[:n], donor0)
    tail_mask = mask[n:]
    donor_t = (jnp.where(jnp.any(tail_mask), keys[n:][jnp.argmax(tail_mask)], donor0)
               if tail_mask.shape[0] else donor0)
    keys = jnp.concatenate([anchors0, jnp.where(tail_mask[:, None], keys[n:], donor_t)])
    n_kept = jnp.sum(demo_mask).astype(dtype)
    max_abs_score = jnp.max(jnp.where(mask, jnp.abs(s_raw), 0.0))
  else:
    s = s_raw
    n_kept = jnp.asarray(n, dtype)
    max_abs_score = jnp.max(jnp.abs(s))
  log_partition = jax.nn.logsumexp(s)
  w0 = DualWeights(values[:n], keys[:n], tau, -log_partition)
  dw = DualWeights(values[n:], keys[n:], tau, -log_partition)
  q = jnp.dot(params.w_q, query, precision=HIGHEST)                          # (d_k,)
  reference = (w0 + dw).apply(q)                                             # (d_v,)

  if masked:
    log_p = jnp.where(mask, s - log_partition, 0.0)
    entropy = -jnp.sum(jnp.where(mask, jnp.exp(log_p) * log_p, 0.0))
  else:
    log_p = s - log_partition
    entropy = -jnp.sum(jnp.exp(log_p) * log_p)
  log_eta = jnp.log(n_kept) - jnp.log(jnp.asarray(2.0, dtype)) - log_partition
  out = Decomposition(attention=attention, reference=reference, w0=w0, dw=dw,
                      log_partition=log_partition, eta=jnp.exp(log_eta), log_eta=log_eta,
                      entropy=entropy, scores=s, max_abs_score=max_abs_score)
  return _checks.poison_if_nonfinite(
      out, *params, demos, prefix, query, positive=(tau, n_kept),
      names=("params.w_q", "params.w_k", "params.w_v", "demos", "prefix", "query"),
      positive_names=("tau", "the number of demonstrations kept by demo_mask"))


def implicit_learning_rate(params: AttentionParams, demos: Float[ArrayLike, "N d"],
                           prefix: Float[ArrayLike, "M d"] | Sequence[Float[ArrayLike, " d"]]
                           | None = None,
                           query: Float[ArrayLike, " d"] | None = None, *,
                           tau: Real[ArrayLike, ""] = 1.0, include_query: bool = True,
                           demo_mask: Bool[ArrayLike, " N"] | None = None,
                           prefix_mask: Bool[ArrayLike, " M"] | None = None) -> Float[Array, ""]:
  """eta* = N / (2 D'), the learning rate at which one KD step gives W_0 (C2, C7).

  Same arguments as :func:`decompose`. eta* depends on the query through D'.
  Claim ``kd-step`` / ``lr-proxy``.
  """
  if query is None:
    raise _missing_query(demos, prefix)
  return decompose(params, demos, prefix, query, tau=tau, include_query=include_query,
                   demo_mask=demo_mask, prefix_mask=prefix_mask).eta
