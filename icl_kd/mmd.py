"""Maximum mean discrepancy: kernels, estimators and the permutation test (claim C5).

The squared MMD between P and Q in the RKHS of a kernel k is

    MMD_k^2(P, Q) = E k(x, x') + E k(y, y') - 2 E k(x, y),   x, x' ~ P,  y, y' ~ Q

(Gretton, Borgwardt, Rasch, Schoelkopf, Smola, 2012, "A kernel two-sample
test", JMLR 13). docs/THEORY.md C5 (``thm4.1``) measures the bias of the distilled
weights with it: ||W_0(P) - W_0(Q)||_HS = 2 eta MMD_kV(P, Q) for the
distillation kernel k_V (see :func:`distillation_kernel` and
:mod:`icl_kd.bounds`).

A kernel is an object defined on ONE pair of points, ``k(x, y) -> scalar``;
all-pairs matrices come from a nested ``vmap`` (:func:`gram`). The kernels
here are pytrees (their bandwidth or parameters are leaves), so they can be
passed to jitted functions, and they also expose
``log_factors(x, y) -> (c, l)`` with k(x, y) = c * exp(l): the estimators
shift every ``l`` by its maximum before exponentiating, so the softmax kernel
exp(<x, y>/tau) at scores of 1e3 does not overflow. Any plain callable
``(x, y) -> scalar`` is accepted as a kernel too (read as c = k, l = 0).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from icl_kd import _checks
from icl_kd.attention import AttentionParams, check_params
from icl_kd.dual import HIGHEST

ESTIMATORS = ("biased", "unbiased", "linear")


# -- kernels on one pair --------------------------------------------------------


def _check_finite(**arrays: jax.Array) -> None:
  """``_checks.check_finite`` evaluated eagerly on concrete arrays even while tracing.

  Under ``jit`` a concrete array closed over by the traced function is still
  checkable; ``ensure_compile_time_eval`` keeps the check's own jnp ops from
  being staged (which would make its ``bool`` fail).
  """
  with jax.ensure_compile_time_eval():
    _checks.check_finite(**arrays)


def _kernel_scalar(name: str, value) -> jax.Array:
  """A bandwidth/temperature: a real scalar, > 0 and finite when concrete.

  The dtype is left to the data the kernel is applied to (cast at call time),
  so a Python float works for float32 and float64 samples alike.
  """
  arr = jnp.asarray(value)
  dtype = arr.dtype if jnp.issubdtype(arr.dtype, jnp.floating) else jnp.result_type(float)
  return _checks.scalar_param(name, value, dtype)


def _check_pair(x, y) -> tuple[jax.Array, jax.Array]:
  x, y = jnp.asarray(x), jnp.asarray(y)
  if x.ndim != 1 or x.shape != y.shape:
    raise ValueError(f"a kernel takes one pair of points of equal shape (d,), got x: {x.shape} "
                     f"and y: {y.shape}")
  return x, y


def _sq_dist(x: jax.Array, y: jax.Array) -> jax.Array:
  """|x - y|^2 from the difference itself: no cancellation far from the origin."""
  diff = x - y
  return jnp.sum(diff * diff)


def _safe_norm_from_sq(d2: jax.Array) -> jax.Array:
  """sqrt(d2) with a finite gradient at d2 = 0 (the Laplace kernel's kink)."""
  pos = d2 > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, d2, 1.0)), 0.0)


def pairwise_sq_dists(x: Float[ArrayLike, "n d"], y: Float[ArrayLike, "m d"]
                      ) -> Float[Array, "n m"]:
  """All-pairs |x_i - y_j|^2, (n, m), by the fused expansion |a|^2 + |b|^2 - 2<a, b>.

  Both samples are first centred at their pooled mean (the distances do not
  change), so data far from the origin (offset 1e4) keeps its accuracy; the
  result is clamped at 0 against rounding. :func:`gram` with ``fused=False``
  uses exact differences instead; a test proves the two equal.
  """
  x = _checks.as_float_array("x", x, ndim=2)
  y = _checks.as_float_array("y", y, ndim=2)
  _checks.check_dim("y", y, 1, x.shape[1], "d, the feature dimension of x")
  n, m = x.shape[0], y.shape[0]
  centre = (jnp.sum(x, axis=0) + jnp.sum(y, axis=0)) / max(n + m, 1)       # (d,)
  xc, yc = x - centre[None, :], y - centre[None, :]                        # (n, d), (m, d)
  cross = jnp.dot(xc, yc.T, precision=HIGHEST)                              # (n, m)
  d2 = jnp.sum(xc * xc, axis=1)[:, None] + jnp.sum(yc * yc, axis=1)[None, :] - 2.0 * cross
  return jnp.maximum(d2, 0.0)


@dataclasses.dataclass(frozen=True)
class GaussianKernel:
  """k(x, y) = exp(-|x - y|^2 / (2 h^2)); characteristic on R^d."""
  bandwidth: jax.Array
  kind: str = "gaussian"

  def log_factors(self, x, y):
    x, y = _check_pair(x, y)
    h = jnp.asarray(self.bandwidth, x.dtype)
    return jnp.ones((), x.dtype), -_sq_dist(x, y) / (2 * h * h)

  def fused_log_factors(self, x, y):
    h = jnp.asarray(self.bandwidth, x.dtype)
    return None, -pairwise_sq_dists(x, y) / (2 * h * h)

  def __call__(self, x, y):
    c, l = self.log_factors(x, y)
    return c * jnp.exp(l)


