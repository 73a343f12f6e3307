"""The typed report of a ``proofs_check`` run: :class:`Report` of :class:`ClaimResult` rows.

``Report.to_json()`` / ``Report.from_json()`` round-trip the JSON file the CLI
writes (``--json``), under the project's JSON policy (:mod:`icl_kd.runtime`:
non-finite floats as the strings "nan", "inf", "-inf").

The "worst" number of a row, in the table, the JSON and a replay, is one
quantity, named by ``worst_label``:

  identity                     largest error / tolerance ("error/tolerance"; <= 1 holds),
                               with the relative error at that instance (``worst_error``)
  bound, consistency, conjecture, probabilistic bound
                               largest lhs / rhs ("lhs/rhs"; <= 1 holds)
  measurement                  largest value ("value")
"""

from __future__ import annotations

import dataclasses
import math


import numpy as np

from icl_kd import runtime

THEOREM_KINDS = ("identity", "bound", "probabilistic bound")
WORST_LABELS = {"identity": "error/tolerance", "bound": "lhs/rhs", "consistency": "lhs/rhs",
                "conjecture": "lhs/rhs", "probabilistic bound": "lhs/rhs",
                "measurement": "value"}


@dataclasses.dataclass(frozen=True)
class WorstInstance:
  """A replayable instance: where it was drawn, its arrays (with shapes), its check's values."""
  bucket: int
  index: int
  config: list
  values: dict
  arrays: dict          # name -> np.ndarray (shape and dtype kept, empty arrays included)

  def to_json(self) -> dict:
    return dict(bucket=self.bucket, index=self.index, config=list(self.config),
                values=self.values,
                arrays={k: np.asarray(v).tolist() for k, v in self.arrays.items()},
                shapes={k: list(np.shape(v)) for k, v in self.arrays.items()},
                dtypes={k: str(np.asarray(v).dtype) for k, v in self.arrays.items()})

  @classmethod
  def from_json(cls, d: dict) -> "WorstInstance":
    shapes, dtypes = d.get("shapes", {}), d.get("dtypes", {})
    arrays = {}
    for k, v in d["arrays"].items():
      a = np.asarray(v, dtype=dtypes.get(k))
      arrays[k] = a.reshape(shapes[k]) if k in shapes else a
    return cls(int(d["bucket"]), int(d["index"]), list(d.get("config", [])),
               _floats(d.get("values", {})), arrays)


def _floats(x):
  if isinstance(x, dict):
    return {k: _floats(v) for k, v in x.items()}
  if isinstance(x, str) and x in ("nan", "inf", "-inf"):
    return runtime.from_jsonable_float(x)
  return x


@dataclasses.dataclass(frozen=True)
class ClaimResult:
  """One row of the report.

  Attributes:
    id, theory, kind, statement: the claim (docs/THEORY.md).
    verdict: holds | FAILS | undecided | violated | not violated | measured (plus
      "(adversarial)" when the adversarial search decided it).
    passed: False when a non-conjecture claim fails (the run exits 1).
    instances, violations, out_of_range: counts (out of range: not finite in the dtype).
    worst: the row's worst number (see ``worst_label``); worst_error: the identity's
      relative error at its worst instance.
    min_slack: min (rhs - lhs) / rhs over instances (ratio kinds).
    seconds: wall seconds (the group's shared sweep split evenly).
    worst_instance: the replayable worst instance.
    detail: means, quantiles, events and medians of the extras.
    adversarial: the adversarial search's result, if run.
  """
  id: str
  theory: str
  kind: str
  statement: str
  verdict: str
  passed: bool
  instances: int
  violations: int
  out_of_range: int
  worst: float
  worst_label: str
  worst_error: float
  min_slack: float
  seconds: float
  worst_instance: WorstInstance | None
  detail: dict
  adversarial: dict | None = None
  group: str = ""
  tests: tuple = ()
  figure: str = ""

  def to_json(self) -> dict:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d["worst_instance"] = self.worst_instance.to_json() if self.worst_instance else None
    d["tests"] = list(self.tests)
    if self.adversarial is None:
      del d["adversarial"]
    return d

  @classmethod
  def from_json(cls, d: dict) -> "ClaimResult":
    kw = {f.name: d.get(f.name) for f in dataclasses.fields(cls) if f.name in d}
    for k in ("worst", "worst_error", "min_slack", "seconds"):
      kw[k] = runtime.from_jsonable_float(d.get(k))
    kw["detail"] = _floats(d.get("detail", {}))
    kw["worst_instance"] = (WorstInstance.from_json(d["worst_instance"])
                            if d.get("worst_instance") else None)
    kw["adversarial"] = _floats(d["adversarial"]) if d.get("adversarial") else None
    kw["tests"] = tuple(d.get("tests", ()))
    kw.setdefault("out_of_range", 0)
    kw.setdefault("theory", "")
    kw.setdefault("worst_label", WORST_LABELS.get(d["kind"], ""))
    kw.setdefault("statement", "")
    return cls(**kw)


