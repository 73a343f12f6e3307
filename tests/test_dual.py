"""DualWeights algebra, checked against explicit (Taylor) features and NumPy."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import icl_kd

D_V, D_K = 3, 2
SIZES = [(1, 1), (4, 6), (9, 3)]
TAYLOR_DEGREE = 16  # |<z_i, z_j>|/tau <~ 1.3 below: truncation < 1.3^17/17! ~ 3e-13


def _random_dual(key, n, scale=0.3, log_scale=0.0):
  k1, k2 = jax.random.split(key)
  return icl_kd.DualWeights.create(jax.random.normal(k1, (n, D_V), jnp.float64),
                                   scale * jax.random.normal(k2, (n, D_K), jnp.float64),
                                   tau=1.3, log_scale=log_scale)


def _numpy_gram_inner(w, v):
  a, z, b, y = (np.asarray(t, np.float64) for t in (w.coeffs, w.anchors, v.coeffs, v.anchors))
  k = np.exp(z @ y.T / float(w.tau))
  return np.exp(float(w.log_scale) + float(v.log_scale)) * np.sum((a @ b.T) * k)


@jax.jit
def _primal(w):
  return w.to_primal(icl_kd.taylor_features(D_K, TAYLOR_DEGREE, tau=1.3, dtype=jnp.float64))


@given(seed=st.integers(0, 2**31 - 1), sizes=st.sampled_from(SIZES),
       log_scale=st.floats(-3, 3, allow_nan=False, allow_infinity=False, allow_subnormal=False))
def test_dual_algebra_matches_explicit_features(seed, sizes, log_scale):
  """apply / inner / hs_norm / + / - / scaling agree with the primal matrix on exact features."""
  kw, kv, kz = jax.random.split(jax.random.key(seed), 3)
  w, v = _random_dual(kw, sizes[0], log_scale=log_scale), _random_dual(kv, sizes[1])
  pw, pv = np.asarray(_primal(w)), np.asarray(_primal(v))
  z = 0.3 * jax.random.normal(kz, (D_K,), jnp.float64)
  phi_z = np.asarray(icl_kd.taylor_features(D_K, TAYLOR_DEGREE, tau=1.3, dtype=jnp.float64)(z))
  np.testing.assert_allclose(w.apply(z), pw @ phi_z, rtol=1e-12, atol=1e-12 * np.abs(pw).sum())
  np.testing.assert_allclose(w.inner(v), np.sum(pw * pv), rtol=1e-11)
  np.testing.assert_allclose(w.inner(v), _numpy_gram_inner(w, v), rtol=1e-12)
  np.testing.assert_allclose(w.hs_norm(), np.linalg.norm(pw), rtol=1e-11)
  np.testing.assert_allclose(np.asarray(_primal(w + v)), pw + pv, rtol=1e-11, atol=1e-13)
  np.testing.assert_allclose(np.asarray(_primal(w - v)), pw - pv, rtol=1e-11, atol=1e-13)
  np.testing.assert_allclose(np.asarray(_primal(-2.5 * w)), -2.5 * pw, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(np.asarray(_primal(w * 3.0)), 3.0 * pw, rtol=1e-12, atol=1e-14)


def test_log_space_survives_extreme_scales():
  """A weight of norm ~exp(-1000) with anchors giving kernel exponents ~1e3 stays finite."""
  key = jax.random.key(1)
  w = _random_dual(key, 5, scale=1.0)
  big = icl_kd.DualWeights(w.coeffs, 25.0 * w.anchors, w.tau, jnp.asarray(-1000.0))
  log_norm = big.log_hs_norm()
  assert np.isfinite(float(log_norm))
  # Reference: the same norm at log_scale 0 computed in NumPy with a shifted log-sum-exp.
  a, z = np.asarray(big.coeffs), np.asarray(big.anchors)
  lk = z @ z.T / float(big.tau)
  m = lk.max()
  ref = -1000.0 + 0.5 * m + 0.5 * np.log(np.sum((a @ a.T) * np.exp(lk - m)))
  np.testing.assert_allclose(log_norm, ref, rtol=1e-13)
  z_query = 25.0 * jnp.ones(D_K)
  out = big.apply(z_query)
  lw = z @ np.asarray(z_query) / float(big.tau) - 1000.0
  ref_apply = np.exp(lw.max()) * (np.exp(lw - lw.max()) @ a)
  np.testing.assert_allclose(out, ref_apply, rtol=1e-12)
  same = big.rescaled(-999.0)
  np.testing.assert_allclose(same.log_hs_norm(), log_norm, rtol=1e-13)


def test_aligned_difference_avoids_cancellation():
  """||W - W(1+1e-9)|| is 1e-9 ||W||: aligned subtraction gets it, the Gram form cannot."""
  w = _random_dual(jax.random.key(2), 7)
  v = 1.000000001 * w
  np.testing.assert_allclose(icl_kd.relative_hs_error(v, w, aligned=True), 1e-9, rtol=1e-6)
  assert float(icl_kd.relative_hs_error(w, w, aligned=True)) == 0.0


def test_zero_weights_and_empty_sums():
  z = icl_kd.DualWeights.zeros(D_V, D_K, tau=1.3, dtype=jnp.float64)
  w = _random_dual(jax.random.key(3), 4)
  assert z.num_anchors == 0
  np.testing.assert_array_equal(z.apply(jnp.ones(D_K)), np.zeros(D_V))
  assert float(z.hs_norm()) == 0.0
  assert (w + z) is w and (z + w) is w
  assert float(icl_kd.relative_hs_error(z, z)) == 0.0


def test_mismatched_spaces_and_tau_are_rejected():
  w = _random_dual(jax.random.key(4), 3)
  other = icl_kd.DualWeights.create(np.ones((2, D_V + 1)), np.ones((2, D_K)), tau=1.3)
  with pytest.raises(ValueError, match="different spaces"):
    w + other
  other_tau = icl_kd.DualWeights.create(np.ones((2, D_V)), np.ones((2, D_K)), tau=2.0)
  with pytest.raises(ValueError, match="different tau"):
    w.inner(other_tau)


def test_softmax_kernel_one_pair():
  a, b = jnp.array([1.0, 2.0]), jnp.array([-0.5, 0.25])
  np.testing.assert_allclose(icl_kd.softmax_kernel(a, b, tau=2.0), np.exp(0.0 / 2.0))
  np.testing.assert_allclose(icl_kd.log_softmax_kernel(a, b * 4, tau=2.0), (-2.0 + 2.0) / 2.0)
  np.testing.assert_allclose(icl_kd.log_softmax_kernel(a, a, tau=0.5), 10.0)
