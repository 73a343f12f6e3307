"""F9 (real pretrained attention): C1, C7 and C5 on every head of all-MiniLM-L6-v2.

From ``python -m icl_kd.experiments real`` (run when its results are missing):
(a) the C1 relative error per (layer, head) in float64 at the last token,
    max over sequences (a heat map; the identity holds at rounding level);
    layers and heads are numbered from 0 (layer 0 = the first encoder layer);
(b) log D' at the last token per domain, over every sequence and head (C7);
(c) C5 on real heads: ||W_0(P) - W_0(Q)||_HS against 2 eta MMD_kV(P, Q) for
    every head and ordered domain pair, on the identity line.
"""

from __future__ import annotations

import os

import numpy as np

from figures import Skipped, experiment_results, head_columns, results_config, style, table

ID, SLUG, CLAIMS = "F9", "real", ("thm3.1", "lr-proxy", "thm4.1-identity")


Config, config = results_config(__name__, results_dir="real")


def compute(cfg: Config) -> dict:
  """Per-head C1 errors, per-domain log D' quantiles and the per-head C5 pairs."""
  if not os.path.exists(os.path.join(cfg.results_dir, "real.npz")):
    from icl_kd import pretrained
    try:
      pretrained.minilm_path()
    except ModuleNotFoundError as e:
      raise Skipped(f"no results in {cfg.results_dir} and {e}") from e
  if cfg.quick and not os.path.exists(os.path.join(cfg.results_dir, "real.npz")):
    # smaller than the experiment's own --quick: one length bucket, 4 sentences per domain
    import jax
    from icl_kd.experiments import real
    from icl_kd.experiments import run_info
    tiny = real.QUICK._replace(sentences_per_domain=4, buckets=(12,), c5_tokens=32,
                               progress=False)
    res = real.run(tiny, key=jax.random.key(cfg.seed))
    real.save(res, cfg.results_dir, info=run_info(real, tiny, seed=cfg.seed, quick=True))
  a, summary = experiment_results("real", results_dir=cfg.results_dir, seed=cfg.seed,
                                  quick=cfg.quick)
  import json
  with open(os.path.join(cfg.results_dir, "real.json")) as f:
    doc = json.load(f)
  domains = [str(d) for d in doc.get("domains", doc.get("config", {}).get("domains", []))]
  err = a["c1_err_f64"][0]                                    # (L, H), query "last"
  n_l, n_h = err.shape
  heads = {**head_columns(n_l, n_h), "c1_err_f64": err.ravel().tolist(),
           "c1_err_f32": a["c1_err_f32"][0].ravel().tolist(),
           "c1_tol_ratio_f64": a["c1_tol_ratio_f64"][0].ravel().tolist()}
  log_z = a["log_partition"][0]                              # (S, L, H)
  dom = a["domain_index"]
  by_domain = {"domain": [], "q10": [], "median": [], "q90": []}
  for i in np.unique(dom):
    v = log_z[dom == i].ravel()
    by_domain["domain"].append(domains[int(i)] if int(i) < len(domains) else f"domain {int(i)}")
    q10, q50, q90 = np.quantile(v, [0.1, 0.5, 0.9])
    by_domain["q10"].append(float(q10))
    by_domain["median"].append(float(q50))
    by_domain["q90"].append(float(q90))
  c5 = {"lhs": a["c5_hs_norm"].ravel().tolist(), "rhs": a["c5_two_eta_mmd"].ravel().tolist(),
        "rel_err": a["c5_rel_err"].ravel().tolist()}
  meta = dict(id=ID, claims=list(CLAIMS), seed=cfg.seed, results_dir=cfg.results_dir,
              layers=n_l, heads=n_h, max_c1_err_f64=float(err.max()),
              max_c1_err_f32=float(a["c1_err_f32"][0].max()),
              max_c5_rel_err=float(a["c5_rel_err"].max()), model="all-MiniLM-L6-v2")
  return dict(meta=meta, tables=dict(heads=heads, domains=by_domain, c5=c5))


@style.styled
def make(results: dict):
  """Heat map of the C1 error, log D' per domain, C5 scatter."""
  meta, h, d, c = (results["meta"], table(results, "heads"), table(results, "domains"),
                   table(results, "c5"))
  fig, axes = style.figure(1, 3, height=3.1)
  ax = axes[0, 0]
  style.c1_heat_map(fig, ax, h["c1_err_f64"], meta["layers"], meta["heads"])
  ax = axes[0, 1]
  y = np.arange(len(d["domain"]))
  ax.errorbar(d["median"], y, xerr=[d["median"] - d["q10"], d["q90"] - d["median"]], fmt="o",
              color=style.PALETTE["blue"], capsize=3, label="median, 10-90% (sequences x heads)")
  ax.set_yticks(y, [str(n).replace("_", " ") for n in d["domain"]])
  ax.set_xlabel("$\\log D'$ at the last token")
  ax.set_title("(b) C7: partition function", loc="left")
  style.legend_below(ax, bbox_to_anchor=(0.5, -0.22))
  ax = axes[0, 2]
  lo, hi = style.log_range(c["lhs"], c["rhs"])
  ax.scatter(c["rhs"], c["lhs"], s=6, color=style.PALETTE["green"], rasterized=True,
             label="head x domain pair")
  style.identity_line(ax, lo, hi)
  style.log_square(ax, lo, hi)
  ax.set_xlabel("$2\\eta\\,\\mathrm{MMD}_{k_V}(P,Q)$")
  ax.set_ylabel("$\\|W_0(P) - W_0(Q)\\|_{HS}$")
  ax.set_title("(c) C5 identity on real heads", loc="left")
  style.legend_below(ax, bbox_to_anchor=(0.5, -0.22))
  style.annotate(ax, f"max rel. error\n{meta['max_c5_rel_err']:.1e}")
  fig.suptitle(f"F9. Pretrained {meta['model']}: C1, C7, C5 on every head "
               f"(max C1 error {meta['max_c1_err_f64']:.0e} in float64)")
  return fig
