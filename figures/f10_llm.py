"""F10 (a real causal LM doing in-context learning): SmolLM2-135M, C1, accuracy, selection, E7.

From ``python -m icl_kd.experiments llm`` (run when its results are missing; the
figure reads only its summary, ``llm.json``):
(a) the C1 relative error per (layer, head) in float64 at the answer position
    of real few-shot prompts, max over prompts (all 270 heads);
(b) exact match against the number of demonstrations k, per task and the mean
    over tasks with its 95% bootstrap interval;
(c) selection: exact match of each rule (hatched: oracle rules, which see the
    target's labels or know the task) and its gold log-probability, the same
    queries under every rule;
(d) the E7 chain per layer (normalised kernel, unbiased estimator, rotated
    anchors): the within-group Spearman rho of each link with its task-cluster
    bootstrap interval (the links to the answer are expected negative).
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np

from figures import Skipped, experiment_results, head_columns, results_config, style, table

ID, SLUG, CLAIMS = "F10", "llm", ("thm3.1", "lr-proxy")
# A quick figure runs less than the experiment's own --quick: two tasks, k in (0, 2), two
# queries, a tiny selection design (a full figure reads the full run: these do not apply to it).
QUICK_OVERRIDES = dict(tasks=("antonym", "plural"), ks=(0, 2), n_queries=2, c1_k=2, k=2,
                       trial_queries=2, n_target=2, pool_task=3, pool_other=3,
                       fractions=(0.0, 1.0), layers=(0, 15), n_boot=50)
LINKS = ("mmd_bias", "bias_output", "output_answer", "mmd_answer")
SHORT = {"mmd_normalised": "MMD norm.", "mmd_kv": "MMD $k_V$", "mmd_kv_biased": "MMD $k_V$ b",
         "mmd_kv_unrotated": "$k_V$ unrot.", "mmd_deployable": "deployable", "gaussian": "Gauss.",
         "retrieval": "retrieval", "random_task": "rand. task", "random_pool": "rand. pool"}


Config, config = results_config(__name__, results_dir="llm")


def compute(cfg: Config) -> dict:
  """Per-head C1 errors, accuracy against k, the rules and the per-layer links of llm.json."""
  js = os.path.join(cfg.results_dir, "llm.json")
  if not os.path.exists(js):
    from icl_kd.llm import loader
    try:
      loader.bundled_path()
    except ModuleNotFoundError as e:
      raise Skipped(f"no results in {cfg.results_dir} and {e}") from e
    if importlib.util.find_spec("gguf") is None:
      raise Skipped(f"no results in {cfg.results_dir} and reading the model needs the 'gguf' "
                    f"package: {loader.EXTRA_INSTALL}")
    experiment_results("llm", results_dir=cfg.results_dir, seed=cfg.seed, quick=cfg.quick,
                       overrides=QUICK_OVERRIDES, figure=ID)
  with open(js) as f:
    s = json.load(f)
  if bool(s.get("quick")) != bool(cfg.quick) or int(s.get("seed", cfg.seed)) != cfg.seed:
    import figures
    raise figures.MismatchedResults(
        f"{js} holds a {'quick' if s.get('quick') else 'full'} run of llm with seed "
        f"{s.get('seed')}, but this figure needs a {'quick' if cfg.quick else 'full'} run with "
        f"seed {cfg.seed}")
  from icl_kd import runtime
  runtime.log(f"[figures] {ID} draws from {js}")
  err = np.asarray(s["c1"]["per_head_max_err_f64"])                       # (L, H)
  n_l, n_h = err.shape
  heads = {**head_columns(n_l, n_h), "c1_err_f64": err.ravel().tolist(),
           "c1_err_f32": np.asarray(s["c1"]["per_head_max_err_f32"]).ravel().tolist(),
           "c1_tol_ratio_f64": np.asarray(s["c1"]["per_head_max_tol_ratio_f64"]).ravel().tolist(),
           "sink_share": np.asarray(s["c1"]["per_head_median_sink_share"]).ravel().tolist()}
  acc = {"task": [], "k": [], "accuracy": [], "lo": [], "hi": []}
  for task, per_k in list(s["accuracy"].items()) + [("mean", s["accuracy_mean_over_tasks"])]:
    for k, v in per_k.items():
      acc["task"].append(task)
      acc["k"].append(int(k))
      for f in ("accuracy", "lo", "hi"):
        acc[f].append(float(v[f]))
  rules = {"rule": [], "oracle": [], "exact_match": [], "logprob": [], "own_fraction": []}
  for r in s["selection"]["rules"]:
    rules["rule"].append(r["name"])
    rules["oracle"].append(bool(r["oracle"]))
    for f in ("exact_match", "logprob", "own_fraction"):
      rules[f].append(float(r[f]))
  sweep = {"layer": [], "link": [], "rho": [], "lo": [], "hi": []}
  for lk in s["links"]:
    if (lk["construction"] == "rotated" and lk["layer"] != "all" and lk["link"] in LINKS
        and lk["kernel"] in ("normalised", None) and lk["estimator"] in ("unbiased", None)):
      sweep["layer"].append(int(lk["layer"]))
      sweep["link"].append(lk["link"])
      for f in ("rho", "lo", "hi"):
        sweep[f].append(float(lk[f]))
  head = next(r for r in s["selection"]["rules"] if r["name"] == "mmd_normalised")
  d = head["minus_retrieval_em"]
  meta = dict(id=ID, claims=list(CLAIMS), seed=cfg.seed, results_dir=cfg.results_dir,
              layers=n_l, heads=n_h, max_c1_err_f64=float(err.max()),
              max_c1_tol_ratio_f64=float(s["c1"]["max_tol_ratio_f64"]),
              headline_diff=[d["mean"], d["lo"], d["hi"]],
              headline_layer=int(s["headline_layer"]), model="SmolLM2-135M-Instruct (Q4_1)")
  return dict(meta=meta, tables=dict(heads=heads, accuracy=acc, rules=rules, sweep=sweep))


@style.styled
def make(results: dict):
  """C1 heat map, accuracy against k, the selection rules, the chain per layer."""
  meta = results["meta"]
  h, acc, ru, sw = (table(results, n) for n in ("heads", "accuracy", "rules", "sweep"))
  fig, axes = style.figure(2, 2, height=7.0)
  axes = axes.reshape(1, 4)
  ax = axes[0, 0]
  style.c1_heat_map(fig, ax, h["c1_err_f64"], meta["layers"], meta["heads"], layer_step=5,
                    xlabel="query head (0 = first)")
  ax = axes[0, 1]
  tasks = [t for t in dict.fromkeys(acc["task"].tolist()) if t != "mean"]
  ks = np.unique(acc["k"])
  pos = {int(k): i for i, k in enumerate(ks)}
  xk = np.array([pos[int(k)] for k in acc["k"]])
  for i, t in enumerate(tasks):
    m = acc["task"] == t
    ax.plot(xk[m], acc["accuracy"][m], "-", color=style.CYCLE[i % len(style.CYCLE)],
            alpha=0.45, lw=1, label=t.replace("_", " "))
  m = acc["task"] == "mean"
  ax.fill_between(xk[m], acc["lo"][m], acc["hi"][m], color="0.8", alpha=0.6)
  ax.plot(xk[m], acc["accuracy"][m], "o-", color="black", lw=2, label="mean (95% CI)")
  ax.set_xticks(range(len(ks)), [str(int(k)) for k in ks])
  ax.set_xlabel("demonstrations k")
  ax.set_ylabel("exact match")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title("(b) in-context learning", loc="left")
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize="x-small", ncol=3,
            frameon=False)
  ax = axes[0, 2]
  y = np.arange(len(ru["rule"]))[::-1]
  bars = ax.barh(y, ru["exact_match"], 0.6, color=style.PALETTE["blue"], label="exact match")
  for b, o in zip(bars, np.asarray(ru["oracle"], bool)):
    if o:
      b.set_hatch("///")
  ax.set_yticks(y, [SHORT.get(r, r) for r in ru["rule"]], fontsize="x-small")
  ax.set_xlim(0, 1.05)
  ax.set_xlabel("exact match")
  ax2 = ax.twiny()
  ax2.plot(ru["logprob"], y, "D", color=style.PALETTE["vermillion"], label="gold log-prob")
  ax2.set_xlabel("gold log-probability")
  d = meta["headline_diff"]
  ax.set_title(f"(c) selection, layer {meta['headline_layer']}\n(hatched: oracle; norm. minus "
               f"retrieval {d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}])", loc="left",
               fontsize="small")
  marks = [bars, ax2.get_lines()[0]]
  ax.legend(marks, ["exact match", "gold log-probability"], loc="upper center", ncol=2,
            fontsize="x-small", bbox_to_anchor=(0.5, -0.2), frameon=False)
  ax = axes[0, 3]
  for i, link in enumerate(LINKS):
    m = sw["link"] == link
    lay = sw["layer"][m] + (i - 1.5) * 0.35
    ax.errorbar(lay, sw["rho"][m], yerr=[sw["rho"][m] - sw["lo"][m], sw["hi"][m] - sw["rho"][m]],
                fmt=style.MARKERS[i] + "-", color=style.CYCLE[i], capsize=1.5, lw=0.8, ms=3,
                label=link.replace("_", " $\\to$ "))
  ax.axhline(0.0, color=style.REFERENCE, lw=0.8)
  ax.set_xlabel("layer (0 = first)")
  ax.set_ylabel("Spearman $\\rho$ within groups, 95% CI")
  ax.set_title("(d) E7 links per layer (norm., unbiased)", loc="left")
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize="x-small", ncol=2,
            frameon=False)
  fig.suptitle(f"F10. {meta['model']} doing in-context learning:\nC1 on all "
               f"{meta['layers'] * meta['heads']} heads (max error {meta['max_c1_err_f64']:.0e}), "
               "accuracy, selection, the chain")
  return fig
