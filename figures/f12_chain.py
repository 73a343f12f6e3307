"""F12 (E7): the paper's practical claim, link by link, on the trained layer and SmolLM2.

From ``python -m icl_kd.experiments chain`` (the trained layer of E1, Gaussian and
bounded inputs; run when its results are missing) and, when present,
``results/llm/llm.json`` (SmolLM2-135M, rotated and un-rotated anchors):
(a) the four links at the headline kernel and estimator (normalised kernel,
    unbiased; all layers): within-group Spearman rho with its task-cluster
    bootstrap interval (expected: positive for MMD -> bias and bias -> output,
    negative for the links to the answer);
(b) MMD -> answer by kernel and estimator (unbiased: circles, biased: squares);
(c) how often the paper's literal Theorem 4.1 is violated on these heads and
    demonstration sets, per reading, under the eq12 (c = 2) and half (c = 1)
    conventions; the proved bound ``thm4.1-bound`` holds on every resolved
    (set, head) (its count is in the title).
"""

from __future__ import annotations

import json
import os

import numpy as np

from figures import experiment_results, results_config, style, table

ID, SLUG, CLAIMS = "F12", "chain", ("E7",)
LINKS = ("mmd_bias", "bias_output", "output_answer", "mmd_answer")
KERNELS = ("normalised", "k_V", "k_x", "gaussian")
READINGS = ("gaussian", "softmax", "normalised", "tv")


Config, config = results_config(__name__, results_dir="chain", llm_dir="llm")


def _docs(cfg: Config) -> list:
  _, chain = experiment_results("chain", results_dir=cfg.results_dir, seed=cfg.seed,
                                quick=cfg.quick, overrides=dict(n_trials=6, train_steps=60),
                                figure=ID)
  docs = [chain]
  js = os.path.join(cfg.llm_dir, "llm.json")
  if os.path.exists(js):
    with open(js) as f:
      doc = json.load(f)
    if bool(doc.get("quick")) == bool(cfg.quick) and int(doc.get("seed", -1)) == cfg.seed:
      from icl_kd import runtime
      runtime.log(f"[figures] {ID} also draws from {js}")
      docs.append(doc)
  return docs


def compute(cfg: Config) -> dict:
  """The headline links, MMD -> answer per kernel/estimator, literal violation rates."""
  docs = _docs(cfg)
  links = [lk for d in docs for lk in d["links"]]
  keys = list(dict.fromkeys(f"{lk['model']}/{lk['construction']}" for lk in links))

  def top(lk):
    return lk["layer"] == "all" or (lk["layer"] == 0 and lk["model"] == "trained")

  head = {"construction": [], "link": [], "rho": [], "lo": [], "hi": [], "groups": []}
  for lk in links:
    if top(lk) and lk["kernel"] in ("normalised", None) and lk["estimator"] in ("unbiased", None):
      head["construction"].append(f"{lk['model']}/{lk['construction']}")
      head["link"].append(lk["link"])
      for f in ("rho", "lo", "hi", "groups"):
        head[f].append(lk[f])
  ans = {"construction": [], "kernel": [], "kind": [], "rho": [], "lo": [], "hi": []}
  for lk in links:
    if top(lk) and lk["link"] == "mmd_answer":
      ans["construction"].append(f"{lk['model']}/{lk['construction']}")
      ans["kernel"].append(lk["kernel"])
      ans["kind"].append(lk["estimator"])
      for f in ("rho", "lo", "hi"):
        ans[f].append(lk[f])
  lit = {"construction": [], "reading": [], "rate_eq12": [], "rate_half": []}
  for d in docs:
    for r in d["literal"]:
      lit["construction"].append(f"{r['model']}/{r['construction']}")
      lit["reading"].append(r["reading"])
      lit["rate_eq12"].append(r["rate_eq12"])
      lit["rate_half"].append(r["rate_half"])
  pb = [d["proved_bound"] for d in docs]
  meta = dict(id=ID, claims=list(CLAIMS), seed=cfg.seed, results_dir=cfg.results_dir,
              constructions=keys, bound_checked=int(sum(p["checked"] for p in pb)),
              bound_violations=int(sum(p["violations"] for p in pb)),
              quick=bool(cfg.quick or docs[0].get("quick", False)))
  return dict(meta=meta, tables=dict(headline=head, answer=ans, literal=lit))


