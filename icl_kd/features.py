"""Explicit finite feature maps phi_m approximating the softmax kernel.

docs/THEORY.md, "Primal (approximate)". Both maps use the kernel's tau convention,
<phi_m(a), phi_m(b)> ~ kappa(a, b) = exp(<a, b> / tau):

- positive random features (Choromanski et al., 2021, "Rethinking attention
  with Performers"): phi(z) = exp(w_r . z / sqrt(tau) - |z|^2 / (2 tau)) / sqrt(m),
  w_r ~ N(0, I), optionally orthogonal in blocks; unbiased, error ~ 1/sqrt(m).
- Taylor features: concatenation over n = 0..p of (z / sqrt(tau))^{(x)n} / sqrt(n!);
  exact up to the tail of exp, of dimension sum_n d_k^n.

Primal weights are for convergence studies and autodiff/optax cross-checks
(claim ``kd-step``), never the reference of an exact claim.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from icl_kd import _checks
from icl_kd.dual import HIGHEST


def _check_z(z, d_k: int) -> jax.Array:
  z = jnp.asarray(z)
  if z.shape != (d_k,):
    raise ValueError(f"z must have shape ({d_k},) (d_k,), got {z.shape}")
  return z


@dataclasses.dataclass(frozen=True)
class PositiveRandomFeatures:
  """phi(z)_r = exp(w_r . z / sqrt(tau) - |z|^2 / (2 tau)) / sqrt(m); a pytree.

  Attributes:
    omega: (m, d_k) projection rows w_r.
    tau: kernel temperature.
  """
  omega: Float[ArrayLike, "m d_k"]
  tau: Real[ArrayLike, ""]

  @property
  def num_features(self) -> int:
    return self.omega.shape[0]

  def log_features(self, z: Float[ArrayLike, " d_k"]) -> Float[Array, " m"]:
    """log phi(z), (m,); finite where phi(z) over/underflows."""
    z = _check_z(z, self.omega.shape[1])
    proj = jnp.dot(self.omega, z, precision=HIGHEST) / jnp.sqrt(self.tau)   # (m,)
    return proj - jnp.sum(z * z) / (2 * self.tau) - 0.5 * jnp.log(self.num_features * 1.0)

  def __call__(self, z: Float[ArrayLike, " d_k"]) -> Float[Array, " m"]:
    """phi(z), (m,)."""
    return jnp.exp(self.log_features(z))


_checks.register_dataclass_pytree(PositiveRandomFeatures, data_fields=("omega", "tau"))


def positive_random_features(d_k: int, num_features: int, *, key: PRNGKeyArray,
                             tau: Real[ArrayLike, ""] = 1.0, orthogonal: bool = False,
                             dtype=None) -> PositiveRandomFeatures:
  """Draws positive random features for exp(<a, b>/tau) on R^{d_k}.

      phi(z)_r = exp(w_r . z / sqrt(tau) - |z|^2 / (2 tau)) / sqrt(m),
      E <phi(a), phi(b)> = exp(<a, b> / tau),
      Var <phi(a), phi(b)> = (exp(2 |a + b|^2 / tau - (|a|^2 + |b|^2) / tau) - exp(2 <a, b> / tau)) / m
      (i.i.d. rows w_r ~ N(0, I)).

  With ``orthogonal=True`` the rows come in blocks of d_k mutually orthogonal
  directions (a Haar-random rotation per block) with chi(d_k)-distributed
  norms: each row is still N(0, I) marginally, so the estimator stays
  unbiased, with lower variance.

  Args:
    d_k: input dimension >= 1.
    num_features: m >= 1.
    key: a JAX PRNG key, keyword-only.
    tau: kernel temperature > 0.
    orthogonal: draw orthogonal blocks instead of i.i.d. rows.
    dtype: float32 or float64 (default: JAX's default float type).
  """
  if not isinstance(d_k, int) or d_k < 1:
    raise ValueError(f"d_k must be a positive int, got {d_k!r}")
  if not isinstance(num_features, int) or num_features < 1:
    raise ValueError(f"num_features must be a positive int, got {num_features!r}")
  _checks.check_key(key)
  dtype = _checks.resolve_dtype(dtype)
  tau = _checks.scalar_param("tau", tau, dtype)
  if not orthogonal:
    omega = jax.random.normal(key, (num_features, d_k), dtype)
    return PositiveRandomFeatures(omega, tau)
  blocks = -(-num_features // d_k)
  k_dir, k_norm = jax.random.split(key)
  gauss = jax.random.normal(k_dir, (blocks, d_k, d_k), dtype)
  q, r = jnp.linalg.qr(gauss)                                                # (blocks, d_k, d_k)
  # Haar-distributed Q needs diag(R) > 0: flip each column by the sign of R's diagonal.
  signs = jnp.sign(jnp.diagonal(r, axis1=1, axis2=2))                        # (blocks, d_k)
  q = q * jnp.where(signs == 0, 1.0, signs)[:, None, :]
  rows = jnp.swapaxes(q, 1, 2).reshape(blocks * d_k, d_k)                     # orthonormal rows
  norms = jnp.linalg.norm(jax.random.normal(k_norm, (blocks * d_k, d_k), dtype), axis=-1)
  omega = (rows * norms[:, None])[:num_features]
  return PositiveRandomFeatures(omega, tau)


@dataclasses.dataclass(frozen=True)
class TaylorFeatures:
  """phi(z) = concat_{n=0..degree} (z / sqrt(tau))^{(x)n} / sqrt(n!); a pytree.

  <phi(a), phi(b)> = sum_{n<=p} t^n / n! with t = <a, b>/tau: the degree-p
  Taylor polynomial of kappa(a, b) = exp(t). Dimension sum_n d_k^n.
  """
  tau: Real[ArrayLike, ""]
  degree: int
  d_k: int

  @property
  def num_features(self) -> int:
    return sum(self.d_k ** n for n in range(self.degree + 1))

  def __call__(self, z: Float[ArrayLike, " d_k"]) -> Float[Array, " m"]:
    """phi(z), (m,) with m = sum_n d_k^n."""
    z = _check_z(z, self.d_k)
    u = z / jnp.sqrt(self.tau)
    term = jnp.ones((1,), z.dtype)
    parts = [term]
    for n in range(1, self.degree + 1):
      term = jnp.kron(term, u) / jnp.sqrt(jnp.asarray(n, z.dtype))            # (d_k^n,)
      parts.append(term)
    return jnp.concatenate(parts)


_checks.register_dataclass_pytree(TaylorFeatures, data_fields=("tau",),
                                  meta_fields=("degree", "d_k"))


def taylor_features(d_k: int, degree: int, *, tau: Real[ArrayLike, ""] = 1.0,
                    dtype=None) -> TaylorFeatures:
  """Taylor features of the given degree for exp(<a, b>/tau) on R^{d_k}.

  ``dtype``: float32 or float64 (default: JAX's default float type).
  """
  if not isinstance(degree, int) or degree < 0:
    raise ValueError(f"degree must be an int >= 0, got {degree!r}")
  if not isinstance(d_k, int) or d_k < 1:
    raise ValueError(f"d_k must be a positive int, got {d_k!r}")
  dim = sum(d_k ** n for n in range(degree + 1))
  if dim > 10_000_000:
    raise ValueError(f"Taylor features of degree {degree} on d_k = {d_k} have {dim} dimensions; "
                     "use degree or d_k small enough for <= 1e7")
  dtype = _checks.resolve_dtype(dtype)
  return TaylorFeatures(_checks.scalar_param("tau", tau, dtype), degree, d_k)


def taylor_remainder_bound(a: Float[ArrayLike, "*d_k"], b: Float[ArrayLike, "*d_k"], *,
                           degree: int, tau: Real[ArrayLike, ""] = 1.0) -> Float[Array, ""]:
  """Lagrange bound on |exp(t) - sum_{n<=p} t^n/n!|, t = <a, b>/tau.

      |R_p(t)| <= |t|^{p+1} / (p+1)! * max(1, exp(t))

  The remainder is R_p(t) = exp(xi) t^{p+1} / (p+1)! for some xi between 0
  and t, so the bound is within a factor exp(|t|) of the exact tail and
  attained as t -> 0 (tested against the exact tail for scalar inputs).

  Args:
    a: a point (d_k,) of feature space (or a scalar).
    b: another, of the same shape.
    degree: p >= 0, the degree of the Taylor features.
    tau: the kernel's temperature.
  """
  t = jnp.dot(a, b, precision=HIGHEST) / tau
  log_bound = (degree + 1) * jnp.log(jnp.abs(t)) - math.lgamma(degree + 2) + jnp.maximum(t, 0.0)
  return jnp.exp(log_bound)
