"""F11 (E6): cross-task interference against the theory's MMD_kV.

From ``python -m icl_kd.experiments E6`` (run when its results are missing): a
fraction f of a prompt's demonstrations comes from another regression task;
(a) the relative ICL error of the trained softmax-attention layer (and ridge on
    the same prompts) against f, mean +- SE over trials;
(b) MMD_kV^2 (the layer's own W^K, W^V) and MMD_kx^2 between the prompt and the
    labelled query sample against f, median and quartiles over trials (log
    scale), with the Gaussian MMD^2 on inputs (blind to the task) for contrast;
(c) the Spearman correlations (MMD_kV^2, error), (MMD_kx^2, error),
    (Gaussian MMD^2, error), (f, MMD_kV^2), (f, error), pooled and within
    trials, with bootstrap 95 % intervals over trials.
"""

from __future__ import annotations

import numpy as np

from figures import correlation_table, experiment_results, results_config, style, table

ID, SLUG, CLAIMS = "F11", "interference", ("E6",)
CORRELATIONS = ("mmd_kv_error", "mmd_kx_error", "gaussian_error", "f_mmd_kv", "f_error")
LABELS = ("MMD$_{kV}$, err", "MMD$_{kx}$, err", "Gauss, err", "$f$, MMD$_{kV}$", "$f$, err")


Config, config = results_config(__name__, results_dir="E6")


def compute(cfg: Config) -> dict:
  """The curves against f and the correlations from the E6 results."""
  arrays, summary = experiment_results(
      "E6", results_dir=cfg.results_dir, seed=cfg.seed, quick=cfg.quick,
      overrides=dict(n_trials=6, train_steps=60))
  err, f = arrays["error"], arrays["fractions"]
  n = err.shape[0]
  curves = {"f": f.tolist(), "error_mean": err.mean(0).tolist(),
            "error_se": (err.std(0, ddof=1) / np.sqrt(n)).tolist(),
            "ridge_error_mean": arrays["ridge_error"].mean(0).tolist()}
  for m in ("mmd_kv", "mmd_kx", "gaussian"):
    q25, q50, q75 = np.quantile(arrays[f"{m}2"], [0.25, 0.5, 0.75], axis=0)
    curves[f"{m}2_q25"], curves[f"{m}2_median"], curves[f"{m}2_q75"] = (
        q25.tolist(), q50.tolist(), q75.tolist())
  corr = correlation_table(summary, CORRELATIONS, column="name")
  meta = dict(id=ID, claims=list(CLAIMS), results_dir=cfg.results_dir, seed=cfg.seed,
              quick=bool(cfg.quick or summary.get("quick", False)), heads=summary["heads"],
              target=summary["target"], trials=int(n), experiment_config=summary["config"])
  return dict(meta=meta, tables=dict(curves=curves, correlations=corr))


@style.styled
def make(results: dict):
  """Error vs f; MMD^2 vs f; the correlations with their intervals."""
  cv, c = table(results, "curves"), table(results, "correlations")
  fig, axes = style.figure(1, 3, height=3.0)
  ax = axes[0, 0]
  ax.errorbar(cv["f"], cv["error_mean"], yerr=cv["error_se"], marker=style.MARKERS[0],
              color=style.CYCLE[0], capsize=2, label="trained layer (mean $\\pm$ SE)")
  ax.plot(cv["f"], cv["ridge_error_mean"], marker=style.MARKERS[1], color=style.CYCLE[1],
          label="ridge, same prompts")
  ax.set_xlabel("fraction $f$ from the other task")
  ax.set_ylabel("relative ICL error on the query task")
  ax.set_title("(a) error vs $f$", loc="left")
  style.legend(ax, loc="upper left")
  ax = axes[0, 1]
  for i, (m, label) in enumerate((("mmd_kv", "MMD$_{kV}^2$"), ("mmd_kx", "MMD$_{kx}^2$"),
                                  ("gaussian", "Gaussian MMD$^2$ (inputs)"))):
    med = cv[f"{m}2_median"]
    ax.plot(cv["f"], np.maximum(med, 1e-300), marker=style.MARKERS[i], color=style.CYCLE[i],
            label=label)
    ax.fill_between(cv["f"], np.maximum(cv[f"{m}2_q25"], 1e-300),
                    np.maximum(cv[f"{m}2_q75"], 1e-300), color=style.CYCLE[i], alpha=0.15)
  ax.set_yscale("log")
  ax.set_xlabel("fraction $f$ from the other task")
  ax.set_ylabel("MMD$^2$(prompt, query task): median, IQR")
  ax.set_title("(b) MMD vs $f$", loc="left")
  style.legend(ax, loc="lower right", bbox_to_anchor=(1.0, 0.1))
  ax = axes[0, 2]
  style.correlation_intervals(ax, c)
  ax.set_xticks(np.arange(len(CORRELATIONS)), LABELS, rotation=35, ha="right")
  ax.set_ylabel("Spearman $\\rho$, 95% CI")
  ax.set_title("(c) rank correlations", loc="left")
  style.legend(ax, loc="upper left")
  fig.suptitle("F11. Experiment E6: cross-task interference and the layer's MMD$_{kV}$")
  return fig
