"""Tests of icl_kd.bounds: the sides of claims C4 (Rademacher), C5 (MMD bias), C6 (downstream).

References: NumPy re-implementations of the dual-form quadratic forms and of
the MMDs, exact enumeration of the Rademacher expectation for small N, hand
computed values of the C4 bound, and equality cases of the bounds.
"""

import functools
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

def np_pooled(params, x_p, x_q, eta, tau, factor=2.0):
  """Coefficients c, values V and keys k of W_0(P_hat) - W_0(Q_hat) = sum_i c_i V_i phi(k_i)^T.

  ``factor`` is the convention constant: 2 (eq12) or 1 (half).
  """
  wk, wv = np.asarray(params.w_k), np.asarray(params.w_v)
  z = np.concatenate([np.asarray(x_p), np.asarray(x_q)])
  n, m = len(x_p), len(x_q)
  c = np.concatenate([np.full(n, factor * eta / n), np.full(m, -factor * eta / m)])
  keys, vals = z @ wk.T, z @ wv.T
  return c, vals, keys


def np_gap_hs2(params, x_p, x_q, eta, tau, factor=2.0):
  """(||dW||_HS^2, sum of |terms|) from the dual quadratic form."""
  c, vals, keys = np_pooled(params, x_p, x_q, eta, tau, factor)
  terms = np.outer(c, c) * (vals @ vals.T) * np.exp(keys @ keys.T / tau)
  return terms.sum(), np.abs(terms).sum()


def np_biased_mmd2(gram_fn, x, y):
  kxx, kyy, kxy = gram_fn(x, x), gram_fn(y, y), gram_fn(x, y)
  return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def np_kx_gram(params, tau):
  wk = np.asarray(params.w_k)
  return lambda a, b: (a @ b.T) * np.exp((a @ wk.T) @ (b @ wk.T).T / tau)


def np_dw_apply(params, x_p, x_q, eta, tau, z, factor=2.0):
  c, vals, keys = np_pooled(params, x_p, x_q, eta, tau, factor)
  return (c * np.exp(keys @ z / tau)) @ vals


# -- module-scope jitted entry points ----------------------------------------------------

_bias = jax.jit(bounds.distillation_bias, static_argnames="convention")
_pred = jax.jit(bounds.prediction_gap, static_argnames="convention")
_risk = jax.jit(bounds.risk_bound, static_argnames="convention")
_readings = jax.jit(bounds.literal_readings, static_argnames="convention")
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
  # every literal reading stays finite in log space at these scores (M_phi ~ e^500)
  r = _readings(params, x_p, x_q, eta=jnp.asarray(0.5), tau=jnp.asarray(1.0))
  for name, value in r._asdict().items():
    assert np.all(np.isfinite(np.asarray(value))), name
  np.testing.assert_allclose(float(r.log_lhs), float(out.log_lhs), rtol=1e-14)
  np.testing.assert_allclose(float(r.log_rhs_normalised), float(out.log_bound_rhs) - np.log(2.0),
                             rtol=1e-12)
  np.testing.assert_allclose(float(r.log_feature_bound), shift / 2, rtol=1e-12)


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
  hs2, _ = np_gap_hs2(params, x_p, x_q, eta, tau)
  rhs = np.sqrt(risk_q) + np.exp(log_c) * np.sqrt(hs2)
  np.testing.assert_allclose(float(out.rhs), rhs, rtol=1e-9)
  np.testing.assert_allclose(float(out.log_rhs), np.log(rhs), atol=1e-9)
  np.testing.assert_allclose(float(out.log_lhs), 0.5 * np.log(risk_p), atol=1e-10)
  np.testing.assert_allclose(float(out.log_risk_q), np.log(risk_q), atol=1e-10)
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
  # The paper's term is below Hoeffding's iff N > 2 log(1/delta): equal at N = 4 here
  # (9 sqrt(2/8) = 4.5 = 9 * 2/4).
  at4 = _bound(radius=1.0, feature_bound=2.0, teacher_bound=1.0, n=4.0, delta=np.exp(-2.0))
  np.testing.assert_allclose(float(at4.confidence_paper), 4.5, rtol=1e-14)
  np.testing.assert_allclose(float(at4.confidence_hoeffding), 4.5, rtol=1e-14)
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


# -- conventions (docs/THEORY.md C5: c = 2 under eq12, c = 1 under half) --------------------------

from icl_kd import counterexamples  # noqa: E402

FACTOR = {"eq12": 2.0, "half": 1.0}
_TV = jax.jit(bounds.total_variation)


