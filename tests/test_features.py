"""Explicit feature maps: random features converge at 1/sqrt(m); Taylor within its remainder."""

import decimal
import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from scipy import stats

import icl_kd

D_K = 4
TAU = 2.0


def _pairs(seed, n_pairs=64, scale=0.6):
  k1, k2 = jax.random.split(jax.random.key(seed))
  a = scale * jax.random.normal(k1, (n_pairs, D_K), jnp.float64)
  b = scale * jax.random.normal(k2, (n_pairs, D_K), jnp.float64)
  exact = np.exp(np.sum(np.asarray(a) * np.asarray(b), axis=1) / TAU)
  return a, b, exact


def _estimate(fm, a, b):
  return np.sum(np.asarray(jax.vmap(fm)(a)) * np.asarray(jax.vmap(fm)(b)), axis=1)


def _rms_rel_error(m, orthogonal, a, b, exact, n_draws):
  errs = []
  for s in range(n_draws):
    fm = icl_kd.positive_random_features(D_K, m, key=jax.random.key(1000 + s), tau=TAU,
                                         orthogonal=orthogonal, dtype=jnp.float64)
    errs.append((_estimate(fm, a, b) - exact) / exact)
  return float(np.sqrt(np.mean(np.square(errs))))


def test_random_features_converge_at_one_over_sqrt_m():
  """Slope of log RMS error vs log m over m = 2^6..2^14 lies in [-0.6, -0.4].

  64 fixed pairs x 8 fixed feature draws per m (seeds 1000..1007); the fitted slope
  of a 1/sqrt(m) law has sampling spread ~0.02 at this size, well inside the band.
  """
  a, b, exact = _pairs(0)
  ms = 2 ** np.arange(6, 15)
  errs = [_rms_rel_error(int(m), False, a, b, exact, 8) for m in ms]
  slope = np.polyfit(np.log(ms), np.log(errs), 1)[0]
  assert -0.6 <= slope <= -0.4, slope


def test_random_features_are_unbiased():
  """Mean over 200 independent draws (m = 16) is within 5 standard errors of kappa.

  False-alarm rate ~6e-7 per pair under a normal approximation (64 pairs; fixed seeds).
  """
  a, b, exact = _pairs(1)
  est = np.stack([_estimate(icl_kd.positive_random_features(
      D_K, 16, key=jax.random.key(s), tau=TAU, dtype=jnp.float64), a, b) for s in range(200)])
  se = est.std(0, ddof=1) / np.sqrt(est.shape[0])
  assert np.all(np.abs(est.mean(0) - exact) <= 5 * se)


def _mean_sq_rel_error(m, orthogonal, a, b, exact, n_draws):
  errs = []
  for s in range(n_draws):
    fm = icl_kd.positive_random_features(D_K, m, key=jax.random.key(1000 + s), tau=TAU,
                                         orthogonal=orthogonal, dtype=jnp.float64)
    errs.append(((_estimate(fm, a, b) - exact) / exact) ** 2)
  return float(np.mean(errs))


def test_orthogonal_features_beat_iid():
  """At m = 64 (16 blocks of d_k = 4), orthogonal MSE <= 0.97 x i.i.d. MSE (fixed seeds).

  Orthogonal rows reduce the variance of positive random features (Choromanski et
  al. 2021, Thm. 2). Mean squared relative error over 64 pairs (|z| ~ 0.6) x 200
  draws: the ratio is 0.91 on three different pair seeds, with a Monte Carlo
  spread of ~0.02 at this size; heavier-tailed larger |z| need far more draws.
  """
  a, b, exact = _pairs(2, scale=0.3)
  iid = _mean_sq_rel_error(64, False, a, b, exact, 200)
  ortho = _mean_sq_rel_error(64, True, a, b, exact, 200)
  assert ortho <= 0.97 * iid, (ortho, iid)


def test_orthogonal_rows_are_orthogonal_within_blocks():
  fm = icl_kd.positive_random_features(D_K, 10, key=jax.random.key(3), orthogonal=True,
                                       dtype=jnp.float64)
  omega = np.asarray(fm.omega)
  assert omega.shape == (10, D_K)
  for block in (omega[0:4], omega[4:8]):
    g = block @ block.T
    np.testing.assert_allclose(g - np.diag(np.diag(g)), 0, atol=1e-12)


