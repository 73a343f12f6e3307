"""The toolkit's two tolerance rules, each defined once.

- :func:`identity_tolerance`: how far the two sides of an identity may differ
  (relative error), by dtype and score scale (docs/THEORY.md, C1);
- :func:`bound_slack`: the relative rounding allowance when the two sides of a
  bound are compared (lhs <= rhs (1 + slack)).

Every identity and bound of the claims, the counterexamples, the replay and
the experiments use these; :func:`ratio_status` applies the bound rule to a
single fixed instance (a counterexample or witness).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


_RULES = {"float64": (1e-12, 1e-9), "float32": (1e-5, 1e-4)}   # (identity base, bound slack)


def _rule(dtype) -> tuple[float, float]:
  dt = jnp.dtype(dtype)
  if dt.name not in _RULES:
    raise ValueError(f"dtype must be float32 or float64, got {dt}")
  return _RULES[dt.name]


def _base(dtype) -> float:
  return _rule(dtype)[0]


def bound_slack(dtype) -> float:
  """Relative rounding allowance of a bound: lhs <= rhs (1 + slack); 1e-9 float64, 1e-4 float32."""
  return _rule(dtype)[1]


def identity_tolerance(dtype, max_abs_score) -> jax.Array:
  """The identity tolerance of docs/THEORY.md (C1, used by every identity claim).

      tol = base(dtype) * max(1, max|s| / 10),   base = 1e-12 (float64), 1e-5 (float32)

  A score s is itself rounded to about eps |s|, so the allowance grows with the
  largest |score| above 10.

  Args:
    dtype: float64 or float32 (the precision of the computation).
    max_abs_score: the largest |score| of the instance (or another scale of the
      cancelled terms, as the claim states); may be traced.
  Returns:
    The tolerance, a scalar array.
  """
  return _base(dtype) * jnp.maximum(1.0, jnp.asarray(max_abs_score) / 10.0)


def informative_score_limit(dtype, max_error: float) -> float:
  """The largest |score| at which :func:`identity_tolerance` is still below ``max_error``.

  Beyond it an identity whose error cannot exceed ``max_error`` cannot fail (it is
  vacuous): 10 max_error / base, i.e. 2e6 in float32 and 2e13 in float64 for
  max_error = 2.
  """
  return 10.0 * max_error / _base(dtype)


def ratio_status(log_ratio: float, dtype) -> str:
  """A fixed instance's lhs/rhs against 1 under :func:`bound_slack`.

  Returns "refutes" (log ratio > log(1 + slack): the bound fails on it), "tight"
  (|log ratio| <= log(1 + slack): the bound is attained) or "holds".
  """
  tol = math.log1p(bound_slack(dtype))
  if math.isnan(log_ratio):
    return "holds"
  if log_ratio > tol:
    return "refutes"
  return "tight" if log_ratio >= -tol else "holds"


def ratios_agree(ratio: float, closed_form: float, dtype) -> bool:
  """A computed ratio equals its closed form: both infinite, or within :func:`bound_slack`."""
  if math.isinf(closed_form) or math.isinf(ratio):
    return math.isinf(closed_form) and math.isinf(ratio)
  return abs(ratio - closed_form) <= bound_slack(dtype) * closed_form
