"""E1: demonstration selection by the theory's MMD under distribution shift.

docs/THEORY.md E1, with C5 (``thm4.1``): the bias of the distilled weights,
||W_0(P) - W_0(Q)||_HS = c eta MMD_kV(P, Q), is governed by the MMD in the
distillation kernel of the model's own key and value maps,

    k_V(e, e') = <W^V e, W^V e'> exp(<W^K e, W^K e'> / tau),
    k_x(e, e') = <e, e'>         exp(<W^K e, W^K e'> / tau),

evaluated on the tokens the attention head reads: demonstration tokens
e = (x, y). A single softmax-attention layer (one head, which reads every
demonstration) is trained on linear-regression prompts whose demonstrations
and queries share one distribution N(mu, I), |mu| in {0, 1, 2, 3}
(:func:`training_prompts`). In each trial a task w ~ N(0, I) is fixed, M
queries come from a shifted distribution Q (:class:`icl_kd.tasks.Shift`), and a
pool of labelled candidates mixes points from Q with points from other shifted
distributions. k demonstrations are chosen from the pool by six rules:

- ``mmd_kv``: greedy minimisation of the biased MMD_kV^2 between the chosen
  tokens and the target sample (the trained W^K, W^V; tau of the layer);
- ``mmd_kx``: the same with k_x (the kernel of the corrected bound ``thm4.1-bound``);
- ``gaussian``: the same with a Gaussian kernel on the inputs x only
  (median-heuristic bandwidth): a kernel the theory does not name;
- ``retrieval``: nearest-neighbour retrieval for the query set (each query in
  turn adds its nearest unchosen pool point, until k are chosen);
- ``random``: uniformly without replacement;
- ``knn``: every query gets its own prompt of its k nearest pool points
  (reported for reference; not one prompt, so not in the correlations);

and by ``mixture`` prompts that take a growing number of their points from the
part of the pool drawn from Q (a spread of MMD values). Paired design: every
rule answers the same queries of the same trial.

Target sample. C5 compares W_0(P) with W_0(Q), the weights distilled from
demonstrations of Q. The target is therefore the labelled query sample
(x'_j, <w, x'_j>), the tokens an ideal prompt from Q holds (noiseless labels).
The MMD rules ``mmd_kv`` and ``mmd_kx`` thus see the query labels (an oracle
target: they measure the theory's quantity, not a deployable selector); the
``gaussian``, ``retrieval`` and ``knn`` rules see the query inputs only.

Heads. MMD^2 is summed over the heads of the layer that reads the
demonstrations (the MMD^2 of the sum kernel): here one layer with one head.

The ICL error of a prompt is the model's mean squared error over the queries
divided by the mean squared query label. The report gives each rule's error
(and ridge and one-GD-step baselines on the same prompts), the three MMD^2
(biased, V-statistic, as in C5) of every prompt to the target, and the
Spearman correlation of each MMD with the error over all one-prompt rules and
mixture prompts, with a bootstrap interval over trials.
"""

from __future__ import annotations

import sys
import textwrap
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_kd import baselines, models, mmd, runtime, tasks
from icl_kd.experiments import _common
from icl_kd.experiments._common import summed_mmd2, theory_kernels, within_trial_spearman

NAME = "E1"
DESCRIPTION = ("demonstration selection by MMD_kV, MMD_kx, Gaussian MMD, retrieval, random and k-NN "
               "under distribution shift (C5)")
RULES = ("mmd_kv", "mmd_kx", "gaussian", "retrieval", "random", "knn")
SHARED = ("mmd_kv", "mmd_kx", "gaussian", "retrieval", "random")   # one prompt for all queries
MMDS = ("mmd_kv", "mmd_kx", "gaussian")                            # measured on every prompt
HEADS = ("MMD^2 summed over the heads of the layer that reads the demonstrations "
         "(one softmax layer with one head here)")
TARGET = ("the labelled query sample (x', <w, x'>) (noiseless labels): the demonstrations "
          "an ideal prompt from the query distribution holds")


