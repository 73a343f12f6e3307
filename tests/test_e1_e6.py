"""E1 (selection by the theory's MMD) and E6 (cross-task interference) at tiny sizes.

Each experiment runs once through its command line with a tiny quick config
(module fixtures); the tests then pin what it wrote to independent NumPy
computations: the MMD_kV a rule selects by is C5's quantity (``thm4.1``: the
same number as ``bounds.distillation_bias``), computed with the layer's W^K and
W^V on the tokens (x, y) against the labelled query sample.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from icl_kd import bounds
from icl_kd.attention import AttentionParams
from icl_kd.experiments import _common
from icl_kd.experiments import e1_selection as e1
from icl_kd.experiments import e6_interference as e6
from icl_kd.experiments.__main__ import EXPERIMENTS

F64 = jnp.float64


# -- independent NumPy references ------------------------------------------------------


def np_kv_gram(a, b, w_k, w_v, tau=1.0, use_values=True):
  """k_V(a_i, b_j) = <W^V a_i, W^V b_j> exp(<W^K a_i, W^K b_j>/tau) (k_x with use_values=False)."""
  g = (a @ w_v.T) @ (b @ w_v.T).T if use_values else a @ b.T
  return g * np.exp((a @ w_k.T) @ (b @ w_k.T).T / tau)


def np_mmd2_biased(x, y, gram):
  return gram(x, x).mean() + gram(y, y).mean() - 2 * gram(x, y).mean()


def np_greedy(pool, target, k, gram):
  chosen = []
  for _ in range(k):
    vals = [np.inf if c in chosen else np_mmd2_biased(pool[chosen + [c]], target, gram)
            for c in range(len(pool))]
    chosen.append(int(np.argmin(vals)))
  return chosen


def _run(module, tiny, tmp_path_factory):
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

E1_TINY = e1.Config(d=2, k=3, n_pool=12, n_queries=4, n_trials=3, n_mixture=2, train_steps=5,
                    batch=8, n_boot=20, progress=False)


@pytest.fixture(scope="module")
def e1_run(tmp_path_factory):
  return _run(e1, E1_TINY, tmp_path_factory)


def test_e1_writes_the_named_rules_and_correlations(e1_run):
  res, data, arrays = e1_run
  assert tuple(data["rules"]) == ("mmd_kv", "mmd_kx", "gaussian", "retrieval", "random", "knn")
  assert data["quick"] is True and data["seed"] == 3
  assert set(data["spearman"]) == set(data["spearman_within_trial"]) == {
      "mmd_kv", "mmd_kx", "gaussian"}
  for c in list(data["spearman"].values()) + list(data["spearman_within_trial"].values()):
    assert -1 <= c["lo"] <= c["rho"] <= c["hi"] <= 1 or not np.isfinite(c["rho"])
    assert c["n"] == 3 * (5 + 2)
  assert "summed" in data["heads"] and "x'" in data["target"]
  for r in e1.RULES:
    assert arrays[f"error_{r}"].shape == (3,) and np.all(arrays[f"error_{r}"] >= 0)
    for m in e1.MMDS:
      assert arrays[f"{m}2_{r}"].shape == (3,) and np.all(arrays[f"{m}2_{r}"] >= 0)
  assert arrays["chosen_mmd_kv"].shape == (3, 3)


def test_e1_selects_by_mmd_kv_of_the_layers_keys_and_values_against_the_labelled_queries(e1_run):
  # Replays trial 0 in NumPy: the target is (x', <w, x'>), the kernel uses the trained
  # W^K and W^V (not W^Q), and greedy selection minimises the biased MMD^2 of the tokens.
  res, _, _ = e1_run
  cfg = E1_TINY
  _, keys, _ = e1.trial_keys(jax.random.key(3), cfg)
  tr = e1.trial_data(keys[0], cfg)
  pool, pool_y, queries, w = (np.asarray(a, float) for a in (tr.pool, tr.pool_y, tr.queries,
                                                             tr.w))
  tokens = np.concatenate([pool, pool_y[:, None]], 1)
  target = np.concatenate([queries, (queries @ w)[:, None]], 1)
  w_k, w_v = np.asarray(res.params["w_k"]), np.asarray(res.params["w_v"])
  for rule, use_values in (("mmd_kv", True), ("mmd_kx", False)):
    gram = lambda a, b: np_kv_gram(a, b, w_k, w_v, use_values=use_values)
    assert list(res.chosen[rule][0]) == np_greedy(tokens, target, cfg.k, gram)
    for r in e1.SHARED:
      ref = np_mmd2_biased(tokens[res.chosen[r][0]], target, gram)
      np.testing.assert_allclose(res.mmd2[rule][r][0], ref, rtol=1e-10)


def test_rule_kernels_read_w_k_and_w_v():
  # A layer whose W^Q differs from W^K: the rule's MMD must follow W^K (C5's kernel).
  k = jax.random.split(jax.random.key(0), 5)
  params = {"w_q": jax.random.normal(k[0], (3, 3), F64),
            "w_k": 0.5 * jax.random.normal(k[1], (3, 3), F64),
            "w_v": jax.random.normal(k[2], (1, 3), F64)}
  tr = e1.Trial(jnp.ones(2, F64), jax.random.normal(k[3], (4, 2), F64), jnp.zeros(4, F64),
                jax.random.normal(k[4], (6, 2), F64), jnp.arange(6.0, dtype=F64) / 3, 2)
  tr = tr._replace(targets=tr.queries @ tr.w)
  kernels = e1.rule_kernels(params, E1_TINY, tr)
  got = e1.prompt_mmd2(kernels, tr, jnp.array([0, 2, 5]))
  tokens = np.concatenate([np.asarray(tr.pool), np.asarray(tr.pool_y)[:, None]], 1)[[0, 2, 5]]
  target = np.concatenate([np.asarray(tr.queries), np.asarray(tr.targets)[:, None]], 1)
  w_k, w_v = np.asarray(params["w_k"]), np.asarray(params["w_v"])
  for m, use_values in (("mmd_kv", True), ("mmd_kx", False)):
    ref = np_mmd2_biased(tokens, target, lambda a, b: np_kv_gram(a, b, w_k, w_v,
                                                                 use_values=use_values))
    np.testing.assert_allclose(got[m], ref, rtol=1e-12)


def test_selection_mmd_kv_is_c5_distillation_bias():
  # thm4.1-identity on a fixed instance: the MMD_kV the rules use is bounds.distillation_bias's
  # mmd_v, and c eta MMD_kV equals the HS norm of the weight gap (c = 2, the eq12 default),
  # computed along the dual-weight path; NumPy gives a third, independent value.
  k = jax.random.split(jax.random.key(1), 5)
  p = AttentionParams(jax.random.normal(k[0], (3, 4), F64),
                      0.6 * jax.random.normal(k[1], (3, 4), F64),
                      jax.random.normal(k[2], (2, 4), F64))
  x_p = jax.random.normal(k[3], (7, 4), F64)
  x_q = jax.random.normal(k[4], (5, 4), F64) + 0.5
  got = e1.summed_mmd2(x_p, x_q, kernel=e1.theory_kernels(p, tau=0.8))
  b = bounds.distillation_bias(p, x_p, x_q, eta=0.5, tau=0.8)
  ref = np_mmd2_biased(np.asarray(x_p), np.asarray(x_q),
                       lambda a, c: np_kv_gram(a, c, np.asarray(p.w_k), np.asarray(p.w_v), 0.8))
  np.testing.assert_allclose(got, ref, rtol=1e-12)
  np.testing.assert_allclose(np.sqrt(got), b.mmd_v, rtol=1e-12)
  np.testing.assert_allclose(2 * 0.5 * np.sqrt(got), b.identity_rhs, rtol=1e-12)
  np.testing.assert_allclose(2 * 0.5 * np.sqrt(got), b.lhs, rtol=1e-10)


def test_heads_are_summed_as_mmd2():
  k = jax.random.split(jax.random.key(2), 4)
  stacked = AttentionParams(jax.random.normal(k[0], (2, 3, 4), F64),
                            0.5 * jax.random.normal(k[1], (2, 3, 4), F64),
                            jax.random.normal(k[0], (2, 1, 4), F64))
  x, y = jax.random.normal(k[2], (5, 4), F64), jax.random.normal(k[3], (6, 4), F64)
  got = e1.summed_mmd2(x, y, kernel=e1.theory_kernels(stacked, tau=1.0))
  ref = sum(np_mmd2_biased(np.asarray(x), np.asarray(y),
                           lambda a, b: np_kv_gram(a, b, np.asarray(stacked.w_k[h]),
                                                   np.asarray(stacked.w_v[h])))
            for h in range(2))
  np.testing.assert_allclose(got, ref, rtol=1e-12)
  # greedy selection on the summed kernel, in log space, against NumPy
  pool = jax.random.normal(k[0], (9, 4), F64)
  idx = e1.mmd_greedy(pool, y, 3, kernel=e1.theory_kernels(stacked, tau=1.0))
  gram = lambda a, b: sum(np_kv_gram(a, b, np.asarray(stacked.w_k[h]),
                                     np.asarray(stacked.w_v[h])) for h in range(2))
  assert list(np.asarray(idx)) == np_greedy(np.asarray(pool), np.asarray(y), 3, gram)


def test_greedy_survives_large_scores():
  # scores near 1e3: the Gram is formed in log space, so no inf/nan and the choice is defined
  p = AttentionParams(jnp.eye(2, dtype=F64), 30 * jnp.eye(2, dtype=F64), jnp.ones((1, 2), F64))
  pool = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]], F64)
  idx = e1.mmd_greedy(pool, pool[:1], 1, kernel=e1.theory_kernels(p, tau=1.0))
  assert int(idx[0]) == 0


def test_within_trial_spearman_is_the_mean_of_per_trial_rho():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  c = e1.within_trial_spearman(a, b, seed=0, n_boot=50)
  ref = np.mean([scipy.stats.spearmanr(x, y)[0] for x, y in zip(a, b)])
  assert c.rho == pytest.approx(ref, rel=1e-12) and c.lo <= c.rho <= c.hi and c.n == 30


# -- E6 ---------------------------------------------------------------------------------

E6_TINY = e6.Config(d=2, k=4, n_queries=4, n_trials=3, n_fractions=3, train_steps=5, batch=8,
                    n_boot=20, progress=False)


@pytest.fixture(scope="module")
def e6_run(tmp_path_factory):
  return _run(e6, E6_TINY, tmp_path_factory)


def test_e6_is_registered_and_writes_its_fields(e6_run):
  assert EXPERIMENTS["E6"] == "icl_kd.experiments.e6_interference"
  res, data, arrays = e6_run
  assert data["quick"] is True and data["seed"] == 3
  assert data["curves"]["f"] == [0.0, 0.5, 1.0] and data["curves"]["count"] == [0, 2, 4]
  assert {"mmd_kv_error", "mmd_kx_error", "gaussian_error", "f_mmd_kv", "f_error"} == set(
      data["spearman"]) == set(data["spearman_within_trial"])
  for name in ("error", "mmd_kv2", "mmd_kx2", "gaussian2", "ridge_error"):
    assert arrays[name].shape == (3, 3) and np.all(np.isfinite(arrays[name]))
  assert len(data["curves"]["mmd_kv2_median"]) == 3


def test_e6_mmd_kv_and_error_replayed_in_numpy(e6_run):
  # Trial 1 replayed: the prompt at count c holds c demonstrations of task B then k - c of
  # task A; MMD_kV^2 is against (x', <w_A, x'>); the error is relative to the queries' labels.
  res, _, _ = e6_run
  cfg = E6_TINY
  _, keys, _ = e6.trial_keys(jax.random.key(3), cfg)
  tr = e6.trial_data(keys[1], cfg)
  xa, ya, xb, yb, q, wa = (np.asarray(v, float) for v in (tr.xs_a, tr.ys_a, tr.xs_b, tr.ys_b,
                                                          tr.queries, tr.w_a))
  w_k, w_v = np.asarray(res.params["w_k"]), np.asarray(res.params["w_v"])
  target = np.concatenate([q, (q @ wa)[:, None]], 1)
  for j, c in enumerate(res.counts):
    xs = np.concatenate([xb[:c], xa[c:]])
    ys = np.concatenate([yb[:c], ya[c:]])
    tokens = np.concatenate([xs, ys[:, None]], 1)
    ref = np_mmd2_biased(tokens, target, lambda a, b: np_kv_gram(a, b, w_k, w_v))
    np.testing.assert_allclose(res.mmd2["mmd_kv"][1, j], ref, rtol=1e-10)
    # the model's output from NumPy softmax attention over [demos; query]
    preds = []
    for x in q:
      ctx = np.concatenate([tokens, np.append(x, 0.0)[None]], 0)
      s = (ctx @ w_k.T) @ (np.asarray(res.params["w_q"]) @ np.append(x, 0.0))   # tau = 1
      s = s - s.max()
      preds.append(np.exp(s) @ (ctx @ w_v.T)[:, -1] / np.exp(s).sum())
    err = np.mean((np.array(preds) - q @ wa) ** 2) / np.mean((q @ wa) ** 2)
    np.testing.assert_allclose(res.error[1, j], err, rtol=1e-10)
