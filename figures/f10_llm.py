"""F10 (a real causal LM doing in-context learning): SmolLM2-135M, C1, accuracy, E1, E6.

From ``python -m icl_kd.experiments llm`` (run when its results are missing):
(a) the C1 relative error per (layer, head) in float64 at the answer position
    of real few-shot prompts, max over prompts (all 270 heads);
(b) exact match against the number of demonstrations k, per task and the mean
    over tasks with its 95% bootstrap interval;
(c) E1: accuracy and gold log-probability of each demonstration-selection rule
    (same queries under every rule);
(d) E6: accuracy and MMD_kV^2 (relative to f = 0) as a fraction f of the
    demonstrations comes from another task.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np

from figures import Skipped, experiment_results, head_columns, results_config, style, table

ID, SLUG, CLAIMS = "F10", "llm", ("thm3.1", "lr-proxy")
# A quick figure runs less than the experiment's own --quick: two tasks, k in (0, 2), two
# queries, a tiny E1 / E6 (a full figure reads the full run: these do not apply to it).
QUICK_OVERRIDES = dict(tasks=("antonym", "plural"), ks=(0, 2), n_queries=2, c1_k=2, e1_queries=2,
                       e1_pool_task=3, e1_pool_other=3, e1_k=2, e6_k=2, e6_fractions=(0.0, 1.0),
                       e6_queries=2, n_boot=50)


Config, config = results_config(__name__, results_dir="llm")


def compute(cfg: Config) -> dict:
  """Per-head C1 errors, accuracy against k, E1 rules and the E6 curve from the saved run."""
  have = os.path.exists(os.path.join(cfg.results_dir, "llm.npz"))
  if not have:
    from icl_kd.llm import loader
    try:
      loader.bundled_path()
    except ModuleNotFoundError as e:
      raise Skipped(f"no results in {cfg.results_dir} and {e}") from e
    if importlib.util.find_spec("gguf") is None:
      raise Skipped(f"no results in {cfg.results_dir} and reading the model needs the 'gguf' "
                    f"package: {loader.EXTRA_INSTALL}")
  a, _ = experiment_results("llm", results_dir=cfg.results_dir, seed=cfg.seed, quick=cfg.quick,
                            overrides=QUICK_OVERRIDES)
  with open(os.path.join(cfg.results_dir, "llm.json")) as f:
    doc = json.load(f)
  s = doc["summary"]
  err = a["c1_err_f64"].max(axis=0)                                         # (L, H)
  n_l, n_h = err.shape
  heads = {**head_columns(n_l, n_h), "c1_err_f64": err.ravel().tolist(),
           "c1_err_f32": a["c1_err_f32"].max(axis=0).ravel().tolist(),
           "c1_tol_ratio_f64": a["c1_tol_ratio_f64"].max(axis=0).ravel().tolist(),
           "sink_share": np.median(a["c1_sink_share"], axis=0).ravel().tolist()}
  acc = {"task": [], "k": [], "accuracy": [], "lo": [], "hi": []}
  for task, per_k in list(s["accuracy"].items()) + [("mean", s["accuracy_mean_over_tasks"])]:
    for k, v in per_k.items():
      acc["task"].append(task)
      acc["k"].append(int(k))
      acc["accuracy"].append(float(v["accuracy"]))
      acc["lo"].append(float(v["lo"]))
      acc["hi"].append(float(v["hi"]))
  rules = {"rule": [], "accuracy": [], "logprob": [], "own_fraction": []}
  for r, v in s["e1"]["rules"].items():
    rules["rule"].append(r)
    rules["accuracy"].append(float(v["accuracy"]))
    rules["logprob"].append(float(v["logprob"]))
    rules["own_fraction"].append(float(v["own_fraction"]))
  e6 = {"f": [], "accuracy": [], "logprob": [], "mmd_kv2": []}
  for f, v in s["e6"]["by_fraction"].items():
    e6["f"].append(float(f))
    e6["accuracy"].append(float(v["accuracy"]))
    e6["logprob"].append(float(v["logprob"]))
    e6["mmd_kv2"].append(float(v["mmd_kv2"]))
  sp = s["e1"]["spearman"]["mmd_kv2_vs_accuracy"]
  meta = dict(id=ID, claims=list(CLAIMS), seed=cfg.seed, results_dir=cfg.results_dir,
              layers=n_l, heads=n_h, max_c1_err_f64=float(err.max()),
              max_c1_tol_ratio_f64=float(a["c1_tol_ratio_f64"].max()),
              e1_spearman_mmd_kv_accuracy=[sp["rho"], sp["lo"], sp["hi"]],
              model="SmolLM2-135M-Instruct (Q4_1)")
  return dict(meta=meta, tables=dict(heads=heads, accuracy=acc, e1=rules, e6=e6))


@style.styled
def make(results: dict):
  """C1 heat map, accuracy against k, E1 rules, E6 curve."""
  meta = results["meta"]
  h, acc, e1, e6 = (table(results, n) for n in ("heads", "accuracy", "e1", "e6"))
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
  x = np.arange(len(e1["rule"]))
  ax.bar(x - 0.2, e1["accuracy"], 0.4, color=style.PALETTE["blue"], label="exact match")
  ax.bar(x + 0.2, e1["own_fraction"], 0.4, color=style.PALETTE["sky"],
         label="same-task demos (fraction)")
  short = {"mmd_kv": "MMD$_{kV}$", "mmd_gauss": "Gauss.\nMMD", "retrieval": "retr.",
           "random_task": "random\ntask", "random_pool": "random\npool"}
  ax.set_xticks(x, [short.get(r, r) for r in e1["rule"]], fontsize="x-small")
  ax.set_ylim(0, 1.05)
  ax2 = ax.twinx()
  ax2.plot(x, e1["logprob"], "D", color=style.PALETTE["vermillion"], label="gold log-prob")
  ax2.set_ylabel("gold log-probability")
  rho = meta["e1_spearman_mmd_kv_accuracy"]
  ax.set_title("(c) E1: choosing demonstrations", loc="left")
  ax.set_xlabel(f"Spearman(MMD$_{{kV}}^2$, exact match)\n"
                f"= {rho[0]:.2f} [{rho[1]:.2f}, {rho[2]:.2f}]")
  lines = [c for c in ax.containers] + ax2.get_lines()
  ax.legend(lines, [c.get_label() for c in lines], loc="upper center", ncol=2, fontsize="x-small",
            bbox_to_anchor=(0.5, -0.36), frameon=False)
  ax = axes[0, 3]
  ax.plot(e6["f"], e6["accuracy"], "o-", color=style.PALETTE["blue"], label="exact match")
  ax.set_xlabel("fraction f from another task")
  ax.set_ylabel("exact match")
  ax.set_ylim(-0.02, 1.02)
  ax2 = ax.twinx()
  ax2.plot(e6["f"], e6["mmd_kv2"] / e6["mmd_kv2"][0], "s--", color=style.PALETTE["orange"],
           label="MMD$_{kV}^2$ / (f = 0)")
  ax2.set_ylabel("MMD$_{kV}^2$ relative to f = 0")
  ax.set_title("(d) E6: interference", loc="left")
  lines = ax.get_lines() + ax2.get_lines()
  ax.legend(lines, [ln.get_label() for ln in lines], loc="upper center", ncol=2,
            fontsize="x-small", bbox_to_anchor=(0.5, -0.2), frameon=False)
  fig.suptitle(f"F10. {meta['model']} doing in-context learning:\nC1 on all "
               f"{meta['layers'] * meta['heads']} heads (max error {meta['max_c1_err_f64']:.0e}), "
               "accuracy, E1, E6")
  return fig