@style.styled
def make(results: dict):
  """Headline links; MMD -> answer per kernel and estimator; literal violation rates."""
  meta = results["meta"]
  hd, an, li = (table(results, n) for n in ("headline", "answer", "literal"))
  keys = meta["constructions"]
  fig, axes = style.figure(1, 3, height=3.6)
  ax = axes[0, 0]
  for i, key in enumerate(keys):
    for j, link in enumerate(LINKS):
      m = (hd["construction"] == key) & (hd["link"] == link)
      if m.any():
        r, lo, hi = hd["rho"][m][0], hd["lo"][m][0], hd["hi"][m][0]
        ax.errorbar(j + (i - (len(keys) - 1) / 2) * 0.18, r, yerr=[[r - lo], [hi - r]],
                    fmt=style.MARKERS[i], color=style.CYCLE[i], capsize=2,
                    label=key if j == 0 else None)
  ax.axhline(0.0, color=style.REFERENCE, lw=0.8)
  ax.set_xticks(np.arange(4), ["MMD$\\to$bias", "bias$\\to$out", "out$\\to$answer",
                               "MMD$\\to$answer"], rotation=20, ha="right")
  ax.set_ylabel("Spearman $\\rho$ within groups, 95% CI")
  ax.set_title("(a) the links (normalised, unbiased)", loc="left")
  style.legend_below(ax, ncols=2, bbox_to_anchor=(0.5, -0.3))
  ax = axes[0, 1]
  for i, key in enumerate(keys):
    for e, mk in (("unbiased", "o"), ("biased", "s")):
      m = (an["construction"] == key) & (an["kind"] == e)
      xs = np.array([KERNELS.index(k) for k in an["kernel"][m]]) + (i - (len(keys) - 1) / 2) * 0.18
      r = an["rho"][m]
      ax.errorbar(xs + (0.04 if e == "biased" else -0.04), r,
                  yerr=[r - an["lo"][m], an["hi"][m] - r], fmt=mk, color=style.CYCLE[i],
                  capsize=1.5, ms=3.5, mfc="white" if e == "biased" else style.CYCLE[i])
  ax.axhline(0.0, color=style.REFERENCE, lw=0.8)
  ax.set_xticks(np.arange(4), ["norm.", "$k_V$", "$k_x$", "Gauss."])
  ax.set_ylabel("Spearman $\\rho$(MMD$^2$, answer)")
  ax.set_title("(b) MMD$\\to$answer", loc="left")
  ax.set_xlabel("filled: unbiased")
  ax = axes[0, 2]
  width = 0.8 / max(1, len(keys))
  for i, key in enumerate(keys):
    m = li["construction"] == key
    xs = np.array([READINGS.index(r) for r in li["reading"][m]]) + (i - (len(keys) - 1) / 2) * width
    ax.bar(xs, 100 * li["rate_eq12"][m], width, color=style.CYCLE[i], label=key)
    ax.bar(xs, 100 * li["rate_half"][m], width * 0.5, color="white", edgecolor=style.CYCLE[i],
           hatch="///")
  ax.set_xticks(np.arange(4), ["Gauss.", "softmax", "norm.", "TV"], rotation=35, ha="right")
  ax.set_ylabel("violated (%): eq12 bars, half hatched")
  ax.set_title("(c) literal Theorem 4.1", loc="left")
  ax.set_xlabel(f"proved bound: {meta['bound_violations']} of {meta['bound_checked']:,} violated")
  fig.suptitle("F12. Experiment E7: MMD $\\to$ bias $\\to$ head output $\\to$ answer")
  return fig
