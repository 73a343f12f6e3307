"""The runner's side of reduce and decide: it calls the check types' own rules.

Every claim's evaluation returns a typed check (:mod:`icl_kd.claims.checks`);
its type owns the per-chunk reduction (into a mergeable
:class:`icl_kd.claims.checks.Stats`, host NumPy in float64), the verdict rule,
the worst-instance quantity and how a replayed number is compared. This module
dispatches to them by the check's type and never asks which kind a check is;
the rules themselves (ties, out-of-range and vacuous instances, merge order,
the binomial test) are documented in :mod:`icl_kd.claims.checks`.
"""

from __future__ import annotations

from icl_kd.claims.checks import (ALPHA, LOG_CAP, SUBSAMPLE, TOP_K, Stats, Verdict,
                                  binomial_upper_tail, bound_slack, capped_exp, check_type_of,
                                  is_check_type, merge)

__all__ = ["ALPHA", "LOG_CAP", "SUBSAMPLE", "TOP_K", "Stats", "Verdict", "binomial_upper_tail",
           "bound_slack", "capped_exp", "decide", "merge", "reduce_chunk"]


def reduce_chunk(check, *, bucket: int, start: int, dtype_name: str,
                 keep: int = SUBSAMPLE) -> Stats:
  """Reduces one chunk: ``check`` is a check whose fields are arrays of one length n.

  Raises:
    TypeError: ``check`` is not one of the check types (naming what it is).
  """
  return check_type_of(check).form.reduce(check, bucket=bucket, start=start,
                                          dtype_name=dtype_name, keep=keep)


def decide(check_type, st: Stats, *, delta: float | None = None, alpha: float = ALPHA,
           witnesses=(), adversarial_log_ratio: float | None = None,
           dtype_name: str = "float64") -> Verdict:
  """The verdict of a claim whose evaluation returns ``check_type``, from its merged statistics.

  Args:
    check_type: one of :data:`icl_kd.claims.CHECK_TYPES`.
    st: the merged statistics of the sweep.
    delta, alpha: the event form's probability and test level.
    witnesses: the claim's evaluated witnesses (a refuting one decides the verdict).
    adversarial_log_ratio: the adversarial search's largest log(lhs/rhs), if it ran.
    dtype_name: the run's dtype (the rounding allowance of a bound).
  """
  if not is_check_type(check_type):
    raise TypeError(f"check_type must be one of icl_kd.claims.CHECK_TYPES, got {check_type!r}")
  return check_type.form.decide(check_type.role, st, delta=delta, alpha=alpha,
                                witnesses=witnesses, adversarial_log_ratio=adversarial_log_ratio,
                                dtype_name=dtype_name)
