"""E6: cross-task interference, measured by the theory's MMD_kV.

docs/THEORY.md E6, with C5 (``thm4.1``): replacing a fraction f of a prompt's
demonstrations by demonstrations of another task moves the prompt's
distribution P away from the query task Q; by C5 the distilled weights move by
||W_0(P) - W_0(Q)||_HS = c eta MMD_kV(P, Q), with

    k_V(e, e') = <W^V e, W^V e'> exp(<W^K e, W^K e'> / tau)

the distillation kernel of the trained layer's own key and value maps, on the
tokens the head reads, e = (x, y). MMD_kV should grow with f, and the ICL
error with it.

Setting. A single softmax-attention layer (one head, reading every
demonstration; with several heads the MMD^2 would be summed over the heads of
the layer that reads the demonstrations) is trained on linear-regression
prompts x ~ N(0, I_d), y = <w, x> + noise, w ~ N(0, I_d). In each trial the
query task A (w_A) and another task B (w_B, independent) are drawn; a prompt of
k demonstrations of A is built, and for every f on a grid the first round(f k)
of them are replaced by demonstrations of B (inputs from the same
distribution). Paired, nested design: every f answers the same M queries of
task A, and the prompts at larger f contain those at smaller f's B part.

Measured for every (trial, f): the relative ICL error (model MSE over the
queries / mean squared query label), the biased MMD_kV^2 and MMD_kx^2 between
the prompt tokens and the target sample (x'_j, <w_A, x'_j>) (the labelled query
sample: the tokens a prompt of task A holds, noiseless labels), the Gaussian
MMD^2 on the inputs alone (median bandwidth; blind to the task, a control),
and ridge regression on the same prompt. The report gives the curves against
f and the Spearman correlations (MMD_kV^2, error), (f, MMD_kV^2) and (f, error)
with bootstrap intervals over trials.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_kd import baselines, models, mmd, runtime, tasks
from icl_kd.experiments import _common
from icl_kd.experiments._common import summed_mmd2, theory_kernels, within_trial_spearman

NAME = "E6"
DESCRIPTION = "cross-task interference: MMD_kV to the query task and ICL error against f (C5)"
MMDS = ("mmd_kv", "mmd_kx", "gaussian")
HEADS = ("MMD^2 summed over the heads of the layer that reads the demonstrations "
         "(one softmax layer with one head here)")
TARGET = ("the labelled query sample of the query task, (x', <w_A, x'>) (noiseless labels)")
MODEL_TAU = 1.0


class Config(NamedTuple):
  """Sizes of one E6 run (``run`` draws everything from its key)."""
  d: int = 4
  k: int = 16                 # demonstrations per prompt
  n_queries: int = 16
  n_trials: int = 64
  n_fractions: int = 9        # f on linspace(0, 1, n_fractions), rounded to counts of k
  noise_std: float = 0.25
  ridge_lam: float = 0.1
  train_steps: int = 2000
  batch: int = 128
  learning_rate: float = 1e-2
  n_boot: int = 1000
  progress: bool = True


QUICK = Config(n_trials=12, n_fractions=5, train_steps=150, batch=64, n_boot=200)

FLAGS = (
    _common.Flag("--trials", "n_trials", int, "paired trials (two tasks and queries each)"),
    _common.Flag("--steps", "train_steps", int, "training steps of the attention layer"),
    _common.Flag("--k", "k", int, "demonstrations per prompt"),
    _common.Flag("--fractions", "n_fractions", int,
                 "number of fractions f from the other task, on linspace(0, 1) (>= 2)"),
)


class Results(NamedTuple):
  """Per trial and fraction.

  Attributes:
    fractions: (F,) the realised fractions counts / k.
    counts: (F,) demonstrations taken from the other task.
    error: (T, F) relative ICL error of the model on the query task.
    ridge_error: (T, F) ridge regression on the same prompts.
    mmd2: dict kind -> (T, F) biased MMD^2(prompt, target), kind in ``MMDS``.
    correlation: dict name -> Correlation: ``mmd_kv_error``, ``mmd_kx_error``,
      ``gaussian_error`` (Spearman(MMD^2, error)), ``f_mmd_kv``, ``f_error``;
      pooled over all prompts, bootstrap interval over trials.
    within_trial: dict name -> Correlation, the same correlations averaged within trials.
    train_losses: (train_steps,). params: the trained layer (float64).
  """
  fractions: np.ndarray
  counts: np.ndarray
  error: np.ndarray
  ridge_error: np.ndarray
  mmd2: dict
  correlation: dict
  within_trial: dict
  train_losses: np.ndarray
  params: dict


def make_model(cfg: Config) -> models.SoftmaxAttentionLayer:
  """The one-head softmax-attention layer E6 trains, on tokens (x, y) of width d + 1."""
  return models.SoftmaxAttentionLayer(d_k=cfg.d + 1, d_v=1, tau=MODEL_TAU, init_scale=0.5)


def fraction_counts(cfg: Config) -> np.ndarray:
  """(F,) demonstrations from the other task: round(f k) for f in linspace(0, 1, F)."""
  if cfg.n_fractions < 2:
    raise ValueError(f"n_fractions must be >= 2 (f = 0 and f = 1), got {cfg.n_fractions}")
  return np.round(np.linspace(0.0, 1.0, cfg.n_fractions) * cfg.k).astype(np.int32)


class Trial(NamedTuple):
  """One trial: the query task's prompt and queries, and the other task's demonstrations.

  Attributes:
    w_a, w_b: (d,) the query task and the other task.
    xs_a, ys_a: (k, d), (k,) demonstrations of the query task.
    xs_b, ys_b: (k, d), (k,) demonstrations of the other task.
    queries: (M, d); targets: (M,) <w_a, x'_j>.
  """
  w_a: jax.Array
  w_b: jax.Array
  xs_a: jax.Array
  ys_a: jax.Array
  xs_b: jax.Array
  ys_b: jax.Array
  queries: jax.Array
  targets: jax.Array

  def prompt(self, count) -> tuple[jax.Array, jax.Array]:
    """(xs, ys): the first ``count`` demonstrations from the other task, the rest from A."""
    from_b = jnp.arange(self.xs_a.shape[0]) < count                          # (k,)
    return (jnp.where(from_b[:, None], self.xs_b, self.xs_a),
            jnp.where(from_b, self.ys_b, self.ys_a))

  def target_tokens(self) -> jax.Array:
    """(M, d+1): the target sample, tokens (x'_j, <w_a, x'_j>)."""
    return tasks.regression_tokens(self.queries, self.targets)


def trial_data(key, cfg: Config) -> Trial:
  """Draws one trial's two tasks, their demonstrations and the queries of task A."""
  kwa, kwb, kxa, kxb, kea, keb, kq = jax.random.split(key, 7)
  d, k = cfg.d, cfg.k
  w_a, w_b = jax.random.normal(kwa, (d,)), jax.random.normal(kwb, (d,))
  xs_a, xs_b = jax.random.normal(kxa, (k, d)), jax.random.normal(kxb, (k, d))
  ys_a = jnp.dot(xs_a, w_a) + cfg.noise_std * jax.random.normal(kea, (k,))
  ys_b = jnp.dot(xs_b, w_b) + cfg.noise_std * jax.random.normal(keb, (k,))
  queries = jax.random.normal(kq, (cfg.n_queries, d))
  return Trial(w_a, w_b, xs_a, ys_a, xs_b, ys_b, queries, jnp.dot(queries, w_a))


