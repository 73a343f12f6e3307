"""Check types: what a claim's evaluation returns, how it is reduced, and how it is judged.

A claim's ``evaluate(instance, bucket)`` returns ONE check: a NamedTuple of
arrays whose type says two things.

- Its **role**, what a verdict on it is evidence of (docs/THEORY.md, "Kinds of
  check"): a statement of the paper, the toolkit's corrected statement, a
  consistency check of the code (true by construction: evidence of nothing
  about the paper), a conjecture (a reading that may be false) or a
  measurement. The role decides whether a failure fails the run, and how the
  report's summary counts the row.
- Its **form**, how the per-instance numbers are reduced and compared:

  ========  =====================  ===========================================
  form      fields                 an instance violates when
  ========  =====================  ===========================================
  identity  error, tolerance       error > tolerance
  ratio     log_lhs, log_rhs       log(lhs / rhs) > log(1 + bound_slack)
  event     log_lhs, log_rhs,      the event rate is above delta (one-sided
            violated               exact binomial test over all instances)
  value     value                  never (reported)
  ========  =====================  ===========================================

  ============================  ========  ====================  ==============
  check type                    form      kind (report column)  role
  ============================  ========  ====================  ==============
  IdentityCheck                 identity  identity              paper
  BoundCheck                    ratio     bound                 paper
  EventCheck                    event     probabilistic bound   paper
  CorrectedCheck                ratio     corrected             corrected
  ConsistencyCheck              ratio     consistency           consistency
  ConsistencyIdentityCheck      identity  consistency           consistency
  ConjectureCheck               ratio     conjecture            conjecture
  ConjectureEventCheck          event     conjecture            conjecture
  Measurement                   value     measurement           measurement
  ============================  ========  ====================  ==============

Every check type owns its per-chunk reduction (``reduce``: host NumPy, float64,
into a mergeable :class:`Stats`), its verdict rule (``decide``), its
worst-instance quantity and label (``worst_label``, ``worst_of``) and how a
replayed number is compared with a saved one (``agree``): a runner calls these
and never asks which kind a check is.

Rules (tested in tests/test_proofs_check.py):

- An identity holds on an instance when error <= tolerance (equality holds). An
  identity check may say the largest error it can produce (``max_error``; e.g.
  2 for C1, whose two sides are each at most its unit): an instance whose
  tolerance is at or above it cannot fail, so it is **vacuous**: counted apart
  (``Stats.vacuous``), like out-of-range ones, and never as holding.
- A ratio instance is violated when log(lhs/rhs) > log(1 + bound_slack)
  (strictly). lhs = rhs = 0 (log -inf on both sides) is ratio 0; rhs = 0 < lhs
  is an infinite ratio, a violation.
- Out of range: an instance whose numbers are not finite in the run's dtype
  (NaN, or +inf on a side) is counted in ``out_of_range``, apart from the
  violations, and takes no part in the worst instance, the sums or the
  quantiles.
- The worst instance: the largest worst value; ties go to the instance first in
  (bucket, index) order, whatever the chunking and the merge order. Counts, the
  worst instance, the min slack, quantiles and events do not depend on the
  merge order; means and standard deviations only to float64 rounding. An empty
  chunk is the identity of the merge.
- Analysis beats sampling: a fixed instance of the claim (a :class:`Witness`,
  with its closed-form ratio) whose evaluated ratio is above 1 refutes the
  claim in every run ("violated (analytic)"), whatever the random sweep found;
  one whose ratio is 1 to rounding is a tightness witness, not a refutation.
  An adversarial search that pushes a ratio above 1 decides likewise
  ("violated (adversarial)").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_kd import runtime
from icl_kd.tolerances import bound_slack, identity_tolerance, ratio_status, ratios_agree

SUBSAMPLE = 4096  # per-instance values kept (first instances of each bucket) for quantiles
TOP_K = 16        # worst instances kept (ratio forms): the adversarial search starts there
LOG_CAP = 700.0   # ratios are formed as exp(min(log ratio, LOG_CAP)): no float64 overflow
ALPHA = 0.01      # level of the one-sided exact binomial test of an event form


# -- roles --------------------------------------------------------------------------

class Role(NamedTuple):
  """What a verdict on a check is evidence of (docs/THEORY.md, "Kinds of check").

  Attributes:
    name: a short name ("paper", "corrected", "consistency", "conjecture", "measurement").
    title: how the report's summary names the group of the paper's rows of this role.
    fails_run: whether a failing row fails the run (exit code 1).
    evidence_about: what a verdict says something about.
    own_title: how the summary names a researcher's rows of this role (claims whose theory
      label is not one of the paper's C1..C7).
  """
  name: str
  title: str
  fails_run: bool
  evidence_about: str
  own_title: str = ""


PAPER = Role("paper", "statements of the paper", True, "the paper", "statements")
CORRECTED = Role("corrected", "corrected statements (the toolkit's own, proved in docs/THEORY.md)",
                 True, "the correction", "corrected statements")
CONSISTENCY = Role("consistency", "consistency checks (true by construction: not evidence)",
                   True, "nothing: the code", "consistency checks (not evidence)")
CONJECTURE = Role("conjecture", "conjectures (readings that may be false; never fail the run)",
                  False, "the reading", "conjectures")
MEASUREMENT = Role("measurement", "measurements", False, "nothing: a number the theory leaves open",
                   "measurements")
ROLES = (PAPER, CORRECTED, CONSISTENCY, CONJECTURE, MEASUREMENT)
"""Every role, in the order the report's summary counts them."""


