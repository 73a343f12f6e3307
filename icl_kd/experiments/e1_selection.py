"""E1: demonstration selection by the theory's MMD under distribution shift.

docs/THEORY.md E1, with C5 (``thm4.1``): the bias of the distilled weights,
||W_0(S) - W_0(T)||_HS = c eta MMD_kV(S, T), is an MMD between the
demonstrations S and a target sample T in the distillation kernel of the
model's own key and value maps, on the tokens the head reads, e = (x, y).

Model. One softmax-attention layer with one head (so "summed over the heads of
the layer that reads the demonstrations" is one head here), trained on
linear-regression prompts whose demonstrations and queries share one
distribution, mean shift |mu| in {0, 1, 2, 3} (:func:`training_prompts`), with
Adam under a warm-up cosine schedule. Such a layer outputs a softmax-weighted
average of its value map over the tokens: a kernel smoother of the labels, not
a least-squares solver. ``reference`` measures how well it learns in context
(its error on prompts of k demonstrations drawn from the query distribution
itself, against ridge regression on the same prompts and, for Gaussian inputs,
the one-gradient-step optimum), and the training curve shows whether it has
converged.

Trials. A task w ~ N(0, I), M queries from a shifted distribution Q
(:class:`icl_kd.tasks.Shift`, |mean| = ``query_shift``), a target sample T of
``n_target`` labelled demonstrations of Q (held out from the pool; noisy labels
as every demonstration), and a pool of labelled candidates: a fraction
``match_fraction`` from Q, the rest from three other shifted distributions.
Inputs are N(0, I) or, with ``inputs="ball"``, uniform on the unit ball before
the shift (bounded support). k demonstrations are chosen by the rules of
:data:`RULES` (every rule from :mod:`icl_kd.selection`; ``oracle`` marks the
rules that see T's labels or know which pool points come from Q), and
``n_mixture`` mixture sets take a growing number of their k points from the
part of the pool drawn from Q (a spread of MMD values). Paired design: every
set answers the same queries.

Measured on every set (``icl_kd.chain.chain_measures`` at eta = 1/2, eq12):
MMD^2(S, T) in the kernels of :data:`icl_kd.selection.KERNELS` by both
estimators (normalised: k_x / (M_x M_phi)^2 over the trial's pool and T; k_V,
k_x: the fixed-eta softmax reading; Gaussian: on the inputs x, the bandwidth
the median distance between pool and query inputs), the bias and C5's right
sides, the literal readings, and the output gap at each query; and the
relative ICL error (model MSE over the queries / mean squared query label)
with ridge regression and one averaging step on the same prompts.

Estimators. The unbiased MMD^2 (U-statistic) is the default; the biased one
(V-statistic, the exact C5 bias of empirical measures) is shown beside it. On
Gaussian inputs the biased estimate's diagonal exp(|W^K e|^2 / tau) has
infinite mean when an eigenvalue of W^K^T W^K exceeds tau/2 (the report gives
the largest one), so it is dominated by the largest keys; on the ball every
moment exists.
"""

from __future__ import annotations

import sys
import textwrap
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from icl_kd import baselines, chain, mmd, models, runtime, selection, tasks
from icl_kd.experiments import _common

NAME = "E1"
DESCRIPTION = ("demonstration selection by the theory's MMD (normalised, k_V; unbiased and "
               "biased), Gaussian MMD, retrieval, random and k-NN under distribution shift (C5)")
Rule = selection.Rule
RULES = (
    Rule("mmd_normalised", True, "greedy unbiased MMD^2 in the normalised kernel to T (orders "
                                 "sets as MMD_kx: one head, a constant per trial)"),
    Rule("mmd_kv", True, "greedy unbiased MMD_kV^2 to T"),
    Rule("mmd_kv_biased", True, "greedy biased (V-statistic) MMD_kV^2 to T"),
    Rule("gaussian", False, "greedy unbiased Gaussian MMD^2 on the inputs, to the queries' "
                            "inputs"),
    Rule("retrieval", False, "the queries take turns adding their nearest pool point"),
    Rule("random_match", True, "uniformly among the pool points drawn from Q (knows them)"),
    Rule("random", False, "uniformly from the pool"),
    Rule("knn", False, "per query: its k nearest pool points (one prompt per query)"),
)
RULE_NAMES = tuple(r.name for r in RULES)
SET_RULES = RULE_NAMES[:-1]                  # one prompt for all queries (knn: one per query)
KERNELS, ESTIMATORS = selection.KERNELS, selection.ESTIMATORS
TARGET = ("T: n_target labelled demonstrations (x, <w, x> + noise) of the query distribution Q, "
          "held out from the pool (an oracle target: the MMD rules see its labels)")