class Config(NamedTuple):
  """Sizes of one E1 run (``run`` draws everything from its key)."""
  d: int = 4
  k: int = 8                  # demonstrations per prompt
  n_pool: int = 128
  match_fraction: float = 0.25  # fraction of the pool drawn from the query distribution Q
  n_queries: int = 16
  n_trials: int = 64
  n_mixture: int = 8          # mixture prompts per trial
  query_shift: float = 2.0    # |mean shift| of Q (and of the other pool components)
  noise_std: float = 0.25
  ridge_lam: float = 0.1
  train_steps: int = 2000
  batch: int = 128
  learning_rate: float = 1e-2
  n_boot: int = 1000
  progress: bool = True


QUICK = Config(n_pool=64, n_trials=12, n_mixture=4, train_steps=150, batch=64, n_boot=200)

FLAGS = (
    _common.Flag("--trials", "n_trials", int, "trials (a task, queries and a pool each)"),
    _common.Flag("--steps", "train_steps", int, "training steps of the attention layer"),
    _common.Flag("--k", "k", int, "demonstrations per prompt"),
    _common.Flag("--pool", "n_pool", int, "candidate demonstrations per trial"),
    _common.Flag("--shift", "query_shift", float, "length of the query distribution's mean shift"),
)


class Results(NamedTuple):
  """Per trial and rule: the relative ICL error and the MMD^2 of the prompt to the target.

  Attributes:
    error: dict rule -> (n_trials,) model error (relative MSE over the queries).
    mmd2: dict kind -> dict rule -> (n_trials,) biased MMD^2(prompt, target), kind in
      ``MMDS``; for ``knn`` the mean over the per-query prompts.
    ridge_error, gd_error: dict rule -> (n_trials,) baselines on the same prompts.
    mixture_error: (n_trials, n_mixture) error of the mixture prompts.
    mixture_mmd2: dict kind -> (n_trials, n_mixture).
    correlation: dict kind -> Spearman(MMD^2, error) over the ``SHARED`` and mixture prompts
      of all trials pooled, bootstrap interval over trials.
    within_trial: dict kind -> the mean over trials of the Spearman correlation within
      one trial (the paired comparison: same task and queries), bootstrap over trials.
    wins: fraction of trials where one rule has lower error than another.
    chosen: dict rule -> (n_trials, k) pool indices of the prompts of the ``SHARED`` rules.
    train_losses: (train_steps,) training curve of the model.
    params: the trained layer's parameters (float64).
  """
  error: dict
  mmd2: dict
  ridge_error: dict
  gd_error: dict
  mixture_error: np.ndarray
  mixture_mmd2: dict
  correlation: dict
  within_trial: dict
  wins: dict
  chosen: dict
  train_losses: np.ndarray
  params: dict


# -- kernels and selection ---------------------------------------------------------------


def _pair_factors(kernel, a: jax.Array, b: jax.Array):
  """(c, l), each (n, m), with k(a_i, b_j) = c exp(l): nested vmap of the one-pair kernel."""
  if hasattr(kernel, "log_factors"):
    fn = kernel.log_factors
  else:
    fn = lambda x, y: (jnp.asarray(kernel(x, y)), jnp.zeros((), a.dtype))
  return jax.vmap(lambda x: jax.vmap(lambda y: fn(x, y))(b))(a)


