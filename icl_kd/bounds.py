"""Both sides of the paper's bounds: Rademacher (C4), MMD bias (C5), downstream (C6).

THEORY.md:
- C4 (``thm3.2``): for F_B = {x -> W phi(W^K x) : ||W||_HS <= B}, inputs with
  ||phi(W^K x)|| <= C and ||W^V x|| <= D_T, with probability >= 1 - delta,
      L(W) <= L_hat(W) + 4 B C (D_T + B C) / sqrt(N) + (D_T + B C)^2 sqrt(log(1/delta) / (2N)).
- C5 (``thm4.1``): dW_PQ = W_0(P) - W_0(Q) with W_0(P) = 2 eta E_P[W^V x phi(W^K x)^T];
      ||dW_PQ||_HS = 2 eta MMD_kV(P, Q)                 (identity)
                  <= 2 eta ||W^V||_op MMD_kx(P, Q)      (bound)
      paper's literal form: ||dW||_F <= eta M_V M_x M_phi MMD_k(P, Q)   (checked as a conjecture).
- C6 (``thm4.2``): ||dW_PQ phi(z)|| <= ||dW_PQ||_HS exp(|z|^2 / (2 tau)) and
      sqrt(R_Q(W_0(P))) <= sqrt(R_Q(W_0(Q))) + C ||dW_PQ||_HS.

P and Q enter through samples: W_0 of a sample is that of its empirical
measure (exact in dual form); a population quantity is approached with a
large sample. Every quantity that can overflow (exp(|W^K x|^2 / (2 tau)),
MMD_kV at large scores) is also returned as its logarithm.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from icl_kd import _checks
from icl_kd import mmd as _mmd
from icl_kd.attention import AttentionParams, _check_tokens, check_params
from icl_kd.dual import HIGHEST, DualWeights, _log_weighted_sum
from icl_kd.kd import _log_step, one_step_kd_weights
from icl_kd.mmd import _check_finite

# -- C4: Rademacher complexity and the generalization bound -------------------------


class RademacherEstimate(NamedTuple):
  """Result of :func:`empirical_rademacher`.

  Attributes:
    estimate: Monte Carlo estimate of R_hat = (B/N) E_sigma sqrt(sigma^T K sigma).
    std_error: its standard error (sample std over draws / sqrt(num_draws)).
    analytic_bound: B sqrt(tr K) / N, an upper bound on R_hat (Jensen).
    trace: tr K.
  """
  estimate: jax.Array
  std_error: jax.Array
  analytic_bound: jax.Array
  trace: jax.Array


def empirical_rademacher(gram, *, radius, key, num_draws: int = 1000) -> RademacherEstimate:
  """Empirical Rademacher complexity of the RKHS ball of radius B on a sample (C4).

  For F_B = {x -> <w, phi(x)> : ||w|| <= B} (per output coordinate; THEORY.md
  C4 uses K_ij = kappa(W^K x_i, W^K x_j)),

      R_hat(F_B) = E_sigma sup_{||w|| <= B} (1/N) sum_i sigma_i <w, phi(x_i)>
                 = (B/N) E_sigma sqrt(sigma^T K sigma)
                <= (B/N) sqrt(tr K)                          (Jensen)

  (Bartlett and Mendelson, 2002, "Rademacher and Gaussian complexities",
  Lemma 22). The expectation over Rademacher signs sigma is taken by Monte
  Carlo with ``num_draws`` draws.

  Args:
    gram: (N, N) symmetric PSD kernel matrix, N >= 1 (e.g.
      ``mmd.gram(mmd.exp_kernel(tau), keys, keys)``).
    radius: B > 0.
    key: PRNG key for the signs.
    num_draws: number of sign vectors, >= 2 (static).

  Returns:
    RademacherEstimate. Claim ``thm3.2``.
  """
  gram = _checks.as_float_array("gram", gram, ndim=2)
  n = gram.shape[0]
  if gram.shape != (n, n) or n == 0:
    raise ValueError(f"gram must be a non-empty square (N, N) matrix, got shape {gram.shape}")
  if not isinstance(num_draws, int) or isinstance(num_draws, bool) or num_draws < 2:
    raise ValueError(f"num_draws must be an int >= 2, got {num_draws!r}")
  radius = _checks.scalar_param("radius", radius, gram.dtype)
  _check_finite(gram=gram)
  sigma = jax.random.rademacher(key, (num_draws, n), dtype=gram.dtype)      # (S, N)
  quad = jnp.sum(jnp.dot(sigma, gram, precision=HIGHEST) * sigma, axis=1)   # (S,)
  # sigma^T K sigma >= 0 for PSD K; rounding can make a tiny value negative.
  vals = radius / n * jnp.sqrt(jnp.maximum(quad, 0.0))                      # (S,)
  trace = jnp.trace(gram)
  out = RademacherEstimate(estimate=jnp.mean(vals),
                           std_error=jnp.std(vals, ddof=1) / jnp.sqrt(num_draws * 1.0),
                           analytic_bound=radius * jnp.sqrt(jnp.maximum(trace, 0.0)) / n,
                           trace=trace)
  return _checks.poison_if_nonfinite(out, gram, positive=(radius,))


class RademacherBound(NamedTuple):
  """Right-hand side of C4 minus L_hat(W): L(W) <= L_hat(W) + ``hoeffding`` (or + ``paper``).

  Attributes:
    hoeffding: complexity + confidence_hoeffding (THEORY.md's stated form).
    paper: complexity + confidence_paper (the paper's O(log(1/delta)/N) term, constant 1).
    complexity: 4 B C (D_T + B C) / sqrt(N) (twice the Lipschitz constant
      2 (D_T + B C) times the Rademacher bound B C / sqrt(N)).
    confidence_hoeffding: (D_T + B C)^2 sqrt(log(1/delta) / (2N)) (McDiarmid).
    confidence_paper: (D_T + B C)^2 log(1/delta) / N.
    loss_range: (D_T + B C)^2, the sup of the loss on F_B.
  """
  hoeffding: jax.Array
  paper: jax.Array
  complexity: jax.Array
  confidence_hoeffding: jax.Array
  confidence_paper: jax.Array
  loss_range: jax.Array


def rademacher_bound(*, radius, feature_bound, teacher_bound, n, delta) -> RademacherBound:
  """The C4 (``thm3.2``) generalization gap bound, in both readings.

      L(W) - L_hat(W) <= 4 B C (D_T + B C) / sqrt(N) + (D_T + B C)^2 sqrt(log(1/delta) / (2N))
      (paper's reading of the last term: (D_T + B C)^2 log(1/delta) / N)

  Args:
    radius: B > 0, the HS radius of the class.
    feature_bound: C > 0 with ||phi(W^K x)|| = exp(|W^K x|^2 / (2 tau)) <= C on the support.
    teacher_bound: D_T >= 0 with ||W^V x|| <= D_T on the support.
    n: sample size N >= 1 (a scalar; may be an array for vmapping).
    delta: confidence parameter in (0, 1).

  Returns:
    RademacherBound; ``hoeffding`` is the form the toolkit's reports use.
  """
  dtype = jnp.result_type(float)
  b = _checks.scalar_param("radius", radius, dtype)
  c = _checks.scalar_param("feature_bound", feature_bound, dtype)
  d_t = _checks.scalar_param("teacher_bound", teacher_bound, dtype, allow_zero=True)
  n_arr = _checks.scalar_param("n", n, dtype)
  delta = _checks.scalar_param("delta", delta, dtype)
  if _checks.is_concrete(delta) and not float(delta) < 1.0:
    raise ValueError(f"delta must lie in (0, 1), got {float(delta)}")
  if _checks.is_concrete(n_arr) and float(n_arr) < 1.0:
    raise ValueError(f"n must be >= 1, got {float(n_arr)}")
  reach = d_t + b * c                                                       # sup of |f_T - f_S|
  loss_range = reach * reach
  log_inv_delta = -jnp.log(delta)
  complexity = 4.0 * b * c * reach / jnp.sqrt(n_arr)
  conf_h = loss_range * jnp.sqrt(log_inv_delta / (2.0 * n_arr))
  conf_p = loss_range * log_inv_delta / n_arr
  out = RademacherBound(hoeffding=complexity + conf_h, paper=complexity + conf_p,
                        complexity=complexity, confidence_hoeffding=conf_h,
                        confidence_paper=conf_p, loss_range=loss_range)
  return _checks.poison_if_nonfinite(out, positive=(b, c, n_arr, delta, 1.0 - delta))


class SampleBounds(NamedTuple):
  """Sample suprema used as the constants of C4-C6.

  Attributes:
    input_bound: M_x = max_i ||x_i||.
    teacher_bound: D_T = max_i ||W^V x_i||.
    log_feature_bound: log C = max_i |W^K x_i|^2 / (2 tau)  (C = max_i ||phi(W^K x_i)||).
    feature_bound: C (inf where it overflows; use the log).
    value_norm: M_V = ||W^V||_op, the largest singular value.
  """
  input_bound: jax.Array
  teacher_bound: jax.Array
  log_feature_bound: jax.Array
  feature_bound: jax.Array
  value_norm: jax.Array


def sample_bounds(params: AttentionParams, x, *, tau=1.0) -> SampleBounds:
  """The constants M_x, D_T, C = sup ||phi(W^K x)|| and ||W^V||_op over a sample (N, d).

  ||phi(z)||^2 = kappa(z, z) = exp(|z|^2 / tau), so ||phi(W^K x)|| = exp(|W^K x|^2 / (2 tau)).
  """
  params = check_params(params)
  x = _check_tokens("x", x, params.d, allow_empty=False)
  dtype = _checks.check_same_dtype(params=params.w_k, x=x)
  tau = _checks.scalar_param("tau", tau, dtype)
  _check_finite(x=x)
  keys = jnp.dot(x, params.w_k.T, precision=HIGHEST)                        # (N, d_k)
  values = jnp.dot(x, params.w_v.T, precision=HIGHEST)                      # (N, d_v)
  log_c = jnp.max(jnp.sum(keys * keys, axis=1)) / (2.0 * tau)
  out = SampleBounds(input_bound=jnp.max(jnp.linalg.norm(x, axis=1)),
                     teacher_bound=jnp.max(jnp.linalg.norm(values, axis=1)),
                     log_feature_bound=log_c, feature_bound=jnp.exp(log_c),
                     value_norm=jnp.linalg.norm(params.w_v, 2))
  return _checks.poison_if_nonfinite(out, *params, x, positive=(tau,))


# -- C5: the distillation bias ---------------------------------------------------


def distilled_weight_gap(params: AttentionParams, x_p, x_q, *, eta=None, log_eta=None,
                         tau=1.0) -> DualWeights:
  """dW_PQ = W_0(P_hat) - W_0(Q_hat) in exact dual form (C5, ``thm4.1``).

      W_0(P_hat) = (2 eta / n) sum_i W^V x_i phi(W^K x_i)^T,   x_i rows of x_p (n, d)
      W_0(Q_hat) = (2 eta / m) sum_j W^V y_j phi(W^K y_j)^T,   y_j rows of x_q (m, d)

  The result has n + m anchors (the keys of both samples). Its HS norm is
  exact but is a difference of Gram sums: when P_hat ~ Q_hat it carries an
  absolute error of ~sqrt(eps * scale), scale being the sum of the absolute
  terms (see ``DistillationBias.log_term_scale``).
  """
  w_p = one_step_kd_weights(params, x_p, eta=eta, log_eta=log_eta, tau=tau)
  w_q = one_step_kd_weights(params, x_q, eta=eta, log_eta=log_eta, tau=tau)
  return w_p - w_q


def _sample_pair(params: AttentionParams, x_p, x_q):
  params = check_params(params)
  x_p = _check_tokens("x_p", x_p, params.d, allow_empty=False)
  x_q = _check_tokens("x_q", x_q, params.d, allow_empty=False)
  dtype = _checks.check_same_dtype(params=params.w_k, x_p=x_p, x_q=x_q)
  _check_finite(**{"params.w_k": params.w_k, "params.w_v": params.w_v}, x_p=x_p, x_q=x_q)
  return params, x_p, x_q, dtype


class DistillationBias(NamedTuple):
  """Both sides of claim C5 (``thm4.1``) for one pair of samples.

  Attributes:
    lhs: ||W_0(P_hat) - W_0(Q_hat)||_HS (from the dual weights).
    identity_rhs: 2 eta MMD_kV(P_hat, Q_hat), biased (equal to ``lhs``: identity).
    bound_rhs: 2 eta ||W^V||_op MMD_kx(P_hat, Q_hat) (>= ``lhs``: bound).
    literal_rhs: eta M_V M_x M_phi MMD_k(P_hat, Q_hat) for the given kernel k (conjecture).
    log_lhs, log_identity_rhs, log_bound_rhs, log_literal_rhs: their logarithms, finite
      where the values over/underflow (-inf when a side is exactly 0).
    identity_residual: |lhs^2 - identity_rhs^2| / term_scale, the identity's error in units
      of the terms its two sides cancel; ~(n + m) eps in exact agreement.
    log_term_scale: log of term_scale = 4 eta^2 [(1/n^2) sum |k_V(x, x')| + (1/m^2)
      sum |k_V(y, y')| + (2/nm) sum |k_V(x, y)|], the scale of the cancellation in
      lhs^2 and identity_rhs^2.
    mmd_v, mmd_x, mmd_k: the three biased MMDs (k_V, k_x, the given k).
    value_norm: M_V = ||W^V||_op.
    input_bound: M_x (sample sup of ||x|| over both samples unless given).
    log_feature_bound: log M_phi (log sample sup of ||phi(W^K x)|| unless given).
  """
  lhs: jax.Array
  identity_rhs: jax.Array
  bound_rhs: jax.Array
  literal_rhs: jax.Array
  log_lhs: jax.Array
  log_identity_rhs: jax.Array
  log_bound_rhs: jax.Array
  log_literal_rhs: jax.Array
  identity_residual: jax.Array
  log_term_scale: jax.Array
  mmd_v: jax.Array
  mmd_x: jax.Array
  mmd_k: jax.Array
  value_norm: jax.Array
  input_bound: jax.Array
  log_feature_bound: jax.Array


def _log_mmd_parts(kernel, x_p, x_q):
  parts, _, _ = _mmd._mmd2_parts(x_p, x_q, kernel, "biased")
  log_mmd = 0.5 * (parts.log_shift + jnp.log(jnp.maximum(parts.value, 0.0)))
  log_abs = parts.log_shift + jnp.log(parts.abs_value)
  return log_mmd, log_abs


def distillation_bias(params: AttentionParams, x_p, x_q, *, eta=None, log_eta=None, tau=1.0,
                      kernel=None, input_bound=None, feature_bound=None) -> DistillationBias:
  """Every side of claim C5 (``thm4.1``) for samples x_p ~ P (n, d) and x_q ~ Q (m, d).

      lhs          = ||W_0(P_hat) - W_0(Q_hat)||_HS
      identity_rhs = 2 eta MMD_kV(P_hat, Q_hat)            (== lhs, exactly)
      bound_rhs    = 2 eta ||W^V||_op MMD_kx(P_hat, Q_hat) (>= lhs, always)
      literal_rhs  = eta M_V M_x M_phi MMD_k(P_hat, Q_hat)  (the paper's form; a conjecture)

  with k_V, k_x from :func:`icl_kd.mmd.distillation_kernel` and all MMDs the
  biased (V-statistic) ones, which are the MMDs of the empirical measures.
  The identity holds because both sides are the same quadratic form
  4 eta^2 c^T G c (G_ij = k_V(z_i, z_j), c = [1/n, ..., -1/m, ...]); it is
  computed along two code paths (dual weights vs. MMD estimator). The bound
  holds because ||W^V||^2 k_x - k_V is a PSD kernel.

  Args:
    params: AttentionParams (W^K, W^V; W^Q is not used).
    x_p: (n, d) sample of the prompt distribution P.
    x_q: (m, d) sample of the target distribution Q.
    eta: learning rate > 0 (or ``log_eta``).
    tau: softmax temperature.
    kernel: the generic kernel k of the literal form; default the Gaussian
      kernel with the median-heuristic bandwidth of the pooled sample.
    input_bound: M_x; default max ||x|| over both samples.
    feature_bound: M_phi; default max exp(|W^K x|^2 / (2 tau)) over both samples.

  Returns:
    DistillationBias. Jittable and vmappable (over samples, eta, tau, params).
  """
  params, x_p, x_q, dtype = _sample_pair(params, x_p, x_q)
  tau = _checks.scalar_param("tau", tau, dtype)
  log_eta_ = _log_step(dtype, eta, log_eta)
  log_two_eta = jnp.log(jnp.asarray(2.0, dtype)) + log_eta_

  gap = distilled_weight_gap(params, x_p, x_q, log_eta=log_eta_, tau=tau)
  log_lhs = gap.log_hs_norm()

  k_v = _mmd.distillation_kernel(params, tau=tau, use_values=True)
  k_x = _mmd.distillation_kernel(params, tau=tau, use_values=False)
  log_mmd_v, log_abs_v = _log_mmd_parts(k_v, x_p, x_q)
  log_mmd_x, _ = _log_mmd_parts(k_x, x_p, x_q)
  if kernel is None:
    kernel = _mmd.gaussian_kernel(_mmd.median_bandwidth(x_p, x_q))
  log_mmd_k, _ = _log_mmd_parts(kernel, x_p, x_q)

  both = jnp.concatenate([x_p, x_q])                                        # (n + m, d)
  if input_bound is None:
    input_bound = jnp.max(jnp.linalg.norm(both, axis=1))
  else:
    input_bound = _checks.scalar_param("input_bound", input_bound, dtype, allow_zero=True)
  if feature_bound is None:
    keys = jnp.dot(both, params.w_k.T, precision=HIGHEST)                   # (n + m, d_k)
    log_m_phi = jnp.max(jnp.sum(keys * keys, axis=1)) / (2.0 * tau)
  else:
    log_m_phi = jnp.log(_checks.scalar_param("feature_bound", feature_bound, dtype))
  value_norm = jnp.linalg.norm(params.w_v, 2)

  log_identity = log_two_eta + log_mmd_v
  log_bound = log_two_eta + jnp.log(value_norm) + log_mmd_x
  log_literal = (log_eta_ + jnp.log(value_norm) + jnp.log(input_bound) + log_m_phi + log_mmd_k)
  log_term_scale = 2.0 * log_two_eta + log_abs_v
  # |lhs^2 - rhs^2| / term_scale, formed in log space (no overflow at large scores).
  safe_scale = jnp.where(jnp.isfinite(log_term_scale), log_term_scale, 0.0)
  residual = jnp.abs(jnp.exp(2.0 * log_lhs - safe_scale) - jnp.exp(2.0 * log_identity - safe_scale))
  out = DistillationBias(
      lhs=jnp.exp(log_lhs), identity_rhs=jnp.exp(log_identity), bound_rhs=jnp.exp(log_bound),
      literal_rhs=jnp.exp(log_literal), log_lhs=log_lhs, log_identity_rhs=log_identity,
      log_bound_rhs=log_bound, log_literal_rhs=log_literal, identity_residual=residual,
      log_term_scale=log_term_scale, mmd_v=jnp.exp(log_mmd_v), mmd_x=jnp.exp(log_mmd_x),
      mmd_k=jnp.exp(log_mmd_k), value_norm=value_norm, input_bound=input_bound,
      log_feature_bound=log_m_phi)
  return _checks.poison_if_nonfinite(out, *params, x_p, x_q, positive=(tau,))


# -- C6: downstream consequences -------------------------------------------------


class PredictionGap(NamedTuple):
  """Both sides of the C6 (``thm4.2``) prediction bound at one query.

  Attributes:
    lhs: ||dW_PQ phi(z)||, z = W^Q x'.
    rhs: ||dW_PQ||_HS exp(|z|^2 / (2 tau)) (Cauchy-Schwarz; ||phi(z)|| = exp(|z|^2/(2 tau))).
    log_lhs, log_rhs: their logarithms.
    weight_gap_norm: ||dW_PQ||_HS.
    log_feature_norm: log ||phi(z)|| = |z|^2 / (2 tau).
  """
  lhs: jax.Array
  rhs: jax.Array
  log_lhs: jax.Array
  log_rhs: jax.Array
  weight_gap_norm: jax.Array
  log_feature_norm: jax.Array


def _log_apply_norm(w: DualWeights, z: jax.Array) -> jax.Array:
  """log ||W phi(z)|| in log space (the sum over anchors is shifted by its max)."""
  m, s = _log_weighted_sum(w.log_kernel(z) + w.log_scale, w.coeffs)
  return m + jnp.log(jnp.linalg.norm(s))


def prediction_gap(params: AttentionParams, x_p, x_q, query, *, eta=None, log_eta=None,
                   tau=1.0) -> PredictionGap:
  """C6 (``thm4.2``), prediction: ||dW_PQ phi(W^Q x')|| <= ||dW_PQ||_HS exp(|W^Q x'|^2 / (2 tau)).

  Args:
    params: AttentionParams.
    x_p: (n, d) prompt sample; x_q: (m, d) target sample.
    query: (d,) query token x'.
    eta: learning rate > 0 (or ``log_eta``); tau: temperature.

  Returns:
    PredictionGap.
  """
  params, x_p, x_q, dtype = _sample_pair(params, x_p, x_q)
  query = _checks.as_float_array("query", query, ndim=1)
  if query.shape != (params.d,):
    raise ValueError(f"query must have shape ({params.d},) (d,), got {query.shape}")
  _checks.check_same_dtype(params=params.w_q, query=query)
  _check_finite(query=query, **{"params.w_q": params.w_q})
  tau = _checks.scalar_param("tau", tau, dtype)
  log_eta_ = _log_step(dtype, eta, log_eta)
  gap = distilled_weight_gap(params, x_p, x_q, log_eta=log_eta_, tau=tau)
  z = jnp.dot(params.w_q, query, precision=HIGHEST)                         # (d_k,)
  log_lhs = _log_apply_norm(gap, z)
  log_hs = gap.log_hs_norm()
  log_phi = jnp.sum(z * z) / (2.0 * tau)
  out = PredictionGap(lhs=jnp.exp(log_lhs), rhs=jnp.exp(log_hs + log_phi), log_lhs=log_lhs,
                      log_rhs=log_hs + log_phi, weight_gap_norm=jnp.exp(log_hs),
                      log_feature_norm=log_phi)
  return _checks.poison_if_nonfinite(out, *params, x_p, x_q, query, positive=(tau,))


def kd_risk(weights: DualWeights, params: AttentionParams, x_target) -> jax.Array:
  """R_Q(W) = (1/n) sum_i ||W^V x_i - W phi(W^K x_i)||^2 on a target sample (n, d) (C6).

  The squared KD loss of C2 evaluated on the target; W in exact dual form.
  """
  params = check_params(params)
  x_target = _check_tokens("x_target", x_target, params.d, allow_empty=False)
  if weights.d_v != params.d_v or weights.d_k != params.d_k:
    raise ValueError(f"weights act on (d_v, d_k) = ({weights.d_v}, {weights.d_k}); params "
                     f"need ({params.d_v}, {params.d_k})")
  _check_finite(x_target=x_target)
  keys = jnp.dot(x_target, params.w_k.T, precision=HIGHEST)                 # (n, d_k)
  teacher = jnp.dot(x_target, params.w_v.T, precision=HIGHEST)              # (n, d_v)
  student = jax.vmap(weights.apply)(keys)                                   # (n, d_v)
  out = jnp.mean(jnp.sum((teacher - student) ** 2, axis=1))
  return _checks.poison_if_nonfinite(out, x_target)


class RiskBound(NamedTuple):
  """Both sides of the C6 (``thm4.2``) risk inequality.

  Attributes:
    lhs: sqrt(R_Q(W_0(P_hat))).
    rhs: sqrt(R_Q(W_0(Q_hat))) + C ||dW_PQ||_HS.
    risk_p: R_Q(W_0(P_hat)); risk_q: R_Q(W_0(Q_hat)).
    weight_gap_norm: ||dW_PQ||_HS.
    log_feature_bound: log C, C = max over the target sample of exp(|W^K x|^2 / (2 tau)).
  """
  lhs: jax.Array
  rhs: jax.Array
  risk_p: jax.Array
  risk_q: jax.Array
  weight_gap_norm: jax.Array
  log_feature_bound: jax.Array


def risk_bound(params: AttentionParams, x_p, x_q, x_target, *, eta=None, log_eta=None,
               tau=1.0) -> RiskBound:
  """C6 (``thm4.2``), risk: sqrt(R_Q(W_0(P))) <= sqrt(R_Q(W_0(Q))) + C ||dW_PQ||_HS.

  R_Q is the KD risk :func:`kd_risk` on ``x_target`` (a sample of Q, possibly
  ``x_q`` itself); W_0(P), W_0(Q) are the one-step weights of the samples
  ``x_p`` and ``x_q``; C = max_{x in x_target} ||phi(W^K x)||. The inequality is
  the triangle inequality in L2(Q_hat) plus ||dW phi(k)|| <= ||dW||_HS ||phi(k)||.
  """
  params, x_p, x_q, dtype = _sample_pair(params, x_p, x_q)
  x_target = _check_tokens("x_target", x_target, params.d, allow_empty=False)
  _checks.check_same_dtype(params=params.w_k, x_target=x_target)
  _check_finite(x_target=x_target)
  tau = _checks.scalar_param("tau", tau, dtype)
  log_eta_ = _log_step(dtype, eta, log_eta)
  w_p = one_step_kd_weights(params, x_p, log_eta=log_eta_, tau=tau)
  w_q = one_step_kd_weights(params, x_q, log_eta=log_eta_, tau=tau)
  risk_p = kd_risk(w_p, params, x_target)
  risk_q = kd_risk(w_q, params, x_target)
  log_hs = (w_p - w_q).log_hs_norm()
  keys = jnp.dot(x_target, params.w_k.T, precision=HIGHEST)                 # (n_t, d_k)
  log_c = jnp.max(jnp.sum(keys * keys, axis=1)) / (2.0 * tau)
  out = RiskBound(lhs=jnp.sqrt(risk_p), rhs=jnp.sqrt(risk_q) + jnp.exp(log_c + log_hs),
                  risk_p=risk_p, risk_q=risk_q, weight_gap_norm=jnp.exp(log_hs),
                  log_feature_bound=log_c)
  return _checks.poison_if_nonfinite(out, *params, x_p, x_q, x_target, positive=(tau,))
