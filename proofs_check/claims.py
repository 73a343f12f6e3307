"""One checker per claim of THEORY.md, in a registry.

Each :class:`Claim` has an instance sampler (key -> dict of arrays, for one
fixed shape bucket), a per-instance evaluation of both sides, and a kind that
selects the verdict (see :mod:`proofs_check.verdicts`). Samplers and
evaluations act on ONE instance; the sweep vmaps, jits and shards them.

Claim ids are a contract used by reports and figures.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

import icl_kd
from icl_kd import bounds, distributions, mmd

Instance = dict  # name -> array


@dataclasses.dataclass(frozen=True)
class Claim:
  """A claim of THEORY.md made checkable.

  Attributes:
    id: the claim id (e.g. ``thm3.1``).
    kind: identity | bound | probabilistic bound | conjecture | measurement.
    statement: one line: what is compared, in THEORY's notation.
    buckets: fixed static configurations; instances are split evenly over them.
    sample: (key, bucket, dtype) -> Instance.
    evaluate: (Instance, bucket) -> dict of per-instance scalars (see verdicts).
    chunk: instances per compiled batch (memory stays flat as --instances grows).
    default_instances: instances of the default run.
    delta: the probability of a probabilistic bound.
    project: (Instance, bucket) -> Instance, back inside the claim's assumptions
      (used by the adversarial search); None for claims it does not apply to.
    group: claims of one group share sampler, buckets and instances (the same
      instance i is drawn for each of them) and are evaluated in one compiled
      program.
  """
  id: str
  kind: str
  statement: str
  buckets: tuple
  sample: Callable
  evaluate: Callable
  chunk: int = 8192
  default_instances: int = 100_000
  delta: float | None = None
  project: Callable | None = None
  group: str = ""

  @property
  def group_id(self) -> str:
    return self.group or self.id


def _tol(dtype, scale):
  """THEORY C1 tolerance: 1e-12 (float64) / 1e-5 (float32), times max(1, scale/10)."""
  base = 1e-12 if dtype == jnp.float64 else 1e-5
  return base * jnp.maximum(1.0, scale / 10.0)


# -- prompts (C1, C2, C3, C7) -----------------------------------------------------------

def sample_prompt(key, bucket, dtype) -> Instance:
  """A prompt whose largest |score| is 10^u, u ~ U(-3, 3), and tau ~ logU(1/4, 4)."""
  n, m, d, d_k, d_v = bucket[:5]
  ks = jax.random.split(key, 7)
  params = icl_kd.init_params(d, d_k, d_v, key=ks[0], dtype=dtype)
  demos = jax.random.normal(ks[1], (n, d), dtype)
  prefix = jax.random.normal(ks[2], (m, d), dtype)
  query = jax.random.normal(ks[3], (d,), dtype)
  log10_scale = jax.random.uniform(ks[4], (), dtype, -3.0, 3.0)
  tau = jnp.exp(jax.random.uniform(ks[5], (), dtype, math.log(0.25), math.log(4.0)))
  context = jnp.concatenate([demos, prefix, query[None]])
  raw = jnp.dot(jnp.dot(context, params.w_k.T), jnp.dot(params.w_q, query)) / tau
  w_q = params.w_q * (10.0 ** log10_scale / jnp.max(jnp.abs(raw)))
  return dict(w_q=w_q, w_k=params.w_k, w_v=params.w_v, demos=demos, prefix=prefix, query=query,
              tau=tau, omega=jax.random.normal(ks[6], (32, d_k), dtype))


def _params(inst) -> icl_kd.AttentionParams:
  return icl_kd.AttentionParams(inst["w_q"], inst["w_k"], inst["w_v"])


def _decompose(inst, bucket):
  include_query = bucket[5]
  return icl_kd.decompose(_params(inst), inst["demos"], inst["prefix"], inst["query"],
                          tau=inst["tau"], include_query=include_query)


def _tail(inst, bucket):
  return (jnp.concatenate([inst["prefix"], inst["query"][None]]) if bucket[5]
          else inst["prefix"])


def eval_thm31(inst, bucket):
  """C1: ||h(x') - (W_0 + dW) phi(W^Q x')|| / sum_j p_j ||W^V x_j||."""
  out = _decompose(inst, bucket)
  params = _params(inst)
  context = jnp.concatenate([inst["demos"], _tail(inst, bucket)])
  p = jnp.exp(out.scores - out.log_partition)
  mag = jnp.sum(p * jnp.linalg.norm(jnp.dot(context, params.w_v.T), axis=-1))
  err = jnp.linalg.norm(out.attention - out.reference) / mag
  return dict(error=err, tolerance=_tol(inst["w_q"].dtype, out.max_abs_score))


def eval_kd_step(inst, bucket):
  """C2: one KD step at eta* is W_0 (dual form) and matches -eta* grad of the primal loss."""
  out = _decompose(inst, bucket)
  params = _params(inst)
  w1 = icl_kd.one_step_kd_weights(params, inst["demos"], log_eta=out.log_eta, tau=inst["tau"])
  dual_err = icl_kd.relative_hs_error(w1, out.w0, aligned=True)
  fm = icl_kd.PositiveRandomFeatures(inst["omega"], inst["tau"])
  zero = jnp.zeros((params.d_v, inst["omega"].shape[0]), inst["w_q"].dtype)
  grad = jax.grad(icl_kd.kd_loss)(zero, params, inst["demos"], feature_map=fm)
  # Compared at the scale D' W_0 (so that eta* ~ exp(-1000) does not underflow).
  closed = icl_kd.DualWeights(out.w0.coeffs, out.w0.anchors, out.w0.tau,
                              jnp.zeros_like(out.w0.log_scale)).to_primal(fm)
  step = -jnp.exp(out.log_eta + out.log_partition) * grad
  primal_err = jnp.linalg.norm(step - closed) / jnp.linalg.norm(closed)
  return dict(error=jnp.maximum(dual_err, primal_err),
              tolerance=_tol(inst["w_q"].dtype, out.max_abs_score))


def _dw_step(inst, bucket, kind):
  out = _decompose(inst, bucket)
  params = _params(inst)
  tokens = _tail(inst, bucket)
  m = tokens.shape[0]
  factor = 1.0 if kind == "linear" else 0.5
  log_eta = jnp.log(jnp.asarray(m * factor, out.log_partition.dtype)) - out.log_partition
  inc = icl_kd.kd_step_increment(out.w0, params, tokens, log_eta=log_eta, kind=kind)
  return out, params, tokens, inc


def eval_dw_linear(inst, bucket):
  """C3 (linear loss): one step of size M/D' adds exactly dW."""
  out, _, _, inc = _dw_step(inst, bucket, "linear")
  return dict(error=icl_kd.relative_hs_error(inc, out.dw, aligned=True),
              tolerance=_tol(inst["w_q"].dtype, out.max_abs_score))


