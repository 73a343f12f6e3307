"""C6 ``thm4.2``: consequences downstream of the distillation bias.

- ``thm4.2-prediction`` (consistency): ||dW_PQ phi(z)|| <= ||dW_PQ||_HS exp(|z|^2 / (2 tau)),
  z = W^Q x';
- ``thm4.2-risk`` (consistency): sqrt(R_Q(W_0(P))) <= sqrt(R_Q(W_0(Q))) + C ||dW_PQ||_HS;
- ``thm4.2-mmd`` (consistency): ||dW_PQ phi(z)|| <= c eta ||W^V||_op MMD_kx exp(|z|^2 / (2 tau)),
  the corrected chain: ``thm4.1-bound`` times Cauchy-Schwarz;
- ``thm4.2-literal`` (conjecture): the corrected chain with M_phi in place of
  ||phi(z)|| = exp(|z|^2 / (2 tau)), as the paper writes it.

The first three follow from Cauchy-Schwarz, the triangle inequality and
``thm4.1-bound``: a failure is a bug of the toolkit, not evidence about the
paper (docs/THEORY.md, C6). Instances are the pair instances of C5 (same group,
same draws). M_phi is taken over the pooled samples; ``events`` and ``extras``
also give it over the sampler's supports (:func:`support_constants`).

Tested by tests/test_bounds.py and tests/test_claims.py; shown in figure F5.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

import math

from icl_kd import bounds, counterexamples
from icl_kd.claims.base import Claim, Outcome
from icl_kd.claims.c5_mmd_bias import (PAIRS, bucket_convention, pair_params, prepare_pair,
                                       project_pair, sample_pair, witnesses_of)
from icl_kd.claims.checks import ConjectureCheck, ConsistencyCheck, bound_slack, capped_exp


def compute_prediction(inst, bucket, shared) -> ConsistencyCheck:
  g = shared.prediction
  return ConsistencyCheck(g.log_lhs, g.log_rhs)


def compute_mmd(inst, bucket, shared) -> ConsistencyCheck:
  g = shared.prediction
  return ConsistencyCheck(g.log_lhs, g.log_mmd_rhs)


class LiteralExtras(NamedTuple):
  """Why ``thm4.2-literal`` fails where it does: its log ratio is the sum of the two fields.

  log(lhs / literal rhs) = log_mmd_ratio + log_query_over_m_phi, because the
  literal right side is ``thm4.2-mmd``'s with M_phi in place of ||phi(z)||.
  """
  log_mmd_ratio: jax.Array          # log(lhs / thm4.2-mmd's rhs): <= 0 where that bound holds
  log_query_over_m_phi: jax.Array   # |z|^2/(2 tau) - log M_phi: how far M_phi misses phi(z)
  log_support_gap: jax.Array        # log(M_phi over the supports / M_phi over the samples)


class LiteralEvents(NamedTuple):
  query_beyond_m_phi: jax.Array          # ||phi(W^Q x')|| > M_phi (over the samples)
  query_beyond_m_phi_support: jax.Array  # ||phi(W^Q x')|| > M_phi (over the supports)
  violated_support: jax.Array            # the literal form with the supports' M_phi


def compute_literal(inst, bucket, shared) -> ConjectureCheck:
  """Both sides carry c here, so the ratio (and the verdict) is the same under both conventions.

  The extras split each instance's log ratio into the (proved) ``thm4.2-mmd`` ratio and the
  factor ||phi(z)|| / M_phi that the literal form leaves out (docs/THEORY.md, C6).
  """
  g = shared.prediction
  gap = g.log_feature_norm - g.log_feature_bound
  support = shared.log_support_gap_phi
  tol = math.log1p(bound_slack(g.log_lhs.dtype))
  return ConjectureCheck(g.log_lhs, g.log_literal_rhs,
                         extras=LiteralExtras(g.log_lhs - g.log_mmd_rhs, gap, support),
                         events=LiteralEvents(gap > 0, gap > support,
                                              g.log_lhs - g.log_literal_rhs - support > tol))


def compute_risk(inst, bucket, shared) -> ConsistencyCheck:
  r = bounds.risk_bound(pair_params(inst), inst["x_p"], inst["x_q"], inst["x_target"],
                        log_eta=inst["log_eta"], tau=inst["tau"],
                        convention=bucket_convention(bucket))
  return ConsistencyCheck(r.log_lhs, r.log_rhs)


class QueryFeatureAttribution(NamedTuple):
  """Why ``thm4.2-literal`` fails where it does: M_phi bounds phi(W^K x), not phi(W^Q x').

  Attributes:
    instances, violations, rate: in-range instances and the literal form's violations.
    query_beyond_m_phi, rate_query_beyond_m_phi: queries whose feature norm exceeds M_phi
      over the samples (the only way the form can fail while thm4.2-mmd holds).
    rate_query_beyond_m_phi_support, rate_support: the same, and the violation rate,
      with M_phi over the sampler's supports.
    max_ratio: the sweep's largest ratio.
    worst_log_mmd_ratio, worst_log_query_over_m_phi: the worst instance's log ratio split
      into thm4.2-mmd's (<= 0) and log(||phi(z)|| / M_phi).
    refuted_by: the witnesses that refute the form (closed-form counterexamples).
  """
  instances: int
  violations: int
  rate: float
  query_beyond_m_phi: int
  rate_query_beyond_m_phi: float
  rate_query_beyond_m_phi_support: float
  rate_support: float
  max_ratio: float
  worst_log_mmd_ratio: float
  worst_log_query_over_m_phi: float
  refuted_by: tuple
  note: str = ("ratio = thm4.2-mmd's ratio x ||phi(W^Q x')|| / M_phi; M_phi bounds the key "
               "features only, so a query feature beyond it is what a violation needs")

  def text(self) -> str:
    def exp_text(log_x):
      return f"e^{log_x:.4g}" if log_x > 700 else f"{math.exp(log_x):.3g}"
    refuted = f"; refuted analytically by {', '.join(self.refuted_by)}" if self.refuted_by else ""
    return (f"violated {self.rate:.2%} ({self.rate_support:.2%} with the supports' M_phi); "
            f"||phi(z)|| > M_phi in {self.rate_query_beyond_m_phi:.2%} "
            f"({self.rate_query_beyond_m_phi_support:.2%}); worst ratio {self.max_ratio:.3g} = "
            f"{exp_text(self.worst_log_mmd_ratio)} (thm4.2-mmd's) x "
            f"{exp_text(self.worst_log_query_over_m_phi)} (||phi(z)||/M_phi){refuted}")


def explain_literal(outcome: Outcome) -> QueryFeatureAttribution:
  """Counts query features beyond M_phi and splits the worst instance's log ratio."""
  st = outcome.stats
  n = max(st.in_range, 1)
  ev = st.extra_events
  extras = outcome.worst.extras if outcome.worst is not None else None
  return QueryFeatureAttribution(
      instances=st.in_range, violations=st.violations, rate=st.violations / n,
      query_beyond_m_phi=ev.get("query_beyond_m_phi", 0),
      rate_query_beyond_m_phi=ev.get("query_beyond_m_phi", 0) / n,
      rate_query_beyond_m_phi_support=ev.get("query_beyond_m_phi_support", 0) / n,
      rate_support=ev.get("violated_support", 0) / n,
      max_ratio=capped_exp(st.worst) if st.worst_index else math.nan,
      worst_log_mmd_ratio=float(extras.log_mmd_ratio) if extras is not None else math.nan,
      worst_log_query_over_m_phi=(float(extras.log_query_over_m_phi) if extras is not None
                                  else math.nan),
      refuted_by=tuple(w.name for w in outcome.witnesses if w.status == "refutes"))


_TESTS = ("tests/test_bounds.py", "tests/test_claims.py")


def _claim(cid, statement, compute, **kw):
  return Claim(id=cid, theory="C6", statement=statement, buckets=PAIRS, sample=sample_pair,
               compute=compute, prepare=prepare_pair, tests=_TESTS, figure="F5", chunk=4096,
               project=project_pair, group="pair", **kw)


CLAIMS = (
    _claim("thm4.2-prediction",
           "||dW_PQ phi(z)|| <= ||dW_PQ||_HS exp(|z|^2/(2 tau)) (Cauchy-Schwarz)",
           compute_prediction),
    _claim("thm4.2-mmd",
           "||dW_PQ phi(z)|| <= c eta ||W^V||_op MMD_kx exp(|z|^2/(2 tau)) (thm4.1-bound x "
           "Cauchy-Schwarz)", compute_mmd),
    _claim("thm4.2-literal",
           "the corrected chain thm4.2-mmd with M_phi in place of ||phi(z)||: ||dW_PQ phi(z)|| "
           "<= c eta ||W^V||_op MMD_kx M_phi", compute_literal,
           reading=counterexamples.M_PHI_READING,
           witnesses=witnesses_of(counterexamples.M_PHI_READING), explain=explain_literal),
    _claim("thm4.2-risk",
           "sqrt(R_Q(W_0(P))) <= sqrt(R_Q(W_0(Q))) + C ||dW_PQ||_HS (triangle inequality)",
           compute_risk),
)
