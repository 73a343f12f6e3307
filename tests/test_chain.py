"""icl_kd.chain on one head, every field pinned to a NumPy computation written here.

The reference builds the distilled weights in explicit dual form (coefficients
c eta W^V x / n at anchors W^K x), so the bias and the output gap are computed
without the MMD code the library uses for its right sides.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_kd import chain, selection
from icl_kd.attention import AttentionParams
from tests.helpers import np_mmd2

F64 = jnp.float64
TAU, ETA, C = 1.3, 0.4, 2.0                  # eq12: c = 2


@jax.jit
def _measure_sets(p, sets, t, q, support):
  """chain_measures of several sets at once (one compile for the whole file)."""
  return jax.vmap(lambda x: chain.chain_measures(p, x, t, q, tau=TAU, eta=ETA, support=support,
                                                 bandwidth=0.9))(sets)


@pytest.fixture(scope="module")
def case():
  rng = np.random.default_rng(11)
  w_q, w_k, w_v = rng.normal(size=(3, 4)), 0.6 * rng.normal(size=(3, 4)), rng.normal(size=(2, 4))
  s, t, q = rng.normal(size=(5, 4)), rng.normal(size=(6, 4)) + 0.3, rng.normal(size=(3, 4))
  support = np.concatenate([s, t, rng.normal(size=(4, 4))])
  p = AttentionParams(*(jnp.asarray(a) for a in (w_q, w_k, w_v)))
  both = _measure_sets(p, jnp.asarray(np.stack([s, s[::-1]])), jnp.asarray(t), jnp.asarray(q),
                       jnp.asarray(support))
  got = jax.tree_util.tree_map(lambda a: a[0], both)
  return dict(w_q=w_q, w_k=w_k, w_v=w_v, s=s, t=t, q=q, support=support, got=got, both=both, p=p)


def test_mmd2_in_every_kernel_and_estimator(case):
  w_k, w_v, s, t, sup = case["w_k"], case["w_v"], case["s"], case["t"], case["support"]
  soft = lambda a, b: np.exp((a @ w_k.T) @ (b @ w_k.T).T / TAU)               # noqa: E731
  m_x2 = np.max((sup ** 2).sum(1))
  m_phi2 = np.max(np.exp(((sup @ w_k.T) ** 2).sum(1) / TAU))
  grams = {"normalised": lambda a, b: (a @ b.T) * soft(a, b) / (m_x2 * m_phi2),
           "k_V": lambda a, b: (a @ w_v.T) @ (b @ w_v.T).T * soft(a, b),
           "k_x": lambda a, b: (a @ b.T) * soft(a, b),
           "gaussian": lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * 0.81))}
  got = np.asarray(case["got"].mmd2)
  assert got.shape == (len(selection.KERNELS), len(selection.ESTIMATORS))
  for i, k in enumerate(selection.KERNELS):
    for j, e in enumerate(selection.ESTIMATORS):
      np.testing.assert_allclose(got[i, j], np_mmd2(s, t, grams[k], e), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(np.exp(case["got"].log_target_norm2[i]), grams[k](t, t).mean(),
                               rtol=1e-10)


def _np_dual(case):
  """Coefficients and anchors of dW = W_0(S) - W_0(T) and of W_0(T) (eq12, eta fixed)."""
  w_k, w_v, s, t = case["w_k"], case["w_v"], case["s"], case["t"]
  a_s = C * ETA / len(s) * (s @ w_v.T)
  a_t = C * ETA / len(t) * (t @ w_v.T)
  coeffs = np.concatenate([a_s, -a_t])
  anchors = np.concatenate([s @ w_k.T, t @ w_k.T])
  return coeffs, anchors, a_t, t @ w_k.T


def test_bias_identity_and_proved_bound(case):
  coeffs, anchors, _, _ = _np_dual(case)
  hs2 = np.einsum("id,jd,ij->", coeffs, coeffs, np.exp(anchors @ anchors.T / TAU))
  got = case["got"]
  np.testing.assert_allclose(np.exp(got.log_bias), np.sqrt(hs2), rtol=1e-10)
  np.testing.assert_allclose(got.log_identity_rhs, got.log_bias, rtol=1e-10)   # thm4.1-identity
  soft = lambda a, b: np.exp((a @ case["w_k"].T) @ (b @ case["w_k"].T).T / TAU)  # noqa: E731
  mmd_kx = math.sqrt(np_mmd2(case["s"], case["t"], lambda a, b: (a @ b.T) * soft(a, b), "biased"))
  bound = C * ETA * np.linalg.norm(case["w_v"], 2) * mmd_kx
  np.testing.assert_allclose(np.exp(got.log_bound_rhs), bound, rtol=1e-10)
  assert np.sqrt(hs2) <= bound                                                 # thm4.1-bound
  assert float(got.identity_residual) < 1e-12


def test_output_gap_and_target_output_at_each_query(case):
  coeffs, anchors, a_t, k_t = _np_dual(case)
  z = case["q"] @ case["w_q"].T
  gap = np.linalg.norm(np.exp(z @ anchors.T / TAU) @ coeffs, axis=1)
  out = np.linalg.norm(np.exp(z @ k_t.T / TAU) @ a_t, axis=1)
  np.testing.assert_allclose(np.exp(case["got"].log_output_gap), gap, rtol=1e-10)
  np.testing.assert_allclose(np.exp(case["got"].log_target_output), out, rtol=1e-10)
  coeffs_t = a_t
  hs_t = np.sqrt(np.einsum("id,jd,ij->", coeffs_t, coeffs_t, np.exp(k_t @ k_t.T / TAU)))
  np.testing.assert_allclose(np.exp(case["got"].log_target_weight), hs_t, rtol=1e-10)


def test_literal_tv_reading_and_convention(case):
  # distinct points: ||P - Q||_1 = 2, so the tv reading's rhs is 2 eta M_V M_x M_phi
  w_k, w_v, s, t = case["w_k"], case["w_v"], case["s"], case["t"]
  both = np.concatenate([s, t])
  m_x = np.max(np.linalg.norm(both, axis=1))
  m_phi = np.max(np.exp(((both @ w_k.T) ** 2).sum(1) / (2 * TAU)))
  rhs = ETA * np.linalg.norm(w_v, 2) * m_x * m_phi * 2.0
  got = case["got"]
  i = chain.READINGS.index("tv")
  np.testing.assert_allclose(got.log_literal_ratio[i], got.log_bias - np.log(rhs), rtol=1e-10)


def test_equals_the_bounds_and_mmd_library_on_the_valid_rows_of_padded_samples(case):
  # the padded, masked computation is the library's C5 sides and literal readings on the
  # valid rows (an independent code path: blocked estimators, bounds.literal_readings)
  from icl_kd import bounds, mmd
  p, s, t, q, sup = (case["p"], jnp.asarray(case["s"]), jnp.asarray(case["t"]),
                     jnp.asarray(case["q"]), jnp.asarray(case["support"]))
  s_pad = jnp.concatenate([s, s[:2]])                   # padded with copies of valid rows
  t_pad = jnp.concatenate([t, t[:1], t[:1]])
  ms = jnp.arange(7) < 5
  mt = jnp.arange(8) < 6
  got = jax.jit(lambda a, b: chain.chain_measures(p, a, b, q, tau=TAU, eta=ETA, support=sup,
                                                  bandwidth=0.9, s_mask=ms, t_mask=mt))(s_pad,
                                                                                        t_pad)
  ref = case["got"]
  for f in ("log_bias", "log_bound_rhs", "log_identity_rhs", "log_output_gap", "log_target_output",
            "log_literal_ratio", "log_target_norm2", "log_target_weight"):
    np.testing.assert_allclose(getattr(got, f), getattr(ref, f), rtol=1e-10, err_msg=f)
  np.testing.assert_allclose(got.mmd2, ref.mmd2, rtol=1e-10, atol=1e-14)
  b = bounds.distillation_bias(p, s, t, eta=ETA, tau=TAU)
  np.testing.assert_allclose(ref.log_bias, b.log_lhs, rtol=1e-10)
  np.testing.assert_allclose(ref.log_bound_rhs, b.log_bound_rhs, rtol=1e-10)
  lit = bounds.literal_readings(p, s, t, eta=ETA, tau=TAU)
  np.testing.assert_allclose(ref.log_literal_ratio, [lit.log_ratio(r) for r in chain.READINGS],
                             rtol=1e-10)
  k = mmd.distillation_kernel(p, tau=TAU)
  for j, e in enumerate(("unbiased", "biased")):
    np.testing.assert_allclose(ref.mmd2[1, j], mmd.mmd2(s, t, kernel=k, estimator=e), rtol=1e-10)


def test_bound_violated_rule():
  lhs = jnp.log(jnp.array([1.0, 1.0 + 5e-10, 1.0 + 2e-9, 2.0]))
  rhs = jnp.zeros(4)
  assert list(np.asarray(chain.bound_violated(lhs, rhs))) == [False, False, True, True]
  assert bool(chain.bound_violated(jnp.nan, 0.0))


def test_vmaps_over_sets_and_refuses_tiny_samples(case):
  p, out = case["p"], case["both"]
  # a set is a sample: the order of its points changes nothing
  np.testing.assert_allclose(out.log_bias[0], out.log_bias[1], rtol=1e-12)
  np.testing.assert_allclose(out.mmd2[0], out.mmd2[1], rtol=1e-10, atol=1e-14)
  with pytest.raises(ValueError, match="s must have shape"):
    chain.chain_measures(p, jnp.asarray(case["s"][:1]), jnp.asarray(case["t"]),
                         jnp.asarray(case["q"]), tau=TAU, eta=ETA,
                         support=jnp.asarray(case["support"]), bandwidth=0.9)


def test_a_bias_below_the_rounding_of_its_cancelled_terms_is_unresolved(case):
  # S and T share one token whose key makes exp(|W^K x|^2 / tau) ~ e^160: that term cancels
  # exactly in the true bias (which is O(1)), but float64 keeps ~1e-16 of it. The instance is
  # flagged unresolved; the fixture's ordinary instance is resolved.
  p = AttentionParams(jnp.eye(2), jnp.eye(2), jnp.eye(2))
  big = jnp.array([[0.0, 16.0]])
  s = jnp.concatenate([big, jnp.array([[0.3, 0.1]])])
  t = jnp.concatenate([big, jnp.array([[-0.2, 0.4]])])
  m = chain.chain_measures(p, s, t, s, tau=1.6, eta=0.5, support=jnp.concatenate([s, t]),
                           bandwidth=1.0)
  assert not bool(chain.resolved(m.log_bias, m.log_bias_floor))
  assert bool(chain.resolved(case["got"].log_bias, case["got"].log_bias_floor))
