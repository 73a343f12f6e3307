"""Adversarial search: push lhs/rhs of a bound or conjecture up with optax.

Starting from the worst random instances of the sweep, gradient ascent (Adam)
on log(lhs) - log(rhs) over every floating-point array of the instance,
projecting back inside the claim's assumptions after each step
(``Claim.project``, which also puts back whatever the claim holds fixed). The largest ratio seen is re-evaluated with the claim's
own evaluation and returned with its instance (``values``: the check's fields).
A true bound must stay <= 1 (beyond rounding); for a conjecture such as
``thm4.1-literal`` whatever is found is the result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from icl_kd.claims import Claim, check_values, checks, log_ratio


def _objective(claim: Claim, cfg):
  def f(inst):
    return log_ratio(claim.evaluate(inst, cfg))
  return f


def search(claim: Claim, starts: list[dict], bucket: int, *, steps: int,
           learning_rate: float = 0.02) -> dict:
  """Runs ``steps`` projected Adam steps from each start (same bucket); returns the best."""
  cfg = claim.buckets[bucket]
  objective = _objective(claim, cfg)
  batch = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *starts)
  searched = {k for k, v in batch.items() if jnp.issubdtype(v.dtype, jnp.floating)}
  free = {k: v for k, v in batch.items() if k in searched}
  fixed = {k: v for k, v in batch.items() if k not in searched}
  opt = optax.adam(learning_rate)

  def value(free_one, fixed_one):
    return objective({**free_one, **fixed_one})

  grad_fn = jax.vmap(jax.value_and_grad(value))
  values = jax.jit(jax.vmap(value))            # compiled once: an eager vmap re-dispatches every op

  @jax.jit
  def step(free, fixed, state):
    vals, grads = grad_fn(free, fixed)
    grads = jax.tree_util.tree_map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grads)
    # ascent: optax minimises, so feed the negative gradient
    updates, state = opt.update(jax.tree_util.tree_map(jnp.negative, grads), state, free)
    new = optax.apply_updates(free, updates)
    new = jax.vmap(lambda fr, fx: {k: v for k, v in claim.project({**fr, **fx}, cfg).items()
                                   if k in searched})(new, fixed)
    return new, state, vals

  state = opt.init(free)
  initial = np.asarray(values(free, fixed))
  best_val = np.where(np.isfinite(initial), initial, -np.inf)
  best = jax.tree_util.tree_map(np.asarray, free)
  for _ in range(steps):
    new, state, _ = step(free, fixed, state)
    vals = np.asarray(values(new, fixed))
    improved = np.isfinite(vals) & (vals > best_val)
    best = jax.tree_util.tree_map(
        lambda b, n: np.where(improved.reshape((-1,) + (1,) * (b.ndim - 1)), np.asarray(n), b),
        best, new)
    best_val = np.where(improved, vals, best_val)
    free = new
  i = int(np.argmax(best_val))
  winner = {**{k: jnp.asarray(v[i]) for k, v in best.items()},
            **{k: v[i] for k, v in fixed.items()}}
  final = check_values(claim.evaluate(winner, cfg))
  log_r = float(final["log_lhs"] - final["log_rhs"])
  return dict(steps=steps, starts=len(starts), bucket=bucket,
              initial_max_ratio=_capped_exp(np.max(initial[np.isfinite(initial)]))
              if np.isfinite(initial).any() else None,
              max_ratio=_capped_exp(log_r), max_log_ratio=log_r,
              values=final, instance={k: np.asarray(v).tolist() for k, v in winner.items()})


def _capped_exp(log_r) -> float:
  """exp(min(log ratio, LOG_CAP)), as the report's ratios (no float64 overflow); the uncapped
  logarithm is kept beside it (``max_log_ratio``)."""
  return checks.capped_exp(log_r)
