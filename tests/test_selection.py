"""The selection rules and kernels of icl_kd.selection, pinned to NumPy references in this file.

Every greedy choice is replayed by a brute-force NumPy greedy search written
here (each step evaluates the MMD^2 of every candidate extension from scratch),
for both estimators; the grouped form (candidates that are groups of tokens,
as a language model's demonstration lines) against the MMD^2 of the union of
the groups' tokens. The experiments' use of these functions (not copies of
them) is checked at the end.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_kd import mmd, selection
from icl_kd.attention import AttentionParams
from tests.helpers import np_mmd2

F64 = jnp.float64


def np_gauss(a, b, h):
  return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * h * h))


def np_greedy_groups(groups, target, k, gram, estimator):
  """Greedy over candidate groups (lists of token rows), scoring the union of tokens."""
  chosen = []
  for _ in range(k):
    vals = []
    for c in range(len(groups)):
      if c in chosen:
        vals.append(np.inf)
        continue
      union = np.concatenate([groups[i] for i in chosen + [c]])
      vals.append(np_mmd2(union, target, gram, estimator))
    chosen.append(int(np.argmin(vals)))
  return chosen


greedy = jax.jit(selection.mmd_greedy, static_argnames=("k", "estimator"))


@pytest.mark.parametrize("estimator", selection.ESTIMATORS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mmd_greedy_is_greedy_minimisation_of_the_chosen_estimator(seed, estimator):
  kp, kq = jax.random.split(jax.random.key(seed))
  pool = jax.random.normal(kp, (14, 2), F64)
  target = jax.random.normal(kq, (5, 2), F64) + 0.8
  h = 0.9
  got = greedy(pool, target, k=5, kernel=mmd.gaussian_kernel(jnp.asarray(h)), estimator=estimator)
  groups = [np.asarray(pool)[i:i + 1] for i in range(14)]
  ref = np_greedy_groups(groups, np.asarray(target), 5, lambda a, b: np_gauss(a, b, h), estimator)
  assert list(np.asarray(got)) == ref


def test_the_two_estimators_choose_differently_when_the_diagonal_dominates():
  # k_V-like kernel with one huge self-term: the biased greedy avoids that point, the
  # unbiased one does not see its diagonal (the failure mode of E1/E6 before).
  p = AttentionParams(jnp.eye(2, dtype=F64), 2.5 * jnp.eye(2, dtype=F64), jnp.eye(2, dtype=F64))
  kern = mmd.distillation_kernel(p, tau=1.0)
  pool = jnp.array([[1.2, 0.0], [0.3, 0.1], [0.2, -0.1], [-0.4, 0.2]], F64)
  target = jnp.array([[1.0, 0.1], [0.9, -0.1], [1.1, 0.0]], F64)
  gram = lambda a, b: (a @ b.T) * np.exp((2.5 * a) @ (2.5 * b).T)
  groups = [np.asarray(pool)[i:i + 1] for i in range(4)]
  got = {}
  for est in selection.ESTIMATORS:
    got[est] = list(np.asarray(greedy(pool, target, k=2, kernel=kern, estimator=est)))
    assert got[est] == np_greedy_groups(groups, np.asarray(target), 2, gram, est)
  # the point nearest the target (index 0) has the largest self-term exp(|W^K x|^2): the
  # biased statistic pays for it and picks the two small points instead
  assert got == {"unbiased": [0, 3], "biased": [1, 2]}


@pytest.mark.parametrize("estimator", selection.ESTIMATORS)
def test_grouped_greedy_scores_the_union_of_the_groups_tokens(estimator):
  rng = np.random.default_rng(4)
  sizes = [3, 1, 4, 2, 2, 5, 3]
  groups = [rng.normal(size=(s, 3)) + (0.7 if i % 2 else 0.0) for i, s in enumerate(sizes)]
  target = rng.normal(size=(6, 3)) + 0.7
  tokens = np.concatenate(groups)
  ids = np.repeat(np.arange(len(sizes)), sizes)
  h = 1.3
  gram = selection.grouped_gram(mmd.gaussian_kernel(h), jnp.asarray(tokens), jnp.asarray(ids),
                                jnp.asarray(target), num_groups=len(sizes))
  got = selection.greedy_from_gram(gram, 3, estimator=estimator)
  ref = np_greedy_groups(groups, target, 3, lambda a, b: np_gauss(a, b, h), estimator)
  assert list(np.asarray(got)) == ref
  # set_mmd2 with the target's own term is the MMD^2 of the union (independent NumPy value)
  kt = np_gauss(target, target, h)
  m = len(target)
  term = kt.mean() if estimator == "biased" else (kt.sum() - np.trace(kt)) / (m * (m - 1))
  union = np.concatenate([groups[i] for i in ref])
  value = selection.set_mmd2(gram, jnp.asarray(ref), estimator=estimator,
                             target_term=term * np.exp(-float(gram.log_scale)))
  np.testing.assert_allclose(value, np_mmd2(union, target, lambda a, b: np_gauss(a, b, h),
                                            estimator), rtol=1e-12)


def test_greedy_survives_large_scores():
  # scores near 1e3: the Gram is formed in log space, so no inf/nan and the choice is defined
  p = AttentionParams(jnp.eye(2, dtype=F64), 30 * jnp.eye(2, dtype=F64), jnp.ones((1, 2), F64))
  pool = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]], F64)
  for est in selection.ESTIMATORS:
    idx = selection.mmd_greedy(pool, pool[:1], 1, kernel=mmd.distillation_kernel(p, tau=1.0),
                               estimator=est)
    assert int(idx[0]) == 0


def test_summed_mmd2_is_the_sum_over_heads_for_both_estimators():
  k = jax.random.split(jax.random.key(2), 4)
  w_k = 0.5 * np.asarray(jax.random.normal(k[1], (2, 3, 4), F64))
  w_v = np.asarray(jax.random.normal(k[0], (2, 1, 4), F64))
  kernels = [mmd.distillation_kernel(AttentionParams(jnp.asarray(w_k[h]), jnp.asarray(w_k[h]),
                                                     jnp.asarray(w_v[h])), tau=1.0)
             for h in range(2)]
  x, y = (np.asarray(jax.random.normal(kk, (n, 4), F64)) for kk, n in ((k[2], 5), (k[3], 6)))
  est = selection.mmd2_estimates(jnp.asarray(x), jnp.asarray(y), kernel=kernels)
  for name in selection.ESTIMATORS:
    ref = sum(np_mmd2(x, y, lambda a, b: (a @ w_v[h].T) @ (b @ w_v[h].T).T
                      * np.exp((a @ w_k[h].T) @ (b @ w_k[h].T).T), name) for h in range(2))
    np.testing.assert_allclose(getattr(est, name), ref, rtol=1e-12)


def test_normalised_kernel_is_k_x_over_the_support_constants_and_bounded_by_one():
  rng = np.random.default_rng(5)
  w_k, w_v = rng.normal(size=(3, 4)), rng.normal(size=(2, 4))
  p = AttentionParams(jnp.asarray(w_k), jnp.asarray(w_k), jnp.asarray(w_v))
  support = rng.normal(size=(9, 4))
  tau = 1.7
  kern = selection.normalised_kernel(p, tau=tau, support=jnp.asarray(support))
  m_x = np.max(np.linalg.norm(support, axis=1))
  m_phi2 = np.max(np.exp(((support @ w_k.T) ** 2).sum(1) / tau))      # M_phi^2
  ref = (support @ support.T) * np.exp((support @ w_k.T) @ (support @ w_k.T).T / tau) / (
      m_x ** 2 * m_phi2)
  got = mmd.gram(kern, jnp.asarray(support), jnp.asarray(support))
  np.testing.assert_allclose(got, ref, rtol=1e-12)
  assert np.max(np.abs(ref)) <= 1 + 1e-12
  # its MMD times eta M_V M_x M_phi is thm4.1-literal-normalised's right side, i.e. the proved
  # bound c eta ||W^V|| MMD_kx divided by c: the MMD is MMD_kx / (M_x M_phi)
  x, y = jnp.asarray(support[:5]), jnp.asarray(support[5:])
  mk = mmd.mmd2(x, y, kernel=kern, estimator="biased")
  mkx = mmd.mmd2(x, y, kernel=mmd.distillation_kernel(p, tau=tau, use_values=False),
                 estimator="biased")
  np.testing.assert_allclose(mk, mkx / (m_x ** 2 * m_phi2), rtol=1e-10)
  kernels = selection.theory_kernels(p, tau=tau, support=jnp.asarray(support), bandwidth=0.5)
  assert tuple(kernels) == selection.KERNELS


def test_median_bandwidth_of_one_sample_counts_every_pair_once():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(7, 3))
  d = [np.linalg.norm(x[i] - x[j]) for i in range(7) for j in range(i + 1, 7)]
  np.testing.assert_allclose(selection.median_bandwidth_of(jnp.asarray(x)), np.median(d),
                             rtol=1e-12)


def test_retrieval_takes_turns_over_the_queries():
  pool = jnp.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]], F64)
  queries = jnp.array([[0.4], [11.6]], F64)
  # q0 -> 0.0, q1 -> 12.0, q0 -> 1.0, q1 -> 11.0
  assert list(np.asarray(selection.retrieval(pool, queries, 4))) == [0, 5, 1, 4]


def test_random_choice_within_a_subset_and_reproducible():
  allowed = jnp.arange(10) % 3 == 0                       # 0, 3, 6, 9
  for s in range(20):
    idx = np.asarray(selection.random_choice(10, 3, key=jax.random.key(s), allowed=allowed))
    assert len(set(idx.tolist())) == 3 and all(i % 3 == 0 for i in idx)
  a = selection.random_choice(10, 4, key=jax.random.key(1))
  b = selection.random_choice(10, 4, key=jax.random.key(1))
  assert np.array_equal(a, b) and len(set(np.asarray(a).tolist())) == 4


def test_bad_arguments_are_named():
  pool = jnp.zeros((4, 2), F64)
  with pytest.raises(ValueError, match="estimator"):
    selection.mmd_greedy(pool, pool, 2, kernel=mmd.gaussian_kernel(1.0), estimator="linear")
  with pytest.raises(ValueError, match="k must be an int in \\[1, 4\\]"):
    selection.mmd_greedy(pool, pool, 5, kernel=mmd.gaussian_kernel(1.0))
  with pytest.raises(ValueError, match="allowed must mark at least k = 3"):
    selection.random_choice(4, 3, key=jax.random.key(0), allowed=jnp.array([1, 1, 0, 0], bool))


def test_masked_estimators_equal_the_library_on_the_valid_rows():
  rng = np.random.default_rng(8)
  x, y = rng.normal(size=(6, 3)), rng.normal(size=(5, 3)) + 0.4
  xp = np.concatenate([x, x[:3]])                      # padding: copies of valid rows
  yp = np.concatenate([y, y[:1]])
  mx, my = np.arange(9) < 6, np.arange(6) < 5
  for kern in (mmd.gaussian_kernel(0.8), mmd.exp_kernel(1.5)):
    for est in selection.ESTIMATORS:
      got = selection.masked_mmd2(jnp.asarray(xp), jnp.asarray(yp), kernel=kern, estimator=est,
                                  x_mask=mx, y_mask=my)
      np.testing.assert_allclose(got, mmd.mmd2(jnp.asarray(x), jnp.asarray(y), kernel=kern,
                                               estimator=est), rtol=1e-12)
  for n in (3, 4):                                     # 36 and 45 pairs: even and odd
    got = selection.masked_median_bandwidth(jnp.asarray(xp), jnp.asarray(yp), x_mask=mx,
                                            y_mask=np.arange(6) < n)
    np.testing.assert_allclose(got, mmd.median_bandwidth(jnp.asarray(x), jnp.asarray(y[:n])),
                               rtol=1e-12)
