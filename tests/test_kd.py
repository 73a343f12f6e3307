"""Claims C2 (kd-step) and C3 (dw-step): attention's weights are gradient steps."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given
import pytest

import icl_kd
from tests.helpers import c1_tolerance, make_instance

SHAPES = [(4, 2, 3, 2, 2), (16, 5, 6, 4, 3)]      # (N, M, d, d_k, d_v)
NUM_FEATURES = 96


def _features(d_k, seed):
  return icl_kd.positive_random_features(d_k, NUM_FEATURES, key=jax.random.key(seed),
                                         dtype=jnp.float64)


@jax.jit
def _grad_sq(weights, params, inputs, fm):
  return jax.grad(icl_kd.kd_loss)(weights, params, inputs, feature_map=fm, kind="squared")


@jax.jit
def _grad_lin(weights, params, inputs, fm):
  return jax.grad(icl_kd.kd_loss)(weights, params, inputs, feature_map=fm, kind="linear")


def _rel(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES),
       log10_scale=st.floats(-3, 3, allow_nan=False, allow_infinity=False, allow_subnormal=False))
def test_c2_dual_closed_form_equals_w0(seed, shape, log10_scale):
  """one_step_kd_weights at eta* = N/(2D') is W_0, in dual form, up to scores of 1e3."""
  params, demos, prefix, query = make_instance(seed, *shape, jnp.float64, log10_scale)
  out = icl_kd.decompose(params, demos, prefix, query)
  w1 = icl_kd.one_step_kd_weights(params, demos, log_eta=out.log_eta)
  np.testing.assert_array_equal(w1.anchors, out.w0.anchors)
  err = float(icl_kd.relative_hs_error(w1, out.w0, aligned=True))
  assert err <= float(c1_tolerance(jnp.float64, out.max_abs_score)), err
  if float(out.eta) > 1e-300:  # eta itself representable: the eta= form agrees too
    w1e = icl_kd.one_step_kd_weights(params, demos, eta=out.eta)
    assert float(icl_kd.relative_hs_error(w1e, out.w0, aligned=True)) <= 1e-12 * max(
        1.0, float(out.max_abs_score) / 10)


@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES))
def test_c2_closed_form_equals_autodiff_and_optax(seed, shape):
  """W_1 = -eta* grad L_D(0) = one optax.sgd(eta*) update, on the same explicit features."""
  params, demos, prefix, query = make_instance(seed, *shape, jnp.float64, 0.5)
  out = icl_kd.decompose(params, demos, prefix, query)
  fm = _features(params.d_k, seed)
  closed = out.w0.to_primal(fm)                                  # (d_v, m)
  zero = jnp.zeros((params.d_v, NUM_FEATURES), jnp.float64)
  grad = _grad_sq(zero, params, demos, fm)
  assert _rel(-out.eta * grad, closed) <= 1e-13
  opt = optax.sgd(out.eta)
  updates, _ = opt.update(grad, opt.init(zero), zero)
  assert _rel(optax.apply_updates(zero, updates), closed) <= 1e-13
  # A generic step size is not W_0: the identity pins eta* down.
  assert _rel(-(1.1 * out.eta) * grad, closed) > 0.05


def test_c2_autodiff_in_float32():
  params, demos, prefix, query = make_instance(7, 16, 5, 6, 4, 3, jnp.float32, 0.5)
  out = icl_kd.decompose(params, demos, prefix, query)
  fm = icl_kd.positive_random_features(4, NUM_FEATURES, key=jax.random.key(0), dtype=jnp.float32)
  zero = jnp.zeros((3, NUM_FEATURES), jnp.float32)
  grad = _grad_sq(zero, params, demos, fm)
  assert _rel(-out.eta * grad, out.w0.to_primal(fm)) <= 1e-5


@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES),
       log10_scale=st.floats(-3, 3, allow_nan=False, allow_infinity=False, allow_subnormal=False))