HEADS = "one softmax layer with one head: MMD^2 of that head"
MODEL_TAU = 1.0
ETA = 0.5                                    # c eta = 1 under eq12; ranks and ratios do not use it


class Config(NamedTuple):
  """Sizes of one E1 run (``run`` draws everything from its key)."""
  d: int = 4
  k: int = 8                    # demonstrations per prompt
  n_pool: int = 128
  match_fraction: float = 0.25  # fraction of the pool drawn from the query distribution Q
  n_queries: int = 16
  n_target: int = 16            # the target sample T (labelled demonstrations of Q)
  n_trials: int = 128
  n_mixture: int = 8            # mixture sets per trial
  query_shift: float = 2.0      # |mean shift| of Q (and of the other pool components)
  noise_std: float = 0.25
  ridge_lam: float = 0.1
  inputs: str = "gaussian"      # "gaussian" or "ball" (bounded support)
  train_steps: int = 6000
  batch: int = 128
  learning_rate: float = 3e-3   # peak of the warm-up cosine schedule
  n_reference: int = 2000       # prompts of the layer's reference errors
  n_boot: int = 1000
  progress: bool = True


QUICK = Config(n_pool=64, n_trials=12, n_mixture=4, train_steps=300, batch=64, n_reference=200,
               n_boot=200)

FLAGS = (
    _common.Flag("--trials", "n_trials", int, "trials (a task, queries, a target and a pool each)",
                 minimum=1),
    _common.Flag("--steps", "train_steps", int, "training steps of the attention layer",
                 minimum=1),
    _common.Flag("--k", "k", int, "demonstrations per prompt", minimum=2),
    _common.Flag("--pool", "n_pool", int, "candidate demonstrations per trial", minimum=2),
    _common.Flag("--target", "n_target", int, "labelled target demonstrations of Q per trial",
                 minimum=2),
    _common.Flag("--mixtures", "n_mixture", int, "mixture sets per trial", minimum=1),
    _common.Flag("--shift", "query_shift", float, "length of the query distribution's mean shift",
                 minimum=0.0),
    _common.Flag("--inputs", "inputs", str, "input distribution before the shifts",
                 choices=_common.INPUTS),
)


def check_config(cfg: Config) -> None:
  """Raises :class:`icl_kd.experiments._common.UsageError` naming the flag of a bad size."""
  n_match = int(round(cfg.match_fraction * cfg.n_pool))
  if cfg.k > cfg.n_pool - n_match or cfg.k > n_match:
    raise _common.UsageError(
        f"--k must be at most the pool's part from Q ({n_match}) and the rest "
        f"({cfg.n_pool - n_match}) of --pool {cfg.n_pool}, got {cfg.k}")
  if cfg.n_queries < 1:
    raise _common.UsageError(f"n_queries must be >= 1, got {cfg.n_queries}")


class Reference(NamedTuple):
  """How well the trained layer learns in context (``n_reference`` fresh prompts each).

  Attributes:
    matched: relative error on prompts of k demonstrations from the query distribution
      (|mean| = query_shift; demonstrations and queries share the distribution).
    matched_ridge: ridge regression on the same prompts.
    centred: relative error on unshifted prompts (|mean| = 0).
    centred_ridge: ridge on them.
    one_step_optimum: the optimal one-gradient-step error on unshifted Gaussian prompts,
      normalised by d (closed form; NaN for ball inputs).
    train_loss_half, train_loss_final: mean training loss over the last 5% of the first
      half and of the whole run (equal when training has converged).
    max_key_eigenvalue: the largest eigenvalue of W^K^T W^K / tau over the input
      coordinates (> 1/2: the biased MMD_kV^2's diagonal has infinite mean on Gaussian x).
  """
  matched: float
  matched_ridge: float
  centred: float
  centred_ridge: float
  one_step_optimum: float
  train_loss_half: float
  train_loss_final: float
  max_key_eigenvalue: float


