"""C1 ``thm3.1``: attention is the reference model with W_0 + dW (identity).

    h(x') = sum_j softmax_j W^V x_j = (W_0 + dW) phi(W^Q x')

(docs/THEORY.md, C1). The error is measured in units of sum_j p_j ||W^V x_j||,
the magnitude of the convex combination's terms (|h| itself can cancel to 0),
and compared with :func:`identity_tolerance`.

This module also owns the prompt generator every prompt claim (C1, C2, C3, C7)
samples from: :func:`scaled_prompt`, a random prompt rescaled so that its
largest |score| is a given value ("a prompt at score scale 10^u").

Tested by tests/test_attention.py and tests/test_claims.py; shown in figure F1.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from icl_kd import attention, generators
from icl_kd.attention import AttentionParams
from icl_kd.claims.base import Claim
from icl_kd.claims.checks import IdentityCheck, identity_tolerance

MAX_ERROR = 2.0
"""The largest C1 error the check can produce: h(x') and (W_0 + dW) phi(W^Q x') are each a
convex combination of the values W^V x_j, so each has norm at most the unit
sum_j p_j ||W^V x_j|| and their difference at most twice it. A tolerance at or above it
cannot be failed: such an instance is vacuous (float32 beyond max|s| = 2e6)."""


class PromptBucket(NamedTuple):
  """Shapes of a prompt: N demonstrations, M prefix tokens, dims, and self-attention."""
  n: int
  m: int
  d: int
  d_k: int
  d_v: int
  include_query: bool = True


class Prompt(NamedTuple):
  """One prompt: the layer's parameters, the tokens and the temperature."""
  params: AttentionParams
  demos: jax.Array     # (N, d)
  prefix: jax.Array    # (M, d), M >= 0
  query: jax.Array     # (d,)
  tau: jax.Array       # ()


def scaled_prompt(key, bucket, dtype, *, max_abs_score, tau=1.0,
                  token_scale=1.0) -> Prompt:
  """A random prompt whose largest |score| <W^K x_j, W^Q x'>/tau is ``max_abs_score``.

  W^Q, W^K, W^V from :func:`icl_kd.init_params`, tokens i.i.d. N(0, token_scale^2 I);
  then W^Q is rescaled so that max_j |s_j| over the context (demonstrations,
  prefix, query) equals ``max_abs_score`` exactly: the prompt "at score scale
  10^u" for max_abs_score = 10^u.

  Args:
    key: a PRNG key (split once into params, demos, prefix, query).
    bucket: a :class:`PromptBucket` (or any tuple starting n, m, d, d_k, d_v).
    dtype: float32 or float64.
    max_abs_score: the target largest |score| (> 0; may be traced).
    tau: the temperature (may be traced).
    token_scale: the standard deviation of every token coordinate.
  Returns:
    A :class:`Prompt`.
  """
  import icl_kd  # the package root, for init_params
  n, m, d, d_k, d_v = tuple(bucket)[:5]
  k_par, k_demo, k_pre, k_q = jax.random.split(key, 4)
  params = icl_kd.init_params(d, d_k, d_v, key=k_par, dtype=dtype)
  demos = generators.normal(k_demo, (n, d), dtype) * token_scale
  prefix = generators.normal(k_pre, (m, d), dtype) * token_scale
  query = generators.normal(k_q, (d,), dtype) * token_scale
  tau = jnp.asarray(tau, dtype)
  context = jnp.concatenate([demos, prefix, query[None]])                  # (N + M + 1, d)
  raw = jnp.dot(jnp.dot(context, params.w_k.T), jnp.dot(params.w_q, query)) / tau
  w_q = params.w_q * (jnp.asarray(max_abs_score, dtype) / jnp.max(jnp.abs(raw)))
  return Prompt(params._replace(w_q=w_q), demos, prefix, query, tau)


def sample_prompt(key, bucket: PromptBucket, dtype) -> dict:
  """The instance of the prompt claims (C1, C2, C3, C7).

  A :func:`scaled_prompt` at score scale 10^u, u ~ U(-3, 3), with
  tau ~ logU(1/4, 4), plus 32 Gaussian directions ``omega`` (d_k,) for the
  positive random features of the C2 autodiff check.
  """
  k_prompt, k_scale, k_tau, k_omega = jax.random.split(key, 4)
  log10_scale = generators.uniform(k_scale, (), dtype, -3.0, 3.0)
  tau = jnp.exp(generators.uniform(k_tau, (), dtype, math.log(0.25), math.log(4.0)))
  p = scaled_prompt(k_prompt, bucket, dtype, max_abs_score=10.0 ** log10_scale, tau=tau)
  return dict(w_q=p.params.w_q, w_k=p.params.w_k, w_v=p.params.w_v, demos=p.demos,
              prefix=p.prefix, query=p.query, tau=p.tau,
              omega=generators.normal(k_omega, (32, bucket.d_k), dtype))