def eval_dw_squared(inst, bucket):
  """C3 (squared loss): the step adds dW - R; reports ||R|| / ||dW||."""
  out, params, tokens, inc = _dw_step(inst, bucket, "squared")
  resid = icl_kd.squared_step_residual(out.w0, params, tokens)
  mismatch = icl_kd.aligned_difference(icl_kd.aligned_difference(out.dw, inc), resid)
  log_scale = jnp.logaddexp(out.dw.log_hs_norm(), resid.log_hs_norm())
  return dict(value=jnp.exp(resid.log_hs_norm() - out.dw.log_hs_norm()),
              extra_identity_error=jnp.exp(mismatch.log_hs_norm() - log_scale),
              extra_log10_max_score=jnp.log10(out.max_abs_score))


def eval_lr_proxy(inst, bucket):
  """C7: log D' - max_j s_j <= H(p) <= log n, with eta* = N/(2D') reported alongside."""
  out = _decompose(inst, bucket)
  n_ctx = out.scores.shape[0]
  gap = out.log_partition - jnp.max(out.scores)          # in [0, log n]
  return dict(log_lhs=jnp.log(jnp.maximum(gap, 0.0)), log_rhs=jnp.log(out.entropy),
              event_entropy_above_log_n=out.entropy > math.log(n_ctx) * (1 + 1e-9),
              extra_log_partition=out.log_partition, extra_log_eta=out.log_eta,
              extra_entropy=out.entropy, extra_log10_max_score=jnp.log10(out.max_abs_score))