@dataclasses.dataclass(frozen=True)
class Report:
  """The result of :func:`proofs_check.check`: one :class:`ClaimResult` per claim id."""
  claims: dict          # id -> ClaimResult, in table order
  seed: int
  dtype: str
  convention: str = "eq12"
  instances: int | None = None
  adversarial_steps: int = 0
  chunks_loaded: int = 0
  chunks_computed: int = 0
  environment: dict = dataclasses.field(default_factory=dict)
  attribution: dict = dataclasses.field(default_factory=dict)

  @property
  def ok(self) -> bool:
    """True when every non-conjecture claim holds (the CLI's exit 0)."""
    return all(r.passed for r in self.claims.values())

  def summary(self) -> str:
    """One line that separates theorems from conjectures and measurements."""
    return summary_line(list(self.claims.values()))

  def to_json(self) -> dict:
    return runtime.jsonable(dict(
        **self.environment, seed=self.seed, dtype=self.dtype, convention=self.convention,
        instances=self.instances,
        adversarial_steps=self.adversarial_steps, chunks_loaded=self.chunks_loaded,
        chunks_computed=self.chunks_computed, passed=self.ok, summary=self.summary(),
        attribution=self.attribution,
        claims={cid: r.to_json() for cid, r in self.claims.items()}))

  @classmethod
  def from_json(cls, d: dict) -> "Report":
    if not isinstance(d, dict) or "claims" not in d:
      raise ValueError("not a proofs_check JSON report (no 'claims')")
    own = {"seed", "dtype", "convention", "instances", "adversarial_steps", "chunks_loaded",
           "chunks_computed", "passed", "summary", "claims", "attribution"}
    return cls(claims={cid: ClaimResult.from_json(dict(e, id=cid)) for cid, e in d["claims"].items()},
               seed=int(d.get("seed", 0)), dtype=d.get("dtype", "float64"),
               convention=d.get("convention", "eq12"), attribution=_floats(d.get("attribution", {})),
               instances=d.get("instances"), adversarial_steps=int(d.get("adversarial_steps", 0)),
               chunks_loaded=int(d.get("chunks_loaded", 0)),
               chunks_computed=int(d.get("chunks_computed", 0)),
               environment={k: v for k, v in d.items() if k not in own})


def summary_line(rows: list[ClaimResult]) -> str:
  """E.g. "10 checks hold; 1 conjecture violated: thm4.1-literal; 1 measurement: dw-step-squared"."""
  theorems = [r for r in rows if r.kind in THEOREM_KINDS]
  consistency = [r for r in rows if r.kind == "consistency"]
  conj = [r for r in rows if r.kind == "conjecture"]
  meas = [r for r in rows if r.kind == "measurement"]
  hold = [r for r in theorems if r.passed]
  fail = [r for r in theorems if not r.passed]
  parts = [f"{len(hold)} check{'s' if len(hold) != 1 else ''} hold"
           if len(hold) != 1 else "1 check holds"]
  if fail:
    parts.append(f"{len(fail)} FAIL: {', '.join(r.id for r in fail)}")
  if consistency:
    bad = [r for r in consistency if not r.passed]
    parts.append(f"{len(consistency) - len(bad)} consistency check"
                 f"{'s' if len(consistency) - len(bad) != 1 else ''} pass (not evidence)" +
                 (f", {len(bad)} FAIL (a toolkit bug): {', '.join(r.id for r in bad)}" if bad else ""))
  violated = [r for r in conj if r.verdict.startswith("violated")]
  if conj:
    parts.append(f"{len(violated)} conjecture{'s' if len(violated) != 1 else ''} violated" +
                 (f": {', '.join(r.id for r in violated)}" if violated else "") +
                 (f", {len(conj) - len(violated)} not violated" if len(conj) > len(violated) else ""))
  if meas:
    parts.append(f"{len(meas)} measurement{'s' if len(meas) != 1 else ''}: "
                 f"{', '.join(r.id for r in meas)}")
  oor = [r for r in rows if r.out_of_range]
  if oor:
    parts.append(f"{sum(r.out_of_range for r in oor):,} instances out of range in "
                 f"{', '.join(r.id for r in oor)}")
  return "; ".join(parts)


def _fmt(x, spec=".2e") -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "-"
  return format(x, spec)


def worst_cell(r: ClaimResult) -> str:
  d = r.detail
  if r.kind == "identity":
    return f"{_fmt(r.worst, '.2g')} ({_fmt(r.worst_error, '.1e')})"
  if r.kind == "probabilistic bound":
    return f"{d.get('event_rate', math.nan):.4f}/{d.get('delta')}; {_fmt(r.worst, '.2g')}"
  if r.kind == "measurement":
    return f"{_fmt(r.worst, '.2g')} (med {_fmt(d.get('median'), '.2g')})"
  return _fmt(r.worst, ".6g")


HEADERS = ("claim", "C", "kind", "n", "viol.", "o.o.r.", "worst", "min slack", "verdict", "s")

LEGEND = """\
n: instances. worst: identity = largest error/tolerance (<= 1 holds), with the relative error
  there; bound, consistency, conjecture = largest lhs/rhs (<= 1 holds); probabilistic bound =
  event rate/delta, then largest gap/bound; measurement = largest value (median).
o.o.r.: instances whose numbers left the dtype's range (not finite): counted apart, never
  as violations. measurement rows report a number the theory leaves open: dw-step-squared
  is ||R||/||dW||, whose max is huge when dW is tiny (read the median). See docs/THEORY.md."""


def format_table(rows: list[ClaimResult]) -> str:
  """The report table (at most 120 columns; every number in full is in the JSON)."""
  kinds = {"probabilistic bound": "prob.bound", "consistency": "consist.",
           "measurement": "measure"}
  body = [[r.id, r.theory, kinds.get(r.kind, r.kind), r.instances, r.violations, r.out_of_range,
           worst_cell(r), _fmt(r.min_slack, ".1e") if r.kind not in ("identity", "measurement")
           else "-", r.verdict.replace("(adversarial)", "(adv.)"), f"{r.seconds:.1f}"]
          for r in rows]
  return runtime.format_table(HEADERS, body, align="lllrrrlllr", max_width=120)