def test_c3_linear_loss_step_adds_exactly_dw(seed, shape, log10_scale):
  """One step of the linear KD loss over the query tokens, size M/D', adds dW (any start)."""
  params, demos, prefix, query = make_instance(seed, *shape, jnp.float64, log10_scale)
  out = icl_kd.decompose(params, demos, prefix, query)
  tokens = jnp.concatenate([prefix, query[None]])                 # the tokens that make dW
  log_eta = jnp.log(tokens.shape[0] * 1.0) - out.log_partition    # eta = M / D'
  tol = float(c1_tolerance(jnp.float64, out.max_abs_score))
  for start in (out.w0, icl_kd.DualWeights.zeros(params.d_v, params.d_k, dtype=jnp.float64)):
    start = icl_kd.DualWeights(start.coeffs, start.anchors, out.w0.tau, start.log_scale)
    inc = icl_kd.kd_step_increment(start, params, tokens, log_eta=log_eta, kind="linear")
    assert float(icl_kd.relative_hs_error(inc, out.dw, aligned=True)) <= tol
  new = icl_kd.kd_step_dual(out.w0, params, tokens, log_eta=log_eta, kind="linear")
  q = params.w_q @ query
  np.testing.assert_allclose(new.apply(q), out.attention, rtol=10 * tol, atol=0)


@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES),
       log10_scale=st.floats(-3, 1.5, allow_nan=False, allow_infinity=False, allow_subnormal=False))
def test_c3_squared_loss_step_adds_dw_minus_residual(seed, shape, log10_scale):
  """From W_0 with eta = M/(2D') the squared-loss step adds dW - R (dual form)."""
  params, demos, prefix, query = make_instance(seed, *shape, jnp.float64, log10_scale)
  out = icl_kd.decompose(params, demos, prefix, query)
  tokens = jnp.concatenate([prefix, query[None]])
  log_eta = jnp.log(tokens.shape[0] / 2.0) - out.log_partition
  inc = icl_kd.kd_step_increment(out.w0, params, tokens, log_eta=log_eta, kind="squared")
  resid = icl_kd.squared_step_residual(out.w0, params, tokens)
  lhs = icl_kd.aligned_difference(out.dw, inc)                   # dW - step, should be R
  # R's coefficients, computed here from the definition with NumPy: f_S(x'_j; W_0) =
  # sum_i W^V x_i exp(<k_i, k'_j>/tau - log D').
  k_demo = np.asarray(demos @ params.w_k.T)
  k_tok = np.asarray(tokens @ params.w_k.T)
  f_s = np.exp(k_tok @ k_demo.T - float(out.log_partition)) @ np.asarray(demos @ params.w_v.T)
  np.testing.assert_allclose(resid.coeffs, f_s, rtol=1e-10, atol=1e-12 * np.abs(f_s).max())
  np.testing.assert_allclose(resid.log_scale, -out.log_partition, rtol=1e-15)  # the 1/D'
  # Absolute tolerance relative to the scale of the subtracted terms (dW's norm).
  scale = float(out.dw.hs_norm()) + float(resid.hs_norm())
  diff = icl_kd.aligned_difference(lhs, resid)
  assert float(diff.hs_norm()) <= 1e-12 * max(1.0, float(out.max_abs_score) / 10) * scale


def test_c3_squared_residual_in_primal_with_autodiff():
  """The same statement on explicit features, with jax.grad and no dual code."""
  params, demos, prefix, query = make_instance(21, 12, 4, 5, 3, 2, jnp.float64, 0.3)
  out = icl_kd.decompose(params, demos, prefix, query)
  tokens = jnp.concatenate([prefix, query[None]])
  fm = _features(3, 4)
  phi_demo = np.asarray(jax.vmap(fm)(demos @ params.w_k.T))      # (N, m)
  phi_tok = np.asarray(jax.vmap(fm)(tokens @ params.w_k.T))      # (M, m)
  d_prime = float(np.exp(out.log_partition))
  w0 = np.asarray(demos @ params.w_v.T).T @ phi_demo / d_prime    # (d_v, m)
  dw = np.asarray(tokens @ params.w_v.T).T @ phi_tok / d_prime
  r = (w0 @ phi_tok.T) @ phi_tok / d_prime                         # R with these features
  eta = tokens.shape[0] / (2 * d_prime)
  step = -eta * np.asarray(_grad_sq(jnp.asarray(w0), params, tokens, fm))
  assert _rel(step, dw - r) <= 1e-12
  lin = -(tokens.shape[0] / d_prime) * np.asarray(_grad_lin(jnp.asarray(w0), params, tokens, fm))
  assert _rel(lin, dw) <= 1e-12
  # The residual is not small: the squared loss is not what attention does.
  assert np.linalg.norm(r) / np.linalg.norm(dw) > 1e-2