def trial_keys(key, cfg: Config):
  """(model key, (n_trials,) trial keys, bootstrap key): how :func:`run` splits its key."""
  k_model, k_trials, k_boot = jax.random.split(key, 3)
  return k_model, jax.random.split(k_trials, cfg.n_trials), k_boot


def prompt_mmd2(params, trial: Trial, count) -> dict:
  """kind -> biased MMD^2 of the prompt with ``count`` foreign demonstrations to the target.

  ``mmd_kv``/``mmd_kx``: tokens (x_i, y_i) vs (x'_j, <w_a, x'_j>) in the
  distillation kernels of the layer's W^K, W^V (:func:`theory_kernels`, summed over
  heads); ``gaussian``: inputs x_i vs x'_j, median-heuristic bandwidth.
  """
  p = models.attention_params(params)
  xs, ys = trial.prompt(count)
  tok, target = tasks.regression_tokens(xs, ys), trial.target_tokens()
  gauss = mmd.gaussian_kernel(mmd.median_bandwidth(xs, trial.queries))
  return {"mmd_kv": summed_mmd2(tok, target, kernel=theory_kernels(p, tau=MODEL_TAU)),
          "mmd_kx": summed_mmd2(tok, target,
                                kernel=theory_kernels(p, tau=MODEL_TAU, use_values=False)),
          "gaussian": summed_mmd2(xs, trial.queries, kernel=gauss)}


