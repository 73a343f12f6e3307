"""Training with optax: jitted scanned steps, progress output, npz checkpoints.

A training run is ``loss_fn(params, batch) -> scalar`` and
``sample_batch(key) -> batch``; :func:`train` draws one key per step from the
given key (same key, same run), scans ``log_every`` steps inside one jitted
call and prints a progress line between calls. Regression models are trained
on :func:`icl_kd.tasks.sample_regression` prompts with
:func:`regression_loss` (mean squared error over prompts and queries).
"""

from __future__ import annotations

import json
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from icl_kd.models import icl_predict
from icl_kd.runtime import Progress
from icl_kd.tasks import RegressionPrompts, query_token, regression_tokens


class TrainResult(NamedTuple):
  """Trained parameters and the loss of every step (numpy, (steps,))."""
  params: Any
  losses: np.ndarray


def train(loss_fn: Callable, params, *, key, steps: int, optimizer: optax.GradientTransformation,
          sample_batch: Callable, log_every: int = 100, progress: bool = True,
          desc: str = "train", stream=None) -> TrainResult:
  """Minimises ``loss_fn`` with ``optimizer`` for ``steps`` steps.

  Each step draws a batch with ``sample_batch(k)`` from its own key
  ``k = split(key, steps)[t]``, computes ``jax.value_and_grad(loss_fn)`` and
  applies the optax update. Steps are fused by ``jax.lax.scan`` in chunks of
  ``log_every`` inside one jitted function.

  Args:
    loss_fn: (params, batch) -> scalar loss.
    params: initial parameter pytree.
    key: PRNG key (keyword-only); the run is a function of it.
    steps: number of optimisation steps (>= 1).
    optimizer: an optax GradientTransformation.
    sample_batch: key -> batch (a fixed dataset can ignore the key).
    log_every: steps per jitted chunk and per progress line.
    progress: print a progress bar to ``stream`` (stderr by default).

  Returns:
    :class:`TrainResult` with the final parameters and the per-step losses.
  """
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps must be a positive int, got {steps!r}")
  if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
    raise ValueError(f"log_every must be a positive int, got {log_every!r}")
  bar = Progress(desc, steps, enabled=progress, stream=stream)

  def step(carry, k):
    p, s = carry
    loss, grads = jax.value_and_grad(loss_fn)(p, sample_batch(k))
    updates, s = optimizer.update(grads, s, p)
    return (optax.apply_updates(p, updates), s), loss

  chunk = jax.jit(lambda carry, keys: jax.lax.scan(step, carry, keys))
  keys = jax.random.split(key, steps)
  carry = (params, optimizer.init(params))
  losses = []
  for start in range(0, steps, log_every):
    carry, chunk_losses = chunk(carry, keys[start:start + log_every])
    losses.append(np.asarray(chunk_losses))
    if progress:
      bar.update(min(start + log_every, steps), f"loss {float(losses[-1][-1]):.4g}")
  return TrainResult(carry[0], np.concatenate(losses))


def regression_predictions(model: nn.Module, params, prompts: RegressionPrompts) -> jax.Array:
  """Predictions of ``model`` at every query of every prompt, (B, M).

  Demonstrations are the tokens (x_i, y_i) and each query is (x', 0)
  (:func:`icl_kd.tasks.regression_tokens`, :func:`icl_kd.tasks.query_token`).
  """
  def one(xs, ys, queries):
    demos = regression_tokens(xs, ys)                                       # (N, d+1)
    return jax.vmap(lambda q: icl_predict(model, params, demos, query_token(q)))(queries)
  return jax.vmap(one)(prompts.xs, prompts.ys, prompts.queries)


def regression_loss(model: nn.Module) -> Callable:
  """loss(params, prompts) = mean over prompts and queries of (prediction - target)^2."""
  def loss(params, prompts: RegressionPrompts) -> jax.Array:
    return jnp.mean((regression_predictions(model, params, prompts) - prompts.targets) ** 2)
  return loss


def decay_mask(params, names: Sequence[str] = ("w_k", "w_v")):
  """A pytree of bools, True at the leaves whose name is in ``names``."""
  names = tuple(names)

  def leaf_name(path) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))

  return jax.tree_util.tree_map_with_path(lambda path, _: leaf_name(path) in names, params)


def adamw_on(learning_rate, weight_decay, *, names: Sequence[str] = ("w_k", "w_v")
             ) -> optax.GradientTransformation:
  """optax.adamw with decoupled weight decay applied only to the parameters in ``names`` (E3)."""
  return optax.adamw(learning_rate, weight_decay=weight_decay,
                     mask=lambda p: decay_mask(p, names))


def _flat(params) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def save_checkpoint(path: str, params, **metadata) -> None:
  """Saves a parameter pytree (and JSON-serialisable ``metadata``) to an .npz file."""
  arrays = _flat(params)
  np.savez(path, __metadata__=np.asarray(json.dumps(metadata)), **arrays)


def load_checkpoint(path: str, like) -> tuple[Any, dict]:
  """Loads parameters saved by :func:`save_checkpoint` into the structure of ``like``.

  Returns:
    (params, metadata). Raises ValueError when the stored keys or shapes
    differ from those of ``like``.
  """
  with np.load(path) as data:
    stored = {k: data[k] for k in data.files if k != "__metadata__"}
    metadata = json.loads(str(data["__metadata__"])) if "__metadata__" in data.files else {}
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  out = []
  for p, leaf in leaves:
    name = jax.tree_util.keystr(p)
    if name not in stored:
      raise ValueError(f"checkpoint {path} lacks parameter {name}")
    if stored[name].shape != np.shape(leaf):
      raise ValueError(f"checkpoint parameter {name} has shape {stored[name].shape}, "
                       f"expected {np.shape(leaf)}")
    out.append(jnp.asarray(stored[name], dtype=jnp.asarray(leaf).dtype))
  extra = set(stored) - {jax.tree_util.keystr(p) for p, _ in leaves}
  if extra:
    raise ValueError(f"checkpoint {path} holds parameters not in `like`: {sorted(extra)}")
  return jax.tree_util.tree_unflatten(treedef, out), metadata