def test_c3_residual_ratio_is_reported_nonzero():
  params, demos, prefix, query = make_instance(5, 16, 5, 6, 4, 3, jnp.float64, 0.5)
  out = icl_kd.decompose(params, demos, prefix, query)
  tokens = jnp.concatenate([prefix, query[None]])
  resid = icl_kd.squared_step_residual(out.w0, params, tokens)
  ratio = float(resid.hs_norm() / out.dw.hs_norm())
  assert 1e-3 < ratio < 1e3


# --- validation: the library's convention (raise eagerly; NaN under jit for run-time values) ---

def _kd_inputs():
  params, demos, prefix, query = make_instance(3, 6, 2, 4, 3, 2, jnp.float64, 0.0)
  return params, demos, prefix


@jax.jit
def _w1_jit(params, demos, tau, eta):
  w = icl_kd.one_step_kd_weights(params, demos, eta=eta, tau=tau)
  return w.coeffs, w.log_scale, w.tau


@jax.jit
def _loss_jit(weights, params, inputs, omega, tau):
  fm = icl_kd.PositiveRandomFeatures(omega, tau)
  return icl_kd.kd_loss(weights, params, inputs, feature_map=fm)


@jax.jit
def _inc_jit(params, demos, prefix, eta, tau):
  w0 = icl_kd.one_step_kd_weights(params, demos, eta=1.0, tau=tau)
  inc = icl_kd.kd_step_increment(w0, params, prefix, eta=eta)
  res = icl_kd.squared_step_residual(w0, params, prefix)
  return inc.coeffs, inc.log_scale, res.coeffs


def test_kd_bad_values_under_jit_poison_to_nan():
  """tau <= 0, eta <= 0 or a non-finite token give NaN under jit (finite garbage before)."""
  params, demos, prefix = _kd_inputs()
  one = jnp.asarray(1.0)
  good = _w1_jit(params, demos, one, one)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in good)
  for tau, eta in ((0.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (1.0, -2.0)):
    out = _w1_jit(params, demos, jnp.asarray(tau), jnp.asarray(eta))
    assert all(bool(jnp.all(jnp.isnan(x))) for x in out), (tau, eta)
  bad_demos = demos.at[0, 0].set(jnp.inf)
  assert bool(jnp.all(jnp.isnan(_w1_jit(params, bad_demos, one, one)[0])))
  omega = jax.random.normal(jax.random.key(0), (8, params.d_k), jnp.float64)
  w = jnp.ones((params.d_v, 8))
  assert bool(jnp.isfinite(_loss_jit(w, params, demos, omega, one)))
  assert bool(jnp.isnan(_loss_jit(w.at[0, 0].set(jnp.nan), params, demos, omega, one)))
  assert bool(jnp.isnan(_loss_jit(w, params, bad_demos, omega, one)))
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in _inc_jit(params, demos, prefix, one, one))
  for eta, tau in ((0.0, 1.0), (1.0, 0.0)):
    out = _inc_jit(params, demos, prefix, jnp.asarray(eta), jnp.asarray(tau))
    assert bool(jnp.all(jnp.isnan(out[0]))) and bool(jnp.all(jnp.isnan(out[1]))), (eta, tau)
  out = _inc_jit(params, demos, prefix.at[0, 1].set(jnp.nan), one, one)
  assert bool(jnp.all(jnp.isnan(out[0]))) and bool(jnp.all(jnp.isnan(out[2])))


