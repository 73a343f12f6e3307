"""The experiments' tables of the documentation site, from the committed result summaries.

    python -m icl_kd.experiments.report [--results results]

prints every table the site's experiment pages quote (E1, E6, E7 on the trained
layer in docs/verdicts.md; the language-model selection, interference and chain
in docs/real-models.md), each preceded by a comment line naming the file
(``results/*/*.json``) it was made from. ``tests/test_readme.py`` checks that
every one of them appears verbatim on those pages, so a rerun whose numbers
differ from the site's is seen by diffing this output, or by that test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

LINK_NAMES = {"mmd_bias": "MMD -> bias", "bias_output": "bias -> output gap",
              "output_answer": "output gap -> answer", "mmd_answer": "MMD -> answer"}
ORDER = ("mmd_bias", "bias_output", "output_answer", "mmd_answer")


def _read(results: str, run: str, name: str) -> dict | None:
  path = os.path.join(results, run, f"{name}.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _ci(c: dict, digits: int = 2) -> str:
  return f"{c['rho']:+.{digits}f} [{c['lo']:+.{digits}f}, {c['hi']:+.{digits}f}]"


def _diff(d: dict | None, digits: int = 3) -> str:
  if d is None:
    return "-"
  return f"{d['mean']:+.{digits}f} [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}]"


def _md(headers, rows) -> str:
  out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
  out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return "\n".join(out)


def e1_rules(doc: dict) -> str:
  """E1's rules: error, its difference from retrieval with the interval, the oracle flag."""
  rows = [[f"`{r['name']}`", "yes" if r["oracle"] else "no",
           f"{r['error_mean']:.3f} ± {r['error_se']:.3f}", _diff(r["minus_retrieval"]),
           f"{r['ridge_error_mean']:.3f}"] for r in doc["rules"]]
  return _md(["rule", "oracle", "error (mean ± SE)", "minus retrieval [95% CI]",
              "ridge, same prompts"], rows)


def e1_correlations(docs: dict) -> str:
  """Within-trial Spearman(MMD^2, error), per kernel and estimator, for each input variant."""
  keys = list(next(iter(docs.values()))["spearman_within_trial"])
  rows = [[k.replace("/", ", ")] + [_ci(d["spearman_within_trial"][k]) for d in docs.values()]
          for k in keys]
  return _md(["kernel, estimator"] + [f"{v} inputs" for v in docs], rows)


def e6_correlations(docs: dict) -> str:
  """E6's within-trial Spearman (f, MMD^2) and (MMD^2, error) for each input variant."""
  keys = list(next(iter(docs.values()))["spearman_f_mmd"])
  head = ["kernel, estimator"]
  for v in docs:
    head += [f"rho(f, MMD^2), {v}", f"rho(MMD^2, error), {v}"]
  rows = []
  for k in keys:
    row = [k.replace("/", ", ")]
    for d in docs.values():
      row += [_ci(d["spearman_f_mmd"][k]), _ci(d["spearman_mmd_error"][k])]
    rows.append(row)
  return _md(head, rows)


def _link(doc: dict, model: str, construction: str, link: str, layer, kernel: str,
          estimator: str) -> dict | None:
  for lk in doc["links"]:
    if (lk["model"] == model and lk["construction"] == construction and lk["link"] == link
        and lk["layer"] == layer and lk["kernel"] in (kernel, None)
        and lk["estimator"] in (estimator, None)):
      return lk
  return None


def chain_links(doc: dict, model: str, constructions, layer, *,
                pairs=(("normalised", "unbiased"), ("k_V", "unbiased"), ("k_V", "biased"),
                       ("gaussian", "unbiased"))) -> str:
  """The four links per kernel and estimator and construction: rho [CI] and the verdict."""
  rows = []
  for link in ORDER:
    for kernel, est in pairs:
      cells = []
      for c in constructions:
        lk = _link(doc, model, c, link, layer, kernel, est)
        cells.append("-" if lk is None else f"{_ci(lk)} {lk['verdict']}")
      label = (f"{LINK_NAMES[link]}" if link in ("bias_output", "output_answer") else
               f"{LINK_NAMES[link]} ({kernel}, {est})")
      rows.append([label] + cells)
      if link in ("bias_output", "output_answer"):
        break
  groups = {c: next((lk["groups"] for lk in doc["links"] if lk["model"] == model
                     and lk["construction"] == c), 0) for c in constructions}
  return _md(["link"] + [f"{c} ({groups[c]} groups)" for c in constructions], rows)


def bound_line(doc: dict) -> str:
  """The proved bound's and the literal readings' counts, one line."""
  pb = doc["proved_bound"]
  parts = []
  for m in pb["per_model"]:
    lit = [r for r in doc["literal"] if r["model"] == m["model"]
           and r["construction"] == m["construction"]]
    rates = ", ".join(f"{r['reading']} {100 * r['rate_eq12']:.1f}% / {100 * r['rate_half']:.1f}%"
                      for r in lit)
    parts.append(f"- {m['model']} ({m['construction']}): thm4.1-bound violated on "
                 f"{m['violations']} of {m['checked']:,} (set, head) instances (largest "
                 f"bias/bound {m['max_ratio']:.3f}; {m.get('unresolved', 0)} below float64 "
                 f"resolution, not checked); literal Theorem 4.1 violated (eq12 / half): {rates}")
  return "\n".join(parts)


