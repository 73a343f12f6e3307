"""Analytic counterexamples to the literal readings of Theorems 4.1 and 4.2, as fixed instances.

docs/THEORY.md (docs/THEORY.md) C5 reads the paper's literal Theorem 4.1,
||dW_PQ||_F <= eta M_V M_x M_phi MMD_k(P, Q), with four kernels, and C6 reads
Theorem 4.2 with M_phi in place of the query feature norm. Each instance here
is small enough to solve by hand: it carries its closed-form ratio lhs / rhs
next to the arrays, and :func:`evaluate` recomputes the ratio with the
library's own code (:func:`icl_kd.bounds.literal_readings`,
:func:`icl_kd.bounds.prediction_gap`), so anyone can replay it.

Every instance exists under both conventions (c = 2, "eq12"; c = 1, "half";
see :mod:`icl_kd.bounds`); W_0(P) = c eta E_P[W^V x phi(W^K x)^T], and all
instances use eta = 1/2, tau = 1.

| name | reading (claim) | closed-form ratio lhs / rhs |
|---|---|---|
| gaussian-point-masses | gaussian (thm4.1-literal-gaussian) | 2c / sqrt(2 - 2 e^(-1/2)) (median bandwidth 2a) |
| gaussian-point-masses-grid | gaussian (thm4.1-literal-gaussian) | 2c / sqrt(2 - 2 e^(-1/32)) (worst of the grid: h = 8) |
| softmax-null-space | softmax (thm4.1-literal-softmax) | inf (MMD = 0, dW != 0) |
| normalised-factor-two | normalised (thm4.1-literal-normalised) | c (2 under eq12: a refutation; 1 under half: tight) |
| tv-factor-two | tv (thm4.1-literal-tv) | c (2 under eq12: a refutation; 1 under half: tight) |
| query-inside-support | m-phi (thm4.2-literal) | e^(s - 1) = e^4 at s = 5, either convention |

A ratio above 1 (beyond the rounding allowance of
:func:`icl_kd.tolerances.bound_slack`) refutes the reading; a ratio of exactly 1
only shows that the bound is attained (tight): ``status`` says which.

Derivations (d = 1 unless said; P_hat = delta_a means x_p = [[a]]):

- gaussian-point-masses: W^K = 0, W^V = 1, P = delta_a, Q = delta_-a, a = 1.
  phi(W^K x) = phi(0) with ||phi(0)|| = 1, so dW = c eta (a - (-a)) phi(0)^T
  and ||dW|| = 2 c eta |a|. M_V = 1, M_x = |a|, M_phi = 1 and
  MMD_k(delta_a, delta_-a) = sqrt(2 - 2 k(a, -a)); the median heuristic of
  the pooled sample {a, -a} is h = 2|a|, so k(a, -a) = exp(-4a^2 / (2 h^2))
  = e^(-1/2). Ratio 2c / sqrt(2 - 2 k(a, -a)) >= c sqrt(2) for every
  bandwidth; at h, k = exp(-2 a^2 / h^2), so the ratio grows without bound
  with h (the grid's worst is its largest h = 8).
- softmax-null-space: d = 2, W^K = [1, 0], W^V = I, P = delta_(0,1),
  Q = delta_(0,-1). Both keys are 0, so the softmax kernel's MMD is
  sqrt(1 + 1 - 2) = 0, while dW = c eta (0, 2) phi(0)^T has norm 2 c eta.
- normalised-factor-two: W^K = W^V = 1, P = delta_1, Q = delta_(-1/2). With
  W^V = 1, k_V = k_x, so ||dW|| = c eta MMD_kx exactly while the normalised
  reading's right side is eta M_V MMD_kx: ratio c.
- tv-factor-two: the Gaussian instance's measures: ||dW|| = 2 c eta |a| and
  the right side is eta |a| ||delta_a - delta_-a||_1 = 2 eta |a|: ratio c.
- query-inside-support: W^K = W^V = 1, W^Q = s = 5 (a query map other than the
  key map), P = delta_1, Q = delta_0, query x' = 1, a point of P's support.
  dW = c eta phi(1)^T (the Q term has value 0) and z = W^Q x' = s, so
  ||dW phi(z)|| = c eta kappa(1, s) = c eta e^s; MMD_kx^2 = k_x(1, 1) = e and
  M_phi = sup over the supports of ||phi(W^K x)|| = e^(1/2), so the literal
  right side is c eta e and the ratio is e^(s - 1). M_phi bounds the key
  features phi(W^K x) on the support, not the query feature phi(W^Q x'), even
  for a query inside the support: that is what the literal form misses. The
  bound thm4.2-mmd (c eta e^(1/2) e^(s^2/2)) holds.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from icl_kd import bounds, tolerances
from icl_kd.attention import AttentionParams

ETA = 0.5
TAU = 1.0
NAMES = ("gaussian-point-masses", "gaussian-point-masses-grid", "softmax-null-space",
         "normalised-factor-two", "tv-factor-two", "query-inside-support")
M_PHI_READING = "m-phi"
"""The reading of Theorem 4.2's literal form (M_phi in place of ||phi(W^Q x')||)."""
READING_OF = {"gaussian-point-masses": "gaussian", "gaussian-point-masses-grid": "gaussian",
              "softmax-null-space": "softmax", "normalised-factor-two": "normalised",
              "tv-factor-two": "tv", "query-inside-support": M_PHI_READING}
"""Name -> the reading it tests (known without building any array)."""
FORMULAS = {
    "gaussian-point-masses": "2c / sqrt(2 - 2 exp(-1/2))",
    "gaussian-point-masses-grid": "2c / sqrt(2 - 2 exp(-2 a^2 / h^2)), a = 1, h = 8",
    "softmax-null-space": "inf (MMD_kappa = 0, ||dW|| = 2 c eta)",
    "normalised-factor-two": "c (k_V = k_x, M_V = 1)",
    "tv-factor-two": "c (||dW|| = 2 c eta a, rhs = 2 eta a)",
    "query-inside-support": "e^(s - 1), W^Q = s = 5, W^K = 1, query 1 in P's support",
}
"""Name -> its closed-form ratio, in words."""


class Counterexample(NamedTuple):
  """One fixed instance with its closed-form ratio lhs / rhs.

  Attributes:
    name: one of :data:`NAMES`.
    reading: the reading it tests: a key of :data:`icl_kd.bounds.READINGS` (Theorem 4.1's
      literal form under that kernel) or :data:`M_PHI_READING` (Theorem 4.2's).
    convention: "eq12" (c = 2) or "half" (c = 1).
    params: AttentionParams (W^Q, W^K, W^V).
    x_p: (n, d) the atoms of P (P is their empirical measure); x_q: (m, d) those of Q.
    query: (d,) the query token x' (``thm4.2-literal``), else None.
    eta: the learning rate; tau: the temperature.
    bandwidths: (G,) Gaussian bandwidths whose worst case is read, or None for the
      median heuristic (Gaussian reading only).
    closed_form_ratio: lhs / rhs by hand (inf when rhs = 0 < lhs); > 1 is a violation.
    formula: the closed form, in words.
  """
  name: str
  reading: str
  convention: str
  params: AttentionParams
  x_p: jax.Array
  x_q: jax.Array
  query: jax.Array | None
  eta: float
  tau: float
  bandwidths: jax.Array | None
  closed_form_ratio: float
  formula: str

  def computed_ratio(self) -> float:
    """lhs / rhs recomputed with the library (:func:`evaluate`)."""
    return evaluate(self).computed_ratio


class CounterexampleCheck(NamedTuple):
  """Result of :func:`evaluate`: the computed ratio next to the closed form.

  Attributes:
    name, reading, convention: those of the instance.
    log_lhs, log_rhs: the library's two sides (logs).
    computed_ratio: exp(log_lhs - log_rhs) (inf when rhs = 0).
    closed_form_ratio: the instance's hand value.
    agrees: both infinite, or |computed - closed| <= slack * closed
      (:func:`icl_kd.tolerances.ratios_agree`).
    status: "refutes" (ratio > 1 beyond rounding), "tight" (ratio 1: the bound is
      attained, not refuted) or "holds" (:func:`icl_kd.tolerances.ratio_status`).
  """
  name: str
  reading: str
  convention: str
  log_lhs: float
  log_rhs: float
  computed_ratio: float
  closed_form_ratio: float
  agrees: bool
  status: str


def _arr(values, dtype):
  return jnp.asarray(values, dtype)


def _build(name: str, convention: str, dtype) -> Counterexample:
  c = bounds.convention_factor(convention)
  one = _arr([[1.0]], dtype)
  zero = _arr([[0.0]], dtype)
  common = dict(name=name, convention=convention, eta=ETA, tau=TAU, query=None, bandwidths=None,
                reading=READING_OF[name], formula=FORMULAS[name])
  if name in ("gaussian-point-masses", "gaussian-point-masses-grid", "tv-factor-two"):
    a = 1.0
    params = AttentionParams(zero, zero, one)
    xs = dict(x_p=_arr([[a]], dtype), x_q=_arr([[-a]], dtype))
    if name == "gaussian-point-masses":
      h = 2.0 * a                                           # median of the one pair distance
      k = math.exp(-(2.0 * a) ** 2 / (2.0 * h * h))        # = e^(-1/2)
      return Counterexample(params=params, **xs,
                            closed_form_ratio=2.0 * c / math.sqrt(2.0 - 2.0 * k), **common)
    if name == "gaussian-point-masses-grid":
      h = max(bounds.DEFAULT_BANDWIDTHS)
      k = math.exp(-2.0 * a * a / (h * h))                  # = e^(-1/32)
      return Counterexample(params=params, **xs,
                            closed_form_ratio=2.0 * c / math.sqrt(2.0 - 2.0 * k),
                            **{**common, "bandwidths": _arr(bounds.DEFAULT_BANDWIDTHS, dtype)})
    return Counterexample(params=params, **xs, closed_form_ratio=c, **common)
  if name == "softmax-null-space":
    w_k = _arr([[1.0, 0.0]], dtype)
    params = AttentionParams(w_k, w_k, jnp.eye(2, dtype=dtype))
    return Counterexample(params=params, x_p=_arr([[0.0, 1.0]], dtype),
                          x_q=_arr([[0.0, -1.0]], dtype), closed_form_ratio=math.inf, **common)
  if name == "normalised-factor-two":
    params = AttentionParams(one, one, one)
    return Counterexample(params=params, x_p=_arr([[1.0]], dtype), x_q=_arr([[-0.5]], dtype),
                          closed_form_ratio=c, **common)
  if name == "query-inside-support":
    s = 5.0
    params = AttentionParams(_arr([[s]], dtype), one, one)                 # W^Q = s, W^K = 1
    return Counterexample(params=params, x_p=_arr([[1.0]], dtype), x_q=_arr([[0.0]], dtype),
                          closed_form_ratio=math.exp(s - 1.0),
                          **{**common, "query": _arr([1.0], dtype)})
  raise ValueError(f"name must be one of {NAMES}, got {name!r}")


def counterexample(name: str, *, convention: str = "eq12", dtype=None) -> Counterexample:
  """The named instance under one convention.

  Args:
    name: one of :data:`NAMES`.
    convention: "eq12" (c = 2, default) or "half" (c = 1).
    dtype: float dtype of the arrays; default that of a new JAX float array
      (float64 with x64 enabled).
  """
  bounds.convention_factor(convention)
  if not isinstance(name, str) or name not in NAMES:
    raise ValueError(f"name must be one of {NAMES}, got {name!r}")
  return _build(name, convention, jnp.result_type(float) if dtype is None else dtype)


def counterexamples(*, convention: str | None = None, dtype=None) -> tuple[Counterexample, ...]:
  """Every instance of :data:`NAMES`, under both conventions (or only ``convention``)."""
  conventions = bounds.CONVENTIONS if convention is None else (convention,)
  return tuple(counterexample(name, convention=conv, dtype=dtype)
               for name in NAMES for conv in conventions)


def sides(ce: Counterexample) -> tuple[jax.Array, jax.Array]:
  """(log lhs, log rhs) of the instance's reading, computed by :mod:`icl_kd.bounds`.

  Compiled once per instance shape (``jax.jit``): evaluated op by op, the
  readings cost ~1.5 s per instance in dispatch alone.
  """
  return _sides(ce.reading, ce.convention, ce.params, ce.x_p, ce.x_q, ce.query, ce.eta, ce.tau,
                ce.bandwidths)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _sides(reading, convention, params, x_p, x_q, query, eta, tau, bandwidths):
  if reading == M_PHI_READING:
    g = bounds.prediction_gap(params, x_p, x_q, query, eta=eta, tau=tau, convention=convention)
    return g.log_lhs, g.log_literal_rhs
  r = bounds.literal_readings(params, x_p, x_q, eta=eta, tau=tau, convention=convention,
                              bandwidths=bandwidths)
  if reading == "gaussian" and bandwidths is not None:
    reading = "gaussian-grid"
  return r.log_lhs, getattr(r, bounds.READINGS[reading])


def evaluate(ce: Counterexample) -> CounterexampleCheck:
  """Recomputes the instance's ratio with the library and compares it with the closed form."""
  log_lhs, log_rhs = (float(v) for v in sides(ce))
  computed = math.exp(log_lhs - log_rhs) if log_rhs > -math.inf else math.inf
  closed = ce.closed_form_ratio
  dtype = ce.x_p.dtype
  log_ratio = math.inf if log_rhs == -math.inf else log_lhs - log_rhs
  return CounterexampleCheck(ce.name, ce.reading, ce.convention, log_lhs, log_rhs, computed,
                             closed, tolerances.ratios_agree(computed, closed, dtype),
                             tolerances.ratio_status(log_ratio, dtype))


def evaluate_all(*, dtype=None) -> tuple[CounterexampleCheck, ...]:
  """:func:`evaluate` on every instance under both conventions."""
  return tuple(evaluate(ce) for ce in counterexamples(dtype=dtype))
