"""Exact weights of the reference model in dual (representer) form.

docs/THEORY.md, "Two exact representations of W": with the softmax kernel
kappa(a, b) = exp(<a, b> / tau) and its Mercer feature map phi,

    W = exp(log_scale) * sum_i a_i phi(z_i)^T,

stored as coefficients ``a`` (n, d_v), anchors ``z`` (n, d_k), ``tau`` and a
``log_scale``. The scale is carried in log space so that 1/D' (which can be
exp(-1000)) never underflows. Everything here is exact arithmetic on that
representation, computed with all exponentials in log space.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real

from icl_kd import _checks

HIGHEST = jax.lax.Precision.HIGHEST


def log_softmax_kernel(a: Float[ArrayLike, " d_k"], b: Float[ArrayLike, " d_k"], *,
                       tau: Real[ArrayLike, ""] = 1.0) -> Float[Array, ""]:
  """log kappa(a, b) = <a, b> / tau for one pair of feature vectors (d_k,)."""
  return jnp.dot(a, b, precision=HIGHEST) / tau


def softmax_kernel(a: Float[ArrayLike, " d_k"], b: Float[ArrayLike, " d_k"], *,
                   tau: Real[ArrayLike, ""] = 1.0) -> Float[Array, ""]:
  """kappa(a, b) = exp(<a, b> / tau), the softmax kernel, for one pair."""
  return jnp.exp(log_softmax_kernel(a, b, tau=tau))


def _log_gram(za: jax.Array, zb: jax.Array, tau: jax.Array) -> jax.Array:
  """All-pairs log kappa, (n, m): a nested vmap of the one-pair kernel."""
  pair = lambda a, b: log_softmax_kernel(a, b, tau=tau)
  return jax.vmap(lambda a: jax.vmap(lambda b: pair(a, b))(zb))(za)


def _log_weighted_sum(log_w: jax.Array, values: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns (m, s) with sum_i exp(log_w_i) values_i = exp(m) * s, stably.

  ``log_w`` is (n,) and ``values`` is (n, ...). For n == 0 returns (-inf, 0).
  """
  if log_w.shape[0] == 0:
    return jnp.asarray(-jnp.inf, log_w.dtype), jnp.zeros(values.shape[1:], values.dtype)
  m = jnp.max(log_w)
  m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
  s = jnp.tensordot(jnp.exp(log_w - m_safe), values, axes=1, precision=HIGHEST)
  return m_safe, s