@dataclasses.dataclass(frozen=True)
class LaplaceKernel:
  """k(x, y) = exp(-|x - y| / h); characteristic on R^d.

  Its matrix form is used only when asked for (``fused=True``): |x - y| =
  sqrt(d2) turns the expansion's rounding of d2 near 0 (~eps |x|^2) into an
  error ~sqrt(eps) |x| / h for (nearly) coincident points, so the default
  path evaluates it from exact differences.
  """
  bandwidth: jax.Array
  kind: str = "laplace"
  auto_matrix_form = False      # class attribute, not a field

  def log_factors(self, x, y):
    x, y = _check_pair(x, y)
    h = jnp.asarray(self.bandwidth, x.dtype)
    return jnp.ones((), x.dtype), -_safe_norm_from_sq(_sq_dist(x, y)) / h

  def fused_log_factors(self, x, y):
    h = jnp.asarray(self.bandwidth, x.dtype)
    return None, -_safe_norm_from_sq(pairwise_sq_dists(x, y)) / h

  def __call__(self, x, y):
    c, l = self.log_factors(x, y)
    return c * jnp.exp(l)


@dataclasses.dataclass(frozen=True)
class IMQKernel:
  """k(x, y) = (1 + |x - y|^2 / h^2)^(-1/2), the inverse multiquadric; characteristic."""
  bandwidth: jax.Array
  kind: str = "imq"

  def log_factors(self, x, y):
    x, y = _check_pair(x, y)
    h = jnp.asarray(self.bandwidth, x.dtype)
    return jnp.ones((), x.dtype), -0.5 * jnp.log1p(_sq_dist(x, y) / (h * h))

  def fused_log_factors(self, x, y):
    h = jnp.asarray(self.bandwidth, x.dtype)
    return None, -0.5 * jnp.log1p(pairwise_sq_dists(x, y) / (h * h))

  def __call__(self, x, y):
    c, l = self.log_factors(x, y)
    return c * jnp.exp(l)


@dataclasses.dataclass(frozen=True)
class ExpKernel:
  """k(x, y) = exp(<x, y> / tau), the softmax kernel kappa of docs/THEORY.md."""
  tau: jax.Array
  kind: str = "exp"

  def log_factors(self, x, y):
    x, y = _check_pair(x, y)
    tau = jnp.asarray(self.tau, x.dtype)
    return jnp.ones((), x.dtype), jnp.dot(x, y, precision=HIGHEST) / tau

  def fused_log_factors(self, x, y):
    tau = jnp.asarray(self.tau, x.dtype)
    return None, jnp.dot(x, y.T, precision=HIGHEST) / tau                   # (n, m)

  def __call__(self, x, y):
    c, l = self.log_factors(x, y)
    return c * jnp.exp(l)


@dataclasses.dataclass(frozen=True)
class DistillationKernel:
  """k(x, y) = <g(x), g(y)> exp(<W^K x, W^K y> / tau) with g = W^V (k_V) or identity (k_x).

  docs/THEORY.md C5: ||W_0(P) - W_0(Q)||_HS = 2 eta MMD_kV(P, Q) (identity) and
  MMD_kV <= ||W^V||_op MMD_kx (bound), because ||W^V||^2 k_x - k_V is a
  product of two PSD kernels.
  """
  params: AttentionParams
  tau: jax.Array
  use_values: bool = True
  kind: str = "distillation"

  def _g(self, x):
    if self.use_values:
      return jnp.dot(x, self.params.w_v.T, precision=HIGHEST)
    return x

  def log_factors(self, x, y):
    x, y = _check_pair(x, y)
    tau = jnp.asarray(self.tau, x.dtype)
    kx = jnp.dot(self.params.w_k, x, precision=HIGHEST)                      # (d_k,)
    ky = jnp.dot(self.params.w_k, y, precision=HIGHEST)                      # (d_k,)
    c = jnp.dot(self._g(x), self._g(y), precision=HIGHEST)
    return c, jnp.dot(kx, ky, precision=HIGHEST) / tau

  def fused_log_factors(self, x, y):
    tau = jnp.asarray(self.tau, x.dtype)
    kx = jnp.dot(x, self.params.w_k.T, precision=HIGHEST)                    # (n, d_k)
    ky = jnp.dot(y, self.params.w_k.T, precision=HIGHEST)                    # (m, d_k)
    c = jnp.dot(self._g(x), self._g(y).T, precision=HIGHEST)                 # (n, m)
    return c, jnp.dot(kx, ky.T, precision=HIGHEST) / tau

  def __call__(self, x, y):
    c, l = self.log_factors(x, y)
    return c * jnp.exp(l)


# ``kind`` is static pytree metadata: JAX compares the tree structures of
# registered dataclasses by their fields and metadata, so two kernel classes
# with the same fields would otherwise share a jit cache entry.
for _cls, _fields in ((GaussianKernel, ["bandwidth"]), (LaplaceKernel, ["bandwidth"]),
                      (IMQKernel, ["bandwidth"]), (ExpKernel, ["tau"])):
  jax.tree_util.register_dataclass(_cls, data_fields=_fields, meta_fields=["kind"])
jax.tree_util.register_dataclass(DistillationKernel, data_fields=["params", "tau"],
                                 meta_fields=["use_values", "kind"])


def gaussian_kernel(bandwidth: Real[ArrayLike, ""]) -> GaussianKernel:
  """The Gaussian kernel k(x, y) = exp(-|x - y|^2 / (2 bandwidth^2)), bandwidth > 0."""
  return GaussianKernel(_kernel_scalar("bandwidth", bandwidth))


