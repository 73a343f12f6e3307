"""Tests of icl_kd.distributions: bounded-support samplers with shift/scale/rotation knobs.

Statistical checks use fixed seeds; each states its sample size and false-alarm
rate. Exact checks (support, knobs, determinism) use tight float64 tolerances.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from icl_kd import distributions as dist
from icl_kd import mmd

FLOATS = dict(allow_nan=False, allow_infinity=False, width=64)
DIMS = [2, 5]


def _mixture(d, dtype=jnp.float64):
  means = jnp.zeros((3, d), dtype).at[0, 0].set(3.0).at[1, 1].set(-3.0)
  return dist.truncated_gaussian_mixture(means, weights=jnp.array([0.2, 0.3, 0.5], dtype),
                                         std=0.5, truncation=1.5)


_sample_ball = jax.jit(lambda b, key: b.sample(500, key=key))
_sample_mix = jax.jit(lambda g, key: g.sample(500, key=key))


@given(seed=st.integers(0, 2**31 - 1), d=st.sampled_from(DIMS),
       radius=st.floats(0.1, 5.0, **FLOATS), scale=st.floats(0.1, 3.0, **FLOATS),
       angle=st.floats(-3.0, 3.0, **FLOATS), shift=st.floats(-5.0, 5.0, **FLOATS))
def test_knobs_are_the_affine_map_and_support_holds(seed, d, radius, scale, angle, shift):
  """Same key: transformed sample == shift + scale * R u; every point within support_radius."""
  key = jax.random.key(seed)
  base = dist.uniform_ball(d, radius=radius, dtype=jnp.float64)
  rot = dist.givens_rotation(d, angle, dtype=jnp.float64)
  sh = dist.axis_shift(d, shift, axis=d - 1, dtype=jnp.float64)
  moved = base.transformed(shift=sh, scale=scale, rotation=rot)
  u, x = np.asarray(_sample_ball(base, key)), np.asarray(_sample_ball(moved, key))
  expected = np.asarray(sh)[None, :] + scale * u @ np.asarray(rot).T
  np.testing.assert_allclose(x, expected, rtol=1e-12, atol=1e-12 * (abs(shift) + scale * radius))
  assert np.all(np.linalg.norm(u, axis=1) <= radius * (1 + 1e-12))
  bound = abs(shift) + scale * radius
  np.testing.assert_allclose(float(moved.support_radius()), bound, rtol=1e-12)
  assert np.all(np.linalg.norm(x, axis=1) <= bound * (1 + 1e-12))

  g = _mixture(d)
  g_moved = g.transformed(shift=sh, scale=scale, rotation=rot)
  v, y = np.asarray(_sample_mix(g, key)), np.asarray(_sample_mix(g_moved, key))
  np.testing.assert_allclose(y, np.asarray(sh)[None, :] + scale * v @ np.asarray(rot).T,
                             rtol=1e-12, atol=1e-11 * (abs(shift) + scale * 4))
  gb = abs(shift) + scale * (3.0 + 0.5 * 1.5 * np.sqrt(d))
  np.testing.assert_allclose(float(g_moved.support_radius()), gb, rtol=1e-12)
  assert np.all(np.linalg.norm(y, axis=1) <= gb * (1 + 1e-12))
  # each point lies in the truncation box of some component
  means = np.asarray(g.means)
  dev = np.min(np.max(np.abs(v[:, None, :] - means[None, :, :]), axis=2), axis=1)
  assert np.all(dev <= 0.5 * 1.5 * (1 + 1e-12))


def test_uniform_ball_radial_law_and_mean():
  """|u| for u uniform in the d-ball: P(|u| <= r) = (r/R)^d, so (|u|/R)^d ~ U(0, 1).

  Kolmogorov-Smirnov at n = 4000 for d = 2, 5; rejection at p < 1e-3 (false alarm
  1e-3 per case, fixed seed). Mean 0 within 4 standard errors per coordinate
  (Var u_i = R^2 / (d + 2)).
  """
  for d, seed in ((2, 0), (5, 1)):
    b = dist.uniform_ball(d, radius=2.0, dtype=jnp.float64)
    u = np.asarray(b.sample(4000, key=jax.random.key(seed)))
    t = (np.linalg.norm(u, axis=1) / 2.0) ** d
    assert stats.kstest(t, "uniform").pvalue > 1e-3
    se = np.sqrt(4.0 / (d + 2) / 4000)
    assert np.all(np.abs(u.mean(axis=0)) <= 4 * se)


def test_truncated_mixture_weights_mean_and_variance():
  """n = 6000 from the 3-component mixture (weights 0.2, 0.3, 0.5), d = 3.

  Component counts: each within 4 binomial SE of n w_c. The noise is per-coordinate
  truncated N(0, 1) on [-1.5, 1.5] times std = 0.5: the coordinate that no mean moves
  (the last) has mean 0 and variance 0.25 Var(truncnorm(-1.5, 1.5)) (SciPy), each within
  4 SE (false alarm ~1e-4 per check, fixed seed).
  """
  n = 6000
  g = _mixture(3)
  x = np.asarray(g.sample(n, key=jax.random.key(42)))
  means = np.asarray(g.means)
  comp = np.argmin(np.linalg.norm(x[:, None, :] - means[None, :, :], axis=2), axis=1)
  for c, w in enumerate([0.2, 0.3, 0.5]):
    assert abs(np.sum(comp == c) - n * w) <= 4 * np.sqrt(n * w * (1 - w))
  last = x[:, 2]
  var = 0.25 * stats.truncnorm(-1.5, 1.5).var()
  assert abs(last.mean()) <= 4 * np.sqrt(var / n)
  # Var of the sample variance ~ (mu4 - var^2) / n
  mu4 = 0.0625 * stats.truncnorm(-1.5, 1.5).moment(4)
  assert abs(last.var() - var) <= 4 * np.sqrt((mu4 - var ** 2) / n)


_sweep = jax.jit(lambda p, q, kp, kq, h: mmd.mmd2(
    p.sample(300, key=kp), q.sample(300, key=kq), kernel=mmd.gaussian_kernel(h),
    estimator="biased"))


def test_knobs_sweep_mmd_upward():
  """MMD^2 between P and its shifted / rotated copy grows with the knob (n = 300, fixed seeds).

  The gaps between consecutive knob values are several times the seed-to-seed
  spread of the biased estimate at this n (about 0.003 here; the smallest gap,
  rotation 0 -> 0.2, is about 0.02), so the ordering is not a matter of chance.
  """
  kp, kq = jax.random.key(0), jax.random.key(1)
  h = jnp.asarray(1.0)
  g = _mixture(3)
  shifts = [0.0, 0.5, 1.0, 2.0]
  vals = [float(_sweep(g, g.transformed(shift=dist.axis_shift(3, s, dtype=jnp.float64)), kp, kq, h))
          for s in shifts]
  assert all(a < b for a, b in zip(vals, vals[1:])), vals
  angles = [0.0, 0.2, 0.4, 0.7]
  vals = [float(_sweep(g, g.transformed(rotation=dist.givens_rotation(3, a, dtype=jnp.float64)),
                       kp, kq, h)) for a in angles]
  assert all(a < b for a, b in zip(vals, vals[1:])), vals
  b = dist.uniform_ball(3, dtype=jnp.float64)
  scales = [1.0, 1.5, 2.5]
  vals = [float(_sweep(b, b.transformed(scale=s), kp, kq, h)) for s in scales]
  assert all(a < b for a, b in zip(vals, vals[1:])), vals


def test_determinism_jit_and_float32():
  b = dist.uniform_ball(3, radius=1.0, dtype=jnp.float32)
  k = jax.random.key(3)
  x1, x2 = b.sample(50, key=k), b.sample(50, key=k)
  assert x1.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(x1), np.asarray(x2))
  assert not np.allclose(np.asarray(x1), np.asarray(b.sample(50, key=jax.random.key(4))))
  # A traced knob under jit (closed-over distribution): knobs are sweepable inside jit/vmap.
  f = jax.jit(jax.vmap(lambda s: b.transformed(shift=dist.axis_shift(3, s, dtype=jnp.float32)).sample(50, key=k)))
  xs = f(jnp.array([0.0, 1.0], jnp.float32))
  np.testing.assert_allclose(np.asarray(xs[1] - xs[0]), np.tile([1.0, 0.0, 0.0], (50, 1)),
                             atol=1e-6)


def test_rotations():
  r = np.asarray(dist.givens_rotation(4, np.pi / 6, i=1, j=3, dtype=jnp.float64))
  np.testing.assert_allclose(r @ r.T, np.eye(4), atol=1e-15)
  e1 = np.eye(4)[1]
  expected = np.cos(np.pi / 6) * np.eye(4)[1] + np.sin(np.pi / 6) * np.eye(4)[3]
  np.testing.assert_allclose(r @ e1, expected, atol=1e-15)
  q = np.asarray(dist.random_rotation(5, key=jax.random.key(0), dtype=jnp.float64))
  np.testing.assert_allclose(q @ q.T, np.eye(5), atol=1e-13)
  assert not np.allclose(q, np.asarray(dist.random_rotation(5, key=jax.random.key(1),
                                                            dtype=jnp.float64)))


def test_bad_inputs():
  with pytest.raises(ValueError, match="radius"):
    dist.uniform_ball(3, radius=0.0)
  with pytest.raises(ValueError, match="scale"):
    dist.uniform_ball(3, scale=-1.0)
  with pytest.raises(ValueError, match="d must be"):
    dist.uniform_ball(0)
  with pytest.raises(ValueError, match="shift must have shape"):
    dist.uniform_ball(3, shift=jnp.zeros(2))
  with pytest.raises(ValueError, match="non-finite"):
    dist.uniform_ball(3, shift=jnp.array([0.0, jnp.nan, 0.0]))
  with pytest.raises(ValueError, match="orthogonal"):
    dist.uniform_ball(2, rotation=jnp.array([[1.0, 0.5], [0.0, 1.0]]))
  with pytest.raises(ValueError, match="rotation must have shape"):
    dist.uniform_ball(2, rotation=jnp.eye(3))
  with pytest.raises(ValueError, match="n must be"):
    dist.uniform_ball(2).sample(-1, key=jax.random.key(0))
  with pytest.raises(ValueError, match="rank 2"):
    dist.truncated_gaussian_mixture(jnp.zeros(3))
  with pytest.raises(ValueError, match="weights must have shape"):
    dist.truncated_gaussian_mixture(jnp.zeros((2, 3)), weights=jnp.ones(3))
  with pytest.raises(ValueError, match="weights must be"):
    dist.truncated_gaussian_mixture(jnp.zeros((2, 3)), weights=jnp.array([1.0, -1.0]))
  with pytest.raises(ValueError, match="truncation"):
    dist.truncated_gaussian_mixture(jnp.zeros((2, 3)), truncation=0.0)
  with pytest.raises(ValueError, match="std"):
    dist.truncated_gaussian_mixture(jnp.zeros((2, 3)), std=-0.1)
  with pytest.raises(ValueError, match="distinct axes"):
    dist.givens_rotation(3, 0.1, i=1, j=1)
  with pytest.raises(ValueError, match="axis"):
    dist.axis_shift(3, 1.0, axis=3)


# --- laws, not only invariants ------------------------------------------------------------------

_rotations = jax.jit(jax.vmap(lambda k: dist.random_rotation(5, key=k, dtype=jnp.float64)))


def test_random_rotation_is_haar():
  """S = 4000 draws of a 5x5 rotation against the moments of Haar measure on O(5).

  For Haar Q: (Q_11 + 1)/2 ~ Beta((d-1)/2, (d-1)/2) (density of Q_11 prop. to
  (1 - x^2)^{(d-3)/2}), checked by Kolmogorov-Smirnov (reject at p < 1e-3, false
  alarm 1e-3); tr Q has mean 0 and E (tr Q)^2 = 1, with Var (tr Q)^2 = 2 for
  d >= 4 (Diaconis-Shahshahani: the first d moments of tr Q are those of N(0,1)),
  each within 4.5 SE (false alarm ~7e-6). A QR without the sign fix keeps
  Q orthogonal but makes diag Q one-signed: every check here catches it.
  """
  s_draws, d = 4000, 5
  q = np.asarray(_rotations(jax.random.split(jax.random.key(5), s_draws)))       # (S, d, d)
  np.testing.assert_allclose(q[0] @ q[0].T, np.eye(d), atol=1e-13)
  assert stats.kstest((q[:, 0, 0] + 1) / 2, stats.beta((d - 1) / 2, (d - 1) / 2).cdf).pvalue > 1e-3
  assert stats.kstest((q[:, 2, 3] + 1) / 2, stats.beta((d - 1) / 2, (d - 1) / 2).cdf).pvalue > 1e-3
  tr = np.trace(q, axis1=1, axis2=2)
  assert abs(tr.mean()) <= 4.5 / np.sqrt(s_draws)
  assert abs(np.mean(tr ** 2) - 1.0) <= 4.5 * np.sqrt(2.0 / s_draws)


def _mean_cov_z(x, mean, cov):
  """z-scores of the sample mean and covariance entries against their exact values.

  The standard errors come from the sample itself: Var(mean_i) = cov_ii / n and
  Var(cov_ij estimate) ~ Var((x_i - mu_i)(x_j - mu_j)) / n.
  """
  n = x.shape[0]
  z_mean = (x.mean(0) - mean) / np.sqrt(np.diag(cov) / n)
  c = x - mean
  prod = c[:, :, None] * c[:, None, :]                                             # (n, d, d)
  z_cov = (prod.mean(0) - cov) / (prod.std(0, ddof=1) / np.sqrt(n))
  return z_mean, z_cov


def test_uniform_ball_moments_and_knobs():
  """Uniform d-ball of radius R: E|u|^2 = d R^2/(d+2), E|u|^4 = d R^4/(d+4); x = shift + s R u
  has mean shift and covariance s^2 R^2/(d+2) I.

  n = 20000 per case (d = 3 and d = 6, fixed seeds); every check within 4.5 SE
  (false alarm ~7e-6 each, under 2e-4 for the 2 x (2 + d + d^2) checks). A radius
  drawn as U^(1/2) instead of U^(1/d) fails E|u|^2 for d != 2.
  """
  n, radius = 20000, 1.5
  for d, seed in ((3, 0), (6, 1)):
    base = dist.uniform_ball(d, radius=radius, dtype=jnp.float64)
    u = np.asarray(base.sample(n, key=jax.random.key(seed)))
    sq = np.sum(u ** 2, axis=1)
    m2, m4 = d * radius ** 2 / (d + 2), d * radius ** 4 / (d + 4)
    assert abs(sq.mean() - m2) <= 4.5 * np.sqrt((m4 - m2 ** 2) / n)
    shift = np.linspace(-1.0, 2.0, d)
    rot = dist.givens_rotation(d, 0.7, i=0, j=d - 1, dtype=jnp.float64)
    moved = base.transformed(shift=jnp.asarray(shift), scale=2.5, rotation=rot)
    x = np.asarray(moved.sample(n, key=jax.random.key(seed + 10)))
    z_mean, z_cov = _mean_cov_z(x, shift, 2.5 ** 2 * radius ** 2 / (d + 2) * np.eye(d))
    assert np.all(np.abs(z_mean) <= 4.5) and np.all(np.abs(z_cov) <= 4.5), (z_mean, z_cov)


def test_mixture_moments_follow_the_rotation():
  """Rotated, shifted, scaled mixture: mean = shift + s R mu_bar, cov = s^2 R Sigma R^T.

  Sigma = sum_c w_c mu_c mu_c^T - mu_bar mu_bar^T + std^2 v_t I with v_t the
  variance of N(0, 1) truncated to [-t, t] (SciPy). n = 40000, d = 3 (fixed seed);
  the means are off-axis, so R versus R^T, a dropped shift or a scale applied
  twice moves the mean or the covariance by many SE. Each of the 3 + 9 checks
  within 4.5 SE (false alarm ~7e-6 each).
  """
  n = 40000
  g = _mixture(3)
  rot = np.asarray(dist.givens_rotation(3, 0.9, i=0, j=1, dtype=jnp.float64))
  shift, scale = np.array([0.5, -1.0, 2.0]), 1.7
  moved = g.transformed(shift=jnp.asarray(shift), scale=scale, rotation=jnp.asarray(rot))
  x = np.asarray(moved.sample(n, key=jax.random.key(8)))
  w, mu = np.array([0.2, 0.3, 0.5]), np.asarray(g.means)
  mu_bar = w @ mu
  v_t = stats.truncnorm(-1.5, 1.5).var()
  sigma = (mu.T * w) @ mu - np.outer(mu_bar, mu_bar) + 0.5 ** 2 * v_t * np.eye(3)
  z_mean, z_cov = _mean_cov_z(x, shift + scale * rot @ mu_bar, scale ** 2 * rot @ sigma @ rot.T)
  assert np.all(np.abs(z_mean) <= 4.5) and np.all(np.abs(z_cov) <= 4.5), (z_mean, z_cov)
