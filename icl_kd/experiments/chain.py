"""E7 ``chain``: the paper's practical claim, link by link (docs/THEORY.md E7).

    python -m icl_kd.experiments chain [--quick] [--seed S] [--models trained,smollm2]

The theory's chain from demonstrations to answer has three links, each measured
exactly here on every (candidate set, head):

    mmd_bias       MMD^2(S, T)            -> bias ||W_0(S) - W_0(T)||_HS     (C5)
    bias_output    bias                   -> output gap ||dW phi(z)|| / ||W_0(T) phi(z)|| (C6)
    output_answer  output gaps (summed)   -> the answer
    mmd_answer     MMD^2(S, T) (summed)   -> the answer                     (the practical claim)

For each (task, trial) group: a target sample T of the task (labelled
demonstrations held out from the pool, the same kind of object as the
candidates) and many candidate sets S (the selection rules' choices and random
mixtures of the task's and other items, so that MMD(S, T) spans a range).
Every MMD^2 in the kernels of :data:`icl_kd.selection.KERNELS` by both
estimators; the bias exactly in dual form at a fixed eta (C5's object; every
rank and ratio is independent of eta); the proved bound ``thm4.1-bound`` on it
(a consistency check: it must hold on every (set, head)); the literal readings
of Theorem 4.1 under both conventions; the output gap at each query, relative
to the target's own output (free of eta), averaged over the group's queries;
the answer (a language model: the gold answer's log-probability; the trained
layer: minus its relative squared error).

Statistics (:func:`links`): for a link at one layer, the Spearman correlation
is taken within each group over its sets (per head, then averaged over the
layer's heads, for the links between two per-head quantities; on the sum over
the layer's heads of the relative output gaps, or of MMD^2 / ||mu_T||^2, for the
links to the answer), averaged over groups; the interval is a percentile
bootstrap over tasks (the clusters: a task's trials are not independent).
A link "holds" when its interval lies on the side of 0 the theory predicts
(positive for mmd_bias and bias_output, negative for the links to the answer),
is "reversed" when it lies on the other side, and is "not resolved" otherwise.

Models: ``trained`` is the one-head softmax layer of E1 on E1's design
(:mod:`icl_kd.experiments.e1_selection`; its trials are the groups and the
clusters), once per input distribution of ``constructions`` (Gaussian inputs,
and bounded inputs on the unit ball where every moment of the kernels exists);
``smollm2`` is SmolLM2-135M on the design of :mod:`icl_kd.experiments.llm`
(needs the model package).
"""

from __future__ import annotations

import math
import sys
import textwrap
from typing import NamedTuple

import numpy as np

from icl_kd.experiments import _common

NAME = "chain"
DESCRIPTION = ("E7: the chain MMD -> bias -> head output -> answer, link by link, with both "
               "estimators, on the trained layer of E1 (and SmolLM2 with --models)")
LINKS = ("mmd_bias", "bias_output", "output_answer", "mmd_answer")
EXPECTED_SIGN = {"mmd_bias": 1, "bias_output": 1, "output_answer": -1, "mmd_answer": -1}
READINGS = ("gaussian", "softmax", "normalised", "tv")
MODELS = ("trained", "smollm2")


class Config(NamedTuple):
  """Sizes of one chain run.

  Attributes:
    models: which models (:data:`MODELS`): ``trained`` (E1's layer), ``smollm2``.
    constructions: the trained layer's input distributions (``gaussian``, ``ball``).
    n_trials: E1 trials (groups) per construction.
    train_steps: training steps of the trained layer.
    llm_tasks, llm_trials: the smollm2 design (tasks x trials groups; see the llm experiment).
    n_boot: bootstrap resamples.
    progress: progress lines on stderr.
  """
  models: tuple = ("trained",)
  constructions: tuple = ("gaussian", "ball")
  n_trials: int = 128
  train_steps: int = 6000
  llm_trials: int = 8
  n_boot: int = 1000
  progress: bool = True


QUICK = Config(n_trials=12, train_steps=300, llm_trials=1, n_boot=200)


def _models(text: str) -> str:
  if text not in MODELS:
    raise ValueError(f"one of {MODELS}")
  return text


