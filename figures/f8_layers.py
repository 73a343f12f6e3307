"""F8 (E4): beyond one layer.

From ``python -m icl_kd.experiments E4`` (run when missing), for a trained
multi-layer, multi-head transformer:
(a) per (layer, head) the C1 residual |h - (W_0 + dW) phi(W^Q x')| / |h|
    (an identity: float64 rounding) and the agreement of the decomposed
    head with the head inside the model (the model's float precision);
(b) per (layer, head) the mean log eta* and attention entropy;
    layers and heads are numbered from 0 (L0H0 = the first head of the first layer);
(c) the relative squared distance of the whole model from one distilled KD
    step (a single softmax layer fit to the model), and the ICL errors.
"""

from __future__ import annotations

import numpy as np

from figures import experiment_results, head_columns, results_config, style, table

ID, SLUG, CLAIMS = "F8", "layers", ("E4", "thm3.1")


Config, config = results_config(__name__, results_dir="E4")


def compute(cfg: Config) -> dict:
  """Per-head residuals, eta*, entropy; the distance to one KD step and ICL errors."""
  a, summary = experiment_results("E4", results_dir=cfg.results_dir, seed=cfg.seed,
                                  quick=cfg.quick,
                                  overrides=dict(train_steps=40, d_model=16, n_test=8))
  n_l, n_h = a["residual"].shape
  heads = {**head_columns(n_l, n_h),
           "residual": a["residual"].ravel().tolist(), "consistency": a["consistency"].ravel().tolist(),
           "log_eta": a["log_eta"].ravel().tolist(), "entropy": a["entropy"].ravel().tolist()}
  mse = {k: v for k, v in summary.items() if "mse" in k}
  meta = dict(id=ID, claims=list(CLAIMS), seed=cfg.seed, results_dir=cfg.results_dir,
              distance_to_one_step=float(np.ravel(a["distance_to_one_step"])[0]),
              icl_mse=summary.get("icl_mse", mse), experiment_config=summary.get("config"))
  return dict(meta=meta, tables=dict(heads=heads))


@style.styled
def make(results: dict):
  """Per-head bars of the C1 residual, eta*, entropy; the one-step distance annotated."""
  meta, h = results["meta"], table(results, "heads")
  labels = [f"L{int(l)}H{int(k)}" for l, k in zip(h["layer"], h["head"])]
  x = np.arange(len(labels))
  fig, axes = style.figure(1, 3, height=3.0)
  ax = axes[0, 0]
  ax.bar(x - 0.2, np.maximum(h["residual"], 1e-18), 0.4, color=style.PALETTE["blue"],
         label="C1 residual (float64)")
  ax.bar(x + 0.2, np.maximum(h["consistency"], 1e-18), 0.4, color=style.PALETTE["orange"],
         label="decomposed vs in-model head")
  ax.set_yscale("log")
  ax.set_xticks(x, labels)
  ax.set_xlabel("layer L, head H (from 0: L0 = first layer)")
  ax.set_ylabel("max relative error over prompts")
  ax.set_title("(a) C1 holds in every head", loc="left")
  style.legend_below(ax)
  ax = axes[0, 1]
  ax.bar(x - 0.2, h["log_eta"], 0.4, color=style.PALETTE["green"], label="mean $\\log\\eta^*$")
  ax.bar(x + 0.2, h["entropy"], 0.4, color=style.PALETTE["purple"], label="mean entropy (nats)")
  ax.axhline(0, color=style.REFERENCE, lw=0.8)
  ax.set_xticks(x, labels)
  ax.set_xlabel("layer L, head H (from 0)")
  ax.set_ylabel("$\\log\\eta^*$ / entropy")
  ax.set_title("(b) implicit learning rate per head", loc="left")
  style.legend_below(ax)
  ax = axes[0, 2]
  mse = meta["icl_mse"]
  names = list(mse)
  vals = [mse[n] for n in names]
  ax.barh(np.arange(len(names)), vals, color=style.PALETTE["sky"])
  for j, v in enumerate(vals):
    ax.text(v, j, f" {v:.2g}", va="center", ha="left", fontsize=style.RC["legend.fontsize"])
  ax.set_yticks(np.arange(len(names)), [n.replace("_", " ") for n in names])
  ax.set_xscale("log")
  ax.set_xlim(right=max(vals) * 1e3)
  ax.set_xlabel("ICL mean squared error\n"
                f"distance to one KD step $E(f - f_1)^2/E f^2$ = {meta['distance_to_one_step']:.3g}")
  ax.set_title("(c) whole model vs one KD step", loc="left")
  fig.suptitle("F8. Experiment E4: C1 per layer and head of a trained transformer")
  return fig
