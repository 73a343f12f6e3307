"""Synthetic distributions with bounded support, for the bound checks (claims C4-C6).

C4 assumes bounded inputs (so ||phi(W^K x)|| <= C and ||W^V x|| <= D_T); C5
and C6 compare a prompt distribution P with a target Q. The families here have
bounded support and an affine knob,

    x = shift + scale * R u,    u ~ base,   R orthogonal (d, d),

so the MMD between a distribution and its transformed copy can be swept from
0 upward (shift 0, scale 1, R = I give P = Q). Each distribution is a pytree
with ``sample(n, *, key) -> (n, d)`` and ``support_radius()``, a bound on
||x|| over the whole support (not a sample maximum), from which the constants
of C4 follow: ||W^K x|| <= ||W^K||_op * support_radius.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from icl_kd import _checks, generators
from icl_kd.dual import HIGHEST
from icl_kd.mmd import _check_finite


def _check_n(n) -> int:
  if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
    raise ValueError(f"n must be a non-negative int (the number of samples), got {n!r}")
  return int(n)


def _affine(shift, scale, rotation, d: int, dtype):
  """Validates the knobs; defaults: shift 0, scale 1, rotation I."""
  shift = jnp.zeros((d,), dtype) if shift is None else _checks.as_float_array(
      "shift", jnp.asarray(shift, dtype), ndim=1)
  if shift.shape != (d,):
    raise ValueError(f"shift must have shape ({d},) (d,), got {shift.shape}")
  scale = _checks.scalar_param("scale", scale, dtype)
  if rotation is None:
    rotation = jnp.eye(d, dtype=dtype)
  else:
    rotation = _checks.as_float_array("rotation", jnp.asarray(rotation, dtype), ndim=2)
    if rotation.shape != (d, d):
      raise ValueError(f"rotation must have shape ({d}, {d}) (d, d), got {rotation.shape}")
    if _checks.is_concrete(rotation):
      r = np.asarray(rotation, np.float64)
      err = float(np.max(np.abs(r.T @ r - np.eye(d)))) if d else 0.0
      tol = 1e-5 if rotation.dtype == jnp.float32 else 1e-10
      if not err <= tol:
        raise ValueError(f"rotation must be orthogonal (R^T R = I); max |R^T R - I| = {err:.3g}")
  _check_finite(shift=shift, rotation=rotation)
  return shift, scale, rotation


def _transform(u: jax.Array, shift, scale, rotation) -> jax.Array:
  """x = shift + scale * R u for each row u of (n, d)."""
  return shift[None, :] + scale * jnp.dot(u, rotation.T, precision=HIGHEST)


@dataclasses.dataclass(frozen=True)
class UniformBall:
  """Uniform distribution on the ball {|u| <= radius}, then x = shift + scale * R u.

  Attributes: radius (scalar), shift (d,), scale (scalar), rotation (d, d).
  """
  radius: Float[Array, ""]
  shift: Float[Array, " d"]
  scale: Float[Array, ""]
  rotation: Float[Array, "d d"]

  @property
  def d(self) -> int:
    return self.shift.shape[0]

  def sample(self, n: int, *, key: PRNGKeyArray) -> Float[Array, "n d"]:
    """n points, (n, d): direction uniform on the sphere, radius * U^(1/d) along it."""
    n = _check_n(n)
    _checks.check_key(key)
    k_dir, k_rad = jax.random.split(key)
    dtype = self.shift.dtype
    g = generators.normal(k_dir, (n, self.d), dtype)                        # (n, d)
    norms = jnp.linalg.norm(g, axis=1)                                      # (n,)
    direction = g / jnp.maximum(norms, jnp.finfo(dtype).tiny)[:, None]      # (n, d)
    r = self.radius * generators.uniform(k_rad, (n,), dtype) ** (1.0 / self.d)  # (n,)
    return _transform(direction * r[:, None], self.shift, self.scale, self.rotation)

  def support_radius(self) -> Float[Array, ""]:
    """sup ||x|| = ||shift|| + scale * radius (attained)."""
    return jnp.linalg.norm(self.shift) + self.scale * self.radius

  def transformed(self, *, shift: Float[ArrayLike, " d"] | None = None,
                  scale: Real[ArrayLike, ""] | None = None,
                  rotation: Float[ArrayLike, "d d"] | None = None) -> "UniformBall":
    """The same base distribution with new knobs (unspecified knobs keep their value)."""
    return uniform_ball(self.d, radius=self.radius,
                        shift=self.shift if shift is None else shift,
                        scale=self.scale if scale is None else scale,
                        rotation=self.rotation if rotation is None else rotation,
                        dtype=self.shift.dtype)


@dataclasses.dataclass(frozen=True)
class TruncatedGaussianMixture:
  """Mixture of Gaussians truncated per coordinate, then x = shift + scale * R u.

      u = mu_c + std * e,  c ~ Categorical(weights),  e_i ~ N(0, 1) truncated to [-t, t]

  Attributes: means (k, d), log_weights (k,), std, truncation t (scalar, in units of
  std), shift (d,), scale, rotation (d, d).
  """
  means: Float[Array, "k d"]
  log_weights: Float[Array, " k"]
  std: Float[Array, ""]
  truncation: Float[Array, ""]
  shift: Float[Array, " d"]
  scale: Float[Array, ""]
  rotation: Float[Array, "d d"]

  @property
  def d(self) -> int:
    return self.shift.shape[0]

  def sample(self, n: int, *, key: PRNGKeyArray) -> Float[Array, "n d"]:
    """n points, (n, d); components and truncated normals drawn exactly (no rejection)."""
    n = _check_n(n)
    _checks.check_key(key)
    k_comp, k_noise = jax.random.split(key)
    dtype = self.shift.dtype
    comp = jax.random.categorical(k_comp, self.log_weights, shape=(n,))     # (n,)
    t = jnp.asarray(self.truncation, dtype)
    e = jax.random.truncated_normal(k_noise, -t, t, (n, self.d), dtype)     # (n, d)
    u = self.means[comp] + self.std * e                                     # (n, d)
    return _transform(u, self.shift, self.scale, self.rotation)

  def support_radius(self) -> Float[Array, ""]:
    """A bound on ||x||: ||shift|| + scale * (max_c ||mu_c|| + std * t * sqrt(d))."""
    mu = jnp.max(jnp.linalg.norm(self.means, axis=1))
    return (jnp.linalg.norm(self.shift)
            + self.scale * (mu + self.std * self.truncation * jnp.sqrt(self.d * 1.0)))

  def transformed(self, *, shift: Float[ArrayLike, " d"] | None = None,
                  scale: Real[ArrayLike, ""] | None = None,
                  rotation: Float[ArrayLike, "d d"] | None = None) -> "TruncatedGaussianMixture":
    """The same base mixture with new knobs (unspecified knobs keep their value)."""
    shift = self.shift if shift is None else shift
    scale = self.scale if scale is None else scale
    rotation = self.rotation if rotation is None else rotation
    shift, scale, rotation = _affine(shift, scale, rotation, self.d, self.shift.dtype)
    return dataclasses.replace(self, shift=shift, scale=scale, rotation=rotation)


_checks.register_dataclass_pytree(UniformBall, data_fields=("radius", "shift", "scale",
                                                            "rotation"))
_checks.register_dataclass_pytree(
    TruncatedGaussianMixture,
    data_fields=("means", "log_weights", "std", "truncation", "shift", "scale", "rotation"))


def uniform_ball(d: int, *, radius: Real[ArrayLike, ""] = 1.0,
                 shift: Float[ArrayLike, " d"] | None = None, scale: Real[ArrayLike, ""] = 1.0,
                 rotation: Float[ArrayLike, "d d"] | None = None, dtype=None) -> UniformBall:
  """Uniform distribution on a ball of ``radius`` in R^d, with the affine knobs.

  Args:
    d: dimension >= 1.
    radius: > 0.
    shift: (d,) translation (default 0).
    scale: > 0 dilation.
    rotation: (d, d) orthogonal matrix (default I); see :func:`givens_rotation`.
    dtype: float32 or float64 (default: JAX's default float type, float64
      under x64).
  """
  if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1:
    raise ValueError(f"d must be a positive int, got {d!r}")
  dtype = _checks.resolve_dtype(dtype)
  radius = _checks.scalar_param("radius", radius, dtype)
  shift, scale, rotation = _affine(shift, scale, rotation, int(d), dtype)
  return UniformBall(radius, shift, scale, rotation)


def truncated_gaussian_mixture(means: Float[ArrayLike, "k d"], *,
                               weights: Real[ArrayLike, " k"] | None = None,
                               std: Real[ArrayLike, ""] = 1.0,
                               truncation: Real[ArrayLike, ""] = 2.0,
                               shift: Float[ArrayLike, " d"] | None = None,
                               scale: Real[ArrayLike, ""] = 1.0,
                               rotation: Float[ArrayLike, "d d"] | None = None
                               ) -> TruncatedGaussianMixture:
  """Mixture of per-coordinate truncated Gaussians N(mu_c, std^2 I) restricted to a box.

  Args:
    means: (k, d) component means, k >= 1 (their dtype is the distribution's).
    weights: (k,) non-negative mixture weights with a positive sum (normalised);
      default uniform.
    std: > 0 component standard deviation.
    truncation: t > 0; each coordinate of the noise lies in [-t std, t std].
    shift: (d,) translation (default 0); see :func:`uniform_ball`.
    scale: > 0 dilation.
    rotation: (d, d) orthogonal matrix (default I).
  """
  means = _checks.as_float_array("means", means, ndim=2)
  k, d = means.shape
  if k < 1 or d < 1:
    raise ValueError(f"means must have shape (k, d) with k, d >= 1, got {means.shape}")
  dtype = means.dtype
  _check_finite(means=means)
  if weights is None:
    log_weights = jnp.full((k,), -np.log(k), dtype)
  else:
    weights = _checks.as_float_array("weights", jnp.asarray(weights, dtype), ndim=1)
    if weights.shape != (k,):
      raise ValueError(f"weights must have shape ({k},) (one per mean), got {weights.shape}")
    if _checks.is_concrete(weights):
      w = np.asarray(weights)
      if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w}")
    log_weights = jnp.log(weights) - jnp.log(jnp.sum(weights))
  std = _checks.scalar_param("std", std, dtype)
  truncation = _checks.scalar_param("truncation", truncation, dtype)
  shift, scale, rotation = _affine(shift, scale, rotation, d, dtype)
  return TruncatedGaussianMixture(means, log_weights, std, truncation, shift, scale, rotation)


def givens_rotation(d: int, angle: Real[ArrayLike, ""], *, i: int = 0, j: int = 1,
                    dtype=None) -> Float[Array, "d d"]:
  """The (d, d) rotation by ``angle`` (radians) in the (e_i, e_j) plane; a rotation knob."""
  if not isinstance(d, (int, np.integer)) or d < 2:
    raise ValueError(f"a plane rotation needs d >= 2, got d={d!r}")
  if not (0 <= i < d and 0 <= j < d and i != j):
    raise ValueError(f"i and j must be distinct axes in [0, {d}), got i={i}, j={j}")
  dtype = _checks.resolve_dtype(dtype)
  angle = _checks.scalar_param("angle", angle, dtype, positive=False)
  c, s = jnp.cos(angle), jnp.sin(angle)
  r = jnp.eye(d, dtype=dtype)
  r = r.at[i, i].set(c).at[j, j].set(c).at[i, j].set(-s).at[j, i].set(s)
  return r


def random_rotation(d: int, *, key: PRNGKeyArray, dtype=None) -> Float[Array, "d d"]:
  """A Haar-distributed orthogonal (d, d) matrix (QR of a Gaussian matrix, signs fixed).

  Mezzadri (2007), "How to generate random matrices from the classical compact groups".
  """
  if not isinstance(d, (int, np.integer)) or d < 1:
    raise ValueError(f"d must be a positive int, got {d!r}")
  _checks.check_key(key)
  dtype = _checks.resolve_dtype(dtype)
  g = jax.random.normal(key, (d, d), dtype)
  q, r = jnp.linalg.qr(g)
  signs = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(dtype)          # (d,)
  return q * signs[None, :]


def axis_shift(d: int, magnitude: Real[ArrayLike, ""], *, axis: int = 0,
               dtype=None) -> Float[Array, " d"]:
  """The shift vector magnitude * e_axis, (d,): a one-number MMD knob."""
  if not isinstance(d, (int, np.integer)) or d < 1:
    raise ValueError(f"d must be a positive int, got {d!r}")
  if not 0 <= axis < d:
    raise ValueError(f"axis must lie in [0, {d}), got {axis}")
  dtype = _checks.resolve_dtype(dtype)
  magnitude = _checks.scalar_param("magnitude", magnitude, dtype, positive=False)
  return jnp.zeros((d,), dtype).at[axis].set(magnitude)