FLAGS = (
    _common.Flag("--models", "models", _models, f"comma-separated models, of {', '.join(MODELS)}"),
    _common.Flag("--constructions", "constructions", str,
                 "comma-separated input distributions of the trained layer (gaussian, ball)"),
    _common.Flag("--trials", "n_trials", int, "trials (groups) of the trained layer's design",
                 minimum=2),
    _common.Flag("--steps", "train_steps", int, "training steps of the trained layer", minimum=1),
    _common.Flag("--llm-trials", "llm_trials", int, "trials per task of the smollm2 design",
                 minimum=1),
)


def check_config(cfg: Config) -> None:
  """Raises :class:`icl_kd.experiments._common.UsageError` naming the flag of a bad value."""
  bad = [c for c in cfg.constructions if c not in _common.INPUTS]
  if bad or not cfg.constructions:
    raise _common.UsageError(f"--constructions must name some of {_common.INPUTS}, got "
                             f"{','.join(cfg.constructions)}")
  if not cfg.models:
    raise _common.UsageError(f"--models must name some of {MODELS}")


# -- the per-set, per-head table and its links ---------------------------------------------


class ChainSets(NamedTuple):
  """The chain measured on N candidate sets of one model and construction (NumPy).

  Attributes:
    group: (N,) the (task, trial) group of each set; cluster: (N,) its task.
    answer: (N,) the answer's score, higher is better (gold log-probability, or minus the
      relative squared error), averaged over the group's queries.
    mmd2: (N, L, G, K, E) MMD^2(S, T) per layer, key/value head, kernel, estimator.
    log_target_norm2: (N, L, G, K) log ||mu_T||^2 per kernel.
    log_bias, log_bound_rhs, identity_residual, log_bias_floor: (N, L, G).
    log_literal_ratio: (N, L, G, R) log(lhs/rhs) of the literal readings (eq12).
    rel_output_gap: (N, L, H) ||dW phi(z)|| / ||W_0(T) phi(z)|| averaged over the queries.
    kv_head: (H,) the key/value head each query head reads.
    layers: (L,) the layers' indices in the model.
  """
  group: np.ndarray
  cluster: np.ndarray
  answer: np.ndarray
  mmd2: np.ndarray
  log_target_norm2: np.ndarray
  log_bias: np.ndarray
  log_bound_rhs: np.ndarray
  identity_residual: np.ndarray
  log_bias_floor: np.ndarray
  log_literal_ratio: np.ndarray
  rel_output_gap: np.ndarray
  kv_head: np.ndarray
  layers: np.ndarray


class Link(NamedTuple):
  """One entry of ``links`` (the JSON contract).

  Attributes:
    model: "trained" or "smollm2". link: one of :data:`LINKS`.
    kernel, estimator: the MMD's kernel and estimator (None for the links without an MMD).
    layer: the layer's index, or "all" (the sum, or the mean, over every measured layer).
    construction: the construction (trained: the inputs; smollm2: the anchors).
    rho, lo, hi: within-group Spearman and its task-cluster bootstrap interval.
    groups: groups with a defined correlation.
    expected_sign: the theory's sign. verdict: "holds", "reversed" or "not resolved".
  """
  model: str
  link: str
  kernel: str | None
  estimator: str | None
  layer: object
  construction: str
  rho: float
  lo: float
  hi: float
  groups: int
  expected_sign: int
  verdict: str


def verdict(stat: _common.LinkStat, sign: int) -> str:
  """"holds" / "reversed" / "not resolved" of an interval against the expected sign."""
  if not (math.isfinite(stat.lo) and math.isfinite(stat.hi)):
    return "not resolved"
  if sign * stat.lo > 0 and sign * stat.hi > 0:
    return "holds"
  if sign * stat.lo < 0 and sign * stat.hi < 0:
    return "reversed"
  return "not resolved"


