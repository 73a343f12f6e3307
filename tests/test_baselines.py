"""Baselines vs NumPy re-implementations; Nadaraya-Watson == softmax attention; risk formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from icl_kd import AttentionParams, baselines, softmax_attention

SEEDS = st.integers(0, 2**31 - 1)
SHAPES = ((8, 3), (2, 4))     # N > d (determined) and N < d (minimum norm)


def _prompt(seed, n, d):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(k1, (n, d), jnp.float64), jax.random.normal(k2, (n,), jnp.float64),
          jax.random.normal(k3, (d,), jnp.float64))


least_squares = jax.jit(baselines.least_squares)
ridge = jax.jit(baselines.ridge)
knn = jax.jit(baselines.knn, static_argnames=("k",))
averaging = jax.jit(baselines.averaging)
nadaraya_watson = jax.jit(baselines.nadaraya_watson)
attention = jax.jit(softmax_attention)


@given(seed=SEEDS, shape=st.sampled_from(SHAPES))
def test_least_squares_is_numpy_lstsq(seed, shape):
  xs, ys, q = _prompt(seed, *shape)
  w = np.linalg.lstsq(np.asarray(xs), np.asarray(ys), rcond=None)[0]   # minimum-norm solution
  np.testing.assert_allclose(float(least_squares(xs, ys, q)), w @ np.asarray(q), rtol=1e-9,
                             atol=1e-9)


@given(seed=SEEDS, shape=st.sampled_from(SHAPES), lam=st.floats(1e-3, 10.0))
def test_ridge_is_the_normal_equations(seed, shape, lam):
  xs, ys, q = _prompt(seed, *shape)
  x, y = np.asarray(xs), np.asarray(ys)
  w = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)
  np.testing.assert_allclose(float(ridge(xs, ys, q, lam=jnp.asarray(lam))), w @ np.asarray(q),
                             rtol=1e-9, atol=1e-10)


@given(seed=SEEDS, k=st.sampled_from((1, 2)))
def test_knn_is_the_mean_of_the_closest_labels(seed, k):
  xs, ys, q = _prompt(seed, 8, 3)
  dist = np.linalg.norm(np.asarray(xs) - np.asarray(q)[None, :], axis=1)
  expected = np.asarray(ys)[np.argsort(dist)[:k]].mean()
  np.testing.assert_allclose(float(knn(xs, ys, q, k=k)), expected, rtol=1e-12)


@given(seed=SEEDS, shape=st.sampled_from(SHAPES), eta=st.floats(0.1, 5.0))
def test_averaging_is_one_gd_step_from_zero(seed, shape, eta):
  xs, ys, q = _prompt(seed, *shape)
  x, y = np.asarray(xs), np.asarray(ys)
  # gradient of (1/2N) sum (<w, x_i> - y_i)^2 at w = 0 is -(1/N) sum y_i x_i.
  w1 = 0.0 - eta * (-(x.T @ y) / x.shape[0])
  np.testing.assert_allclose(float(averaging(xs, ys, q, eta=jnp.asarray(eta))),
                             w1 @ np.asarray(q), rtol=1e-12, atol=1e-12)


@given(seed=SEEDS, h=st.floats(0.2, 3.0))
def test_nadaraya_watson_matches_numpy(seed, h):
  xs, ys, q = _prompt(seed, 8, 3)
  d2 = np.sum((np.asarray(xs) - np.asarray(q)[None, :]) ** 2, axis=1)
  wts = np.exp(-(d2 - d2.min()) / (2 * h * h))
  np.testing.assert_allclose(float(nadaraya_watson(xs, ys, q, bandwidth=jnp.asarray(h))),
                             wts @ np.asarray(ys) / wts.sum(), rtol=1e-10)


@given(seed=SEEDS, h=st.floats(0.2, 3.0))
def test_nadaraya_watson_is_softmax_attention_over_the_demonstrations(seed, h):
  # tokens e_i = (x_i, -|x_i|^2/2, y_i); W^K e = (x, -|x|^2/2); W^Q e' = (x', 1) for the
  # query token e' = (x', 1, 0); tau = h^2; W^V reads y. The score <W^K e_i, W^Q e'>/tau
  # = (<x_i, x'> - |x_i|^2/2)/h^2 differs from -|x_i - x'|^2/(2h^2) by a constant in i.
  xs, ys, q = _prompt(seed, 8, 3)
  d = xs.shape[1]
  tokens = jnp.concatenate([xs, -0.5 * jnp.sum(xs * xs, axis=1)[:, None], ys[:, None]], axis=1)
  query = jnp.concatenate([q, jnp.ones((1,)), jnp.zeros((1,))])
  w_k = jnp.eye(d + 1, d + 2, dtype=jnp.float64)                    # drops y
  w_q = jnp.eye(d + 1, d + 2, dtype=jnp.float64)                    # (x', 1)
  w_v = jnp.zeros((1, d + 2), jnp.float64).at[0, d + 1].set(1.0)
  out = attention(AttentionParams(w_q, w_k, w_v), tokens, query, tau=jnp.asarray(h * h))
  np.testing.assert_allclose(float(out[0]),
                             float(nadaraya_watson(xs, ys, q, bandwidth=jnp.asarray(h))),
                             rtol=1e-12)


def test_one_step_risk_closed_forms():
  # Gaussian inputs, eta = 1: E|(S - I) w|^2 = d(d+1)/n (Garg et al. 2022's (d+1)/k times d).
  for d, n in ((20, 5), (20, 40), (3, 7)):
    assert np.isclose(float(baselines.one_step_risk(1.0, d=d, n=n)), d * (d + 1) / n, rtol=1e-12)
  # U(-1/2, 1/2)^10, n = 10, derived by hand: s2 = 1/12, m4 = 1/80,
  # A = (10/80 + 90/144)/10 + 0.9 * 10/144 = 0.1375, B = 10/12;
  # eta* = B/A = 6.0606..., risk* = (1/12)(10 - B^2/A) = 0.41245791...
  opt = baselines.optimal_one_step(d=10, n=10, x_dist="uniform")
  assert np.isclose(opt.eta, (10 / 12) / 0.1375, rtol=1e-12)
  assert np.isclose(opt.risk, (10 - (10 / 12) ** 2 / 0.1375) / 12, rtol=1e-12)
  # the minimum of the quadratic: neighbouring learning rates are worse.
  for eps in (-0.1, 0.1):
    assert float(baselines.one_step_risk(opt.eta + eps, d=10, n=10, x_dist="uniform")) > opt.risk


def test_bad_inputs_raise():
  xs, ys, q = _prompt(0, 4, 3)
  with pytest.raises(ValueError, match="ys"):
    baselines.least_squares(xs, ys[:3], q)
  with pytest.raises(ValueError, match="query"):
    baselines.ridge(xs, ys, q[:2], lam=1.0)
  with pytest.raises(ValueError, match="lam"):
    baselines.ridge(xs, ys, q, lam=-1.0)
  with pytest.raises(ValueError, match="k must"):
    baselines.knn(xs, ys, q, k=5)
  with pytest.raises(ValueError, match="bandwidth"):
    baselines.nadaraya_watson(xs, ys, q, bandwidth=0.0)
  with pytest.raises(ValueError, match="non-finite"):
    baselines.averaging(xs.at[0, 0].set(jnp.nan), ys, q)
  with pytest.raises(ValueError, match="x_dist"):
    baselines.optimal_one_step(d=3, n=3, x_dist="cauchy")
  with pytest.raises(ValueError, match="n must"):
    baselines.one_step_risk(1.0, d=3, n=0)