def test_convention_scales_the_weights_exactly():
  """half gives exactly 1/2 of eq12's weights: every lhs and corrected rhs halves (to float64
  rounding of the log-space scale, 1e-14), the paper's literal constants do not move, and
  each lhs is pinned to NumPy with the factor 1 as well; the default is eq12.

  (Shapes shared with the tests below, so the jitted programs compile once.)
  """
  params, x_p, x_q = draw_instance(4, (8, 6, 3, 2, 3))
  eta, tau = jnp.asarray(0.4), jnp.asarray(1.5)
  query = jnp.array([0.9, -0.2, 0.4])
  full = _bias(params, x_p, x_q, eta=eta, tau=tau, convention="eq12")
  half = _bias(params, x_p, x_q, eta=eta, tau=tau, convention="half")
  default = _bias(params, x_p, x_q, eta=eta, tau=tau)
  for name in ("lhs", "identity_rhs", "bound_rhs"):
    np.testing.assert_allclose(float(getattr(half, name)), 0.5 * float(getattr(full, name)),
                               rtol=1e-14, err_msg=name)
  assert float(half.literal_rhs) == float(full.literal_rhs)
  assert float(default.lhs) == float(full.lhs)
  assert float(full.convention_factor) == 2.0 and float(half.convention_factor) == 1.0
  for factor, out in ((2.0, full), (1.0, half)):
    hs2, _ = np_gap_hs2(params, x_p, x_q, 0.4, 1.5, factor)
    np.testing.assert_allclose(float(out.lhs), np.sqrt(hs2), rtol=1e-10)
  # C6 prediction: lhs and the two chained right sides halve; the Cauchy-Schwarz rhs too.
  pf = _pred(params, x_p, x_q, query, eta=eta, tau=tau)
  ph = _pred(params, x_p, x_q, query, eta=eta, tau=tau, convention="half")
  for name in ("lhs", "rhs", "mmd_rhs", "literal_rhs", "weight_gap_norm"):
    np.testing.assert_allclose(float(getattr(ph, name)), 0.5 * float(getattr(pf, name)),
                               rtol=1e-14, err_msg=name)
  z = np.asarray(params.w_q) @ np.asarray(query)
  np.testing.assert_allclose(float(ph.lhs),
                             np.linalg.norm(np_dw_apply(params, x_p, x_q, 0.4, 1.5, z, 1.0)),
                             rtol=1e-10)
  # literal readings: the lhs moves by log 2, no right side moves.
  rf = _readings(params, x_p, x_q, eta=eta, tau=tau, convention="eq12")
  rh = _readings(params, x_p, x_q, eta=eta, tau=tau, convention="half")
  np.testing.assert_allclose(float(rf.log_lhs) - float(rh.log_lhs), np.log(2.0), atol=1e-14)
  for field in bounds.READINGS.values():
    assert float(getattr(rf, field)) == float(getattr(rh, field)), field
  # C6 risk: W_0(P), W_0(Q) built with c = 1 (NumPy with the factor 1).
  x_t = x_q[:4] + 0.1
  rk = _risk(params, x_p, x_q, x_t, eta=eta, tau=tau, convention="half")
  c, vals, keys = np_pooled(params, x_p, x_q, 0.4, 1.5, 1.0)
  n = x_p.shape[0]
  np.testing.assert_allclose(float(rk.risk_p),
                             np_kd_risk(params, c[:n], keys[:n], vals[:n], np.asarray(x_t), 1.5),
                             rtol=1e-10)
  np.testing.assert_allclose(float(rk.risk_q),
                             np_kd_risk(params, -c[n:], keys[n:], vals[n:], np.asarray(x_t), 1.5),
                             rtol=1e-10)


@pytest.mark.parametrize("call", [
    lambda p, xp, xq, conv: bounds.distillation_bias(p, xp, xq, eta=0.1, convention=conv),
    lambda p, xp, xq, conv: bounds.literal_readings(p, xp, xq, eta=0.1, convention=conv),
    lambda p, xp, xq, conv: bounds.prediction_gap(p, xp, xq, xp[0], eta=0.1, convention=conv),
    lambda p, xp, xq, conv: bounds.risk_bound(p, xp, xq, xq, eta=0.1, convention=conv),
    lambda p, xp, xq, conv: bounds.distilled_weight_gap(p, xp, xq, eta=0.1, convention=conv),
    lambda p, xp, xq, conv: counterexamples.counterexample("tv-factor-two", convention=conv),
], ids=["bias", "readings", "prediction", "risk", "gap", "counterexample"])
@pytest.mark.parametrize("bad", ["EQ12", "c=2", 2, None])
def test_bad_convention_names_the_argument(call, bad):
  params, x_p, x_q = draw_instance(0, (4, 3, 2, 2, 2))
  with pytest.raises(ValueError, match="convention must be one of"):
    call(params, x_p, x_q, bad)


# -- C5: the literal form under each reading ----------------------------------------------


def np_mmd(gram_fn, x, y):
  return np.sqrt(max(np_biased_mmd2(gram_fn, np.asarray(x), np.asarray(y)), 0.0))


def np_gauss(h):
  return lambda a, b: np.exp(-cdist(a, b, "sqeuclidean") / (2 * h * h))


def np_softmax_gram(params, tau):
  wk = np.asarray(params.w_k)
  return lambda a, b: np.exp((a @ wk.T) @ (b @ wk.T).T / tau)


def np_tv(x, y):
  """||P_hat - Q_hat||_1 by counting atoms in a dict (rows as tuples)."""
  mass = {}
  for row in np.asarray(x):
    mass[tuple(row)] = mass.get(tuple(row), 0.0) + 1.0 / len(x)
  for row in np.asarray(y):
    mass[tuple(row)] = mass.get(tuple(row), 0.0) - 1.0 / len(y)
  return sum(abs(v) for v in mass.values())


