"""E4: beyond one layer: C1 per layer and head, and the distance to one KD step.

docs/THEORY.md E4 and C1 (``thm3.1``). A multi-layer, multi-head transformer with
positional encodings (:class:`icl_kd.models.Transformer`) is trained on
linear-regression prompts. On test prompts:

- per layer and head, the head's AttentionParams (output projection folded
  into W^V, :func:`icl_kd.models.head_attention_params`) and that layer's
  actual attention inputs (LN of the residual stream) are passed to
  ``decompose`` at the query position (context: the demonstrations, then the
  query itself; tau = sqrt(d_head)). Reported: the C1 residual
  |h - (W_0 + dW) phi(W^Q x')| / |h| (an identity: ~1e-15 in float64), the
  agreement of ``decompose``'s h with the head output inside the model
  (model consistency, at the model's float precision), the implicit
  learning rate eta* = N/(2D') and the attention entropy;
- how far the whole model is from a single one-step-KD reference: a single
  softmax-attention layer, i.e. exactly one KD step of docs/THEORY.md C1/C2 on the
  raw prompt tokens, is distilled on the model's predictions, and the
  relative squared distance E(f_model - f_1)^2 / E f_model^2 on fresh prompts
  is reported, with the ICL errors of both and of two baselines.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_kd import baselines, models, runtime, tasks, train
from icl_kd.experiments import _common
from icl_kd.experiments._common import DTYPES, layer_head_decomposition

NAME = "E4"
DESCRIPTION = "C1 per layer and head of a trained transformer, and its distance to one KD step"


class Config(NamedTuple):
  """Sizes of one E4 run (``run`` draws everything from its key)."""
  d: int = 4
  n_demos: int = 12
  n_layers: int = 2
  n_heads: int = 2
  d_model: int = 32
  d_mlp: int = 64
  train_steps: int = 1500
  batch: int = 64
  learning_rate: float = 3e-3
  distill_steps: int = 1000
  n_distill: int = 4096       # prompts labelled by the model for the distillation
  n_test: int = 256
  noise_std: float = 0.0
  dtype: str = "float32"
  progress: bool = True


QUICK = Config(train_steps=200, distill_steps=100, n_distill=512, n_test=32)

FLAGS = (
    _common.Flag("--steps", "train_steps", int, "training steps of the transformer", minimum=1),
    _common.Flag("--layers", "n_layers", int, "transformer layers", minimum=1),
    _common.Flag("--heads", "n_heads", int, "attention heads per layer", minimum=1),
    _common.Flag("--d-model", "d_model", int, "width of the residual stream", minimum=1),
    _common.Flag("--test-prompts", "n_test", int, "test prompts decomposed", minimum=1),
    _common.Flag("--dtype", "dtype", str, "float type of the model", choices=tuple(sorted(DTYPES))),
)



def check_config(cfg: Config) -> None:
  """Raises :class:`icl_kd.experiments._common.UsageError` naming the flag of a bad size."""
  if cfg.d_model % cfg.n_heads:
    raise _common.UsageError(f"--d-model {cfg.d_model} must be divisible by --heads "
                             f"{cfg.n_heads}")

class Results(NamedTuple):
  """Arrays indexed (layer, head) unless stated.

  Attributes:
    residual: max over prompts of the C1 relative residual (float64).
    consistency: max over prompts of |h_decompose - h_model| / |h_model|.
    log_eta: mean over prompts of log eta* at the query.
    entropy: mean attention entropy at the query (nats).
    distance_to_one_step: E(f_model - f_1)^2 / E f_model^2, scalar.
    icl_mse: dict name -> scalar ICL mean squared error on the test prompts.
    train_losses, distill_losses: training curves.
    params: {"transformer": ..., "one_step_layer": ...} trained parameters.
  """
  residual: np.ndarray
  consistency: np.ndarray
  log_eta: np.ndarray
  entropy: np.ndarray
  distance_to_one_step: float
  icl_mse: dict
  train_losses: np.ndarray
  distill_losses: np.ndarray
  params: dict


def make_model(cfg: Config) -> models.Transformer:
  return models.Transformer(n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=cfg.d_model,
                            d_mlp=cfg.d_mlp, d_out=1, positions=True, dtype=DTYPES[cfg.dtype])


def run(config: Config = Config(), *, key) -> Results:
  """Trains the transformer, checks C1 per head, distils one layer; see the module docstring.

  Args:
    config: the sizes (:data:`QUICK` for a small run).
    key: PRNG key (keyword-only); training, test prompts and distillation are drawn from it.
  """
  cfg = config
  dtype = DTYPES[cfg.dtype]
  k_train, k_test, k_distill = jax.random.split(key, 3)
  model = make_model(cfg)
  params, losses = _common.train_regression_model(
      model, key=k_train, d=cfg.d, n_demos=cfg.n_demos, n_queries=1, steps=cfg.train_steps,
      batch=cfg.batch, learning_rate=cfg.learning_rate, noise_std=cfg.noise_std,
      progress=cfg.progress, desc="E4 train", dtype=dtype)
  test = tasks.sample_regression(cfg.n_test, cfg.n_demos, cfg.d, key=k_test,
                                 noise_std=cfg.noise_std, dtype=dtype)
  decomp = jax.jit(jax.vmap(lambda p, xs, ys, q: layer_head_decomposition(model, p, xs, ys, q),
                            in_axes=(None, 0, 0, 0)))
  res, cons, log_eta, ent = decomp(params, test.xs, test.ys, test.queries[:, 0])

  # one KD step: a single softmax-attention layer distilled on the model's predictions.
  single = models.SoftmaxAttentionLayer(d_k=cfg.d + 1, d_v=1, tau=1.0, init_scale=0.5,
                                        dtype=dtype)
  deep_predict = jax.jit(lambda p, prompts: train.regression_predictions(model, p, prompts))
  k_data, k_distill = jax.random.split(k_distill)
  data = tasks.sample_regression(cfg.n_distill, cfg.n_demos, cfg.d, key=k_data,
                                 noise_std=cfg.noise_std, dtype=dtype)
  data = data._replace(targets=deep_predict(params, data))                  # the model's outputs

  def distill_batch(k):
    idx = jax.random.randint(k, (cfg.batch,), 0, cfg.n_distill)
    return jax.tree_util.tree_map(lambda a: a[idx], data)

  single_params, distill_losses = _common.train_regression_model(
      single, key=k_distill, d=cfg.d, n_demos=cfg.n_demos, n_queries=1,
      steps=cfg.distill_steps, batch=cfg.batch, learning_rate=1e-2, sampler=distill_batch,
      progress=cfg.progress, desc="E4 distil", dtype=dtype)
  f_deep = deep_predict(params, test)[:, 0]
  f_one = train.regression_predictions(single, single_params, test)[:, 0]
  y = test.targets[:, 0]
  per_prompt = lambda f: jax.vmap(lambda xs, ys, q: f(xs, ys, q))(test.xs, test.ys,
                                                                  test.queries[:, 0])
  icl = {"transformer": float(jnp.mean((f_deep - y) ** 2)),
         "one_kd_step_layer": float(jnp.mean((f_one - y) ** 2)),
         "averaging": float(jnp.mean((per_prompt(baselines.averaging) - y) ** 2)),
         "least_squares": float(jnp.mean((per_prompt(baselines.least_squares) - y) ** 2))}
  distance = float(jnp.mean((f_deep - f_one) ** 2) / jnp.mean(f_deep ** 2))
  return Results(np.asarray(jnp.max(res, 0)), np.asarray(jnp.max(cons, 0)),
                 np.asarray(jnp.mean(log_eta, 0)), np.asarray(jnp.mean(ent, 0)), distance, icl,
                 losses, distill_losses,
                 {"transformer": params, "one_step_layer": single_params})


def summary(res: Results) -> tuple[str, dict]:
  """The printed tables (one row per layer and head; layer 0 = first) and their numbers."""
  rows = []
  n_layers, n_heads = res.residual.shape
  for l in range(n_layers):
    for h in range(n_heads):
      rows.append([l, h, float(res.residual[l, h]), float(res.consistency[l, h]),
                   float(res.log_eta[l, h]), float(res.entropy[l, h])])
  t1 = runtime.format_table(["layer", "head", "C1 residual", "vs model", "mean log eta*",
                             "entropy"], rows)
  t2 = runtime.format_table(["predictor", "ICL mse"], [[k, v] for k, v in res.icl_mse.items()])
  text = (f"{t1}\n{t2}\nrelative squared distance of the transformer from one distilled KD "
          f"step (single layer): {res.distance_to_one_step:.4g}\nlayers and heads are "
          "numbered from 0")
  data = {"heads": [dict(zip(["layer", "head", "residual", "consistency", "log_eta", "entropy"],
                             r)) for r in rows],
          "max_residual": float(np.max(res.residual)), "icl_mse": res.icl_mse,
          "distance_to_one_step": res.distance_to_one_step}
  return text, data


def arrays(res: Results) -> dict:
  """The arrays saved in ``E4.npz``: every field but the ICL errors and the parameters."""
  return {k: v for k, v in res._asdict().items() if k not in ("icl_mse", "params")}


def save(res: Results, out: str, *, info: dict) -> list[str]:
  """Writes ``E4.json`` (info and summary), ``E4.npz`` (arrays), ``E4_model.npz`` under ``out``."""
  return _common.save_results(sys.modules[__name__], res, out, info=info)


def main(argv=None) -> int:
  """``python -m icl_kd.experiments E4 [--quick] [--seed S] [--out DIR] ...``; returns 0."""
  return _common.main(sys.modules[__name__], argv)
