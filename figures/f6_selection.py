"""F6 (E1): demonstration selection by the theory's MMD, both estimators.

From ``python -m icl_kd.experiments E1`` (run when its results are missing):
(a) the relative ICL error of the trained softmax-attention layer per selection
    rule (mean +- SE over trials; hatched: oracle rules, which see the target's
    labels or know which pool points come from Q), with ridge on the same
    prompts, and the layer's own error on prompts drawn from Q (dashed: how well
    this layer learns in context at all);
(b) Spearman rho between MMD^2(set, T) and the error within trials, per kernel
    (normalised, k_V, k_x, Gaussian), unbiased and biased estimator side by side,
    bootstrap 95 % intervals over trials;
(c) the unbiased MMD_kV^2 against the error, every set of every trial (symmetric
    log scale: the unbiased estimate can be negative).
"""

from __future__ import annotations

import numpy as np

from figures import experiment_results, results_config, style, table

ID, SLUG, CLAIMS = "F6", "selection", ("E1",)
KERNELS = ("normalised", "k_V", "k_x", "gaussian")
ESTIMATORS = ("unbiased", "biased")
SHORT = {"mmd_normalised": "MMD norm.", "mmd_kv": "MMD kV", "mmd_kv_biased": "MMD kV b",
         "random_match": "random Q", "gaussian": "Gauss."}


Config, config = results_config(__name__, results_dir="E1")


def compute(cfg: Config) -> dict:
  """Per-rule errors, the within-trial correlations of each MMD, and the MMD_kV-error pairs."""
  arrays, summary = experiment_results(
      "E1", results_dir=cfg.results_dir, seed=cfg.seed, quick=cfg.quick,
      overrides=dict(n_trials=6, train_steps=60), figure=ID)
  rules = {"rule": [], "oracle": [], "error_mean": [], "error_se": [], "ridge_error_mean": []}
  for r in summary["rules"]:
    rules["rule"].append(r["name"])
    rules["oracle"].append(bool(r["oracle"]))
    rules["error_mean"].append(float(r["error_mean"]))
    rules["error_se"].append(float(r["error_se"]))
    rules["ridge_error_mean"].append(float(r["ridge_error_mean"]))
  corr = {"kernel": [], "kind": [], "rho": [], "lo": [], "hi": [], "groups": []}
  for k in KERNELS:
    for e in ESTIMATORS:
      c = summary["spearman_within_trial"][f"{k}/{e}"]
      corr["kernel"].append(k)
      corr["kind"].append(e)
      for f in ("rho", "lo", "hi", "groups"):
        corr[f].append(c[f])
  ki, ei = KERNELS.index("k_V"), ESTIMATORS.index("unbiased")
  mmd2 = arrays["measures_mmd2"][..., ki, ei]                            # (T, S)
  sets = summary["sets"]
  points = {"set": [s if not s.startswith("mixture") else "mixture" for s in sets] * len(mmd2),
            "mmd_kv2": mmd2.ravel().tolist(), "error": arrays["error"].ravel().tolist()}
  ref = summary["reference"]
  meta = dict(id=ID, claims=list(CLAIMS), results_dir=cfg.results_dir, seed=cfg.seed,
              quick=bool(cfg.quick or summary.get("quick", False)), heads=summary["heads"],
              target=summary["target"], experiment_config=summary["config"],
              matched_error=ref["matched"], matched_ridge=ref["matched_ridge"],
              inputs=summary["config"]["inputs"])
  return dict(meta=meta, tables=dict(rules=rules, correlations=corr, points=points))


@style.styled
def make(results: dict):
  """Error per rule; within-trial Spearman per kernel and estimator; MMD_kV^2 vs error."""
  meta = results["meta"]
  s, c, p = table(results, "rules"), table(results, "correlations"), table(results, "points")
  fig, axes = style.figure(1, 3, height=3.4)
  ax = axes[0, 0]
  x = np.arange(len(s["rule"]))
  oracle = np.asarray(s["oracle"], bool)
  bars = ax.bar(x - 0.2, s["error_mean"], 0.4, yerr=s["error_se"], capsize=2,
                color=style.PALETTE["blue"], label="trained layer (mean $\\pm$ SE)")
  for b, o in zip(bars, oracle):
    if o:
      b.set_hatch("///")
  ax.bar(x + 0.2, s["ridge_error_mean"], 0.4, color=style.PALETTE["orange"],
         label="ridge, same prompts")
  ax.axhline(meta["matched_error"], color=style.PALETTE["black"], ls="--", lw=0.8,
             label="layer on prompts from Q")
  ax.set_xticks(x, [SHORT.get(str(n), str(n)) for n in s["rule"]], rotation=55, ha="right")
  ax.set_ylabel("relative ICL error (MSE / mean $y^2$)")
  ax.set_title("(a) error per rule", loc="left")
  style.legend_below(ax, ncols=1, bbox_to_anchor=(0.5, -0.5))
  ax = axes[0, 1]
  style.correlation_intervals(ax, c, kinds=ESTIMATORS)
  ax.set_xticks(np.arange(len(KERNELS)), ["norm.", "$k_V$", "$k_x$", "Gauss."])
  ax.set_ylabel("Spearman $\\rho$ within trials, 95% CI")
  ax.set_title("(b) $\\rho$(MMD$^2$, error)", loc="left")
  style.legend_below(ax, ncols=2, bbox_to_anchor=(0.5, -0.2))
  ax = axes[0, 2]
  kinds = list(dict.fromkeys(p["set"].tolist()))
  for i, kind in enumerate(kinds):
    sel = p["set"] == kind
    v = p["mmd_kv2"][sel]
    ax.scatter(np.sign(v) * np.log10(1 + np.abs(v)), p["error"][sel], s=6,
               marker=style.MARKERS[i % 7],
               color="0.65" if kind == "mixture" else style.CYCLE[i % 7], alpha=0.6,
               label=SHORT.get(kind, kind), rasterized=True)
  ax.set_xlabel("sign $\\cdot$ log$_{10}$(1 + |MMD$_{kV}^2$|), unbiased")
  ax.set_ylabel("relative ICL error")
  ax.set_title("(c) every set", loc="left")
  style.legend_below(ax, ncols=3, bbox_to_anchor=(0.5, -0.3), handletextpad=0.2,
                     columnspacing=0.8)
  fig.suptitle(f"F6. E1 ({meta['inputs']} inputs): selection by the layer's own MMD "
               "(hatched: oracle rules)")
  return fig
