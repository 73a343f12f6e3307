"""C5 ``thm4.1``: the bias of the distilled weights is linear in MMD.

For samples x_p ~ P and x_q ~ Q, dW_PQ = W_0(P_hat) - W_0(Q_hat) with
W_0(P) = c eta E_P[W^V x phi(W^K x)^T] (c = 2, the paper's Eq. 12):

- ``thm4.1-identity`` (identity): ||dW_PQ||_HS == c eta MMD_kV(P_hat, Q_hat),
  error in units of the terms the two sides cancel, tolerance
  :func:`identity_tolerance` at scale n + m;
- ``thm4.1-bound`` (bound): ||dW_PQ||_HS <= c eta ||W^V||_op MMD_kx;
- ``thm4.1-literal-gaussian``, ``-softmax``, ``-normalised``, ``-tv``
  (conjectures): the paper's literal form eta M_V M_x M_phi D(P, Q) under each
  reading of D (``thm4.1-literal`` is an alias of the Gaussian reading).

The convention c (2: "eq12", the default; 1: "half") is a static field of the
bucket. Every literal check also counts its violations under both conventions
(``events.violated_eq12``, ``events.violated_half``): the literal right side
has no c, so ratio(half) = ratio(eq12) / 2 exactly, and the report attributes
violations that vanish under ``half`` to the factor c.

All share one :func:`icl_kd.bounds.distillation_bias`, one
:func:`icl_kd.bounds.literal_readings` and one :func:`icl_kd.bounds.prediction_gap`
per instance (the group's ``prepare``). This module also owns the pair sampler
of C5 and C6.

Tested by tests/test_bounds.py and tests/test_claims.py; shown in figure F4.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from icl_kd import bounds, distributions
from icl_kd.attention import AttentionParams
from icl_kd.claims.base import (BoundCheck, Claim, ConjectureCheck, IdentityCheck, bound_slack,
                                convention_factor, identity_tolerance)

TARGET_SAMPLE = 64   # points of Q for the C6 risk


class PairBucket(NamedTuple):
  """n points of P, m of Q, in R^d; W^K (d_k, d) and W^V (d_v, d); the convention of c."""
  n: int
  m: int
  d: int
  d_k: int
  d_v: int
  convention: str = "eq12"


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
  n, m, d, d_k, d_v = tuple(bucket)[:5]
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


class PairShared(NamedTuple):
  """The pair group's shared work: every side of C5 and of C6's prediction statements."""
  bias: bounds.DistillationBias
  readings: bounds.LiteralReadings
  prediction: bounds.PredictionGap


def bucket_convention(bucket) -> str:
  """The convention ('eq12' or 'half') a C5/C6 bucket carries; 'eq12' when it carries none."""
  return getattr(bucket, "convention", "eq12") if bucket is not None else "eq12"


def bias(inst, bucket=None) -> bounds.DistillationBias:
  """Every side of C5 for a pair instance (``bucket.convention``: c)."""
  return bounds.distillation_bias(pair_params(inst), inst["x_p"], inst["x_q"],
                                  log_eta=inst["log_eta"], tau=inst["tau"],
                                  convention=bucket_convention(bucket))


def prepare_pair(inst, bucket) -> PairShared:
  """The pair group's shared work, once per instance."""
  kw = dict(log_eta=inst["log_eta"], tau=inst["tau"], convention=bucket_convention(bucket))
  params = pair_params(inst)
  return PairShared(bias(inst, bucket),
                    bounds.literal_readings(params, inst["x_p"], inst["x_q"], **kw),
                    bounds.prediction_gap(params, inst["x_p"], inst["x_q"], inst["query"], **kw))


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
  return IdentityCheck(shared.bias.identity_residual,
                       identity_tolerance(inst["w_q"].dtype, n_terms))


def compute_bound(inst, bucket, shared) -> BoundCheck:
  return BoundCheck(shared.bias.log_lhs, shared.bias.log_bound_rhs)


