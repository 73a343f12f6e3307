"""In-context task families, with knobs that shift prompts away from queries.

Two families:

- Linear regression (Garg, Tsipras, Liang & Valiant, 2022, "What can
  transformers learn in-context? A case study of simple function classes"):
  a prompt holds N demonstrations (x_i, y_i = <w, x_i> + noise) with
  w ~ N(0, I_d) and x_i ~ N(0, I_d) (or U(-1/2, 1/2)^d as in von Oswald et
  al., 2023), then M queries x'_j whose labels are to be predicted.
- Token frequencies: a vocabulary of V embedded tokens; each prompt draws a
  distribution p over the vocabulary, its demonstrations are tokens drawn from
  p, and the target at a query token v is p(v). Softmax attention with keys
  that match equal tokens computes exactly the in-context frequency.

Distribution shift (docs/THEORY.md C5, E1): the demonstrations and the queries are
drawn from differently transformed input distributions, each described by a
:class:`Shift` (mean shift, covariance skew, subspace, scaling).

Samplers are single-prompt cores vmapped over prompt keys; the key is
keyword-only and the same key gives the same prompts.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from icl_kd import _checks, distributions

X_DISTS = ("gaussian", "uniform", "ball")


class Shift(NamedTuple):
  """A transformation of the input distribution x ~ P_0, applied in this order.

  Attributes:
    subspace: None, or k: x is projected onto a random k-dimensional subspace
      and rescaled by sqrt(d/k) (so E|x|^2 is kept). Static (it sets a shape).
    skew: covariance skew s: coordinate j is multiplied by
      exp(s (j/(d-1) - 1/2)) (condition number exp(2 s) of the covariance).
    scale: every x is multiplied by this factor.
    mean: a mean shift of this length along a random unit direction u (one per
      prompt, shared by the demonstrations and queries that use this Shift).
  """
  subspace: int | None = None
  skew: float = 0.0
  scale: float = 1.0
  mean: float = 0.0


NO_SHIFT = Shift()


def _positive_int(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return value


def _check_shift(name: str, shift: Shift, d: int) -> Shift:
  if not isinstance(shift, Shift):
    raise TypeError(f"{name} must be a Shift, got {type(shift).__name__}")
  if shift.subspace is not None:
    if isinstance(shift.subspace, bool) or not isinstance(shift.subspace, int) or not (
        1 <= shift.subspace <= d):
      raise ValueError(f"{name}.subspace must be None or an int in [1, d={d}], "
                       f"got {shift.subspace!r}")
  return shift


def shift_inputs(x: jax.Array, shift: Shift, *, key) -> jax.Array:
  """Applies a :class:`Shift` to the rows of ``x`` (n, d); returns (n, d).

      x -> scale * skew(P_k x sqrt(d/k)) + mean * u

  with P_k the projection onto a random k-dimensional subspace and u a random
  unit vector, both drawn from ``key``.
  """
  x = _checks.as_float_array("x", x, ndim=2)
  d = x.shape[1]
  shift = _check_shift("shift", shift, d)
  k_sub, k_dir = jax.random.split(key)
  static = lambda v, value: isinstance(v, (int, float)) and v == value  # a no-op knob
  if shift.subspace is not None and shift.subspace < d:
    basis, _ = jnp.linalg.qr(jax.random.normal(k_sub, (d, shift.subspace), x.dtype))  # (d, k)
    coords = jnp.dot(x, basis)                                              # (n, k)
    x = jnp.dot(coords, basis.T) * jnp.sqrt(d / shift.subspace)             # (n, d)
  if d > 1 and not static(shift.skew, 0.0):
    pos = jnp.arange(d, dtype=x.dtype) / (d - 1) - 0.5                      # (d,)
    x = x * jnp.exp(jnp.asarray(shift.skew, x.dtype) * pos)[None, :]
  if not static(shift.scale, 1.0):
    x = x * jnp.asarray(shift.scale, x.dtype)
  if static(shift.mean, 0.0):
    return x
  u = jax.random.normal(k_dir, (d,), x.dtype)
  u = u / jnp.linalg.norm(u)
  return x + jnp.asarray(shift.mean, x.dtype) * u[None, :]


def base_inputs(key, n: int, d: int, *, x_dist: str = "gaussian", dtype=jnp.float32) -> jax.Array:
  """(n, d) draws of the base input law P_0 (before any :class:`Shift`).

  ``x_dist``: "gaussian" N(0, I_d); "uniform" U(-1/2, 1/2)^d (von Oswald et al., 2023);
  "ball" uniform on the unit ball (:func:`icl_kd.distributions.uniform_ball`: bounded
  inputs, on which every moment of the softmax kernels exists).
  """
  if x_dist == "gaussian":
    return jax.random.normal(key, (n, d), dtype)
  if x_dist == "uniform":
    return jax.random.uniform(key, (n, d), dtype, minval=-0.5, maxval=0.5)
  if x_dist == "ball":
    return distributions.uniform_ball(d, dtype=dtype).sample(n, key=key)
  raise ValueError(f"x_dist must be one of {X_DISTS}, got {x_dist!r}")


class RegressionPrompts(NamedTuple):
  """A batch of linear-regression prompts.

  Attributes:
    xs: (B, N, d) demonstration inputs.
    ys: (B, N) demonstration labels <w, x_i> + noise.
    queries: (B, M, d) query inputs x'_j.
    targets: (B, M) noiseless query labels <w, x'_j>.
    w: (B, d) the task vectors.
  """
  xs: jax.Array
  ys: jax.Array
  queries: jax.Array
  targets: jax.Array
  w: jax.Array


def sample_regression(n_prompts: int, n_demos: int, d: int, *, key, n_queries: int = 1,
                      shift: Shift = NO_SHIFT, query_shift: Shift | None = NO_SHIFT,
                      noise_std=0.0, x_dist: str = "gaussian",
                      dtype=jnp.float32) -> RegressionPrompts:
  """Linear-regression prompts (Garg et al., 2022), demonstrations shifted by ``shift``.

      w ~ N(0, I_d),  x ~ shift(P_0),  y = <w, x> + noise_std * e,  x' ~ query_shift(P_0)

  with P_0 = N(0, I_d) (``x_dist="gaussian"``), U(-1/2, 1/2)^d (``"uniform"``,
  von Oswald et al., 2023) or uniform on the unit ball (``"ball"``; :func:`base_inputs`). The two shifts draw their random directions and
  subspaces independently, so equal non-trivial shifts still differ; with
  ``query_shift=None`` the queries share the demonstrations' shift, direction
  and subspace included (prompt and queries from one shifted distribution).

  Args:
    n_prompts, n_demos, d: batch size B, demonstrations N, input dimension d.
    key: PRNG key (keyword-only).
    n_queries: M queries per prompt.
    shift, query_shift: :class:`Shift` of the demonstrations and of the queries
      (None: the demonstrations' shift, with the same random draw).
    noise_std: label noise on the demonstrations (>= 0).
    x_dist: "gaussian", "uniform" or "ball".
    dtype: float dtype of the arrays.

  Returns:
    :class:`RegressionPrompts`.
  """
  for name, v in (("n_prompts", n_prompts), ("n_demos", n_demos), ("d", d),
                  ("n_queries", n_queries)):
    _positive_int(name, v)
  if x_dist not in X_DISTS:
    raise ValueError(f"x_dist must be one of {X_DISTS}, got {x_dist!r}")
  _check_shift("shift", shift, d)
  if query_shift is not None:
    _check_shift("query_shift", query_shift, d)
  noise_std = _checks.scalar_param("noise_std", noise_std, dtype, allow_zero=True)

  def one(k):
    kw, kx, kq, ks, kqs, ke = jax.random.split(k, 6)
    w = jax.random.normal(kw, (d,), dtype)                                  # (d,)
    xs = shift_inputs(base_inputs(kx, n_demos, d, x_dist=x_dist, dtype=dtype), shift, key=ks)
    q_base = base_inputs(kq, n_queries, d, x_dist=x_dist, dtype=dtype)
    if query_shift is None:
      qs = shift_inputs(q_base, shift, key=ks)
    else:
      qs = shift_inputs(q_base, query_shift, key=kqs)
    ys = jnp.dot(xs, w) + noise_std * jax.random.normal(ke, (n_demos,), dtype)
    return RegressionPrompts(xs, ys, qs, jnp.dot(qs, w), w)

  return jax.vmap(one)(jax.random.split(key, n_prompts))


def regression_tokens(xs: jax.Array, ys: jax.Array) -> jax.Array:
  """Demonstration tokens e_i = (x_i, y_i), (N, d+1), for one prompt."""
  xs = _checks.as_float_array("xs", xs, ndim=2)
  ys = _checks.as_float_array("ys", ys, ndim=1)
  _checks.check_dim("ys", ys, 0, xs.shape[0], "N, one label per row of xs")
  return jnp.concatenate([xs, ys[:, None]], axis=1)


def query_token(x: jax.Array) -> jax.Array:
  """Query token e' = (x', 0), (d+1,): the label slot is empty."""
  x = _checks.as_float_array("x", x, ndim=1)
  return jnp.concatenate([x, jnp.zeros((1,), x.dtype)])


class TokenPrompts(NamedTuple):
  """A batch of token-frequency prompts.

  Attributes:
    tokens: (B, N) demonstration token ids drawn from p.
    queries: (B, M) query token ids drawn from q (a shifted p).
    probs: (B, V) the prompt distribution p.
    targets: (B, M) p(query token), the quantity to estimate in context.
    embeddings: (V, d) token embeddings (shared by the batch).
  """
  tokens: jax.Array
  queries: jax.Array
  probs: jax.Array
  targets: jax.Array
  embeddings: jax.Array


def sample_token_frequencies(n_prompts: int, n_demos: int, vocab: int, d: int, *, key,
                             n_queries: int = 1, concentration=1.0, logit_shift=0.0,
                             temperature=1.0, dtype=jnp.float32) -> TokenPrompts:
  """Token-frequency prompts: estimate p(v) from N tokens drawn from p.

      E ~ N(0, I_d / d)^V,   l ~ N(0, concentration^2 I_V),   p = softmax(l),
      demonstrations v_i ~ p,   queries v'_j ~ q = softmax((l + logit_shift * u) / temperature)

  with u a random unit vector in R^V (mean shift in logit space) and
  ``temperature`` sharpening (< 1) or flattening (> 1) the query distribution.
  The target is p(v'_j): the prompt's distribution at the query token.

  Args:
    n_prompts, n_demos, vocab, d: B, N, V and the embedding dimension.
    key: PRNG key (keyword-only).
    n_queries: M queries per prompt.
    concentration: spread of the logits of p (0 gives the uniform p).
    logit_shift, temperature: shift of the query distribution away from p.
    dtype: float dtype.
  """
  for name, v in (("n_prompts", n_prompts), ("n_demos", n_demos), ("vocab", vocab), ("d", d),
                  ("n_queries", n_queries)):
    _positive_int(name, v)
  concentration = _checks.scalar_param("concentration", concentration, dtype, allow_zero=True)
  logit_shift = _checks.scalar_param("logit_shift", logit_shift, dtype, positive=False)
  temperature = _checks.scalar_param("temperature", temperature, dtype)
  k_emb, k_prompts = jax.random.split(key)
  embeddings = jax.random.normal(k_emb, (vocab, d), dtype) / jnp.sqrt(jnp.asarray(d, dtype))

  def one(k):
    kl, ku, kt, kq = jax.random.split(k, 4)
    logits = concentration * jax.random.normal(kl, (vocab,), dtype)        # (V,)
    u = jax.random.normal(ku, (vocab,), dtype)
    u = u / jnp.linalg.norm(u)
    q_logits = (logits + logit_shift * u) / temperature
    tokens = jax.random.categorical(kt, logits, shape=(n_demos,))
    queries = jax.random.categorical(kq, q_logits, shape=(n_queries,))
    probs = jax.nn.softmax(logits)
    return tokens, queries, probs, probs[queries]

  tokens, queries, probs, targets = jax.vmap(one)(jax.random.split(k_prompts, n_prompts))
  return TokenPrompts(tokens, queries, probs, targets, embeddings)