def summed_gram(kernel, a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(K, s): K_ij exp(s) = sum_h k_h(a_i, b_j), the Gram of the sum kernel, scaled in log space.

  ``s`` is the largest finite log-factor over every head, subtracted before any
  exponential, so scores of 1e3 do not overflow; K carries the sign of the kernel.
  """
  parts = [_pair_factors(k, a, b) for k in _common.as_kernels(kernel)]
  s = jnp.max(jnp.stack([jnp.max(l) for _, l in parts]))
  s = jnp.where(jnp.isfinite(s), s, 0.0)
  return sum(c * jnp.exp(l - s) for c, l in parts), s


def mmd_greedy(pool: jax.Array, queries: jax.Array, k: int, *, kernel) -> jax.Array:
  """Indices (k,) of pool points chosen greedily to minimise the biased MMD^2 to ``queries``.

      MMD_b^2(S, Q) = (1/|S|^2) sum_{i,j in S} k(p_i, p_j)
                    - (2/(|S| M)) sum_{i in S, j} k(p_i, q_j) + const

  At each step the candidate that minimises MMD_b^2(S + {c}, Q) is added
  (without replacement). ``kernel`` is one kernel or a sequence of kernels
  (the heads of a layer, summed: :func:`summed_gram`); the objective is
  evaluated in log space (one common positive factor exp(s) does not change
  the argmin).

  Args:
    pool: (P, d) candidates. queries: (M, d) the target sample. k: static, 1 <= k <= P.
    kernel: a one-pair kernel or a sequence of them.

  Returns:
    (k,) int32 indices into ``pool``, in the order chosen.
  """
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= pool.shape[0]:
    raise ValueError(f"k must be an int in [1, {pool.shape[0]}] (the pool size), got {k!r}")
  kernels = _common.as_kernels(kernel)
  k_pp, s_pp = summed_gram(kernels, pool, pool)                             # (P, P)
  k_pq, s_pq = summed_gram(kernels, pool, queries)                          # (P, M)
  s = jnp.maximum(s_pp, s_pq)
  k_pp = k_pp * jnp.exp(s_pp - s)
  k_pq = jnp.mean(k_pq, axis=1) * jnp.exp(s_pq - s)                         # (P,)
  diag = jnp.diagonal(k_pp)                                                 # (P,)
  n = pool.shape[0]

  def body(t, state):
    chosen, taken, sum_ss, col_s, cross_s = state
    size = t + 1.0
    obj = (sum_ss + 2 * col_s + diag) / size ** 2 - 2 * (cross_s + k_pq) / size  # (P,)
    c = jnp.argmin(jnp.where(taken, jnp.inf, obj))
    return (chosen.at[t].set(c.astype(jnp.int32)), taken.at[c].set(True),
            sum_ss + 2 * col_s[c] + diag[c],
            col_s + k_pp[:, c], cross_s + k_pq[c])

  init = (jnp.zeros((k,), jnp.int32), jnp.zeros((n,), bool), jnp.zeros((), k_pp.dtype),
          jnp.zeros((n,), k_pp.dtype), jnp.zeros((), k_pp.dtype))
  return jax.lax.fori_loop(0, k, body, init)[0]


def retrieval(pool: jax.Array, queries: jax.Array, k: int) -> jax.Array:
  """Indices (k,): queries take turns adding their nearest unchosen pool point."""
  d2 = jax.vmap(lambda q: jax.vmap(lambda p: jnp.sum((p - q) ** 2))(pool))(queries)  # (M, P)
  m = queries.shape[0]

  def body(t, state):
    chosen, taken = state
    row = jnp.where(taken, jnp.inf, d2[t % m])
    c = jnp.argmin(row)
    return chosen.at[t].set(c.astype(jnp.int32)), taken.at[c].set(True)

  init = (jnp.zeros((k,), jnp.int32), jnp.zeros((pool.shape[0],), bool))
  return jax.lax.fori_loop(0, k, body, init)[0]


# -- data -------------------------------------------------------------------------------


class Trial(NamedTuple):
  """One trial's data.

  Attributes:
    w: (d,) the task. queries: (M, d) from Q. targets: (M,) <w, x'_j>.
    pool: (P, d) candidates; pool_y: (P,) their noisy labels.
    n_match: the first ``n_match`` pool points are drawn from Q.
  """
  w: jax.Array
  queries: jax.Array
  targets: jax.Array
  pool: jax.Array
  pool_y: jax.Array
  n_match: int

  def target_tokens(self) -> jax.Array:
    """(M, d+1): the target sample of the MMD rules, tokens (x'_j, <w, x'_j>)."""
    return tasks.regression_tokens(self.queries, self.targets)

  def pool_tokens(self) -> jax.Array:
    """(P, d+1): the candidates as the layer reads them, tokens (x_i, y_i)."""
    return tasks.regression_tokens(self.pool, self.pool_y)


def trial_data(key, cfg: Config) -> Trial:
  """One trial: task w, queries from Q, a pool mixing Q with other shifted components."""
  d = cfg.d
  kw, kq, kqs, kp, kps, ke, kcomp = jax.random.split(key, 7)
  w = jax.random.normal(kw, (d,))
  q_shift = tasks.Shift(mean=cfg.query_shift)
  queries = tasks.shift_inputs(jax.random.normal(kq, (cfg.n_queries, d)), q_shift, key=kqs)
  n_match = int(round(cfg.match_fraction * cfg.n_pool))
  base = jax.random.normal(kp, (cfg.n_pool, d))
  matched = tasks.shift_inputs(base[:n_match], q_shift, key=kqs)           # same direction as Q
  # the rest: three components, at the origin with skew, and two other mean shifts.
  rest = base[n_match:]
  comp = jax.random.randint(kcomp, (rest.shape[0],), 0, 3)
  ks = jax.random.split(kps, 3)
  options = jnp.stack([
      tasks.shift_inputs(rest, tasks.Shift(skew=1.0), key=ks[0]),
      tasks.shift_inputs(rest, tasks.Shift(mean=cfg.query_shift), key=ks[1]),
      tasks.shift_inputs(rest, tasks.Shift(mean=cfg.query_shift, scale=0.5), key=ks[2])])
  others = jnp.take_along_axis(options, comp[None, :, None], axis=0)[0]
  pool = jnp.concatenate([matched, others])                                 # (P, d)
  pool_y = jnp.dot(pool, w) + cfg.noise_std * jax.random.normal(ke, (cfg.n_pool,))
  return Trial(w, queries, jnp.dot(queries, w), pool, pool_y, n_match)


TRAIN_SHIFTS = (0.0, 1.0, 2.0, 3.0)


def training_prompts(key, cfg: Config) -> tasks.RegressionPrompts:
  """A training batch: prompts whose demonstrations and queries share one mean shift.

  Prompt b is shifted by m_b u_b, with u_b a random unit vector and m_b cycling
  through ``TRAIN_SHIFTS``, so the layer learns in-context regression wherever
  the prompt and the queries come from the same distribution. Labels are
  linear, so shifting x by v shifts every label by <w, v>.
  """
  k_base, k_dir = jax.random.split(key)
  base = tasks.sample_regression(cfg.batch, cfg.k, cfg.d, key=k_base, n_queries=4,
                                 noise_std=cfg.noise_std)
  u = jax.random.normal(k_dir, (cfg.batch, cfg.d), base.xs.dtype)
  lengths = jnp.resize(jnp.asarray(TRAIN_SHIFTS, base.xs.dtype), (cfg.batch,))
  v = lengths[:, None] * u / jnp.linalg.norm(u, axis=1, keepdims=True)       # (B, d)
  dy = jnp.sum(v * base.w, axis=1)                                          # (B,)
  return base._replace(xs=base.xs + v[:, None, :], ys=base.ys + dy[:, None],
                       queries=base.queries + v[:, None, :], targets=base.targets + dy[:, None])


def trial_keys(key, cfg: Config):
  """(model key, (n_trials,) trial keys, bootstrap key): how :func:`run` splits its key."""
  k_model, k_trials, k_boot = jax.random.split(key, 3)
  return k_model, jax.random.split(k_trials, cfg.n_trials), k_boot


MODEL_TAU = 1.0


def make_model(cfg: Config) -> models.SoftmaxAttentionLayer:
  """The one-head softmax-attention layer E1 trains, on tokens (x, y) of width d + 1."""
  return models.SoftmaxAttentionLayer(d_k=cfg.d + 1, d_v=1, tau=MODEL_TAU, init_scale=0.5)


def rule_kernels(params, cfg: Config, trial: Trial) -> dict:
  """The kernel (or kernels, one per head) each MMD rule minimises; see the module doc."""
  del cfg
  p = models.attention_params(params)
  return {"mmd_kv": theory_kernels(p, tau=MODEL_TAU, use_values=True),
          "mmd_kx": theory_kernels(p, tau=MODEL_TAU, use_values=False),
          "gaussian": mmd.gaussian_kernel(mmd.median_bandwidth(trial.pool, trial.queries))}


def prompt_mmd2(kernels: dict, trial: Trial, idx: jax.Array) -> dict:
  """The three biased MMD^2 of the prompt ``pool[idx]`` to the target (kind -> scalar).

  ``mmd_kv``, ``mmd_kx``: on tokens, prompt (x_i, y_i) vs target (x'_j, <w, x'_j>);
  ``gaussian``: on the inputs, prompt x_i vs queries x'_j.
  """
  tok = trial.pool_tokens()[idx]
  target = trial.target_tokens()
  return {"mmd_kv": summed_mmd2(tok, target, kernel=kernels["mmd_kv"]),
          "mmd_kx": summed_mmd2(tok, target, kernel=kernels["mmd_kx"]),
          "gaussian": summed_mmd2(trial.pool[idx], trial.queries, kernel=kernels["gaussian"])}


def select(rule: str, kernels: dict, trial: Trial, k: int, *, key=None) -> jax.Array:
  """The (k,) pool indices the one-prompt ``rule`` (in ``SHARED``) chooses for a trial."""
  if rule in ("mmd_kv", "mmd_kx"):
    return mmd_greedy(trial.pool_tokens(), trial.target_tokens(), k, kernel=kernels[rule])
  if rule == "gaussian":
    return mmd_greedy(trial.pool, trial.queries, k, kernel=kernels[rule])
  if rule == "retrieval":
    return retrieval(trial.pool, trial.queries, k)
  if rule == "random":
    if key is None:
      raise ValueError("rule 'random' needs a key")
    return jax.random.choice(key, trial.pool.shape[0], (k,), replace=False)
  raise ValueError(f"rule must be one of {SHARED}, got {rule!r}")


def run(config: Config = Config(), *, key) -> Results:
  """Trains the layer, then runs every rule on ``n_trials`` paired trials; see the module doc.

  Args:
    config: the sizes (:data:`QUICK` for a small run).
    key: PRNG key (keyword-only); split by :func:`trial_keys` (model, trials, bootstrap).
  """
  cfg = config
  k_model, keys, k_boot = trial_keys(key, cfg)
  model = make_model(cfg)
  params, losses = _common.train_regression_model(
      model, key=k_model, d=cfg.d, n_demos=cfg.k, n_queries=4, steps=cfg.train_steps,
      batch=cfg.batch, learning_rate=cfg.learning_rate, noise_std=cfg.noise_std,
      sampler=lambda k: training_prompts(k, cfg), progress=cfg.progress, desc="E1 train")
  params = _common.to_float64(params)

  def trial_fn(params, k):
    # params is an argument (not a closed-over constant), so the library's
    # value checks see tracers under jit.
    def predict(xs, ys, query):
      demos = tasks.regression_tokens(xs, ys)
      return models.icl_predict(model, params, demos, tasks.query_token(query))

    tr = trial_data(k, cfg)
    pool, pool_y, queries, targets = tr.pool, tr.pool_y, tr.queries, tr.targets
    denom = jnp.mean(targets ** 2)
    kernels = rule_kernels(params, cfg, tr)

    def scores(idx):
      xs, ys = pool[idx], pool_y[idx]
      err = jnp.mean((jax.vmap(lambda q: predict(xs, ys, q))(queries) - targets) ** 2) / denom
      rid = jax.vmap(lambda q: baselines.ridge(xs, ys, q, lam=cfg.ridge_lam))(queries)
      gd = jax.vmap(lambda q: baselines.averaging(xs, ys, q))(queries)
      return (err, prompt_mmd2(kernels, tr, idx),
              jnp.mean((rid - targets) ** 2) / denom, jnp.mean((gd - targets) ** 2) / denom)

    k_rand, k_mix = jax.random.split(jax.random.fold_in(k, 1))
    chosen = {r: select(r, kernels, tr, cfg.k, key=k_rand) for r in SHARED}
    out = {r: scores(idx) for r, idx in chosen.items()}
    # knn: each query gets its own prompt of its k nearest pool points.
    d2 = jax.vmap(lambda q: jnp.sum((pool - q[None, :]) ** 2, axis=1))(queries)  # (M, P)
    nn_idx = jax.lax.top_k(-d2, cfg.k)[1]                                   # (M, k)
    per_q = lambda f: jax.vmap(lambda idx, q: f(pool[idx], pool_y[idx], q))(nn_idx, queries)
    out["knn"] = (
        jnp.mean((per_q(predict) - targets) ** 2) / denom,
        jax.tree_util.tree_map(jnp.mean, jax.vmap(lambda idx: prompt_mmd2(kernels, tr, idx))(
            nn_idx)),
        jnp.mean((per_q(lambda x, y, q: baselines.ridge(x, y, q, lam=cfg.ridge_lam))
                  - targets) ** 2) / denom,
        jnp.mean((per_q(baselines.averaging) - targets) ** 2) / denom)
    # mixture prompts: r of the k points from the part of the pool drawn from Q.
    n_other = cfg.n_pool - tr.n_match

    def mixture(km, r):
      k1, k2 = jax.random.split(km)
      from_q = jax.random.permutation(k1, tr.n_match)[:cfg.k]
      from_o = jax.random.permutation(k2, n_other)[:cfg.k] + tr.n_match
      idx = jnp.where(jnp.arange(cfg.k) < r, from_q, from_o)
      return scores(idx)[:2]

    counts = jnp.round(jnp.linspace(0, min(cfg.k, tr.n_match), cfg.n_mixture)).astype(jnp.int32)
    mix = jax.vmap(mixture)(jax.random.split(k_mix, cfg.n_mixture), counts)
    return out, mix, chosen

  trial_fn = jax.jit(trial_fn)
  outs, mixes, chosen = [], [], []
  bar = runtime.Progress("E1 trials", cfg.n_trials, enabled=cfg.progress)
  for t in range(cfg.n_trials):
    o, m, c = jax.tree_util.tree_map(np.asarray, trial_fn(params, keys[t]))
    outs.append(o)
    mixes.append(m)
    chosen.append(c)
    bar.update(t + 1)
  get = lambda r, i: np.array([o[r][i] for o in outs])
  error = {r: get(r, 0) for r in RULES}
  mmd2_ = {m: {r: np.array([o[r][1][m] for o in outs]) for r in RULES} for m in MMDS}
  ridge_error = {r: get(r, 2) for r in RULES}
  gd_error = {r: get(r, 3) for r in RULES}
  mix_err = np.stack([m[0] for m in mixes])                                 # (T, n_mix)
  mix_mmd = {m: np.stack([x[1][m] for x in mixes]) for m in MMDS}
  chosen_ = {r: np.stack([c[r] for c in chosen]) for r in SHARED}
  all_err = np.concatenate([np.stack([error[r] for r in SHARED], 1), mix_err], 1)  # (T, .)
  groups = np.repeat(np.arange(cfg.n_trials), all_err.shape[1])
  boot_seed = _common.seed_of(k_boot)
  corr, within = {}, {}
  for m in MMDS:
    all_mmd = np.concatenate([np.stack([mmd2_[m][r] for r in SHARED], 1), mix_mmd[m]], 1)
    corr[m] = _common.bootstrap_spearman(all_mmd.ravel(), all_err.ravel(), seed=boot_seed,
                                         groups=groups, n_boot=cfg.n_boot)
    within[m] = within_trial_spearman(all_mmd, all_err, seed=boot_seed, n_boot=cfg.n_boot)
  wins = {f"mmd_kv<{r}": float(np.mean(error["mmd_kv"] < error[r])) for r in RULES[1:]}
  wins.update({f"gaussian<{r}": float(np.mean(error["gaussian"] < error[r]))
               for r in ("retrieval", "random")})
  return Results(error, mmd2_, ridge_error, gd_error, mix_err, mix_mmd, corr, within, wins,
                 chosen_, losses, params)


def summary(results: Results) -> tuple[str, dict]:
  """(printed table, JSON-able dict): per-rule errors and MMDs, correlations, wins."""
  res = results
  rows = []
  for r in RULES:
    e = res.error[r]
    rows.append([r, float(np.mean(e)), float(np.std(e) / np.sqrt(len(e))), float(np.median(e)),
                 *(float(np.mean(res.mmd2[m][r])) for m in MMDS),
                 float(np.mean(res.ridge_error[r])), float(np.mean(res.gd_error[r]))])
  cols = ["error_mean", "error_se", "error_median", *(f"{m}2_mean" for m in MMDS),
          "ridge_error_mean", "gd_error_mean"]
  table = runtime.format_table(
      ["rule", "model err", "se", "median", "MMD_kV^2", "MMD_kx^2", "Gauss MMD^2", "ridge err",
       "1-step GD err"], rows)
  n = res.correlation[MMDS[0]].n
  corr_rows = []
  for m in MMDS:
    c, w = res.correlation[m], res.within_trial[m]
    corr_rows.append([m, f"{c.rho:.3f}", f"[{c.lo:.3f}, {c.hi:.3f}]",
                      f"{w.rho:.3f}", f"[{w.lo:.3f}, {w.hi:.3f}]"])
  corr = runtime.format_table(["MMD", "pooled rho", "95% CI", "within-trial rho", "95% CI"],
                              corr_rows, align="lrrrr")
  lines = [table,
           "MMD^2: biased estimate (V-statistic, >= 0), prompt against the target sample;",
           f"heads: {HEADS}.",
           f"Spearman(MMD^2, model error) over {n} one-prompt and mixture prompts "
           "(bootstrap over trials):", corr,
           textwrap.fill("fraction of trials with lower error: " + ", ".join(
               f"P({k}) = {v:.2f}" for k, v in res.wins.items()), width=120)]
  data = {"rules": {r[0]: dict(zip(cols, r[1:])) for r in rows},
          "spearman": {m: res.correlation[m]._asdict() for m in MMDS},
          "spearman_within_trial": {m: res.within_trial[m]._asdict() for m in MMDS},
          "wins": res.wins, "heads": HEADS, "target": TARGET,
          "mmd_estimator": "biased (V-statistic)",
          "correlation_prompts": list(SHARED) + ["mixture"],
          "final_train_loss": float(np.mean(res.train_losses[-20:]))}
  return "\n".join(lines), data


def arrays(results: Results) -> dict:
  """The arrays saved to ``E1.npz``: ``error_<rule>``, ``<kind>2_<rule>``, mixtures, choices."""
  res = results
  out = {f"error_{r}": res.error[r] for r in RULES}
  out.update({f"{m}2_{r}": res.mmd2[m][r] for m in MMDS for r in RULES})
  out.update({f"mixture_{m}2": res.mixture_mmd2[m] for m in MMDS})
  out.update({f"chosen_{r}": res.chosen[r] for r in SHARED})
  out.update(mixture_error=res.mixture_error, train_losses=res.train_losses)
  return out


result_arrays = arrays


def save(res: Results, out: str, *, info: dict) -> list[str]:
  """Writes ``E1.json`` (info and summary), ``E1.npz`` (arrays), ``E1_model.npz`` under ``out``."""
  return _common.save_results(sys.modules[__name__], res, out, info=info)


def main(argv=None) -> int:
  """``python -m icl_kd.experiments E1 [--quick] [--seed S] [--out DIR] ...``; returns 0."""
  return _common.main(sys.modules[__name__], argv)