# -- distributions (C4, C5, C6) ---------------------------------------------------------

def sample_shifted_pair(key, bucket, dtype) -> Instance:
  """Params, samples of P (unit ball) and Q (ball shifted by |s| ~ U(0, 2), scaled), eta, query."""
  n, m, d, d_k, d_v = bucket[:5]
  ks = jax.random.split(key, 9)
  params = icl_kd.init_params(d, d_k, d_v, key=ks[0], dtype=dtype,
                              scale=jax.random.uniform(ks[1], (), dtype, 0.3, 2.0))
  direction = jax.random.normal(ks[2], (d,), dtype)
  shift = direction / jnp.linalg.norm(direction) * jax.random.uniform(ks[3], (), dtype, 0.0, 2.0)
  scale = jax.random.uniform(ks[4], (), dtype, 0.5, 1.5)
  p = distributions.uniform_ball(d, dtype=dtype)
  q = distributions.uniform_ball(d, shift=shift, scale=scale, dtype=dtype)
  return dict(w_q=params.w_q, w_k=params.w_k, w_v=params.w_v,
              x_p=p.sample(n, key=ks[5]), x_q=q.sample(m, key=ks[6]),
              x_target=q.sample(64, key=ks[7]), query=q.sample(1, key=ks[8])[0],
              log_eta=jnp.asarray(math.log(0.5), dtype), tau=jnp.asarray(1.0, dtype))


def _bias(inst):
  return bounds.distillation_bias(_params(inst), inst["x_p"], inst["x_q"],
                                  log_eta=inst["log_eta"], tau=inst["tau"])


def eval_c5_identity(inst, bucket):
  """C5 identity: ||W_0(P) - W_0(Q)||_HS == 2 eta MMD_kV, error in units of the cancelled terms."""
  b = _bias(inst)
  n_terms = inst["x_p"].shape[0] + inst["x_q"].shape[0]
  return dict(error=b.identity_residual, tolerance=_tol(inst["w_q"].dtype, n_terms))


def eval_c5_bound(inst, bucket):
  b = _bias(inst)
  return dict(log_lhs=b.log_lhs, log_rhs=b.log_bound_rhs)


def eval_c5_literal(inst, bucket):
  b = _bias(inst)
  return dict(log_lhs=b.log_lhs, log_rhs=b.log_literal_rhs)


def eval_c6_prediction(inst, bucket):
  g = bounds.prediction_gap(_params(inst), inst["x_p"], inst["x_q"], inst["query"],
                            log_eta=inst["log_eta"], tau=inst["tau"])
  return dict(log_lhs=g.log_lhs, log_rhs=g.log_rhs)


def eval_c6_risk(inst, bucket):
  r = bounds.risk_bound(_params(inst), inst["x_p"], inst["x_q"], inst["x_target"],
                        log_eta=inst["log_eta"], tau=inst["tau"])
  return dict(log_lhs=jnp.log(r.lhs), log_rhs=jnp.log(r.rhs))


def project_pair(inst, bucket) -> Instance:
  """Back inside the assumptions: samples in their balls, tau and eta as drawn."""
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


# -- C4: the Rademacher bound -----------------------------------------------------------

DELTA = 0.05
POPULATION = 1024  # fresh points for the Monte Carlo estimate of L(W) (SE reported)


def sample_generalization(key, bucket, dtype) -> Instance:
  """N i.i.d. points of the unit ball, a fresh population sample, and a W in the ball F_B."""
  n, d = bucket[0], bucket[1]
  ks = jax.random.split(key, 7)
  params = icl_kd.init_params(d, key=ks[0], dtype=dtype,
                              scale=jax.random.uniform(ks[1], (), dtype, 0.3, 1.5))
  ball = distributions.uniform_ball(d, dtype=dtype)
  return dict(w_q=params.w_q, w_k=params.w_k, w_v=params.w_v, x=ball.sample(n, key=ks[2]),
              x_pop=ball.sample(POPULATION, key=ks[3]),
              anchors_x=ball.sample(8, key=ks[4]),
              coeffs=jax.random.normal(ks[5], (8, d), dtype),
              radius_frac=jax.random.uniform(ks[6], (), dtype, 0.1, 1.0))


