"""C5 ``thm4.1``: the bias of the distilled weights is linear in MMD.

For samples x_p ~ P and x_q ~ Q, dW_PQ = W_0(P_hat) - W_0(Q_hat) with
W_0(P) = c eta E_P[W^V x phi(W^K x)^T] (c = 2, the paper's Eq. 12):

- ``thm4.1-identity`` (identity): ||dW_PQ||_HS == c eta MMD_kV(P_hat, Q_hat),
  error in units of the terms the two sides cancel, tolerance
  :func:`identity_tolerance` at scale n + m;
- ``thm4.1-bound`` (bound): ||dW_PQ||_HS <= c eta ||W^V||_op MMD_kx;
- ``thm4.1-literal`` (conjecture): the paper's literal form
  eta M_V M_x M_phi MMD_k with a Gaussian k of median-heuristic bandwidth.

The three share one :func:`icl_kd.bounds.distillation_bias` per instance (the
group's ``prepare``). This module also owns the pair sampler of C5 and C6.

Tested by tests/test_bounds.py and tests/test_claims.py; shown in figure F4.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from icl_kd import bounds, distributions
from icl_kd.attention import AttentionParams
from icl_kd.claims.base import BoundCheck, Claim, ConjectureCheck, IdentityCheck, identity_tolerance

TARGET_SAMPLE = 64   # points of Q for the C6 risk


class PairBucket(NamedTuple):
  """n points of P, m of Q, in R^d; W^K (d_k, d) and W^V (d_v, d)."""
  n: int
  m: int
  d: int
  d_k: int
  d_v: int


def pair_distributions(key, d: int, dtype):
  """P = uniform unit ball; Q = a ball shifted by |s| ~ U(0, 2) and scaled by U(0.5, 1.5)."""
  k_dir, k_len, k_scale = jax.random.split(key, 3)
  direction = jax.random.normal(k_dir, (d,), dtype)
  shift = direction / jnp.linalg.norm(direction) * jax.random.uniform(k_len, (), dtype, 0.0, 2.0)
  scale = jax.random.uniform(k_scale, (), dtype, 0.5, 1.5)
  return (distributions.uniform_ball(d, dtype=dtype),
          distributions.uniform_ball(d, shift=shift, scale=scale, dtype=dtype))


def sample_pair(key, bucket: PairBucket, dtype) -> dict:
  """Params, x_p ~ P (n), x_q ~ Q (m), x_target ~ Q (64), query ~ Q, eta = 1/2, tau = 1.

  P and Q from :func:`pair_distributions` (the key of instance i fixes them);
  W^Q, W^K, W^V from :func:`icl_kd.init_params` at a scale ~ U(0.3, 2).
  """
  import icl_kd
  n, m, d, d_k, d_v = bucket
  ks = jax.random.split(key, 7)
  params = icl_kd.init_params(d, d_k, d_v, key=ks[0], dtype=dtype,
                              scale=jax.random.uniform(ks[1], (), dtype, 0.3, 2.0))
  p, q = pair_distributions(ks[2], d, dtype)
  return dict(w_q=params.w_q, w_k=params.w_k, w_v=params.w_v,
              x_p=p.sample(n, key=ks[3]), x_q=q.sample(m, key=ks[4]),
              x_target=q.sample(TARGET_SAMPLE, key=ks[5]), query=q.sample(1, key=ks[6])[0],
              log_eta=jnp.asarray(math.log(0.5), dtype), tau=jnp.asarray(1.0, dtype))


def pair_params(inst) -> AttentionParams:
  return AttentionParams(inst["w_q"], inst["w_k"], inst["w_v"])


def bias(inst, bucket=None) -> bounds.DistillationBias:
  """Every side of C5 for a pair instance: the pair group's shared work."""
  del bucket
  return bounds.distillation_bias(pair_params(inst), inst["x_p"], inst["x_q"],
                                  log_eta=inst["log_eta"], tau=inst["tau"])


def project_pair(inst, bucket) -> dict:
  """Back inside the assumptions: x_p in the unit ball, Q's samples in the ball of radius 3."""
  del bucket

  def clip(x, radius):
    norms = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x * jnp.minimum(1.0, radius / jnp.maximum(norms, 1e-30))
  out = dict(inst)
  out["x_p"] = clip(inst["x_p"], 1.0)
  # Q's support is not fixed by the claim (any distribution); keep it bounded by 3.
  out["x_q"] = clip(inst["x_q"], 3.0)
  out["x_target"] = clip(inst["x_target"], 3.0)
  out["query"] = clip(inst["query"], 3.0)
  return out


def compute_identity(inst, bucket, shared) -> IdentityCheck:
  """||dW||_HS == 2 eta MMD_kV: |lhs^2 - rhs^2| / (cancelled terms) <= tol(n + m)."""
  n_terms = inst["x_p"].shape[0] + inst["x_q"].shape[0]
  return IdentityCheck(shared.identity_residual, identity_tolerance(inst["w_q"].dtype, n_terms))


def compute_bound(inst, bucket, shared) -> BoundCheck:
  return BoundCheck(shared.log_lhs, shared.log_bound_rhs)


def compute_literal(inst, bucket, shared) -> ConjectureCheck:
  return ConjectureCheck(shared.log_lhs, shared.log_literal_rhs)


PAIRS = (PairBucket(16, 16, 3, 3, 2), PairBucket(24, 12, 5, 4, 3))
_TESTS = ("tests/test_bounds.py", "tests/test_claims.py")

CLAIMS = (
    Claim("thm4.1-identity", "C5", IdentityCheck,
          "||W_0(P) - W_0(Q)||_HS == 2 eta MMD_kV (biased), error in units of cancelled terms",
          PAIRS, sample_pair, compute_identity, bias, tests=_TESTS, figure="F4", chunk=4096,
          project=project_pair, group="pair"),
    Claim("thm4.1-bound", "C5", BoundCheck,
          "||W_0(P) - W_0(Q)||_HS <= 2 eta ||W^V||_op MMD_kx",
          PAIRS, sample_pair, compute_bound, bias, tests=_TESTS, figure="F4", chunk=4096,
          project=project_pair, group="pair"),
    Claim("thm4.1-literal", "C5", ConjectureCheck,
          "||dW||_F <= eta M_V M_x M_phi MMD_k, Gaussian k (median bandwidth): the paper's form",
          PAIRS, sample_pair, compute_literal, bias, tests=_TESTS, figure="F4", chunk=4096,
          project=project_pair, group="pair"),
)
