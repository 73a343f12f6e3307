"""The typed report of a ``proofs_check`` run: :class:`Report` of :class:`ClaimResult` rows.

``Report.to_json()`` / ``Report.from_json()`` round-trip the JSON file the CLI
writes (``--json``), under the project's JSON policy (:mod:`icl_kd.runtime`:
non-finite floats as the strings "nan", "inf", "-inf"); ``Report.from_json``
takes a dict, the JSON text, or a path.

The "worst" number of a row, in the table, the JSON and a replay, is one
quantity, named by ``worst_label`` and owned by the claim's check type
(:mod:`icl_kd.claims.checks`): the largest error/tolerance of an identity form,
the largest lhs/rhs of a ratio or event form, the largest value of a
measurement. A row's ``role`` says what its verdict is evidence of, and the
summary counts rows by role: the paper's statements apart from the toolkit's
corrected ones, its consistency checks (true by construction: never evidence
about the paper), conjectures and measurements.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import textwrap
from typing import Any

import numpy as np

from icl_kd import generators, runtime
from icl_kd.claims import ROLES, THEORY_NUMBERS, WitnessResult, checks


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
  if isinstance(x, list):
    return [_floats(v) for v in x]
  if isinstance(x, str) and x in ("nan", "inf", "-inf"):
    return runtime.from_jsonable_float(x)
  return x


def _record(name: str, values: dict):
  """A NamedTuple of ``values`` (a JSON object read back: the field names are the keys)."""
  if not values:
    return ()
  return collections.namedtuple(name, list(values))(**values)


def _asdict(nt) -> dict:
  return nt._asdict() if hasattr(nt, "_asdict") else (dict(nt) if isinstance(nt, dict) else {})


@dataclasses.dataclass(frozen=True)
class ClaimResult:
  """One row of the report.

  Attributes:
    id, theory, kind, statement: the claim.
    role: what its verdict is evidence of ("paper", "corrected", "consistency",
      "conjecture", "measurement"; :data:`icl_kd.claims.ROLES`).
    form: how its checks are reduced ("identity", "ratio", "event", "value").
    verdict: holds | FAILS | undecided | violated | not violated | measured, plus
      "(analytic)" when a witness decided it, "(adversarial)" when the search did.
    passed: False when a row whose role fails the run fails (the run exits 1).
    instances, violations, out_of_range: counts (out of range: not finite in the dtype).
    vacuous: identity instances whose tolerance reaches the largest error the check can
      produce (counted apart, never as holding).
    worst: the row's worst number (see ``worst_label``); worst_error: the identity's
      relative error at its worst instance.
    min_slack: min (rhs - lhs) / rhs over instances (ratio and event forms).
    seconds: wall seconds (the group's shared sweep split evenly).
    worst_instance: the replayable worst instance.
    detail: means, quantiles and the form's own numbers.
    events: the check's events, counted (a NamedTuple of ints, the check's own field names).
    extras: the check's extras, their medians (a NamedTuple of floats).
    witnesses: the claim's witnesses (fixed instances with a closed form), evaluated.
    explanation: the claim's own reading of the run (a NamedTuple with ``text()``; a
      dict when read back from JSON), or None.
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
  role: str = ""
  form: str = ""
  vacuous: int = 0
  events: Any = ()
  extras: Any = ()
  witnesses: tuple = ()
  explanation: Any = None

  def to_json(self) -> dict:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d["worst_instance"] = self.worst_instance.to_json() if self.worst_instance else None
    d["tests"] = list(self.tests)
    d["events"] = _asdict(self.events)
    d["extras"] = _asdict(self.extras)
    d["witnesses"] = [w._asdict() for w in self.witnesses]
    d["explanation"] = None if self.explanation is None else _asdict(self.explanation)
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
    kw["events"] = _record("Events", d.get("events") or {})
    kw["extras"] = _record("Extras", _floats(d.get("extras") or {}))
    kw["witnesses"] = tuple(WitnessResult(**_floats(w)) for w in d.get("witnesses", ()))
    kw["explanation"] = _floats(d["explanation"]) if d.get("explanation") else None
    kw.setdefault("out_of_range", 0)
    kw.setdefault("theory", "")
    kw.setdefault("statement", "")
    kw.setdefault("worst_label", "")
    return cls(**kw)

  @property
  def check_form(self):
    """The form (:mod:`icl_kd.claims.checks`) that reduced, shows and replays this row."""
    return checks.form_named(self.form)


