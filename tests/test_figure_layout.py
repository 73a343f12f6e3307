"""F10's text stays legible at the full run's sizes: tick labels apart, legends off the data.

The figure is drawn (Agg) from a synthetic results dict of the full run's
shape (30 layers x 9 heads, 8 tasks x 6 values of k, 9 selection rules, the
four links at 11 layers); ``make`` is a pure function of the numbers, so no
model is needed.
"""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from figures import f10_llm  # noqa: E402

TASKS = ("antonym", "capital", "uppercase", "first_letter", "plural", "past_tense",
         "number_word", "sentiment")
KS = (0, 1, 2, 4, 8, 16)


def _full_size_results():
  rng = np.random.default_rng(0)
  n_l, n_h = 30, 9
  heads = {"layer": np.repeat(np.arange(n_l), n_h).tolist(),
           "head": np.tile(np.arange(n_h), n_l).tolist(),
           "c1_err_f64": (10.0 ** rng.uniform(-16, -15, n_l * n_h)).tolist()}
  acc = {"task": [], "k": [], "accuracy": [], "lo": [], "hi": []}
  for t in TASKS + ("mean",):
    for k in KS:
      v = float(min(1.0, np.log2(k + 1) / 4 * rng.uniform(0.6, 1.2)))
      acc["task"].append(t)
      acc["k"].append(k)
      acc["accuracy"].append(v)
      acc["lo"].append(max(0.0, v - 0.15))
      acc["hi"].append(min(1.0, v + 0.15))
  names = ["mmd_normalised", "mmd_kv", "mmd_kv_biased", "mmd_kv_unrotated", "mmd_deployable",
           "gaussian", "retrieval", "random_task", "random_pool"]
  rules = {"rule": names, "oracle": [True, True, True, True, False, True, False, True, False],
           "exact_match": rng.uniform(0.2, 0.8, 9).tolist(),
           "logprob": rng.uniform(-5, -1, 9).tolist(), "own_fraction": rng.uniform(0, 1, 9).tolist()}
  sweep = {"layer": [], "link": [], "rho": [], "lo": [], "hi": []}
  for layer in (0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29):
    for link in f10_llm.LINKS:
      r = float(rng.uniform(-0.8, 0.8))
      sweep["layer"].append(layer)
      sweep["link"].append(link)
      sweep["rho"].append(r)
      sweep["lo"].append(r - 0.2)
      sweep["hi"].append(r + 0.2)
  meta = {"layers": n_l, "heads": n_h, "max_c1_err_f64": 1.5e-15, "headline_diff": [0.05, -0.1, 0.2],
          "headline_layer": 15, "model": "SmolLM2-135M-Instruct"}
  return {"meta": meta, "tables": {"heads": heads, "accuracy": acc, "rules": rules,
                                   "sweep": sweep}, "quick": False}


@pytest.fixture(scope="module")
def drawn():
  import matplotlib.pyplot as plt
  fig = f10_llm.make(_full_size_results())
  fig.canvas.draw()
  yield fig, fig.canvas.get_renderer()
  plt.close(fig)


def _overlap(a, b) -> bool:
  return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_tick_labels_do_not_overlap(drawn):
  fig, r = drawn
  for ax in (ax for ax in fig.axes if ax.xaxis.get_visible()):   # not the twin axes
    boxes = [t.get_window_extent(r) for t in ax.get_xticklabels() if t.get_text()]
    for i in range(len(boxes)):
      for j in range(i + 1, len(boxes)):
        assert not _overlap(boxes[i], boxes[j]), (ax.get_title(loc="left"), i, j)


def test_legends_and_notes_stay_off_the_data(drawn):
  """Every legend and in-axes text lies outside the plotting area of every panel."""
  fig, r = drawn
  panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
  boxes = [ax.get_legend().get_window_extent(r) for ax in panels if ax.get_legend()]
  boxes += [t.get_window_extent(r) for ax in panels for t in ax.texts]
  assert len(boxes) >= 3
  for box in boxes:
    for ax in panels:
      assert not _overlap(box, ax.get_window_extent(r)), ax.get_title(loc="left")
