"""Experiments E2-E4 end to end at tiny sizes (E1, E6: tests/test_e1_e6.py), the shared
statistics and command line (usage errors, --out, QUICK RUN, versions), and E4's C1 identity."""

import importlib
import inspect
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from icl_kd import models, train
from icl_kd.experiments import _common, e1_selection, e2_lr_proxy, e3_weight_norm, e4_layers
from icl_kd.experiments.__main__ import EXPERIMENTS, main as dispatch

F64 = jnp.float64


# -- shared statistics ------------------------------------------------------------------


def test_spearman_matches_scipy_with_ties():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 5, 40).astype(float)          # many ties
  b = a + rng.normal(size=40)
  np.testing.assert_allclose(_common.rankdata(a), scipy.stats.rankdata(a), rtol=0)
  assert _common.spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b)[0], rel=1e-12)


def test_bootstrap_interval_of_a_monotone_relation():
  x = np.arange(30.0)
  c = _common.bootstrap_spearman(x, x ** 3, seed=0, groups=np.repeat(np.arange(10), 3), n_boot=50)
  assert c == (1.0, 1.0, 1.0, 30)
  rng = np.random.default_rng(1)
  c = _common.bootstrap_spearman(rng.normal(size=200), rng.normal(size=200), seed=1, n_boot=200)
  assert c.lo < c.rho < c.hi and c.lo < 0 < c.hi    # independent data: the interval covers 0


def test_cluster_spearman_averages_group_rhos_and_resamples_whole_clusters():
  # 4 tasks x 5 trials: within every trial of tasks 0, 1 the relation is increasing, in tasks
  # 2, 3 decreasing. The mean of the 20 trial rhos is 0; resampling the 4 tasks (not the 20
  # trials) gives the interval [-1, 1] (a mean of 4 draws from {+1, +1, -1, -1} is -1 or +1
  # with probability 1/16 each > 2.5%), where resampling trials would give about +-0.45.
  x = np.tile(np.arange(6.0), 20)
  sign = np.repeat([1, 1, -1, -1], 5 * 6)
  y = sign * x
  groups = np.repeat(np.arange(20), 6)
  clusters = groups // 5
  c = _common.cluster_spearman(x, y, groups=groups, clusters=clusters, seed=0, n_boot=4000)
  assert (c.rho, c.lo, c.hi, c.groups) == (0.0, -1.0, 1.0, 20)
  # units: Spearman per (group, unit), then averaged within the group
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=24), rng.normal(size=24)
  g, u = np.repeat([0, 1], 12), np.tile(np.repeat([0, 1], 6), 2)
  per = _common.group_spearman(a, b, groups=g, units=u)
  ref = [np.mean([scipy.stats.spearmanr(a[(g == gg) & (u == uu)], b[(g == gg) & (u == uu)])[0]
                  for uu in (0, 1)]) for gg in (0, 1)]
  np.testing.assert_allclose([per[0], per[1]], ref, rtol=1e-12)


def test_minimum_detectable_difference_is_the_t_test_power_formula():
  m = np.array([0.1, -0.05, 0.2, 0.0, 0.15, -0.1, 0.05, 0.12])
  ref = ((scipy.stats.t.ppf(0.975, 7) + scipy.stats.t.ppf(0.8, 7)) * m.std(ddof=1) / np.sqrt(8))
  assert _common.minimum_detectable_difference(m) == pytest.approx(ref, rel=1e-9)
  assert _common.student_t_quantile(0.3, 2.5) == pytest.approx(scipy.stats.t.ppf(0.3, 2.5),
                                                               abs=1e-8)
  d = _common.paired_difference(np.repeat(m, 3), clusters=np.repeat(np.arange(8), 3), seed=0,
                                n_boot=500)
  assert d.mean == pytest.approx(m.mean(), rel=1e-12) and d.clusters == 8
  assert d.detectable == pytest.approx(ref, rel=1e-9) and d.lo < d.mean < d.hi


# -- E1 -----------------------------------------------------------------------------------