def _load(d) -> dict:
  """A report's dict from a dict, JSON text, or the path of a JSON file."""
  if isinstance(d, dict):
    return d
  if isinstance(d, (str, os.PathLike)):
    text = str(d)
    if text.lstrip().startswith("{"):
      try:
        return json.loads(text)
      except json.JSONDecodeError as e:
        raise ValueError(f"report: the text is not valid JSON ({e})") from None
    return runtime.read_json(os.fspath(d), flag="report")
  raise TypeError(f"report must be a dict, JSON text or a path, got {type(d).__name__}")


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

  @property
  def generator(self) -> str:
    """The instance generator the report's instances were drawn with (a report written before
    generators had versions used :data:`icl_kd.generators.V1`)."""
    return self.environment.get("generator", generators.V1)

  @property
  def ok(self) -> bool:
    """True when every row whose role fails the run holds (the CLI's exit 0)."""
    return all(r.passed for r in self.claims.values())

  @property
  def attribution(self) -> dict:
    """Claim id -> the claim's explanation of its run (claims that give one)."""
    return {cid: r.explanation for cid, r in self.claims.items() if r.explanation is not None}

  def counts(self) -> dict:
    """Per role: its title and the ids under each verdict (the summary's numbers)."""
    return role_counts(list(self.claims.values()))

  def summary(self) -> str:
    """One line that separates the paper's statements, corrected ones, consistency checks,
    conjectures and measurements."""
    return summary_line(list(self.claims.values()))

  def to_json(self) -> dict:
    return runtime.jsonable(dict(
        **self.environment, seed=self.seed, dtype=self.dtype, convention=self.convention,
        instances=self.instances,
        adversarial_steps=self.adversarial_steps, chunks_loaded=self.chunks_loaded,
        chunks_computed=self.chunks_computed, passed=self.ok, summary=self.summary(),
        counts=self.counts(),
        attribution={cid: _asdict(e) for cid, e in self.attribution.items()},
        claims={cid: r.to_json() for cid, r in self.claims.items()}))

  @classmethod
  def from_json(cls, d) -> "Report":
    """The report of a dict, JSON text or a JSON file's path (what ``to_json`` wrote)."""
    d = _load(d)
    if "claims" not in d or not isinstance(d["claims"], dict):
      raise ValueError("not a proofs_check JSON report: it has no 'claims' object (write one "
                       "with python -m proofs_check --json PATH or Report.to_json())")
    own = {"seed", "dtype", "convention", "instances", "adversarial_steps", "chunks_loaded",
           "chunks_computed", "passed", "summary", "claims", "attribution", "counts"}
    return cls(claims={cid: ClaimResult.from_json(dict(e, id=cid)) for cid, e in d["claims"].items()},
               seed=int(d.get("seed", 0)), dtype=d.get("dtype", "float64"),
               convention=d.get("convention", "eq12"),
               instances=d.get("instances"), adversarial_steps=int(d.get("adversarial_steps", 0)),
               chunks_loaded=int(d.get("chunks_loaded", 0)),
               chunks_computed=int(d.get("chunks_computed", 0)),
               environment={k: v for k, v in d.items() if k not in own})


def _verdict_word(verdict: str) -> str:
  return verdict.split(" (")[0]