def laplace_kernel(bandwidth: Real[ArrayLike, ""]) -> LaplaceKernel:
  """The Laplace kernel k(x, y) = exp(-|x - y| / bandwidth), bandwidth > 0."""
  return LaplaceKernel(_kernel_scalar("bandwidth", bandwidth))


def imq_kernel(bandwidth: Real[ArrayLike, ""]) -> IMQKernel:
  """The inverse multiquadric kernel k(x, y) = (1 + |x - y|^2 / bandwidth^2)^(-1/2)."""
  return IMQKernel(_kernel_scalar("bandwidth", bandwidth))


def exp_kernel(tau: Real[ArrayLike, ""]) -> ExpKernel:
  """The softmax kernel kappa(x, y) = exp(<x, y> / tau), tau > 0 (docs/THEORY.md notation)."""
  return ExpKernel(_kernel_scalar("tau", tau))


def distillation_kernel(params: AttentionParams, *, tau: Real[ArrayLike, ""],
                        use_values: bool = True) -> DistillationKernel:
  """The distillation kernels of claim C5 (``thm4.1``).

      use_values=True:  k_V(x, y) = <W^V x, W^V y> exp(<W^K x, W^K y> / tau)
      use_values=False: k_x(x, y) = <x, y>         exp(<W^K x, W^K y> / tau)

  k_V is the kernel whose MMD equals ||W_0(P) - W_0(Q)||_HS / (2 eta) exactly;
  k_x gives the bound ||W^V||_op MMD_kx. Both are PSD but not characteristic.
  """
  params = check_params(params)
  if not isinstance(use_values, bool):
    raise TypeError(f"use_values must be a bool, got {type(use_values).__name__}")
  tau = _checks.scalar_param("tau", tau, params.w_k.dtype)
  return DistillationKernel(params, tau, use_values)


# -- all-pairs matrices -----------------------------------------------------------

DEFAULT_BLOCK_SIZE = {"float64": 512, "float32": 512}
"""Largest tile side of the blocked estimators on CPU by dtype (other dtypes: 256): tiles of
2 MiB (float64) or 1 MiB (float32). The fastest of the sides 256..2048 measured on a 2-core
CPU for n = m = 1024..16384, d = 64 (benchmark B3): 512 beat 256 by 20-28% in float64."""

ACCELERATOR_BLOCK_SIZE = 4096
"""Largest tile side on GPU/TPU backends (64 MiB float32 tiles): an accelerator needs large
tiles to be busy, and the tiles are visited one after another. Not yet measured."""

NEGATIVE_MMD2_NOTE = ("unbiased MMD^2 can be < 0: it is an unbiased estimate of a quantity >= 0 "
                      "(about half the estimates are < 0 when P = Q)")
"""One line for tables and figures that show unbiased MMD^2 estimates."""



def _log_factors_fn(kernel) -> Callable:
  if not callable(kernel):
    raise TypeError(f"kernel must be callable on one pair (x, y) -> scalar, got "
                    f"{type(kernel).__name__}")
  if hasattr(kernel, "log_factors"):
    return kernel.log_factors

  def plain(a, b):
    k = jnp.asarray(kernel(a, b))
    if k.shape != ():
      raise ValueError(f"kernel must return a scalar for one pair, got shape {k.shape}")
    return k, jnp.zeros((), k.dtype)
  return plain


def _all_pairs(fn: Callable, x: jax.Array, y: jax.Array):
  """Nested vmap of a one-pair function: (n, m) outputs."""
  return jax.vmap(lambda a: jax.vmap(lambda b: fn(a, b))(y))(x)


def _kernel_positive(kernel) -> tuple:
  """The kernel's scalars that must be > 0 (bandwidth or tau), for NaN-poisoning under jit."""
  return tuple(jnp.asarray(getattr(kernel, name)) for name in ("bandwidth", "tau")
               if hasattr(kernel, name))


def _is_symmetric(kernel) -> bool:
  """Kernels of this module are symmetric, k(x, y) = k(y, x); a plain callable is not assumed so."""
  return isinstance(kernel, (GaussianKernel, LaplaceKernel, IMQKernel, ExpKernel,
                             DistillationKernel))


def _use_matrix_form(kernel, fused) -> bool:
  """``fused``: None picks the kernel's matrix form when it has one; True requires it."""
  if fused is None:
    return hasattr(kernel, "fused_log_factors") and getattr(kernel, "auto_matrix_form", True)
  if not isinstance(fused, (bool, np.bool_)):
    raise TypeError(f"fused must be None, True or False, got {fused!r}")
  if fused and not hasattr(kernel, "fused_log_factors"):
    raise ValueError(f"kernel {type(kernel).__name__} has no matrix (fused) form; use fused=None "
                     f"or fused=False")
  return bool(fused)


def _pair_block_fn(kernel, fused) -> Callable:
  """(a (p, d), b (q, d)) -> (c (p, q) or None, l (p, q)) with K = c exp(l); None means c = 1.

  The matrix form (one matmul; squared distances by the centred expansion of
  :func:`pairwise_sq_dists`) or the nested vmap of the one-pair kernel.
  """
  _log_factors_fn(kernel)
  if _use_matrix_form(kernel, fused):
    return kernel.fused_log_factors
  fn = _log_factors_fn(kernel)
  return lambda a, b: _all_pairs(fn, a, b)