def np_constants(params, x_p, x_q, tau):
  z = np.concatenate([np.asarray(x_p), np.asarray(x_q)])
  m_v = np.linalg.norm(np.asarray(params.w_v), 2)
  m_x = np.max(np.linalg.norm(z, axis=1))
  sq = np.sum((z @ np.asarray(params.w_k).T) ** 2, axis=1)
  return m_v, m_x, np.exp(np.max(sq) / (2 * tau)), int(np.argmax(sq)), z


@pytest.mark.parametrize("convention", ["eq12", "half"])
def test_literal_readings_each_side_against_numpy(convention):
  """Every side of the four readings (and the grid) against NumPy/SciPy on a fixed instance.

  The largest key norm is in x_q (checked), so M_phi must be the pooled sup.
  """
  c = FACTOR[convention]
  params, x_p, x_q = draw_instance(4, (8, 6, 3, 2, 3))
  eta, tau = 0.4, 1.5
  out = _readings(params, x_p, x_q, eta=jnp.asarray(eta), tau=jnp.asarray(tau),
                  convention=convention)
  m_v, m_x, m_phi, argmax, z = np_constants(params, x_p, x_q, tau)
  assert argmax >= x_p.shape[0]                      # instance property: the sup is in Q
  const = eta * m_v * m_x * m_phi
  hs2, _ = np_gap_hs2(params, x_p, x_q, eta, tau, c)
  np.testing.assert_allclose(float(out.log_lhs), 0.5 * np.log(hs2), rtol=1e-12)
  np.testing.assert_allclose(float(out.log_constant), np.log(const), rtol=1e-12)
  h = np.median(pdist(z))
  np.testing.assert_allclose(float(out.bandwidth), h, rtol=1e-12)
  np.testing.assert_allclose(np.exp(float(out.log_rhs_gaussian)),
                             const * np_mmd(np_gauss(h), x_p, x_q), rtol=1e-10)
  grid = 2.0 ** np.arange(-3, 4)
  np.testing.assert_allclose(np.asarray(out.bandwidths), grid, rtol=0)
  rhs_grid = np.array([const * np_mmd(np_gauss(b), x_p, x_q) for b in grid])
  np.testing.assert_allclose(np.exp(np.asarray(out.log_rhs_gaussian_grid)), rhs_grid, rtol=1e-9)
  np.testing.assert_allclose(np.exp(float(out.log_rhs_gaussian_worst)), rhs_grid.min(),
                             rtol=1e-9)
  np.testing.assert_allclose(np.exp(float(out.log_rhs_softmax)),
                             const * np_mmd(np_softmax_gram(params, tau), x_p, x_q), rtol=1e-10)
  kx = np_kx_gram(params, tau)
  normalised = lambda a, b: kx(a, b) / (m_x * m_phi) ** 2
  assert np.max(np.abs(normalised(z, z))) <= 1.0 + 1e-12       # bounded by 1 on the support
  np.testing.assert_allclose(np.exp(float(out.log_rhs_normalised)),
                             const * np_mmd(normalised, x_p, x_q), rtol=1e-10)
  np.testing.assert_allclose([np_tv(x_p, x_q), float(out.tv)], 2.0, rtol=1e-14)  # no common atom
  np.testing.assert_allclose(np.exp(float(out.log_rhs_tv)), const * 2.0, rtol=1e-12)
  # The normalised reading is thm4.1-bound / c: it holds under half; eq12 is at most 2x.
  lhs = np.sqrt(hs2)
  bound = c * eta * m_v * np_mmd(kx, x_p, x_q)
  np.testing.assert_allclose(float(out.log_ratio("normalised")), np.log(lhs / bound * c),
                             rtol=1e-10)
  assert lhs <= bound * (1 + 1e-12)
  # The TV reading is the sup-norm bound ||mu_P - mu_Q|| <= M_x M_phi ||P - Q||_1 scaled by c.
  assert float(out.log_ratio("tv")) <= np.log(c) + 1e-12


def test_bound_attained_for_rank_one_values_on_their_line():
  """W^V = u v^T and every sample on the line of v: k_V = |u|^2 |v|^2 k_x = ||W^V||^2 k_x, so
  thm4.1-bound holds with equality (lhs == bound_rhs), each side also against NumPy."""
  params, _, _ = draw_instance(4, (8, 6, 3, 2, 3))
  u, v = np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.3, -0.7])
  params = params._replace(w_v=jnp.asarray(np.outer(u, v)))
  t_p, t_q = np.linspace(-1.0, 1.0, 8), np.linspace(0.0, 1.5, 6)
  x_p, x_q = jnp.asarray(t_p[:, None] * v), jnp.asarray(t_q[:, None] * v)
  out = _bias(params, x_p, x_q, eta=jnp.asarray(0.4), tau=jnp.asarray(1.5))
  np.testing.assert_allclose(float(out.lhs), float(out.bound_rhs), rtol=1e-12)
  hs2, _ = np_gap_hs2(params, x_p, x_q, 0.4, 1.5)
  np.testing.assert_allclose(float(out.lhs), np.sqrt(hs2), rtol=1e-12)
  bound = 2 * 0.4 * np.linalg.norm(u) * np.linalg.norm(v) * np_mmd(np_kx_gram(params, 1.5),
                                                                     x_p, x_q)
  np.testing.assert_allclose(float(out.bound_rhs), bound, rtol=1e-12)


