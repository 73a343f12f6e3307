"""F6 (E1): demonstration selection by the theory's MMD.

From ``python -m icl_kd.experiments E1`` (run when its results are missing):
(a) the relative ICL error of a trained softmax-attention layer per selection
    rule (``mmd_kv``, ``mmd_kx``: greedy MMD with the layer's own W^K, W^V;
    ``gaussian``: greedy Gaussian MMD on the inputs; ``retrieval``, ``random``,
    and per-query ``knn``), mean +- SE over trials, with ridge on the same prompts;
(b) Spearman rho between each MMD (MMD_kV, MMD_kx, Gaussian) and the ICL
    error over the one-prompt and mixture prompts, pooled and within trials, with
    bootstrap 95 % intervals over trials;
(c) MMD_kV^2(prompt, target) against the ICL error, per rule (log scale: the
    exponential kernel makes MMD_kV heavy-tailed).
"""

from __future__ import annotations

import numpy as np

from figures import correlation_table, experiment_results, results_config, style, table

ID, SLUG, CLAIMS = "F6", "selection", ("E1",)
RULES = ("mmd_kv", "mmd_kx", "gaussian", "retrieval", "random", "knn")
SHARED = ("mmd_kv", "mmd_kx", "gaussian", "retrieval", "random")
MMDS = ("mmd_kv", "mmd_kx", "gaussian")


Config, config = results_config(__name__, results_dir="E1")


def compute(cfg: Config) -> dict:
  """Per-rule errors, the correlations of each MMD, and the MMD_kV-error pairs from E1."""
  arrays, summary = experiment_results(
      "E1", results_dir=cfg.results_dir, seed=cfg.seed, quick=cfg.quick,
      overrides=dict(n_trials=6, train_steps=60))
  rules = {"rule": [], "error_mean": [], "error_se": [], "ridge_error_mean": []}
  for r in RULES:
    e = arrays[f"error_{r}"]
    rules["rule"].append(r)
    rules["error_mean"].append(float(e.mean()))
    rules["error_se"].append(float(e.std(ddof=1) / np.sqrt(e.size)))
    rules["ridge_error_mean"].append(float(summary["rules"][r]["ridge_error_mean"]))
  corr = correlation_table(summary, MMDS, column="mmd")
  points = {"kind": [], "mmd_kv2": [], "gaussian2": [], "error": []}
  for r in SHARED:
    points["kind"] += [r] * arrays[f"error_{r}"].size
    points["mmd_kv2"] += arrays[f"mmd_kv2_{r}"].ravel().tolist()
    points["gaussian2"] += arrays[f"gaussian2_{r}"].ravel().tolist()
    points["error"] += arrays[f"error_{r}"].ravel().tolist()
  points["kind"] += ["mixture"] * arrays["mixture_error"].size
  points["mmd_kv2"] += arrays["mixture_mmd_kv2"].ravel().tolist()
  points["gaussian2"] += arrays["mixture_gaussian2"].ravel().tolist()
  points["error"] += arrays["mixture_error"].ravel().tolist()
  meta = dict(id=ID, claims=list(CLAIMS), results_dir=cfg.results_dir, seed=cfg.seed,
              quick=bool(cfg.quick or summary.get("quick", False)), wins=summary["wins"],
              heads=summary["heads"], target=summary["target"],
              experiment_config=summary["config"])
  return dict(meta=meta, tables=dict(rules=rules, correlations=corr, points=points))


@style.styled
def make(results: dict):
  """Error per rule; Spearman rho of each MMD with the error; MMD_kV^2 vs error scatter."""
  s, c, p = table(results, "rules"), table(results, "correlations"), table(results, "points")
  fig, axes = style.figure(1, 3, height=3.2)
  ax = axes[0, 0]
  x = np.arange(len(s["rule"]))
  ax.bar(x - 0.2, s["error_mean"], 0.4, yerr=s["error_se"], capsize=2,
         color=style.PALETTE["blue"], label="trained layer (mean $\\pm$ SE)")
  ax.bar(x + 0.2, s["ridge_error_mean"], 0.4, color=style.PALETTE["orange"],
         label="ridge, same prompts")
  ax.set_xticks(x, [str(n) for n in s["rule"]], rotation=35, ha="right")
  ax.set_ylabel("relative ICL error (MSE / mean $y^2$)")
  ax.set_title("(a) error per selection rule", loc="left")
  style.legend_below(ax, ncols=1, bbox_to_anchor=(0.5, -0.3))
  ax = axes[0, 1]
  style.correlation_intervals(ax, c)
  ax.set_xticks(np.arange(len(MMDS)), ["MMD$_{kV}$", "MMD$_{kx}$", "Gaussian"])
  ax.set_ylabel("Spearman $\\rho$(MMD$^2$, error), 95% CI")
  ax.set_title("(b) which MMD tracks the error", loc="left")
  style.legend(ax, loc="upper left")
  ax = axes[0, 2]
  for i, kind in enumerate(SHARED + ("mixture",)):
    sel = p["kind"] == kind
    ax.scatter(np.maximum(p["mmd_kv2"][sel], 1e-300), p["error"][sel], s=8,
               marker=style.MARKERS[i], color=style.CYCLE[i], alpha=0.7,
               label=kind.replace("_", " "), rasterized=True)
  ax.set_xscale("log")
  ax.set_xlabel("MMD$_{kV}^2$(prompt, target)")
  ax.set_ylabel("relative ICL error")
  ax.set_title("(c) MMD$_{kV}$ vs error", loc="left")
  style.legend_below(ax, ncols=3, bbox_to_anchor=(0.5, -0.22), handletextpad=0.2,
                     columnspacing=0.8)
  fig.suptitle("F6. Experiment E1: selecting demonstrations by the layer's own MMD$_{kV}$")
  return fig