def test_kd_bad_values_eagerly_raise_naming_the_argument():
  params, demos, prefix = _kd_inputs()
  import pytest
  with pytest.raises(ValueError, match="tau"):
    icl_kd.one_step_kd_weights(params, demos, eta=1.0, tau=0.0)
  with pytest.raises(ValueError, match="eta"):
    icl_kd.one_step_kd_weights(params, demos, eta=-1.0)
  with pytest.raises(ValueError, match="demos"):
    icl_kd.one_step_kd_weights(params, demos.at[0, 0].set(jnp.nan), eta=1.0)
  w0 = icl_kd.one_step_kd_weights(params, demos, eta=1.0)
  with pytest.raises(ValueError, match="inputs"):
    icl_kd.kd_step_increment(w0, params, prefix.at[0, 0].set(jnp.inf), eta=1.0)
  with pytest.raises(ValueError, match="tokens"):
    icl_kd.squared_step_residual(w0, params, prefix.at[0, 0].set(jnp.inf))
  fm = icl_kd.PositiveRandomFeatures(jnp.ones((4, params.d_k)), 1.0)
  with pytest.raises(ValueError, match="weights"):
    icl_kd.kd_loss(jnp.full((params.d_v, 4), jnp.nan), params, demos, feature_map=fm)
  with pytest.raises(TypeError, match="dtype"):
    icl_kd.kd_loss(jnp.ones((params.d_v, 4), jnp.float32), params, demos, feature_map=fm)


def test_c2_error_unit_is_the_cancellation_free_weight():
  """kd-step's unit |W_0| = (1/D') sum_i (|W^V||x_i|) phi(k_i)^T, pinned to NumPy; on an
  instance whose value W^V x_0 cancels to 1e-9 of its terms the unit stays of the terms'
  size (so rounding of W^V x_0 is not read as a 1e-7 relative error), and a wrong step
  (eta = 2 eta*) is still an error of order one in that unit."""
  import math

  from icl_kd.claims import CLAIMS, c2_kd_step
  from icl_kd.claims.c1_decomposition import prompt_params
  from proofs_check import sweep
  claim = CLAIMS["kd-step"]
  bucket = claim.buckets[0]                                   # N = 1, d = 3, d_v = 1
  inst = sweep.instance_of(claim, 0, 0, 3, jnp.float64)
  x = np.asarray(inst["demos"])[0]
  w_v = np.array([[x[1], -x[0], 0.0]]) * (1.0 + np.array([[0.0, 1e-9, 0.0]]))  # W^V x ~ 1e-9
  inst = dict(inst, w_v=jnp.asarray(w_v))
  shared = claim.prepare(inst, bucket)
  params = prompt_params(inst)
  unit = c2_kd_step.abs_weights(shared.w0, params, inst["demos"])
  np.testing.assert_allclose(np.asarray(unit.coeffs),
                             np.abs(np.asarray(inst["demos"])) @ np.abs(w_v).T, rtol=1e-15)
  keys = np.asarray(shared.w0.anchors)
  a = np.asarray(unit.coeffs)
  gram = np.exp(keys @ keys.T / float(inst["tau"]))
  hs = math.exp(float(unit.log_scale)) * math.sqrt(float(np.sum((a @ a.T) * gram)))
  assert math.exp(float(unit.log_hs_norm())) == pytest.approx(hs, rel=1e-13)
  ratio = float(np.abs(w_v @ x)[0] / (np.abs(w_v) @ np.abs(x))[0])
  assert ratio < 1e-8                                          # the value cancels
  check = claim.compute(inst, bucket, shared)
  assert float(check.error) <= float(check.tolerance)
  wrong = c2_kd_step.compute(inst, bucket,
                             shared._replace(log_eta=shared.log_eta + math.log(2.0)))
  assert float(wrong.error) == pytest.approx(ratio, rel=1e-3)    # 2 W_0 - W_0 = W_0 = ratio |W_0|