class Results(NamedTuple):
  """Per trial and candidate set.

  Attributes:
    set_names: (S,) the one-prompt rules of :data:`SET_RULES`, then ``mixture_i``.
    error, ridge_error, gd_error: (T, S) relative errors on the queries.
    own_fraction: (T, S) fraction of the set drawn from Q.
    measures: :class:`icl_kd.chain.ChainMeasures` with leading axes (T, S) (NumPy).
    knn_error, knn_ridge_error: (T,) the per-query k-NN prompts.
    chosen: (T, S, k) pool indices of every candidate set (the rules' first).
    reference: :class:`Reference`.
    train_losses: (train_steps,). params: the trained layer (float64).
    boot_seed: the bootstrap's NumPy seed (from the run's key).
    config: the run's Config.
  """
  set_names: tuple
  error: np.ndarray
  ridge_error: np.ndarray
  gd_error: np.ndarray
  own_fraction: np.ndarray
  measures: chain.ChainMeasures
  knn_error: np.ndarray
  knn_ridge_error: np.ndarray
  chosen: np.ndarray
  reference: Reference
  train_losses: np.ndarray
  params: dict
  boot_seed: int
  config: Config


# -- data -------------------------------------------------------------------------------


class Trial(NamedTuple):
  """One trial's data.

  Attributes:
    w: (d,) the task. queries: (M, d) from Q. targets: (M,) <w, x'_j>.
    target_x: (m, d) the target sample's inputs, from Q; target_y: (m,) their noisy labels.
    pool: (P, d) candidates; pool_y: (P,) their noisy labels.
    n_match: the first ``n_match`` pool points are drawn from Q.
  """
  w: jax.Array
  queries: jax.Array
  targets: jax.Array
  target_x: jax.Array
  target_y: jax.Array
  pool: jax.Array
  pool_y: jax.Array
  n_match: int

  def target_tokens(self) -> jax.Array:
    """(m, d+1): the target sample T, tokens (x, y)."""
    return tasks.regression_tokens(self.target_x, self.target_y)

  def pool_tokens(self) -> jax.Array:
    """(P, d+1): the candidates as the layer reads them, tokens (x_i, y_i)."""
    return tasks.regression_tokens(self.pool, self.pool_y)

  def query_tokens(self) -> jax.Array:
    """(M, d+1): the query tokens (x', 0)."""
    return jax.vmap(tasks.query_token)(self.queries)


def trial_data(key, cfg: Config) -> Trial:
  """One trial: task w, queries and target from Q, a pool mixing Q with other components."""
  d = cfg.d
  kw, kq, kqs, kp, kps, ke, kcomp, kt, kte = jax.random.split(key, 9)
  dt = jnp.float64
  base = lambda k, n: _common.regression_inputs(k, n, d, inputs=cfg.inputs, dtype=dt)  # noqa
  w = jax.random.normal(kw, (d,), dt)
  q_shift = tasks.Shift(mean=cfg.query_shift)
  # queries, the target sample and the pool's part from Q share Q's direction (key kqs)
  queries = tasks.shift_inputs(base(kq, cfg.n_queries), q_shift, key=kqs)
  target_x = tasks.shift_inputs(base(kt, cfg.n_target), q_shift, key=kqs)
  n_match = int(round(cfg.match_fraction * cfg.n_pool))
  pool_base = base(kp, cfg.n_pool)
  matched = tasks.shift_inputs(pool_base[:n_match], q_shift, key=kqs)
  # the rest: three components, at the origin with skew, and two other mean shifts.
  rest = pool_base[n_match:]
  comp = jax.random.randint(kcomp, (rest.shape[0],), 0, 3)
  ks = jax.random.split(kps, 3)
  options = jnp.stack([
      tasks.shift_inputs(rest, tasks.Shift(skew=1.0), key=ks[0]),
      tasks.shift_inputs(rest, tasks.Shift(mean=cfg.query_shift), key=ks[1]),
      tasks.shift_inputs(rest, tasks.Shift(mean=cfg.query_shift, scale=0.5), key=ks[2])])
  others = jnp.take_along_axis(options, comp[None, :, None], axis=0)[0]
  pool = jnp.concatenate([matched, others])                                 # (P, d)
  pool_y = jnp.dot(pool, w) + cfg.noise_std * jax.random.normal(ke, (cfg.n_pool,), dt)
  target_y = jnp.dot(target_x, w) + cfg.noise_std * jax.random.normal(kte, (cfg.n_target,), dt)
  return Trial(w, queries, jnp.dot(queries, w), target_x, target_y, pool, pool_y, n_match)