def links(sets: ChainSets, *, model: str, construction: str, seed: int, n_boot: int) -> list:
  """Every :class:`Link` of one model and construction (see the module docstring)."""
  from icl_kd import selection
  n, n_l, n_g, n_k, n_e = sets.mmd2.shape
  out = []

  def add(link, kernel, estimator, layer, stat):
    sign = EXPECTED_SIGN[link]
    out.append(Link(model, link, kernel, estimator, layer, construction, stat.rho, stat.lo,
                    stat.hi, stat.groups, sign, verdict(stat, sign)))

  def per_unit(x, y, layer_sel):
    """Spearman within groups per unit (columns of x, y: (N, U)), averaged over units."""
    xs, ys = x[:, layer_sel].reshape(n, -1), y[:, layer_sel].reshape(n, -1)
    u = xs.shape[1]
    return _common.cluster_spearman(
        xs.ravel(), ys.ravel(), groups=np.repeat(sets.group, u),
        clusters=np.repeat(sets.cluster, u), units=np.tile(np.arange(u), n), seed=seed,
        n_boot=n_boot)

  def per_set(x):
    return _common.cluster_spearman(x, sets.answer, groups=sets.group, clusters=sets.cluster,
                                    seed=seed, n_boot=n_boot)

  layer_sels = [(int(sets.layers[i]), [i]) for i in range(n_l)]
  if n_l > 1:
    layer_sels.append(("all", list(range(n_l))))
  bias_q = sets.log_bias[:, :, sets.kv_head]                                # (N, L, H)
  with np.errstate(over="ignore", invalid="ignore"):
    rel_mmd = sets.mmd2 / np.exp(sets.log_target_norm2)[..., None]          # (N, L, G, K, E)
  for name, sel in layer_sels:
    for ki, kernel in enumerate(selection.KERNELS):
      for ei, est in enumerate(selection.ESTIMATORS):
        add("mmd_bias", kernel, est, name, per_unit(sets.mmd2[..., ki, ei], sets.log_bias, sel))
    add("bias_output", None, None, name, per_unit(bias_q, sets.rel_output_gap, sel))
    add("output_answer", None, None, name, per_set(sets.rel_output_gap[:, sel].sum(axis=(1, 2))))
    for ki, kernel in enumerate(selection.KERNELS):
      for ei, est in enumerate(selection.ESTIMATORS):
        add("mmd_answer", kernel, est, name, per_set(rel_mmd[..., ki, ei][:, sel].sum(axis=(1, 2))))
  return out


class BoundCheck(NamedTuple):
  """The proved bound (``thm4.1-bound``) and the identity (``thm4.1-identity``) on every
  (set, layer, key/value head).

  Attributes:
    checked: instances whose bias is resolved in float64 (above its rounding floor).
    violations: of the bound among them (it must be 0: a consistency check).
    unresolved: instances whose bias lies below the float64 resolution of its cancelled
      terms (:func:`icl_kd.chain.resolved`): neither the bias nor a comparison with it means
      anything there; they are counted, not checked.
    max_ratio: the largest bias / bound over the checked instances.
    max_identity_residual: the largest identity residual (units of the cancelled terms).
  """
  checked: int
  violations: int
  unresolved: int
  max_ratio: float
  max_identity_residual: float


def bound_check(sets: ChainSets) -> BoundCheck:
  """:class:`BoundCheck` of a table of sets (the rule of :func:`icl_kd.chain.bound_violated`)."""
  from icl_kd import chain
  ok = np.asarray(chain.resolved(sets.log_bias, sets.log_bias_floor))
  viol = np.asarray(chain.bound_violated(sets.log_bias, sets.log_bound_rhs)) & ok
  ratio = np.where(ok, sets.log_bias - sets.log_bound_rhs, -np.inf)
  return BoundCheck(int(ok.sum()), int(viol.sum()), int((~ok).sum()),
                    float(np.exp(np.max(ratio))) if ok.any() else float("nan"),
                    float(np.nanmax(sets.identity_residual)))


class LiteralRate(NamedTuple):
  """One literal reading of Theorem 4.1 on every resolved (set, layer, key/value head): the
  fraction of instances that violate it (lhs > rhs) under eq12 (c = 2) and under half
  (c = 1), and the largest log10(lhs/rhs) under eq12 (half: minus log10 2)."""
  reading: str
  rate_eq12: float
  rate_half: float
  max_log10_ratio_eq12: float


def literal_rates(sets: ChainSets) -> list:
  """:class:`LiteralRate` per reading of :data:`READINGS`, over the instances whose bias is
  resolved in float64 (those :func:`bound_check` checks)."""
  from icl_kd import chain
  ok = np.asarray(chain.resolved(sets.log_bias, sets.log_bias_floor)).ravel()
  out = []
  for i, r in enumerate(READINGS):
    lr = sets.log_literal_ratio[..., i].ravel()[ok]
    fin = lr[np.isfinite(lr) | (lr == np.inf)]
    out.append(LiteralRate(r, float(np.mean(fin > 0)) if fin.size else float("nan"),
                           float(np.mean(fin > math.log(2.0))) if fin.size else float("nan"),
                           float(np.max(fin) / math.log(10.0)) if fin.size else float("nan")))
  return out


