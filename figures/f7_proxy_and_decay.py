"""F7 (E2, E3): the learning-rate proxy and the weight-norm intervention.

From ``python -m icl_kd.experiments E2`` and ``E3`` (run when missing):
(a) E2: per test prompt, log eta* = log N/(2D') at the query (mean over
    the heads of the last layer) against the order sensitivity (std of the
    prediction over reorderings), with Spearman rho per (layer, head),
    numbered from 0 (L0 = the first layer);
(b) E3: weight decay on W^V, W^K against ||W^K||_F, ||W^V||_F;
(c) E3: the ICL generalization gap, the KD gap L - L_hat of W_0 (median over
    prompts) and the C4 bound from the measured norms.
"""

from __future__ import annotations

import numpy as np

from figures import experiment_results, results_config, style, table

ID, SLUG, CLAIMS = "F7", "proxy_and_decay", ("E2", "E3", "lr-proxy", "thm3.2")


Config, config = results_config(__name__, e2_dir="E2", e3_dir="E3")


def compute(cfg: Config) -> dict:
  """Per-prompt eta* and sensitivity (E2); per-decay norms, gaps and bound (E3)."""
  e2, _ = experiment_results("E2", results_dir=cfg.e2_dir, seed=cfg.seed, quick=cfg.quick,
                             overrides=dict(train_steps=40, n_test=16, n_layers=1))
  e3, _ = experiment_results("E3", results_dir=cfg.e3_dir, seed=cfg.seed, quick=cfg.quick,
                             overrides=dict(train_steps=60, weight_decays=(0.0, 10.0)))
  log_eta = e2["log_eta"]                                       # (n_test, L, H)
  prompts = {"log_eta_last_layer": log_eta[:, -1, :].mean(axis=1).tolist(),
             "order_sensitivity": e2["order_sensitivity"].tolist(),
             "perturb_sensitivity": e2["perturb_sensitivity"].tolist()}
  heads = {"layer": [], "head": [], "rho_order": [], "rho_order_lo": [], "rho_order_hi": []}
  for l in range(e2["rho_order"].shape[0]):
    for h in range(e2["rho_order"].shape[1]):
      r = e2["rho_order"][l, h]
      heads["layer"].append(l)
      heads["head"].append(h)
      heads["rho_order"].append(float(r[0]))
      heads["rho_order_lo"].append(float(r[1]))
      heads["rho_order_hi"].append(float(r[2]))
  decay = {"weight_decay": e3["weight_decays"].tolist(), "norm_k": e3["norm_k"].tolist(),
           "norm_v": e3["norm_v"].tolist(), "norm_q": e3["norm_q"].tolist(),
           "icl_gap": e3["icl_gap"].tolist(),
           "kd_gap_median": np.median(e3["kd_gap"], axis=1).tolist(),
           "kd_gap_max": np.max(e3["kd_gap"], axis=1).tolist(),
           "bound": np.ravel(e3["bound"]).tolist(), "violations": np.ravel(e3["violations"]).tolist()}
  meta = dict(id=ID, claims=list(CLAIMS), seed=cfg.seed, e2_dir=cfg.e2_dir, e3_dir=cfg.e3_dir,
              e2_layers=int(log_eta.shape[1]))
  return dict(meta=meta, tables=dict(prompts=prompts, heads=heads, decay=decay))


@style.styled
def make(results: dict):
  """E2 scatter; E3 norms and gaps against the weight decay."""
  p, h, d = (table(results, t) for t in ("prompts", "heads", "decay"))
  fig, axes = style.figure(1, 3, height=3.3)
  ax = axes[0, 0]
  ax.scatter(p["log_eta_last_layer"], p["order_sensitivity"], s=9, color=style.PALETTE["blue"],
             label="test prompts", rasterized=True)
  last = results["meta"]["e2_layers"] - 1
  ax.set_xlabel(f"$\\log\\eta^*$ at the query\n(last layer L{last}; layers from L0)")
  ax.set_ylabel("order sensitivity (std of prediction)")
  ax.set_title("(a) E2: $\\eta^*$ vs order sensitivity", loc="left")
  rhos = "\n".join(f"L{int(l)}H{int(k)}: Spearman $\\rho$ = {r:.2f} [{lo:.2f}, {hi:.2f}]"
                   for l, k, r, lo, hi in zip(h["layer"], h["head"], h["rho_order"],
                                              h["rho_order_lo"], h["rho_order_hi"]))
  ax.text(0.5, -0.34, rhos, transform=ax.transAxes, ha="center", va="top",
          fontsize=style.RC["legend.fontsize"])
  wd = np.maximum(d["weight_decay"], 1e-3)
  ax = axes[0, 1]
  for i, (col, lab) in enumerate((("norm_q", "$\\|W^Q\\|_F$"), ("norm_k", "$\\|W^K\\|_F$"),
                                  ("norm_v", "$\\|W^V\\|_F$"))):
    ax.plot(wd, d[col], marker=style.MARKERS[i], color=style.CYCLE[i], label=lab)
  ax.set_xscale("log")
  ax.set_xlabel("weight decay on $W^K, W^V$\n(0 drawn at $10^{-3}$)")
  ax.set_ylabel("Frobenius norm")
  ax.set_title("(b) E3: decay shrinks the norms", loc="left")
  style.legend_below(ax, bbox_to_anchor=(0.5, -0.32))
  ax = axes[0, 2]
  ax.plot(wd, d["bound"], marker="D", color=style.PALETTE["vermillion"], label="C4 bound")
  ax.plot(wd, np.maximum(d["kd_gap_max"], 1e-12), marker="o", color=style.PALETTE["blue"],
          label="KD gap $L - \\hat L$ of $W_0$, max")
  ax.plot(wd, np.abs(d["icl_gap"]), marker="s", color=style.PALETTE["green"],
          label="|ICL test - train MSE|")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("weight decay on $W^K, W^V$\n(0 drawn at $10^{-3}$)")
  ax.set_ylabel("gap")
  ax.set_title("(c) E3: gaps vs C4 bound", loc="left")
  style.legend_below(ax, bbox_to_anchor=(0.5, -0.32))
  fig.suptitle("F7. Experiments E2 (learning-rate proxy) and E3 (weight-norm intervention)")
  return fig
