"""E2: the learning-rate proxy eta* = N/(2D') vs order and perturbation sensitivity.

docs/THEORY.md E2 and C7 (``lr-proxy``). A single softmax layer without positions
is permutation invariant, so order sensitivity needs positions: a transformer
with sinusoidal positional encodings (:class:`icl_kd.models.Transformer`) is
trained on linear-regression prompts. For each test prompt and each (layer,
head), ``decompose`` at the query position on that layer's actual inputs gives
D', eta* = N/(2D') and the attention entropy; the prompt's sensitivities are

- order: the standard deviation of the model's prediction over random
  reorderings of the demonstrations;
- perturbation: the root-mean-square change of the prediction when every
  demonstration token (x_i, y_i) gets independent N(0, eps^2) noise, divided
  by eps.

Reported per (layer, head): the Spearman correlation between log eta* and
each sensitivity, with a percentile bootstrap interval over prompts.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_kd import models, runtime, tasks
from icl_kd.experiments import _common
from icl_kd.experiments._common import DTYPES, layer_head_decomposition

NAME = "E2"
DESCRIPTION = "the learning-rate proxy eta* vs order and perturbation sensitivity (C7)"


class Config(NamedTuple):
  """Sizes of one E2 run (``run`` draws everything from its key)."""
  d: int = 4
  n_demos: int = 12
  n_layers: int = 2
  n_heads: int = 2
  d_model: int = 32
  d_mlp: int = 64
  train_steps: int = 1500
  batch: int = 64
  learning_rate: float = 3e-3
  n_test: int = 256
  n_orders: int = 8
  n_perturb: int = 8
  eps: float = 0.05
  noise_std: float = 0.0
  n_boot: int = 1000
  dtype: str = "float32"
  progress: bool = True


QUICK = Config(train_steps=150, n_test=32, n_orders=4, n_perturb=4, n_boot=200)

FLAGS = (
    _common.Flag("--steps", "train_steps", int, "training steps of the transformer", minimum=1),
    _common.Flag("--layers", "n_layers", int, "transformer layers", minimum=1),
    _common.Flag("--heads", "n_heads", int, "attention heads per layer", minimum=1),
    _common.Flag("--test-prompts", "n_test", int, "test prompts measured", minimum=2),
)



def check_config(cfg: Config) -> None:
  """Raises :class:`icl_kd.experiments._common.UsageError` naming the flag of a bad size."""
  if cfg.d_model % cfg.n_heads:
    raise _common.UsageError(f"--heads {cfg.n_heads} must divide the model width "
                             f"d_model = {cfg.d_model}")

class Results(NamedTuple):
  """Per prompt (n_test,) and per (layer, head) arrays.

  Attributes:
    log_eta: (n_test, L, H) log eta* at the query.
    entropy: (n_test, L, H) attention entropy at the query.
    order_sensitivity: (n_test,) std of the prediction over reorderings.
    perturb_sensitivity: (n_test,) RMS prediction change per unit noise.
    rho_order, rho_perturb: (L, H, 3) Spearman rho(log eta*, sensitivity) and its interval.
    train_losses: (train_steps,).
    params: the trained transformer's parameters.
  """
  log_eta: np.ndarray
  entropy: np.ndarray
  order_sensitivity: np.ndarray
  perturb_sensitivity: np.ndarray
  rho_order: np.ndarray
  rho_perturb: np.ndarray
  train_losses: np.ndarray
  params: dict


def sensitivities(model, params, xs, ys, query, *, key, n_orders: int, n_perturb: int, eps):
  """(order, perturbation) sensitivity of the prediction on one prompt (see module doc)."""
  demos = tasks.regression_tokens(xs, ys)                                   # (N, d+1)
  q = tasks.query_token(query)
  f = lambda dm: models.icl_predict(model, params, dm, q)
  k_order, k_noise = jax.random.split(key)
  perms = jax.vmap(lambda k: jax.random.permutation(k, demos.shape[0]))(
      jax.random.split(k_order, n_orders))                                  # (R, N)
  reordered = jax.vmap(lambda p: f(demos[p]))(perms)                         # (R,)
  noise = jax.random.normal(k_noise, (n_perturb,) + demos.shape, demos.dtype)
  base = f(demos)
  perturbed = jax.vmap(lambda z: f(demos + eps * z))(noise)                  # (R,)
  return jnp.std(reordered), jnp.sqrt(jnp.mean((perturbed - base) ** 2)) / eps


def run(config: Config = Config(), *, key) -> Results:
  """Trains the transformer with positions, measures eta* and sensitivities per prompt.

  Args:
    config: the sizes (:data:`QUICK` for a small run).
    key: PRNG key (keyword-only); training, test prompts, sensitivities and the
      bootstrap are drawn from it.
  """
  cfg = config
  dtype = DTYPES[cfg.dtype]
  k_train, k_test, k_sens = jax.random.split(key, 3)
  boot_seed = _common.seed_of(jax.random.fold_in(key, 3))
  model = models.Transformer(n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=cfg.d_model,
                             d_mlp=cfg.d_mlp, d_out=1, positions=True, dtype=dtype)
  params, losses = _common.train_regression_model(
      model, key=k_train, d=cfg.d, n_demos=cfg.n_demos, n_queries=1, steps=cfg.train_steps,
      batch=cfg.batch, learning_rate=cfg.learning_rate, noise_std=cfg.noise_std,
      progress=cfg.progress, desc="E2 train", dtype=dtype)
  test = tasks.sample_regression(cfg.n_test, cfg.n_demos, cfg.d, key=k_test,
                                 noise_std=cfg.noise_std, dtype=dtype)
  eps = jnp.asarray(cfg.eps, dtype)

  def per_prompt(p, xs, ys, q, k):
    _, _, log_eta, ent = layer_head_decomposition(model, p, xs, ys, q)
    order, pert = sensitivities(model, p, xs, ys, q, key=k, n_orders=cfg.n_orders,
                                n_perturb=cfg.n_perturb, eps=eps)
    return log_eta, ent, order, pert

  fn = jax.jit(jax.vmap(per_prompt, in_axes=(None, 0, 0, 0, 0)))
  log_eta, ent, order, pert = (np.asarray(a) for a in fn(
      params, test.xs, test.ys, test.queries[:, 0], jax.random.split(k_sens, cfg.n_test)))
  rho_o = np.zeros((cfg.n_layers, cfg.n_heads, 3))
  rho_p = np.zeros((cfg.n_layers, cfg.n_heads, 3))
  for l in range(cfg.n_layers):
    for h in range(cfg.n_heads):
      c = _common.bootstrap_spearman(log_eta[:, l, h], order, seed=boot_seed, n_boot=cfg.n_boot)
      rho_o[l, h] = c.rho, c.lo, c.hi
      c = _common.bootstrap_spearman(log_eta[:, l, h], pert, seed=boot_seed, n_boot=cfg.n_boot)
      rho_p[l, h] = c.rho, c.lo, c.hi
  return Results(log_eta, ent, order, pert, rho_o, rho_p, losses, params)


def summary(res: Results) -> tuple[str, dict]:
  """The printed table (one row per layer and head; layer 0 = first) and its numbers."""
  rows = []
  n_layers, n_heads = res.rho_order.shape[:2]
  for l in range(n_layers):
    for h in range(n_heads):
      ro, rp = res.rho_order[l, h], res.rho_perturb[l, h]
      rows.append([l, h, float(np.mean(res.log_eta[:, l, h])), float(np.mean(res.entropy[:, l, h])),
                   f"{ro[0]:.3f} [{ro[1]:.3f}, {ro[2]:.3f}]",
                   f"{rp[0]:.3f} [{rp[1]:.3f}, {rp[2]:.3f}]"])
  t = runtime.format_table(["layer", "head", "mean log eta*", "entropy",
                            "rho(log eta*, order sens.)", "rho(log eta*, perturb sens.)"], rows)
  text = (f"{t}\nmedian order sensitivity {np.median(res.order_sensitivity):.4g}, "
          f"median perturbation sensitivity {np.median(res.perturb_sensitivity):.4g}\n"
          f"(final train loss {np.mean(res.train_losses[-20:]):.4g}); layers and heads "
          "are numbered from 0")
  data = {"heads": [dict(layer=r[0], head=r[1], mean_log_eta=r[2], entropy=r[3],
                         rho_order=res.rho_order[r[0], r[1]].tolist(),
                         rho_perturb=res.rho_perturb[r[0], r[1]].tolist()) for r in rows],
          "median_order_sensitivity": float(np.median(res.order_sensitivity)),
          "median_perturb_sensitivity": float(np.median(res.perturb_sensitivity))}
  return text, data


def arrays(res: Results) -> dict:
  """The arrays saved in ``E2.npz``: every field but the parameters."""
  return {k: v for k, v in res._asdict().items() if k != "params"}


def save(res: Results, out: str, *, info: dict) -> list[str]:
  """Writes ``E2.json`` (info and summary), ``E2.npz`` (arrays), ``E2_model.npz`` under ``out``."""
  return _common.save_results(sys.modules[__name__], res, out, info=info)


def main(argv=None) -> int:
  """``python -m icl_kd.experiments E2 [--quick] [--seed S] [--out DIR] ...``; returns 0."""
  return _common.main(sys.modules[__name__], argv)