def test_total_variation_hand_values():
  """P_hat = {a: 2/3, b: 1/3}, Q_hat = {a: 1/2, c: 1/2}: |2/3 - 1/2| + 1/3 + 1/2 = 1.

  Also: a sample against a permutation of itself is at 0; disjoint samples at 2; a random
  sample with repeated rows against the dict-counting NumPy reference.
  """
  a, b, c = [0.0, 1.0], [2.0, -1.0], [0.5, 0.5]
  x_p, x_q = jnp.array([a, a, b]), jnp.array([a, c])
  np.testing.assert_allclose(float(_TV(x_p, x_q)), 1.0, rtol=1e-15)
  np.testing.assert_allclose(np_tv(x_p, x_q), 1.0, rtol=1e-15)
  np.testing.assert_allclose(float(_TV(x_p, x_p[::-1])), 0.0, atol=1e-15)
  np.testing.assert_allclose(float(_TV(x_p + 10.0, x_p)), 2.0, rtol=1e-15)
  rng = np.random.default_rng(0)
  atoms = rng.normal(size=(4, 2))
  xs, ys = atoms[rng.integers(0, 4, 9)], atoms[rng.integers(1, 4, 7)]
  np.testing.assert_allclose(float(_TV(jnp.asarray(xs), jnp.asarray(ys))), np_tv(xs, ys),
                             rtol=1e-14)


@pytest.mark.parametrize("convention", ["eq12", "half"])
def test_bound_attained_in_one_dimension(convention):
  """d = d_k = d_v = 1: k_V = w_v^2 k_x, so thm4.1-bound is an equality and the normalised
  reading (thm4.1-bound's rhs / c) has ratio exactly c: 2 under eq12, the full factor."""
  params, x_p, x_q = draw_instance(21, (5, 4, 1, 1, 1))
  r = _readings(params, x_p, x_q, eta=jnp.asarray(0.3), tau=jnp.asarray(1.0),
                convention=convention)
  np.testing.assert_allclose(float(r.log_ratio("normalised")), np.log(FACTOR[convention]),
                             atol=1e-12)


# -- the analytic counterexamples ---------------------------------------------------------


def hand_ratio(name, c):
  """The closed forms, derived by hand (module docstring of icl_kd.counterexamples)."""
  return {"gaussian-point-masses": 2 * c / np.sqrt(2 - 2 * np.exp(-0.5)),
          "gaussian-point-masses-grid": 2 * c / np.sqrt(2 - 2 * np.exp(-1 / 32)),
          "softmax-null-space": np.inf,
          "normalised-factor-two": c,
          "tv-factor-two": c,
          "query-inside-support": np.exp(4.0)}[name]


def np_ratio(ce):
  """lhs / rhs of the instance's reading from its raw arrays, by the generic NumPy formulas."""
  c = FACTOR[ce.convention]
  params, x_p, x_q = ce.params, np.asarray(ce.x_p), np.asarray(ce.x_q)
  m_v, m_x, m_phi, _, z = np_constants(params, x_p, x_q, ce.tau)
  const = ce.eta * m_v * m_x * m_phi
  if ce.reading == "m-phi":
    q = np.asarray(params.w_q) @ np.asarray(ce.query)
    lhs = np.linalg.norm(np_dw_apply(params, x_p, x_q, ce.eta, ce.tau, q, c))
    rhs = c * ce.eta * m_v * np_mmd(np_kx_gram(params, ce.tau), x_p, x_q) * m_phi
  else:
    lhs = np.sqrt(np_gap_hs2(params, x_p, x_q, ce.eta, ce.tau, c)[0])
    if ce.reading == "gaussian":
      hs = [np.median(pdist(z))] if ce.bandwidths is None else np.asarray(ce.bandwidths)
      rhs = min(const * np_mmd(np_gauss(h), x_p, x_q) for h in hs)
    elif ce.reading == "softmax":
      rhs = const * np_mmd(np_softmax_gram(params, ce.tau), x_p, x_q)
    elif ce.reading == "normalised":
      kx = np_kx_gram(params, ce.tau)
      rhs = const * np_mmd(lambda a, b: kx(a, b) / (m_x * m_phi) ** 2, x_p, x_q)
    else:
      rhs = const * np_tv(x_p, x_q)
  return lhs / rhs if rhs > 0 else np.inf


@functools.lru_cache(maxsize=None)
def _checks(dtype_name: str) -> dict:
  """counterexamples.evaluate_all once per dtype, shared by the tests below (each evaluation
  runs the readings eagerly: about 2 s per instance)."""
  return {(r.name, r.convention): r
          for r in counterexamples.evaluate_all(dtype=jnp.dtype(dtype_name))}


