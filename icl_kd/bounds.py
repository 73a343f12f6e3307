"""Both sides of the paper's bounds: Rademacher (C4), MMD bias (C5), downstream (C6).

docs/THEORY.md (docs/THEORY.md in this repository):
- C4 (``thm3.2``): for F_B = {x -> W phi(W^K x) : ||W||_HS <= B}, inputs with
  ||phi(W^K x)|| <= C and ||W^V x|| <= D_T, with probability >= 1 - delta,
      L(W) <= L_hat(W) + 4 B C (D_T + B C) / sqrt(N) + (D_T + B C)^2 sqrt(log(1/delta) / (2N)),
  and the paper's form ``thm3.2-paper-form`` with (D_T + B C)^2 log(1/delta) / N as last term.
- C5 (``thm4.1``): dW_PQ = W_0(P) - W_0(Q) with W_0(P) = c eta E_P[W^V x phi(W^K x)^T];
      ||dW_PQ||_HS = c eta MMD_kV(P, Q)                 (identity)
                  <= c eta ||W^V||_op MMD_kx(P, Q)      (bound)
      paper's literal form: ||dW||_F <= eta M_V M_x M_phi MMD_k(P, Q), one conjecture per
      kernel read into it (:func:`literal_readings`).
- C6 (``thm4.2``): ||dW_PQ phi(z)|| <= ||dW_PQ||_HS exp(|z|^2 / (2 tau)) and
      sqrt(R_Q(W_0(P))) <= sqrt(R_Q(W_0(Q))) + C ||dW_PQ||_HS     (consistency checks),
      ||dW_PQ phi(z)|| <= c eta ||W^V||_op MMD_kx(P, Q) exp(|z|^2 / (2 tau))  (``thm4.2-mmd``),
      the same with M_phi in place of exp(|z|^2 / (2 tau))               (``thm4.2-literal``).

The constant c is a convention (docs/THEORY.md C5), chosen by the keyword
``convention`` of every C5/C6 function:

- ``"eq12"`` (c = 2, the default): the paper's one-step formula (its Eq. 12,
  claim ``kd-step``), W_0 = (2 eta / N) sum_i W^V x_i phi(W^K x_i)^T;
- ``"half"`` (c = 1): the convention under which the constant of the paper's
  Theorem 4.1 has no missing factor.

``convention`` is a Python string: under ``jax.jit`` mark it static
(``static_argnames="convention"``). The paper's literal right sides carry no
c; only the weights, hence the left sides and the corrected right sides, scale
with it.

P and Q enter through samples: W_0 of a sample is that of its empirical
measure (exact in dual form); a population quantity is approached with a
large sample. Every quantity that can overflow (exp(|W^K x|^2 / (2 tau)),
MMD_kV at large scores, the KD risks) is also returned as its logarithm,
computed without forming the overflowing value.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from icl_kd import _checks
from icl_kd import mmd as _mmd
from icl_kd.attention import AttentionParams, _check_tokens, check_params
from icl_kd.dual import HIGHEST, DualWeights, _log_weighted_sum
from icl_kd.kd import _log_step, one_step_kd_weights
from icl_kd.mmd import _check_finite

# -- conventions ------------------------------------------------------------------

CONVENTIONS = ("eq12", "half")


def convention_factor(convention: str) -> float:
  """The constant c of W_0(P) = c eta E_P[W^V x phi(W^K x)^T] (docs/THEORY.md C5).

      "eq12" -> c = 2   (the paper's Eq. 12; the default everywhere)
      "half" -> c = 1   (the convention of the paper's Theorem 4.1 constant)

  Raises:
    ValueError: naming ``convention`` for any other value.
  """
  if not isinstance(convention, str) or convention not in CONVENTIONS:
    raise ValueError(f"convention must be one of {CONVENTIONS} ('eq12': c = 2, 'half': c = 1), "
                     f"got {convention!r}")
  return 2.0 if convention == "eq12" else 1.0


# -- C4: Rademacher complexity and the generalization bound -------------------------


class RademacherEstimate(NamedTuple):
  """Result of :func:`empirical_rademacher`.

  Attributes:
    estimate: Monte Carlo estimate of R_hat = (B/N) E_sigma sqrt(sigma^T K sigma).
    std_error: its standard error, the sample standard deviation of the S per-draw values
      (B/N) sqrt(sigma_s^T K sigma_s) divided by sqrt(S), S = ``num_draws``.
    analytic_bound: B sqrt(tr K) / N, an upper bound on R_hat (Jensen).
    trace: tr K.
  """
  estimate: jax.Array
  std_error: jax.Array
  analytic_bound: jax.Array
  trace: jax.Array


def gram_tolerance(dtype) -> float:
  """Default relative tolerance of the symmetry and PSD checks of a Gram matrix: sqrt(eps).

  1.49e-8 for float64, 3.45e-4 for float32: far above the rounding of a Gram
  matrix built by :func:`icl_kd.mmd.gram` (~N eps relative), far below a real
  defect.
  """
  return float(np.sqrt(np.finfo(np.dtype(dtype)).eps))


def _cholesky_pivots_positive(a: jax.Array) -> jax.Array:
  """Whether the symmetric (N, N) ``a`` has a Cholesky factor: every pivot of the
  right-looking elimination is > 0 (i.e. ``a`` is positive definite up to rounding).

  Written as an N-step ``fori_loop`` of rank-one updates rather than
  ``jnp.linalg.cholesky``: the batched LAPACK kernels behind XLA's CPU
  ``cholesky``/``eigh`` hang when two CPU devices run them at once on large
  batches (seen with ``jax_num_cpu_devices=2``, the layout ``python -m
  proofs_check`` uses for large runs), and this loop vectorises under ``vmap``.
  """
  n = a.shape[0]
  idx = jnp.arange(n)

  def step(j, carry):
    a, ok = carry
    pivot = a[j, j]
    ok = ok & (pivot > 0)
    col = jnp.where(idx > j, a[:, j], 0.0) / jnp.sqrt(jnp.where(pivot > 0, pivot, 1.0))
    return a - jnp.outer(col, col), ok

  _, ok = jax.lax.fori_loop(0, n, step, (a, jnp.asarray(True)))
  return ok


def _gram_defects(gram: jax.Array, tol):
  """(max |K - K^T|, max |K|, whether K_sym + tol max|K| I has a Cholesky factor), traceable."""
  asym = jnp.max(jnp.abs(gram - gram.T))
  scale = jnp.max(jnp.abs(gram))
  n = gram.shape[0]
  shifted = 0.5 * (gram + gram.T) + tol * scale * jnp.eye(n, dtype=gram.dtype)
  factorises = _cholesky_pivots_positive(
      jnp.where(scale > 0, shifted, jnp.eye(n, dtype=gram.dtype)))
  return asym, scale, factorises


def _check_gram_values(gram: jax.Array, tol: float) -> None:
  """Eager symmetry and PSD checks of a concrete Gram matrix (ValueError naming ``gram``)."""
  g = np.asarray(gram, dtype=np.float64)
  scale = float(np.max(np.abs(g)))
  asym = float(np.max(np.abs(g - g.T)))
  if asym > tol * scale:
    raise ValueError(f"gram must be symmetric: max |K - K^T| = {asym:.3g} exceeds "
                     f"tol * max |K| = {tol:.3g} * {scale:.3g}")
  lo = float(np.linalg.eigvalsh(0.5 * (g + g.T)).min())
  if lo < -tol * scale:
    raise ValueError(f"gram must be positive semidefinite: its smallest eigenvalue {lo:.3g} is "
                     f"below -tol * max |K| = -{tol:.3g} * {scale:.3g}")


def empirical_rademacher(gram: Float[ArrayLike, "n n"], *, radius: Real[ArrayLike, ""],
                         key: PRNGKeyArray, num_draws: int = 1000, tol=None) -> RademacherEstimate:
  """Empirical Rademacher complexity of the RKHS ball of radius B on a sample (C4).

  For F_B = {x -> <w, phi(x)> : ||w|| <= B} (per output coordinate; docs/THEORY.md
  C4 uses K_ij = kappa(W^K x_i, W^K x_j)),

      R_hat(F_B) = E_sigma sup_{||w|| <= B} (1/N) sum_i sigma_i <w, phi(x_i)>
                 = (B/N) E_sigma sqrt(sigma^T K sigma)
                <= (B/N) sqrt(tr K)                          (Jensen)

  (Bartlett and Mendelson, 2002, "Rademacher and Gaussian complexities",
  Lemma 22). The expectation over Rademacher signs sigma is taken by Monte
  Carlo with ``num_draws`` draws; the standard error is that of the mean of
  the S = ``num_draws`` i.i.d. per-draw values.

  K must be a Gram matrix: square, symmetric and positive semidefinite, else
  sigma^T K sigma is not a squared RKHS norm and the formula returns a wrong
  finite number. Checked to the relative tolerance ``tol``:

      max |K - K^T| <= tol * max |K|    and    min eig(K) >= -tol * max |K|

  (under jit the second test is that K + tol max|K| I has a Cholesky factor,
  the same condition up to rounding).

  Args:
    gram: (N, N) symmetric PSD kernel matrix, N >= 1 (e.g.
      ``mmd.gram(mmd.exp_kernel(tau), keys, keys)``).
    radius: B > 0.
    key: PRNG key for the signs.
    num_draws: number of sign vectors, >= 2 (static).
    tol: relative tolerance of the symmetry and PSD checks, >= 0; default
      :func:`gram_tolerance` (sqrt(eps) of the dtype).

  Returns:
    RademacherEstimate. Claim ``thm3.2`` (checker ``rademacher-empirical``).

  Raises:
    ValueError: naming ``gram`` when it is not a non-empty square matrix (also
      under jit, at trace time), or, when its values are concrete, non-finite,
      not symmetric or not PSD. Under jit with a traced ``gram`` the value
      checks cannot raise: every field is NaN instead.
  """
  gram = _checks.as_float_array("gram", gram, ndim=2)
  n = gram.shape[0]
  if gram.shape != (n, n) or n == 0:
    raise ValueError(f"gram must be a non-empty square (N, N) matrix, got shape {gram.shape}")
  if not isinstance(num_draws, int) or isinstance(num_draws, bool) or num_draws < 2:
    raise ValueError(f"num_draws must be an int >= 2, got {num_draws!r}")
  radius = _checks.scalar_param("radius", radius, gram.dtype)
  if tol is None:
    tol = gram_tolerance(gram.dtype)
  tol = _checks.scalar_param("tol", tol, gram.dtype, allow_zero=True)
  _check_finite(gram=gram)
  if _checks.is_concrete(gram) and _checks.is_concrete(tol):
    _check_gram_values(gram, float(tol))
    valid = jnp.ones((), gram.dtype)
  else:
    asym, scale, factorises = _gram_defects(gram, tol)
    valid = jnp.where((asym <= tol * scale) & factorises, 1.0, 0.0).astype(gram.dtype)
  sigma = jax.random.rademacher(key, (num_draws, n), dtype=gram.dtype)      # (S, N)
  quad = jnp.sum(jnp.dot(sigma, gram, precision=HIGHEST) * sigma, axis=1)   # (S,)
  # sigma^T K sigma >= 0 for PSD K; rounding can make a tiny value negative.
  vals = radius / n * jnp.sqrt(jnp.maximum(quad, 0.0))                      # (S,)
  trace = jnp.trace(gram)
  out = RademacherEstimate(estimate=jnp.mean(vals),
                           std_error=jnp.std(vals, ddof=1) / jnp.sqrt(num_draws * 1.0),
                           analytic_bound=radius * jnp.sqrt(jnp.maximum(trace, 0.0)) / n,
                           trace=trace)
  return _checks.poison_if_nonfinite(out, gram, positive=(radius, valid))


class RademacherBound(NamedTuple):
  """Right-hand side of C4 minus L_hat(W): L(W) <= L_hat(W) + ``hoeffding`` (or + ``paper``).

  Attributes:
    hoeffding: complexity + confidence_hoeffding (claim ``thm3.2``, docs/THEORY.md's stated form).
    paper: complexity + confidence_paper (claim ``thm3.2-paper-form``: the paper's
      O(log(1/delta)/N) term with the O-constant taken as (D_T + B C)^2).
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


def rademacher_bound(*, radius: Real[ArrayLike, ""], feature_bound: Real[ArrayLike, ""],
                     teacher_bound: Real[ArrayLike, ""], n: Real[ArrayLike, ""],
                     delta: Real[ArrayLike, ""]) -> RademacherBound:
  """The C4 generalization gap bound, in both forms (``thm3.2``, ``thm3.2-paper-form``).

      thm3.2:            L(W) - L_hat(W) <= 4 B C (D_T + B C) / sqrt(N)
                                            + (D_T + B C)^2 sqrt(log(1/delta) / (2N))
      thm3.2-paper-form: L(W) - L_hat(W) <= 4 B C (D_T + B C) / sqrt(N)
                                            + (D_T + B C)^2 log(1/delta) / N

  The paper writes the last term as O(log(1/delta)/N); the paper form takes
  its constant as the loss range (D_T + B C)^2. It is below the Hoeffding
  term once N > 2 log(1/delta), so its violation rate is a finding.

  Args:
    radius: B > 0, the HS radius of the class.
    feature_bound: C > 0 with ||phi(W^K x)|| = exp(|W^K x|^2 / (2 tau)) <= C on the support.
    teacher_bound: D_T >= 0 with ||W^V x|| <= D_T on the support.
    n: sample size N >= 1 (a scalar; may be an array for vmapping).
    delta: confidence parameter in (0, 1).

  Returns:
    RademacherBound; ``hoeffding`` is the form of claim ``thm3.2``, ``paper``
    that of ``thm3.2-paper-form`` (checker ``thm3.2`` in proofs_check).
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


def sample_bounds(params: AttentionParams, x: Float[ArrayLike, "n d"], *,
                  tau: Real[ArrayLike, ""] = 1.0) -> SampleBounds:
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


def _log_eta_and_shift(params: AttentionParams, eta, log_eta, convention: str):
  """(log eta, log(c/2)): ``one_step_kd_weights`` carries the factor 2 of Eq. 12 itself."""
  c = convention_factor(convention)
  params = check_params(params)
  return _log_step(params.w_k.dtype, eta, log_eta), math.log(c / 2.0)


def distilled_weight_gap(params: AttentionParams, x_p: Float[ArrayLike, "n d"],
                         x_q: Float[ArrayLike, "m d"], *, eta: Real[ArrayLike, ""] | None = None,
                         log_eta: Real[ArrayLike, ""] | None = None, tau: Real[ArrayLike, ""] = 1.0,
                         convention: str = "eq12") -> DualWeights:
  """dW_PQ = W_0(P_hat) - W_0(Q_hat) in exact dual form (C5, ``thm4.1``).

      W_0(P_hat) = (c eta / n) sum_i W^V x_i phi(W^K x_i)^T,   x_i rows of x_p (n, d)
      W_0(Q_hat) = (c eta / m) sum_j W^V y_j phi(W^K y_j)^T,   y_j rows of x_q (m, d)

  with c = 2 (``convention="eq12"``, default) or 1 (``"half"``). The result
  has n + m anchors (the keys of both samples). Its HS norm is exact but is a
  difference of Gram sums: when P_hat ~ Q_hat it carries an absolute error of
  ~sqrt(eps * scale), scale being the sum of the absolute terms (see
  ``DistillationBias.log_term_scale``).
  """
  log_eta_, shift = _log_eta_and_shift(params, eta, log_eta, convention)
  w_p = one_step_kd_weights(params, x_p, log_eta=log_eta_ + shift, tau=tau)
  w_q = one_step_kd_weights(params, x_q, log_eta=log_eta_ + shift, tau=tau)
  return w_p - w_q


def _sample_pair(params: AttentionParams, x_p, x_q):
  params = check_params(params)
  x_p = _check_tokens("x_p", x_p, params.d, allow_empty=False)
  x_q = _check_tokens("x_q", x_q, params.d, allow_empty=False)
  dtype = _checks.check_same_dtype(params=params.w_k, x_p=x_p, x_q=x_q)
  _check_finite(**{"params.w_k": params.w_k, "params.w_v": params.w_v}, x_p=x_p, x_q=x_q)
  return params, x_p, x_q, dtype


def _support_constants(params: AttentionParams, x_p, x_q, tau, dtype, input_bound,
                       feature_bound):
  """(M_x, log M_phi): sups over the pooled samples unless given.

  The pooled samples are the support of the empirical measures P_hat, Q_hat,
  so the defaults are the support sups of the measures every C5/C6 side is
  computed for. For population P, Q pass their support sups instead.
  """
  both = jnp.concatenate([x_p, x_q])                                        # (n + m, d)
  if input_bound is None:
    m_x = jnp.max(jnp.linalg.norm(both, axis=1))
  else:
    m_x = _checks.scalar_param("input_bound", input_bound, dtype, allow_zero=True)
  if feature_bound is None:
    keys = jnp.dot(both, params.w_k.T, precision=HIGHEST)                   # (n + m, d_k)
    log_m_phi = jnp.max(jnp.sum(keys * keys, axis=1)) / (2.0 * tau)
  else:
    log_m_phi = jnp.log(_checks.scalar_param("feature_bound", feature_bound, dtype))
  return m_x, log_m_phi


class DistillationBias(NamedTuple):
  """Both sides of claim C5 (``thm4.1``) for one pair of samples.

  Attributes:
    lhs: ||W_0(P_hat) - W_0(Q_hat)||_HS (from the dual weights; scales with c).
    identity_rhs: c eta MMD_kV(P_hat, Q_hat), biased (equal to ``lhs``: identity).
    bound_rhs: c eta ||W^V||_op MMD_kx(P_hat, Q_hat) (>= ``lhs``: bound).
    literal_rhs: eta M_V M_x M_phi MMD_k(P_hat, Q_hat) for the given kernel k (conjecture;
      no c: the paper's constant).
    log_lhs, log_identity_rhs, log_bound_rhs, log_literal_rhs: their logarithms, finite
      where the values over/underflow (-inf when a side is exactly 0).
    identity_residual: |lhs^2 - identity_rhs^2| / term_scale, the identity's error in units
      of the terms its two sides cancel; ~(n + m) eps in exact agreement.
    log_term_scale: log of term_scale = c^2 eta^2 [(1/n^2) sum |k_V(x, x')| + (1/m^2)
      sum |k_V(y, y')| + (2/nm) sum |k_V(x, y)|], the scale of the cancellation in
      lhs^2 and identity_rhs^2.
    mmd_v, mmd_x, mmd_k: the three biased MMDs (k_V, k_x, the given k).
    value_norm: M_V = ||W^V||_op.
    input_bound: M_x (sup of ||x|| over both samples unless given).
    log_feature_bound: log M_phi (log sup of ||phi(W^K x)|| over both samples unless given).
    convention_factor: c (2 under "eq12", 1 under "half").
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
  convention_factor: jax.Array


def _log_mmd_parts(kernel, x_p, x_q):
  parts, _, _ = _mmd._mmd2_parts(x_p, x_q, kernel, "biased")
  log_mmd = 0.5 * (parts.log_shift + jnp.log(jnp.maximum(parts.value, 0.0)))
  log_abs = parts.log_shift + jnp.log(parts.abs_value)
  return log_mmd, log_abs


def distillation_bias(params: AttentionParams, x_p: Float[ArrayLike, "n d"],
                      x_q: Float[ArrayLike, "m d"], *, eta: Real[ArrayLike, ""] | None = None,
                      log_eta: Real[ArrayLike, ""] | None = None, tau: Real[ArrayLike, ""] = 1.0,
                      kernel=None, input_bound=None, feature_bound=None, convention: str = "eq12"
                      ) -> DistillationBias:
  """Every side of claim C5 (``thm4.1``) for samples x_p ~ P (n, d) and x_q ~ Q (m, d).

      lhs          = ||W_0(P_hat) - W_0(Q_hat)||_HS
      identity_rhs = c eta MMD_kV(P_hat, Q_hat)            (== lhs, exactly; thm4.1-identity)
      bound_rhs    = c eta ||W^V||_op MMD_kx(P_hat, Q_hat) (>= lhs, always; thm4.1-bound)
      literal_rhs  = eta M_V M_x M_phi MMD_k(P_hat, Q_hat)  (the paper's form; a conjecture)

  with c = 2 (``convention="eq12"``) or 1 (``"half"``), k_V, k_x from
  :func:`icl_kd.mmd.distillation_kernel` and all MMDs the biased (V-statistic)
  ones, which are the MMDs of the empirical measures. The identity holds
  because both sides are the same quadratic form c^2 eta^2 w^T G w
  (G_ij = k_V(z_i, z_j), w = [1/n, ..., -1/m, ...]); it is computed along two
  code paths (dual weights vs. MMD estimator). The bound holds because
  ||W^V||^2 k_x - k_V is a PSD kernel. :func:`literal_readings` gives the
  literal form for every kernel reading of docs/THEORY.md C5.

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
    convention: "eq12" (c = 2, default) or "half" (c = 1); static under jit.

  Returns:
    DistillationBias. Jittable and vmappable (over samples, eta, tau, params).
    Checkers ``thm4.1-identity``, ``thm4.1-bound`` in proofs_check.
  """
  core = _pair_core(params, x_p, x_q, eta, log_eta, tau, convention, input_bound,
                    feature_bound)
  return _bias_of(core, kernel)


class _PairCore(NamedTuple):
  """The work every C5/C6 side shares, done once per pair of samples."""
  params: AttentionParams
  x_p: jax.Array
  x_q: jax.Array
  tau: jax.Array
  log_eta: jax.Array           # log eta (no c)
  c: float
  gap: DualWeights             # dW_PQ
  log_lhs: jax.Array           # log ||dW_PQ||_HS
  log_mmd_x: jax.Array         # log MMD_kx (biased)
  value_norm: jax.Array        # ||W^V||_op
  input_bound: jax.Array       # M_x
  log_feature_bound: jax.Array  # log M_phi


def _pair_core(params, x_p, x_q, eta, log_eta, tau, convention, input_bound,
               feature_bound) -> _PairCore:
  log_eta_, _ = _log_eta_and_shift(params, eta, log_eta, convention)
  params, x_p, x_q, dtype = _sample_pair(params, x_p, x_q)
  tau = _checks.scalar_param("tau", tau, dtype)
  gap = distilled_weight_gap(params, x_p, x_q, log_eta=log_eta_, tau=tau, convention=convention)
  log_mmd_x, _ = _log_mmd_parts(_mmd.distillation_kernel(params, tau=tau, use_values=False),
                                x_p, x_q)
  m_x, log_m_phi = _support_constants(params, x_p, x_q, tau, dtype, input_bound, feature_bound)
  return _PairCore(params, x_p, x_q, tau, log_eta_, convention_factor(convention), gap,
                   gap.log_hs_norm(), log_mmd_x, jnp.linalg.norm(params.w_v, 2), m_x, log_m_phi)


def _bias_of(core: _PairCore, kernel) -> "DistillationBias":
  params, x_p, x_q, tau = core.params, core.x_p, core.x_q, core.tau
  log_c_eta = core.log_eta + math.log(core.c)
  k_v = _mmd.distillation_kernel(params, tau=tau, use_values=True)
  log_mmd_v, log_abs_v = _log_mmd_parts(k_v, x_p, x_q)
  if kernel is None:
    kernel = _mmd.gaussian_kernel(_mmd.median_bandwidth(x_p, x_q))
  log_mmd_k, _ = _log_mmd_parts(kernel, x_p, x_q)
  log_lhs = core.log_lhs
  log_identity = log_c_eta + log_mmd_v
  log_bound = log_c_eta + jnp.log(core.value_norm) + core.log_mmd_x
  log_literal = (core.log_eta + jnp.log(core.value_norm) + jnp.log(core.input_bound)
                 + core.log_feature_bound + log_mmd_k)
  log_term_scale = 2.0 * log_c_eta + log_abs_v
  # |lhs^2 - rhs^2| / term_scale, formed in log space (no overflow at large scores).
  safe_scale = jnp.where(jnp.isfinite(log_term_scale), log_term_scale, 0.0)
  residual = jnp.abs(jnp.exp(2.0 * log_lhs - safe_scale) - jnp.exp(2.0 * log_identity - safe_scale))
  out = DistillationBias(
      lhs=jnp.exp(log_lhs), identity_rhs=jnp.exp(log_identity), bound_rhs=jnp.exp(log_bound),
      literal_rhs=jnp.exp(log_literal), log_lhs=log_lhs, log_identity_rhs=log_identity,
      log_bound_rhs=log_bound, log_literal_rhs=log_literal, identity_residual=residual,
      log_term_scale=log_term_scale, mmd_v=jnp.exp(log_mmd_v), mmd_x=jnp.exp(core.log_mmd_x),
      mmd_k=jnp.exp(log_mmd_k), value_norm=core.value_norm, input_bound=core.input_bound,
      log_feature_bound=core.log_feature_bound,
      convention_factor=jnp.asarray(core.c, x_p.dtype))
  return _checks.poison_if_nonfinite(out, *params, x_p, x_q, positive=(tau,))


# -- C5: the paper's literal form under each kernel reading --------------------------

DEFAULT_BANDWIDTHS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""The fixed Gaussian bandwidth grid of ``thm4.1-literal-gaussian``: 2^-3 ... 2^3."""

READINGS = {
    "gaussian": "log_rhs_gaussian",
    "gaussian-grid": "log_rhs_gaussian_worst",
    "softmax": "log_rhs_softmax",
    "normalised": "log_rhs_normalised",
    "tv": "log_rhs_tv",
}
"""Reading name -> the field of :class:`LiteralReadings` holding its log right side.

The one map of the readings: each claim of the literal Theorem 4.1 names its
reading (``icl_kd.claims.Claim.reading``); ``gaussian-grid`` is the worst
bandwidth of the grid, reported by the Gaussian reading's claim.
"""


class LiteralReadings(NamedTuple):
  """The paper's literal Theorem 4.1, ||dW||_F <= eta M_V M_x M_phi MMD_k, for each reading of k.

  Every right side is eta M_V M_x M_phi times a discrepancy; the left side is
  the same for all readings. All values are logarithms (no overflow; -inf
  where a side is exactly 0, so a ratio is +inf when a right side vanishes
  and the left does not).

  Attributes:
    log_lhs: log ||dW_PQ||_HS = log(c eta MMD_kV(P_hat, Q_hat)).
    log_constant: log(eta M_V M_x M_phi), the literal form's constant (no c).
    log_rhs_gaussian: + log MMD of the Gaussian kernel at the median-heuristic bandwidth
      of the pooled sample (NaN when that median is 0).
    log_rhs_gaussian_grid: (G,) the same at each bandwidth of ``bandwidths``.
    log_rhs_gaussian_worst: the smallest of those, i.e. the grid's largest ratio.
    log_rhs_softmax: + log MMD of kappa(W^K x, W^K y) = exp(<W^K x, W^K y> / tau).
    log_rhs_normalised: + log MMD of k_x / (M_x M_phi)^2, which is
      log(eta M_V MMD_kx): ``thm4.1-bound``'s right side divided by c.
    log_rhs_tv: + log ||P_hat - Q_hat||_1 (see :func:`total_variation`).
    bandwidth: the median-heuristic bandwidth.
    bandwidths: (G,) the bandwidth grid.
    log_mmd_gaussian, log_mmd_gaussian_grid, log_mmd_softmax, log_mmd_x: the biased MMDs
      (logs) of the Gaussian (median; grid), softmax and k_x kernels.
    tv: ||P_hat - Q_hat||_1, in [0, 2].
    value_norm: M_V = ||W^V||_op.
    input_bound: M_x; log_feature_bound: log M_phi (pooled-sample sups unless given).
    convention_factor: c.
  """
  log_lhs: jax.Array
  log_constant: jax.Array
  log_rhs_gaussian: jax.Array
  log_rhs_gaussian_grid: jax.Array
  log_rhs_gaussian_worst: jax.Array
  log_rhs_softmax: jax.Array
  log_rhs_normalised: jax.Array
  log_rhs_tv: jax.Array
  bandwidth: jax.Array
  bandwidths: jax.Array
  log_mmd_gaussian: jax.Array
  log_mmd_gaussian_grid: jax.Array
  log_mmd_softmax: jax.Array
  log_mmd_x: jax.Array
  tv: jax.Array
  value_norm: jax.Array
  input_bound: jax.Array
  log_feature_bound: jax.Array
  convention_factor: jax.Array

  def log_ratio(self, reading: str) -> jax.Array:
    """log(lhs / rhs) of one reading (a key of :data:`READINGS`); > 0 is a violation."""
    if reading not in READINGS:
      raise ValueError(f"reading must be one of {tuple(READINGS)}, got {reading!r}")
    return self.log_lhs - getattr(self, READINGS[reading])


def total_variation(x_p: Float[ArrayLike, "n d"], x_q: Float[ArrayLike, "m d"]) -> Float[Array, ""]:
  """||P_hat - Q_hat||_1 of the empirical measures of x_p (n, d) and x_q (m, d), in [0, 2].

      P_hat = (1/n) sum_i delta_{x_i},  Q_hat = (1/m) sum_j delta_{y_j},
      ||P_hat - Q_hat||_1 = sum over distinct points z of |P_hat({z}) - Q_hat({z})|

  (twice the total variation distance sup_A |P(A) - Q(A)|). Points are the
  same atom when all their coordinates are exactly equal; two samples with no
  common point are at distance 2. This is the metric of the sup-norm argument
  ||E_P g - E_Q g|| <= sup ||g|| ||P - Q||_1 that ``thm4.1-literal-tv`` reads
  into the paper's form. O((n + m)^2 d); jittable.
  """
  x_p, x_q = _mmd._check_samples(x_p, x_q)
  n, m = x_p.shape[0], x_q.shape[0]
  z = jnp.concatenate([x_p, x_q])                                           # (n + m, d)
  w = jnp.concatenate([jnp.full((n,), 1.0 / n, z.dtype), jnp.full((m,), -1.0 / m, z.dtype)])
  same = jnp.all(z[:, None, :] == z[None, :, :], axis=-1)                  # (n + m, n + m)
  net = jnp.dot(same.astype(z.dtype), w, precision=HIGHEST)                 # (n + m,) mass at z_i
  multiplicity = jnp.sum(same, axis=1).astype(z.dtype)                      # (n + m,)
  out = jnp.sum(jnp.abs(net) / multiplicity)
  return _checks.poison_if_nonfinite(out, x_p, x_q)


def literal_readings(params: AttentionParams, x_p: Float[ArrayLike, "n d"],
                     x_q: Float[ArrayLike, "m d"], *, eta: Real[ArrayLike, ""] | None = None,
                     log_eta: Real[ArrayLike, ""] | None = None, tau: Real[ArrayLike, ""] = 1.0,
                     convention: str = "eq12", bandwidths=None, input_bound=None, feature_bound=None
                     ) -> LiteralReadings:
  """Both sides of the paper's literal Theorem 4.1 under every kernel reading (docs/THEORY.md C5).

      lhs = ||dW_PQ||_HS = c eta MMD_kV(P_hat, Q_hat)
      rhs = eta M_V M_x M_phi D(P_hat, Q_hat), with D one of
        thm4.1-literal-gaussian:   MMD of exp(-|x - y|^2 / (2 h^2)), h = median heuristic;
                                   and at each h of a fixed grid (the worst reported)
        thm4.1-literal-softmax:    MMD of kappa(W^K x, W^K y)  (phi's own kernel)
        thm4.1-literal-normalised: MMD of k_x / (M_x M_phi)^2 = MMD_kx / (M_x M_phi)
        thm4.1-literal-tv:         ||P_hat - Q_hat||_1

  M_V = ||W^V||_op. M_x = sup ||x|| and M_phi = sup ||phi(W^K x)|| =
  sup exp(|W^K x|^2 / (2 tau)) are taken over the pooled samples x_p, x_q,
  which is the support of the empirical measures compared here; pass
  ``input_bound`` / ``feature_bound`` for the support of population P, Q.
  On the support, |k_x(x, y)| <= M_x^2 M_phi^2 (Cauchy-Schwarz), so the
  normalised kernel is bounded by 1 and its reading is ``thm4.1-bound``
  divided by c: true under "half", violated by up to the factor 2 under
  "eq12". The TV reading is the sup-norm bound ||mu_P - mu_Q|| <=
  M_x M_phi ||P - Q||_1: true under "half". The Gaussian and softmax readings
  fail under both (see :mod:`icl_kd.counterexamples`).

  Args:
    params: AttentionParams (W^K, W^V).
    x_p: (n, d) sample of P; x_q: (m, d) sample of Q.
    eta: learning rate > 0 (or ``log_eta``); tau: softmax temperature.
    convention: "eq12" (c = 2, default) or "half" (c = 1); static under jit.
    bandwidths: (G,) Gaussian bandwidths > 0; default :data:`DEFAULT_BANDWIDTHS`
      (pass ``mmd.bandwidth_grid(x_p, x_q)`` for a grid around the median).
    input_bound: M_x (default: sup over the samples).
    feature_bound: M_phi (default: sup over the samples).

  Returns:
    LiteralReadings (logs); ``.log_ratio(reading)`` gives log(lhs / rhs).
    Eagerly, bad shapes or values raise ValueError; under jit, shapes raise at
    trace time and non-finite data or non-positive tau/bandwidths give NaN.
    Conjectures ``thm4.1-literal-*`` in proofs_check.
  """
  core = _pair_core(params, x_p, x_q, eta, log_eta, tau, convention, input_bound,
                    feature_bound)
  return _readings_of(core, bandwidths)


def _readings_of(core: _PairCore, bandwidths) -> LiteralReadings:
  params, x_p, x_q, tau, dtype = core.params, core.x_p, core.x_q, core.tau, core.x_p.dtype
  if bandwidths is None:
    bandwidths = jnp.asarray(DEFAULT_BANDWIDTHS, dtype)
  else:
    bandwidths = _checks.as_float_array("bandwidths", bandwidths, ndim=1).astype(dtype)
    if bandwidths.shape[0] == 0:
      raise ValueError("bandwidths must hold at least one bandwidth, got shape (0,)")
    if _checks.is_concrete(bandwidths):
      b = np.asarray(bandwidths)
      if not (np.all(np.isfinite(b)) and np.all(b > 0)):
        raise ValueError(f"bandwidths must be finite and > 0, got {b}")

  log_lhs = core.log_lhs
  m_x, log_m_phi, value_norm = core.input_bound, core.log_feature_bound, core.value_norm
  log_constant = core.log_eta + jnp.log(value_norm) + jnp.log(m_x) + log_m_phi

  h = _mmd.median_bandwidth(x_p, x_q)
  h_ok = h > 0
  log_mmd_g, _ = _log_mmd_parts(_mmd.GaussianKernel(jnp.where(h_ok, h, 1.0)), x_p, x_q)
  log_mmd_g = jnp.where(h_ok, log_mmd_g, jnp.nan)
  log_mmd_grid = jax.vmap(
      lambda bw: _log_mmd_parts(_mmd.GaussianKernel(bw), x_p, x_q)[0])(bandwidths)  # (G,)
  keys_p = jnp.dot(x_p, params.w_k.T, precision=HIGHEST)                   # (n, d_k)
  keys_q = jnp.dot(x_q, params.w_k.T, precision=HIGHEST)                   # (m, d_k)
  log_mmd_soft, _ = _log_mmd_parts(_mmd.ExpKernel(tau), keys_p, keys_q)
  log_mmd_x = core.log_mmd_x
  tv = total_variation(x_p, x_q)

  grid = log_constant + log_mmd_grid
  out = LiteralReadings(
      log_lhs=log_lhs, log_constant=log_constant,
      log_rhs_gaussian=log_constant + log_mmd_g, log_rhs_gaussian_grid=grid,
      log_rhs_gaussian_worst=jnp.min(grid),
      log_rhs_softmax=log_constant + log_mmd_soft,
      # eta M_V M_x M_phi * MMD_kx / (M_x M_phi), with M_x M_phi cancelled (no 0/0 at M_x = 0)
      log_rhs_normalised=core.log_eta + jnp.log(value_norm) + log_mmd_x,
      log_rhs_tv=log_constant + jnp.log(tv),
      bandwidth=h, bandwidths=bandwidths, log_mmd_gaussian=log_mmd_g,
      log_mmd_gaussian_grid=log_mmd_grid, log_mmd_softmax=log_mmd_soft, log_mmd_x=log_mmd_x,
      tv=tv, value_norm=value_norm, input_bound=m_x, log_feature_bound=log_m_phi,
      convention_factor=jnp.asarray(core.c, dtype))
  return _checks.poison_if_nonfinite(out, *params, x_p, x_q, bandwidths,
                                     positive=(tau, jnp.min(bandwidths)))


# -- C6: downstream consequences -------------------------------------------------


class PredictionGap(NamedTuple):
  """The sides of the C6 (``thm4.2``) prediction statements at one query z = W^Q x'.

  Attributes:
    lhs: ||dW_PQ phi(z)||.
    rhs: ||dW_PQ||_HS exp(|z|^2 / (2 tau)) (``thm4.2-prediction``: Cauchy-Schwarz,
      ||phi(z)|| = exp(|z|^2 / (2 tau)); a consistency check).
    log_lhs, log_rhs: their logarithms.
    weight_gap_norm: ||dW_PQ||_HS.
    log_feature_norm: log ||phi(z)|| = |z|^2 / (2 tau).
    mmd_rhs: c eta ||W^V||_op MMD_kx(P_hat, Q_hat) exp(|z|^2 / (2 tau)) (``thm4.2-mmd``,
      a bound: thm4.1-bound times ||phi(z)||).
    literal_rhs: c eta ||W^V||_op MMD_kx(P_hat, Q_hat) M_phi (``thm4.2-literal``, a
      conjecture: M_phi bounds phi(W^K x), not the query feature phi(W^Q x')).
    log_mmd_rhs, log_literal_rhs: their logarithms.
    mmd_x: MMD_kx(P_hat, Q_hat) (biased).
    value_norm: ||W^V||_op.
    log_feature_bound: log M_phi (sup over the pooled samples unless given).
    convention_factor: c.
  """
  lhs: jax.Array
  rhs: jax.Array
  log_lhs: jax.Array
  log_rhs: jax.Array
  weight_gap_norm: jax.Array
  log_feature_norm: jax.Array
  mmd_rhs: jax.Array
  literal_rhs: jax.Array
  log_mmd_rhs: jax.Array
  log_literal_rhs: jax.Array
  mmd_x: jax.Array
  value_norm: jax.Array
  log_feature_bound: jax.Array
  convention_factor: jax.Array


def _log_apply_norm(w: DualWeights, z: jax.Array) -> jax.Array:
  """log ||W phi(z)|| in log space (the sum over anchors is shifted by its max)."""
  m, s = _log_weighted_sum(w.log_kernel(z) + w.log_scale, w.coeffs)
  return m + jnp.log(jnp.linalg.norm(s))


def prediction_gap(params: AttentionParams, x_p: Float[ArrayLike, "n d"],
                   x_q: Float[ArrayLike, "m d"], query: Float[ArrayLike, " d"], *,
                   eta: Real[ArrayLike, ""] | None = None,
                   log_eta: Real[ArrayLike, ""] | None = None, tau: Real[ArrayLike, ""] = 1.0,
                   convention: str = "eq12", feature_bound=None) -> PredictionGap:
  """C6 (``thm4.2``) at the query z = W^Q x': the prediction gap and its three right sides.

      lhs = ||dW_PQ phi(z)||
          <= ||dW_PQ||_HS exp(|z|^2 / (2 tau))                    thm4.2-prediction (consistency)
          <= c eta ||W^V||_op MMD_kx(P, Q) exp(|z|^2 / (2 tau))     thm4.2-mmd (bound)
      conjecture: lhs <= c eta ||W^V||_op MMD_kx(P, Q) M_phi        thm4.2-literal

  Args:
    params: AttentionParams.
    x_p: (n, d) prompt sample; x_q: (m, d) target sample.
    query: (d,) query token x'.
    eta: learning rate > 0 (or ``log_eta``); tau: temperature.
    convention: "eq12" (c = 2, default) or "half" (c = 1); static under jit.
    feature_bound: M_phi; default max exp(|W^K x|^2 / (2 tau)) over both samples.

  Returns:
    PredictionGap. Checkers ``thm4.2-prediction``, ``thm4.2-mmd``, ``thm4.2-literal``.
  """
  core = _pair_core(params, x_p, x_q, eta, log_eta, tau, convention, None, feature_bound)
  return _prediction_of(core, query)


def _prediction_of(core: _PairCore, query) -> PredictionGap:
  params, x_p, x_q, tau = core.params, core.x_p, core.x_q, core.tau
  query = _checks.as_float_array("query", query, ndim=1)
  if query.shape != (params.d,):
    raise ValueError(f"query must have shape ({params.d},) (d,), got {query.shape}")
  _checks.check_same_dtype(params=params.w_q, query=query)
  _check_finite(query=query, **{"params.w_q": params.w_q})
  gap = core.gap
  z = jnp.dot(params.w_q, query, precision=HIGHEST)                         # (d_k,)
  log_lhs = _log_apply_norm(gap, z)
  log_hs = core.log_lhs
  log_phi = jnp.sum(z * z) / (2.0 * tau)
  log_m_phi, value_norm = core.log_feature_bound, core.value_norm
  log_chain = core.log_eta + math.log(core.c) + jnp.log(value_norm) + core.log_mmd_x  # thm4.1-bound
  log_rhs = log_hs + log_phi
  log_mmd_rhs = log_chain + log_phi
  log_literal_rhs = log_chain + log_m_phi
  out = PredictionGap(lhs=jnp.exp(log_lhs), rhs=jnp.exp(log_rhs), log_lhs=log_lhs,
                      log_rhs=log_rhs, weight_gap_norm=jnp.exp(log_hs),
                      log_feature_norm=log_phi, mmd_rhs=jnp.exp(log_mmd_rhs),
                      literal_rhs=jnp.exp(log_literal_rhs), log_mmd_rhs=log_mmd_rhs,
                      log_literal_rhs=log_literal_rhs, mmd_x=jnp.exp(core.log_mmd_x),
                      value_norm=value_norm,
                      log_feature_bound=log_m_phi, convention_factor=jnp.asarray(core.c, x_p.dtype))
  return _checks.poison_if_nonfinite(out, *params, x_p, x_q, query, positive=(tau,))


class PairSides(NamedTuple):
  """Every side of C5 and of C6's prediction statements for one pair of samples and a query.

  Attributes:
    bias: :func:`distillation_bias` (C5: identity, bound, literal form with the Gaussian k).
    readings: :func:`literal_readings` (C5: the literal form under every kernel reading).
    prediction: :func:`prediction_gap` (C6 at the query).
  """
  bias: DistillationBias
  readings: LiteralReadings
  prediction: PredictionGap


def pair_sides(params: AttentionParams, x_p: Float[ArrayLike, "n d"],
               x_q: Float[ArrayLike, "m d"], query: Float[ArrayLike, "d"], *,
               eta: Real[ArrayLike, ""] | None = None, log_eta: Real[ArrayLike, ""] | None = None,
               tau: Real[ArrayLike, ""] = 1.0, convention: str = "eq12",
               bandwidths: Float[ArrayLike, "g"] | None = None,
               input_bound: Real[ArrayLike, ""] | None = None,
               feature_bound: Real[ArrayLike, ""] | None = None) -> PairSides:
  """:func:`distillation_bias`, :func:`literal_readings` and :func:`prediction_gap` at once.

  The work they share (dW_PQ and its norm, MMD_kx, ||W^V||_op, the support
  constants M_x, M_phi) is done once; each part equals its own function's result
  on the same arguments. ``input_bound`` and ``feature_bound`` (default: sups over
  the pooled samples) enter every part that uses them. This is what the C5/C6
  claims evaluate per instance.
  """
  core = _pair_core(params, x_p, x_q, eta, log_eta, tau, convention, input_bound,
                    feature_bound)
  return PairSides(_bias_of(core, None), _readings_of(core, bandwidths),
                   _prediction_of(core, query))


def _spd_solve(m: jax.Array, b: jax.Array) -> jax.Array:
  """Solves m y = b for a symmetric positive definite (d, d) ``m`` by elimination without
  pivoting, written in jnp (see :func:`_cholesky_pivots_positive` for why not LAPACK)."""
  d = m.shape[0]
  idx = jnp.arange(d)

  def forward(k, carry):
    m, b = carry
    factor = jnp.where(idx > k, m[:, k] / m[k, k], 0.0)                      # (d,)
    return m - jnp.outer(factor, m[k]), b - factor * b[k]

  m, b = jax.lax.fori_loop(0, d, forward, (m, b))

  def backward(i, y):
    k = d - 1 - i
    rest = jnp.sum(jnp.where(idx > k, m[k] * y, 0.0))
    return y.at[k].set((b[k] - rest) / m[k, k])

  return jax.lax.fori_loop(0, d, backward, jnp.zeros_like(b))


def _mm(x: jax.Array, y: jax.Array) -> jax.Array:
  """x @ y for small matrices as an elementwise sum (one rounding order on every backend)."""
  return jnp.sum(x[:, :, None] * y[None, :, :], axis=1)


def _largest_eigenvalue(g: jax.Array, sweeps: int = 6) -> jax.Array:
  """The largest eigenvalue of a small symmetric (d, d) matrix by cyclic Jacobi rotations,
  written in jnp (see :func:`_cholesky_pivots_positive` for why not LAPACK); each sweep
  rotates every off-diagonal pair to zero, and the off-diagonal mass falls quadratically."""
  d = g.shape[0]
  if d == 1:
    return g[0, 0]

  def sweep(_, m):
    for p in range(d - 1):
      for q in range(p + 1, d):
        app, aqq, apq = m[p, p], m[q, q], m[p, q]
        small = jnp.abs(apq) <= jnp.finfo(m.dtype).tiny
        theta = (aqq - app) / (2.0 * jnp.where(small, 1.0, apq))
        t = jnp.sign(theta) / (jnp.abs(theta) + jnp.sqrt(theta * theta + 1.0))
        t = jnp.where(theta == 0, 1.0, t)
        c = 1.0 / jnp.sqrt(t * t + 1.0)
        s = t * c
        c, s = jnp.where(small, 1.0, c), jnp.where(small, 0.0, s)
        rot = jnp.eye(d, dtype=m.dtype).at[p, p].set(c).at[q, q].set(c).at[p, q].set(s)
        rot = rot.at[q, p].set(-s)
        m = _mm(_mm(rot.T, m), rot)                                         # rot^T m rot
    return m

  m = jax.lax.fori_loop(0, sweeps, sweep, g)
  return jnp.max(jnp.diagonal(m))


def ball_sup_quadratic(a: Float[ArrayLike, "k d"], center: Float[ArrayLike, "d"],
                       radius: Real[ArrayLike, ""], *, iterations: int = 12) -> Float[Array, ""]:
  """sup over the ball |x - center| <= radius of |A x|^2, exactly (a trust-region maximum).

  The maximum of a convex quadratic is on the sphere. With G = A^T A and the
  step u = x - center, stationarity gives (lambda I - G) u = G center with
  lambda >= s^2, s = ||A||_op, and ||u(lambda)|| decreases in lambda. lambda
  solves ||u|| = radius by Newton's method on 1/radius - 1/||u(lambda)|| (the
  More-Sorensen iteration of the trust-region subproblem for -G: from the left
  of the root it increases monotonically, quadratically near it), started just
  right of s^2 and kept there. When ``center`` has no component along A's top
  singular direction the root may sit at s^2 (the "hard case"): the rest of the
  radius then goes along that direction, which adds s^2 (radius^2 - |u|^2). The
  result is the sup the theory's constants take over a ball-shaped support
  (e.g. M_phi = exp(sup |W^K x|^2 / (2 tau))).

  Args:
    a: (k, d) the linear map A.
    center: (d,) the ball's center; radius: its radius >= 0.
    iterations: Newton steps (a fixed number, so that it vectorises).
  Returns:
    The scalar sup |A x|^2 (|A center|^2 when radius = 0).
  """
  a = jnp.asarray(a)
  center = jnp.asarray(center, a.dtype)
  radius = jnp.asarray(radius, a.dtype)
  # products as elementwise sums, not dots: the same rounding whatever XLA's matmul kernels
  # (their threading changes the summation order); d is small
  g = jnp.sum(a[:, :, None] * a[:, None, :], axis=0)                       # (d, d) A^T A
  gc = jnp.sum(g * center[None, :], axis=1)                                 # (d,)

  def sq_norm_of_a(x):
    return jnp.sum(jnp.sum(a * x[None, :], axis=1) ** 2)

  s2 = _largest_eigenvalue(g)                                               # ||A||_op^2
  eye = jnp.eye(a.shape[1], dtype=a.dtype)
  safe_r = jnp.where(radius > 0, radius, 1.0)
  # start right of s^2 by more than the eigenvalue's rounding (Jacobi: ~d eps), so that
  # lambda I - G stays positive definite
  lo = s2 * (1.0 + 1e3 * jnp.finfo(a.dtype).eps) + jnp.finfo(a.dtype).tiny

  def newton(_, lam):
    m = lam * eye - g
    u = _spd_solve(m, gc)
    norm = jnp.sqrt(jnp.sum(u * u))
    w = _spd_solve(m, u)
    curv = jnp.sum(u * w)                                                    # u^T (lam I - G)^-1 u
    step = (norm / safe_r - 1.0) * norm * norm / jnp.where(curv > 0, curv, 1.0)
    return jnp.maximum(lam + jnp.where(norm > 0, step, 0.0), lo)

  lam = jax.lax.fori_loop(0, iterations, newton, lo)
  u = _spd_solve(lam * eye - g, gc)
  # past the root by rounding, |u| can exceed radius by ~eps: scale it back onto the ball
  u = u * jnp.minimum(1.0, safe_r / jnp.maximum(jnp.sqrt(jnp.sum(u * u)), jnp.finfo(a.dtype).tiny))
  value = sq_norm_of_a(center + u) + s2 * jnp.maximum(0.0, radius ** 2 - jnp.sum(u * u))
  return jnp.where(radius > 0, value, sq_norm_of_a(center))


def _check_risk_args(weights: DualWeights, params: AttentionParams, x_target):
  params = check_params(params)
  x_target = _check_tokens("x_target", x_target, params.d, allow_empty=False)
  if weights.d_v != params.d_v or weights.d_k != params.d_k:
    raise ValueError(f"weights act on (d_v, d_k) = ({weights.d_v}, {weights.d_k}); params "
                     f"need ({params.d_v}, {params.d_k})")
  _check_finite(x_target=x_target)
  return params, x_target


def kd_risk(weights: DualWeights, params: AttentionParams,
            x_target: Float[ArrayLike, "t d"]) -> Float[Array, ""]:
  """R_Q(W) = (1/n) sum_i ||W^V x_i - W phi(W^K x_i)||^2 on a target sample (n, d) (C6).

  The squared KD loss of C2 evaluated on the target; W in exact dual form.
  :func:`log_kd_risk` gives its logarithm where it overflows.
  """
  params, x_target = _check_risk_args(weights, params, x_target)
  keys = jnp.dot(x_target, params.w_k.T, precision=HIGHEST)                 # (n, d_k)
  teacher = jnp.dot(x_target, params.w_v.T, precision=HIGHEST)              # (n, d_v)
  student = jax.vmap(weights.apply)(keys)                                   # (n, d_v)
  out = jnp.mean(jnp.sum((teacher - student) ** 2, axis=1))
  return _checks.poison_if_nonfinite(out, x_target)


def log_kd_risk(weights: DualWeights, params: AttentionParams,
                x_target: Float[ArrayLike, "t d"]) -> Float[Array, ""]:
  """log R_Q(W) of :func:`kd_risk`, computed without forming an overflowing value.

  Per target point the student W phi(k) = exp(s) v is kept as a log-scale s
  and a vector v; the residual is formed at the scale exp(max(s, 0)), and the
  mean of the squared norms by a log-sum-exp. -inf when the risk is exactly 0.
  """
  params, x_target = _check_risk_args(weights, params, x_target)
  keys = jnp.dot(x_target, params.w_k.T, precision=HIGHEST)                 # (n, d_k)
  teacher = jnp.dot(x_target, params.w_v.T, precision=HIGHEST)              # (n, d_v)

  def log_residual(k, t):                                                   # (d_k,), (d_v,)
    s, v = _log_weighted_sum(weights.log_kernel(k) + weights.log_scale, weights.coeffs)
    top = jnp.maximum(s, 0.0)
    r = jnp.exp(-top) * t - jnp.exp(s - top) * v                            # residual / e^top
    return top + jnp.log(jnp.linalg.norm(r))

  log_norms = jax.vmap(log_residual)(keys, teacher)                         # (n,)
  out = jax.nn.logsumexp(2.0 * log_norms) - jnp.log(jnp.asarray(x_target.shape[0], keys.dtype))
  return _checks.poison_if_nonfinite(out, x_target)


class RiskBound(NamedTuple):
  """Both sides of the C6 (``thm4.2-risk``) risk inequality, a consistency check.

  Attributes:
    lhs: sqrt(R_Q(W_0(P_hat))).
    rhs: sqrt(R_Q(W_0(Q_hat))) + C ||dW_PQ||_HS.
    risk_p: R_Q(W_0(P_hat)); risk_q: R_Q(W_0(Q_hat)).
    weight_gap_norm: ||dW_PQ||_HS.
    log_feature_bound: log C, C = max over the target sample of exp(|W^K x|^2 / (2 tau)).
    log_lhs, log_rhs: their logarithms, computed in log space (finite where the
      values overflow).
    log_risk_p, log_risk_q: log R_Q(W_0(P_hat)), log R_Q(W_0(Q_hat)).
    convention_factor: c.
  """
  lhs: jax.Array
  rhs: jax.Array
  risk_p: jax.Array
  risk_q: jax.Array
  weight_gap_norm: jax.Array
  log_feature_bound: jax.Array
  log_lhs: jax.Array
  log_rhs: jax.Array
  log_risk_p: jax.Array
  log_risk_q: jax.Array
  convention_factor: jax.Array


def risk_bound(params: AttentionParams, x_p: Float[ArrayLike, "n d"], x_q: Float[ArrayLike, "m d"],
               x_target: Float[ArrayLike, "t d"], *, eta: Real[ArrayLike, ""] | None = None,
               log_eta: Real[ArrayLike, ""] | None = None, tau: Real[ArrayLike, ""] = 1.0,
               convention: str = "eq12") -> RiskBound:
  """C6 (``thm4.2-risk``): sqrt(R_Q(W_0(P))) <= sqrt(R_Q(W_0(Q))) + C ||dW_PQ||_HS.

  R_Q is the KD risk :func:`kd_risk` on ``x_target`` (a sample of Q, possibly
  ``x_q`` itself); W_0(P), W_0(Q) are the one-step weights of the samples
  ``x_p`` and ``x_q`` with constant c (``convention``: "eq12", c = 2, default;
  "half", c = 1; static under jit); C = max_{x in x_target} ||phi(W^K x)||.
  The inequality is the triangle inequality in L2(Q_hat) plus
  ||dW phi(k)|| <= ||dW||_HS ||phi(k)||: a consistency check of the code.
  Both sides are formed in log space:
  log rhs = logaddexp(log R_Q(W_0(Q)) / 2, log C + log ||dW||_HS).
  """
  log_eta_, shift = _log_eta_and_shift(params, eta, log_eta, convention)
  params, x_p, x_q, dtype = _sample_pair(params, x_p, x_q)
  x_target = _check_tokens("x_target", x_target, params.d, allow_empty=False)
  _checks.check_same_dtype(params=params.w_k, x_target=x_target)
  _check_finite(x_target=x_target)
  tau = _checks.scalar_param("tau", tau, dtype)
  w_p = one_step_kd_weights(params, x_p, log_eta=log_eta_ + shift, tau=tau)
  w_q = one_step_kd_weights(params, x_q, log_eta=log_eta_ + shift, tau=tau)
  log_risk_p = log_kd_risk(w_p, params, x_target)
  log_risk_q = log_kd_risk(w_q, params, x_target)
  log_hs = (w_p - w_q).log_hs_norm()
  keys = jnp.dot(x_target, params.w_k.T, precision=HIGHEST)                 # (n_t, d_k)
  log_c = jnp.max(jnp.sum(keys * keys, axis=1)) / (2.0 * tau)
  log_lhs = 0.5 * log_risk_p
  log_rhs = jnp.logaddexp(0.5 * log_risk_q, log_c + log_hs)
  out = RiskBound(lhs=jnp.exp(log_lhs), rhs=jnp.exp(log_rhs), risk_p=jnp.exp(log_risk_p),
                  risk_q=jnp.exp(log_risk_q), weight_gap_norm=jnp.exp(log_hs),
                  log_feature_bound=log_c, log_lhs=log_lhs, log_rhs=log_rhs,
                  log_risk_p=log_risk_p, log_risk_q=log_risk_q,
                  convention_factor=jnp.asarray(convention_factor(convention), dtype))
  return _checks.poison_if_nonfinite(out, *params, x_p, x_q, x_target, positive=(tau,))