def role_counts(rows: list[ClaimResult]) -> dict:
  """{group: {"title": ..., "fails_run": ..., "ids": {verdict: [claim ids]}}}.

  The paper's claims (theory C1..C7) are grouped by role, in :data:`ROLES` order; a
  researcher's claims (any other theory label) by label and role after them, so that
  their verdicts are never counted as the paper's.
  """
  out = {}
  labels = [t for t in dict.fromkeys(r.theory for r in rows) if t not in THEORY_NUMBERS]
  for own in [None] + labels:
    for role in ROLES:
      mine = [r for r in rows if r.role == role.name and
              (r.theory in THEORY_NUMBERS if own is None else r.theory == own)]
      if not mine:
        continue
      by_verdict: dict[str, list[str]] = {}
      for r in mine:
        by_verdict.setdefault(_verdict_word(r.verdict), []).append(r.id)
      key = role.name if own is None else f"{own}:{role.name}"
      title = role.title if own is None else f"{own} claims, {role.own_title}"
      out[key] = dict(title=title, fails_run=role.fails_run, ids=by_verdict)
  return out


def summary_line(rows: list[ClaimResult]) -> str:
  """E.g. "statements of the paper: 6 hold; corrected statements (...): 1 holds; ..."."""
  parts = []
  for name, c in role_counts(rows).items():
    bits = []
    for verdict, ids in c["ids"].items():
      n = len(ids)
      if verdict == "holds":
        bits.append(f"{n} hold{'s' if n == 1 else ''}")
      elif verdict == "FAILS":
        bits.append(f"{n} FAIL{'S' if n == 1 else ''}: {', '.join(ids)}")
      else:
        bits.append(f"{n} {verdict}" + (f": {', '.join(ids)}" if verdict != "not violated"
                                        else ""))
    parts.append(f"{c['title']}: {', '.join(bits)}")
  oor = [r for r in rows if r.out_of_range]
  if oor:
    parts.append(f"{sum(r.out_of_range for r in oor):,} instances out of range in "
                 f"{', '.join(r.id for r in oor)}")
  vac = [r for r in rows if r.vacuous]
  if vac:
    parts.append(f"{sum(r.vacuous for r in vac):,} vacuous identity instances in "
                 f"{', '.join(r.id for r in vac)}")
  return "; ".join(parts)


def _fmt(x, spec=".2e") -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "-"
  return format(x, spec)


def worst_cell(r: ClaimResult) -> str:
  """The "worst" cell of a row, as its check's form writes it."""
  return r.check_form.cell(r.worst, r.worst_error, r.detail)


HEADERS = ("claim", "C", "kind", "n", "viol.", "oor", "worst", "slack", "verdict", "s")


def _wrap(text: str, indent: str = "") -> str:
  return textwrap.fill(text, width=120, initial_indent=indent, subsequent_indent=indent + "  ",
                       break_long_words=False, break_on_hyphens=False)


def legend() -> str:
  """How to read the table: the columns, every form's "worst" number, the roles (<= 120 columns)."""
  roles = "; ".join(f"{r.name} = {r.title}" for r in ROLES)
  lines = [
      "n: instances. viol.: instances with lhs > rhs (or error > tolerance). oor: out of "
      "range, instances whose numbers left the dtype's range: counted apart, never as "
      "violations. s: seconds (a group's shared sweep split evenly).",
      "worst, by form of check:"]
  out = [_wrap(line) for line in lines]
  out += [_wrap(line.strip(), "  ") for line in checks.legend().splitlines()]
  out += [_wrap(line) for line in [
      "verdict: '(analytic)' = decided by a closed-form instance of the claim (a witness), "
      "'(adversarial)' = by the adversarial search, whatever the random sweep found.",
      "kinds: " + ", ".join(checks.KINDS) + "; what each is evidence of: docs/THEORY.md.",
      "roles (the summary's groups): " + roles]]
  return "\n".join(out)


def format_table(rows: list[ClaimResult]) -> str:
  """The report table (at most 120 columns; every number in full is in the JSON)."""
  body = [[r.id, r.theory, checks.short_kind(r.kind), r.instances, r.violations, r.out_of_range,
           worst_cell(r), _fmt(r.min_slack, ".1e") if r.check_form.has_slack else "-",
           r.verdict.replace("(adversarial)", "(adv.)"), f"{r.seconds:.1f}"]
          for r in rows]
  return runtime.format_table(HEADERS, body, align="lllrrrlllr", max_width=120)