@given(seed=st.integers(0, 2**31 - 1), degree=st.sampled_from([0, 1, 3, 6]),
       scale=st.floats(0.05, 2.0, allow_nan=False, allow_infinity=False, allow_subnormal=False))
def test_taylor_error_within_remainder_bound(seed, degree, scale):
  a, b, exact = _pairs(seed, n_pairs=16, scale=scale)
  fm = icl_kd.taylor_features(D_K, degree, tau=TAU, dtype=jnp.float64)
  est = _estimate(fm, a, b)
  bound = np.asarray(jax.vmap(lambda x, y: icl_kd.taylor_remainder_bound(
      x, y, degree=degree, tau=TAU))(a, b))
  assert np.all(np.abs(est - exact) <= bound * (1 + 1e-9) + 1e-13 * exact)
  # and the Taylor polynomial itself, summed independently
  t = np.sum(np.asarray(a) * np.asarray(b), axis=1) / TAU
  poly = sum(t ** n / np.prod(np.arange(1, n + 1, dtype=float)) for n in range(degree + 1))
  np.testing.assert_allclose(est, poly, rtol=1e-12, atol=1e-14)


def test_taylor_dimension():
  fm = icl_kd.taylor_features(3, 2, tau=1.0, dtype=jnp.float64)
  assert fm.num_features == 1 + 3 + 9
  assert fm(jnp.ones(3)).shape == (13,)


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_features_follow_the_kernel_tau(tau):
  a, b = jnp.array([0.15, -0.1, 0.05, 0.2]), jnp.array([0.05, 0.25, -0.15, 0.1])
  exact = float(np.exp(np.dot(a, b) / tau))
  taylor = icl_kd.taylor_features(D_K, 10, tau=tau, dtype=jnp.float64)  # tail < 0.1^11/11!
  np.testing.assert_allclose(float(jnp.dot(taylor(a), taylor(b))), exact, rtol=1e-12)
  rf = icl_kd.positive_random_features(D_K, 200_000, key=jax.random.key(0), tau=tau,
                                       dtype=jnp.float64)
  np.testing.assert_allclose(float(jnp.dot(rf(a), rf(b))), exact, rtol=0.02)  # ~6 SE at m=2e5


# --- laws, not only invariants ------------------------------------------------------------------

def _decimal_tail(t: float, degree: int) -> float:
  """exp(t) - sum_{n<=p} t^n / n!, in 60-digit decimal arithmetic (independent of NumPy/JAX)."""
  with decimal.localcontext() as ctx:
    ctx.prec = 60
    x = decimal.Decimal(t)
    poly = sum(x ** n / math.factorial(n) for n in range(degree + 1))
    return float(x.exp() - poly)


@pytest.mark.parametrize("degree", [0, 1, 3, 6])
def test_taylor_remainder_bound_is_tight_for_scalar_inputs(degree):
  """d_k = 1: the bound is |t|^{p+1}/(p+1)! max(1, e^t), within e^{-|t|} of the exact tail.

  Lagrange: R_p(t) = e^xi t^{p+1}/(p+1)! with xi between 0 and t, so
  e^{-|t|} <= |R_p| / bound <= 1, and the ratio tends to 1 as t -> 0. Each side is
  pinned: the bound to the closed form with math.factorial, the tail to a
  60-digit decimal computation. A looser bound (a wrong factorial, a lost factor)
  breaks the lower side.
  """
  tau = 2.0
  for t in (-2.0, -0.5, -1e-2, 1e-3, 0.3, 2.0):
    a, b = jnp.array([t * tau]), jnp.array([1.0])      # <a, b> / tau = t
    bound = float(icl_kd.taylor_remainder_bound(a, b, degree=degree, tau=tau))
    closed = abs(t) ** (degree + 1) / math.factorial(degree + 1) * max(1.0, math.exp(t))
    np.testing.assert_allclose(bound, closed, rtol=1e-13)
    ratio = abs(_decimal_tail(t, degree)) / bound
    assert math.exp(-abs(t)) * (1 - 1e-12) <= ratio <= 1 + 1e-12, (t, ratio)
    fm = icl_kd.taylor_features(1, degree, tau=tau, dtype=jnp.float64)
    np.testing.assert_allclose(math.exp(t) - float(jnp.dot(fm(a), fm(b))), _decimal_tail(t, degree),
                               rtol=1e-9, atol=1e-15)