@dataclasses.dataclass(frozen=True)
class DualWeights:
  """W = exp(log_scale) * sum_i coeffs[i] phi(anchors[i])^T (claims C1-C5).

  Attributes:
    coeffs: (n, d_v) coefficients a_i.
    anchors: (n, d_k) anchors z_i (keys W^K x_i for the distilled weights).
    tau: scalar temperature of the kernel exp(<a, b>/tau).
    log_scale: scalar; the overall factor is exp(log_scale) (e.g. -log D').

  All operations are exact on this representation:
    W phi(z) = exp(log_scale) sum_i a_i kappa(z_i, z)              (``apply``)
    <W, V>_HS = exp(s_W + s_V) sum_ij <a_i, b_j> kappa(z_i, y_j)    (``inner``)
  and a sum of dual weights is the concatenation of their lists (``+``).

  The plain constructor does no checking, so that pytree transformations can
  rebuild batched instances; :meth:`create` validates.
  """
  coeffs: Float[Array, "n d_v"]
  anchors: Float[Array, "n d_k"]
  tau: Float[Array, ""]
  log_scale: Float[Array, ""]

  # -- construction -------------------------------------------------------
  @classmethod
  def create(cls, coeffs: Float[ArrayLike, "n d_v"], anchors: Float[ArrayLike, "n d_k"], *,
             tau: Real[ArrayLike, ""] = 1.0,
             log_scale: Real[ArrayLike, ""] = 0.0) -> "DualWeights":
    """Validating constructor: float arrays of one dtype, tau > 0."""
    coeffs = _checks.as_float_array("coeffs", coeffs, ndim=2)
    anchors = _checks.as_float_array("anchors", anchors, ndim=2)
    dtype = _checks.check_same_dtype(coeffs=coeffs, anchors=anchors)
    _checks.check_dim("anchors", anchors, 0, coeffs.shape[0], "one anchor per coefficient row")
    _checks.check_finite(coeffs=coeffs, anchors=anchors)
    tau = _checks.scalar_param("tau", tau, dtype)
    log_scale = jnp.asarray(log_scale, dtype)
    return cls(coeffs, anchors, tau, log_scale)

  @classmethod
  def zeros(cls, d_v: int, d_k: int, *, tau: Real[ArrayLike, ""] = 1.0,
            dtype=None) -> "DualWeights":
    """The zero weight (no anchors); ``dtype`` defaults to JAX's default float type."""
    dtype = _checks.resolve_dtype(dtype)
    return cls(jnp.zeros((0, d_v), dtype), jnp.zeros((0, d_k), dtype),
               jnp.asarray(tau, dtype), jnp.asarray(0.0, dtype))

  # -- shapes -------------------------------------------------------------
  @property
  def num_anchors(self) -> int:
    return self.coeffs.shape[0]

  @property
  def d_v(self) -> int:
    return self.coeffs.shape[1]

  @property
  def d_k(self) -> int:
    return self.anchors.shape[1]

  # -- evaluation ---------------------------------------------------------
  def log_kernel(self, z: Float[ArrayLike, " d_k"]) -> Float[Array, " n"]:
    """log kappa(z_i, z) for every anchor, (n,)."""
    return jnp.dot(self.anchors, z, precision=HIGHEST) / self.tau

  def apply(self, z: Float[ArrayLike, " d_k"]) -> Float[Array, " d_v"]:
    """W phi(z) = exp(log_scale) sum_i a_i kappa(z_i, z), shape (d_v,).

    ``z`` is a feature-space input of shape (d_k,) (e.g. W^Q x' or W^K x).
    Stable for kernel exponents of +-1e3: the sum is taken in log space.
    """
    z = jnp.asarray(z)
    if z.shape != (self.d_k,):
      raise ValueError(f"z must have shape ({self.d_k},) (d_k,), got {z.shape}")
    m, s = _log_weighted_sum(self.log_kernel(z) + self.log_scale, self.coeffs)
    return jnp.exp(m) * s

  def _log_inner_parts(self, other: "DualWeights") -> tuple[jax.Array, jax.Array]:
    """<W, V>_HS = exp(m) * s with s a scalar that may be negative."""
    _check_compatible(self, other)
    if self.num_anchors == 0 or other.num_anchors == 0:
      return jnp.asarray(0.0, self.coeffs.dtype), jnp.asarray(0.0, self.coeffs.dtype)
    log_k = _log_gram(self.anchors, other.anchors, self.tau)                 # (n, m)
    gram_c = jnp.dot(self.coeffs, other.coeffs.T, precision=HIGHEST)         # (n, m)
    m = jnp.max(log_k)
    s = jnp.sum(gram_c * jnp.exp(log_k - m))
    return m + self.log_scale + other.log_scale, s

  def inner(self, other: "DualWeights") -> Float[Array, ""]:
    """<W, V>_HS = exp(s_W + s_V) sum_ij <a_i, b_j> kappa(z_i, y_j)."""
    m, s = self._log_inner_parts(other)
    return jnp.exp(m) * s

  def log_hs_norm(self) -> Float[Array, ""]:
    """log ||W||_HS (-inf for the zero weight); finite where ||W|| overflows."""
    m, s = self._log_inner_parts(self)
    # s >= 0 in exact arithmetic (K is PSD); rounding can make a tiny norm negative.
    return 0.5 * m + 0.5 * jnp.log(jnp.maximum(s, 0.0))

  def hs_norm(self) -> Float[Array, ""]:
    """||W||_HS = sqrt(sum_ij <a_i, a_j> kappa(z_i, z_j)) * exp(log_scale)."""
    return jnp.exp(self.log_hs_norm())

  def to_primal(self, feature_map: Callable[[Float[Array, " d_k"]], Float[Array, " m"]]
                ) -> Float[Array, "d_v m"]:
    """Explicit (d_v, m) matrix exp(log_scale) sum_i a_i phi_m(z_i)^T.

    ``feature_map`` maps (d_k,) -> (m,), e.g. :class:`icl_kd.PositiveRandomFeatures`.
    Approximate unless phi_m is exact; used for convergence studies only.
    """
    feats = jax.vmap(feature_map)(self.anchors)                              # (n, m)
    return jnp.exp(self.log_scale) * jnp.dot(self.coeffs.T, feats, precision=HIGHEST)

  # -- algebra (exact) ----------------------------------------------------
  def rescaled(self, log_scale: Real[ArrayLike, ""]) -> "DualWeights":
    """The same W stored with another ``log_scale`` (coefficients adjusted)."""
    log_scale = jnp.asarray(log_scale, self.coeffs.dtype)
    factor = jnp.exp(self.log_scale - log_scale)
    return DualWeights(self.coeffs * factor, self.anchors, self.tau, log_scale)

  def __add__(self, other: "DualWeights") -> "DualWeights":
    if not isinstance(other, DualWeights):
      return NotImplemented
    _check_compatible(self, other)
    if other.num_anchors == 0:
      return self
    if self.num_anchors == 0:
      return other
    common = jnp.maximum(self.log_scale, other.log_scale)
    a, b = self.rescaled(common), other.rescaled(common)
    return DualWeights(jnp.concatenate([a.coeffs, b.coeffs]),
                       jnp.concatenate([a.anchors, b.anchors]), self.tau, common)

  def __neg__(self) -> "DualWeights":
    return DualWeights(-self.coeffs, self.anchors, self.tau, self.log_scale)

  def __sub__(self, other: "DualWeights") -> "DualWeights":
    if not isinstance(other, DualWeights):
      return NotImplemented
    return self + (-other)

  def __mul__(self, c: Real[ArrayLike, ""]) -> "DualWeights":
    c = jnp.asarray(c)
    if c.ndim != 0:
      raise ValueError(f"DualWeights can be scaled by a scalar only, got shape {c.shape}")
    return DualWeights(self.coeffs * c.astype(self.coeffs.dtype), self.anchors, self.tau,
                       self.log_scale)

  __rmul__ = __mul__