TRAIN_SHIFTS = (0.0, 1.0, 2.0, 3.0)


def training_prompts(key, cfg, *, n_prompts: int | None = None, shift_lengths=None
                     ) -> tasks.RegressionPrompts:
  """A batch of prompts whose demonstrations and queries share one mean shift (float32).

  Prompt b is shifted by m_b u_b, with u_b a random unit vector and m_b cycling
  through ``shift_lengths`` (default ``TRAIN_SHIFTS``), so the layer learns in-context
  regression wherever the prompt and the queries come from the same distribution.
  """
  n = cfg.batch if n_prompts is None else n_prompts
  lengths = TRAIN_SHIFTS if shift_lengths is None else shift_lengths
  kw, kx, kq, ke, k_dir = jax.random.split(key, 5)
  dt = jnp.float32
  w = jax.random.normal(kw, (n, cfg.d), dt)
  xs = _common.regression_inputs(kx, n * cfg.k, cfg.d, inputs=cfg.inputs).reshape(n, cfg.k, cfg.d)
  qs = _common.regression_inputs(kq, n * 4, cfg.d, inputs=cfg.inputs).reshape(n, 4, cfg.d)
  u = jax.random.normal(k_dir, (n, cfg.d), dt)
  v = (jnp.resize(jnp.asarray(lengths, dt), (n,))[:, None] * u
       / jnp.linalg.norm(u, axis=1, keepdims=True))                         # (B, d)
  xs, qs = xs + v[:, None, :], qs + v[:, None, :]
  ys = jnp.einsum("bnd,bd->bn", xs, w) + cfg.noise_std * jax.random.normal(ke, (n, cfg.k), dt)
  return tasks.RegressionPrompts(xs, ys, qs, jnp.einsum("bqd,bd->bq", qs, w), w)


def trial_keys(key, cfg: Config):
  """(model key, (n_trials,) trial keys, bootstrap key, reference key): how :func:`run` splits."""
  k_model, k_trials, k_boot, k_ref = jax.random.split(key, 4)
  return k_model, jax.random.split(k_trials, cfg.n_trials), k_boot, k_ref


def make_model(cfg) -> models.SoftmaxAttentionLayer:
  """The one-head softmax-attention layer E1 trains, on tokens (x, y) of width d + 1
  (``cfg`` needs the field d: E1's Config or E6's)."""
  return models.SoftmaxAttentionLayer(d_k=cfg.d + 1, d_v=1, tau=MODEL_TAU, init_scale=0.5)


def train_layer(cfg, key, *, shift_lengths=TRAIN_SHIFTS, name: str = NAME):
  """Trains :func:`make_model` on :func:`training_prompts` (Adam, warm-up cosine schedule);
  returns (model, float64 params, losses). ``cfg`` needs E1's fields d, k, batch, inputs,
  noise_std, train_steps, learning_rate, progress (E6's Config has them)."""
  model = make_model(cfg)
  warm = max(1, min(200, cfg.train_steps // 10))
  opt = optax.adam(optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warm,
                                                      max(cfg.train_steps, warm + 1)))
  params, losses = _common.train_regression_model(
      model, key=key, d=cfg.d, n_demos=cfg.k, n_queries=4, steps=cfg.train_steps,
      batch=cfg.batch, learning_rate=cfg.learning_rate, noise_std=cfg.noise_std,
      sampler=lambda k: training_prompts(k, cfg, shift_lengths=shift_lengths), optimizer=opt,
      progress=cfg.progress, desc=f"{name} train")
  return model, _common.to_float64(params), np.asarray(losses)


def relative_errors(model, params, prompts: tasks.RegressionPrompts, lam: float):
  """(layer, ridge) relative errors mean (pred - y')^2 / mean y'^2 over prompts and queries."""
  p = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), prompts)

  def one(xs, ys, qs):
    demos = tasks.regression_tokens(xs, ys)
    pred = jax.vmap(lambda q: models.icl_predict(model, params, demos, tasks.query_token(q)))(qs)
    rid = jax.vmap(lambda q: baselines.ridge(xs, ys, q, lam=lam))(qs)
    return pred, rid

  pred, rid = jax.jit(jax.vmap(one))(p.xs, p.ys, p.queries)
  den = jnp.mean(p.targets ** 2)
  return (float(jnp.mean((pred - p.targets) ** 2) / den),
          float(jnp.mean((rid - p.targets) ** 2) / den))


