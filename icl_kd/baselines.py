"""Estimators of a query label from one prompt, and the risk of one GD step.

Each baseline acts on ONE prompt: demonstrations ``xs`` (N, d), labels ``ys``
(N,) and a query ``query`` (d,), and returns the scalar prediction; batches
come from ``jax.vmap``.

- least squares (minimum-norm) and ridge regression;
- k nearest neighbours (mean label of the k closest demonstrations);
- averaging, the baseline of Garg et al. (2022): w_hat = (eta/N) sum_i y_i x_i,
  which is one gradient-descent step from w = 0 on (1/2N) sum_i (<w, x_i> - y_i)^2
  (von Oswald et al., 2023, "Transformers learn in-context by gradient descent");
- Nadaraya-Watson with a Gaussian kernel. Softmax attention over the
  demonstrations is this smoother: with tokens (x_i, -|x_i|^2/2, y_i), keys
  (x_i, -|x_i|^2/2), query feature (x', 1), tau = h^2 and a value map reading
  y, the attention output is exactly the Nadaraya-Watson estimate
  (tests/test_baselines.py checks this identity).

:func:`one_step_risk` is the closed-form risk of the averaging estimator as a
function of its learning rate (quadratic in eta) for inputs with i.i.d.
coordinates and label noise of variance sigma^2, and :func:`optimal_one_step`
its minimiser. Two published values follow from them (reproduced in
tests/test_reproductions.py):

- von Oswald et al. (2023), d = N = 10, x ~ U(-1/2, 1/2)^d, w ~ N(0, I), no
  noise, loss (1/2) E (y_hat - y)^2: eta* = 200/33 and loss 245/1188 = 0.206229
  (:data:`VON_OSWALD_ETA`, :data:`VON_OSWALD_LOSS`);
- isotropic Gaussian x, w ~ N(0, I_d) (Ahn et al., 2023; Zhang, Frei & Bartlett,
  2023): eta* = N/(N + d + 1 + sigma^2) and error d (d + 1 + sigma^2)/(N + d + 1 + sigma^2)
  (:func:`isotropic_one_step_optimum`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from icl_kd import _checks
from icl_kd.dual import HIGHEST


def _check_prompt(xs, ys, query) -> tuple[jax.Array, jax.Array, jax.Array]:
  xs = _checks.as_float_array("xs", xs, ndim=2)
  ys = _checks.as_float_array("ys", ys, ndim=1)
  query = _checks.as_float_array("query", query, ndim=1)
  if xs.shape[0] == 0:
    raise ValueError(f"xs must hold at least one demonstration, got shape {xs.shape}")
  _checks.check_dim("ys", ys, 0, xs.shape[0], "N, one label per row of xs")
  if query.shape != (xs.shape[1],):
    raise ValueError(f"query must have shape ({xs.shape[1]},) (d,), got {query.shape}")
  _checks.check_same_dtype(xs=xs, ys=ys, query=query)
  _checks.check_finite(xs=xs, ys=ys, query=query)
  return xs, ys, query


def least_squares(xs, ys, query) -> jax.Array:
  """Minimum-norm least squares: <X^+ y, x'> with X^+ the pseudo-inverse."""
  xs, ys, query = _check_prompt(xs, ys, query)
  w = jnp.dot(jnp.linalg.pinv(xs), ys, precision=HIGHEST)                   # (d,)
  return jnp.dot(w, query, precision=HIGHEST)


def ridge(xs, ys, query, *, lam) -> jax.Array:
  """Ridge regression: <(X^T X + lam I)^{-1} X^T y, x'>, lam > 0."""
  xs, ys, query = _check_prompt(xs, ys, query)
  lam = _checks.scalar_param("lam", lam, xs.dtype)
  d = xs.shape[1]
  gram = jnp.dot(xs.T, xs, precision=HIGHEST) + lam * jnp.eye(d, dtype=xs.dtype)  # (d, d)
  w = jnp.linalg.solve(gram, jnp.dot(xs.T, ys, precision=HIGHEST))           # (d,)
  return jnp.dot(w, query, precision=HIGHEST)


def knn(xs, ys, query, *, k: int) -> jax.Array:
  """k nearest neighbours: the mean label of the k demonstrations closest to x'."""
  xs, ys, query = _check_prompt(xs, ys, query)
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= xs.shape[0]:
    raise ValueError(f"k must be an int in [1, N={xs.shape[0]}], got {k!r}")
  dist2 = jax.vmap(lambda x: jnp.sum((x - query) ** 2))(xs)                  # (N,)
  _, idx = jax.lax.top_k(-dist2, k)
  return jnp.mean(ys[idx])


def averaging(xs, ys, query, *, eta=1.0) -> jax.Array:
  """One GD step from w = 0: <(eta/N) sum_i y_i x_i, x'> (Garg et al.'s averaging at eta=1)."""
  xs, ys, query = _check_prompt(xs, ys, query)
  eta = _checks.scalar_param("eta", eta, xs.dtype, positive=False)
  w = eta * jnp.dot(ys, xs, precision=HIGHEST) / xs.shape[0]                # (d,)
  return jnp.dot(w, query, precision=HIGHEST)


