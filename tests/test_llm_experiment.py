"""The llm experiment's design, selection and statistics without the model (~20 s).

The selection of candidate lines (groups of tokens, the kernel summed over the
key/value heads) is pinned to a brute-force NumPy greedy search written here;
the statistics to direct NumPy computations; the experiments' selectors to the
library's own (no copy of a library function lives in the experiments).
"""

import ast
import inspect
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_kd import selection
from icl_kd.experiments import chain as chain_exp
from icl_kd.experiments import e1_selection as e1
from icl_kd.experiments import e6_interference as e6
from icl_kd.experiments import llm as exp

EXPERIMENTS_DIR = Path(exp.__file__).parent


# -- the experiments call the library -------------------------------------------------------


def test_the_experiments_select_with_the_librarys_rules(monkeypatch):
  """E1's rules, E6's kernels and the llm experiment's selectors are icl_kd.selection's."""
  seen = []
  library = {n: getattr(selection, n) for n in ("mmd_greedy", "retrieval")}
  for name in ("mmd_greedy", "retrieval", "random_choice", "theory_kernels"):
    real = getattr(selection, name)
    monkeypatch.setattr(selection, name,
                        lambda *a, _n=name, _r=real, **k: seen.append(_n) or _r(*a, **k))
  k = jax.random.split(jax.random.key(0), 6)
  params = {"w_q": jax.random.normal(k[0], (3, 3)), "w_k": 0.5 * jax.random.normal(k[1], (3, 3)),
            "w_v": jax.random.normal(k[2], (1, 3))}
  tr = e1.Trial(jnp.ones(2), jax.random.normal(k[3], (4, 2)), jnp.zeros(4),
                jax.random.normal(k[5], (5, 2)), jnp.arange(5.0) / 4,
                jax.random.normal(k[4], (8, 2)), jnp.arange(8.0) / 3, 3)
  kernels = e1.rule_kernels(params, e1.QUICK, tr)
  for rule in e1.SET_RULES:
    e1.select(rule, kernels, tr, 3, key=jax.random.key(1))
  assert {"mmd_greedy", "retrieval", "random_choice", "theory_kernels"} <= set(seen)
  seen.clear()
  cfg = e6.Config(d=2, k=4, n_queries=3, n_target=4, n_trials=1, n_fractions=2)
  model = e1.make_model(cfg)
  jax.make_jaxpr(lambda p, key: e6.measure_trial(model, p, cfg, np.array([0, 4]), key))(
      params, jax.random.key(2))                       # traced only: the calls happen then
  assert "theory_kernels" in seen                      # E6's kernels, through icl_kd.chain
  # the llm experiment's compiled selectors wrap the library's functions themselves
  assert exp._greedy_points.__wrapped__ is library["mmd_greedy"]
  assert exp._retrieve.__wrapped__ is library["retrieval"]


def _functions(path):
  tree = ast.parse(path.read_text())
  return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]