def _support_constants(inst):
  """C = exp(||W^K||_op^2 / (2 tau)) and D_T = ||W^V||_op on the unit ball (tau = 1)."""
  log_c = jnp.linalg.norm(inst["w_k"], 2) ** 2 / 2.0
  return log_c, jnp.linalg.norm(inst["w_v"], 2)


def eval_thm32(inst, bucket):
  """C4: L(W) <= L_hat(W) + 4BC(D_T+BC)/sqrt(N) + (D_T+BC)^2 sqrt(log(1/delta)/(2N))."""
  params = _params(inst)
  log_c, d_t = _support_constants(inst)
  c = jnp.exp(log_c)
  radius = 1.0                                       # B; W is put inside the ball
  if bucket[2] == "distilled":
    w = icl_kd.one_step_kd_weights(params, inst["x"], eta=0.5)
  else:
    keys = jnp.dot(inst["anchors_x"], params.w_k.T)
    w = icl_kd.DualWeights(inst["coeffs"], keys, jnp.asarray(1.0, keys.dtype),
                           jnp.zeros((), keys.dtype))
  # Scale W (not its representation) so that ||W||_HS = min(||W||, B) for the distilled
  # weights and B * u, u ~ U(0.1, 1), for the random ones.
  log_norm = w.log_hs_norm()
  if bucket[2] == "distilled":
    shift = jnp.minimum(0.0, math.log(radius) - log_norm)
  else:
    shift = jnp.log(radius * inst["radius_frac"]) - log_norm
  w = icl_kd.DualWeights(w.coeffs, w.anchors, w.tau, w.log_scale + shift)
  l_hat = bounds.kd_risk(w, params, inst["x"])
  teacher = jnp.dot(inst["x_pop"], params.w_v.T)                       # (POPULATION, d_v)
  student = jax.vmap(w.apply)(jnp.dot(inst["x_pop"], params.w_k.T))     # (POPULATION, d_v)
  losses = jnp.sum((teacher - student) ** 2, axis=1)
  l_pop = jnp.mean(losses)
  l_pop_se = jnp.std(losses, ddof=1) / math.sqrt(POPULATION)
  n = inst["x"].shape[0]
  rb = bounds.rademacher_bound(radius=radius, feature_bound=c, teacher_bound=d_t, n=n,
                               delta=DELTA)
  gap = l_pop - l_hat
  return dict(log_lhs=jnp.log(jnp.maximum(gap, 0.0)), log_rhs=jnp.log(rb.hoeffding),
              violated=gap > rb.hoeffding, event_paper_form=gap > rb.paper,
              extra_gap=gap, extra_bound=rb.hoeffding, extra_population_risk_se=l_pop_se)


def eval_rademacher(inst, bucket):
  """C4: R_hat <= B sqrt(tr K)/N (up to 3 Monte Carlo SE) and B sqrt(tr K)/N <= B C/sqrt(N)."""
  params = _params(inst)
  keys = jnp.dot(inst["x"], params.w_k.T)
  gram = mmd.gram(mmd.exp_kernel(1.0), keys, keys)
  est = bounds.empirical_rademacher(gram, radius=1.0, key=jax.random.key(0), num_draws=256)
  log_c, _ = _support_constants(inst)
  n = keys.shape[0]
  ratio_mc = est.estimate / (est.analytic_bound + 3.0 * est.std_error)
  log_ratio_trace = jnp.log(est.analytic_bound) - (log_c - 0.5 * math.log(n))
  log_ratio = jnp.maximum(jnp.log(ratio_mc), log_ratio_trace)
  return dict(log_lhs=log_ratio, log_rhs=jnp.zeros_like(log_ratio),
              extra_estimate_over_trace_bound=est.estimate / est.analytic_bound)


