"""Tests of icl_kd.bounds: the sides of claims C4 (Rademacher), C5 (MMD bias), C6 (downstream).

References: NumPy re-implementations of the dual-form quadratic forms and of
the MMDs, exact enumeration of the Rademacher expectation for small N, hand
computed values of the C4 bound, and equality cases of the bounds.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.distance import cdist, pdist

import icl_kd
from icl_kd import bounds, mmd

SHAPES = [(6, 9, 3, 2, 3), (10, 10, 4, 4, 2), (12, 7, 2, 3, 4)]   # (n, m, d, d_k, d_v)


def draw_instance(seed, shape, *, scale=0.5, shift=0.5, dtype=jnp.float64):
  n, m, d, d_k, d_v = shape
  kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
  params = icl_kd.init_params(d, d_k, d_v, key=kp, scale=1.0, dtype=dtype)
  x_p = scale * jax.random.normal(kx, (n, d), dtype)
  x_q = scale * jax.random.normal(ky, (m, d), dtype) + shift
  return params, x_p, x_q


# -- NumPy references -----------------------------------------------------------------

def np_pooled(params, x_p, x_q, eta, tau):
  """Coefficients c, values V and keys k of W_0(P_hat) - W_0(Q_hat) = sum_i c_i V_i phi(k_i)^T."""
  wk, wv = np.asarray(params.w_k), np.asarray(params.w_v)
  z = np.concatenate([np.asarray(x_p), np.asarray(x_q)])
  n, m = len(x_p), len(x_q)
  c = np.concatenate([np.full(n, 2 * eta / n), np.full(m, -2 * eta / m)])
  keys, vals = z @ wk.T, z @ wv.T
  return c, vals, keys


def np_gap_hs2(params, x_p, x_q, eta, tau):
  """(||dW||_HS^2, sum of |terms|) from the dual quadratic form."""
  c, vals, keys = np_pooled(params, x_p, x_q, eta, tau)
  terms = np.outer(c, c) * (vals @ vals.T) * np.exp(keys @ keys.T / tau)
  return terms.sum(), np.abs(terms).sum()


def np_biased_mmd2(gram_fn, x, y):
  kxx, kyy, kxy = gram_fn(x, x), gram_fn(y, y), gram_fn(x, y)
  return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def np_kx_gram(params, tau):
  wk = np.asarray(params.w_k)
  return lambda a, b: (a @ b.T) * np.exp((a @ wk.T) @ (b @ wk.T).T / tau)


def np_dw_apply(params, x_p, x_q, eta, tau, z):
  c, vals, keys = np_pooled(params, x_p, x_q, eta, tau)
  return (c * np.exp(keys @ z / tau)) @ vals


# -- module-scope jitted entry points ----------------------------------------------------

_bias = jax.jit(bounds.distillation_bias)
_pred = jax.jit(bounds.prediction_gap)
_risk = jax.jit(bounds.risk_bound)
_rademacher = jax.jit(bounds.empirical_rademacher, static_argnames="num_draws")
_bound = jax.jit(bounds.rademacher_bound)
_batched_bias = jax.jit(jax.vmap(
    lambda params, xp, xq, e: bounds.distillation_bias(params, xp, xq, eta=e, tau=1.0),
    in_axes=(None, 0, None, 0)))

FLOATS = dict(allow_nan=False, allow_infinity=False, width=64)


# -- C5 ---------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES),
       eta=st.floats(1e-3, 10.0, **FLOATS), tau=st.floats(0.5, 4.0, **FLOATS),
       shift=st.floats(0.1, 2.0, **FLOATS))
def test_c5_identity_and_bound(seed, shape, eta, tau, shift):
  """||W_0(P_hat) - W_0(Q_hat)||_HS == 2 eta MMD_kV (1e-10 relative) and <= 2 eta ||W^V|| MMD_kx.

  The samples differ (shift >= 0.1), so both sides are far from the cancellation
  regime and agree to float64 rounding; both are also checked against NumPy.
  """
  params, x_p, x_q = draw_instance(seed, shape, shift=shift)
  out = _bias(params, x_p, x_q, eta=jnp.asarray(eta), tau=jnp.asarray(tau))
  lhs, rhs = float(out.lhs), float(out.identity_rhs)
  assert abs(lhs - rhs) <= 1e-10 * rhs, (lhs, rhs)
  hs2, scale = np_gap_hs2(params, x_p, x_q, eta, tau)
  assert abs(lhs ** 2 - hs2) <= 1e-12 * scale
  assert float(out.identity_residual) <= 1e-12
  # the bound, and its value from NumPy
  mmd_x2 = np_biased_mmd2(np_kx_gram(params, tau), np.asarray(x_p), np.asarray(x_q))
  bound = 2 * eta * np.linalg.norm(np.asarray(params.w_v), 2) * np.sqrt(mmd_x2)
  np.testing.assert_allclose(float(out.bound_rhs), bound, rtol=1e-10)
  assert lhs <= float(out.bound_rhs) * (1 + 1e-10)


@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES),
       eta=st.floats(1e-3, 10.0, **FLOATS), tau=st.floats(0.5, 4.0, **FLOATS),
       eps=st.sampled_from([0.0, 1e-9, 1e-6]))
def test_c5_identity_near_equal_samples(seed, shape, eta, tau, eps):
  """P_hat ~ Q_hat (x_q = x_p + eps noise, m = n): both sides cancel.

  ||dW||^2 and (2 eta MMD)^2 are the same quadratic form summed in different
  orders, so they agree to ~(n + m) eps_64 times the sum of the absolute terms
  (the scale being cancelled, computed here in NumPy); 1e-10 of that scale is
  far above float64 rounding and far below any real discrepancy. Relative
  agreement of lhs and rhs themselves is not expected here.
  """
  n, _, d, d_k, d_v = shape
  params, x_p, _ = draw_instance(seed, (n, n, d, d_k, d_v))
  x_q = x_p + eps * jax.random.normal(jax.random.key(seed + 1), x_p.shape)
  out = _bias(params, x_p, x_q, eta=jnp.asarray(eta), tau=jnp.asarray(tau))
  _, scale = np_gap_hs2(params, x_p, x_q, eta, tau)
  assert abs(float(out.lhs) ** 2 - float(out.identity_rhs) ** 2) <= 1e-10 * scale
  np.testing.assert_allclose(float(out.log_term_scale), np.log(scale), rtol=1e-10)
  assert float(out.identity_residual) <= 1e-10


def test_c5_bound_is_tight_for_orthogonal_values():
  """W^V = c Q with Q orthogonal: k_V = c^2 k_x, so the bound holds with equality."""
  params, x_p, x_q = draw_instance(3, (9, 7, 4, 3, 4))
  q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(5), (4, 4)))
  params = params._replace(w_v=1.7 * q)
  out = _bias(params, x_p, x_q, eta=jnp.asarray(0.3), tau=jnp.asarray(1.0))
  np.testing.assert_allclose(float(out.lhs), float(out.bound_rhs), rtol=1e-10)
  np.testing.assert_allclose(float(out.value_norm), 1.7, rtol=1e-12)


def test_c5_literal_form_pieces():
  """eta M_V M_x M_phi MMD_k with sample sups and a Gaussian kernel at the median bandwidth."""
  params, x_p, x_q = draw_instance(4, (8, 6, 3, 2, 3))
  eta, tau = 0.4, 1.5
  out = _bias(params, x_p, x_q, eta=jnp.asarray(eta), tau=jnp.asarray(tau))
  z = np.concatenate([np.asarray(x_p), np.asarray(x_q)])
  wk = np.asarray(params.w_k)
  m_v = np.linalg.norm(np.asarray(params.w_v), 2)
  m_x = np.max(np.linalg.norm(z, axis=1))
  log_m_phi = np.max(np.sum((z @ wk.T) ** 2, axis=1)) / (2 * tau)
  h = np.median(pdist(z))
  gauss = lambda a, b: np.exp(-cdist(a, b, "sqeuclidean") / (2 * h * h))
  mmd_k = np.sqrt(np_biased_mmd2(gauss, np.asarray(x_p), np.asarray(x_q)))
  np.testing.assert_allclose(float(out.literal_rhs), eta * m_v * m_x * np.exp(log_m_phi) * mmd_k,
                             rtol=1e-10)
  # caller-given kernel and constants
  k = mmd.laplace_kernel(2.0)
  out2 = _bias(params, x_p, x_q, eta=jnp.asarray(eta), tau=jnp.asarray(tau), kernel=k,
                input_bound=jnp.asarray(3.0), feature_bound=jnp.asarray(5.0))
  lap = lambda a, b: np.exp(-cdist(a, b) / 2.0)
  mmd_l = np.sqrt(np_biased_mmd2(lap, np.asarray(x_p), np.asarray(x_q)))
  np.testing.assert_allclose(float(out2.literal_rhs), eta * m_v * 3.0 * 5.0 * mmd_l, rtol=1e-10)
  np.testing.assert_allclose(float(out2.mmd_k), mmd_l, rtol=1e-10)


def test_c5_at_large_scores_in_log_space():
  """Scores |W^K x|^2 / tau ~ 1e3: ||dW|| ~ e^500 overflows; the logs stay equal and exact."""
  params, x_p, x_q = draw_instance(6, (6, 5, 3, 3, 2), scale=0.05, shift=0.02)
  a = jnp.array([1.0, 0.0, 0.0])[None, :]
  params = params._replace(w_k=jnp.eye(3) * np.sqrt(1000.0))
  x_p, x_q = x_p + a, x_q + a
  out = _bias(params, x_p, x_q, eta=jnp.asarray(0.5), tau=jnp.asarray(1.0))
  assert np.isfinite(float(out.log_lhs)) and float(out.log_lhs) > 400
  np.testing.assert_allclose(float(out.log_lhs), float(out.log_identity_rhs), rtol=1e-12)
  assert float(out.log_lhs) <= float(out.log_bound_rhs) + 1e-9
  # NumPy with a fixed shift of the exponent (chosen here): G = exp(S) with S ~ 1e3.
  c, vals, keys = np_pooled(params, x_p, x_q, 0.5, 1.0)
  s = keys @ keys.T
  shift = float(np.max(s))
  hs2_shifted = np.sum(np.outer(c, c) * (vals @ vals.T) * np.exp(s - shift))
  np.testing.assert_allclose(float(out.log_lhs), 0.5 * (shift + np.log(hs2_shifted)), rtol=1e-10)


def test_distilled_weight_gap_is_the_difference_of_one_step_weights():
  params, x_p, x_q = draw_instance(7, (6, 9, 3, 2, 3))
  gap = bounds.distilled_weight_gap(params, x_p, x_q, eta=0.7, tau=1.3)
  assert isinstance(gap, icl_kd.DualWeights) and gap.num_anchors == 15
  z = jax.random.normal(jax.random.key(0), (2,))
  np.testing.assert_allclose(np.asarray(gap.apply(z)),
                             np_dw_apply(params, x_p, x_q, 0.7, 1.3, np.asarray(z)), rtol=1e-12)


def test_distillation_bias_vmaps_over_instances():
  """One call vmapped over a batch of prompt samples and learning rates == a loop."""
  params, _, x_q = draw_instance(8, (6, 9, 3, 2, 3))
  xs = jax.random.normal(jax.random.key(1), (4, 6, 3))
  etas = jnp.array([0.1, 0.5, 1.0, 2.0])
  batched = _batched_bias(params, xs, x_q, etas)
  for i in range(4):
    one = _bias(params, xs[i], x_q, eta=etas[i], tau=jnp.asarray(1.0))
    np.testing.assert_allclose(float(batched.lhs[i]), float(one.lhs), rtol=1e-12)
    np.testing.assert_allclose(float(batched.literal_rhs[i]), float(one.literal_rhs), rtol=1e-12)


# -- C6 ---------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES),
       eta=st.floats(1e-3, 10.0, **FLOATS), tau=st.floats(0.5, 4.0, **FLOATS))
def test_c6_prediction_gap(seed, shape, eta, tau):
  """||dW phi(z)|| (vs NumPy) <= ||dW||_HS exp(|z|^2 / (2 tau)) (vs NumPy)."""
  params, x_p, x_q = draw_instance(seed, shape)
  query = jax.random.normal(jax.random.key(seed + 3), (shape[2],))
  out = _pred(params, x_p, x_q, query, eta=jnp.asarray(eta), tau=jnp.asarray(tau))
  z = np.asarray(params.w_q) @ np.asarray(query)
  lhs = np.linalg.norm(np_dw_apply(params, x_p, x_q, eta, tau, z))
  hs2, _ = np_gap_hs2(params, x_p, x_q, eta, tau)
  rhs = np.sqrt(hs2) * np.exp(z @ z / (2 * tau))
  np.testing.assert_allclose(float(out.lhs), lhs, rtol=1e-10)
  np.testing.assert_allclose(float(out.rhs), rhs, rtol=1e-10)
  assert float(out.lhs) <= float(out.rhs) * (1 + 1e-12)


def np_kd_risk(params, coeffs, keys, vals_anchor, x_t, tau):
  wk, wv = np.asarray(params.w_k), np.asarray(params.w_v)
  kt, vt = x_t @ wk.T, x_t @ wv.T
  student = np.exp(kt @ keys.T / tau) @ (coeffs[:, None] * vals_anchor)
  return np.mean(np.sum((vt - student) ** 2, axis=1))


@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES),
       eta=st.floats(1e-3, 2.0, **FLOATS), tau=st.floats(0.5, 4.0, **FLOATS))
def test_c6_risk_inequality(seed, shape, eta, tau):
  """sqrt(R_Q(W_0(P))) <= sqrt(R_Q(W_0(Q))) + C ||dW||_HS, with both risks checked in NumPy."""
  params, x_p, x_q = draw_instance(seed, shape)
  x_t = jax.random.normal(jax.random.key(seed + 9), (7, shape[2])) * 0.5 + 0.5
  out = _risk(params, x_p, x_q, x_t, eta=jnp.asarray(eta), tau=jnp.asarray(tau))
  c, vals, keys = np_pooled(params, x_p, x_q, eta, tau)
  n = shape[0]
  xt = np.asarray(x_t)
  risk_p = np_kd_risk(params, c[:n], keys[:n], vals[:n], xt, tau)
  risk_q = np_kd_risk(params, -c[n:], keys[n:], vals[n:], xt, tau)
  np.testing.assert_allclose(float(out.risk_p), risk_p, rtol=1e-10)
  np.testing.assert_allclose(float(out.risk_q), risk_q, rtol=1e-10)
  log_c = np.max(np.sum((xt @ np.asarray(params.w_k).T) ** 2, axis=1)) / (2 * tau)
  np.testing.assert_allclose(float(out.log_feature_bound), log_c, rtol=1e-12)
  assert float(out.lhs) <= float(out.rhs) * (1 + 1e-12)


def test_c6_risk_with_equal_samples_is_tight():
  """x_p == x_q: dW = 0, so both sides equal sqrt(R_Q(W_0(Q)))."""
  params, x_p, _ = draw_instance(2, (6, 6, 3, 2, 3))
  out = _risk(params, x_p, x_p, x_p, eta=jnp.asarray(0.5), tau=jnp.asarray(1.0))
  assert float(out.weight_gap_norm) <= 1e-7 * np.sqrt(float(out.risk_q))
  np.testing.assert_allclose(float(out.lhs), float(out.rhs), rtol=1e-7)


def test_kd_risk_of_zero_weights_is_the_teacher_energy():
  params, x_p, _ = draw_instance(1, (6, 6, 3, 2, 3))
  zero = icl_kd.DualWeights.zeros(3, 2, tau=1.0, dtype=jnp.float64)
  expected = np.mean(np.sum((np.asarray(x_p) @ np.asarray(params.w_v).T) ** 2, axis=1))
  np.testing.assert_allclose(float(bounds.kd_risk(zero, params, x_p)), expected, rtol=1e-12)


# -- C4 ---------------------------------------------------------------------------------


def _psd_gram(seed, n, r):
  f = jax.random.normal(jax.random.key(seed), (n, r))
  return f @ f.T


def test_empirical_rademacher_against_exact_enumeration():
  """N = 8: E_sigma sqrt(sigma^T K sigma) summed over all 256 sign vectors.

  The Monte Carlo estimate (4000 draws, fixed key) must be within 4 of its own
  standard errors of the exact value (false alarm ~6e-5), and the exact value
  below B sqrt(tr K) / N (Jensen; exact).
  """
  k = np.asarray(_psd_gram(0, 8, 3))
  radius = 2.5
  signs = np.array(list(itertools.product([-1.0, 1.0], repeat=8)))
  exact = radius / 8 * np.mean(np.sqrt(np.einsum("si,ij,sj->s", signs, k, signs)))
  out = _rademacher(jnp.asarray(k), radius=jnp.asarray(radius), key=jax.random.key(3),
                    num_draws=4000)
  assert abs(float(out.estimate) - exact) <= 4 * float(out.std_error)
  assert float(out.std_error) > 0
  analytic = radius * np.sqrt(np.trace(k)) / 8
  np.testing.assert_allclose(float(out.analytic_bound), analytic, rtol=1e-12)
  assert exact <= analytic


@given(seed=st.integers(0, 2**31 - 1), n=st.sampled_from([5, 12, 30]),
       radius=st.floats(0.1, 10.0, **FLOATS))
def test_empirical_rademacher_below_analytic_bound(seed, n, radius):
  """R_hat <= B sqrt(tr K) / N up to Monte Carlo error (4 SE), on softmax Grams of keys;
  and B sqrt(tr K)/N <= B C / sqrt(N) with C = max_i sqrt(K_ii) = max ||phi(k_i)||."""
  keys = 0.7 * jax.random.normal(jax.random.key(seed), (n, 3))
  k = mmd.gram(mmd.exp_kernel(1.0), keys, keys)
  out = _rademacher(k, radius=jnp.asarray(radius), key=jax.random.key(seed + 1), num_draws=500)
  assert float(out.estimate) <= float(out.analytic_bound) + 4 * float(out.std_error)
  c = np.sqrt(np.max(np.diag(np.asarray(k))))
  assert float(out.analytic_bound) <= radius * c / np.sqrt(n) * (1 + 1e-12)


def test_rademacher_bound_hand_values():
  """B = 1, C = 2, D_T = 1, N = 100, delta = e^-2: reach 3, range 9,
  complexity 4*1*2*3/10 = 2.4, Hoeffding 9 sqrt(2/200) = 0.9, paper 9*2/100 = 0.18."""
  out = _bound(radius=1.0, feature_bound=2.0, teacher_bound=1.0, n=100.0, delta=np.exp(-2.0))
  np.testing.assert_allclose(float(out.complexity), 2.4, rtol=1e-14)
  np.testing.assert_allclose(float(out.loss_range), 9.0, rtol=1e-14)
  np.testing.assert_allclose(float(out.confidence_hoeffding), 0.9, rtol=1e-14)
  np.testing.assert_allclose(float(out.confidence_paper), 0.18, rtol=1e-14)
  np.testing.assert_allclose(float(out.hoeffding), 3.3, rtol=1e-14)
  np.testing.assert_allclose(float(out.paper), 2.58, rtol=1e-14)
  # vmappable over n, decreasing in n
  ns = jnp.array([10.0, 100.0, 1000.0])
  many = jax.vmap(lambda n: bounds.rademacher_bound(radius=1.0, feature_bound=2.0,
                                                    teacher_bound=1.0, n=n, delta=0.05))(ns)
  assert bool(jnp.all(jnp.diff(many.hoeffding) < 0))


def test_sample_bounds():
  params, x_p, _ = draw_instance(0, (6, 6, 3, 2, 3))
  out = bounds.sample_bounds(params, x_p, tau=2.0)
  x = np.asarray(x_p)
  np.testing.assert_allclose(float(out.input_bound), np.max(np.linalg.norm(x, axis=1)), rtol=1e-12)
  np.testing.assert_allclose(float(out.teacher_bound),
                             np.max(np.linalg.norm(x @ np.asarray(params.w_v).T, axis=1)),
                             rtol=1e-12)
  np.testing.assert_allclose(float(out.log_feature_bound),
                             np.max(np.sum((x @ np.asarray(params.w_k).T) ** 2, axis=1)) / 4.0,
                             rtol=1e-12)
  np.testing.assert_allclose(float(out.value_norm), np.linalg.norm(np.asarray(params.w_v), 2),
                             rtol=1e-12)


# -- bad input ---------------------------------------------------------------------------


def test_bad_inputs():
  params, x_p, x_q = draw_instance(0, (6, 5, 3, 2, 3))
  with pytest.raises(ValueError, match="x_q has shape"):
    bounds.distillation_bias(params, x_p, x_q[:, :2], eta=0.1)
  with pytest.raises(ValueError, match="x_q has shape"):          # fires under jit too
    _bias(params, x_p, x_q[:, :2], eta=jnp.asarray(0.1), tau=jnp.asarray(1.0))
  with pytest.raises(ValueError, match="x_p must hold at least one"):
    bounds.distillation_bias(params, x_p[:0], x_q, eta=0.1)
  with pytest.raises(ValueError, match="non-finite"):
    bounds.distillation_bias(params, x_p.at[0, 0].set(jnp.inf), x_q, eta=0.1)
  with pytest.raises(ValueError, match="exactly one of eta"):
    bounds.distillation_bias(params, x_p, x_q)
  with pytest.raises(ValueError, match="eta"):
    bounds.distillation_bias(params, x_p, x_q, eta=-1.0)
  with pytest.raises(ValueError, match="tau"):
    bounds.prediction_gap(params, x_p, x_q, x_p[0], eta=0.1, tau=0.0)
  with pytest.raises(ValueError, match="query must have shape"):
    bounds.prediction_gap(params, x_p, x_q, x_p[0, :2], eta=0.1)
  with pytest.raises(ValueError, match="x_target has shape"):
    bounds.risk_bound(params, x_p, x_q, x_q[:, :2], eta=0.1)
  with pytest.raises(ValueError, match="square"):
    bounds.empirical_rademacher(jnp.ones((3, 4)), radius=1.0, key=jax.random.key(0))
  with pytest.raises(ValueError, match="num_draws"):
    bounds.empirical_rademacher(jnp.eye(3), radius=1.0, key=jax.random.key(0), num_draws=1)
  with pytest.raises(ValueError, match="radius"):
    bounds.empirical_rademacher(jnp.eye(3), radius=0.0, key=jax.random.key(0))
  with pytest.raises(ValueError, match="non-finite"):
    bounds.empirical_rademacher(jnp.eye(3).at[0, 0].set(jnp.nan), radius=1.0,
                                key=jax.random.key(0))
  for delta in (0.0, 1.0, 1.5):
    with pytest.raises(ValueError, match="delta"):
      bounds.rademacher_bound(radius=1.0, feature_bound=1.0, teacher_bound=1.0, n=10, delta=delta)
  with pytest.raises(ValueError, match="n must be"):
    bounds.rademacher_bound(radius=1.0, feature_bound=1.0, teacher_bound=1.0, n=0, delta=0.1)
  with pytest.raises(ValueError, match="feature_bound"):
    bounds.rademacher_bound(radius=1.0, feature_bound=-1.0, teacher_bound=1.0, n=5, delta=0.1)
  # Under jit, non-finite data give NaN, never a silently finite number.
  out = _bias(params, x_p.at[0, 0].set(jnp.nan), x_q, eta=jnp.asarray(0.1), tau=jnp.asarray(1.0))
  assert np.isnan(float(out.lhs)) and np.isnan(float(out.bound_rhs))
