"""C5 ``thm4.1``: the bias of the distilled weights is linear in MMD.

For samples x_p ~ P and x_q ~ Q, dW_PQ = W_0(P_hat) - W_0(Q_hat) with
W_0(P) = c eta E_P[W^V x phi(W^K x)^T] (c = 2, the paper's Eq. 12):

- ``thm4.1-identity`` (consistency): ||dW_PQ||_HS == c eta MMD_kV(P_hat, Q_hat).
  Both sides are the same quadratic form c^2 eta^2 w^T G w of the toolkit's own
  weights (G_ij = k_V(z_i, z_j)), computed along two code paths: a check of the
  code, not evidence about the paper. Error in units of the terms the two sides
  cancel (at most 1), tolerance :func:`identity_tolerance` at scale n + m.
- ``thm4.1-bound`` (corrected): ||dW_PQ||_HS <= c eta ||W^V||_op MMD_kx, the
  toolkit's corrected Theorem 4.1 (proof: ||W^V||^2 k_x - k_V is a positive
  semi-definite kernel; docs/THEORY.md C5).
- ``thm4.1-literal-gaussian``, ``-softmax``, ``-normalised``, ``-tv``
  (conjectures): the paper's literal form eta M_V M_x M_phi D(P, Q) under each
  reading of D (``thm4.1-literal`` is an alias of the Gaussian reading). Each
  carries the analytic counterexamples of :mod:`icl_kd.counterexamples` as
  witnesses (evaluated by the claim itself in every run), and an ``explain``
  hook that attributes its violations (:class:`LiteralAttribution`).

M_x and M_phi: the paper defines them as sups over the supports of P and Q.
The checks take them over the pooled samples (the support of the empirical
measures every side is computed for; events ``violated_eq12``, ``violated_half``)
and also over the supports the sampler draws from (the unit ball for P, Q's
ball; events ``violated_support_eq12``, ``violated_support_half``, and the
extra ``log_support_gap`` = log of the factor by which the right side grows).

The convention c (2: "eq12", the default; 1: "half") is a static field of the
bucket. The literal right side has no c, so ratio(half) = ratio(eq12) / 2
exactly. All share one :func:`icl_kd.bounds.pair_sides` per instance (the
group's ``prepare``). This module also owns the pair sampler of C5 and C6.

Tested by tests/test_bounds.py and tests/test_claims.py; shown in figure F4.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from icl_kd import bounds, counterexamples, distributions, generators
from icl_kd.attention import AttentionParams
from icl_kd.claims.base import Claim, Outcome, convention_factor
from icl_kd.claims.checks import (ConjectureCheck, ConsistencyIdentityCheck, CorrectedCheck,
                                  Witness, bound_slack, capped_exp, identity_tolerance)

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
  """P = uniform unit ball; Q = a ball shifted by |s| ~ U(0, 2) and scaled by U(0.5, 1.5).

  Returns the two :class:`icl_kd.distributions.UniformBall` (Q's center is its
  ``shift``, its radius ``scale``).
  """
  k_dir, k_len, k_scale = jax.random.split(key, 3)
  direction = generators.normal(k_dir, (d,), dtype)
  shift = direction / jnp.linalg.norm(direction) * generators.uniform(k_len, (), dtype, 0.0, 2.0)
  scale = generators.uniform(k_scale, (), dtype, 0.5, 1.5)
  return (distributions.uniform_ball(d, dtype=dtype),
          distributions.uniform_ball(d, shift=shift, scale=scale, dtype=dtype))


def sample_pair(key, bucket: PairBucket, dtype) -> dict:
  """Params, x_p ~ P (n), x_q ~ Q (m), x_target ~ Q (64), query ~ Q, eta = 1/2, tau = 1.

  P and Q from :func:`pair_distributions` (the key of instance i fixes them);
  W^Q, W^K, W^V from :func:`icl_kd.init_params` at a scale ~ U(0.3, 2). The
  supports are part of the instance: ``p_center``, ``p_radius`` (the unit ball)
  and ``q_center``, ``q_radius`` (Q's ball).
  """
  import icl_kd
  n, m, d, d_k, d_v = tuple(bucket)[:5]
  ks = jax.random.split(key, 7)
  params = icl_kd.init_params(d, d_k, d_v, key=ks[0], dtype=dtype,
                              scale=generators.uniform(ks[1], (), dtype, 0.3, 2.0))
  p, q = pair_distributions(ks[2], d, dtype)
  return dict(w_q=params.w_q, w_k=params.w_k, w_v=params.w_v,
              x_p=p.sample(n, key=ks[3]), x_q=q.sample(m, key=ks[4]),
              x_target=q.sample(TARGET_SAMPLE, key=ks[5]), query=q.sample(1, key=ks[6])[0],
              log_eta=jnp.asarray(math.log(0.5), dtype), tau=jnp.asarray(1.0, dtype),
              p_center=p.shift, p_radius=p.radius * p.scale,
              q_center=q.shift, q_radius=q.radius * q.scale)


def pair_params(inst) -> AttentionParams:
  return AttentionParams(inst["w_q"], inst["w_k"], inst["w_v"])


class PairShared(NamedTuple):
  """The pair group's shared work: every side of C5 and of C6's prediction statements.

  Attributes:
    bias, readings, prediction: :func:`icl_kd.bounds.pair_sides` with M_x, M_phi over the
      pooled samples.
    log_support_gap_x: log(M_x over the supports / M_x over the samples) >= 0.
    log_support_gap_phi: log(M_phi over the supports / M_phi over the samples) >= 0.
  """
  bias: bounds.DistillationBias
  readings: bounds.LiteralReadings
  prediction: bounds.PredictionGap
  log_support_gap_x: jax.Array
  log_support_gap_phi: jax.Array


def bucket_convention(bucket) -> str:
  """The convention ('eq12' or 'half') a C5/C6 bucket carries; 'eq12' when it carries none."""
  return getattr(bucket, "convention", "eq12") if bucket is not None else "eq12"


def support_constants(inst) -> tuple[jax.Array, jax.Array]:
  """(M_x, log M_phi) over the supports of P and Q: sups over the union of their balls.

  M_x = max over the balls of |center| + radius; log M_phi = max over the balls of
  sup |W^K x|^2 / (2 tau) (:func:`icl_kd.bounds.ball_sup_quadratic`).
  """
  balls = ((inst["p_center"], inst["p_radius"]), (inst["q_center"], inst["q_radius"]))
  m_x = jnp.maximum(*(jnp.linalg.norm(c) + r for c, r in balls))
  sup_key = jnp.maximum(*(bounds.ball_sup_quadratic(inst["w_k"], c, r) for c, r in balls))
  return m_x, sup_key / (2.0 * inst["tau"])


def bias(inst, bucket=None) -> bounds.DistillationBias:
  """Every side of C5 for a pair instance (``bucket.convention``: c)."""
  return bounds.distillation_bias(pair_params(inst), inst["x_p"], inst["x_q"],
                                  log_eta=inst["log_eta"], tau=inst["tau"],
                                  convention=bucket_convention(bucket))


def prepare_pair(inst, bucket) -> PairShared:
  """The pair group's shared work, once per instance."""
  sides = bounds.pair_sides(pair_params(inst), inst["x_p"], inst["x_q"], inst["query"],
                            log_eta=inst["log_eta"], tau=inst["tau"],
                            convention=bucket_convention(bucket))
  m_x, log_m_phi = support_constants(inst)
  r = sides.readings
  return PairShared(*sides, jnp.log(m_x) - jnp.log(r.input_bound),
                    log_m_phi - r.log_feature_bound)


def project_pair(inst, bucket) -> dict:
  """Back inside the assumptions: x_p in the unit ball, Q's samples in the ball of radius 3.

  The supports become those balls (P: center 0, radius 1; Q: center 0, radius 3),
  so that the support constants stay the sups over the supports; eta = 1/2 and
  tau = 1 stay the sampler's (the search varies the layer and the samples only).
  """
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
  out["p_center"], out["p_radius"] = jnp.zeros_like(inst["p_center"]), jnp.ones_like(inst["p_radius"])
  out["q_center"] = jnp.zeros_like(inst["q_center"])
  out["q_radius"] = 3.0 * jnp.ones_like(inst["q_radius"])
  out["log_eta"] = jnp.full_like(inst["log_eta"], math.log(0.5))
  out["tau"] = jnp.ones_like(inst["tau"])
  return out


IDENTITY_MAX_ERROR = 1.0
"""The largest ``thm4.1-identity`` error the check can produce: both lhs^2 and rhs^2 lie in
[0, term_scale], so |lhs^2 - rhs^2| / term_scale <= 1."""


def compute_identity(inst, bucket, shared) -> ConsistencyIdentityCheck:
  """||dW||_HS == c eta MMD_kV: |lhs^2 - rhs^2| / (cancelled terms) <= tol(n + m)."""
  n_terms = inst["x_p"].shape[0] + inst["x_q"].shape[0]
  return ConsistencyIdentityCheck(shared.bias.identity_residual,
                                  identity_tolerance(inst["w_q"].dtype, n_terms),
                                  max_error=IDENTITY_MAX_ERROR)


def compute_bound(inst, bucket, shared) -> CorrectedCheck:
  return CorrectedCheck(shared.bias.log_lhs, shared.bias.log_bound_rhs)


class LiteralEvents(NamedTuple):
  """Violations of the instance's literal reading, and of the normalised (proved) kernel's.

  ``violated_*``: M_x, M_phi over the samples; ``violated_support_*``: over the supports;
  ``normalised_violated_*``: the normalised reading on the same instance (the reference
  kernel of the attribution); each under c = 2 (eq12) and c = 1 (half).
  """
  violated_eq12: jax.Array
  violated_half: jax.Array
  violated_support_eq12: jax.Array
  violated_support_half: jax.Array
  normalised_violated_eq12: jax.Array
  normalised_violated_half: jax.Array


class LiteralExtras(NamedTuple):
  log_support_gap: jax.Array   # log of the right side's growth with the supports' M_x M_phi


class GaussianExtras(NamedTuple):
  log_support_gap: jax.Array   # as LiteralExtras
  log_ratio_grid: jax.Array    # log lhs/rhs at the worst bandwidth of the fixed grid
  bandwidth: jax.Array         # the median-heuristic bandwidth


def convention_events(log_lhs, log_rhs, bucket, dtype) -> tuple[jax.Array, jax.Array]:
  """lhs > rhs (1 + slack) under c = 2 and under c = 1 (lhs scales with c, rhs does not)."""
  c = convention_factor(bucket_convention(bucket))
  lr = log_lhs - log_rhs
  tol = math.log1p(bound_slack(dtype))
  return lr + math.log(2.0 / c) > tol, lr + math.log(1.0 / c) > tol


def _literal(reading: str):
  field = bounds.READINGS[reading]

  def compute(inst, bucket, shared) -> ConjectureCheck:
    r = shared.readings
    rhs = getattr(r, field)
    dtype = inst["x_p"].dtype
    # M_x M_phi multiply every right side but the normalised one, where they cancel
    gap = (jnp.zeros_like(rhs) if reading == "normalised"
           else shared.log_support_gap_x + shared.log_support_gap_phi)
    events = LiteralEvents(*convention_events(r.log_lhs, rhs, bucket, dtype),
                           *convention_events(r.log_lhs, rhs + gap, bucket, dtype),
                           *convention_events(r.log_lhs, r.log_rhs_normalised, bucket, dtype))
    extras = (GaussianExtras(gap, r.log_lhs - r.log_rhs_gaussian_worst, r.bandwidth)
              if reading == "gaussian" else LiteralExtras(gap))
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
ALIASES = {"thm4.1-literal": "thm4.1-literal-gaussian"}


# -- witnesses: the analytic counterexamples, as instances of the claim's first bucket -----

WITNESS_BUCKET = 0   # (n, m) = (16, 16): repeated atoms keep the median bandwidth the atoms'


def _pad(a, shape):
  """``a`` in the top-left corner of zeros of ``shape``."""
  out = jnp.zeros(shape, a.dtype)
  return out.at[tuple(slice(0, s) for s in a.shape)].set(a)


def embed(ce: counterexamples.Counterexample, bucket: PairBucket, dtype) -> dict:
  """A counterexample as an instance of ``bucket``: the same measures and ratio.

  Coordinates and key/value dimensions are padded with zeros (no norm, kernel or
  distance changes), each atom of P and Q is repeated n and m times (the
  empirical measures, hence W_0, every biased MMD and the total variation are
  unchanged; with n = m the median bandwidth of the pooled sample is still the
  atoms' distance), the supports are the atoms themselves (radius 0), and the
  C6 target sample is the origin (it enters no C5 side).
  """
  n, m, d, d_k, d_v = tuple(bucket)[:5]
  p, cast = ce.params, (lambda a: jnp.asarray(a, dtype))
  if ce.x_p.shape[0] != 1 or ce.x_q.shape[0] != 1:
    raise ValueError(f"counterexample {ce.name!r} has several atoms; embed takes point masses")
  x_p, x_q = _pad(cast(ce.x_p), (1, d)), _pad(cast(ce.x_q), (1, d))
  query = ce.query if ce.query is not None else jnp.zeros((ce.x_p.shape[1],), dtype)
  return dict(w_q=_pad(cast(p.w_q), (d_k, d)), w_k=_pad(cast(p.w_k), (d_k, d)),
              w_v=_pad(cast(p.w_v), (d_v, d)), x_p=jnp.repeat(x_p, n, axis=0),
              x_q=jnp.repeat(x_q, m, axis=0), x_target=jnp.zeros((TARGET_SAMPLE, d), dtype),
              query=_pad(cast(query), (d,)), log_eta=cast(math.log(ce.eta)), tau=cast(ce.tau),
              p_center=x_p[0], p_radius=cast(0.0), q_center=x_q[0], q_radius=cast(0.0))


def witnesses_of(reading: str) -> tuple[Witness, ...]:
  """The counterexamples of ``reading`` (:mod:`icl_kd.counterexamples`) as the claim's witnesses."""
  out = []
  for name in counterexamples.NAMES:
    if counterexamples.READING_OF[name] != reading:
      continue
    out.append(Witness(
        name=name, bucket=WITNESS_BUCKET,
        instance=lambda dtype, name=name: embed(counterexamples.counterexample(name, dtype=dtype),
                                                PAIRS[WITNESS_BUCKET], dtype),
        closed_form=lambda bucket, name=name: counterexamples.counterexample(
            name, convention=bucket_convention(bucket)).closed_form_ratio,
        formula=counterexamples.FORMULAS[name]))
  return tuple(out)


# -- explain: the attribution of a literal reading's violations --------------------------

SAMPLER_NOTE = ("rates belong to this sampler (P: the unit ball; Q: a ball shifted by |s| ~ "
                "U(0, 2), scaled by U(0.5, 1.5); params at scale U(0.3, 2)); another sampler "
                "gives other rates, the witnesses' ratios do not change")


class LiteralAttribution(NamedTuple):
  """Where a literal reading of Theorem 4.1 fails, and why (kernel x convention).

  Attributes:
    instances: in-range instances.
    rate_eq12, rate_half: violation rates of this reading under c = 2 and c = 1.
    normalised_rate_eq12, normalised_rate_half: those of the normalised (proved)
      kernel on the same instances: the other half of the 2 x 2 (kernel x convention).
    share_within_c: the share of the eq12 violations with ratio <= c = 2 (they hold
      under c = 1): what the factor c alone explains.
    support_rate_eq12, support_rate_half: the rates with M_x, M_phi over the supports.
    max_ratio_eq12, max_ratio_half: the largest ratio of the sweep under each convention.
    adversarial_max_ratio_eq12, adversarial_max_ratio_half: the search's (NaN if none ran).
    refuted_by, tight_at: the witnesses (closed-form counterexamples) that refute the
      reading under the run's convention, and those that only attain it.
    note: what the rates depend on.
  """
  instances: int
  rate_eq12: float
  rate_half: float
  normalised_rate_eq12: float
  normalised_rate_half: float
  share_within_c: float
  support_rate_eq12: float
  support_rate_half: float
  max_ratio_eq12: float
  max_ratio_half: float
  adversarial_max_ratio_eq12: float
  adversarial_max_ratio_half: float
  refuted_by: tuple
  tight_at: tuple
  note: str = SAMPLER_NOTE

  def text(self) -> str:
    """One paragraph for the report."""
    adv = ("" if math.isnan(self.adversarial_max_ratio_eq12) else
           f"; adversarial {self.adversarial_max_ratio_eq12:.3g} / "
           f"{self.adversarial_max_ratio_half:.3g}")
    share = "-" if math.isnan(self.share_within_c) else f"{self.share_within_c:.1%}"
    analytic = (f"; refuted analytically by {', '.join(self.refuted_by)}" if self.refuted_by
                else "") + (f"; tight at {', '.join(self.tight_at)}" if self.tight_at else "")
    return (f"violated {self.rate_eq12:.2%} (c = 2) / {self.rate_half:.2%} (c = 1), normalised "
            f"kernel on the same instances {self.normalised_rate_eq12:.2%} / "
            f"{self.normalised_rate_half:.2%}; eq12 violations with ratio <= c: {share}; "
            f"with the supports' M_x M_phi {self.support_rate_eq12:.2%} / "
            f"{self.support_rate_half:.2%}; max ratio {self.max_ratio_eq12:.3g} / "
            f"{self.max_ratio_half:.3g}{adv}{analytic}")


def explain_literal(outcome: Outcome) -> LiteralAttribution:
  """The attribution of a literal reading's violations (kernel x convention, supports)."""
  st = outcome.stats
  n = max(st.in_range, 1)
  ev = st.extra_events
  c = convention_factor(outcome.convention)
  worst = capped_exp(st.worst) if st.worst_index else math.nan
  adv = (math.nan if outcome.adversarial_log_ratio is None
         else capped_exp(outcome.adversarial_log_ratio))
  v12, vh = ev.get("violated_eq12", 0), ev.get("violated_half", 0)
  return LiteralAttribution(
      instances=st.in_range, rate_eq12=v12 / n, rate_half=vh / n,
      normalised_rate_eq12=ev.get("normalised_violated_eq12", 0) / n,
      normalised_rate_half=ev.get("normalised_violated_half", 0) / n,
      share_within_c=(v12 - vh) / v12 if v12 else math.nan,
      support_rate_eq12=ev.get("violated_support_eq12", 0) / n,
      support_rate_half=ev.get("violated_support_half", 0) / n,
      max_ratio_eq12=worst * 2.0 / c, max_ratio_half=worst / c,
      adversarial_max_ratio_eq12=adv * 2.0 / c, adversarial_max_ratio_half=adv / c,
      refuted_by=tuple(w.name for w in outcome.witnesses if w.status == "refutes"),
      tight_at=tuple(w.name for w in outcome.witnesses if w.status == "tight"))


def _pair_claim(cid, statement, compute, *, reading="", explain=None):
  return Claim(id=cid, theory="C5", statement=statement, buckets=PAIRS, sample=sample_pair,
               compute=compute, prepare=prepare_pair, tests=_TESTS, figure="F4", chunk=4096,
               project=project_pair, group="pair", reading=reading,
               witnesses=witnesses_of(reading) if reading else (), explain=explain)


_LITERAL = "||dW||_F <= eta M_V M_x M_phi "
CLAIMS = (
    _pair_claim("thm4.1-identity",
                "||W_0(P) - W_0(Q)||_HS == c eta MMD_kV (biased): one quadratic form, two code "
                "paths", compute_identity),
    _pair_claim("thm4.1-bound", "||W_0(P) - W_0(Q)||_HS <= c eta ||W^V||_op MMD_kx (the corrected "
                "Theorem 4.1)", compute_bound),
    _pair_claim("thm4.1-literal-gaussian",
                _LITERAL + "MMD_k, k Gaussian (median bandwidth; grid in JSON)",
                compute_literal_gaussian, reading="gaussian", explain=explain_literal),
    _pair_claim("thm4.1-literal-softmax", _LITERAL + "MMD_k, k = kappa(W^K x, W^K y) (phi's own)",
                compute_literal_softmax, reading="softmax", explain=explain_literal),
    _pair_claim("thm4.1-literal-normalised", _LITERAL + "MMD_k, k = k_x / (M_x M_phi)^2",
                compute_literal_normalised, reading="normalised", explain=explain_literal),
    _pair_claim("thm4.1-literal-tv", _LITERAL + "||P - Q||_1 (total variation)",
                compute_literal_tv, reading="tv", explain=explain_literal),
)