# -- exact sums: the mean and standard deviation do not depend on the chunking ----------

EXACT_SHIFT = 1127
"""Every finite float64 x is an integer multiple of 2^-1127 (its mantissa has 53 bits, its
exponent is >= -1074): sums are kept as the exact integer x 2^1127, so they do not depend
on how the instances were split into chunks or merged."""


def exact_sum(values) -> int:
  """The exact sum of finite float64 ``values``, times 2^EXACT_SHIFT, as a Python int.

  Vectorised: each value is m 2^e with a 53-bit integer m (``numpy.frexp``); the
  mantissas are split into 27- and 26-bit halves, summed exactly in int64 per
  exponent, and the few per-exponent sums are combined in Python integers.
  """
  v = np.asarray(values, np.float64).ravel()
  v = v[v != 0.0]
  if v.size == 0:
    return 0
  if not np.all(np.isfinite(v)):
    raise ValueError("exact_sum takes finite values only")
  mant, exp = np.frexp(v)                                   # v = mant 2^exp, 0.5 <= |mant| < 1
  m = np.rint(mant * 2.0 ** 53).astype(np.int64)            # v = m 2^(exp - 53), exactly
  shift = exp.astype(np.int64) - 53 + EXACT_SHIFT           # >= 1 for every finite float64
  hi, lo = m >> 26, m - ((m >> 26) << 26)                   # m = hi 2^26 + lo (floor split)
  order = np.argsort(shift, kind="stable")
  shift, hi, lo = shift[order], hi[order], lo[order]
  starts = np.flatnonzero(np.r_[True, shift[1:] != shift[:-1]])
  sum_hi, sum_lo = np.add.reduceat(hi, starts), np.add.reduceat(lo, starts)
  total = 0
  for s_, h, l_ in zip(shift[starts].tolist(), sum_hi.tolist(), sum_lo.tolist()):
    total += ((h << 26) + l_) << s_
  return total


def exact_moments(total: int, total_sq: int, n: int) -> tuple[float, float]:
  """(mean, standard deviation) of n values from their exact sums (correctly rounded)."""
  from fractions import Fraction
  if n == 0:
    return math.nan, math.nan
  scale = 1 << EXACT_SHIFT
  mean = Fraction(total, scale * n)
  var = Fraction(total_sq, scale * n) - mean * mean

  def as_float(fr) -> float:          # beyond float64's range: +-inf, as a float sum would give
    try:
      return float(fr)
    except OverflowError:
      return math.inf if fr > 0 else -math.inf
  return as_float(mean), math.sqrt(max(as_float(var), 0.0))


def _sums(values: np.ndarray) -> tuple[int, int | None]:
  """Exact sum and exact sum of squares (None when a square overflows float64)."""
  with np.errstate(over="ignore"):
    sq = values * values
  return exact_sum(values), (exact_sum(sq) if np.all(np.isfinite(sq)) else None)


# -- mergeable statistics -------------------------------------------------------------

