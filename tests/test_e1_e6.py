"""E1 (selection by the theory's MMD) and E6 (cross-task interference) at tiny sizes.

Each experiment runs once through its command line with a tiny quick config
(module fixtures); the tests then pin what it wrote to independent NumPy
computations: the target T is the held-out labelled sample of the query
distribution (the same kind of object as the candidates), the MMD rules choose
by greedy minimisation of the estimator they name (unbiased by default) in the
distillation kernels of the layer's W^K and W^V, and every reported MMD^2 is
the NumPy U- or V-statistic of the chosen tokens against T.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_kd import selection
from icl_kd.experiments import _common
from icl_kd.experiments import e1_selection as e1
from icl_kd.experiments import e6_interference as e6
from icl_kd.experiments.__main__ import EXPERIMENTS
from tests.helpers import np_mmd2


# -- independent NumPy references ------------------------------------------------------


def np_kv_gram(a, b, w_k, w_v, tau=1.0, use_values=True):
  """k_V(a_i, b_j) = <W^V a_i, W^V b_j> exp(<W^K a_i, W^K b_j>/tau) (k_x with use_values=False)."""
  g = (a @ w_v.T) @ (b @ w_v.T).T if use_values else a @ b.T
  return g * np.exp((a @ w_k.T) @ (b @ w_k.T).T / tau)


def np_term_scale(x, y, gram):
  """The size of the terms an MMD^2 estimate cancels: the tolerance of a comparison is in
  units of it (float64 rounding of exp at scores ~20 is ~1e-15 of a term, not of the result)."""
  return (np.abs(gram(x, x)).mean() + np.abs(gram(y, y)).mean()
          + 2 * np.abs(gram(x, y)).mean())


def np_greedy(pool, target, k, gram, estimator):
  chosen = []
  for _ in range(k):
    vals = [np.inf if c in chosen else np_mmd2(pool[chosen + [c]], target, gram, estimator)
            for c in range(len(pool))]
    chosen.append(int(np.argmin(vals)))
  return chosen


def _run(module, tiny, tmp_path_factory, capsys=None):
  out = str(tmp_path_factory.mktemp(module.NAME))
  old = module.QUICK
  module.QUICK = tiny
  try:
    res = _common.run_cli(module, ["--quick", "--seed", "3", "--out", out,
                                   "--no-compile-cache", "--no-progress"])
  finally:
    module.QUICK = old
  with open(os.path.join(out, f"{module.NAME}.json")) as f:
    data = json.load(f)
  with np.load(os.path.join(out, f"{module.NAME}.npz")) as f:
    arrays = {k: f[k] for k in f.files}
  return res, data, arrays


# -- E1 ---------------------------------------------------------------------------------

E1_TINY = e1.Config(d=2, k=3, n_pool=12, n_queries=4, n_target=5, n_trials=3, n_mixture=2,
                    train_steps=5, batch=8, n_reference=8, n_boot=20, progress=False)


@pytest.fixture(scope="module")
def e1_run(tmp_path_factory):
  return _run(e1, E1_TINY, tmp_path_factory)


def test_e1_writes_the_named_rules_with_their_oracle_flags_and_both_estimators(e1_run):
  res, data, arrays = e1_run
  assert [r["name"] for r in data["rules"]] == list(e1.RULE_NAMES)
  flags = {r["name"]: r["oracle"] for r in data["rules"]}
  # the MMD rules see T's labels; random_match knows which points come from Q
  assert flags == {"mmd_normalised": True, "mmd_kv": True, "mmd_kv_biased": True,
                   "gaussian": False, "retrieval": False, "random_match": True, "random": False,
                   "knn": False}
  assert data["quick"] is True and data["seed"] == 3 and data["default_estimator"] == "unbiased"
  assert data["icl_kd_version"] and data["versions"]["jax"] and data["wall_seconds"] > 0
  assert data["command"].startswith("python -m icl_kd.experiments E1 --quick")
  keys = {f"{k}/{e}" for k in selection.KERNELS for e in selection.ESTIMATORS}
  assert set(data["spearman_within_trial"]) == set(data["spearman_pooled"]) == keys
  n_sets = len(e1.SET_RULES) + 2
  assert res.error.shape == (3, n_sets) and arrays["measures_mmd2"].shape == (3, n_sets, 4, 2)
  for c in data["spearman_within_trial"].values():
    assert c["groups"] <= 3 and (-1 <= c["lo"] <= c["hi"] <= 1 or not np.isfinite(c["rho"]))
  assert "x, <w, x> + noise" in data["target"] and "held out" in data["target"]


def test_e1_prints_the_estimators_and_how_well_the_layer_learns(e1_run):
  res, _, _ = e1_run
  text, _ = e1.summary(res)
  assert "u = unbiased, the default" in text            # the MMD^2 columns are explained
  assert "the layer: relative error" in text            # beside every E1 number: how well it learns
  n_sets = len(e1.SET_RULES) + E1_TINY.n_mixture
  for table in (res.error, res.ridge_error, res.gd_error, res.own_fraction):
    assert table.shape == (3, n_sets) and np.all(np.isfinite(table))
  assert res.knn_error.shape == (3,) and res.train_losses.shape == (E1_TINY.train_steps,)
  # the mixture sets take 0 and k of their points from Q, in that order; random_match only Q's
  np.testing.assert_allclose(res.own_fraction[:, -2:], np.tile([0.0, 1.0], (3, 1)))
  np.testing.assert_allclose(res.own_fraction[:, e1.SET_RULES.index("random_match")], 1.0)


def _trial0(res):
  cfg = E1_TINY
  _, keys, _, _ = e1.trial_keys(jax.random.key(3), cfg)
  tr = e1.trial_data(keys[0], cfg)
  pool, pool_y, tx, ty = (np.asarray(a, float) for a in (tr.pool, tr.pool_y, tr.target_x,
                                                         tr.target_y))
  tokens = np.concatenate([pool, pool_y[:, None]], 1)
  target = np.concatenate([tx, ty[:, None]], 1)
  return tr, tokens, target, np.asarray(res.params["w_k"]), np.asarray(res.params["w_v"])


def test_e1_mmd_rules_replayed_in_numpy_against_the_labelled_target(e1_run):
  # trial 0 in NumPy: the rules minimise the estimator they name in k_V of the trained W^K,
  # W^V against T = (x, <w, x> + noise), a sample held out from the pool.
  res, _, _ = e1_run
  tr, tokens, target, w_k, w_v = _trial0(res)
  assert not np.any(np.isin(target[:, 0], tokens[:, 0]))          # T is not in the pool
  gram = lambda a, b: np_kv_gram(a, b, w_k, w_v)                  # noqa: E731
  for rule, est in (("mmd_kv", "unbiased"), ("mmd_kv_biased", "biased")):
    i = e1.SET_RULES.index(rule)
    assert list(res.chosen[0, i]) == np_greedy(tokens, target, E1_TINY.k, gram, est)
  # every set's reported MMD_kV^2, both estimators, is the NumPy statistic of its tokens vs T
  sets = res.chosen[0]                                             # rules, then mixtures
  assert sets.shape == (len(e1.SET_RULES) + E1_TINY.n_mixture, E1_TINY.k)
  ki = selection.KERNELS.index("k_V")
  for s, idx in enumerate(sets):
    for j, est in enumerate(selection.ESTIMATORS):
      np.testing.assert_allclose(res.measures.mmd2[0, s, ki, j],
                                 np_mmd2(tokens[idx], target, gram, est), rtol=1e-12,
                                 atol=1e-12 * np_term_scale(tokens[idx], target, gram))


def test_rule_kernels_read_w_k_and_w_v_and_the_normalised_kernel_orders_as_k_x():
  # A layer whose W^Q differs from W^K: the rules' MMD must follow W^K (C5's kernel).
  k = jax.random.split(jax.random.key(0), 6)
  params = {"w_q": jax.random.normal(k[0], (3, 3)), "w_k": 0.5 * jax.random.normal(k[1], (3, 3)),
            "w_v": jax.random.normal(k[2], (1, 3))}
  tr = e1.Trial(jnp.ones(2), jax.random.normal(k[3], (4, 2)), jnp.zeros(4),
                jax.random.normal(k[5], (5, 2)), jnp.arange(5.0) / 4,
                jax.random.normal(k[4], (8, 2)), jnp.arange(8.0) / 3, 2)
  kernels = e1.rule_kernels(params, E1_TINY, tr)
  w_k, w_v = np.asarray(params["w_k"]), np.asarray(params["w_v"])
  tokens = np.concatenate([np.asarray(tr.pool), np.asarray(tr.pool_y)[:, None]], 1)
  target = np.concatenate([np.asarray(tr.target_x), np.asarray(tr.target_y)[:, None]], 1)
  for rule, est in (("mmd_kv", "unbiased"), ("mmd_kv_biased", "biased")):
    got = list(np.asarray(e1.select(rule, kernels, tr, 3)))
    assert got == np_greedy(tokens, target, 3, lambda a, b: np_kv_gram(a, b, w_k, w_v), est)
  got = list(np.asarray(e1.select("mmd_normalised", kernels, tr, 3)))
  kx = lambda a, b: np_kv_gram(a, b, w_k, w_v, use_values=False)          # noqa: E731
  assert got == np_greedy(tokens, target, 3, kx, "unbiased")


# -- E6 ---------------------------------------------------------------------------------

E6_TINY = e6.Config(d=2, k=4, n_queries=4, n_target=5, n_trials=3, n_fractions=3, train_steps=5,
                    batch=8, n_boot=20, progress=False)


@pytest.fixture(scope="module")
def e6_run(tmp_path_factory):
  return _run(e6, E6_TINY, tmp_path_factory)


def test_e6_is_registered_and_writes_its_fields(e6_run):
  assert EXPERIMENTS["E6"] == "icl_kd.experiments.e6_interference"
  res, data, arrays = e6_run
  assert data["quick"] is True and data["seed"] == 3 and data["default_estimator"] == "unbiased"
  assert data["curves"]["f"] == [0.0, 0.5, 1.0] and data["curves"]["count"] == [0, 2, 4]
  keys = {f"{k}/{e}" for k in selection.KERNELS for e in selection.ESTIMATORS}
  assert set(data["spearman_f_mmd"]) == set(data["spearman_mmd_error"]) == keys
  for name in ("error", "ridge_error"):
    assert arrays[name].shape == (3, 3) and np.all(np.isfinite(arrays[name]))
  assert arrays["measures_mmd2"].shape == (3, 3, 4, 2)


def test_e6_mmd_kv_and_error_replayed_in_numpy(e6_run):
  # Trial 1 replayed: the prompt at count c holds c demonstrations of task B then k - c of
  # task A; MMD_kV^2 (both estimators) is against T, held-out labelled demonstrations of A.
  res, _, _ = e6_run
  cfg = E6_TINY
  _, keys, _, _ = e6.trial_keys(jax.random.key(3), cfg)
  tr = e6.trial_data(keys[1], cfg)
  xa, ya, xb, yb, q, wa, tx, ty = (np.asarray(v, float) for v in (
      tr.xs_a, tr.ys_a, tr.xs_b, tr.ys_b, tr.queries, tr.w_a, tr.target_x, tr.target_y))
  w_k, w_v = np.asarray(res.params["w_k"]), np.asarray(res.params["w_v"])
  target = np.concatenate([tx, ty[:, None]], 1)
  ki = selection.KERNELS.index("k_V")
  for j, c in enumerate(res.counts):
    xs = np.concatenate([xb[:c], xa[c:]])
    ys = np.concatenate([yb[:c], ya[c:]])
    tokens = np.concatenate([xs, ys[:, None]], 1)
    for e, est in enumerate(selection.ESTIMATORS):
      gram = lambda a, b: np_kv_gram(a, b, w_k, w_v)                    # noqa: E731
      ref = np_mmd2(tokens, target, gram, est)
      np.testing.assert_allclose(res.measures.mmd2[1, j, ki, e], ref, rtol=1e-12,
                                 atol=1e-12 * np_term_scale(tokens, target, gram))
    # the model's output from NumPy softmax attention over [demos; query]
    preds = []
    for x in q:
      ctx = np.concatenate([tokens, np.append(x, 0.0)[None]], 0)
      s = (ctx @ w_k.T) @ (np.asarray(res.params["w_q"]) @ np.append(x, 0.0))   # tau = 1
      s = s - s.max()
      preds.append(np.exp(s) @ (ctx @ w_v.T)[:, -1] / np.exp(s).sum())
    err = np.mean((np.array(preds) - q @ wa) ** 2) / np.mean((q @ wa) ** 2)
    np.testing.assert_allclose(res.error[1, j], err, rtol=1e-10)