def reference_errors(model, params, losses: np.ndarray, cfg: Config, key) -> Reference:
  """:class:`Reference` of the trained layer."""
  k1, k2 = jax.random.split(key)
  matched = training_prompts(k1, cfg, n_prompts=cfg.n_reference, shift_lengths=(cfg.query_shift,))
  centred = training_prompts(k2, cfg, n_prompts=cfg.n_reference, shift_lengths=(0.0,))
  m, mr = relative_errors(model, params, matched, cfg.ridge_lam)
  c, cr = relative_errors(model, params, centred, cfg.ridge_lam)
  opt = (baselines.isotropic_one_step_optimum(d=cfg.d, n=cfg.k, noise_var=cfg.noise_std ** 2)
         .risk / cfg.d if cfg.inputs == "gaussian" else float("nan"))
  n = len(losses)
  tail = max(1, n // 20)
  half = losses[: max(1, n // 2)]
  w_k = np.asarray(models.attention_params(params).w_k)[:, :cfg.d]          # acts on x
  eig = float(np.max(np.linalg.eigvalsh(w_k.T @ w_k)) / MODEL_TAU)
  return Reference(m, mr, c, cr, float(opt), float(np.mean(half[-tail:])),
                   float(np.mean(losses[-tail:])), eig)


# -- selection --------------------------------------------------------------------------


def rule_kernels(params, cfg: Config, trial: Trial) -> dict:
  """The kernels of :data:`icl_kd.selection.KERNELS` for the trial (one head).

  normalised: constants over the pool and T; Gaussian: on inputs, bandwidth the
  median distance between pool and query inputs (:func:`icl_kd.mmd.median_bandwidth`).
  """
  del cfg
  p = models.attention_params(params)
  support = jnp.concatenate([trial.pool_tokens(), trial.target_tokens()])
  return selection.theory_kernels(p, tau=MODEL_TAU, support=support,
                                  bandwidth=mmd.median_bandwidth(trial.pool, trial.queries))


def select(rule: str, kernels: dict, trial: Trial, k: int, *, key=None) -> jax.Array:
  """The (k,) pool indices the one-prompt ``rule`` (in :data:`SET_RULES`) chooses."""
  pool, target = trial.pool_tokens(), trial.target_tokens()
  if rule == "mmd_normalised":
    return selection.mmd_greedy(pool, target, k, kernel=kernels["normalised"])
  if rule == "mmd_kv":
    return selection.mmd_greedy(pool, target, k, kernel=kernels["k_V"])
  if rule == "mmd_kv_biased":
    return selection.mmd_greedy(pool, target, k, kernel=kernels["k_V"], estimator="biased")
  if rule == "gaussian":
    return selection.mmd_greedy(trial.pool, trial.queries, k, kernel=kernels["gaussian"])
  if rule == "retrieval":
    return selection.retrieval(trial.pool, trial.queries, k)
  if rule in ("random", "random_match"):
    if key is None:
      raise ValueError(f"rule {rule!r} needs a key")
    n = trial.pool.shape[0]
    allowed = jnp.arange(n) < trial.n_match if rule == "random_match" else None
    return selection.random_choice(n, k, key=key, allowed=allowed)
  raise ValueError(f"rule must be one of {SET_RULES}, got {rule!r}")


def candidate_sets(kernels: dict, trial: Trial, cfg: Config, key) -> jax.Array:
  """(S, k) pool indices: the one-prompt rules' choices, then ``n_mixture`` mixture sets.

  Mixture i takes r_i of its k points from the pool's part from Q and the rest from the
  other part, r_i on round(linspace(0, k, n_mixture)).
  """
  k_rand, k_match, k_mix = jax.random.split(key, 3)
  keys = {"random": k_rand, "random_match": k_match}
  rules = [select(r, kernels, trial, cfg.k, key=keys.get(r)) for r in SET_RULES]
  n_other = cfg.n_pool - trial.n_match

  def mixture(km, r):
    k1, k2 = jax.random.split(km)
    from_q = jax.random.permutation(k1, trial.n_match)[:cfg.k]
    from_o = jax.random.permutation(k2, n_other)[:cfg.k] + trial.n_match
    return jnp.where(jnp.arange(cfg.k) < r, from_q, from_o).astype(jnp.int32)

  counts = jnp.round(jnp.linspace(0, cfg.k, cfg.n_mixture)).astype(jnp.int32)
  mix = jax.vmap(mixture)(jax.random.split(k_mix, cfg.n_mixture), counts)  # (n_mix, k)
  return jnp.concatenate([jnp.stack(rules), mix])


def set_names(cfg: Config) -> tuple:
  """The names of the candidate sets, in :func:`candidate_sets`' order."""
  return SET_RULES + tuple(f"mixture_{i}" for i in range(cfg.n_mixture))


def measure_trial(model, params, cfg: Config, key):
  """Everything one trial measures (see :class:`Results`); jittable (``params`` an argument)."""
  tr = trial_data(key, cfg)
  kernels = rule_kernels(params, cfg, tr)
  sets = candidate_sets(kernels, tr, cfg, jax.random.fold_in(key, 1))      # (S, k)
  p = models.attention_params(params)
  denom = jnp.mean(tr.targets ** 2)
  support = jnp.concatenate([tr.pool_tokens(), tr.target_tokens()])
  bandwidth = mmd.median_bandwidth(tr.pool, tr.queries)
  target, queries = tr.target_tokens(), tr.query_tokens()

  def predict(xs, ys, q):
    return models.icl_predict(model, params, tasks.regression_tokens(xs, ys), tasks.query_token(q))

  def errors(xs, ys):
    pred = jax.vmap(lambda q: predict(xs, ys, q))(tr.queries)
    rid = jax.vmap(lambda q: baselines.ridge(xs, ys, q, lam=cfg.ridge_lam))(tr.queries)
    gd = jax.vmap(lambda q: baselines.averaging(xs, ys, q))(tr.queries)
    return tuple(jnp.mean((a - tr.targets) ** 2) / denom for a in (pred, rid, gd))

  def one_set(idx):
    xs, ys = tr.pool[idx], tr.pool_y[idx]
    err, rid, gd = errors(xs, ys)
    m = chain.chain_measures(p, tasks.regression_tokens(xs, ys), target, queries, tau=MODEL_TAU,
                             eta=ETA, support=support, bandwidth=bandwidth, gaussian_s=xs,
                             gaussian_t=tr.target_x)
    return err, rid, gd, jnp.mean(idx < tr.n_match), m

  err, rid, gd, own, measures = jax.vmap(one_set)(sets)
  # knn: each query gets its own prompt of its k nearest pool points.
  d2 = jax.vmap(lambda q: jnp.sum((tr.pool - q[None, :]) ** 2, axis=1))(tr.queries)  # (M, P)
  nn_idx = jax.lax.top_k(-d2, cfg.k)[1]                                     # (M, k)
  def per_q(f):
    return jax.vmap(lambda i, q: f(tr.pool[i], tr.pool_y[i], q))(nn_idx, tr.queries)
  knn = jnp.mean((per_q(predict) - tr.targets) ** 2) / denom
  knn_r = jnp.mean((per_q(lambda x, y, q: baselines.ridge(x, y, q, lam=cfg.ridge_lam))
                    - tr.targets) ** 2) / denom
  return err, rid, gd, own, measures, knn, knn_r, sets


def run(config: Config = Config(), *, key) -> Results:
  """Trains the layer, then measures every candidate set of ``n_trials`` paired trials.

  Args:
    config: the sizes (:data:`QUICK` for a small run).
    key: PRNG key (keyword-only); split by :func:`trial_keys`.
  """
  cfg = config
  k_model, keys, k_boot, k_ref = trial_keys(key, cfg)
  model, params, losses = train_layer(cfg, k_model)
  reference = reference_errors(model, params, losses, cfg, k_ref)
  fn = jax.jit(lambda p, k: measure_trial(model, p, cfg, k))
  outs = []
  bar = runtime.Progress(f"{NAME} trials", cfg.n_trials, enabled=cfg.progress)
  for t in range(cfg.n_trials):
    outs.append(jax.tree_util.tree_map(np.asarray, fn(params, keys[t])))
    bar.update(t + 1)
  stack = lambda i: jax.tree_util.tree_map(lambda *a: np.stack(a), *[o[i] for o in outs])  # noqa
  return Results(set_names(cfg), stack(0), stack(1), stack(2), stack(3), stack(4), stack(5),
                 stack(6), stack(7), reference, losses, params, _common.seed_of(k_boot), cfg)


# -- statistics --------------------------------------------------------------------------


def mmd2_of(res: Results, kernel: str, estimator: str) -> np.ndarray:
  """(T, S) MMD^2(set, T) in one kernel and estimator."""
  return res.measures.mmd2[..., KERNELS.index(kernel), ESTIMATORS.index(estimator)]


class RuleRow(NamedTuple):
  """One rule's row: errors, its sets' median MMD^2 per (kernel, estimator), Q fraction."""
  name: str
  oracle: bool
  error_mean: float
  error_se: float
  error_median: float
  ridge_error_mean: float
  own_fraction: float
  mmd2_median: dict
  vs_retrieval: _common.PairedDifference | None


class Statistics(NamedTuple):
  """What the report states (every interval a bootstrap over trials, the clusters here).

  Attributes:
    rules: tuple of :class:`RuleRow`.
    within_trial: dict "kernel/estimator" -> LinkStat of Spearman(MMD^2, error) within
      trials over the one-prompt and mixture sets.
    pooled: dict "kernel/estimator" -> Correlation over all sets of all trials.
  """
  rules: tuple
  within_trial: dict
  pooled: dict


def statistics(res: Results, *, n_boot: int) -> Statistics:
  """:class:`Statistics` of an E1 (or E1-design) run."""
  n_t, n_s = res.error.shape
  trial = np.repeat(np.arange(n_t), n_s)
  seed = res.boot_seed
  rows = []
  ret = res.error[:, SET_RULES.index("retrieval")]
  for rule in RULES:
    if rule.name == "knn":
      e, rid, own, med, vs = res.knn_error, res.knn_ridge_error, float("nan"), {}, None
    else:
      i = SET_RULES.index(rule.name)
      e, rid, own = res.error[:, i], res.ridge_error[:, i], float(res.own_fraction[:, i].mean())
      med = {f"{k}/{es}": float(np.median(mmd2_of(res, k, es)[:, i]))
             for k in KERNELS for es in ESTIMATORS}
      vs = (None if rule.name == "retrieval" else
            _common.paired_difference(e - ret, clusters=np.arange(n_t), seed=seed, n_boot=n_boot))
    if rule.name == "knn":
      vs = _common.paired_difference(e - ret, clusters=np.arange(n_t), seed=seed, n_boot=n_boot)
    rows.append(RuleRow(rule.name, rule.oracle, float(e.mean()),
                        float(e.std(ddof=1) / np.sqrt(len(e))) if len(e) > 1 else float("nan"),
                        float(np.median(e)), float(rid.mean()), own, med, vs))
  within, pooled = {}, {}
  for k in KERNELS:
    for es in ESTIMATORS:
      m = mmd2_of(res, k, es)
      within[f"{k}/{es}"] = _common.cluster_spearman(
          m.ravel(), res.error.ravel(), groups=trial, clusters=trial, seed=seed, n_boot=n_boot)
      pooled[f"{k}/{es}"] = _common.bootstrap_spearman(
          m.ravel(), res.error.ravel(), seed=seed, groups=trial, n_boot=n_boot)
  return Statistics(tuple(rows), within, pooled)


def reference_line(ref: Reference) -> str:
  """The layer's learning ability in one sentence (printed beside every E1 table)."""
  opt = ("" if not np.isfinite(ref.one_step_optimum) else
         f", one-gradient-step optimum {ref.one_step_optimum:.3f}")
  return (f"the layer: relative error {ref.matched:.3f} on prompts of k demonstrations from Q "
          f"(ridge {ref.matched_ridge:.3f}), {ref.centred:.3f} unshifted (ridge "
          f"{ref.centred_ridge:.3f}{opt}); training loss {ref.train_loss_half:.4g} at half "
          f"time, {ref.train_loss_final:.4g} at the end; largest eigenvalue of "
          f"W^K^T W^K/tau on x: {ref.max_key_eigenvalue:.3f}")


def summary(results: Results) -> tuple[str, dict]:
  """(printed tables, JSON-able dict): rules, correlations, the layer's reference errors."""
  res = results
  st = statistics(res, n_boot=res.config.n_boot)
  rows = []
  for r in st.rules:
    vs = r.vs_retrieval
    rows.append([r.name, "yes" if r.oracle else "no", r.error_mean, r.error_se,
                 r.mmd2_median.get("normalised/unbiased", float("nan")),
                 r.mmd2_median.get("k_V/unbiased", float("nan")),
                 r.mmd2_median.get("k_V/biased", float("nan")),
                 r.ridge_error_mean,
                 "-" if vs is None else f"{vs.mean:+.3f} [{vs.lo:+.3f}, {vs.hi:+.3f}]"])
  table = runtime.format_table(
      ["rule", "oracle", "error", "se", "norm. MMD^2 u", "MMD_kV^2 u", "MMD_kV^2 b", "ridge",
       "minus retrieval [95% CI]"], rows, align="llrrrrrrl")
  corr_rows = [[key, c.rho, f"[{c.lo:.3f}, {c.hi:.3f}]", st.pooled[key].rho,
                f"[{st.pooled[key].lo:.3f}, {st.pooled[key].hi:.3f}]"]
               for key, c in st.within_trial.items()]
  corr = runtime.format_table(["kernel/estimator", "within-trial rho", "95% CI", "pooled rho",
                               "95% CI"], corr_rows, align="lrlrl")
  n_sets = res.error.shape[1]
  lines = [table,
           textwrap.fill(f"inputs: {res.config.inputs}; target: "
                         f"{TARGET}; {HEADS}. MMD^2 medians over trials (u = unbiased, the "
                         f"default; b = biased, V-statistic); {mmd.NEGATIVE_MMD2_NOTE}.",
                         width=120),
           textwrap.fill(reference_line(res.reference), width=120),
           f"Spearman(MMD^2(set, T), error) within trials over {n_sets} sets per trial "
           f"(rules and mixtures; bootstrap over trials):", corr]
  data = {"rules": [dict(name=r.name, oracle=r.oracle, description=dict(
              (x.name, x.description) for x in RULES)[r.name], error_mean=r.error_mean,
              error_se=r.error_se, error_median=r.error_median,
              ridge_error_mean=r.ridge_error_mean, own_fraction=r.own_fraction,
              mmd2_median=r.mmd2_median,
              minus_retrieval=None if r.vs_retrieval is None else r.vs_retrieval._asdict())
                    for r in st.rules],
          "spearman_within_trial": {k: c._asdict() for k, c in st.within_trial.items()},
          "spearman_pooled": {k: c._asdict() for k, c in st.pooled.items()},
          "reference": res.reference._asdict(), "target": TARGET, "heads": HEADS,
          "kernels": list(KERNELS), "estimators": list(ESTIMATORS),
          "default_estimator": "unbiased", "sets": list(res.set_names)}
  return "\n".join(lines), data


def arrays(results: Results) -> dict:
  """The arrays saved to ``E1.npz``: per (trial, set) errors and chain measures."""
  res = results
  out = dict(error=res.error, ridge_error=res.ridge_error, gd_error=res.gd_error,
             own_fraction=res.own_fraction, knn_error=res.knn_error, chosen=res.chosen,
             train_losses=res.train_losses)
  out.update({f"measures_{k}": v for k, v in res.measures._asdict().items()})
  return out



def save(res: Results, out: str, *, info: dict) -> list[str]:
  """Writes ``E1.json`` (info and summary), ``E1.npz`` (arrays), ``E1_model.npz`` under ``out``."""
  return _common.save_results(sys.modules[__name__], res, out, info=info)


def main(argv=None) -> int:
  """``python -m icl_kd.experiments E1 [--quick] [--seed S] [--out DIR] ...``; returns 0."""
  return _common.main(sys.modules[__name__], argv)