def run(config: Config = Config(), *, key) -> Results:
  """Trains the layer, then measures every fraction on ``n_trials`` paired trials.

  Args:
    config: the sizes (:data:`QUICK` for a small run).
    key: PRNG key (keyword-only); split by :func:`trial_keys` (model, trials, bootstrap).
  """
  cfg = config
  counts = fraction_counts(cfg)
  k_model, keys, k_boot = trial_keys(key, cfg)
  model = make_model(cfg)
  params, losses = _common.train_regression_model(
      model, key=k_model, d=cfg.d, n_demos=cfg.k, n_queries=4, steps=cfg.train_steps,
      batch=cfg.batch, learning_rate=cfg.learning_rate, noise_std=cfg.noise_std,
      progress=cfg.progress, desc="E6 train")
  params = _common.to_float64(params)

  def trial_fn(params, k):
    tr = trial_data(k, cfg)
    denom = jnp.mean(tr.targets ** 2)

    def one(count):
      xs, ys = tr.prompt(count)
      demos = tasks.regression_tokens(xs, ys)
      pred = jax.vmap(lambda q: models.icl_predict(model, params, demos,
                                                   tasks.query_token(q)))(tr.queries)
      rid = jax.vmap(lambda q: baselines.ridge(xs, ys, q, lam=cfg.ridge_lam))(tr.queries)
      return (jnp.mean((pred - tr.targets) ** 2) / denom,
              jnp.mean((rid - tr.targets) ** 2) / denom, prompt_mmd2(params, tr, count))

    return jax.vmap(one)(jnp.asarray(counts))

  trial_fn = jax.jit(trial_fn)
  outs = []
  bar = runtime.Progress("E6 trials", cfg.n_trials, enabled=cfg.progress)
  for t in range(cfg.n_trials):
    outs.append(jax.tree_util.tree_map(np.asarray, trial_fn(params, keys[t])))
    bar.update(t + 1)
  error = np.stack([o[0] for o in outs])                                    # (T, F)
  ridge_error = np.stack([o[1] for o in outs])
  mmd2_ = {m: np.stack([o[2][m] for o in outs]) for m in MMDS}
  frac = counts / cfg.k
  f_grid = np.broadcast_to(frac, error.shape)
  groups = np.repeat(np.arange(cfg.n_trials), len(counts))
  seed = _common.seed_of(k_boot)
  pairs = {f"{m}_error": (mmd2_[m], error) for m in MMDS}
  pairs.update(f_mmd_kv=(f_grid, mmd2_["mmd_kv"]), f_error=(f_grid, error))
  corr = {n: _common.bootstrap_spearman(a.ravel(), b.ravel(), seed=seed, groups=groups,
                                        n_boot=cfg.n_boot) for n, (a, b) in pairs.items()}
  within = {n: within_trial_spearman(a, b, seed=seed, n_boot=cfg.n_boot)
            for n, (a, b) in pairs.items()}
  return Results(frac, counts, error, ridge_error, mmd2_, corr, within, losses, params)


def summary(results: Results) -> tuple[str, dict]:
  """(printed table, JSON-able dict): the curves against f and the correlations."""
  res = results
  n = res.error.shape[0]
  se = lambda a: a.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(a.shape[1])
  curves = {"f": res.fractions, "count": res.counts,
            "error_mean": res.error.mean(0), "error_se": se(res.error),
            "ridge_error_mean": res.ridge_error.mean(0)}
  for m in MMDS:
    curves[f"{m}2_mean"] = res.mmd2[m].mean(0)
    curves[f"{m}2_se"] = se(res.mmd2[m])
    curves[f"{m}2_median"] = np.median(res.mmd2[m], axis=0)
  rows = [[float(curves["f"][i]), int(curves["count"][i]), float(curves["error_mean"][i]),
           float(curves["error_se"][i]), *(float(curves[f"{m}2_median"][i]) for m in MMDS),
           float(curves["ridge_error_mean"][i])] for i in range(len(res.fractions))]
  table = runtime.format_table(["f", "foreign", "model err", "se", "med MMD_kV^2",
                                "med MMD_kx^2", "med Gauss MMD^2", "ridge err"], rows)
  corr_rows = []
  for name, c in res.correlation.items():
    w = res.within_trial[name]
    corr_rows.append([name, f"{c.rho:.3f}", f"[{c.lo:.3f}, {c.hi:.3f}]",
                      f"{w.rho:.3f}", f"[{w.lo:.3f}, {w.hi:.3f}]"])
  n_prompts = next(iter(res.correlation.values())).n
  lines = [table,
           "MMD^2: biased estimate (V-statistic, >= 0), prompt against the target sample, median",
           "over trials (the exponential kernels make the means heavy-tailed);",
           f"heads: {HEADS}.",
           f"Spearman correlations over {n_prompts} prompts (bootstrap over trials):",
           runtime.format_table(["pair", "pooled rho", "95% CI", "within-trial rho", "95% CI"],
                                corr_rows, align="lrrrr")]
  data = {"curves": {k: np.asarray(v).tolist() for k, v in curves.items()},
          "spearman": {k: c._asdict() for k, c in res.correlation.items()},
          "spearman_within_trial": {k: c._asdict() for k, c in res.within_trial.items()},
          "heads": HEADS, "target": TARGET, "mmd_estimator": "biased (V-statistic)",
          "final_train_loss": float(np.mean(res.train_losses[-20:]))}
  return "\n".join(lines), data


def arrays(results: Results) -> dict:
  """The arrays saved to ``E6.npz``."""
  res = results
  out = dict(fractions=res.fractions, counts=res.counts, error=res.error,
             ridge_error=res.ridge_error, train_losses=res.train_losses)
  out.update({f"{m}2": res.mmd2[m] for m in MMDS})
  return out


result_arrays = arrays


def save(res: Results, out: str, *, info: dict) -> list[str]:
  """Writes ``E6.json`` (info and summary), ``E6.npz`` (arrays), ``E6_model.npz`` under ``out``."""
  return _common.save_results(sys.modules[__name__], res, out, info=info)


def main(argv=None) -> int:
  """``python -m icl_kd.experiments E6 [--quick] [--seed S] [--out DIR] ...``; returns 0."""
  return _common.main(sys.modules[__name__], argv)