class LiteralEvents(NamedTuple):
  """Violations of the instance's literal reading under each convention."""
  violated_eq12: jax.Array
  violated_half: jax.Array


class GaussianExtras(NamedTuple):
  log_ratio_grid: jax.Array   # log lhs/rhs at the worst bandwidth of the fixed grid
  bandwidth: jax.Array        # the median-heuristic bandwidth


def convention_events(log_lhs, log_rhs, bucket, dtype) -> LiteralEvents:
  """lhs > rhs (1 + slack) under c = 2 and under c = 1 (lhs scales with c, rhs does not)."""
  c = convention_factor(bucket_convention(bucket))
  lr = log_lhs - log_rhs
  tol = math.log1p(bound_slack(dtype))
  return LiteralEvents(lr + math.log(2.0 / c) > tol, lr + math.log(1.0 / c) > tol)


def _literal(reading: str):
  field = bounds.READINGS[reading]

  def compute(inst, bucket, shared) -> ConjectureCheck:
    r = shared.readings
    rhs = getattr(r, field)
    events = convention_events(r.log_lhs, rhs, bucket, inst["x_p"].dtype)
    extras = (GaussianExtras(r.log_lhs - r.log_rhs_gaussian_worst, r.bandwidth)
              if reading == "gaussian" else ())
    return ConjectureCheck(r.log_lhs, rhs, extras, events)
  compute.__name__ = f"compute_literal_{reading}"
  compute.__doc__ = f"C5 literal form, {reading} reading: ||dW||_F <= eta M_V M_x M_phi D."
  return compute


compute_literal_gaussian = _literal("gaussian")
compute_literal_softmax = _literal("softmax")
compute_literal_normalised = _literal("normalised")
compute_literal_tv = _literal("tv")
compute_literal = compute_literal_gaussian    # the alias thm4.1-literal


PAIRS = (PairBucket(16, 16, 3, 3, 2), PairBucket(24, 12, 5, 4, 3))
_TESTS = ("tests/test_bounds.py", "tests/test_claims.py")
LITERAL_IDS = {"thm4.1-literal-gaussian": "gaussian", "thm4.1-literal-softmax": "softmax",
               "thm4.1-literal-normalised": "normalised", "thm4.1-literal-tv": "tv"}
ALIASES = {"thm4.1-literal": "thm4.1-literal-gaussian"}


def _pair_claim(cid, check, statement, compute):
  return Claim(cid, "C5", check, statement, PAIRS, sample_pair, compute, prepare_pair,
               tests=_TESTS, figure="F4", chunk=4096, project=project_pair, group="pair")


CLAIMS = (
    _pair_claim("thm4.1-identity", IdentityCheck,
                "||W_0(P) - W_0(Q)||_HS == c eta MMD_kV (biased), error in units of cancelled terms",
                compute_identity),
    _pair_claim("thm4.1-bound", BoundCheck, "||W_0(P) - W_0(Q)||_HS <= c eta ||W^V||_op MMD_kx",
                compute_bound),
    _pair_claim("thm4.1-literal-gaussian", ConjectureCheck,
                "||dW||_F <= eta M_V M_x M_phi MMD_k, k Gaussian (median bandwidth; grid in JSON)",
                compute_literal_gaussian),
    _pair_claim("thm4.1-literal-softmax", ConjectureCheck,
                "||dW||_F <= eta M_V M_x M_phi MMD_k, k = kappa(W^K x, W^K y) (phi's own)",
                compute_literal_softmax),
    _pair_claim("thm4.1-literal-normalised", ConjectureCheck,
                "||dW||_F <= eta M_V M_x M_phi MMD_k, k = k_x / (M_x M_phi)^2",
                compute_literal_normalised),
    _pair_claim("thm4.1-literal-tv", ConjectureCheck,
                "||dW||_F <= eta M_V M_x M_phi ||P - Q||_1 (total variation)",
                compute_literal_tv),
)