def _run_cli(module, tiny, tmp_path, monkeypatch, capsys, seed=0):
  """Runs ``python -m icl_kd.experiments NAME --quick`` with the quick config made tiny."""
  monkeypatch.setattr(module, "QUICK", tiny)
  out = str(tmp_path / module.NAME)
  name = next(k for k, v in EXPERIMENTS.items() if v == module.__name__)
  res = _common.run_cli(module, ["--quick", "--seed", str(seed), "--out", out,
                                 "--no-compile-cache", "--no-progress"])
  printed = capsys.readouterr().out
  # a quick run says so on its tables, not only in the JSON
  assert printed.splitlines()[0] == _common.QUICK_BANNER and _common.QUICK_BANNER in printed
  # the summary fits a 120-column terminal (the closing line names the saved files)
  assert max(len(line) for line in printed.splitlines()
             if not line.startswith(("saved", "==="))) <= 120
  with open(os.path.join(out, f"{module.NAME}.json")) as f:
    data = json.load(f)
  # every saved summary says which run it is: experiment, quick, seed, config, the command,
  # the versions and the wall time
  import icl_kd
  assert (data["experiment"], data["quick"], data["seed"]) == (name, True, seed)
  assert data["icl_kd_version"] == icl_kd.__version__ == data["versions"]["icl_kd"]
  assert data["versions"]["jax"] and data["wall_seconds"] > 0
  assert data["command"] == (f"python -m icl_kd.experiments {name} --quick --seed {seed} --out "
                             f"{out} --no-compile-cache --no-progress")
  assert data["config"] == json.loads(json.dumps(_common.config_dict(tiny._replace(progress=False))))
  assert os.path.exists(os.path.join(out, f"{module.NAME}.npz"))
  loaded, meta = train.load_checkpoint(os.path.join(out, f"{module.NAME}_model.npz"), res.params)
  assert (meta["seed"], meta["quick"]) == (seed, True)
  for x, y in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(res.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  return res, printed, data


# -- E2 -----------------------------------------------------------------------------------


E2_TINY = e2_lr_proxy.Config(d=2, n_demos=4, n_layers=1, n_heads=2, d_model=8, d_mlp=8,
                             train_steps=10, batch=8, n_test=12, n_orders=3, n_perturb=3,
                             n_boot=20, dtype="float64", progress=False)


def test_e2_runs_end_to_end(tmp_path, monkeypatch, capsys):
  res, printed, _ = _run_cli(e2_lr_proxy, E2_TINY, tmp_path, monkeypatch, capsys, seed=1)
  assert res.log_eta.shape == (12, 1, 2) and res.entropy.shape == (12, 1, 2)
  assert res.order_sensitivity.shape == (12,) and res.perturb_sensitivity.shape == (12,)
  assert np.all(np.isfinite(res.log_eta))
  assert np.all(res.entropy <= np.log(5) + 1e-12) and np.all(res.entropy >= 0)
  assert np.all(res.order_sensitivity > 0)          # positions make the order matter
  assert np.all(res.perturb_sensitivity > 0)
  assert res.rho_order.shape == (1, 2, 3) and np.all(np.abs(res.rho_order) <= 1)
  assert "rho" in printed


sensitivities = jax.jit(e2_lr_proxy.sensitivities,
                        static_argnames=("model", "n_orders", "n_perturb"))


def test_order_sensitivity_vanishes_without_positions():
  model = models.Transformer(n_layers=1, n_heads=2, d_model=8, d_mlp=8, positions=False,
                             dtype=F64)
  kx, ky, kq = jax.random.split(jax.random.key(3), 3)
  xs, ys, q = (jax.random.normal(kx, (5, 2), F64), jax.random.normal(ky, (5,), F64),
               jax.random.normal(kq, (2,), F64))
  params = model.init(jax.random.key(4), jnp.zeros((5, 3), F64), jnp.zeros((3,), F64))["params"]
  order, pert = sensitivities(model, params, xs, ys, q, key=jax.random.key(5), n_orders=6,
                              n_perturb=4, eps=jnp.asarray(1e-3))
  assert float(order) < 1e-12
  assert float(pert) > 0


# -- E3 -----------------------------------------------------------------------------------


E3_TINY = e3_weight_norm.Config(d=2, n_demos=6, n_train=8, n_queries=2, n_test=16, n_c4=6,
                                n_fresh=32, weight_decays=(0.0, 30.0), train_steps=40,
                                progress=False)


def test_e3_runs_end_to_end_and_decay_shrinks_the_decayed_weights(tmp_path, monkeypatch, capsys):
  res, printed, data = _run_cli(e3_weight_norm, E3_TINY, tmp_path, monkeypatch, capsys, seed=3)
  assert "C4 bound" in printed and len(data["rows"]) == 2
  for a in (res.norm_q, res.norm_k, res.norm_v, res.train_mse, res.test_mse, res.bound,
            res.radius, res.violations):
    assert a.shape == (2,) and np.all(np.isfinite(a))
  assert res.kd_gap.shape == (2, 6) and res.train_losses.shape == (2, 40)
  np.testing.assert_allclose(res.icl_gap, res.test_mse - res.train_mse, rtol=1e-12)
  # adamw with lr 1e-2 and decay 30 shrinks W^K, W^V by (1 - 0.3) per step on top of Adam's
  # bounded steps: after 40 steps they are far smaller; W^Q is not decayed.
  assert res.norm_k[1] < 0.2 * res.norm_k[0] and res.norm_v[1] < 0.2 * res.norm_v[0]
  assert res.norm_q[1] > 0.2 * res.norm_q[0]
  assert np.all(res.bound > 0) and np.all((0 <= res.violations) & (res.violations <= 1))
  assert np.all(res.feature_bound >= 1)             # exp(|W^K x|^2 / 2) >= 1


# -- E4 -----------------------------------------------------------------------------------


E4_TINY = e4_layers.Config(d=2, n_demos=4, n_layers=2, n_heads=2, d_model=8, d_mlp=8,
                           train_steps=10, batch=8, distill_steps=10, n_test=8, dtype="float64",
                           progress=False)


def test_e4_per_layer_and_head_c1_residual_is_zero(tmp_path, monkeypatch, capsys):
  res, printed, data = _run_cli(e4_layers, E4_TINY, tmp_path, monkeypatch, capsys)
  assert res.residual.shape == (2, 2) and res.consistency.shape == (2, 2)
  # C1 is an identity: float64 rounding only, on each layer's actual inputs ...
  assert np.max(res.residual) < 1e-12
  # ... and decompose's h is the head output inside the (float64) model.
  assert np.max(res.consistency) < 1e-12
  assert np.all(np.isfinite(res.log_eta)) and np.all(res.entropy > 0)
  assert np.isfinite(res.distance_to_one_step) and res.distance_to_one_step >= 0
  assert set(res.icl_mse) == {"transformer", "one_kd_step_layer", "averaging", "least_squares"}
  assert data["max_residual"] < 1e-12 and "C1 residual" in printed


# -- dispatcher ---------------------------------------------------------------------------


MODULES = {name: importlib.import_module(path) for name, path in EXPERIMENTS.items()}


def test_dispatcher_lists_every_experiment(capsys):
  assert {"E1", "E2", "E3", "E4", "real"} <= set(EXPERIMENTS)
  assert dispatch(["--help"]) == 0
  listing = " ".join(capsys.readouterr().out.split())         # argparse wraps lines
  for name, module in MODULES.items():
    assert f" {name} " in listing, name
    assert " ".join(module.DESCRIPTION.split()) in listing, name
  assert dispatch([]) == 2
  assert dispatch(["E9"]) == 2
  err = capsys.readouterr().err
  assert "usage" in err and "unknown experiment" in err


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_follows_the_protocol(name):
  module = MODULES[name]
  assert module.NAME == name and module.DESCRIPTION and "\n" not in module.DESCRIPTION
  assert isinstance(module.QUICK, module.Config) and hasattr(module.Config, "_fields")
  assert all(f in module.Config.__annotations__ for f in module.Config._fields)   # typed
  assert "seed" not in module.Config._fields                 # the key replaces the seed
  params = inspect.signature(module.run).parameters
  assert params["key"].kind is inspect.Parameter.KEYWORD_ONLY
  assert params["key"].default is inspect.Parameter.empty
  for fn in ("summary", "save", "main"):
    assert callable(getattr(module, fn)), fn
  assert hasattr(module.Results, "_fields")


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_flag_has_help_text(name):
  parser = _common.build_parser(MODULES[name])
  flags = [a for a in parser._actions if a.option_strings]
  assert {"--quick", "--seed", "--out", "--compile-cache", "--no-compile-cache",
          "--no-progress"} <= {o for a in flags for o in a.option_strings}
  own = {f.name: f for f in MODULES[name].FLAGS}
  for action in flags:
    text = own[action.option_strings[0]].help if action.option_strings[0] in own else action.help
    # the flag's own words, not only the "(default ...)" the parser appends
    assert text and len(text.split()) >= 2, action.option_strings
  for flag in MODULES[name].FLAGS:                            # each flag sets a real field
    assert flag.field in MODULES[name].Config._fields


def test_flags_override_the_config_and_seed_makes_the_key():
  module = e3_weight_norm
  parser = _common.build_parser(module)
  args = parser.parse_args(["--quick", "--decays", "0,2.5", "--steps", "7", "--seed", "4"])
  cfg = _common.config_from_args(module, args)
  assert cfg == module.QUICK._replace(weight_decays=(0.0, 2.5), train_steps=7)
  assert args.seed == 4 and args.compile_cache
  assert parser.parse_args(["--no-compile-cache"]).compile_cache is None
  full = _common.config_from_args(module, parser.parse_args(["--no-progress"]))
  assert full == module.Config(progress=False)


def test_dispatcher_passes_the_flags_and_returns_main_status(monkeypatch):
  seen = []
  monkeypatch.setattr(e3_weight_norm, "main", lambda argv: seen.append(argv) or 0)
  assert dispatch(["E3", "--quick", "--seed", "4"]) == 0
  assert seen == [["--quick", "--seed", "4"]]


# -- usage errors: found before any work, one line, exit status 2 ----------------------------


@pytest.mark.parametrize("argv, flag", [
    (["E1", "--trials", "0"], "--trials"),
    (["E1", "--k", "0"], "--k"),
    (["E1", "--steps", "-1"], "--steps"),
    (["E1", "--k", "x"], "--k"),
    (["E1", "--quick", "--k", "40"], "--k"),              # more than the pool's part from Q
    (["E6", "--fractions", "1"], "--fractions"),
    (["E3", "--decays", "0,-1"], "--decays"),
    (["E2", "--layers", "0"], "--layers"),
    (["E4", "--heads", "0"], "--heads"),
    (["chain", "--constructions", "cube"], "--constructions"),
    (["llm", "--queries", "0"], "--queries"),
])
def test_bad_sizes_are_one_line_usage_errors_before_any_work(argv, flag, monkeypatch, capsys):
  module = MODULES[argv[0]]
  monkeypatch.setattr(module, "run", lambda *a, **k: pytest.fail("run started"))
  with pytest.raises(SystemExit) as e:
    code = dispatch(argv + ["--no-progress"])
    raise SystemExit(code)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and flag in err and "error" in err, err


def test_an_unwritable_out_is_a_usage_error_before_any_work(monkeypatch, capsys, tmp_path):
  monkeypatch.setattr(e1_selection, "run", lambda *a, **k: pytest.fail("run started"))
  blocker = tmp_path / "file"
  blocker.write_text("")
  for out in ("/proc/e1", str(blocker / "sub")):
    assert dispatch(["E1", "--quick", "--out", out, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and out in err, err