@pytest.mark.parametrize("ce", counterexamples.counterexamples(dtype=jnp.float64),
                         ids=lambda ce: f"{ce.name}-{ce.convention}")
def test_counterexample_closed_form(ce):
  """Closed form (module) == hand formula (here) == NumPy from the arrays == the library."""
  hand = hand_ratio(ce.name, FACTOR[ce.convention])
  np.testing.assert_allclose(ce.closed_form_ratio, hand, rtol=1e-15)
  np.testing.assert_allclose(np_ratio(ce), hand, rtol=1e-12)
  check = _checks("float64")[(ce.name, ce.convention)]
  assert check.agrees
  np.testing.assert_allclose(check.computed_ratio, hand, rtol=1e-9)
  assert check.name == ce.name and check.convention == ce.convention


def test_counterexamples_in_float32():
  """The same instances in float32 agree with their closed forms to 1e-4 (float32 rounding of
  2 - 2 e^(-1/32) loses ~5 digits)."""
  for check in _checks("float32").values():
    assert check.agrees, check
    if np.isfinite(check.closed_form_ratio):
      np.testing.assert_allclose(check.computed_ratio, check.closed_form_ratio, rtol=1e-4)


def test_counterexample_verdicts_by_convention():
  """The factor c: the normalised and TV readings fail by exactly 2 under eq12 (refutations)
  and hold with equality under half (tightness witnesses, not refutations); the Gaussian and
  softmax readings and Theorem 4.2's literal form are refuted under both."""
  checks = _checks("float64")
  assert len(checks) == 2 * len(counterexamples.NAMES)
  for name in ("normalised-factor-two", "tv-factor-two"):
    assert checks[(name, "eq12")].computed_ratio == pytest.approx(2.0, rel=1e-12)
    assert checks[(name, "half")].computed_ratio == pytest.approx(1.0, rel=1e-12)
    assert checks[(name, "eq12")].status == "refutes"
    assert checks[(name, "half")].status == "tight"
  for name in ("gaussian-point-masses", "gaussian-point-masses-grid", "softmax-null-space",
               "query-inside-support"):
    assert checks[(name, "half")].computed_ratio >= np.sqrt(2.0)
    assert checks[(name, "half")].status == checks[(name, "eq12")].status == "refutes"
  with pytest.raises(ValueError, match="name must be one of"):
    counterexamples.counterexample("no-such-instance")


# -- C6: the chained and literal prediction bounds ----------------------------------------


def test_theorem_4_2_counterexample_has_its_query_inside_the_supports():
  """The retargeted instance: W^Q != W^K and the query a point of P's support, so it refutes
  the literal Theorem 4.2 itself, not M_phi read as a sample maximum."""
  ce = counterexamples.counterexample("query-inside-support", dtype=jnp.float64)
  assert not np.array_equal(np.asarray(ce.params.w_q), np.asarray(ce.params.w_k))
  atoms = np.concatenate([np.asarray(ce.x_p), np.asarray(ce.x_q)])
  assert any(np.array_equal(np.asarray(ce.query), a) for a in atoms)