def llm_accuracy(doc: dict) -> str:
  """Exact match against k per task, and the mean over tasks with its interval."""
  ks = list(doc["accuracy_mean_over_tasks"])
  rows = [[t] + [f"{v[k]['accuracy']:.2f}" for k in ks] for t, v in doc["accuracy"].items()]
  m = doc["accuracy_mean_over_tasks"]
  rows.append(["**mean**"] + [f"{m[k]['accuracy']:.2f} [{m[k]['lo']:.2f}, {m[k]['hi']:.2f}]"
                              for k in ks])
  return _md(["task"] + [f"k={k}" for k in ks], rows)


def llm_selection(doc: dict) -> str:
  """The language model's rules: exact match, log-probability, paired differences."""
  rows = [[f"`{r['name']}`", "yes" if r["oracle"] else "no", f"{r['exact_match']:.3f}",
           f"{r['logprob']:.2f}", f"{r['own_fraction']:.2f}", _diff(r["minus_retrieval_em"]),
           _diff(r["minus_retrieval_lp"], 2)] for r in doc["selection"]["rules"]]
  return _md(["rule", "oracle", "exact match", "gold log-prob", "same-task fraction",
              "EM minus retrieval [95% CI]", "log-prob minus retrieval [95% CI]"], rows)


def llm_power(doc: dict) -> str:
  """The power statement, one sentence."""
  p = doc["power"]
  return (f"Power: {p['groups']} groups in {p['clusters']} task clusters, {p['queries']} "
          f"queries each; the smallest paired difference detected with 80% power (two-sided "
          f"0.05, t-test on the task means) is {p['exact_match']:.3f} in exact match and "
          f"{p['logprob']:.2f} nats in log-probability for {p['comparison']} (median over the "
          f"rules against retrieval: {p['exact_match_median']:.3f} and "
          f"{p['logprob_median']:.2f}).")


def llm_sweep(doc: dict) -> str:
  """Per layer: the four links (normalised kernel, unbiased; rotated anchors)."""
  rows = []
  for layer in list(doc["layers"]) + ["all"]:
    cells = []
    for link in ORDER:
      lk = _link(doc, "smollm2", "rotated", link, layer, "normalised", "unbiased")
      cells.append("-" if lk is None else _ci(lk))
    rows.append([str(layer)] + cells)
  return _md(["layer"] + [LINK_NAMES[k] for k in ORDER], rows)


def llm_interference(doc: dict) -> str:
  """The mixture sets against f."""
  itf = doc["interference"]
  rows = [[f"{r['f']:g}", f"{r['exact_match']:.3f}", f"{r['logprob']:.2f}",
           f"{r['mmd2_normalised']:.3g}", f"{r['mmd2_kv']:.3g}", f"{r['mmd2_kv_biased']:.3g}"]
          for r in itf["rows"]]
  table = _md(["f", "exact match", "gold log-prob", "normalised MMD^2 (u)", "MMD_kV^2 (u)",
               "MMD_kV^2 (b)"], rows)
  fm = itf["f_mmd"]
  line = (f"Within groups: Spearman(f, log-prob) {_ci(itf['f_logprob'])}; (f, normalised "
          f"MMD^2, unbiased) {_ci(fm['normalised/unbiased'])}; (f, MMD_kV^2, unbiased) "
          f"{_ci(fm['k_V/unbiased'])}; (f, MMD_kV^2, biased) {_ci(fm['k_V/biased'])}.")
  return table + "\n\n" + line


def sections(results: str = "results") -> dict:
  """name -> (source files, markdown) of every table that can be made from ``results``."""
  out = {}
  e1 = {v: _read(results, run, "E1") for v, run in (("gaussian", "E1"), ("ball", "E1_ball"))}
  e1 = {k: v for k, v in e1.items() if v is not None}
  for v, d in e1.items():
    out[f"e1_rules_{v}"] = (f"results/{'E1' if v == 'gaussian' else 'E1_ball'}/E1.json",
                            e1_rules(d))
  if e1:
    out["e1_correlations"] = ("results/E1*/E1.json", e1_correlations(e1))
  e6 = {v: _read(results, run, "E6") for v, run in (("gaussian", "E6"), ("ball", "E6_ball"))}
  e6 = {k: v for k, v in e6.items() if v is not None}
  if e6:
    out["e6_correlations"] = ("results/E6*/E6.json", e6_correlations(e6))
  ch = _read(results, "chain", "chain")
  if ch is not None:
    cons = list(dict.fromkeys(lk["construction"] for lk in ch["links"] if lk["model"] == "trained"))
    out["chain_trained"] = ("results/chain/chain.json", chain_links(ch, "trained", cons, 0))
    out["chain_bound"] = ("results/chain/chain.json", bound_line(ch))
  llm = _read(results, "llm", "llm")
  if llm is not None:
    out["llm_accuracy"] = ("results/llm/llm.json", llm_accuracy(llm))
    out["llm_selection"] = ("results/llm/llm.json", llm_selection(llm))
    out["llm_power"] = ("results/llm/llm.json", llm_power(llm))
    out["llm_chain"] = ("results/llm/llm.json",
                        chain_links(llm, "smollm2", ("rotated", "unrotated"), "all"))
    out["llm_sweep"] = ("results/llm/llm.json", llm_sweep(llm))
    out["llm_interference"] = ("results/llm/llm.json", llm_interference(llm))
    out["llm_bound"] = ("results/llm/llm.json", bound_line(llm))
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m icl_kd.experiments.report",
                              description="Print the experiment pages' tables from the result summaries.")
  p.add_argument("--results", default="results", metavar="DIR",
                 help="the folder of the runs' summaries (default %(default)s)")
  args = p.parse_args(argv)
  found = sections(args.results)
  if not found:
    print(f"no result summaries under {args.results}", file=sys.stderr)
    return 1
  for name, (src, md) in found.items():
    print(f"<!-- {name}: from {src} -->\n{md}\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