# -- the trained layer -------------------------------------------------------------------


def trained_sets(res) -> ChainSets:
  """:class:`ChainSets` of an E1 run (one layer, one head; each trial a group and a cluster)."""
  m = res.measures
  n_t, n_s = res.error.shape
  add = lambda a: a.reshape((n_t * n_s, 1, 1) + a.shape[2:])                # noqa: E731
  gap = np.exp(m.log_output_gap - m.log_target_output).mean(axis=-1)       # (T, S)
  trial = np.repeat(np.arange(n_t), n_s)
  return ChainSets(group=trial, cluster=trial, answer=-res.error.ravel(), mmd2=add(m.mmd2),
                   log_target_norm2=add(m.log_target_norm2), log_bias=add(m.log_bias),
                   log_bound_rhs=add(m.log_bound_rhs),
                   identity_residual=add(m.identity_residual),
                   log_bias_floor=add(m.log_bias_floor),
                   log_literal_ratio=add(m.log_literal_ratio),
                   rel_output_gap=gap.reshape(n_t * n_s, 1, 1), kv_head=np.zeros(1, int),
                   layers=np.zeros(1, int))


class ModelChain(NamedTuple):
  """The chain of one model and construction: its table, links, bound check, literal rates."""
  model: str
  construction: str
  answer_metric: str
  sets: ChainSets
  links: list
  proved_bound: BoundCheck
  literal: list
  groups: int
  clusters: int
  note: str


def run_trained(cfg: Config, construction: str, key) -> ModelChain:
  """E1's design and layer with inputs ``construction``; returns its :class:`ModelChain`."""
  from icl_kd.experiments import e1_selection as e1
  e1_cfg = e1.Config(n_trials=cfg.n_trials, train_steps=cfg.train_steps, inputs=construction,
                     progress=cfg.progress, n_boot=cfg.n_boot,
                     **({} if cfg.train_steps >= 1000 else dict(n_pool=64, n_mixture=4,
                                                                 batch=64, n_reference=200)))
  res = e1.run(e1_cfg, key=key)
  sets = trained_sets(res)
  lk = links(sets, model="trained", construction=construction, seed=res.boot_seed,
             n_boot=cfg.n_boot)
  note = e1.reference_line(res.reference)
  return ModelChain("trained", construction, "minus the relative squared error", sets, lk,
                    bound_check(sets), literal_rates(sets), int(len(np.unique(sets.group))),
                    int(len(np.unique(sets.cluster))), note)


class Results(NamedTuple):
  """Every model's chain (a list of :class:`ModelChain`) and the run's config."""
  chains: list
  config: Config


def run(config: Config = Config(), *, key) -> Results:
  """Measures the chain on each model of ``config.models`` (see the module docstring).

  Args:
    config: sizes (:data:`QUICK` for a small run).
    key: PRNG key (keyword-only); one subkey per (model, construction).

  Raises:
    ModuleNotFoundError: ``smollm2`` asked for and its model package missing.
  """
  import jax
  out = []
  keys = jax.random.split(key, 1 + len(config.constructions))
  if "trained" in config.models:
    for c, k in zip(config.constructions, keys[1:]):
      out.append(run_trained(config, c, k))
  if "smollm2" in config.models:
    from icl_kd.experiments import llm
    out.extend(llm.run_chain(config, key=keys[0]))
  return Results(out, config)


# -- the report --------------------------------------------------------------------------


def headline(chain_: ModelChain, *, kernel: str = "normalised", estimator: str = "unbiased",
             layer="all") -> list:
  """The four links at one kernel, estimator and layer (default: the headline)."""
  pick = []
  layers = {lk.layer for lk in chain_.links}
  layer = layer if layer in layers else sorted(layers, key=str)[0]
  for name in LINKS:
    for lk in chain_.links:
      if lk.link == name and lk.layer == layer and lk.kernel in (kernel, None) and (
          lk.estimator in (estimator, None)):
        pick.append(lk)
        break
  return pick


