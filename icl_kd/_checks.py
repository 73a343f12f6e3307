"""Input validation shared by the public functions.

Shape and dtype checks run in Python on static shapes, so they raise while
tracing and therefore also under ``jax.jit``. Value checks (finiteness,
positivity) can only run on concrete arrays: they raise when a function is
called eagerly; under a transformation the public functions instead poison
their result with NaN (see :func:`poison_if_nonfinite`), so a non-finite input
never yields a silently finite number.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
  """True when ``x`` holds values (not a tracer under jit/vmap/grad).

  A concrete array captured by a jitted function counts as concrete; value
  checks on it therefore run in NumPy (a jnp operation would be staged).
  """
  return not isinstance(x, jax.core.Tracer)


def as_float_array(name: str, x: Any, *, ndim: int | None = None) -> jax.Array:
  """Converts ``x`` to an array and checks it is floating with rank ``ndim``."""
  if isinstance(x, (bool, np.bool_)):
    raise TypeError(f"{name} must be a floating array, got a bool")
  if not isinstance(x, (jax.Array, np.ndarray, float, int, np.generic, list, tuple)):
    raise TypeError(f"{name} must be an array, got {type(x).__name__}")
  arr = jnp.asarray(x)
  if not jnp.issubdtype(arr.dtype, jnp.floating):
    raise TypeError(f"{name} must have a floating dtype (float32 or float64), got {arr.dtype}")
  if ndim is not None and arr.ndim != ndim:
    raise ValueError(f"{name} must have rank {ndim}, got shape {arr.shape}")
  return arr


def check_dim(name: str, arr: jax.Array, axis: int, expected: int, what: str) -> None:
  if arr.shape[axis] != expected:
    raise ValueError(
        f"{name} has shape {arr.shape}: expected axis {axis} of size {expected} ({what}), "
        f"got {arr.shape[axis]}")


def check_same_dtype(**arrays: jax.Array) -> jnp.dtype:
  """All arrays share one floating dtype; returns it."""
  dtypes = {name: a.dtype for name, a in arrays.items()}
  uniq = set(dtypes.values())
  if len(uniq) > 1:
    listing = ", ".join(f"{n}: {d}" for n, d in dtypes.items())
    raise TypeError(f"all inputs must share one floating dtype; got {listing}")
  return next(iter(uniq))


def check_finite(**arrays: jax.Array) -> None:
  """Raises ValueError naming the first non-finite concrete argument."""
  for name, a in arrays.items():
    if is_concrete(a) and a.size:
      finite = np.isfinite(np.asarray(a))
      if not finite.all():
        raise ValueError(f"{name} contains {int(finite.size - finite.sum())} non-finite value(s) "
                         "(NaN or inf); expected finite values")


def scalar_param(name: str, value: Any, dtype, *, positive: bool = True,
                 allow_zero: bool = False) -> jax.Array:
  """Converts a scalar hyperparameter; checks its sign when concrete."""
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a real scalar, got a bool")
  arr = jnp.asarray(value)
  if arr.ndim != 0:
    raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
  if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
    raise TypeError(f"{name} must be a real scalar, got dtype {arr.dtype}")
  if isinstance(value, (int, float, np.number, np.ndarray)) or is_concrete(arr):
    v = float(np.asarray(value if not isinstance(value, jax.Array) else arr))
    if not np.isfinite(v):
      raise ValueError(f"{name} must be finite, got {v}")
    if positive and (v < 0 or (v == 0 and not allow_zero)):
      need = ">= 0" if allow_zero else "> 0"
      raise ValueError(f"{name} must be {need}, got {v}")
  return arr.astype(dtype)


def all_finite(*arrays: jax.Array) -> jax.Array:
  ok = jnp.asarray(True)
  for a in arrays:
    if a.size:
      ok = ok & jnp.all(jnp.isfinite(a))
  return ok


def poison_if_nonfinite(out, *inputs: jax.Array, positive: tuple = ()):
  """Replaces every leaf of ``out`` by NaN when an input is non-finite.

  ``positive`` lists scalars that must be > 0 (e.g. tau); a non-positive one
  poisons the result too. This is the documented behaviour under ``jit``,
  where values cannot raise.
  """
  ok = all_finite(*inputs)
  for p in positive:
    ok = ok & (p > 0)
  return jax.tree_util.tree_map(
      lambda leaf: jnp.where(ok, leaf, jnp.nan) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf,
      out)