def nadaraya_watson(xs, ys, query, *, bandwidth) -> jax.Array:
  """Gaussian-kernel smoother: sum_i softmax_i(-|x_i - x'|^2 / (2 h^2)) y_i.

  The weights are a softmax of log-kernels, so no exponential overflows.
  """
  xs, ys, query = _check_prompt(xs, ys, query)
  h = _checks.scalar_param("bandwidth", bandwidth, xs.dtype)
  log_k = jax.vmap(lambda x: -jnp.sum((x - query) ** 2) / (2 * h * h))(xs)  # (N,)
  return jnp.dot(jax.nn.softmax(log_k), ys, precision=HIGHEST)


class InputMoments(NamedTuple):
  """Moments of one input coordinate (i.i.d. coordinates, mean 0)."""
  var: float
  fourth: float


GAUSSIAN_MOMENTS = InputMoments(var=1.0, fourth=3.0)                        # N(0, 1)
UNIFORM_MOMENTS = InputMoments(var=1.0 / 12.0, fourth=1.0 / 80.0)          # U(-1/2, 1/2)


def _moments(x_dist: str) -> InputMoments:
  if x_dist == "gaussian":
    return GAUSSIAN_MOMENTS
  if x_dist == "uniform":
    return UNIFORM_MOMENTS
  raise ValueError(f"x_dist must be 'gaussian' or 'uniform', got {x_dist!r}")


def _one_step_coefficients(d: int, n: int, x_dist: str,
                           noise_var=0.0) -> tuple[float, float, float]:
  """(s2, A, B) with A = E tr(S^2) + sigma^2 d s2 / n, B = E tr(S), S = (1/n) sum_i x_i x_i^T."""
  for name, v in (("d", d), ("n", n)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be a positive int, got {v!r}")
  if isinstance(noise_var, bool) or not isinstance(noise_var, (int, float)) or not (
      noise_var >= 0 and noise_var != float("inf")):
    raise ValueError(f"noise_var must be a finite float >= 0, got {noise_var!r}")
  m = _moments(x_dist)
  # E |x|^4 = d m4 + d(d-1) s2^2;  E <x_i, x_j>^2 = d s2^2 for i != j.
  a = (d * m.fourth + d * (d - 1) * m.var ** 2) / n + (n - 1) / n * d * m.var ** 2
  a = a + noise_var * d * m.var / n
  b = d * m.var
  return m.var, a, b


def one_step_risk(eta, *, d: int, n: int, x_dist: str = "gaussian",
                  noise_var: float = 0.0) -> jax.Array:
  """E (y_hat - y')^2 of the averaging estimator with learning rate eta, closed form.

  With w ~ N(0, I_d), labels y_i = <w, x_i> + e_i (Var e_i = sigma^2 = ``noise_var``),
  S = (1/n) sum_i x_i x_i^T and y_hat = eta <S w + (1/n) sum_i e_i x_i, x'>, the
  error against the noiseless query label y' = <w, x'> is

      E (y_hat - y')^2 = s2 E tr((eta S - I)^2) + eta^2 sigma^2 d s2^2 / n
                       = s2 (eta^2 A - 2 eta B + d),
      A = (d m4 + d(d-1) s2^2)/n + (n-1) d s2^2 / n + sigma^2 d s2 / n,   B = d s2,

  where s2 and m4 are the second and fourth moments of one input coordinate.
  For Gaussian inputs and eta = 1 this is d(d+1+sigma^2)/n: Garg et al.'s (d+1)/k
  after normalising by d (noiseless).
  """
  s2, a, b = _one_step_coefficients(d, n, x_dist, noise_var)
  eta = jnp.asarray(eta)
  return s2 * (eta * eta * a - 2 * eta * b + d)


class OneStepOptimum(NamedTuple):
  """The learning rate minimising :func:`one_step_risk`, and the risk there."""
  eta: float
  risk: float


def optimal_one_step(*, d: int, n: int, x_dist: str = "gaussian",
                     noise_var: float = 0.0) -> OneStepOptimum:
  """eta* = B / A and risk* = s2 (d - B^2 / A), the minimum of :func:`one_step_risk`."""
  s2, a, b = _one_step_coefficients(d, n, x_dist, noise_var)
  return OneStepOptimum(eta=b / a, risk=s2 * (d - b * b / a))


# von Oswald et al. (2023), d = N = 10, x ~ U(-1/2, 1/2)^d, loss (1/2) E (y_hat - y)^2:
# the exact optimum of one GD step (their notebook's 0.2047 is a finite-sample figure).
VON_OSWALD_ETA = 200.0 / 33.0
VON_OSWALD_LOSS = 245.0 / 1188.0          # = 0.206229..., half of optimal_one_step's risk


def isotropic_one_step_optimum(*, d: int, n: int, noise_var: float = 0.0) -> OneStepOptimum:
  """The one-step optimum for x, w ~ N(0, I_d) with label noise sigma^2, in closed form.

      eta* = N / (N + d + 1 + sigma^2),   risk* = d (d + 1 + sigma^2) / (N + d + 1 + sigma^2)

  (Ahn et al., 2023; Zhang, Frei & Bartlett, 2023): :func:`optimal_one_step` with
  Gaussian moments simplified (A = d (N + d + 1 + sigma^2) / N, B = d). The risk is
  against the noiseless query label; divide by d for the normalised error
  (21/41 at d = N = 20, sigma^2 = 0).
  """
  s2, _, _ = _one_step_coefficients(d, n, "gaussian", noise_var)   # validates the arguments
  del s2
  den = n + d + 1 + noise_var
  return OneStepOptimum(eta=n / den, risk=d * (d + 1 + noise_var) / den)