def breaks(chain_: ModelChain, **kw) -> str:
  """One sentence: which links of the headline hold and which break."""
  parts = [f"{lk.link} {lk.verdict} ({lk.rho:+.2f} [{lk.lo:+.2f}, {lk.hi:+.2f}])"
           for lk in headline(chain_, **kw)]
  return "; ".join(parts)


def chain_text(ch: ModelChain) -> str:
  """The tables of one model and construction."""
  from icl_kd.runtime import format_table
  rows = []
  for lk in ch.links:
    if lk.link in ("mmd_bias", "mmd_answer") and lk.kernel is None:
      continue
    if isinstance(lk.layer, int) and len({x.layer for x in ch.links}) > 1:
      continue                                     # a sweep's per-layer rows: in the JSON
    rows.append([lk.link, lk.kernel or "-", lk.estimator or "-", str(lk.layer),
                 f"{lk.rho:+.3f}", f"[{lk.lo:+.3f}, {lk.hi:+.3f}]", lk.groups, lk.verdict])
  b = ch.proved_bound
  lit = ", ".join(f"{r.reading} {100 * r.rate_eq12:.1f}% / {100 * r.rate_half:.1f}%"
                  for r in ch.literal)
  head = (f"{ch.model} ({ch.construction}): {ch.groups} groups in {ch.clusters} clusters; "
          f"answer = {ch.answer_metric}")
  return "\n".join([
      head,
      format_table(["link", "kernel", "estimator", "layer", "rho", "95% CI (clusters)", "groups",
                    "verdict"], rows, align="lllllrrl"),
      textwrap.fill(f"proved bound thm4.1-bound: {b.violations} violations in {b.checked:,} "
                    f"(set, head) instances (largest bias/bound {b.max_ratio:.4f}; identity "
                    f"residual <= {b.max_identity_residual:.1e}; {b.unresolved} instances with "
                    f"the bias below its float64 resolution, not checked). Literal Theorem 4.1 "
                    f"violated (eq12 / half): {lit}.", width=120),
      textwrap.fill(f"headline (normalised kernel, unbiased, all layers): {breaks(ch)}", width=120),
      textwrap.fill(ch.note, width=120)])


def summary(results: Results) -> tuple[str, dict]:
  """(printed tables, JSON-able dict with ``links``, ``proved_bound``, ``literal``, ``models``)."""
  text = "\n\n".join(chain_text(c) for c in results.chains)
  data = {
      "links": [lk._asdict() for c in results.chains for lk in c.links],
      "proved_bound": {
          "claim": "thm4.1-bound", "checked": sum(c.proved_bound.checked for c in results.chains),
          "violations": sum(c.proved_bound.violations for c in results.chains),
          "unresolved": sum(c.proved_bound.unresolved for c in results.chains),
          "per_model": [dict(model=c.model, construction=c.construction,
                             **c.proved_bound._asdict()) for c in results.chains]},
      "literal": [dict(model=c.model, construction=c.construction, **r._asdict())
                  for c in results.chains for r in c.literal],
      "models": [dict(model=c.model, construction=c.construction, groups=c.groups,
                      clusters=c.clusters, answer_metric=c.answer_metric, note=c.note,
                      headline=breaks(c)) for c in results.chains],
      "expected_sign": EXPECTED_SIGN,
      "statistics": ("Spearman within (task, trial) groups over their candidate sets, per head "
                     "then averaged over the layer's heads (mmd_bias, bias_output) or on the "
                     "sum over the layer's heads of the relative output gap or MMD^2/||mu_T||^2 "
                     "(output_answer, mmd_answer); mean over groups; 95% percentile bootstrap "
                     "over tasks (the clusters)")}
  return text, data


def arrays(results: Results) -> dict:
  """Per (set, layer, head) arrays of every model and construction (``chain.npz``)."""
  out = {}
  for c in results.chains:
    for f, v in c.sets._asdict().items():
      out[f"{c.model}_{c.construction}_{f}"] = np.asarray(v)
  return out


def save(res: Results, out: str, *, info: dict) -> list[str]:
  """Writes ``chain.json`` (info and summary) and ``chain.npz`` (the per-set arrays)."""
  return _common.save(out, NAME, arrays=arrays(res), summary={**info, **summary(res)[1]})


def main(argv=None) -> int:
  """``python -m icl_kd.experiments chain [--quick] [--seed S] [--out DIR] ...``; returns 0."""
  return _common.main(sys.modules[__name__], argv)