def prompt_params(inst: dict) -> AttentionParams:
  """The AttentionParams of a prompt instance."""
  return AttentionParams(inst["w_q"], inst["w_k"], inst["w_v"])


def prompt_tail(inst: dict, bucket: PromptBucket) -> jax.Array:
  """The tokens that make dW: the prefix, then the query when it attends to itself."""
  if bucket.include_query:
    return jnp.concatenate([inst["prefix"], inst["query"][None]])
  return inst["prefix"]


def decompose_prompt(inst: dict, bucket: PromptBucket) -> attention.Decomposition:
  """:func:`icl_kd.decompose` of a prompt instance: the prompt group's shared work."""
  return attention.decompose(prompt_params(inst), inst["demos"], inst["prefix"], inst["query"],
                             tau=inst["tau"], include_query=bucket.include_query)


class C1Error(NamedTuple):
  """The C1 error of one prompt.

  Attributes:
    error: ||h(x') - (W_0 + dW) phi(W^Q x')|| / unit.
    tolerance: :func:`identity_tolerance` at the prompt's largest |score|.
    unit: sum_j p_j ||W^V x_j|| over the context (p the attention weights).
    max_abs_score: max_j |s_j|.
    vacuous: tolerance >= :data:`MAX_ERROR`: the check cannot fail on this prompt (e.g.
      float32 with scores beyond 2e6), so ``error <= tolerance`` says nothing.
  """
  error: jax.Array
  tolerance: jax.Array
  unit: jax.Array
  max_abs_score: jax.Array
  vacuous: jax.Array


def c1_error(params: AttentionParams, demos, prefix, query, *, tau=1.0, include_query=True,
             decomposition: attention.Decomposition | None = None) -> C1Error:
  """The relative error of C1 (``thm3.1``) on one prompt, and its tolerance.

      error = ||h(x') - (W_0 + dW) phi(W^Q x')|| / sum_j p_j ||W^V x_j||

  where j runs over the context (demonstrations, prefix, and x' when it attends
  to itself) and p_j = softmax_j(<W^K x_j, W^Q x'>/tau). The claim holds on the
  prompt when ``error <= tolerance`` (docs/THEORY.md, C1). Works on any
  parameters and tokens (e.g. a pretrained head's); jittable and vmappable.

  Args:
    params: AttentionParams (W^Q, W^K, W^V).
    demos: (N, d) demonstrations, N >= 1.
    prefix: (M, d) query-prefix tokens, M >= 0; None (or []) for no prefix.
    query: (d,) the query token.
    tau: softmax temperature > 0.
    include_query: whether x' attends to itself.
    decomposition: ``icl_kd.decompose(...)`` of the same prompt, when already
      computed (it is not recomputed).
  Returns:
    A :class:`C1Error`.
  """
  out = decomposition if decomposition is not None else attention.decompose(
      params, demos, prefix, query, tau=tau, include_query=include_query)
  demos = jnp.asarray(demos)
  if prefix is None or (isinstance(prefix, (list, tuple)) and len(prefix) == 0):
    prefix = jnp.zeros((0, demos.shape[-1]), demos.dtype)                  # M = 0
  parts = [demos, prefix] + ([query[None]] if include_query else [])
  context = jnp.concatenate(parts)                                          # (N + M [+1], d)
  p = jnp.exp(out.scores - out.log_partition)                               # (N + M [+1],)
  unit = jnp.sum(p * jnp.linalg.norm(jnp.dot(context, params.w_v.T), axis=-1))
  err = jnp.linalg.norm(out.attention - out.reference) / unit
  tol = identity_tolerance(out.attention.dtype, out.max_abs_score)
  return C1Error(err, tol, unit, out.max_abs_score, tol >= MAX_ERROR)


def compute(inst, bucket: PromptBucket, shared) -> IdentityCheck:
  """C1 on one prompt instance: ``error`` in units of sum_j p_j ||W^V x_j||."""
  e = c1_error(prompt_params(inst), inst["demos"], inst["prefix"], inst["query"],
               tau=inst["tau"], include_query=bucket.include_query, decomposition=shared)
  return IdentityCheck(e.error, e.tolerance, max_error=MAX_ERROR)


PROMPTS = (PromptBucket(1, 0, 3, 2, 1, True), PromptBucket(32, 0, 8, 8, 8, True),
           PromptBucket(16, 4, 6, 4, 3, True), PromptBucket(12, 3, 5, 3, 2, False))
PREFIXED = (PromptBucket(16, 4, 6, 4, 3, True), PromptBucket(8, 1, 4, 4, 4, False),
            PromptBucket(24, 8, 8, 4, 8, True))

CLAIMS = (
    Claim(id="thm3.1", theory="C1",
          statement="h(x') == (W_0 + dW) phi(W^Q x') [rel. error <= 1e-12|1e-5 x max(1, max|s|/10)]",
          buckets=PROMPTS, sample=sample_prompt, compute=compute, prepare=decompose_prompt,
          tests=("tests/test_attention.py", "tests/test_claims.py"), figure="F1",
          group="prompt"),
)