@pytest.mark.parametrize("path", sorted(EXPERIMENTS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_no_experiment_reimplements_a_selector_or_the_models_projections(path):
  """Every function of the experiments named after a selector delegates to icl_kd.selection,
  and no experiment recomputes RMSNorm or the Q/K/V projections (icl_kd.llm does)."""
  src = path.read_text()
  for fn in _functions(path):
    if any(w in fn.name.lower() for w in ("greedy", "retriev")):
      body = ast.get_source_segment(src, fn)
      assert "selection." in body, f"{path.name}:{fn.lineno} {fn.name} does not call the library"
  for pattern in ("rms_norm_eps", "attn_norm", ".w_k.T", "w_v.T", "np.median(np.sqrt"):
    assert pattern not in src, f"{path.name} recomputes a library quantity ({pattern})"


# -- the design -----------------------------------------------------------------------------


def test_designs_hold_disjoint_queries_target_and_task_pool():
  cfg = exp.QUICK._replace(trials=2)
  ds = exp.designs(cfg, np.random.default_rng(0))
  assert len(ds) == len(cfg.tasks) * 2
  for d in ds:
    q, t = {x for x, _ in d.queries}, {x for x, _ in d.target}
    own = {it[0] for (task, it) in d.pool if task == d.task}
    assert len(q) == cfg.trial_queries and len(t) == cfg.n_target
    assert not (q & t) and not (q & own) and not (t & own)
    assert d.own.sum() == cfg.pool_task and len(d.pool) == cfg.pool_task + cfg.pool_other
    assert all((task == d.task) == o for (task, _), o in zip(d.pool, d.own))
  mix = exp.mixtures(ds[0], cfg, np.random.default_rng(1))
  for f, idx in zip(cfg.fractions, mix.values()):
    assert len(set(idx)) == cfg.k and np.mean(~ds[0].own[idx]) == round(f * cfg.k) / cfg.k


def test_line_texts():
  assert exp.line_text(("hot", "cold")) == "hot -> cold\n"
  assert exp.line_text(("hot", "cold"), labelled=False) == "hot ->\n"


# -- the selection of lines -------------------------------------------------------------------


def _fake_lines(rng, n, sizes, n_l=2, n_g=2, dh=3, scale=0.6):
  return [exp.LineStates(scale * rng.normal(size=(n_l, n_g, s, dh)),
                         scale * rng.normal(size=(n_l, n_g, s, dh)),
                         rng.normal(size=(n_l, n_g, s, dh)), rng.normal(size=(n_l, 5)))
          for s in sizes[:n]]


def _np_union_mmd2(groups, target, estimator, tau, g_heads):
  """MMD^2 of the union of chosen lines' tokens against T, k_V summed over key/value heads."""
  total = 0.0
  for g in range(g_heads):
    x = np.concatenate([ls.anchors[1, g] for ls in groups])
    xv = np.concatenate([ls.values[1, g] for ls in groups])
    y = np.concatenate([ls.anchors[1, g] for ls in target])
    yv = np.concatenate([ls.values[1, g] for ls in target])
    k = lambda a, av, b, bv: (av @ bv.T) * np.exp(a @ b.T / tau)          # noqa: E731
    kxx, kyy, kxy = k(x, xv, x, xv), k(y, yv, y, yv), k(x, xv, y, yv)
    n, m = len(x), len(y)
    if estimator == "biased":
      total += kxx.mean() + kyy.mean() - 2 * kxy.mean()
    else:
      total += ((kxx.sum() - np.trace(kxx)) / (n * (n - 1))
                + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
  return total


@pytest.mark.parametrize("estimator", selection.ESTIMATORS)
def test_mmd_rule_is_greedy_over_lines_with_the_kernel_summed_over_heads(estimator):
  rng = np.random.default_rng(3)
  sizes = [3, 2, 4, 3, 2, 5, 3]
  pool = _fake_lines(rng, 7, sizes)
  target = _fake_lines(rng, 3, [2, 3, 4])
  cfg = exp.QUICK._replace(k=3, layers=(4, 9), headline_layer=9)
  got = exp.mmd_rule(pool, target, 1, cfg, 1.7, kind="k_V", estimator=estimator, rotated=True)
  chosen = []
  for _ in range(3):
    vals = [np.inf if c in chosen else _np_union_mmd2([pool[i] for i in chosen + [c]], target,
                                                      estimator, 1.7, 2) for c in range(7)]
    chosen.append(int(np.argmin(vals)))
  assert got == chosen


# -- the statistics -------------------------------------------------------------------------


def _fake_run(rng, n_tasks=4, trials=2, q=5, n_l=2, n_g=1, gs=2):
  names = list(exp.RULE_NAMES) + ["mixture_0", "mixture_1"]
  rows = [(t, tr, name) for t in range(n_tasks) for tr in range(trials) for name in names]
  s = len(rows)
  task = np.array([r[0] for r in rows])
  trial = np.array([r[1] for r in rows])
  group = task * trials + trial
  name = np.array([r[2] for r in rows])
  frac = np.array([float(n.split("_")[1]) if n.startswith("mixture") else np.nan for n in name])
  correct = rng.random((s, q)) < 0.5
  logprob = rng.normal(size=(s, q))
  m = dict(mmd2=rng.normal(size=(s, n_l, n_g, 4, 2)), log_target_norm2=np.zeros((s, n_l, n_g, 4)),
           log_bias=rng.normal(size=(s, n_l, n_g)), log_identity_rhs=np.zeros((s, n_l, n_g)),
           identity_residual=np.zeros((s, n_l, n_g)), log_bound_rhs=np.full((s, n_l, n_g), 5.0),
           log_literal_ratio=rng.normal(size=(s, n_l, n_g, 4)),
           log_target_weight=np.zeros((s, n_l, n_g)),
           log_output_gap=rng.normal(size=(s, n_l, n_g, gs * q)),
           log_target_output=np.zeros((s, n_l, n_g, gs * q)),
           log_bias_floor=np.full((s, n_l, n_g), -50.0))
  from icl_kd import chain
  meas = chain.ChainMeasures(**m)
  return exp.SelectionRun(task, trial, group, name, frac, rng.random(s), correct, logprob,
                          {"rotated": meas, "unrotated": meas}, [[]] * s, gs)


def test_paired_differences_and_power_against_numpy():
  rng = np.random.default_rng(5)
  run = _fake_run(rng)
  cfg = exp.QUICK._replace(layers=(0, 15), headline_layer=15)
  st = exp.selection_statistics(run, cfg, seed=0, n_boot=300)
  assert [r.name for r in st.rules] == list(exp.RULE_NAMES)
  assert [r.oracle for r in st.rules] == [r.oracle for r in exp.RULES]
  em = run.correct.mean(1)
  a = em[run.name == "mmd_normalised"] - em[run.name == "retrieval"]
  head = st.rules[0].minus_retrieval_em
  assert head.mean == pytest.approx(a.mean(), rel=1e-12) and head.clusters == 4
  task_means = [a[run.task[run.name == "retrieval"] == t].mean() for t in range(4)]
  import scipy.stats
  mdd = ((scipy.stats.t.ppf(0.975, 3) + scipy.stats.t.ppf(0.8, 3)) * np.std(task_means, ddof=1)
         / 2.0)
  assert st.power.exact_match == pytest.approx(mdd, rel=1e-8)
  assert st.power.groups == 8 and st.power.clusters == 4 and st.power.queries == 5


def test_chain_sets_and_links_of_a_sweep():
  rng = np.random.default_rng(6)
  run = _fake_run(rng, n_l=2, n_g=1, gs=2)
  sets = exp.chain_sets(run, "rotated", (3, 7))
  assert sets.rel_output_gap.shape == (len(run.name), 2, 2) and list(sets.kv_head) == [0, 0]
  gap = np.exp(run.measures["rotated"].log_output_gap[:, 1, 0].reshape(-1, 2, 5)).mean(-1)
  np.testing.assert_allclose(sets.rel_output_gap[:, 1], gap, rtol=1e-12)
  links = chain_exp.links(sets, model="smollm2", construction="rotated", seed=0, n_boot=50)
  n_mmd = len(selection.KERNELS) * len(selection.ESTIMATORS)
  assert len(links) == 3 * (2 * n_mmd + 2)                  # layers 3, 7 and "all"
  assert {lk.layer for lk in links} == {3, 7, "all"}
  for lk in links:
    assert lk.model == "smollm2" and lk.link in chain_exp.LINKS and lk.groups == 8
    assert (lk.kernel is None) == (lk.link in ("bias_output", "output_answer"))
    assert lk.verdict in ("holds", "reversed", "not resolved")
  b = chain_exp.bound_check(sets)
  assert (b.checked, b.violations, b.unresolved) == (sets.log_bias.size, 0, 0)
