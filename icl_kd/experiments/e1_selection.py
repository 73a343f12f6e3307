"""E1: MMD-guided demonstration selection under distribution shift.

THEORY.md E1 (and C5/C6: the bias of the distilled weights W_0(P) - W_0(Q)
grows linearly in MMD(P, Q)). A single softmax-attention layer is trained on
linear-regression prompts whose demonstrations and queries come from one
distribution, N(mu, I) with a random mean of length 0 to 3
(:func:`training_prompts`). In each trial a task w ~ N(0, I) is
fixed, M queries come from a shifted distribution Q (mean shift along a random
direction, :class:`icl_kd.tasks.Shift`), and a pool of labelled candidates
mixes points from Q with points from other shifted distributions. k
demonstrations are chosen from the pool by

- ``random``: uniformly without replacement;
- ``retrieval``: nearest-neighbour retrieval for the query set (each query in
  turn adds its nearest unchosen pool point, until k are chosen);
- ``mmd_greedy``: greedy minimisation of the biased MMD^2 between the chosen
  points and the queries (Gaussian kernel, median-heuristic bandwidth);
- ``knn_per_query``: every query gets its own k nearest pool points (a
  separate prompt per query; reported for reference, not in the correlation);

and also by ``mixture`` prompts that take a random fraction of their points
from the part of the pool drawn from Q (a spread of MMD values). The ICL error
of a prompt is the model's mean squared error over the queries divided by the
mean squared query label (a scale-free error). The report gives the error of
every strategy (and of ridge and one-GD-step baselines on the same prompts),
the MMD of its prompts to the queries, and the Spearman correlation between
MMD and error over all shared prompts with a bootstrap interval over trials.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_kd import baselines, models, mmd, runtime, tasks
from icl_kd.experiments import _common

NAME = "E1"
DESCRIPTION = "MMD-guided demonstration selection under distribution shift (C5/C6)"
STRATEGIES = ("random", "retrieval", "mmd_greedy", "knn_per_query")
SHARED = ("random", "retrieval", "mmd_greedy")


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


QUICK = Config(n_pool=64, n_trials=12, n_mixture=4, train_steps=200, n_boot=200)

FLAGS = (
    _common.Flag("--trials", "n_trials", int, "trials (a task, queries and a pool each)"),
    _common.Flag("--steps", "train_steps", int, "training steps of the attention layer"),
    _common.Flag("--k", "k", int, "demonstrations per prompt"),
    _common.Flag("--pool", "n_pool", int, "candidate demonstrations per trial"),
    _common.Flag("--shift", "query_shift", float, "length of the query distribution's mean shift"),
)


class Results(NamedTuple):
  """Per trial and strategy: the relative ICL error and the MMD^2 to the queries.

  Attributes:
    error: dict strategy -> (n_trials,) model error (relative MSE over the queries).
    mmd2: dict strategy -> (n_trials,) unbiased MMD^2(prompt, queries).
    ridge_error, gd_error: dict strategy -> (n_trials,) baselines on the same prompts.
    mixture_error, mixture_mmd2: (n_trials, n_mixture) for the mixture prompts.
    correlation: Spearman(MMD^2, error) over all shared and mixture prompts.
    wins: fraction of trials where mmd_greedy has lower error than retrieval / random.
    train_losses: (train_steps,) training curve of the model.
    params: the trained layer's parameters.
  """
  error: dict
  mmd2: dict
  ridge_error: dict
  gd_error: dict
  mixture_error: np.ndarray
  mixture_mmd2: np.ndarray
  correlation: _common.Correlation
  wins: dict
  train_losses: np.ndarray
  params: dict


def mmd_greedy(pool: jax.Array, queries: jax.Array, k: int, *, kernel) -> jax.Array:
  """Indices (k,) of pool points chosen greedily to minimise the biased MMD^2 to ``queries``.

      MMD_b^2(S, Q) = (1/|S|^2) sum_{i,j in S} k(p_i, p_j)
                    - (2/(|S| M)) sum_{i in S, j} k(p_i, q_j) + const

  At each step the candidate that minimises MMD_b^2(S + {c}, Q) is added
  (without replacement). Gram matrices come from :func:`icl_kd.mmd.gram`.
  """
  k_pp = mmd.gram(kernel, pool, pool)                                       # (P, P)
  k_pq = jnp.mean(mmd.gram(kernel, pool, queries), axis=1)                  # (P,)
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

  init = (jnp.zeros((k,), jnp.int32), jnp.zeros((n,), bool), jnp.zeros((), pool.dtype),
          jnp.zeros((n,), pool.dtype), jnp.zeros((), pool.dtype))
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


def _trial_data(key, cfg: Config):
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
  return w, queries, jnp.dot(queries, w), pool, pool_y, n_match


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


def run(config: Config = Config(), *, key) -> Results:
  """Trains the layer, runs every selection strategy on ``n_trials`` trials; see module doc.

  Args:
    config: the sizes (:data:`QUICK` for a small run).
    key: PRNG key (keyword-only); the model, the trials and the bootstrap are drawn from it.
  """
  cfg = config
  k_model, k_trials = jax.random.split(key)
  d_tok = cfg.d + 1
  model = models.SoftmaxAttentionLayer(d_k=d_tok, d_v=1, tau=1.0, init_scale=0.5)
  params, losses = _common.train_regression_model(
      model, key=k_model, d=cfg.d, n_demos=cfg.k, n_queries=4, steps=cfg.train_steps,
      batch=cfg.batch, learning_rate=cfg.learning_rate, noise_std=cfg.noise_std,
      sampler=lambda k: training_prompts(k, cfg), progress=cfg.progress, desc="E1 train")
  params = _common.to_float64(params)

  def scores(predict, idx, pool, pool_y, queries, targets, kernel):
    xs, ys = pool[idx], pool_y[idx]
    denom = jnp.mean(targets ** 2)
    err = jnp.mean((jax.vmap(lambda q: predict(xs, ys, q))(queries) - targets) ** 2) / denom
    rid = jax.vmap(lambda q: baselines.ridge(xs, ys, q, lam=cfg.ridge_lam))(queries)
    gd = jax.vmap(lambda q: baselines.averaging(xs, ys, q))(queries)
    return (err, mmd.mmd2(xs, queries, kernel=kernel),
            jnp.mean((rid - targets) ** 2) / denom, jnp.mean((gd - targets) ** 2) / denom)

  def trial(params, k):
    # params is an argument (not a closed-over constant), so the library's
    # value checks see tracers under jit.
    def predict(xs, ys, query):
      demos = tasks.regression_tokens(xs, ys)
      return models.icl_predict(model, params, demos, tasks.query_token(query))

    _, queries, targets, pool, pool_y, n_match = _trial_data(k, cfg)
    kernel = mmd.gaussian_kernel(mmd.median_bandwidth(pool, queries))
    k_rand, k_mix = jax.random.split(jax.random.fold_in(k, 1))
    chosen = {
        "random": jax.random.choice(k_rand, cfg.n_pool, (cfg.k,), replace=False),
        "retrieval": retrieval(pool, queries, cfg.k),
        "mmd_greedy": mmd_greedy(pool, queries, cfg.k, kernel=kernel),
    }
    out = {s: scores(predict, idx, pool, pool_y, queries, targets, kernel)
           for s, idx in chosen.items()}
    # knn per query: each query gets its own prompt of its k nearest pool points.
    d2 = jax.vmap(lambda q: jnp.sum((pool - q[None, :]) ** 2, axis=1))(queries)  # (M, P)
    nn_idx = jax.lax.top_k(-d2, cfg.k)[1]                                   # (M, k)
    denom = jnp.mean(targets ** 2)
    per_q = lambda f: jax.vmap(lambda idx, q: f(pool[idx], pool_y[idx], q))(nn_idx, queries)
    out["knn_per_query"] = (
        jnp.mean((per_q(predict) - targets) ** 2) / denom,
        jnp.mean(jax.vmap(lambda idx: mmd.mmd2(pool[idx], queries, kernel=kernel))(nn_idx)),
        jnp.mean((per_q(lambda x, y, q: baselines.ridge(x, y, q, lam=cfg.ridge_lam))
                  - targets) ** 2) / denom,
        jnp.mean((per_q(baselines.averaging) - targets) ** 2) / denom)
    # mixture prompts: r of the k points from the part of the pool drawn from Q.
    n_other = cfg.n_pool - n_match

    def mixture(km, r):
      k1, k2 = jax.random.split(km)
      from_q = jax.random.permutation(k1, n_match)[:cfg.k]
      from_o = jax.random.permutation(k2, n_other)[:cfg.k] + n_match
      idx = jnp.where(jnp.arange(cfg.k) < r, from_q, from_o)
      return scores(predict, idx, pool, pool_y, queries, targets, kernel)[:2]

    counts = jnp.round(jnp.linspace(0, min(cfg.k, n_match), cfg.n_mixture)).astype(jnp.int32)
    mix = jax.vmap(mixture)(jax.random.split(k_mix, cfg.n_mixture), counts)
    return out, mix

  trial = jax.jit(trial)
  outs, mixes = [], []
  keys = jax.random.split(k_trials, cfg.n_trials)
  bar = runtime.Progress("E1 trials", cfg.n_trials, enabled=cfg.progress)
  for t in range(cfg.n_trials):
    o, m = trial(params, keys[t])
    outs.append(jax.tree_util.tree_map(np.asarray, o))
    mixes.append(jax.tree_util.tree_map(np.asarray, m))
    bar.update(t + 1)
  get = lambda s, i: np.array([o[s][i] for o in outs])
  error = {s: get(s, 0) for s in STRATEGIES}
  mmd2_ = {s: get(s, 1) for s in STRATEGIES}
  ridge_error = {s: get(s, 2) for s in STRATEGIES}
  gd_error = {s: get(s, 3) for s in STRATEGIES}
  mix_err = np.stack([m[0] for m in mixes])                                 # (T, n_mix)
  mix_mmd = np.stack([m[1] for m in mixes])
  all_mmd = np.concatenate([np.stack([mmd2_[s] for s in SHARED], 1), mix_mmd], 1)  # (T, .)
  all_err = np.concatenate([np.stack([error[s] for s in SHARED], 1), mix_err], 1)
  groups = np.repeat(np.arange(cfg.n_trials), all_mmd.shape[1])
  corr = _common.bootstrap_spearman(all_mmd.ravel(), all_err.ravel(),
                                    seed=_common.seed_of(jax.random.fold_in(key, 2)),
                                    groups=groups, n_boot=cfg.n_boot)
  wins = {"mmd_greedy<retrieval": float(np.mean(error["mmd_greedy"] < error["retrieval"])),
          "mmd_greedy<random": float(np.mean(error["mmd_greedy"] < error["random"])),
          "mmd_greedy<knn_per_query": float(np.mean(error["mmd_greedy"] < error["knn_per_query"]))}
  return Results(error, mmd2_, ridge_error, gd_error, mix_err, mix_mmd, corr, wins, losses,
                 params)


def summary(res: Results) -> tuple[str, dict]:
  """The printed table (one row per strategy, the correlation, the win rates) and its numbers."""
  rows = []
  for s in STRATEGIES:
    e = res.error[s]
    rows.append([s, float(np.mean(e)), float(np.std(e) / np.sqrt(len(e))), float(np.median(e)),
                 float(np.mean(res.mmd2[s])), float(np.mean(res.ridge_error[s])),
                 float(np.mean(res.gd_error[s]))])
  table = runtime.format_table(
      ["strategy", "model err", "se", "median", "MMD^2", "ridge err", "1-step GD err"], rows)
  c = res.correlation
  text = (f"{table}\nSpearman(MMD^2, model error) over {c.n} shared prompts: "
          f"{c.rho:.3f} [95% CI {c.lo:.3f}, {c.hi:.3f}]\n"
          + ", ".join(f"P({k}) = {v:.2f}" for k, v in res.wins.items())
          + f"\n{_common.MMD2_NOTE}")
  data = {"strategies": {r[0]: dict(zip(["error_mean", "error_se", "error_median", "mmd2_mean",
                                         "ridge_error_mean", "gd_error_mean"], r[1:]))
                         for r in rows},
          "spearman": c._asdict(), "wins": res.wins,
          "final_train_loss": float(np.mean(res.train_losses[-20:]))}
  return text, data


def arrays(res: Results) -> dict:
  """The per-trial arrays saved in ``E1.npz``."""
  out = {f"error_{s}": res.error[s] for s in STRATEGIES}
  out.update({f"mmd2_{s}": res.mmd2[s] for s in STRATEGIES})
  out.update(mixture_error=res.mixture_error, mixture_mmd2=res.mixture_mmd2,
             train_losses=res.train_losses)
  return out


def save(res: Results, out: str, *, info: dict) -> list[str]:
  """Writes ``E1.json`` (info and summary), ``E1.npz`` (arrays), ``E1_model.npz`` under ``out``."""
  return _common.save(out, NAME, arrays=arrays(res), summary={**info, **summary(res)[1]},
                      params=res.params)


def main(argv=None) -> int:
  """``python -m icl_kd.experiments E1 [--quick] [--seed S] [--out DIR] ...``; returns 0."""
  return _common.main(sys.modules[__name__], argv)
