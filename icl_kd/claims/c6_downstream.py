"""C6 ``thm4.2``: consequences downstream of the distillation bias.

- ``thm4.2-prediction``: ||dW_PQ phi(z)|| <= ||dW_PQ||_HS exp(|z|^2 / (2 tau)), z = W^Q x';
- ``thm4.2-risk``: sqrt(R_Q(W_0(P))) <= sqrt(R_Q(W_0(Q))) + C ||dW_PQ||_HS.

Both follow from Cauchy-Schwarz and the triangle inequality (docs/THEORY.md,
C6). Instances are the pair instances of C5 (same group, same draws).

Tested by tests/test_bounds.py and tests/test_claims.py; shown in figure F5.
"""

from __future__ import annotations

import jax.numpy as jnp

from icl_kd import bounds
from icl_kd.claims.base import BoundCheck, Claim
from icl_kd.claims.c5_mmd_bias import PAIRS, bias, pair_params, project_pair, sample_pair


def compute_prediction(inst, bucket, shared) -> BoundCheck:
  g = bounds.prediction_gap(pair_params(inst), inst["x_p"], inst["x_q"], inst["query"],
                            log_eta=inst["log_eta"], tau=inst["tau"])
  return BoundCheck(g.log_lhs, g.log_rhs)


def risk_logs(r: bounds.RiskBound):
  """(log lhs, log rhs) of a RiskBound, formed from its parts so that no side overflows first.

  log lhs = log(R_Q(W_0(P))) / 2;  log rhs = logaddexp(log(R_Q(W_0(Q))) / 2, log C + log ||dW||).
  """
  log_lhs = 0.5 * jnp.log(r.risk_p)
  log_rhs = jnp.logaddexp(0.5 * jnp.log(r.risk_q), r.log_feature_bound + jnp.log(r.weight_gap_norm))
  return log_lhs, log_rhs


def compute_risk(inst, bucket, shared) -> BoundCheck:
  r = bounds.risk_bound(pair_params(inst), inst["x_p"], inst["x_q"], inst["x_target"],
                        log_eta=inst["log_eta"], tau=inst["tau"])
  return BoundCheck(*risk_logs(r))


_TESTS = ("tests/test_bounds.py", "tests/test_claims.py")

CLAIMS = (
    Claim("thm4.2-prediction", "C6", BoundCheck,
          "||dW_PQ phi(z)|| <= ||dW_PQ||_HS exp(|z|^2/(2 tau))",
          PAIRS, sample_pair, compute_prediction, bias, tests=_TESTS, figure="F5", chunk=4096,
          project=project_pair, group="pair"),
    Claim("thm4.2-risk", "C6", BoundCheck,
          "sqrt(R_Q(W_0(P))) <= sqrt(R_Q(W_0(Q))) + C ||dW_PQ||_HS",
          PAIRS, sample_pair, compute_risk, bias, tests=_TESTS, figure="F5", chunk=4096,
          project=project_pair, group="pair"),
)