@dataclasses.dataclass
class Stats:
  """Mergeable summary of a set of instances of one claim (any check type)."""
  count: int = 0
  violations: int = 0
  out_of_range: int = 0             # instances not finite in the dtype (apart from violations)
  vacuous: int = 0                  # identity instances that cannot fail (tolerance >= max_error)
  worst: float = -math.inf          # identity: max error/tolerance; ratio: max log(lhs/rhs)
  worst_index: tuple = ()           # (bucket, index) of the worst instance
  worst_error: float = math.nan     # identity: the error at the worst instance
  min_slack: float = math.inf       # ratio forms: min (rhs - lhs) / rhs
  sum_value: int = 0                # exact sum x 2^EXACT_SHIFT: identity: errors; ratio:
                                    # ratios; value: values (see exact_sum)
  sum_sq_value: int | None = 0      # the same of their squares; None once a square overflowed
  events: int = 0                   # event form: number of `violated` events
  worst_values: dict = dataclasses.field(default_factory=dict)   # the worst instance's check
  sample: list = dataclasses.field(default_factory=list)
  extra_events: dict = dataclasses.field(default_factory=dict)   # check.events counts
  extra_samples: dict = dataclasses.field(default_factory=dict)  # check.extras first values
  top: list = dataclasses.field(default_factory=list)            # [log_ratio, bucket, index]

  @property
  def in_range(self) -> int:
    return self.count - self.out_of_range

  @property
  def informative(self) -> int:
    """In-range instances that could fail (not vacuous)."""
    return self.count - self.out_of_range - self.vacuous

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["worst_index"] = list(self.worst_index)
    return runtime.jsonable(d)

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "Stats":
    d = dict(d)
    d.pop("nonfinite", None)
    d.setdefault("vacuous", 0)
    d["worst_values"] = _json_values(d.get("worst_values", {}))
    d["worst_index"] = tuple(d["worst_index"])
    for k in ("worst", "worst_error", "min_slack"):
      d[k] = runtime.from_jsonable_float(d[k])
    d["sum_value"] = int(d["sum_value"])
    d["sum_sq_value"] = None if d["sum_sq_value"] is None else int(d["sum_sq_value"])
    d["top"] = [[runtime.from_jsonable_float(t[0]), int(t[1]), int(t[2])] for t in d["top"]]
    d["sample"] = [runtime.from_jsonable_float(x) for x in d["sample"]]
    d["extra_samples"] = {k: [runtime.from_jsonable_float(x) for x in v]
                          for k, v in d["extra_samples"].items()}
    return cls(**d)


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
  w = b if _worse(a, b) else a
  return Stats(count=a.count + b.count, violations=a.violations + b.violations,
               out_of_range=a.out_of_range + b.out_of_range, vacuous=a.vacuous + b.vacuous,
               worst=w.worst, worst_index=w.worst_index, worst_error=w.worst_error,
               worst_values=w.worst_values,
               min_slack=min(a.min_slack, b.min_slack), sum_value=a.sum_value + b.sum_value,
               sum_sq_value=(None if a.sum_sq_value is None or b.sum_sq_value is None
                             else a.sum_sq_value + b.sum_sq_value), events=a.events + b.events,
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


def capped_exp(log_x: float) -> float:
  """exp(min(log_x, LOG_CAP)): a ratio as the reports give it (no float64 overflow)."""
  return float(np.exp(min(float(log_x), LOG_CAP)))


# -- witnesses: fixed instances with a closed form ---------------------------------------

class Witness(NamedTuple):
  """A fixed instance of a claim with its closed-form ratio lhs / rhs (an analytic check).

  Attributes:
    name: its name (e.g. ``gaussian-point-masses``).
    bucket: the index of the claim's bucket whose shapes ``instance`` has.
    instance: ``dtype -> Instance``: the arrays (the same names and shapes as the
      claim's sampler draws in that bucket).
    closed_form: ``bucket -> float``: lhs / rhs by hand (``math.inf`` when rhs = 0 < lhs);
      it may depend on the bucket's static fields (e.g. a convention).
    formula: the closed form, in words.
  """
  name: str
  bucket: int
  instance: Any
  closed_form: Any
  formula: str = ""


class WitnessResult(NamedTuple):
  """A :class:`Witness` evaluated by the claim's own evaluation.

  Attributes:
    name, formula: the witness's.
    log_ratio: log(lhs / rhs) from the evaluated check.
    closed_form_ratio: the hand value.
    status: "refutes" (ratio > 1 beyond rounding), "tight" (ratio 1 to rounding) or
      "holds" (below 1).
    agrees: the evaluated ratio equals the closed form (both infinite, or within the
      dtype's :func:`bound_slack`, relative).
  """
  name: str
  formula: str
  log_ratio: float
  closed_form_ratio: float
  status: str
  agrees: bool


def witness_result(w: Witness, log_ratio: float, closed_form_ratio: float, dtype) -> WitnessResult:
  """Classifies an evaluated witness (:func:`icl_kd.tolerances.ratio_status`) and compares it
  with its closed form (:func:`icl_kd.tolerances.ratios_agree`)."""
  ratio = math.inf if log_ratio == math.inf else math.exp(min(log_ratio, LOG_CAP))
  return WitnessResult(w.name, w.formula, float(log_ratio), float(closed_form_ratio),
                       ratio_status(log_ratio, dtype), ratios_agree(ratio, closed_form_ratio, dtype))


# -- verdicts -----------------------------------------------------------------------

@dataclasses.dataclass
class Verdict:
  """A claim's verdict from its merged statistics.

  Attributes:
    verdict: holds | FAILS | undecided | violated | not violated | measured, with
      "(analytic)" or "(adversarial)" when a witness or the adversarial search decided it.
    passed: False only when a row whose role fails the run fails (or is undecided).
    detail: the numbers behind it (means, quantiles, the form's own numbers).
  """
  verdict: str
  passed: bool
  detail: dict[str, Any]


def _moments(st: Stats, n: int) -> dict[str, Any]:
  """Mean and standard deviation from the exact sums: the same numbers however the
  instances were chunked, merged or spread over devices (NaN std once a square overflowed)."""
  mean, std = exact_moments(st.sum_value, st.sum_sq_value or 0, n)
  if st.sum_sq_value is None:
    std = math.nan
  out: dict[str, Any] = {"mean": mean, "std": std, "out_of_range": st.out_of_range}
  if st.sample:
    q = np.quantile(np.asarray(st.sample), [0.5, 0.9, 0.99])
    out.update(median=float(q[0]), q90=float(q[1]), q99=float(q[2]))
  return out


def _fields(nt) -> dict:
  return nt._asdict() if hasattr(nt, "_asdict") else {}


def _first_worst(score: np.ndarray) -> int:
  """Index of the largest score; the first one on ties (np.argmax's rule)."""
  return int(np.argmax(score))


def _finish(st: Stats, check, ok: np.ndarray, score: np.ndarray, kept: np.ndarray, *,
            bucket: int, start: int, take: int) -> Stats:
  """The part of every reduction that does not depend on the form."""
  n = st.count
  st.out_of_range = int(np.sum(~ok))
  if ok.any():
    idx = _first_worst(score)
    st.worst, st.worst_index = float(score[idx]), (bucket, start + idx)
    st.worst_values = check_values(jax.tree_util.tree_map(
        lambda a: np.broadcast_to(np.asarray(a), (n,))[idx], check))
  st.sample = [float(x) for x, good in zip(kept[:take], ok[:take]) if good]
  for key, v in _fields(check.events).items():
    st.extra_events[key] = int(np.sum(np.asarray(v).reshape(n).astype(bool)))
  for key, v in _fields(check.extras).items():
    st.extra_samples[key] = [float(x) for x in np.asarray(v, np.float64).reshape(n)[:take]]
  return st


def _fmt(x, spec: str) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "-"
  return format(x, spec)


class _Form:
  """How one form of check is reduced, judged, shown and replayed (see the module's table).

  Class attributes: ``name``; ``worst_label`` (what the "worst" number is);
  ``legend`` (how to read it); ``has_slack`` (a smallest slack applies);
  ``searchable`` (the adversarial search can push its ratio up).
  """
  name = ""
  worst_label = ""
  legend = ""
  has_slack = False
  searchable = False

  @classmethod
  def size(cls, check) -> int:
    main = [np.asarray(v) for k, v in check._asdict().items() if k not in ("extras", "events")]
    return int(main[0].shape[0]) if main[0].ndim else 1


class IdentityForm(_Form):
  name = "identity"
  worst_label = "error/tolerance"
  legend = ("largest error/tolerance (<= 1 holds), with the relative error there; instances "
            "whose tolerance is at or above the largest error the check can produce are "
            "vacuous: counted apart, never as holding")

  @staticmethod
  def reduce(check, *, bucket: int, start: int, dtype_name: str, keep: int = SUBSAMPLE) -> Stats:
    del dtype_name
    n = _Form.size(check)
    st = Stats(count=n)
    if n == 0:
      return st
    take = max(0, min(n, keep - start))
    err = np.asarray(check.error, np.float64).reshape(n)
    tol = np.asarray(check.tolerance, np.float64).reshape(n)
    max_err = np.broadcast_to(np.asarray(check.max_error, np.float64), (n,))
    ok = np.isfinite(err) & np.isfinite(tol) & (tol > 0)
    vacuous = ok & (tol >= max_err)
    st.vacuous = int(np.sum(vacuous))
    informative = ok & ~vacuous
    with np.errstate(invalid="ignore", divide="ignore"):
      score = np.where(informative, err / np.where(ok, tol, 1.0), -np.inf)
    st.violations = int(np.sum(informative & (score > 1.0)))
    if informative.any():
      st.worst_error = float(err[_first_worst(score)])
    st.sum_value, st.sum_sq_value = _sums(err[informative])
    st = _finish(st, check, ok, score, err, bucket=bucket, start=start, take=take)
    if not informative.any():                      # only vacuous instances: no worst instance
      st.worst, st.worst_index, st.worst_values = -math.inf, (), {}
    return st

  @staticmethod
  def worst_number(st: Stats) -> float:
    return st.worst if st.worst_index else math.nan

  @staticmethod
  def cell(worst: float, worst_error: float, detail: dict) -> str:
    """The report table's "worst" cell."""
    del detail
    return f"{_fmt(worst, '.2g')} ({_fmt(worst_error, '.1e')})"

  @staticmethod
  def worst_of(values: dict) -> float:
    return values["error"] / values["tolerance"] if values["tolerance"] > 0 else math.nan

  @staticmethod
  def agree(saved: float, got: float, dtype_name: str) -> bool:
    """Same verdict, and within 0.1 of the tolerance (numbers in units of the tolerance)."""
    del dtype_name
    if math.isnan(saved) or math.isnan(got):
      return math.isnan(saved) and math.isnan(got)
    return saved == got or ((saved <= 1.0) == (got <= 1.0) and abs(saved - got) <= 0.1)

  @staticmethod
  def decide(role: Role, st: Stats, *, delta=None, alpha: float = ALPHA, witnesses=(),
             adversarial_log_ratio=None, dtype_name: str = "float64") -> Verdict:
    del delta, alpha, witnesses, adversarial_log_ratio, dtype_name
    n = st.informative
    detail = _moments(st, n)
    detail.update(max_error=st.worst_error, max_error_over_tolerance=st.worst,
                  vacuous=st.vacuous)
    decided = n > 0
    ok = st.violations == 0 and decided
    if not role.fails_run:
      return Verdict("violated" if st.violations else ("not violated" if decided else "undecided"),
                     True, detail)
    return Verdict("holds" if ok else ("FAILS" if decided else "undecided"), ok, detail)


class RatioForm(_Form):
  name = "ratio"
  worst_label = "lhs/rhs"
  legend = "largest lhs/rhs (<= 1 holds); \"slack\" is the smallest (rhs - lhs)/rhs"
  has_slack = True
  searchable = True

  @staticmethod
  def cell(worst: float, worst_error: float, detail: dict) -> str:
    del worst_error, detail
    return _fmt(worst, ".6g")

  @staticmethod
  def reduce(check, *, bucket: int, start: int, dtype_name: str, keep: int = SUBSAMPLE) -> Stats:
    n = _Form.size(check)
    st = Stats(count=n)
    if n == 0:
      return st
    take = max(0, min(n, keep - start))
    log_lhs = np.asarray(check.log_lhs, np.float64).reshape(n)
    log_rhs = np.asarray(check.log_rhs, np.float64).reshape(n)
    ok = ~(np.isnan(log_lhs) | np.isnan(log_rhs) | np.isposinf(log_lhs) | np.isposinf(log_rhs))
    with np.errstate(invalid="ignore"):
      lr = log_lhs - log_rhs                      # -inf - -inf (both sides 0) is ratio 0
    lr = np.where(np.isneginf(log_lhs), -np.inf, lr)
    score = np.where(ok, lr, -np.inf)
    st.violations = int(np.sum(ok & (lr > np.log1p(bound_slack(dtype_name)))))
    if ok.any():
      capped = np.minimum(lr[ok], LOG_CAP)
      st.min_slack = float(np.min(-np.expm1(capped)))          # (rhs - lhs) / rhs
      st.sum_value, st.sum_sq_value = _sums(np.exp(capped))
    if hasattr(check, "violated"):
      st.events = int(np.sum(ok & np.asarray(check.violated).reshape(n).astype(bool)))
    order = [int(i) for i in np.argsort(-score, kind="stable") if ok[i]][:TOP_K]
    st.top = [[float(lr[i]), bucket, start + i] for i in order]
    with np.errstate(over="ignore"):
      kept = np.exp(np.minimum(lr, LOG_CAP))
    return _finish(st, check, ok, score, kept, bucket=bucket, start=start, take=take)

  @staticmethod
  def worst_number(st: Stats) -> float:
    return capped_exp(st.worst) if st.worst_index else math.nan

  @staticmethod
  def worst_of(values: dict) -> float:
    with np.errstate(all="ignore"):
      return float(np.exp(np.minimum(np.float64(values["log_lhs"]) - values["log_rhs"],
                                     LOG_CAP)))

  @staticmethod
  def agree(saved: float, got: float, dtype_name: str) -> bool:
    """Log ratios within the dtype's rounding allowance."""
    if math.isnan(saved) or math.isnan(got):
      return math.isnan(saved) and math.isnan(got)
    if saved == got:
      return True
    if saved <= 0 or got <= 0 or math.isinf(saved) or math.isinf(got):
      return False
    return abs(math.log(got) - math.log(saved)) <= bound_slack(dtype_name)

  @staticmethod
  def decide(role: Role, st: Stats, *, delta=None, alpha: float = ALPHA, witnesses=(),
             adversarial_log_ratio=None, dtype_name: str = "float64") -> Verdict:
    del delta, alpha
    n = st.in_range
    detail = _moments(st, n)
    decided = n > 0
    detail.update(max_ratio=capped_exp(st.worst) if decided else math.nan,
                  min_slack=st.min_slack)
    return _ratio_verdict(role, st.violations > 0, decided, detail, witnesses=witnesses,
                          adversarial_log_ratio=adversarial_log_ratio, dtype_name=dtype_name)


def _ratio_verdict(role: Role, violated: bool, decided: bool, detail: dict, *, witnesses,
                   adversarial_log_ratio, dtype_name: str) -> Verdict:
  """The verdict of a ratio or event form: analysis, then the sweep, then the adversarial search."""
  refuting = [w.name for w in witnesses if w.status == "refutes"]
  tight = [w.name for w in witnesses if w.status == "tight"]
  if witnesses:
    detail.update(refuted_by=refuting, tight_at=tight)
  adv = (adversarial_log_ratio is not None
         and adversarial_log_ratio > math.log1p(bound_slack(dtype_name)))
  if adversarial_log_ratio is not None:
    detail["adversarial_max_ratio"] = capped_exp(adversarial_log_ratio)
  if not role.fails_run:
    if refuting:
      return Verdict("violated (analytic)", True, detail)
    if violated:
      return Verdict("violated", True, detail)
    if adv:
      return Verdict("violated (adversarial)", True, detail)
    return Verdict("not violated" if decided else "undecided", True, detail)
  if refuting:
    return Verdict("FAILS (analytic)", False, detail)
  if violated:
    return Verdict("FAILS", False, detail)
  if adv:
    return Verdict("FAILS (adversarial)", False, detail)
  return Verdict("holds" if decided else "undecided", decided, detail)


class EventForm(RatioForm):
  name = "event"
  worst_label = "lhs/rhs"
  legend = ("the event rate (tested against delta with a one-sided exact binomial test); then "
            "the largest lhs/rhs")
  searchable = False

  @staticmethod
  def cell(worst: float, worst_error: float, detail: dict) -> str:
    del worst_error
    return f"{_fmt(detail.get('event_rate'), '.1%')}; {_fmt(worst, '.2g')}"

  @staticmethod
  def decide(role: Role, st: Stats, *, delta=None, alpha: float = ALPHA, witnesses=(),
             adversarial_log_ratio=None, dtype_name: str = "float64") -> Verdict:
    if delta is None:
      raise ValueError("a check of the event form needs the claim's delta, got None")
    n = st.in_range
    detail = _moments(st, n)
    decided = n > 0
    p_value = binomial_upper_tail(st.events, n, delta)
    detail.update(max_ratio=capped_exp(st.worst) if decided else math.nan,
                  min_slack=st.min_slack, delta=delta, event_rate=st.events / max(n, 1),
                  events=st.events, binomial_p_value=p_value, alpha=alpha)
    return _ratio_verdict(role, bool(decided and p_value < alpha), decided, detail,
                          witnesses=witnesses, adversarial_log_ratio=adversarial_log_ratio,
                          dtype_name=dtype_name)


class ValueForm(_Form):
  name = "value"
  worst_label = "value"
  legend = "largest value (median)"

  @staticmethod
  def cell(worst: float, worst_error: float, detail: dict) -> str:
    del worst_error
    return f"{_fmt(worst, '.2g')} (med {_fmt(detail.get('median'), '.2g')})"

  @staticmethod
  def reduce(check, *, bucket: int, start: int, dtype_name: str, keep: int = SUBSAMPLE) -> Stats:
    del dtype_name
    n = _Form.size(check)
    st = Stats(count=n)
    if n == 0:
      return st
    take = max(0, min(n, keep - start))
    v = np.asarray(check.value, np.float64).reshape(n)
    ok = np.isfinite(v)
    st.sum_value, st.sum_sq_value = _sums(v[ok])
    return _finish(st, check, ok, np.where(ok, v, -np.inf), v, bucket=bucket, start=start,
                   take=take)

  @staticmethod
  def worst_number(st: Stats) -> float:
    return st.worst if st.worst_index else math.nan

  @staticmethod
  def worst_of(values: dict) -> float:
    return values["value"]

  @staticmethod
  def agree(saved: float, got: float, dtype_name: str) -> bool:
    if math.isnan(saved) or math.isnan(got):
      return math.isnan(saved) and math.isnan(got)
    return saved == got or abs(saved - got) <= 1e3 * bound_slack(dtype_name) * abs(saved)

  @staticmethod
  def decide(role: Role, st: Stats, *, delta=None, alpha: float = ALPHA, witnesses=(),
             adversarial_log_ratio=None, dtype_name: str = "float64") -> Verdict:
    del role, delta, alpha, witnesses, adversarial_log_ratio, dtype_name
    n = st.in_range
    detail = _moments(st, n)
    detail["max"] = st.worst if n else math.nan
    return Verdict("measured", True, detail)


# -- the check types ------------------------------------------------------------------

class IdentityCheck(NamedTuple):
  """A statement of the paper: both sides equal up to ``tolerance`` (relative ``error``).

  ``max_error``: the largest error the check can produce when both sides obey their
  definitions (inf: unbounded); an instance whose tolerance reaches it is vacuous.
  """
  error: jax.Array
  tolerance: jax.Array
  extras: Any = ()
  events: Any = ()
  max_error: Any = math.inf
  kind = "identity"
  role = PAPER
  form = IdentityForm


class ConsistencyIdentityCheck(NamedTuple):
  """Two sides that are the same expression of the toolkit's own definitions, equal to
  ``tolerance``: a failure is a bug of the toolkit, not evidence about the paper."""
  error: jax.Array
  tolerance: jax.Array
  extras: Any = ()
  events: Any = ()
  max_error: Any = math.inf
  kind = "consistency"
  role = CONSISTENCY
  form = IdentityForm


class BoundCheck(NamedTuple):
  """A statement of the paper: lhs <= rhs, as logarithms (log 0 = -inf is allowed)."""
  log_lhs: jax.Array
  log_rhs: jax.Array
  extras: Any = ()
  events: Any = ()
  kind = "bound"
  role = PAPER
  form = RatioForm


class CorrectedCheck(NamedTuple):
  """The toolkit's corrected form of a statement that fails as written (proof in
  docs/THEORY.md): lhs <= rhs; a failure fails the run and refutes the correction."""
  log_lhs: jax.Array
  log_rhs: jax.Array
  extras: Any = ()
  events: Any = ()
  kind = "corrected"
  role = CORRECTED
  form = RatioForm


class ConsistencyCheck(NamedTuple):
  """lhs <= rhs by construction (Cauchy-Schwarz, Jensen, softmax algebra): a failure is a bug."""
  log_lhs: jax.Array
  log_rhs: jax.Array
  extras: Any = ()
  events: Any = ()
  kind = "consistency"
  role = CONSISTENCY
  form = RatioForm


class ConjectureCheck(NamedTuple):
  """A reading of the paper that may be false: lhs <= rhs is reported, never enforced."""
  log_lhs: jax.Array
  log_rhs: jax.Array
  extras: Any = ()
  events: Any = ()
  kind = "conjecture"
  role = CONJECTURE
  form = RatioForm


class EventCheck(NamedTuple):
  """A probabilistic statement of the paper: ``violated`` has probability at most delta."""
  log_lhs: jax.Array
  log_rhs: jax.Array
  violated: jax.Array
  extras: Any = ()
  events: Any = ()
  kind = "probabilistic bound"
  role = PAPER
  form = EventForm


class ConjectureEventCheck(NamedTuple):
  """A probabilistic form whose constant the toolkit chose (not proved): its event rate
  against delta is reported, never enforced."""
  log_lhs: jax.Array
  log_rhs: jax.Array
  violated: jax.Array
  extras: Any = ()
  events: Any = ()
  kind = "conjecture"
  role = CONJECTURE
  form = EventForm


class Measurement(NamedTuple):
  """A number the theory leaves open."""
  value: jax.Array
  extras: Any = ()
  events: Any = ()
  kind = "measurement"
  role = MEASUREMENT
  form = ValueForm


CHECK_TYPES = (IdentityCheck, BoundCheck, EventCheck, CorrectedCheck, ConsistencyCheck,
               ConsistencyIdentityCheck, ConjectureCheck, ConjectureEventCheck, Measurement)
"""Every check type, in the order of the module's table."""
KINDS = tuple(dict.fromkeys(t.kind for t in CHECK_TYPES))
"""The kind labels (a report's "kind" column), once each."""


SHORT_KINDS = {"probabilistic bound": "prob.bound", "consistency": "consist.",
               "measurement": "measure"}


def short_kind(kind: str) -> str:
  """The kind as the report table's narrow column writes it."""
  return SHORT_KINDS.get(kind, kind)


def form_named(name: str):
  """The form called ``name`` ("identity", "ratio", "event", "value"): how a report read back
  from JSON formats and replays a row."""
  forms = {t.form.name: t.form for t in CHECK_TYPES}
  if name not in forms:
    raise ValueError(f"form must be one of {sorted(forms)}, got {name!r}")
  return forms[name]


def role_named(name: str) -> Role:
  """The role called ``name`` (one of :data:`ROLES`)."""
  for r in ROLES:
    if r.name == name:
      return r
  raise ValueError(f"role must be one of {[r.name for r in ROLES]}, got {name!r}")


def is_check_type(t) -> bool:
  """Whether ``t`` is one of :data:`CHECK_TYPES`."""
  return isinstance(t, type) and t in CHECK_TYPES


def check_type_of(check):
  """The check type of an evaluated check; TypeError naming the received type otherwise."""
  t = type(check)
  if not is_check_type(t):
    got = (f"an array of shape {tuple(check.shape)} and dtype {check.dtype}"
           if hasattr(check, "shape") and hasattr(check, "dtype")
           else f"{t.__module__}.{t.__qualname__}")
    raise TypeError(f"a claim's evaluate must return one of the check types of "
                    f"icl_kd.claims ({', '.join(c.__name__ for c in CHECK_TYPES)}), got {got}")
  return t


def legend() -> str:
  """How to read the report's "worst" column, one line per form (from the forms themselves)."""
  forms = dict.fromkeys(t.form for t in CHECK_TYPES)
  kinds = {f: sorted({t.kind for t in CHECK_TYPES if t.form is f}) for f in forms}
  return "\n".join(f"  {', '.join(kinds[f])}: {f.legend}" for f in forms)


def check_values(check) -> dict[str, Any]:
  """A check as a nested dict of Python floats/bools (``extras`` and ``events`` as dicts)."""
  out: dict[str, Any] = {}
  for name, v in check._asdict().items():
    if name in ("extras", "events"):
      fields = v._asdict().items() if hasattr(v, "_asdict") else ()
      out[name] = {k: (bool(x) if name == "events" else float(x)) for k, x in fields}
    elif jnp.issubdtype(jnp.asarray(v).dtype, jnp.bool_):
      out[name] = bool(v)
    else:
      out[name] = float(v)
  return out


def _json_values(values: dict) -> dict:
  """check_values read back from JSON: non-finite floats restored."""
  out = {}
  for k, v in values.items():
    out[k] = (_json_values(v) if isinstance(v, dict)
              else v if isinstance(v, bool) else runtime.from_jsonable_float(v))
  return out


def check_from_values(check_type, values: dict, extras_type=None, events_type=None):
  """A typed check rebuilt from :func:`check_values` (host floats and bools), with its
  ``extras`` and ``events`` NamedTuples when their types are given."""
  kw = {k: v for k, v in values.items() if k not in ("extras", "events")}
  extras = values.get("extras") or {}
  events = values.get("events") or {}
  if extras and extras_type is not None and hasattr(extras_type, "_fields"):
    kw["extras"] = extras_type(**{k: np.float64(extras[k]) for k in extras_type._fields})
  if events and events_type is not None and hasattr(events_type, "_fields"):
    kw["events"] = events_type(**{k: np.bool_(events[k]) for k in events_type._fields})
  return check_type(**{k: (v if isinstance(v, (tuple, np.generic)) else
                           (np.bool_(v) if isinstance(v, bool) else np.float64(v)))
                       for k, v in kw.items()})


def log_ratio(check):
  """log(lhs / rhs) of a check of the ratio or event form (the adversarial search's objective)."""
  return check.log_lhs - check.log_rhs
