"""F11 (E6): cross-task interference against the theory's MMD, both estimators.

From ``python -m icl_kd.experiments E6`` (run when its results are missing): a
fraction f of a prompt's demonstrations comes from another regression task;
(a) the relative ICL error of the trained softmax-attention layer (and ridge on
    the same prompts) against f, mean +- SE over trials;
(b) the median over trials of MMD^2(prompt, T) against f, T the labelled target
    sample of the query task, for the normalised kernel and k_V (unbiased, the
    default, solid; biased, dashed), each divided by its value at f = 1
    (symmetric log scale: unbiased estimates can be negative);
(c) Spearman rho within trials of (f, MMD^2) and of (MMD^2, error) per kernel and
    estimator, with bootstrap 95 % intervals over trials.
"""

from __future__ import annotations

import numpy as np

from figures import experiment_results, results_config, style, table

ID, SLUG, CLAIMS = "F11", "interference", ("E6",)
KERNELS = ("normalised", "k_V", "k_x", "gaussian")
LABELS = ("normalised", "$k_V$", "$k_x$", "Gaussian")


Config, config = results_config(__name__, results_dir="E6")


def _short(name: str) -> str:
  """'k_V/unbiased' -> '$k_V$ u' (tick labels)."""
  for a, b in (("/unbiased", " u"), ("/biased", " b"), ("normalised", "norm."),
               ("gaussian", "Gauss."), ("k_V", "$k_V$"), ("k_x", "$k_x$")):
    name = name.replace(a, b)
  return name


def compute(cfg: Config) -> dict:
  """The curves against f and the within-trial correlations from the E6 results."""
  _, summary = experiment_results(
      "E6", results_dir=cfg.results_dir, seed=cfg.seed, quick=cfg.quick,
      overrides=dict(n_trials=6, train_steps=60), figure=ID)
  cv = summary["curves"]
  curves = {k: list(cv[k]) for k in ("f", "error_mean", "error_se", "ridge_error_mean")}
  for k in KERNELS:
    for e in ("unbiased", "biased"):
      curves[f"{k}/{e}"] = list(cv[f"{k}/{e}_median"])
  corr = {"name": [], "kind": [], "rho": [], "lo": [], "hi": [], "groups": []}
  for k in KERNELS:
    for e in ("unbiased", "biased"):
      for kind, key in (("(f, MMD^2)", "spearman_f_mmd"), ("(MMD^2, error)", "spearman_mmd_error")):
        c = summary[key][f"{k}/{e}"]
        corr["name"].append(f"{k}/{e}")
        corr["kind"].append(kind)
        for f in ("rho", "lo", "hi", "groups"):
          corr[f].append(c[f])
  fe = summary["spearman_f_error"]
  meta = dict(id=ID, claims=list(CLAIMS), results_dir=cfg.results_dir, seed=cfg.seed,
              quick=bool(cfg.quick or summary.get("quick", False)), heads=summary["heads"],
              target=summary["target"], experiment_config=summary["config"],
              inputs=summary["config"]["inputs"], f_error=[fe["rho"], fe["lo"], fe["hi"]])
  return dict(meta=meta, tables=dict(curves=curves, correlations=corr))


@style.styled
def make(results: dict):
  """Error vs f; MMD^2 vs f; the correlations with their intervals."""
  meta = results["meta"]
  cv, c = table(results, "curves"), table(results, "correlations")
  fig, axes = style.figure(1, 3, height=3.2)
  ax = axes[0, 0]
  ax.errorbar(cv["f"], cv["error_mean"], yerr=cv["error_se"], marker=style.MARKERS[0],
              color=style.CYCLE[0], capsize=2, label="trained layer (mean $\\pm$ SE)")
  ax.plot(cv["f"], cv["ridge_error_mean"], marker=style.MARKERS[1], color=style.CYCLE[1],
          label="ridge, same prompts")
  rho = meta["f_error"]
  ax.set_xlabel("fraction $f$ from the other task")
  ax.set_ylabel("relative ICL error on the query task")
  ax.set_title(f"(a) error vs $f$; $\\rho$ = {rho[0]:.2f} [{rho[1]:.2f}, {rho[2]:.2f}]",
               loc="left", fontsize="small")
  style.legend_below(ax, ncols=1, bbox_to_anchor=(0.5, -0.25))
  ax = axes[0, 1]
  for i, k in enumerate(("normalised", "k_V")):
    for e, ls in (("unbiased", "-"), ("biased", "--")):
      v = np.asarray(cv[f"{k}/{e}"], float)
      ax.plot(cv["f"], v / abs(v[-1]) if v[-1] else v, ls=ls, marker=style.MARKERS[i],
              color=style.CYCLE[i], label=f"{LABELS[KERNELS.index(k)]}, {e}")
  ax.set_yscale("symlog", linthresh=0.1)
  ax.axhline(0.0, color=style.REFERENCE, lw=0.8)
  ax.set_xlabel("fraction $f$ from the other task")
  ax.set_ylabel("median MMD$^2$ / |value at $f$ = 1|")
  ax.set_title("(b) MMD$^2$(prompt, T) vs $f$", loc="left")
  style.legend_below(ax, ncols=2, bbox_to_anchor=(0.5, -0.25))
  ax = axes[0, 2]
  names = list(dict.fromkeys(c["name"].tolist()))
  for i, kind in enumerate(("(f, MMD^2)", "(MMD^2, error)")):
    sel = c["kind"] == kind
    ys = np.arange(len(names))[::-1] + (0.15 if i == 0 else -0.15)
    r = c["rho"][sel]
    ax.errorbar(r, ys, xerr=[r - c["lo"][sel], c["hi"][sel] - r], fmt=style.MARKERS[i],
                color=style.CYCLE[i], capsize=2, ms=3.5,
                label="$\\rho(f$, MMD$^2)$" if i == 0 else "$\\rho$(MMD$^2$, error)")
  ax.axvline(0.0, color=style.REFERENCE, lw=0.8)
  ax.set_yticks(np.arange(len(names))[::-1],
                [_short(n) for n in names])
  ax.set_xlabel("Spearman $\\rho$ within trials, 95% CI")
  ax.set_title("(c) rank correlations", loc="left")
  style.legend_below(ax, ncols=1, bbox_to_anchor=(0.5, -0.25))
  fig.suptitle(f"F11. Experiment E6 ({meta['inputs']} inputs): cross-task interference and the "
               "layer's MMD")
  return fig