_draw_features = jax.jit(jax.vmap(
    lambda k: icl_kd.positive_random_features(D_K, 16, key=k, tau=TAU, dtype=jnp.float64).omega))
_draw_orthogonal = jax.jit(jax.vmap(
    lambda k: icl_kd.positive_random_features(D_K, 2 * D_K, key=k, tau=TAU, orthogonal=True,
                                              dtype=jnp.float64).omega))


def test_iid_random_features_have_the_closed_form_variance():
  """Var of the m = 16 estimate equals (E X^2 - kappa^2)/m, X = exp(w.(a+b)/sqrt(tau) - ...).

  E X^2 = exp(2|a+b|^2/tau - (|a|^2+|b|^2)/tau). S = 4000 independent feature draws
  (fixed keys); for each of 4 pairs, the mean and the sample variance are compared
  with their closed forms by a z-score whose standard error is estimated from the
  sample's own fourth moment; |z| <= 4.5 (false alarm ~7e-6 per check under the
  normal approximation, 8 checks). Duplicated rows (m copies of one w) keep the
  mean but multiply the variance by m; this test catches that.
  """
  s_draws, m = 4000, 16
  omega = np.asarray(_draw_features(jax.random.split(jax.random.key(7), s_draws)))   # (S, m, d_k)
  rng = np.random.default_rng(3)
  for _ in range(4):
    a, b = 0.3 * rng.normal(size=D_K), 0.3 * rng.normal(size=D_K)
    log_phi = lambda z: omega @ z / np.sqrt(TAU) - z @ z / (2 * TAU) - 0.5 * np.log(m)
    est = np.sum(np.exp(log_phi(a) + log_phi(b)), axis=1)                          # (S,)
    kappa = np.exp(a @ b / TAU)
    ex2 = np.exp(2 * (a + b) @ (a + b) / TAU - (a @ a + b @ b) / TAU)
    var = (ex2 - kappa ** 2) / m
    z_mean = (est.mean() - kappa) / np.sqrt(var / s_draws)
    dev = est - est.mean()
    se_var = np.sqrt((np.mean(dev ** 4) - np.mean(dev ** 2) ** 2) / s_draws)
    z_var = (dev.var(ddof=1) - var) / se_var
    assert abs(z_mean) <= 4.5 and abs(z_var) <= 4.5, (z_mean, z_var)


def test_orthogonal_feature_rows_are_gaussian():
  """Each row of an orthogonal block is N(0, I_{d_k}) marginally (Haar direction x chi norm).

  S = 4000 independent draws (fixed keys) of 2 blocks. Coordinate 0 of rows 0 and
  d_k (first row of each block) against N(0, 1) by Kolmogorov-Smirnov (reject at
  p < 1e-3; false alarm 1e-3 per test); E|w|^2 = d_k within 4.5 SE (Var |w|^2 =
  2 d_k); rows of different blocks uncorrelated within 4.5 SE. A QR without the
  sign fix has rows with a fixed sign on their first coordinate: KS catches it.
  """
  s_draws = 4000
  omega = np.asarray(_draw_orthogonal(jax.random.split(jax.random.key(11), s_draws)))  # (S, 8, 4)
  for row in (0, D_K):
    assert stats.kstest(omega[:, row, 0], "norm").pvalue > 1e-3
    sq = np.sum(omega[:, row] ** 2, axis=1)
    assert abs(sq.mean() - D_K) <= 4.5 * np.sqrt(2 * D_K / s_draws)
  corr = np.mean(omega[:, 0, :] * omega[:, D_K, :], axis=0)                          # (d_k,)
  assert np.all(np.abs(corr) <= 4.5 / np.sqrt(s_draws))
