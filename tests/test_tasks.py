"""Task samplers: exact label identities, shift knobs against closed forms, moments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from icl_kd import tasks

SEEDS = st.integers(0, 2**31 - 1)
DIMS = (3,)


@given(seed=SEEDS, d=st.sampled_from(DIMS), x_dist=st.sampled_from(tasks.X_DISTS))
def test_regression_labels_are_linear_in_w(seed, d, x_dist):
  p = tasks.sample_regression(3, 7, d, key=jax.random.key(seed), n_queries=2, x_dist=x_dist,
                              dtype=jnp.float64)
  assert p.xs.shape == (3, 7, d) and p.ys.shape == (3, 7)
  assert p.queries.shape == (3, 2, d) and p.targets.shape == (3, 2) and p.w.shape == (3, d)
  xs, w = np.asarray(p.xs), np.asarray(p.w)
  np.testing.assert_allclose(np.asarray(p.ys), np.einsum("bnd,bd->bn", xs, w), rtol=1e-12,
                             atol=1e-12)
  np.testing.assert_allclose(np.asarray(p.targets),
                             np.einsum("bnd,bd->bn", np.asarray(p.queries), w), rtol=1e-12,
                             atol=1e-12)
  if x_dist == "uniform":
    assert np.all(np.abs(xs) <= 0.5)
  if x_dist == "ball":
    assert np.all(np.linalg.norm(xs, axis=-1) <= 1 + 1e-12)


def test_same_key_same_prompts_and_new_key_new_prompts():
  a = tasks.sample_regression(4, 5, 3, key=jax.random.key(1), noise_std=0.1)
  b = tasks.sample_regression(4, 5, 3, key=jax.random.key(1), noise_std=0.1)
  c = tasks.sample_regression(4, 5, 3, key=jax.random.key(2), noise_std=0.1)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert not np.allclose(np.asarray(a.xs), np.asarray(c.xs))


def test_label_noise_has_the_requested_scale():
  # 64 x 256 residuals of N(0, 0.3^2): the sample std has relative s.e. ~ 1/sqrt(2 n) = 0.3%,
  # so a 3% tolerance is a 10-sigma band (false-alarm rate negligible).
  p = tasks.sample_regression(64, 256, 3, key=jax.random.key(3), noise_std=0.3,
                              dtype=jnp.float64)
  resid = np.asarray(p.ys) - np.einsum("bnd,bd->bn", np.asarray(p.xs), np.asarray(p.w))
  assert abs(resid.std() / 0.3 - 1) < 0.03


# uniform on the unit ball of R^4: each coordinate has variance E|x|^2 / d = (d / (d + 2)) / d
@pytest.mark.parametrize("x_dist,var", [("gaussian", 1.0), ("uniform", 1.0 / 12.0),
                                        ("ball", 1.0 / 6.0)])
def test_input_moments(x_dist, var):
  # 200 x 100 x 4 = 80000 coordinates: the mean has s.e. sqrt(var / 80000) and the
  # variance a relative s.e. <= sqrt(2 / 80000) = 0.5%; 6-sigma bands below.
  p = tasks.sample_regression(200, 100, 4, key=jax.random.key(4), x_dist=x_dist,
                              dtype=jnp.float64)
  x = np.asarray(p.xs).ravel()
  assert abs(x.mean()) < 6 * np.sqrt(var / x.size)
  assert abs(x.var() / var - 1) < 0.03


def test_mean_shift_moves_every_point_by_the_same_vector_of_the_given_length():
  x = jnp.zeros((6, 4), jnp.float64)
  out = np.asarray(tasks.shift_inputs(x, tasks.Shift(mean=2.5), key=jax.random.key(0)))
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 2.5, rtol=1e-12)
  np.testing.assert_allclose(out, np.broadcast_to(out[:1], out.shape), rtol=1e-12)


@given(seed=SEEDS)
def test_scale_and_skew_match_their_formulas(seed):
  d = 5
  x = jax.random.normal(jax.random.key(seed), (7, d), jnp.float64)
  out = tasks.shift_inputs(x, tasks.Shift(scale=1.7, skew=0.8), key=jax.random.key(1))
  factors = 1.7 * np.exp(0.8 * (np.arange(d) / (d - 1) - 0.5))
  np.testing.assert_allclose(np.asarray(out), np.asarray(x) * factors[None, :], rtol=1e-12)


@given(seed=SEEDS, k=st.sampled_from((1, 2, 3)))
def test_subspace_shift_has_rank_k_and_projects(seed, k):
  d = 5
  x = jax.random.normal(jax.random.key(seed), (20, d), jnp.float64)
  out = np.asarray(tasks.shift_inputs(x, tasks.Shift(subspace=k), key=jax.random.key(seed + 1)))
  assert np.linalg.matrix_rank(out, tol=1e-9) == k
  # applying the same projection twice changes nothing (P^2 = P, up to the sqrt(d/k) rescale).
  again = np.asarray(tasks.shift_inputs(jnp.asarray(out), tasks.Shift(subspace=k),
                                        key=jax.random.key(seed + 1)))
  np.testing.assert_allclose(again, out * np.sqrt(d / k), rtol=1e-9, atol=1e-9)


def test_query_shift_none_shares_the_demonstrations_distribution():
  same = tasks.sample_regression(8, 64, 4, key=jax.random.key(5), n_queries=64,
                                 shift=tasks.Shift(mean=10.0), query_shift=None,
                                 dtype=jnp.float64)
  other = tasks.sample_regression(8, 64, 4, key=jax.random.key(5), n_queries=64,
                                  shift=tasks.Shift(mean=10.0), query_shift=tasks.Shift(mean=10.0),
                                  dtype=jnp.float64)
  gap_same = np.linalg.norm(np.asarray(same.xs).mean(1) - np.asarray(same.queries).mean(1), axis=1)
  gap_other = np.linalg.norm(np.asarray(other.xs).mean(1) - np.asarray(other.queries).mean(1),
                             axis=1)
  # sample means of 64 N(0, I_4) points differ by ~ sqrt(2 * 4 / 64) = 0.35; independent
  # directions of length 10 differ by ~ 14.
  assert np.all(gap_same < 1.5)
  assert np.all(gap_other > 3.0)


def test_token_frequency_targets_and_counts():
  p = tasks.sample_token_frequencies(16, 4000, 6, 3, key=jax.random.key(6), n_queries=5,
                                     concentration=1.0, dtype=jnp.float64)
  probs = np.asarray(p.probs)
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-12)
  np.testing.assert_array_equal(np.asarray(p.targets),
                                np.take_along_axis(probs, np.asarray(p.queries), axis=1))
  counts = np.stack([np.bincount(t, minlength=6) for t in np.asarray(p.tokens)]) / 4000
  # each frequency has s.e. <= sqrt(0.25 / 4000) = 0.0079; 0.05 is a 6-sigma band.
  assert np.max(np.abs(counts - probs)) < 0.05
  assert p.embeddings.shape == (6, 3)


def test_token_query_shift_changes_the_query_distribution():
  base = tasks.sample_token_frequencies(1, 10, 8, 2, key=jax.random.key(7), n_queries=20000,
                                        concentration=2.0, temperature=1.0, dtype=jnp.float64)
  freq = np.bincount(np.asarray(base.queries[0]), minlength=8) / 20000
  assert np.max(np.abs(freq - np.asarray(base.probs[0]))) < 0.03   # q = p: 6-sigma band
  flat = tasks.sample_token_frequencies(1, 10, 8, 2, key=jax.random.key(7), n_queries=20000,
                                        concentration=2.0, temperature=1e3, dtype=jnp.float64)
  freq = np.bincount(np.asarray(flat.queries[0]), minlength=8) / 20000
  assert np.max(np.abs(freq - 1 / 8)) < 0.02                        # q ~ uniform


def test_tokens_helpers():
  xs = jnp.arange(6.0).reshape(3, 2)
  ys = jnp.array([7.0, 8.0, 9.0])
  np.testing.assert_array_equal(np.asarray(tasks.regression_tokens(xs, ys)),
                                np.array([[0, 1, 7], [2, 3, 8], [4, 5, 9]], float))
  np.testing.assert_array_equal(np.asarray(tasks.query_token(jnp.array([1.0, 2.0]))), [1, 2, 0])


def test_bad_inputs_raise():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="n_prompts"):
    tasks.sample_regression(0, 3, 2, key=key)
  with pytest.raises(ValueError, match="x_dist"):
    tasks.sample_regression(1, 3, 2, key=key, x_dist="cauchy")
  with pytest.raises(ValueError, match="x_dist"):
    tasks.base_inputs(key, 3, 2, x_dist="cauchy")
  with pytest.raises(ValueError, match="subspace"):
    tasks.sample_regression(1, 3, 2, key=key, shift=tasks.Shift(subspace=3))
  with pytest.raises(ValueError, match="noise_std"):
    tasks.sample_regression(1, 3, 2, key=key, noise_std=-1.0)
  with pytest.raises(TypeError, match="Shift"):
    tasks.sample_regression(1, 3, 2, key=key, shift=(None, 0.0, 1.0, 0.0))
  with pytest.raises(ValueError, match="ys"):
    tasks.regression_tokens(jnp.zeros((3, 2)), jnp.zeros((4,)))
  with pytest.raises(ValueError, match="temperature"):
    tasks.sample_token_frequencies(1, 3, 4, 2, key=key, temperature=0.0)
