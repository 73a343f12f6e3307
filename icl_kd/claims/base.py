"""The claims layer's vocabulary: a :class:`Claim`, its registry entry, and :func:`define`.

A claim of docs/THEORY.md, or a researcher's own, is made checkable by a
:class:`Claim`: a set of fixed shape buckets (hashable NamedTuples), a sampler
``sample(key, bucket, dtype)`` that draws ONE instance (a dict of arrays), and
an evaluation that returns ONE typed check (:mod:`icl_kd.claims.checks`). The
type of the check is the claim's kind: it is derived from what the evaluation
returns, never declared twice.

Numbers a report shows next to the verdict are named fields of the check's
``extras`` (floats, medians reported) and ``events`` (booleans, counted):
per-claim NamedTuples that reach the report as NamedTuples.

A claim may also carry

- ``witnesses``: fixed instances with a closed-form ratio
  (:class:`icl_kd.claims.checks.Witness`), evaluated by the claim's own
  evaluation in every run: a witness above 1 refutes the claim whatever the
  random sweep finds, one at 1 shows the bound tight;
- ``explain``: a hook ``explain(outcome) -> NamedTuple`` with a ``text()``
  method, the claim's own reading of its run (e.g. which factor a literal
  reading's violations are due to), reported beside the verdict;
- ``project``: ``(instance, bucket) -> instance`` back inside the claim's
  assumptions, for the adversarial search.

Claims of one group share a sampler, buckets and instances, and the work
they share (``prepare``) is computed once per instance. A researcher's claim is
made with :func:`define` and run by the same runner
(``proofs_check.check([claim])``, ``python -m proofs_check --claims-from MODULE``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax

from icl_kd import bounds
from icl_kd.claims.checks import EventForm, Stats, Witness, WitnessResult, check_type_of

Instance = dict  # name -> array: one instance of a claim

# c = 2 (the paper's Eq. 12, default) or c = 1 (C5, C6): defined once, in icl_kd.bounds.
CONVENTIONS = bounds.CONVENTIONS
convention_factor = bounds.convention_factor
THEORY_NUMBERS = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")


class Outcome(NamedTuple):
  """What a claim's ``explain`` hook sees of one run of it.

  Attributes:
    stats: the merged statistics of the sweep (counts of ``extras``/``events`` by field).
    convention: the run's convention of C5/C6 ("eq12" or "half").
    worst: the evaluated check at the worst instance (its type, host numbers), or None.
    adversarial_log_ratio: the adversarial search's largest log(lhs/rhs), or None.
    witnesses: the claim's witnesses, evaluated (:class:`WitnessResult`).
  """
  stats: Stats
  convention: str
  worst: Any
  adversarial_log_ratio: float | None
  witnesses: tuple[WitnessResult, ...]


def _no_shared(inst, bucket):
  del inst, bucket


@dataclasses.dataclass(frozen=True)
class Claim:
  """A checkable claim (one registry entry).

  Attributes:
    id: the claim id (e.g. ``thm3.1``): a contract of reports and figures.
    theory: its number in docs/THEORY.md, ``C1`` .. ``C7`` (``user`` for a researcher's).
    statement: one line: both sides and the relation.
    buckets: fixed shape configurations (hashable NamedTuples); instances are split evenly.
    sample: ``(key, bucket, dtype) -> Instance``: one instance.
    compute: ``(instance, bucket, shared) -> check`` for one instance.
    prepare: ``(instance, bucket) -> shared``: the work every claim of the group
      uses (computed once per instance); the same function for the whole group.
    tests: the test modules (paths in the repository) that test it.
    figure: the figure id (``F1`` ..) that shows it.
    chunk: instances per compiled batch.
    default_instances: instances of the default run.
    delta: the probability of an event-form check.
    project: ``(instance, bucket) -> instance`` back inside the claim's
      assumptions (for the adversarial search); None where it does not apply.
    group: claims of one group share sampler, buckets, instances and ``prepare``.
    reading: the reading of the paper's statement the claim checks (a key of
      :data:`icl_kd.bounds.READINGS` for the literal Theorem 4.1), or "".
    witnesses: fixed instances with closed-form ratios (evaluated in every run).
    explain: ``(Outcome) -> NamedTuple`` with ``text()``, or None.
  """
  id: str
  theory: str
  statement: str
  buckets: tuple
  sample: Callable
  compute: Callable
  prepare: Callable = _no_shared
  tests: tuple = ()
  figure: str = ""
  chunk: int = 8192
  default_instances: int = 100_000
  delta: float | None = None
  project: Callable | None = None
  group: str = ""
  reading: str = ""
  witnesses: tuple = ()
  explain: Callable | None = None

  @property
  def group_id(self) -> str:
    return self.group or self.id

  def evaluate(self, inst: Instance, bucket) -> Any:
    """The check of one instance (computing the group's shared work)."""
    return self.compute(inst, bucket, self.prepare(inst, bucket))

  @property
  def check_type(self) -> type:
    """The check type its evaluation returns (traced once, with abstract arrays)."""
    return _check_type(self.sample, self.compute, self.prepare, self.buckets[0], self.id,
                       self.delta)

  @property
  def kind(self) -> str:
    """The kind label of its check type (``identity``, ``bound``, ..., ``measurement``)."""
    return self.check_type.kind

  @property
  def role(self):
    """What a verdict on it is evidence of (:data:`icl_kd.claims.checks.ROLES`)."""
    return self.check_type.role

  @property
  def output(self) -> Any:
    """The abstract check (shapes and dtypes) its evaluation returns for the first bucket."""
    return _output(self.sample, self.compute, self.prepare, self.buckets[0], self.id)


@functools.lru_cache(maxsize=None)
def _output(sample, compute, prepare, bucket, cid: str):
  key = jax.eval_shape(lambda: jax.random.key(0))

  def one(k):
    inst = sample(k, bucket, jax.numpy.float32)
    return compute(inst, bucket, prepare(inst, bucket))
  try:
    return jax.eval_shape(one, key)
  except (TypeError, ValueError) as e:  # a sampler or evaluation that fails to trace
    raise type(e)(f"claim {cid!r}: evaluating one instance of bucket {bucket} failed: {e}") \
        from e


@functools.lru_cache(maxsize=None)
def _check_type(sample, compute, prepare, bucket, cid: str, delta):
  out = _output(sample, compute, prepare, bucket, cid)
  try:
    t = check_type_of(out)
  except TypeError as e:
    raise TypeError(f"claim {cid!r}: {e}") from None
  if t.form is EventForm and delta is None:
    raise ValueError(f"claim {cid!r} returns {t.__name__}, whose verdict tests an event rate "
                     f"against delta: give the claim delta= (a probability in (0, 1)), got None")
  return t


def _check_bucket(cid: str, b) -> None:
  if not (isinstance(b, tuple) and hasattr(b, "_fields")):
    raise TypeError(f"claim {cid!r}: every bucket must be a NamedTuple (its fields are the "
                    f"static shapes), got {type(b).__name__}: {b!r}")
  try:
    hash(b)
  except TypeError:
    raise TypeError(f"claim {cid!r}: every bucket must be hashable (it is a static argument "
                    f"under jit), got {b!r}") from None


def define(id: str, *, statement: str, sample: Callable, evaluate: Callable, buckets,
           theory: str = "user", tests=(), figure: str | None = None,
           instances: int = 100_000, chunk: int = 8192, delta: float | None = None,
           project: Callable | None = None, witnesses=(), explain: Callable | None = None,
           reading: str = "") -> Claim:
  """A claim of your own, checked by the same runner as the paper's.

  Args:
    id: a unique claim id (no commas or spaces: ``--claims`` splits on commas).
    statement: one line: both sides and the relation.
    sample: ``sample(key, bucket, dtype) -> dict`` of arrays: one instance.
    evaluate: ``evaluate(instance, bucket)`` returning one of the check types
      (:data:`icl_kd.claims.CHECK_TYPES`); the kind follows from its type.
    buckets: a non-empty tuple of hashable NamedTuples (the static shapes).
    theory: a label ``--claims`` selects by (default "user").
    tests: test modules that test it; figure: a figure id, if any.
    instances: instances of a default run; chunk: instances per compiled batch.
    delta: the probability of an event-form check (EventCheck, ConjectureEventCheck).
    project: ``(instance, bucket) -> instance`` back inside the assumptions; with
      it, ``--adversarial`` searches this claim too.
    witnesses: fixed instances with closed forms (:class:`Witness`).
    explain: ``(Outcome) -> NamedTuple`` with ``text()``: your reading of a run.
    reading: the reading of a statement it checks, if any.
  Returns:
    A :class:`Claim`. Shapes and the check type are checked when the runner first
    evaluates it (a clear error names the claim and what is wrong).
  """
  if not isinstance(id, str) or not id or any(ch in id for ch in ", \t\n"):
    raise ValueError(f"id must be a non-empty str without commas or spaces, got {id!r}")
  if not isinstance(statement, str):
    raise TypeError(f"claim {id!r}: statement must be a str, got {type(statement).__name__}")
  for name, f in (("sample", sample), ("evaluate", evaluate)):
    if not callable(f):
      raise TypeError(f"claim {id!r}: {name} must be callable, got {type(f).__name__}")
  for name, f in (("project", project), ("explain", explain)):
    if f is not None and not callable(f):
      raise TypeError(f"claim {id!r}: {name} must be callable or None, got {type(f).__name__}")
  if not isinstance(buckets, tuple) or not buckets:
    raise TypeError(f"claim {id!r}: buckets must be a non-empty tuple of NamedTuples, got "
                    f"{buckets!r}")
  for b in buckets:
    _check_bucket(id, b)
  if not isinstance(theory, str) or not theory:
    raise ValueError(f"claim {id!r}: theory must be a non-empty str, got {theory!r}")
  for name, v in (("instances", instances), ("chunk", chunk)):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise ValueError(f"claim {id!r}: {name} must be an int >= 1, got {v!r}")
  if delta is not None and not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
    raise ValueError(f"claim {id!r}: delta must be a probability in (0, 1) or None, got "
                     f"{delta!r}")
  witnesses = tuple(witnesses)
  for w in witnesses:
    if not isinstance(w, Witness):
      raise TypeError(f"claim {id!r}: witnesses must be icl_kd.claims.Witness, got "
                      f"{type(w).__name__}")
    if not 0 <= w.bucket < len(buckets):
      raise ValueError(f"claim {id!r}: witness {w.name!r} names bucket {w.bucket}, but the "
                       f"claim has {len(buckets)}")

  def compute(inst, bucket, shared):
    del shared
    return evaluate(inst, bucket)
  compute.__name__ = getattr(evaluate, "__name__", "evaluate")
  compute.__doc__ = getattr(evaluate, "__doc__", None)
  return Claim(id=id, theory=theory, statement=statement, buckets=buckets, sample=sample,
               compute=compute, tests=tuple(tests), figure=figure or "", chunk=chunk,
               default_instances=instances, delta=None if delta is None else float(delta),
               project=project, witnesses=witnesses, explain=explain, reading=reading)
