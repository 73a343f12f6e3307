"""Generic verdicts: reduce per-instance checks to what a report says.

Every claim's evaluation returns a typed check (:mod:`icl_kd.claims.base`);
its type is the kind, which selects the reduction:

  IdentityCheck     ``error`` vs ``tolerance``; the worst instance is the largest
                    error / tolerance (the error at it is kept as ``worst_error``)
  BoundCheck, ConsistencyCheck, ConjectureCheck
                    ``log_lhs`` vs ``log_rhs``; a violation is lhs > rhs (1 + float_slack);
                    the worst instance is the largest lhs / rhs
  EventCheck        as a bound, plus the count of ``violated`` events (tested against delta)
  Measurement       ``value``; the worst instance is the largest value

Documented rules (tested in tests/test_proofs_check.py):

- An identity holds on an instance when error <= tolerance (equality holds).
  A bound is violated when log(lhs/rhs) > log(1 + float_slack) (strictly).
- Out of range: an instance whose numbers are not finite in the run's dtype
  (NaN, or +inf on a side: a quantity that left float32's range) is counted in
  ``out_of_range``, apart from the violations, and takes no part in the worst
  instance, the sums or the quantiles. lhs = rhs = 0 (log -inf on both sides) is
  ratio 0; rhs = 0 < lhs is an infinite ratio, a violation.
- The worst instance: the largest worst value; ties go to the instance first in
  (bucket, index) order, whatever the chunking and the merge order.
- Chunks are merged in a fixed order (so a report is reproducible bit for bit);
  the counts, the worst instance, the min slack, the quantiles and the events
  do not depend on the merge order at all, the means and standard deviations
  only to float64 rounding.
- An empty chunk (no instance) is the identity of the merge.

Per chunk the numbers are reduced on the host, in float64, to a small
:class:`Stats` record.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from icl_kd import runtime
from icl_kd.claims.base import KINDS, RATIO_KINDS, bound_slack

SUBSAMPLE = 4096  # per-instance values kept (first instances of each bucket) for quantiles
TOP_K = 16        # worst instances kept (ratio kinds): the adversarial search starts there
LOG_CAP = 700.0   # ratios are summed as exp(min(log ratio, LOG_CAP)): no float64 overflow
REPORT_KINDS = KINDS


@dataclasses.dataclass
class Stats:
  """Mergeable summary of a set of instances of one claim."""
  count: int = 0
  violations: int = 0
  out_of_range: int = 0             # instances not finite in the dtype (apart from violations)
  worst: float = -math.inf          # identity: max error/tolerance; ratio kinds: max log(lhs/rhs)
  worst_index: tuple = ()           # (bucket, index) of the worst instance
  worst_error: float = math.nan     # identity: the relative error at the worst instance
  min_slack: float = math.inf       # ratio kinds: min (rhs - lhs) / rhs
  sum_value: float = 0.0            # identity: errors; ratio kinds: ratios; measurement: values
  sum_sq_value: float = 0.0
  events: int = 0                   # probabilistic bound: number of `violated` events
  sample: list = dataclasses.field(default_factory=list)
  extra_events: dict = dataclasses.field(default_factory=dict)   # check.events counts
  extra_samples: dict = dataclasses.field(default_factory=dict)  # check.extras first values
  top: list = dataclasses.field(default_factory=list)            # [log_ratio, bucket, index]

  @property
  def in_range(self) -> int:
    return self.count - self.out_of_range

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["worst_index"] = list(self.worst_index)
    return runtime.jsonable(d)

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "Stats":
    d = dict(d)
    d.pop("nonfinite", None)
    d["worst_index"] = tuple(d["worst_index"])
    for k in ("worst", "worst_error", "min_slack", "sum_value", "sum_sq_value"):
      d[k] = runtime.from_jsonable_float(d[k])
    d["top"] = [[runtime.from_jsonable_float(t[0]), int(t[1]), int(t[2])] for t in d["top"]]
    d["sample"] = [runtime.from_jsonable_float(x) for x in d["sample"]]
    d["extra_samples"] = {k: [runtime.from_jsonable_float(x) for x in v]
                          for k, v in d["extra_samples"].items()}
    return cls(**d)


def float_slack(dtype_name: str) -> float:
  """Relative allowance for rounding when comparing the two sides of a bound (1e-9 | 1e-4)."""
  return bound_slack(dtype_name)


def _kind_of(check) -> str:
  kind = getattr(type(check), "kind", None)
  if kind not in KINDS:
    raise TypeError(f"check must be one of the check types of icl_kd.claims.base, got "
                    f"{type(check).__name__}")
  return kind


def _fields(nt) -> dict:
  return nt._asdict() if hasattr(nt, "_asdict") else {}


def _first_worst(score: np.ndarray) -> int:
  """Index of the largest score; the first one on ties (np.argmax's rule)."""
  return int(np.argmax(score))


def reduce_chunk(check, *, bucket: int, start: int, dtype_name: str,
                 keep: int = SUBSAMPLE) -> Stats:
  """Reduces one chunk: ``check`` is a check whose fields are arrays of one length n."""
  kind = _kind_of(check)
  main = [np.asarray(v) for k, v in check._asdict().items() if k not in ("extras", "events")]
  n = int(main[0].shape[0]) if main[0].ndim else 1
  st = Stats(count=n)
  if n == 0:
    return st
  take = max(0, min(n, keep - start))
  if kind == "identity":
    err = np.asarray(check.error, np.float64).reshape(n)
    tol = np.asarray(check.tolerance, np.float64).reshape(n)
    ok = np.isfinite(err) & np.isfinite(tol) & (tol > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
      score = np.where(ok, err / np.where(ok, tol, 1.0), -np.inf)
    st.violations = int(np.sum(ok & (score > 1.0)))
    kept, worst_score = err, score
    if ok.any():
      st.worst_error = float(err[_first_worst(score)])
    st.sum_value = float(np.sum(np.where(ok, err, 0.0)))
    st.sum_sq_value = float(np.sum(np.where(ok, err, 0.0) ** 2))
  elif kind in RATIO_KINDS:
    log_lhs = np.asarray(check.log_lhs, np.float64).reshape(n)
    log_rhs = np.asarray(check.log_rhs, np.float64).reshape(n)
    ok = ~(np.isnan(log_lhs) | np.isnan(log_rhs) | np.isposinf(log_lhs) | np.isposinf(log_rhs))
    with np.errstate(invalid="ignore"):
      lr = log_lhs - log_rhs                      # -inf - -inf (both sides 0) is ratio 0
    lr = np.where(np.isneginf(log_lhs), -np.inf, lr)
    worst_score = np.where(ok, lr, -np.inf)
    st.violations = int(np.sum(ok & (lr > np.log1p(float_slack(dtype_name)))))
    if ok.any():
      capped = np.minimum(lr[ok], LOG_CAP)
      st.min_slack = float(np.min(-np.expm1(capped)))          # (rhs - lhs) / rhs
      ratio = np.exp(capped)
      with np.errstate(over="ignore"):
        st.sum_value, st.sum_sq_value = float(np.sum(ratio)), float(np.sum(ratio * ratio))
    if kind == "probabilistic bound":
      st.events = int(np.sum(ok & np.asarray(check.violated).reshape(n).astype(bool)))
    order = [int(i) for i in np.argsort(-worst_score, kind="stable") if ok[i]][:TOP_K]
    st.top = [[float(lr[i]), bucket, start + i] for i in order]
    with np.errstate(over="ignore"):
      kept = np.exp(np.minimum(lr, LOG_CAP))
  else:  # measurement
    v = np.asarray(check.value, np.float64).reshape(n)
    ok = np.isfinite(v)
    worst_score = np.where(ok, v, -np.inf)
    st.sum_value = float(np.sum(v[ok]))
    with np.errstate(over="ignore"):
      st.sum_sq_value = float(np.sum(v[ok] ** 2))
    kept = v
  st.out_of_range = int(np.sum(~ok))
  if ok.any():
    idx = _first_worst(worst_score)
    st.worst, st.worst_index = float(worst_score[idx]), (bucket, start + idx)
  st.sample = [float(x) for x, good in zip(kept[:take], ok[:take]) if good]
  for key, v in _fields(check.events).items():
    st.extra_events[key] = int(np.sum(np.asarray(v).reshape(n).astype(bool)))
  for key, v in _fields(check.extras).items():
    st.extra_samples[key] = [float(x) for x in np.asarray(v, np.float64).reshape(n)[:take]]
  return st


def _worse(a: Stats, b: Stats) -> bool:
  """Whether b's worst instance replaces a's: larger value, or equal and earlier in order."""
  if not b.worst_index:
    return False
  if not a.worst_index:
    return True
  if b.worst != a.worst:
    return b.worst > a.worst
  return tuple(b.worst_index) < tuple(a.worst_index)


def merge(a: Stats, b: Stats) -> Stats:
  """Merges two summaries (see the module's rules: ties, order, empty chunks)."""
  worse = _worse(a, b)
  w = b if worse else a
  return Stats(count=a.count + b.count, violations=a.violations + b.violations,
               out_of_range=a.out_of_range + b.out_of_range, worst=w.worst,
               worst_index=w.worst_index, worst_error=w.worst_error,
               min_slack=min(a.min_slack, b.min_slack), sum_value=a.sum_value + b.sum_value,
               sum_sq_value=a.sum_sq_value + b.sum_sq_value, events=a.events + b.events,
               sample=a.sample + b.sample,
               extra_events={k: a.extra_events.get(k, 0) + b.extra_events.get(k, 0)
                             for k in sorted(set(a.extra_events) | set(b.extra_events))},
               extra_samples={k: a.extra_samples.get(k, []) + b.extra_samples.get(k, [])
                              for k in sorted(set(a.extra_samples) | set(b.extra_samples))},
               top=sorted(a.top + b.top, key=lambda t: (-t[0], t[1], t[2]))[:TOP_K])


def binomial_upper_tail(k: int, n: int, p: float) -> float:
  """P[Binomial(n, p) >= k], summed in log space (exact, no SciPy needed)."""
  if k <= 0:
    return 1.0
  if p <= 0.0:
    return 0.0
  if p >= 1.0:
    return 1.0
  log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
               + i * math.log(p) + (n - i) * math.log1p(-p) for i in range(k, n + 1)]
  m = max(log_terms)
  return min(1.0, math.exp(m) * sum(math.exp(t - m) for t in log_terms))


@dataclasses.dataclass
class Verdict:
  verdict: str            # holds | FAILS | undecided | violated | not violated | measured
  passed: bool            # False only for a failing (or undecided) non-conjecture claim
  detail: dict[str, Any]


def decide(kind: str, st: Stats, *, delta: float | None = None, alpha: float = 0.01) -> Verdict:
  """The verdict of a claim from its merged statistics.

  identity / bound / consistency: hold when no in-range instance violates and
    at least one instance is in range ("undecided", failing, when none is).
  probabilistic bound: the number of events k over the n in-range repetitions
    is tested against rate delta with a one-sided exact binomial test at level
    ``alpha`` (fails when P[Bin(n, delta) >= k] < alpha).
  conjecture / measurement: never fail; reported.
  Out-of-range instances are reported in ``detail["out_of_range"]``, never as violations.
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  n = st.in_range
  with np.errstate(over="ignore", invalid="ignore"):
    mean = np.float64(st.sum_value) / n if n else np.float64(np.nan)
    var = np.float64(st.sum_sq_value) / n - mean * mean if n else np.float64(np.nan)
  detail: dict[str, Any] = {"mean": float(mean),
                            "std": float(np.sqrt(var)) if np.isfinite(var) and var > 0 else
                            (0.0 if np.isfinite(var) else math.nan),
                            "out_of_range": st.out_of_range}
  if st.sample:
    q = np.quantile(np.asarray(st.sample), [0.5, 0.9, 0.99])
    detail.update(median=float(q[0]), q90=float(q[1]), q99=float(q[2]))
  for key, count in st.extra_events.items():
    detail[f"events_{key}"] = count
  for key, vals in st.extra_samples.items():
    finite = [v for v in vals if math.isfinite(v)]
    if finite:
      detail[f"median_{key}"] = float(np.median(finite))
  decided = n > 0
  if kind == "identity":
    detail.update(max_error=st.worst_error, max_error_over_tolerance=st.worst)
    ok = st.violations == 0 and decided
    return Verdict("holds" if ok else ("FAILS" if decided else "undecided"), ok, detail)
  if kind in RATIO_KINDS:
    detail.update(max_ratio=math.exp(min(st.worst, LOG_CAP)) if decided else math.nan,
                  min_slack=st.min_slack)
  if kind in ("bound", "consistency"):
    ok = st.violations == 0 and decided
    return Verdict("holds" if ok else ("FAILS" if decided else "undecided"), ok, detail)
  if kind == "probabilistic bound":
    if delta is None:
      raise ValueError("a probabilistic bound needs delta")
    p_value = binomial_upper_tail(st.events, n, delta)
    detail.update(delta=delta, event_rate=st.events / max(n, 1), events=st.events,
                  binomial_p_value=p_value, alpha=alpha)
    ok = p_value >= alpha and decided
    return Verdict("holds" if ok else ("FAILS" if decided else "undecided"), ok, detail)
  if kind == "conjecture":
    return Verdict("violated" if st.violations else "not violated", True, detail)
  detail["max"] = st.worst if decided else math.nan
  return Verdict("measured", True, detail)