def _gram_factors(kernel, x: jax.Array, y: jax.Array, *, fused=False):
  """(c, l) with K = c * exp(l), each (n, m) (c is None for c = 1)."""
  return _pair_block_fn(kernel, fused)(x, y)


def _times(c, e: jax.Array) -> jax.Array:
  return e if c is None else c * e


def _check_samples(x, y, *, min_size: int = 1) -> tuple[jax.Array, jax.Array]:
  x = _checks.as_float_array("x", x, ndim=2)
  y = _checks.as_float_array("y", y, ndim=2)
  _checks.check_dim("y", y, 1, x.shape[1], "d, the feature dimension of x")
  _checks.check_same_dtype(x=x, y=y)
  for name, arr in (("x", x), ("y", y)):
    if arr.shape[0] < min_size:
      raise ValueError(f"{name} must hold at least {min_size} sample(s) (rows), got shape "
                       f"{arr.shape}")
  _check_finite(x=x, y=y)
  return x, y


def default_block_size(dtype=None) -> int:
  """The tile side :func:`mmd2` uses when ``block_size`` is None, on this backend and dtype.

  :data:`DEFAULT_BLOCK_SIZE` on CPU (256 for other dtypes), :data:`ACCELERATOR_BLOCK_SIZE`
  on GPU/TPU.
  """
  if jax.default_backend() != "cpu":
    return ACCELERATOR_BLOCK_SIZE
  return DEFAULT_BLOCK_SIZE.get(jnp.dtype(dtype).name if dtype is not None else "", 256)


def _check_block_size(block_size, dtype=None) -> int:
  if block_size is None:
    return default_block_size(dtype)
  if isinstance(block_size, (bool, np.bool_)) or not isinstance(block_size, (int, np.integer)):
    raise TypeError(f"block_size must be None or an int >= 1, got {type(block_size).__name__} "
                    f"{block_size!r}")
  if block_size < 1:
    raise ValueError(f"block_size must be an int >= 1 (the largest tile side), got {block_size}")
  return int(block_size)


def gram(kernel: Callable, x: Float[ArrayLike, "n d"], y: Float[ArrayLike, "m d"], *,
         fused: bool = False) -> Float[Array, "n m"]:
  """All-pairs kernel matrix K_ij = k(x_i, y_j), (n, m), materialised.

  By default a nested ``vmap`` of the one-pair kernel (exact differences for
  the distance kernels). ``fused=True`` (or None: the matrix form when the
  kernel has one) uses the kernel's matrix form (one matmul; distances by the
  centred expansion of :func:`pairwise_sq_dists`), proven equal in the tests.
  Overflows where k does (e.g. exp(<x, y>/tau) at <x, y>/tau > 709); the MMD
  estimators work in log space instead and never build this matrix.
  """
  x, y = _check_samples(x, y, min_size=0)
  c, l = _gram_factors(kernel, x, y, fused=fused)
  return _times(c, jnp.exp(l))


# -- estimators -------------------------------------------------------------------


def _shift(*logs: jax.Array) -> jax.Array:
  """Largest finite entry over the given log-kernel arrays (0 if none)."""
  m = jnp.max(jnp.stack([jnp.max(l) for l in logs if l.size]))
  return jnp.where(jnp.isfinite(m), m, 0.0)


def _offdiag(a: jax.Array, fill) -> jax.Array:
  """``a`` with its diagonal REPLACED (not subtracted), so no diagonal value leaks in."""
  eye = jnp.eye(a.shape[0], dtype=bool)
  return jnp.where(eye, fill, a)


class _Parts(NamedTuple):
  """MMD^2 = exp(log_shift) * value; ``abs_value`` is the sum of |terms| (same units)."""
  log_shift: jax.Array
  value: jax.Array
  abs_value: jax.Array


class _BlockSum(NamedTuple):
  """sum_ij w_ij K_ij = exp(log_shift) * total; ``abs_total`` likewise for |K_ij|."""
  log_shift: jax.Array
  total: jax.Array
  abs_total: jax.Array


