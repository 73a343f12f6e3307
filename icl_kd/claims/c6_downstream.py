"""C6 ``thm4.2``: consequences downstream of the distillation bias.

- ``thm4.2-prediction`` (consistency): ||dW_PQ phi(z)|| <= ||dW_PQ||_HS exp(|z|^2 / (2 tau)),
  z = W^Q x';
- ``thm4.2-risk`` (consistency): sqrt(R_Q(W_0(P))) <= sqrt(R_Q(W_0(Q))) + C ||dW_PQ||_HS;
- ``thm4.2-mmd`` (bound): ||dW_PQ phi(z)|| <= c eta ||W^V||_op MMD_kx exp(|z|^2 / (2 tau));
- ``thm4.2-literal`` (conjecture): the same with M_phi in place of exp(|z|^2 / (2 tau)).

The first two follow from Cauchy-Schwarz and the triangle inequality: a
failure is a bug of the toolkit, not evidence about the paper (docs/THEORY.md,
C6). Instances are the pair instances of C5 (same group, same draws).

Tested by tests/test_bounds.py and tests/test_claims.py; shown in figure F5.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from icl_kd import bounds
from icl_kd.claims.base import BoundCheck, Claim, ConjectureCheck, ConsistencyCheck
from icl_kd.claims.c5_mmd_bias import (PAIRS, bucket_convention, pair_params, prepare_pair,
                                       project_pair, sample_pair)


def compute_prediction(inst, bucket, shared) -> ConsistencyCheck:
  g = shared.prediction
  return ConsistencyCheck(g.log_lhs, g.log_rhs)


def compute_mmd(inst, bucket, shared) -> BoundCheck:
  g = shared.prediction
  return BoundCheck(g.log_lhs, g.log_mmd_rhs)


class LiteralExtras(NamedTuple):
  """Why ``thm4.2-literal`` fails where it does: its log ratio is the sum of the two fields.

  log(lhs / literal rhs) = log_mmd_ratio + log_query_over_m_phi, because the
  literal right side is ``thm4.2-mmd``'s with M_phi in place of ||phi(z)||.
  """
  log_mmd_ratio: jax.Array          # log(lhs / thm4.2-mmd's rhs): <= 0 where that bound holds
  log_query_over_m_phi: jax.Array   # |z|^2/(2 tau) - log M_phi: how far M_phi misses phi(z)


class LiteralEvents(NamedTuple):
  query_beyond_m_phi: jax.Array     # ||phi(W^Q x')|| > M_phi


def compute_literal(inst, bucket, shared) -> ConjectureCheck:
  """Both sides carry c here, so the ratio (and the verdict) is the same under both conventions.

  The extras split each instance's log ratio into the (proved) ``thm4.2-mmd`` ratio and the
  factor ||phi(z)|| / M_phi that the literal form leaves out (docs/THEORY.md, C6).
  """
  g = shared.prediction
  gap = g.log_feature_norm - g.log_feature_bound
  return ConjectureCheck(g.log_lhs, g.log_literal_rhs,
                         extras=LiteralExtras(g.log_lhs - g.log_mmd_rhs, gap),
                         events=LiteralEvents(gap > 0))


def compute_risk(inst, bucket, shared) -> ConsistencyCheck:
  r = bounds.risk_bound(pair_params(inst), inst["x_p"], inst["x_q"], inst["x_target"],
                        log_eta=inst["log_eta"], tau=inst["tau"],
                        convention=bucket_convention(bucket))
  return ConsistencyCheck(r.log_lhs, r.log_rhs)


_TESTS = ("tests/test_bounds.py", "tests/test_claims.py")

def _claim(cid, check, statement, compute):
  return Claim(cid, "C6", check, statement, PAIRS, sample_pair, compute, prepare_pair,
               tests=_TESTS, figure="F5", chunk=4096, project=project_pair, group="pair")


CLAIMS = (
    _claim("thm4.2-prediction", ConsistencyCheck,
           "||dW_PQ phi(z)|| <= ||dW_PQ||_HS exp(|z|^2/(2 tau)) (Cauchy-Schwarz)",
           compute_prediction),
    _claim("thm4.2-mmd", BoundCheck,
           "||dW_PQ phi(z)|| <= c eta ||W^V||_op MMD_kx exp(|z|^2/(2 tau))", compute_mmd),
    _claim("thm4.2-literal", ConjectureCheck,
           "||dW_PQ phi(z)|| <= c eta ||W^V||_op MMD_kx M_phi (M_phi for the query feature)",
           compute_literal),
    _claim("thm4.2-risk", ConsistencyCheck,
           "sqrt(R_Q(W_0(P))) <= sqrt(R_Q(W_0(Q))) + C ||dW_PQ||_HS (triangle inequality)",
           compute_risk),
)
