"""Generic verdicts: reduce per-instance numbers to what a report says.

Every checker returns, per instance, a dict of scalars whose keys depend on the
claim's kind:

  identity             ``error`` and ``tolerance`` (relative error vs its allowance)
  bound                ``log_lhs`` and ``log_rhs`` (lhs <= rhs; logs so that nothing
                       overflows); a violation is lhs > rhs (1 + float_slack)
  probabilistic bound  ``log_lhs``, ``log_rhs`` and ``violated`` (the event whose
                       probability the claim bounds by delta)
  conjecture           ``log_lhs`` and ``log_rhs``, reported, never failing the run
  measurement          ``value``, reported, never failing the run

Per chunk the numbers are reduced on the host, in float64, to a small
:class:`Stats` record; chunks are merged in a fixed order, so a report does
not depend on how instances were chunked or sharded.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

KINDS = ("identity", "bound", "probabilistic bound", "conjecture", "measurement")
RATIO_KINDS = ("bound", "probabilistic bound", "conjecture")
SUBSAMPLE = 4096  # per-instance values kept (first instances of each bucket) for quantiles
TOP_K = 16        # worst instances kept (ratio kinds): the adversarial search starts there


@dataclasses.dataclass
class Stats:
  """Mergeable summary of a set of instances of one claim."""
  count: int = 0
  violations: int = 0
  worst: float = -math.inf          # identity: max error/tolerance; ratio kinds: max lhs/rhs (log)
  worst_index: tuple = ()           # (bucket, index) of the worst instance
  worst_error: float = 0.0          # identity: the relative error at the worst instance
  min_slack: float = math.inf       # ratio kinds: min (rhs - lhs) / rhs
  sum_value: float = 0.0            # measurement / ratio kinds: for the mean
  sum_sq_value: float = 0.0
  events: int = 0                   # probabilistic: number of `violated` events
  sample: list = dataclasses.field(default_factory=list)
  nonfinite: int = 0
  extra_events: dict = dataclasses.field(default_factory=dict)   # ``event_*`` counts
  extra_samples: dict = dataclasses.field(default_factory=dict)  # ``extra_*`` first values
  top: list = dataclasses.field(default_factory=list)            # [log_ratio, bucket, index]

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["worst_index"] = list(self.worst_index)
    return d

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "Stats":
    d = dict(d)
    d["worst_index"] = tuple(d["worst_index"])
    return cls(**d)


def float_slack(dtype_name: str) -> float:
  """Relative allowance for rounding when comparing the two sides of a bound."""
  return 1e-9 if dtype_name == "float64" else 1e-4


def reduce_chunk(kind: str, values: dict[str, np.ndarray], *, bucket: int, start: int,
                 dtype_name: str, keep: int = SUBSAMPLE) -> Stats:
  """Reduces one chunk of per-instance values (all arrays of one length)."""
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  n = len(next(iter(values.values())))
  st = Stats(count=n)
  idx = None
  if kind == "identity":
    err = np.asarray(values["error"], np.float64)
    tol = np.asarray(values["tolerance"], np.float64)
    finite = np.isfinite(err) & np.isfinite(tol)
    st.nonfinite = int(np.sum(~finite))
    score = np.where(finite, err / tol, np.inf)
    st.violations = int(np.sum(~(score <= 1.0)))
    idx = int(np.argmax(score))
    st.worst, st.worst_error = float(score[idx]), float(err[idx])
    st.sum_value, st.sum_sq_value = float(np.sum(np.where(finite, err, 0))), float(
        np.sum(np.where(finite, err, 0) ** 2))
    kept = err
  elif kind in RATIO_KINDS:
    log_lhs = np.asarray(values["log_lhs"], np.float64)
    log_rhs = np.asarray(values["log_rhs"], np.float64)
    with np.errstate(invalid="ignore"):
      log_ratio = log_lhs - log_rhs        # -inf - -inf (both sides 0) is handled below
    # lhs == rhs == 0 (e.g. identical samples): ratio 0, never a violation.
    log_ratio = np.where(np.isneginf(log_lhs), -np.inf, log_ratio)
    bad = np.isnan(log_ratio) | np.isposinf(log_lhs) | np.isposinf(log_rhs)
    st.nonfinite = int(np.sum(bad))
    log_ratio = np.where(bad, np.inf, log_ratio)
    st.violations = int(np.sum(log_ratio > np.log1p(float_slack(dtype_name))))
    idx = int(np.argmax(log_ratio))
    st.worst = float(log_ratio[idx])
    slack = -np.expm1(np.minimum(log_ratio, 700.0))       # (rhs - lhs) / rhs
    st.min_slack = float(np.min(slack))
    ratio = np.exp(np.minimum(log_ratio, 700.0))
    st.sum_value, st.sum_sq_value = float(np.sum(ratio)), float(np.sum(ratio ** 2))
    if kind == "probabilistic bound":
      st.events = int(np.sum(np.asarray(values["violated"]).astype(bool)))
    order = np.argsort(-log_ratio, kind="stable")[:TOP_K]
    st.top = [[float(log_ratio[i]), bucket, start + int(i)] for i in order]
    kept = ratio
  else:  # measurement
    v = np.asarray(values["value"], np.float64)
    finite = np.isfinite(v)
    st.nonfinite = int(np.sum(~finite))
    idx = int(np.argmax(np.where(finite, v, -np.inf)))
    st.worst = float(v[idx])
    st.sum_value, st.sum_sq_value = float(np.sum(v[finite])), float(np.sum(v[finite] ** 2))
    kept = v
  st.worst_index = (bucket, start + idx)
  take = max(0, min(n, keep - start))
  st.sample = [float(x) for x in kept[:take]]
  for key, v in values.items():
    if key.startswith("event_"):
      st.extra_events[key[6:]] = int(np.sum(np.asarray(v).astype(bool)))
    elif key.startswith("extra_"):
      st.extra_samples[key[6:]] = [float(x) for x in np.asarray(v, np.float64)[:take]]
  return st


def merge(a: Stats, b: Stats) -> Stats:
  """Merges two summaries; ties keep the earlier worst instance (deterministic)."""
  worse = b.worst > a.worst
  return Stats(count=a.count + b.count, violations=a.violations + b.violations,
               worst=b.worst if worse else a.worst,
               worst_index=b.worst_index if worse else a.worst_index,
               worst_error=b.worst_error if worse else a.worst_error,
               min_slack=min(a.min_slack, b.min_slack), sum_value=a.sum_value + b.sum_value,
               sum_sq_value=a.sum_sq_value + b.sum_sq_value, events=a.events + b.events,
               sample=a.sample + b.sample, nonfinite=a.nonfinite + b.nonfinite,
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
  verdict: str            # "holds" | "FAILS" | "reported" | "measured"
  passed: bool            # False only for a failing non-conjecture claim
  detail: dict[str, Any]


def decide(kind: str, st: Stats, *, delta: float | None = None, alpha: float = 0.01) -> Verdict:
  """The verdict of a claim from its merged statistics.

  identity: holds when every instance is within tolerance and finite.
  bound: holds when no instance has lhs > rhs beyond rounding and all are finite.
  probabilistic bound: the number of events k over n repetitions is tested
    against rate delta with a one-sided exact binomial test at level ``alpha``
    (fails when P[Bin(n, delta) >= k] < alpha).
  conjecture / measurement: never fail; reported.
  """
  mean = st.sum_value / st.count if st.count else math.nan
  var = max(st.sum_sq_value / st.count - mean ** 2, 0.0) if st.count else math.nan
  detail: dict[str, Any] = {"mean": mean, "std": math.sqrt(var), "nonfinite": st.nonfinite}
  if st.sample:
    q = np.quantile(np.asarray(st.sample), [0.5, 0.9, 0.99])
    detail.update(median=float(q[0]), q90=float(q[1]), q99=float(q[2]))
  for key, count in st.extra_events.items():
    detail[f"events_{key}"] = count
  for key, vals in st.extra_samples.items():
    if vals:
      detail[f"median_{key}"] = float(np.median(vals))
  if kind == "identity":
    detail.update(max_error=st.worst_error, max_error_over_tolerance=st.worst)
    ok = st.violations == 0 and st.nonfinite == 0
    return Verdict("holds" if ok else "FAILS", ok, detail)
  if kind in RATIO_KINDS:
    detail.update(max_ratio=math.exp(min(st.worst, 700.0)), min_slack=st.min_slack)
  if kind == "bound":
    ok = st.violations == 0 and st.nonfinite == 0
    return Verdict("holds" if ok else "FAILS", ok, detail)
  if kind == "probabilistic bound":
    if delta is None:
      raise ValueError("a probabilistic bound needs delta")
    p_value = binomial_upper_tail(st.events, st.count, delta)
    detail.update(delta=delta, event_rate=st.events / max(st.count, 1), events=st.events,
                  binomial_p_value=p_value, alpha=alpha)
    ok = p_value >= alpha and st.nonfinite == 0
    return Verdict("holds" if ok else "FAILS", ok, detail)
  if kind == "conjecture":
    return Verdict("violated" if st.violations else "not violated", True, detail)
  return Verdict("measured", True, detail)
