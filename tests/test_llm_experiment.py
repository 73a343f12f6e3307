"""Tests of the llm experiment's selection and statistics helpers (no model needed; ~5 s).

The MMD_kV of the experiment is pinned to icl_kd.mmd's biased MMD with the
distillation kernel (a separate implementation); greedy selection to a brute
force search; retrieval and the bootstrap to direct NumPy computations.
"""

import itertools

import jax.numpy as jnp
import numpy as np

from icl_kd import mmd
from icl_kd.attention import AttentionParams
from icl_kd.experiments import llm as exp


def _sets(rng, w_k, w_v, sizes, shift=0.0):
  xs = [rng.standard_normal((n, w_k.shape[1])) for n in sizes]
  return xs, [((x @ w_k.T)[None], (x @ w_v.T)[None]) for x in xs]


def test_mmd_kv2_equals_biased_mmd_with_the_distillation_kernel():
  rng = np.random.default_rng(0)
  d, dk, tau = 5, 3, 2.0
  w_k, w_v = 0.5 * rng.standard_normal((dk, d)), rng.standard_normal((4, d))
  xs, demo = _sets(rng, w_k, w_v, [3, 3, 3])              # equal sizes: mixture = union
  ys, query = _sets(rng, w_k, w_v, [2, 2])
  params = AttentionParams(jnp.asarray(w_k), jnp.asarray(w_k), jnp.asarray(w_v))
  ref = float(mmd.mmd2(jnp.asarray(np.concatenate(xs)), jnp.asarray(np.concatenate(ys)),
                       kernel=mmd.distillation_kernel(params, tau=tau), estimator="biased"))
  assert abs(exp.mmd_kv2(demo, query, tau) - ref) <= 1e-10 * abs(ref)
  # a global shift scales it by exp(-shift)
  assert abs(exp.mmd_kv2(demo, query, tau, 3.0) - ref * np.exp(-3.0)) <= 1e-10 * abs(ref)


def test_kernel_mean_gram_two_heads_is_the_sum_of_heads():
  rng = np.random.default_rng(1)
  k1, v1 = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4, 3))
  k2, v2 = rng.standard_normal((2, 2, 3)), rng.standard_normal((2, 2, 3))
  g = exp.kernel_mean_gram([(k1, v1)], [(k2, v2)], 1.5)
  direct = sum(np.mean((v1[h] @ v2[h].T) * np.exp(k1[h] @ k2[h].T / 1.5)) for h in range(2))
  np.testing.assert_allclose(g[0, 0], direct, rtol=1e-12)


def test_greedy_mmd_first_pick_and_objective():
  """Greedy picks the best single point first; with k = P - 1 it is the best (P-1)-subset here."""
  rng = np.random.default_rng(2)
  pool, q = rng.standard_normal((7, 2)), rng.standard_normal((4, 2)) + 0.5
  kern = lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / 2)  # noqa: E731
  gram, cross = kern(pool, pool), kern(pool, q).mean(1)

  def biased(sel):
    x = pool[list(sel)]
    return kern(x, x).mean() + kern(q, q).mean() - 2 * kern(x, q).mean()
  chosen = exp._mmd_greedy_gram(gram, cross, 3)
  assert chosen[0] == int(np.argmin([biased([i]) for i in range(7)]))
  assert len(set(chosen)) == 3
  # each greedy step is the best extension of the previous choice
  for t in range(1, 3):
    best = min((c for c in range(7) if c not in chosen[:t]), key=lambda c: biased(chosen[:t] + [c]))
    assert chosen[t] == best
  full = exp._mmd_greedy_gram(gram, cross, 6)
  assert abs(biased(full) - min(biased(s) for s in itertools.combinations(range(7), 6))) < 1e-12


def test_retrieval_takes_turns():
  pool = np.array([[0.0], [1.0], [10.0], [11.0], [5.0]])
  w = np.array([[0.2], [10.4]])
  assert exp._retrieval(pool, w, 4) == [0, 2, 1, 3]


def test_two_level_bootstrap():
  rng = np.random.default_rng(0)
  assert exp._boot_mean_2level(np.ones((3, 5)), rng, 50) == (1.0, 1.0)
  x = (rng.random((4, 50)) < 0.3).astype(float)
  lo, hi = exp._boot_mean_2level(x, rng, 400)
  assert lo < x.mean() < hi and hi - lo < 0.4
  m, lo, hi = exp._boot_paired(np.array([1.0, 1.0, 0.0, 0.0]), np.array([0, 0, 1, 1]), rng, 400)
  assert m == 0.5 and lo == 0.0 and hi == 1.0


def test_quick_config_is_smaller():
  for f in ("n_queries", "n_draws", "e1_trials", "e6_draws", "n_boot"):
    assert getattr(exp.QUICK, f) <= getattr(exp.Config(), f)
  assert set(exp.QUICK.tasks) <= set(exp.Config().tasks)