# -- the registry -----------------------------------------------------------------------

_PROMPTS = ((1, 0, 3, 2, 1, True), (32, 0, 8, 8, 8, True), (16, 4, 6, 4, 3, True),
            (12, 3, 5, 3, 2, False))
_PREFIXED = ((16, 4, 6, 4, 3, True), (8, 1, 4, 4, 4, False), (24, 8, 8, 4, 8, True))
_PAIRS = ((16, 16, 3, 3, 2), (24, 12, 5, 4, 3))

CLAIMS: dict[str, Claim] = {c.id: c for c in [
    Claim("thm3.1", "identity",
          "h(x') == (W_0 + dW) phi(W^Q x') [rel. error <= 1e-12|1e-5 x max(1, max|s|/10)]",
          _PROMPTS, sample_prompt, eval_thm31, group="prompt"),
    Claim("kd-step", "identity",
          "one KD step at eta* = N/(2D') == W_0 (dual), == -eta* grad L_D(0) (autodiff)",
          _PROMPTS, sample_prompt, eval_kd_step, group="prompt"),
    Claim("dw-step-linear", "identity",
          "one step of the linear KD loss, size M/D', adds dW exactly",
          _PREFIXED, sample_prompt, eval_dw_linear, group="prefixed"),
    Claim("dw-step-squared", "measurement",
          "squared KD loss from W_0, eta = M/(2D'): adds dW - R; value = ||R||/||dW||",
          _PREFIXED, sample_prompt, eval_dw_squared, group="prefixed"),
    Claim("thm3.2", "probabilistic bound",
          "L(W) <= L_hat(W) + 4BC(D_T+BC)/sqrt(N) + (D_T+BC)^2 sqrt(log(1/d)/2N), d = 0.05",
          ((32, 3, "distilled"), (32, 3, "random"), (64, 4, "distilled")),
          sample_generalization, eval_thm32, chunk=256, default_instances=3000, delta=DELTA),
    Claim("rademacher-empirical", "bound",
          "R_hat <= B sqrt(tr K)/N (+3 SE) and B sqrt(tr K)/N <= B C/sqrt(N); lhs/rhs = max ratio",
          ((32, 3, "x"), (64, 4, "x")), sample_generalization, eval_rademacher, chunk=256,
          default_instances=3000),
    Claim("thm4.1-identity", "identity",
          "||W_0(P) - W_0(Q)||_HS == 2 eta MMD_kV (biased), error in units of cancelled terms",
          _PAIRS, sample_shifted_pair, eval_c5_identity, chunk=4096, project=project_pair,
          group="pair"),
    Claim("thm4.1-bound", "bound",
          "||W_0(P) - W_0(Q)||_HS <= 2 eta ||W^V||_op MMD_kx",
          _PAIRS, sample_shifted_pair, eval_c5_bound, chunk=4096, project=project_pair,
          group="pair"),
    Claim("thm4.1-literal", "conjecture",
          "||dW||_F <= eta M_V M_x M_phi MMD_k, Gaussian k (median bandwidth): the paper's form",
          _PAIRS, sample_shifted_pair, eval_c5_literal, chunk=4096, project=project_pair,
          group="pair"),
    Claim("thm4.2-prediction", "bound",
          "||dW_PQ phi(z)|| <= ||dW_PQ||_HS exp(|z|^2/(2 tau))",
          _PAIRS, sample_shifted_pair, eval_c6_prediction, chunk=4096, project=project_pair,
          group="pair"),
    Claim("thm4.2-risk", "bound",
          "sqrt(R_Q(W_0(P))) <= sqrt(R_Q(W_0(Q))) + C ||dW_PQ||_HS",
          _PAIRS, sample_shifted_pair, eval_c6_risk, chunk=4096, project=project_pair,
          group="pair"),
    Claim("lr-proxy", "bound",
          "log D' - max_j s_j <= H(attention) <= log n; D', eta*, H reported together",
          _PROMPTS, sample_prompt, eval_lr_proxy, group="prompt"),
]}