def _tiling(n: int, block: int) -> tuple[int, int]:
  """(number of tiles, tile side) covering n rows with tiles of side <= block, padding < tiles."""
  tiles = -(-n // block)
  return tiles, -(-n // tiles)


def _pad_rows(a: jax.Array, rows: int) -> jax.Array:
  """``a`` padded to ``rows`` rows with copies of its last row (real data: kernels stay finite)."""
  return a if rows == a.shape[0] else jnp.pad(a, ((0, rows - a.shape[0]), (0, 0)), mode="edge")


def _block_sum(pair_block: Callable, a: jax.Array, b: jax.Array, *, block: int,
               symmetric: bool, exclude_diagonal: bool) -> _BlockSum:
  """sum_{i, j} k(a_i, b_j) over tiles of at most block x block, never the (n, m) matrix.

  The tiles are visited by ``lax.map``; each returns its largest log-kernel
  value t and sum_ij c_ij exp(l_ij - t), combined afterwards as a
  log-sum-exp, so no tile under- or overflows for lack of a common shift.
  Rows padded to fill the last tile and, with ``exclude_diagonal`` (``a`` is
  ``b``), the entries i == j get l = -inf: they are never read. With
  ``symmetric`` (``a`` is ``b`` and k(x, y) = k(y, x)) only the tiles on and
  above the diagonal are computed, those above counted twice.
  """
  n, m = a.shape[0], b.shape[0]
  ta, sa = _tiling(n, block)
  tb, sb = _tiling(m, block)
  ap, bp = _pad_rows(a, ta * sa), _pad_rows(b, tb * sb)                     # (ta sa, d), (tb sb, d)
  if symmetric:
    ii, jj = np.triu_indices(ta)
    weight = np.where(ii == jj, 1.0, 2.0)
  else:
    ii, jj = (g.ravel() for g in np.meshgrid(np.arange(ta), np.arange(tb), indexing="ij"))
    weight = np.ones(ii.shape)
  tiles = (jnp.asarray(ii, jnp.int32), jnp.asarray(jj, jnp.int32), jnp.asarray(weight, a.dtype))

  def one_tile(tile):
    i, j, w = tile
    rows = i * sa + jnp.arange(sa, dtype=jnp.int32)                          # (sa,)
    cols = j * sb + jnp.arange(sb, dtype=jnp.int32)                          # (sb,)
    c, l = pair_block(jax.lax.dynamic_slice_in_dim(ap, i * sa, sa),
                      jax.lax.dynamic_slice_in_dim(bp, j * sb, sb))          # (sa, sb) each
    valid = (rows[:, None] < n) & (cols[None, :] < m)
    if exclude_diagonal:
      valid = valid & (rows[:, None] != cols[None, :])
    l = jnp.where(valid, l, -jnp.inf)
    if c is not None:
      c = jnp.where(valid, c, 0.0)
    top = jnp.max(l)
    terms = _times(c, jnp.exp(l - jnp.where(jnp.isfinite(top), top, 0.0)))
    return top, w * jnp.sum(terms), w * jnp.sum(jnp.abs(terms))

  tops, totals, abs_totals = jax.lax.map(one_tile, tiles)                    # (tiles,) each
  shift = _shift(tops)
  scale = jnp.where(jnp.isfinite(tops), jnp.exp(tops - shift), 0.0)        # (tiles,)
  return _BlockSum(shift, jnp.sum(scale * totals), jnp.sum(scale * abs_totals))


def _quadratic_parts(kernel, x: jax.Array, y: jax.Array, estimator: str, fused=None,
                     block_size=None) -> _Parts:
  block = _check_block_size(block_size, x.dtype)
  pair_block = _pair_block_fn(kernel, fused)
  symmetric = _is_symmetric(kernel)
  unbiased = estimator == "unbiased"
  n, m = x.shape[0], y.shape[0]
  sxx = _block_sum(pair_block, x, x, block=block, symmetric=symmetric, exclude_diagonal=unbiased)
  syy = _block_sum(pair_block, y, y, block=block, symmetric=symmetric, exclude_diagonal=unbiased)
  sxy = _block_sum(pair_block, x, y, block=block, symmetric=False, exclude_diagonal=False)
  if unbiased:
    wxx, wyy = 1.0 / (n * (n - 1)), 1.0 / (m * (m - 1))
  else:
    wxx, wyy = 1.0 / (n * n), 1.0 / (m * m)
  wxy = 2.0 / (n * m)
  s = _shift(sxx.log_shift, syy.log_shift, sxy.log_shift)
  fxx, fyy, fxy = (jnp.exp(p.log_shift - s) for p in (sxx, syy, sxy))
  value = wxx * fxx * sxx.total + wyy * fyy * syy.total - wxy * fxy * sxy.total
  abs_value = (wxx * fxx * sxx.abs_total + wyy * fyy * syy.abs_total
               + wxy * fxy * sxy.abs_total)
  return _Parts(s, value, abs_value)


def _linear_terms(kernel, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(log shift s, (h,) terms h_i exp(-s)) of the linear-time estimator, h = floor(n/2).

  Gretton et al. (2012), Lemma 14: h_i = k(x1, x2) + k(y1, y2) - k(x1, y2) - k(x2, y1)
  over the disjoint pairs (x_2i, x_2i+1), (y_2i, y_2i+1).
  """
  fn = _log_factors_fn(kernel)
  half = x.shape[0] // 2
  x1, x2 = x[0:2 * half:2], x[1:2 * half:2]                                 # (half, d)
  y1, y2 = y[0:2 * half:2], y[1:2 * half:2]                                 # (half, d)
  pair = jax.vmap(fn)
  (c1, l1), (c2, l2), (c3, l3), (c4, l4) = pair(x1, x2), pair(y1, y2), pair(x1, y2), pair(x2, y1)
  s = _shift(l1, l2, l3, l4)
  terms = jnp.stack([c1 * jnp.exp(l1 - s), c2 * jnp.exp(l2 - s), -c3 * jnp.exp(l3 - s),
                     -c4 * jnp.exp(l4 - s)])                                # (4, half)
  return s, terms


def _linear_parts(kernel, x: jax.Array, y: jax.Array) -> _Parts:
  s, terms = _linear_terms(kernel, x, y)
  half = terms.shape[1]
  return _Parts(s, jnp.sum(terms) / half, jnp.sum(jnp.abs(terms)) / half)


def _mmd2_parts(x, y, kernel, estimator: str, fused=None, block_size=None
                ) -> tuple[_Parts, jax.Array, jax.Array]:
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
  _log_factors_fn(kernel)
  _use_matrix_form(kernel, fused)
  _check_block_size(block_size)
  min_size = 2 if estimator in ("unbiased", "linear") else 1
  x, y = _check_samples(x, y, min_size=min_size)
  if estimator == "linear":
    if x.shape[0] != y.shape[0]:
      raise ValueError(f"the linear estimator needs equal sample sizes, got x: {x.shape[0]} and "
                       f"y: {y.shape[0]} rows")
    return _linear_parts(kernel, x, y), x, y
  return _quadratic_parts(kernel, x, y, estimator, fused, block_size), x, y


def mmd2(x: Float[ArrayLike, "n d"], y: Float[ArrayLike, "m d"], *, kernel: Callable,
         estimator: str = "unbiased", fused: bool | None = None, block_size: int | None = None
         ) -> jax.Array:
  """Estimate of MMD_k^2(P, Q) from samples x ~ P (n, d) and y ~ Q (m, d).

      biased    (V-statistic):  (1/n^2) sum_ij k(x_i, x_j) + (1/m^2) sum_ij k(y_i, y_j)
                                - (2/nm) sum_ij k(x_i, y_j);  >= 0, clamped at 0 against
                                rounding (it is ||mu_P - mu_Q||^2 of the empirical measures).
      unbiased  (U-statistic):  the same with i != j in the first two sums, divided by
                                n(n-1) and m(m-1); the Gram diagonal is never read.
                                It CAN BE NEGATIVE: it is an unbiased estimate of a
                                quantity >= 0, so when P and Q are close its sampling
                                error straddles 0 (under P = Q about half of the
                                estimates are < 0). Tables can quote NEGATIVE_MMD2_NOTE.
      linear    (linear time):  (1/h) sum_{i<h} k(x_2i, x_2i+1) + k(y_2i, y_2i+1)
                                - k(x_2i, y_2i+1) - k(x_2i+1, y_2i),  h = floor(n/2);
                                needs n == m; can be negative too. Its standard error:
                                :func:`linear_mmd2`.

  Gretton et al. (2012), "A kernel two-sample test", JMLR 13, Eqs. (3), (5) and
  Lemma 14.

  How it is computed (biased and unbiased): the three kernel sums are taken
  over tiles of at most ``block_size`` x ``block_size`` pairs (``lax.map``),
  so memory is O(block_size^2 + (n + m) d) and no n x m matrix is ever built
  (n = m = 65,536 runs in a few hundred MiB); for symmetric kernels only the
  tiles on and above the diagonal of the x-x and y-y sums are computed. Within
  a tile, kernels of distance or inner product (all kernels of this module)
  use their matrix form: one matmul, squared distances as
  |a|^2 + |b|^2 - 2 <a, b> after centring the tile's points at their mean and
  clamped at 0 (accurate for data far from the origin; tested at an offset of
  1e4 against exact differences). Kernels are evaluated in log space (each
  tile's largest exponent is subtracted before exp and the tiles are combined
  as a log-sum-exp), so only a result that itself overflows is inf.

  Args:
    x: (n, d) sample from P; n >= 1 (biased) or n >= 2 (unbiased, linear).
    y: (m, d) sample from Q, the same dtype.
    kernel: a one-pair kernel (see :func:`gaussian_kernel`) or any callable (x, y) -> scalar.
    estimator: "biased", "unbiased" or "linear".
    fused: None (default): the kernel's matrix form when it has one (every
      kernel of this module but the Laplace kernel, whose square root makes
      the expansion inaccurate at coincident points), else the nested vmap of
      the one-pair kernel.
      True: require the matrix form. False: the nested vmap of the one-pair
      kernel (exact differences; slower). The two agree to rounding (tested).
      The linear estimator evaluates pairs only and ignores it.
    block_size: largest tile side; default on CPU DEFAULT_BLOCK_SIZE[dtype]
      (256 for float64, 512 for float32), on GPU/TPU ACCELERATOR_BLOCK_SIZE
      (4096); any int >= 1; a value >= max(n, m) computes each sum as one
      dense tile.

  Returns:
    Scalar estimate. Eagerly, non-finite samples raise ValueError; under jit
    they (and a bandwidth or tau <= 0) give NaN.

  Claim ``thm4.1`` (C5) uses the biased form with :func:`distillation_kernel`.
  """
  parts, x, y = _mmd2_parts(x, y, kernel, estimator, fused, block_size)
  value = parts.value
  if estimator == "biased":
    value = jnp.maximum(value, 0.0)
  out = jnp.exp(parts.log_shift) * value
  return _checks.poison_if_nonfinite(out, x, y, positive=_kernel_positive(kernel))


class LinearMMD2(NamedTuple):
  """Result of :func:`linear_mmd2`.

  Attributes:
    value: the linear-time estimate (1/h) sum_i h_i (the ``"linear"`` estimator of :func:`mmd2`).
    std_error: its standard error sd(h_1, ..., h_h) / sqrt(h) (sample sd, ddof = 1).
  """
  value: jax.Array
  std_error: jax.Array


def linear_mmd2(x: Float[ArrayLike, "n d"], y: Float[ArrayLike, "m d"], *, kernel: Callable
                ) -> LinearMMD2:
  """Linear-time MMD^2 estimate with its standard error (Gretton et al. 2012, Sec. 6).

      h_i = k(x_2i, x_2i+1) + k(y_2i, y_2i+1) - k(x_2i, y_2i+1) - k(x_2i+1, y_2i)
      value = mean(h),   std_error = sd(h) / sqrt(h),   h = floor(n / 2) i.i.d. terms

  The h_i are independent, so ``value`` is asymptotically normal with that
  standard error (the linear-time test rejects P = Q when value / std_error
  exceeds a normal quantile). Tested against the spread of repeated estimates.

  Args:
    x: (n, d) sample from P, n >= 4 (two terms at least).
    y: (n, d) sample from Q, the same size and dtype.
    kernel: a one-pair kernel or callable.

  Returns:
    LinearMMD2(value, std_error).
  """
  _log_factors_fn(kernel)
  x, y = _check_samples(x, y, min_size=4)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"the linear estimator needs equal sample sizes, got x: {x.shape[0]} and "
                     f"y: {y.shape[0]} rows")
  s, terms = _linear_terms(kernel, x, y)
  h = jnp.sum(terms, axis=0)                                                # (half,)
  half = h.shape[0]
  scale = jnp.exp(s)
  out = LinearMMD2(scale * jnp.mean(h), scale * jnp.std(h, ddof=1) / np.sqrt(half))
  return _checks.poison_if_nonfinite(out, x, y, positive=_kernel_positive(kernel))


def log_mmd(x: Float[ArrayLike, "n d"], y: Float[ArrayLike, "m d"], *, kernel: Callable,
            fused: bool | None = None, block_size: int | None = None) -> Float[Array, ""]:
  """log MMD_k(P_hat, Q_hat) from the biased estimate, finite where MMD over/underflows.

  -inf when the two empirical measures have equal embeddings. ``fused`` and
  ``block_size`` as in :func:`mmd2`.
  """
  parts, x, y = _mmd2_parts(x, y, kernel, "biased", fused, block_size)
  out = 0.5 * (parts.log_shift + jnp.log(jnp.maximum(parts.value, 0.0)))
  return _checks.poison_if_nonfinite(out, x, y, positive=_kernel_positive(kernel))


def mmd(x: Float[ArrayLike, "n d"], y: Float[ArrayLike, "m d"], *, kernel: Callable,
        fused: bool | None = None, block_size: int | None = None) -> Float[Array, ""]:
  """MMD_k(P_hat, Q_hat) = sqrt(biased MMD^2): the RKHS distance of the empirical embeddings."""
  return jnp.exp(log_mmd(x, y, kernel=kernel, fused=fused, block_size=block_size))


# -- bandwidths -------------------------------------------------------------------


def median_bandwidth(x: Float[ArrayLike, "n d"], y: Float[ArrayLike, "m d"]) -> Float[Array, ""]:
  """Median heuristic: the median of |z_i - z_j| over pairs i < j of the pooled sample z = [x; y].

  Gretton et al. (2012), Section 8; Garreau, Jitkrittum, Kanagawa (2017),
  "Large sample analysis of the median heuristic". Distances are computed from
  differences, so the result is accurate for data far from the origin. It is
  0 when more than half of the pairs coincide; pass it to a kernel only if > 0.
  """
  x, y = _check_samples(x, y)
  z = jnp.concatenate([x, y])                                               # (n + m, d)
  n = z.shape[0]                                                            # >= 2
  i, j = np.triu_indices(n, 1)
  dists = jax.vmap(lambda a, b: _safe_norm_from_sq(_sq_dist(a, b)))(z[i], z[j])  # (n(n-1)/2,)
  return _checks.poison_if_nonfinite(jnp.median(dists), x, y)


def bandwidth_grid(x: Float[ArrayLike, "n d"], y: Float[ArrayLike, "m d"], *, num: int = 7,
                   log2_span: float = 3.0) -> Float[Array, " num"]:
  """Geometric bandwidth grid around the median heuristic, (num,).

      h_k = median_bandwidth(x, y) * 2^t_k,   t = linspace(-log2_span, log2_span, num)

  The usual grid for choosing or aggregating Gaussian bandwidths (e.g. Schrab
  et al., 2023, "MMD aggregated two-sample test").
  """
  if not isinstance(num, int) or isinstance(num, bool) or num < 1:
    raise ValueError(f"num must be a positive int, got {num!r}")
  h = median_bandwidth(x, y)
  span = _checks.scalar_param("log2_span", log2_span, h.dtype, allow_zero=True)
  t = jnp.linspace(-span, span, num) if num > 1 else jnp.zeros((1,), h.dtype)
  return h * jnp.exp2(t)


# -- permutation test -------------------------------------------------------------


class PermutationTest(NamedTuple):
  """Result of :func:`permutation_test`.

  Attributes:
    statistic: the MMD^2 estimate on the observed split.
    p_value: (1 + #{b : T_b >= T_obs}) / (B + 1), in {1/(B+1), ..., 1}.
  """
  statistic: jax.Array
  p_value: jax.Array


def _check_key(key):
  """A typed PRNG key (``jax.random.key``) or a raw uint32 key (``jax.random.PRNGKey``)."""
  if isinstance(key, (jax.Array, np.ndarray)):
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
      return key
    if key.dtype == np.uint32 and key.ndim == 1:
      return key
  raise TypeError(f"key must be one PRNG key (jax.random.key(seed)), got "
                  f"{type(key).__name__} {getattr(key, 'dtype', '')} "
                  f"{getattr(key, 'shape', '')}".rstrip())


def random_splits(key: PRNGKeyArray, n: int, m: int, num: int,
                  dtype=None) -> Float[Array, "num n_plus_m"]:
  """``num`` label vectors with exactly n ones among n + m entries, uniform over subsets, (num, N).

  Each row marks the n smallest of N = n + m i.i.d. uniform 32-bit draws
  (one sort per row; ties, probability ~N 2^-32 per row at the cut, are broken
  towards the lower index), so every one of the C(N, n) subsets is equally
  likely up to that tie rule. Cheaper than ``jax.random.permutation`` (one sort
  of the draws instead of several key-value sorts); a test checks the law.

  Args:
    key: PRNG key.
    n: size of the first group, n >= 1.
    m: size of the second group, m >= 0.
    num: number of label vectors (static).
    dtype: of the result (default: the default float dtype).

  Returns:
    (num, n + m) array of 0 and 1.
  """
  key = _check_key(key)
  for name, value, low in (("n", n, 1), ("m", m, 0), ("num", num, 1)):
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
        or value < low):
      raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
  big = n + m
  draws = jax.random.bits(key, (num, big), jnp.uint32)                      # (num, N)
  cut = jnp.sort(draws, axis=1)[:, n - 1:n]                                 # (num, 1)
  below, tied = draws < cut, draws == cut                                   # (num, N)
  missing = n - jnp.sum(below, axis=1, keepdims=True)                       # (num, 1), >= 1
  labels = below | (tied & (jnp.cumsum(tied, axis=1, dtype=jnp.int32) <= missing))
  return labels.astype(dtype if dtype is not None else jnp.result_type(float))


def permutation_test(x: Float[ArrayLike, "n d"], y: Float[ArrayLike, "m d"], *, kernel: Callable,
                     key: PRNGKeyArray, num_permutations: int = 199, estimator: str = "unbiased",
                     fused=None) -> PermutationTest:
  """Kernel two-sample permutation test of H0: P = Q with the MMD^2 statistic.

  One Gram matrix K of the pooled sample z = [x; y] (N = n + m points) serves
  every permutation: for a label vector with n ones (a) and m zeros (b),

      biased:   T = a^T K a / n^2 + b^T K b / m^2 - 2 a^T K b / (n m)
      unbiased: the same with K's diagonal replaced by 0 and n(n-1), m(m-1),

  computed for all B permutations at once from one matrix product K A (the
  kernel must be symmetric, as every kernel is). The label vectors are drawn
  by :func:`random_splits` (uniform over the C(N, n) splits). The p-value
  counts the observed split as one of the B + 1 equally likely ones, so it is
  never 0 and the test has level alpha exactly when alpha (B + 1) is an integer
  (Lehmann and Romano, "Testing Statistical Hypotheses", Thm. 15.2.1). As a
  Monte Carlo estimate of the exact permutation p-value p it has standard
  error sqrt(p (1 - p) / B) over keys (tested).

  Args:
    x: (n, d) sample from P, n >= 2 for the unbiased statistic.
    y: (m, d) sample from Q.
    kernel: a one-pair kernel.
    key: PRNG key for the permutations.
    num_permutations: B >= 1 (static).
    estimator: "unbiased" or "biased".
    fused: how the Gram matrix is built, as in :func:`mmd2` (default: the
      kernel's matrix form when it has one). The N x N Gram matrix is
      materialised here.

  Returns:
    PermutationTest(statistic, p_value).
  """
  if estimator not in ("biased", "unbiased"):
    raise ValueError(f"estimator must be 'biased' or 'unbiased' for the permutation test, got "
                     f"{estimator!r}")
  if (not isinstance(num_permutations, (int, np.integer)) or isinstance(num_permutations, bool)
      or num_permutations < 1):
    raise ValueError(f"num_permutations must be an int >= 1, got {num_permutations!r}")
  _log_factors_fn(kernel)
  pair_block = _pair_block_fn(kernel, fused)
  x, y = _check_samples(x, y, min_size=2 if estimator == "unbiased" else 1)
  n, m = x.shape[0], y.shape[0]
  z = jnp.concatenate([x, y])                                               # (N, d)
  c, l = pair_block(z, z)                                                   # (N, N) each
  if estimator == "unbiased":
    l = _offdiag(l, -jnp.inf)
    c = None if c is None else _offdiag(c, 0.0)
    wxx, wyy = 1.0 / (n * (n - 1)), 1.0 / (m * (m - 1))
  else:
    wxx, wyy = 1.0 / (n * n), 1.0 / (m * m)
  wxy = 2.0 / (n * m)
  shift = _shift(l)
  k = _times(c, jnp.exp(l - shift))                                         # (N, N)
  labels = jnp.concatenate([jnp.ones((1, n), k.dtype), jnp.zeros((1, m), k.dtype)], axis=1)
  a = jnp.concatenate([labels, random_splits(key, n, m, num_permutations, k.dtype)])  # (B+1, N)
  # One product K a serves all three blocks (K symmetric, b = 1 - a):
  # a^T K b = a^T K 1 - a^T K a,  b^T K b = 1^T K 1 - 2 a^T K 1 + a^T K a.
  ka = jnp.dot(a, k, precision=HIGHEST)                                     # (B + 1, N)
  aka = jnp.sum(ka * a, axis=1)                                             # (B + 1,)
  ak1 = jnp.sum(ka, axis=1)                                                 # (B + 1,)
  one_k_one = jnp.sum(k)
  stats = (wxx * aka + wyy * (one_k_one - 2.0 * ak1 + aka) - wxy * (ak1 - aka))  # (B + 1,)
  observed = stats[0]
  count = 1 + jnp.sum(stats[1:] >= observed)
  # A true division (correctly rounded, as (1 + count) / (B + 1) in NumPy): XLA on CPU turns
  # a division by a constant into a product with its rounded reciprocal.
  p_value = count.astype(k.dtype) / jax.lax.optimization_barrier(
      jnp.asarray(num_permutations + 1, k.dtype))
  statistic = jnp.exp(shift) * observed
  return _checks.poison_if_nonfinite(PermutationTest(statistic, p_value), x, y,
                                     positive=_kernel_positive(kernel))
