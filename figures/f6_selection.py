"""F6 (E1): MMD-guided demonstration selection.

From ``python -m icl_kd.experiments E1`` (run when its results are missing):
(a) the relative ICL error of a trained softmax-attention layer per
    selection strategy (random, nearest-neighbour retrieval, greedy MMD,
    k-NN per query), mean +- SE over trials, with the ridge baseline on the
    same prompts;
(b) MMD^2(prompt, queries) against the ICL error for every shared and
    mixture prompt, with Spearman rho and its bootstrap 95 % interval over trials.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from figures import experiment_results, style, table

ID, SLUG, CLAIMS = "F6", "selection", ("E1",)
STRATEGIES = ("random", "retrieval", "mmd_greedy", "knn_per_query")


class Config(NamedTuple):
  seed: int = 0
  quick: bool = False
  results_dir: str = os.path.join("results", "E1")


def config(*, quick: bool = False, seed: int = 0, out: str | None = None, **overrides) -> Config:
  """Full runs read results/<E>; quick runs keep their experiment results under <out>/experiments."""
  if quick and out is not None:
    overrides.setdefault("results_dir", os.path.join(out, "experiments", "E1"))
  return Config(seed=seed, quick=quick, **overrides)


def compute(cfg: Config) -> dict:
  """Per-strategy errors and the MMD-error pairs from the E1 results."""
  arrays, summary = experiment_results(
      "E1", results_dir=cfg.results_dir, seed=cfg.seed, quick=cfg.quick,
      overrides=dict(n_trials=6, train_steps=60))
  strat = {"strategy": [], "error_mean": [], "error_se": [], "ridge_error_mean": [],
           "mmd2_mean": []}
  for s in STRATEGIES:
    e = arrays[f"error_{s}"]
    strat["strategy"].append(s)
    strat["error_mean"].append(float(e.mean()))
    strat["error_se"].append(float(e.std(ddof=1) / np.sqrt(e.size)))
    strat["ridge_error_mean"].append(float(summary["strategies"][s]["ridge_error_mean"]))
    strat["mmd2_mean"].append(float(arrays[f"mmd2_{s}"].mean()))
  points = {"kind": [], "mmd2": [], "error": []}
  for s in STRATEGIES[:3]:
    points["kind"] += [s] * arrays[f"error_{s}"].size
    points["mmd2"] += arrays[f"mmd2_{s}"].ravel().tolist()
    points["error"] += arrays[f"error_{s}"].ravel().tolist()
  points["kind"] += ["mixture"] * arrays["mixture_error"].size
  points["mmd2"] += arrays["mixture_mmd2"].ravel().tolist()
  points["error"] += arrays["mixture_error"].ravel().tolist()
  meta = dict(id=ID, claims=list(CLAIMS), results_dir=cfg.results_dir, seed=cfg.seed,
              spearman=summary["spearman"], wins=summary["wins"],
              experiment_config=summary["config"])
  return dict(meta=meta, tables=dict(strategies=strat, points=points))


@style.styled
def make(results: dict):
  """Bar chart of error per strategy; MMD^2 vs error scatter with Spearman rho."""
  meta, s, p = results["meta"], table(results, "strategies"), table(results, "points")
  fig, axes = style.figure(1, 2, height=3.2)
  ax = axes[0, 0]
  x = np.arange(len(s["strategy"]))
  ax.bar(x - 0.2, s["error_mean"], 0.4, yerr=s["error_se"], capsize=2,
         color=style.PALETTE["blue"], label="trained attention layer (mean $\\pm$ SE)")
  ax.bar(x + 0.2, s["ridge_error_mean"], 0.4, color=style.PALETTE["orange"],
         label="ridge on the same prompts")
  ax.set_xticks(x, [n.replace("_per_", " per\n").replace("_", "\n") for n in s["strategy"]])
  ax.set_ylabel("relative ICL error (MSE / mean $y^2$)")
  ax.set_title("(a) ICL error per selection rule", loc="left")
  style.legend(ax, loc="upper right", bbox_to_anchor=(1.0, 1.02))
  ax = axes[0, 1]
  for i, kind in enumerate(("random", "retrieval", "mmd_greedy", "mixture")):
    sel = p["kind"] == kind
    ax.scatter(p["mmd2"][sel], p["error"][sel], s=10, marker=style.MARKERS[i],
               color=style.CYCLE[i], alpha=0.8, label=kind.replace("_", " "), rasterized=True)
  ax.set_xlabel("MMD$^2$(prompt, queries) (unbiased, Gaussian $k$;\n"
                "the unbiased estimate can fall below 0)")
  ax.set_ylabel("relative ICL error")
  ax.set_title("(b) MMD vs ICL error", loc="left")
  style.legend_below(ax, ncols=4, bbox_to_anchor=(0.5, -0.2), handletextpad=0.2,
                     columnspacing=0.8)
  sp = meta["spearman"]
  style.annotate(ax, f"Spearman $\\rho$ = {sp['rho']:.2f}\n95% CI [{sp['lo']:.2f}, {sp['hi']:.2f}]"
                 f", n = {sp['n']}", loc="upper left")
  fig.suptitle("F6. Experiment E1: choosing demonstrations close in MMD to the queries")
  return fig
