"""E3: weight-norm intervention, and the C4 bound from the measured norms.

docs/THEORY.md E3 and C4 (``thm3.2``). A single softmax-attention layer is trained
on a FIXED, small set of linear-regression prompts (so that it can overfit)
with optax.adamw whose decoupled weight decay acts only on W^V and W^K
(:func:`icl_kd.train.adamw_on`), for several decay strengths. For each
strength the report gives

- the weight norms ||W^Q||_F, ||W^K||_F, ||W^V||_F;
- the ICL train/test gap: mean squared error on the training prompts and on
  fresh prompts;
- the C4 bound computed from the measured quantities: per test prompt, the
  distilled weights W_0 of the query (``decompose(...).w0``) are one member of
  F_B; its KD loss on the N demonstrations (L_hat) and on 1024 fresh tokens of
  the same prompt distribution (L, Monte Carlo) give the KD generalization gap
  L - L_hat, and :func:`icl_kd.bounds.rademacher_bound` gives the bound with
  B = the largest ||W_0||_HS over the test prompts, C and D_T the sample
  suprema of ||phi(W^K x)|| and ||W^V x|| over every token seen
  (:func:`icl_kd.bounds.sample_bounds`), n = N and delta = 0.05. Gaussian
  inputs have unbounded support, so C and D_T are empirical suprema: the
  report states this. The Hoeffding form of the confidence term is used.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_kd import bounds, claims, decompose, models, runtime, tasks, train
from icl_kd.experiments import _common

NAME = "E3"
DESCRIPTION = "weight decay on W^V, W^K and the C4 bound from the measured norms"


class Config(NamedTuple):
  """Sizes of one E3 run (``run`` draws everything from its key)."""
  d: int = 4
  n_demos: int = 16
  n_train: int = 32           # fixed training prompts
  n_queries: int = 4
  n_test: int = 1024
  n_c4: int = 128             # test prompts used for the C4 check
  n_fresh: int = 1024         # fresh tokens per prompt for the population KD loss
  noise_std: float = 0.5
  weight_decays: tuple = (0.0, 0.1, 1.0, 10.0)
  train_steps: int = 1500
  learning_rate: float = 1e-2
  delta: float = 0.05
  progress: bool = True


QUICK = Config(n_test=128, n_c4=16, n_fresh=128, weight_decays=(0.0, 1.0, 10.0), train_steps=200)


FLAGS = (
    _common.Flag("--steps", "train_steps", int, "training steps per weight decay", minimum=1),
    _common.Flag("--train-prompts", "n_train", int, "fixed training prompts (small: it overfits)",
                 minimum=1),
    _common.Flag("--decays", "weight_decays", float,
                 "comma-separated weight decays on W^K, W^V, e.g. 0,0.1,1", minimum=0.0),
)


class Results(NamedTuple):
  """One row per weight decay (arrays of shape (n_decays,) unless stated).

  Attributes:
    weight_decays: the decay strengths.
    norm_q, norm_k, norm_v: Frobenius norms of W^Q, W^K, W^V after training.
    train_mse, test_mse, icl_gap: ICL errors and test - train.
    radius: B = max ||W_0||_HS over the C4 prompts.
    feature_bound, teacher_bound: C and D_T (sample suprema).
    kd_gap: (n_decays, n_c4) L(W_0) - L_hat(W_0) per prompt.
    bound: the C4 bound (Hoeffding form) with the constants above.
    violations: fraction of prompts with kd_gap > bound.
    train_losses: (n_decays, train_steps).
    params: dict "wd=<decay>" -> the trained layer's parameters.
  """
  weight_decays: np.ndarray
  norm_q: np.ndarray
  norm_k: np.ndarray
  norm_v: np.ndarray
  train_mse: np.ndarray
  test_mse: np.ndarray
  icl_gap: np.ndarray
  radius: np.ndarray
  feature_bound: np.ndarray
  teacher_bound: np.ndarray
  kd_gap: np.ndarray
  bound: np.ndarray
  violations: np.ndarray
  train_losses: np.ndarray
  params: dict


def _c4_prompt(params, xs, ys, query, w, key, cfg: Config):
  """W_0 of one prompt, its empirical and population KD losses, and its constants."""
  demos = tasks.regression_tokens(xs, ys)                                   # (N, d+1)
  q = tasks.query_token(query)
  prefix = jnp.zeros((0, demos.shape[1]), demos.dtype)
  w0 = decompose(params, demos, prefix, q).w0
  kx, ke = jax.random.split(key)
  fresh_x = jax.random.normal(kx, (cfg.n_fresh, xs.shape[1]), xs.dtype)
  fresh_y = jnp.dot(fresh_x, w) + cfg.noise_std * jax.random.normal(ke, (cfg.n_fresh,), xs.dtype)
  fresh = tasks.regression_tokens(fresh_x, fresh_y)
  gap = claims.generalization_gap(w0, params, demos, fresh).gap            # C4's L - L_hat
  consts = bounds.sample_bounds(params, jnp.concatenate([demos, fresh]))
  return gap, w0.hs_norm(), consts.log_feature_bound, consts.teacher_bound


def run(config: Config = Config(), *, key) -> Results:
  """Trains one layer per weight decay on a fixed prompt set; see the module docstring.

  Args:
    config: the sizes (:data:`QUICK` for a small run).
    key: PRNG key (keyword-only); data, initialisation and fresh tokens are drawn from it.
  """
  cfg = config
  k_data, k_init, k_test, k_c4 = jax.random.split(key, 4)
  data = tasks.sample_regression(cfg.n_train, cfg.n_demos, cfg.d, key=k_data,
                                 n_queries=cfg.n_queries, noise_std=cfg.noise_std)
  test = tasks.sample_regression(cfg.n_test, cfg.n_demos, cfg.d, key=k_test,
                                 n_queries=cfg.n_queries, noise_std=cfg.noise_std)
  test64 = _common.to_float64(test)
  model = models.SoftmaxAttentionLayer(d_k=cfg.d + 1, d_v=1, tau=1.0, init_scale=0.5)
  loss = jax.jit(train.regression_loss(model))
  c4 = jax.jit(jax.vmap(lambda p, xs, ys, q, w, k: _c4_prompt(p, xs, ys, q, w, k, cfg),
                        in_axes=(None, 0, 0, 0, 0, 0)))
  rows = []
  curves = []
  trained = {}
  for wd in cfg.weight_decays:
    params, losses = _common.train_regression_model(
        model, key=k_init, d=cfg.d, n_demos=cfg.n_demos, n_queries=cfg.n_queries,
        steps=cfg.train_steps, batch=cfg.n_train, learning_rate=cfg.learning_rate,
        optimizer=train.adamw_on(cfg.learning_rate, wd), dataset=data,
        progress=cfg.progress, desc=f"E3 train wd={wd:g}")
    curves.append(losses)
    trained[f"wd={wd:g}"] = params
    p64 = models.attention_params(_common.to_float64(params))
    train_mse, test_mse = float(loss(params, data)), float(loss(params, test))
    n = cfg.n_c4
    gap, radius, log_c, d_t = c4(p64, test64.xs[:n], test64.ys[:n], test64.queries[:n, 0],
                                 test64.w[:n], jax.random.split(k_c4, n))
    b_max, dt_max = float(jnp.max(radius)), float(jnp.max(d_t))
    c_max = float(jnp.exp(jnp.max(log_c)))
    bound = float(bounds.rademacher_bound(radius=b_max, feature_bound=c_max, teacher_bound=dt_max,
                                          n=cfg.n_demos, delta=cfg.delta).hoeffding)
    gap = np.asarray(gap)
    rows.append(dict(norm_q=float(jnp.linalg.norm(p64.w_q)), norm_k=float(jnp.linalg.norm(p64.w_k)),
                     norm_v=float(jnp.linalg.norm(p64.w_v)), train_mse=train_mse,
                     test_mse=test_mse, icl_gap=test_mse - train_mse, radius=b_max,
                     feature_bound=c_max, teacher_bound=dt_max, kd_gap=gap, bound=bound,
                     violations=float(np.mean(gap > bound))))
  col = lambda k: np.array([r[k] for r in rows])
  return Results(np.asarray(cfg.weight_decays, float), col("norm_q"), col("norm_k"), col("norm_v"),
                 col("train_mse"), col("test_mse"), col("icl_gap"), col("radius"),
                 col("feature_bound"), col("teacher_bound"), np.stack(col("kd_gap")),
                 col("bound"), col("violations"), np.stack(curves), trained)


def summary(res: Results) -> tuple[str, dict]:
  """The printed table (one row per weight decay) and its numbers."""
  rows = []
  for i, wd in enumerate(res.weight_decays):
    gap = res.kd_gap[i]
    rows.append([float(wd), res.norm_k[i], res.norm_v[i], res.train_mse[i], res.test_mse[i],
                 res.icl_gap[i], res.radius[i], res.feature_bound[i], float(np.median(gap)),
                 float(np.max(gap)), res.bound[i], res.bound[i] / max(float(np.max(gap)), 1e-300),
                 res.violations[i]])
  headers = ["wd", "|W^K|", "|W^V|", "train mse", "test mse", "ICL gap", "B", "C",
             "KD gap med", "KD gap max", "C4 bound", "bound/max", "viol."]
  shown = ["wd", "|W^K|", "|W^V|", "train", "test", "ICL gap", "B", "C", "KD med", "KD max",
           "C4 bound", "bound/max", "viol."]
  cells = [[f"{v:.3g}" for v in r] for r in rows]
  text = (runtime.format_table(shown, cells, align="r" * len(shown))
          + "\ntrain, test: ICL mean squared errors; KD med, KD max: the KD generalization\n"
            "gap L - L_hat of W_0 (median, max over prompts; it can be negative).\n"
            "C and D_T are sample suprema (Gaussian inputs are unbounded);\n"
            "bound = Hoeffding form, delta = 0.05, n = N demonstrations.")
  data = {"rows": [dict(zip(headers, r)) for r in rows]}
  return text, data


def arrays(res: Results) -> dict:
  """The arrays saved in ``E3.npz``: every field but the parameters."""
  return {k: v for k, v in res._asdict().items() if k != "params"}


def save(res: Results, out: str, *, info: dict) -> list[str]:
  """Writes ``E3.json`` (info and summary), ``E3.npz`` (arrays), ``E3_model.npz`` under ``out``."""
  return _common.save_results(sys.modules[__name__], res, out, info=info)


def main(argv=None) -> int:
  """``python -m icl_kd.experiments E3 [--quick] [--seed S] [--out DIR] ...``; returns 0."""
  return _common.main(sys.modules[__name__], argv)