def test_ball_sup_quadratic_against_a_dense_search():
  """sup over a ball of |A x|^2 (bisection on the secular equation) against an independent
  maximisation: the best of 20,000 points on the sphere refined by SciPy's SLSQP under the
  constraint |u| = r, and against the upper bound (|A c| + r ||A||)^2; with the center
  orthogonal to A's top right singular vector (the hard case) too."""
  from scipy.optimize import minimize
  rng = np.random.default_rng(3)
  f = jax.jit(bounds.ball_sup_quadratic)
  for trial in range(12):
    k, d = ((3, 3), (4, 5), (2, 5), (5, 2))[trial % 4] if trial < 10 else (2, 3)
    a = rng.normal(size=(k, d))
    c = rng.normal(size=d) * rng.uniform(0.2, 2.0)
    r = rng.uniform(0.2, 2.0)
    if trial >= 10:                               # the hard case
      _, _, vt = np.linalg.svd(a)
      c = c - vt[0] * (vt[0] @ c)
    got = float(f(jnp.asarray(a), jnp.asarray(c), jnp.asarray(r)))
    u = rng.normal(size=(20_000, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    values = np.sum(((c + r * u) @ a.T) ** 2, axis=1)
    start = r * u[np.argmax(values)]
    res = minimize(lambda v: -np.sum((a @ (c + v)) ** 2), start, method="SLSQP",
                   constraints=[{"type": "eq", "fun": lambda v: v @ v - r * r}],
                   options=dict(ftol=1e-15, maxiter=500))
    refined = -res.fun
    upper = (np.linalg.norm(a @ c) + r * np.linalg.norm(a, 2)) ** 2
    assert values.max() <= got * (1 + 1e-12)
    np.testing.assert_allclose(got, refined, rtol=1e-8, err_msg=str(trial))
    assert got <= upper * (1 + 1e-12)
  assert float(f(jnp.asarray(a), jnp.asarray(c), jnp.asarray(0.0))) == pytest.approx(
      float(np.sum((a @ c) ** 2)), rel=1e-12)


def test_pair_sides_equal_the_three_functions():
  """pair_sides computes the shared work once; each part equals its own function bitwise."""
  params, x_p, x_q = draw_instance(6, (10, 7, 3, 2, 3))
  query = jnp.array([0.3, -0.5, 0.2])
  kw = dict(eta=jnp.asarray(0.4), tau=jnp.asarray(1.3))
  sides = jax.jit(bounds.pair_sides)(params, x_p, x_q, query, **kw)
  for got, want in ((sides.bias, _bias(params, x_p, x_q, **kw)),
                    (sides.readings, _readings(params, x_p, x_q, **kw)),
                    (sides.prediction, _pred(params, x_p, x_q, query, **kw))):
    for name, a, b in zip(got._fields, got, want):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-14, atol=0,
                                 err_msg=name)


def test_prediction_chain_sides_against_numpy():
  """thm4.2-mmd: c eta ||W^V|| MMD_kx exp(|z|^2/2tau); thm4.2-literal: the same with M_phi
  (pooled-sample sup; the instance's largest key is in x_q) — each against NumPy."""
  params, x_p, x_q = draw_instance(4, (8, 6, 3, 2, 3))
  query = jnp.array([0.9, -0.2, 0.4])
  eta, tau = 0.4, 1.5
  out = _pred(params, x_p, x_q, query, eta=jnp.asarray(eta), tau=jnp.asarray(tau))
  m_v, _, m_phi, argmax, _ = np_constants(params, x_p, x_q, tau)
  assert argmax >= x_p.shape[0]
  z = np.asarray(params.w_q) @ np.asarray(query)
  chain = 2 * eta * m_v * np_mmd(np_kx_gram(params, tau), x_p, x_q)
  np.testing.assert_allclose(float(out.mmd_rhs), chain * np.exp(z @ z / (2 * tau)), rtol=1e-10)
  np.testing.assert_allclose(float(out.literal_rhs), chain * m_phi, rtol=1e-10)
  np.testing.assert_allclose(float(out.log_mmd_rhs), np.log(chain) + z @ z / (2 * tau),
                             rtol=1e-10)
  np.testing.assert_allclose(float(out.log_literal_rhs), np.log(chain * m_phi), rtol=1e-10)
  np.testing.assert_allclose(float(out.log_feature_bound), np.log(m_phi), rtol=1e-12)
  lhs = np.linalg.norm(np_dw_apply(params, x_p, x_q, eta, tau, z))
  hs2, _ = np_gap_hs2(params, x_p, x_q, eta, tau)
  assert lhs <= np.sqrt(hs2) * np.exp(z @ z / (2 * tau)) <= chain * np.exp(z @ z / (2 * tau))


def test_prediction_bounds_attained_at_a_single_anchor():
  """P = delta_x, Q = delta_0, W^Q = W^K, query x' = x, x along W^V's top right singular
  vector: dW = c eta W^V x phi(k)^T with phi(z) = phi(k), so Cauchy-Schwarz, the MMD chain and
  the literal M_phi form are all equalities (lhs = c eta ||W^V|| |x| e^{|k|^2/tau})."""
  params, _, _ = draw_instance(5, (1, 1, 2, 2, 2))
  params = params._replace(w_q=params.w_k)
  _, s, vt = np.linalg.svd(np.asarray(params.w_v))
  x = 0.8 * vt[0]
  tau = 1.3
  out = _pred(params, jnp.asarray(x[None]), jnp.zeros((1, 2)), jnp.asarray(x),
              eta=jnp.asarray(0.5), tau=jnp.asarray(tau))
  k = np.asarray(params.w_k) @ x
  expected = 2 * 0.5 * s[0] * np.linalg.norm(x) * np.exp(k @ k / tau)
  for name in ("lhs", "rhs", "mmd_rhs", "literal_rhs"):
    np.testing.assert_allclose(float(getattr(out, name)), expected, rtol=1e-12, err_msg=name)


def test_risk_bound_log_sides_at_large_scores():
  """Scores ~1e3: R_Q(W_0) ~ e^1000 overflows, the log sides stay finite and equal NumPy's
  computation at a fixed exponent shift; at moderate scores log fields == log of values."""
  params, x_p, x_q = draw_instance(6, (6, 5, 3, 3, 2), scale=0.05, shift=0.02)
  a = jnp.array([1.0, 0.0, 0.0])[None, :]
  params = params._replace(w_k=jnp.eye(3) * np.sqrt(1000.0))
  x_p, x_q = x_p + a, x_q + a
  out = _risk(params, x_p, x_q, x_q, eta=jnp.asarray(0.5), tau=jnp.asarray(1.0))
  assert np.isinf(float(out.risk_p)) and float(out.log_risk_p) > 1000
  c, vals, keys = np_pooled(params, x_p, x_q, 0.5, 1.0)
  n = x_p.shape[0]
  kt = np.asarray(x_q) @ np.asarray(params.w_k).T
  vt = np.asarray(x_q) @ np.asarray(params.w_v).T

  def np_log_risk(coef, anchors, values):
    s = kt @ anchors.T                                               # (n_t, anchors)
    shift = float(np.max(s))
    resid = vt * np.exp(-shift) - np.exp(s - shift) @ (coef[:, None] * values)
    return shift * 2 + np.log(np.mean(np.sum(resid ** 2, axis=1)))

  log_rp = np_log_risk(c[:n], keys[:n], vals[:n])
  log_rq = np_log_risk(-c[n:], keys[n:], vals[n:])
  np.testing.assert_allclose(float(out.log_risk_p), log_rp, rtol=1e-10)
  np.testing.assert_allclose(float(out.log_risk_q), log_rq, rtol=1e-10)
  np.testing.assert_allclose(float(out.log_lhs), 0.5 * log_rp, rtol=1e-10)
  hs2_shift = np.max(keys @ keys.T)
  cc = np.outer(c, c) * (vals @ vals.T) * np.exp(keys @ keys.T - hs2_shift)
  log_hs = 0.5 * (hs2_shift + np.log(np.sum(cc)))
  log_c = np.max(np.sum(kt ** 2, axis=1)) / 2
  np.testing.assert_allclose(float(out.log_rhs), np.logaddexp(0.5 * log_rq, log_c + log_hs),
                             rtol=1e-10)
  assert float(out.log_lhs) <= float(out.log_rhs)


# -- C4: uncertainty of the Monte Carlo estimate, and Gram validation -----------------------

_REPEATS = 200
_rademacher_repeats = jax.jit(jax.vmap(
    lambda g, key: bounds.empirical_rademacher(g, radius=1.5, key=key, num_draws=64),
    in_axes=(None, 0)))


def test_empirical_rademacher_std_error_matches_the_spread():
  """The reported SE against the spread of R = 200 independent estimates (S = 64 draws each).

  The sample SD of 200 i.i.d. estimates has relative SD ~ 1/sqrt(2 * 199) = 5%; the mean of
  200 reported SEs is far tighter. The ratio must lie in [0.75, 1.33] (a 5-sigma band:
  false-alarm rate < 1e-6 at these sizes); an SE off by sqrt(S) = 8 fails it. The mean of the
  estimates must also be within 4 SE of the mean (sqrt(R) S draws) of the exact value by
  enumeration of all 2^10 sign vectors (false alarm 6e-5).
  """
  k = np.asarray(_psd_gram(1, 10, 4))
  keys = jax.random.split(jax.random.key(17), _REPEATS)
  out = _rademacher_repeats(jnp.asarray(k), keys)
  spread = np.std(np.asarray(out.estimate), ddof=1)
  ratio = float(np.mean(np.asarray(out.std_error))) / spread
  assert 0.75 <= ratio <= 1.33, ratio
  signs = np.array(list(itertools.product([-1.0, 1.0], repeat=10)))
  exact = 1.5 / 10 * np.mean(np.sqrt(np.einsum("si,ij,sj->s", signs, k, signs)))
  assert abs(float(np.mean(np.asarray(out.estimate))) - exact) <= 4 * spread / np.sqrt(_REPEATS)


_rademacher_traced = jax.jit(
    lambda g: bounds.empirical_rademacher(g, radius=1.0, key=jax.random.key(0), num_draws=16))

_NOT_PSD = np.array([[1.0, 2.0], [2.0, 1.0]])          # eigenvalues 3 and -1
_ASYM = np.array([[1.0, 0.5], [0.0, 1.0]])


@pytest.mark.parametrize("gram, msg", [
    (np.ones((3, 4)), "gram must be a non-empty square"),
    (np.ones((0, 0)), "gram must be a non-empty square"),
    (np.ones((2, 2, 2)), "gram must have rank 2"),
    (_ASYM, "gram must be symmetric"),
    (_NOT_PSD, "gram must be positive semidefinite"),
    (np.diag([1.0, -1e-6]), "gram must be positive semidefinite"),
    (np.array([[np.nan, 0.0], [0.0, 1.0]]), "non-finite"),
], ids=["non-square", "empty", "rank-3", "non-symmetric", "indefinite", "barely-negative",
        "nan"])
def test_empirical_rademacher_refuses_bad_grams(gram, msg):
  """Each silent case of a non-Gram matrix is now an error naming ``gram`` (eagerly)."""
  with pytest.raises(ValueError, match=msg):
    bounds.empirical_rademacher(jnp.asarray(gram), radius=1.0, key=jax.random.key(0))


def test_empirical_rademacher_gram_checks_under_jit():
  """Traced Gram matrices: shape errors at trace time; asymmetric or indefinite values give NaN
  (documented); a rank-deficient float64 and float32 softmax Gram (64 points in d = 3, the
  checker's case) is within tolerance; -tol/2 relative is accepted and -2 tol refused."""
  with pytest.raises(ValueError, match="gram must be a non-empty square"):
    _rademacher_traced(jnp.ones((3, 4)))
  for bad in (_ASYM, _NOT_PSD):
    out = _rademacher_traced(jnp.asarray(bad))
    assert all(np.isnan(float(v)) for v in out)
  keys = 0.8 * jax.random.normal(jax.random.key(2), (64, 3))
  for dtype in (jnp.float64, jnp.float32):
    k = mmd.gram(mmd.exp_kernel(1.0), keys.astype(dtype), keys.astype(dtype))
    assert np.isfinite(float(_rademacher_traced(k).estimate))
    bounds.empirical_rademacher(k, radius=1.0, key=jax.random.key(0), num_draws=16)
  tol = bounds.gram_tolerance(jnp.float64)
  assert tol == pytest.approx(np.sqrt(np.finfo(np.float64).eps))
  near = jnp.diag(jnp.array([1.0, -0.5 * tol]))
  assert np.isfinite(float(_rademacher_traced(near).estimate))
  bounds.empirical_rademacher(near, radius=1.0, key=jax.random.key(0))
  far = jnp.diag(jnp.array([1.0, -2.0 * tol]))
  assert np.isnan(float(_rademacher_traced(far).estimate))
  with pytest.raises(ValueError, match="positive semidefinite"):
    bounds.empirical_rademacher(far, radius=1.0, key=jax.random.key(0))
  with pytest.raises(ValueError, match="tol"):
    bounds.empirical_rademacher(jnp.eye(2), radius=1.0, key=jax.random.key(0), tol=-1.0)


def test_empirical_rademacher_traced_check_uses_no_eigensolver():
  """The traced PSD test is a Cholesky elimination written in jnp, not a LAPACK call: XLA's
  batched CPU ``eigh``/``cholesky`` kernels hang when two CPU devices run them at once (the
  layout of large proofs_check runs), so a vmapped call must lower to neither."""
  grams = jnp.stack([jnp.eye(4)] * 3)
  jaxpr = str(jax.make_jaxpr(jax.vmap(
      lambda g: bounds.empirical_rademacher(g, radius=1.0, key=jax.random.key(0),
                                            num_draws=4)))(grams))
  assert "eigh" not in jaxpr
  assert "cholesky" not in jaxpr


def test_empirical_rademacher_traced_psd_test_matches_eigenvalues():
  """Under vmap the PSD verdict (finite estimate) equals NumPy's eigenvalue criterion
  min eig(K) >= -tol max|K| on a mixed batch: PSD, rank-deficient PSD, and two indefinite
  matrices, one far below and one just below the threshold."""
  rng = np.random.default_rng(5)
  a = rng.normal(size=(6, 3))
  low_rank = a @ a.T                                             # PSD, rank 3
  full = low_rank + np.eye(6)
  tol = bounds.gram_tolerance(np.float64)
  u, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  def with_min_eig(lam):
    return u @ np.diag([2.0, 1.5, 1.0, 0.5, 0.25, lam]) @ u.T
  batch = np.stack([full, low_rank, with_min_eig(-0.3), with_min_eig(-3.0 * tol * 2.0),
                    with_min_eig(-0.2 * tol * 2.0)])
  expected = [np.linalg.eigvalsh(k).min() >= -tol * np.abs(k).max() for k in batch]
  assert expected == [True, True, False, False, True]
  out = jax.jit(jax.vmap(lambda g: bounds.empirical_rademacher(
      g, radius=1.0, key=jax.random.key(0), num_draws=4).estimate))(jnp.asarray(batch))
  assert list(np.isfinite(np.asarray(out))) == expected


def test_literal_readings_bad_inputs():
  params, x_p, x_q = draw_instance(0, (4, 3, 2, 2, 2))
  with pytest.raises(ValueError, match="bandwidths must hold at least one"):
    bounds.literal_readings(params, x_p, x_q, eta=0.1, bandwidths=jnp.zeros((0,)))
  with pytest.raises(ValueError, match="bandwidths must be finite and > 0"):
    bounds.literal_readings(params, x_p, x_q, eta=0.1, bandwidths=jnp.array([1.0, -1.0]))
  with pytest.raises(ValueError, match="bandwidths must have rank 1"):
    bounds.literal_readings(params, x_p, x_q, eta=0.1, bandwidths=jnp.ones((2, 2)))
  with pytest.raises(ValueError, match="x_q has shape"):
    _readings(params, x_p, x_q[:, :1], eta=jnp.asarray(0.1), tau=jnp.asarray(1.0))
  with pytest.raises(ValueError, match="y has shape"):
    bounds.total_variation(x_p, x_q[:, :1])
  # the median heuristic is 0 when most pairs coincide: only the Gaussian-median side is NaN
  out = _readings(params, jnp.zeros((4, 2)), jnp.zeros((3, 2)).at[0].set(1.0),
                  eta=jnp.asarray(0.1), tau=jnp.asarray(1.0))
  assert np.isnan(float(out.log_rhs_gaussian)) and np.isfinite(float(out.log_rhs_tv))
  np.testing.assert_allclose(float(out.tv), 2.0 / 3.0, rtol=1e-15)
  with pytest.raises(ValueError, match="reading must be one of"):
    out.log_ratio("laplace")
  out = _readings(params, x_p.at[0, 0].set(jnp.nan), x_q, eta=jnp.asarray(0.1),
                  tau=jnp.asarray(1.0))
  assert np.isnan(float(out.log_lhs)) and np.isnan(float(out.log_rhs_tv))
