"""The claims layer's vocabulary: typed checks, registry entries, the identity tolerance.

A claim of docs/THEORY.md is made checkable by a :class:`Claim`: a set of
fixed shape buckets (NamedTuples), a sampler ``sample(key, bucket, dtype)``
that draws ONE instance (a dict of arrays) from the distributions the theory
names, and an evaluation that returns ONE typed check. The type of the check
is the kind of the claim (docs/THEORY.md, "Kinds of check"):

  =====================  =====================  ===================================
  check type             kind                   verdict
  =====================  =====================  ===================================
  IdentityCheck          identity               error <= tolerance on every instance
  BoundCheck             bound                  lhs <= rhs (1 + rounding) everywhere
  EventCheck             probabilistic bound    event rate not above delta (binomial)
  ConjectureCheck        conjecture             reported, never fails the run
  ConsistencyCheck       consistency            as a bound; a failure is a toolkit bug
  Measurement            measurement            reported, never fails the run
  =====================  =====================  ===================================

Two sides of a bound are carried as logarithms so that nothing overflows.
Numbers a report shows next to the verdict are named fields of ``extras``
(floats, medians reported) and ``events`` (booleans, counted): per-claim
NamedTuples, never key prefixes.

Claims of one group share a sampler, buckets and instances, and the work
they share (``prepare``) is computed once per instance.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from icl_kd import bounds

Instance = dict  # name -> array: one instance of a claim


class IdentityCheck(NamedTuple):
  """Both sides equal up to ``tolerance``: relative ``error`` in the claim's stated unit."""
  error: jax.Array
  tolerance: jax.Array
  extras: Any = ()
  events: Any = ()
  kind = "identity"


class BoundCheck(NamedTuple):
  """lhs <= rhs, as logarithms (log 0 = -inf is allowed)."""
  log_lhs: jax.Array
  log_rhs: jax.Array
  extras: Any = ()
  events: Any = ()
  kind = "bound"


class EventCheck(NamedTuple):
  """A probabilistic bound: ``violated`` is the event whose probability is at most delta."""
  log_lhs: jax.Array
  log_rhs: jax.Array
  violated: jax.Array
  extras: Any = ()
  events: Any = ()
  kind = "probabilistic bound"


class ConjectureCheck(NamedTuple):
  """A reading of the paper that may be false: lhs <= rhs is reported, never enforced."""
  log_lhs: jax.Array
  log_rhs: jax.Array
  extras: Any = ()
  events: Any = ()
  kind = "conjecture"


class ConsistencyCheck(NamedTuple):
  """lhs <= rhs by construction (Cauchy-Schwarz, softmax algebra): a failure is a bug."""
  log_lhs: jax.Array
  log_rhs: jax.Array
  extras: Any = ()
  events: Any = ()
  kind = "consistency"


class Measurement(NamedTuple):
  """A number the theory leaves open."""
  value: jax.Array
  extras: Any = ()
  events: Any = ()
  kind = "measurement"


CHECK_TYPES = (IdentityCheck, BoundCheck, EventCheck, ConjectureCheck, ConsistencyCheck,
               Measurement)
KINDS = tuple(t.kind for t in CHECK_TYPES)
RATIO_KINDS = ("bound", "probabilistic bound", "conjecture", "consistency")
THEORY_NUMBERS = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")


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


# c = 2 (the paper's Eq. 12, default) or c = 1 (C5, C6): defined once, in icl_kd.bounds.
CONVENTIONS = bounds.CONVENTIONS
convention_factor = bounds.convention_factor


def bound_slack(dtype) -> float:
  """Relative rounding allowance of a bound: lhs <= rhs (1 + slack); 1e-9 float64, 1e-4 float32."""
  return 1e-9 if jnp.dtype(dtype) == jnp.float64 else 1e-4


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
  dt = jnp.dtype(dtype)
  if dt == jnp.float64:
    base = 1e-12
  elif dt == jnp.float32:
    base = 1e-5
  else:
    raise ValueError(f"dtype must be float32 or float64, got {dt}")
  return base * jnp.maximum(1.0, jnp.asarray(max_abs_score) / 10.0)


@dataclasses.dataclass(frozen=True)
class Claim:
  """A claim of docs/THEORY.md made checkable (one registry entry).

  Attributes:
    id: the claim id (e.g. ``thm3.1``): a contract of reports and figures.
    theory: its number in docs/THEORY.md, ``C1`` .. ``C7``.
    check: the check type its evaluation returns; fixes the kind.
    statement: one line: both sides and the relation, in the notation of docs/THEORY.md.
    buckets: fixed shape configurations (NamedTuples); instances are split evenly.
    sample: ``(key, bucket, dtype) -> Instance``: one instance.
    compute: ``(instance, bucket, shared) -> check`` for one instance.
    prepare: ``(instance, bucket) -> shared``: the work every claim of the group
      uses (computed once per instance); the same function for the whole group.
    tests: the test modules (paths in the repository) that test it.
    figure: the figure id (``F1`` ..) that shows it.
    chunk: instances per compiled batch.
    default_instances: instances of the default run.
    delta: the probability of a probabilistic bound.
    project: ``(instance, bucket) -> instance`` back inside the claim's
      assumptions (for the adversarial search); None where it does not apply.
    group: claims of one group share sampler, buckets, instances and ``prepare``.
  """
  id: str
  theory: str
  check: type
  statement: str
  buckets: tuple
  sample: Callable
  compute: Callable
  prepare: Callable = lambda inst, bucket: None
  tests: tuple = ()
  figure: str = ""
  chunk: int = 8192
  default_instances: int = 100_000
  delta: float | None = None
  project: Callable | None = None
  group: str = ""

  @property
  def kind(self) -> str:
    return self.check.kind

  @property
  def group_id(self) -> str:
    return self.group or self.id

  def evaluate(self, inst: Instance, bucket) -> Any:
    """The check of one instance (computing the group's shared work)."""
    return self.compute(inst, bucket, self.prepare(inst, bucket))


def log_ratio(check) -> jax.Array:
  """log(lhs / rhs) of a ratio check (the adversarial search's objective)."""
  return check.log_lhs - check.log_rhs