_checks.register_dataclass_pytree(DualWeights, data_fields=("coeffs", "anchors", "tau",
                                                            "log_scale"))


def _check_compatible(w: DualWeights, v: DualWeights) -> None:
  if w.d_v != v.d_v or w.d_k != v.d_k:
    raise ValueError(
        f"dual weights act on different spaces: (d_v, d_k) = ({w.d_v}, {w.d_k}) and "
        f"({v.d_v}, {v.d_k})")
  if _checks.is_concrete(w.tau) and _checks.is_concrete(v.tau):
    if not np.allclose(np.asarray(w.tau), np.asarray(v.tau), rtol=0, atol=0):
      raise ValueError(f"dual weights use different tau: {float(w.tau)} and {float(v.tau)}")


def aligned_difference(w: DualWeights, v: DualWeights) -> DualWeights:
  """W - V for two weights on the SAME anchors, with the coefficients subtracted.

  Concatenation (``w - v``) is exact in exact arithmetic, but the Gram form of
  its norm cancels catastrophically when W ~ V (error ~ sqrt(eps) ||W||). When
  both weights are built on the same anchors (the caller's guarantee, e.g.
  the keys of one prompt), subtracting coefficients avoids that. The anchors of
  ``w`` are used.
  """
  _check_compatible(w, v)
  if w.anchors.shape != v.anchors.shape:
    raise ValueError(f"aligned_difference needs equal anchor shapes, got {w.anchors.shape} "
                     f"and {v.anchors.shape}")
  common = jnp.maximum(w.log_scale, v.log_scale)
  a, b = w.rescaled(common), v.rescaled(common)
  return DualWeights(a.coeffs - b.coeffs, w.anchors, w.tau, common)


def relative_hs_error(w: DualWeights, v: DualWeights, *,
                      aligned: bool = False) -> Float[Array, ""]:
  """||W - V||_HS / ||V||_HS, computed in log space (0 when both are zero).

  With ``aligned=True`` the two weights must share anchors (see
  :func:`aligned_difference`); this is how exact dual identities are checked.
  """
  diff = aligned_difference(w, v) if aligned else w - v
  log_num, log_den = diff.log_hs_norm(), v.log_hs_norm()
  both_zero = jnp.isneginf(log_num) & jnp.isneginf(log_den)
  return jnp.where(both_zero, 0.0, jnp.exp(log_num - log_den))
