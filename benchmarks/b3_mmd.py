"""B3 MMD^2 (unbiased, Gaussian kernel) at n = m = 4096, d = 64, float64.

    MMD_u^2 = sum_{i!=j} k(x_i, x_j) / n(n-1) + sum_{i!=j} k(y_i, y_j) / m(m-1)
              - 2 sum_ij k(x_i, y_j) / nm,   k(a, b) = exp(-|a - b|^2 / (2 h^2))

(Gretton et al., 2012, JMLR 13, Eq. 3).

Ours: ``icl_kd.mmd.mmd2(x, y, kernel=gaussian_kernel(h), estimator="unbiased")``
jitted, with ``fused=True`` (the Gram blocks from one matmul each, by the
centred expansion) in float64 and float32, and with the default nested
``vmap`` of the one-pair kernel (float64, at n = 1024: it is much slower).
Baselines: NumPy with an explicit squared-distance matrix
|x_i|^2 + |y_j|^2 - 2 <x_i, y_j> (BLAS matmul), and
``scipy.spatial.distance.cdist(..., "sqeuclidean")``, each followed by the
same exp and sums. Target: the fused path >= 10x faster than cdist on CPU.

Scaling: the fused path (float64) over n = m = 256 .. 16384 (quick: .. 1024);
the exponent b of t ~ n^b is fitted by least squares on log t over the sizes
n >= 1024 (quick: n >= 512; below that, fixed per-call overheads flatten the
curve).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.distance import cdist

from benchmarks import harness
from icl_kd import mmd

NAME = "B3"
D = 64
BANDWIDTH = math.sqrt(D)


def samples(n: int, m: int, d: int, seed: int, dtype=jnp.float64):
  """x ~ N(0, I), y ~ N(0.1, I) in R^d."""
  kx, ky = jax.random.split(jax.random.key(seed))
  return (jax.random.normal(kx, (n, d), dtype),
          0.1 + jax.random.normal(ky, (m, d), dtype))


def ours_fused(x, y):
  return mmd.mmd2(x, y, kernel=mmd.gaussian_kernel(BANDWIDTH), estimator="unbiased", fused=True)


def ours_vmap(x, y):
  return mmd.mmd2(x, y, kernel=mmd.gaussian_kernel(BANDWIDTH), estimator="unbiased")


def _unbiased_from_sq(dxx: np.ndarray, dyy: np.ndarray, dxy: np.ndarray) -> tuple[float, float]:
  """(MMD_u^2, sum of |terms|) from the three squared-distance blocks."""
  g = lambda d2: np.exp(-d2 / (2.0 * BANDWIDTH ** 2))
  kxx, kyy, kxy = g(dxx), g(dyy), g(dxy)
  n, m = kxx.shape[0], kyy.shape[0]
  sxx = kxx.sum() - np.trace(kxx)
  syy = kyy.sum() - np.trace(kyy)
  sxy = kxy.sum()
  value = sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2.0 * sxy / (n * m)
  scale = sxx / (n * (n - 1)) + syy / (m * (m - 1)) + 2.0 * sxy / (n * m)
  return float(value), float(scale)


def numpy_sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """|a_i|^2 + |b_j|^2 - 2 <a_i, b_j>, clamped at 0."""
  d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
  return np.maximum(d2, 0.0)


def numpy_mmd2(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
  return _unbiased_from_sq(numpy_sq_dists(x, x), numpy_sq_dists(y, y), numpy_sq_dists(x, y))


def cdist_mmd2(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
  return _unbiased_from_sq(cdist(x, x, "sqeuclidean"), cdist(y, y, "sqeuclidean"),
                           cdist(x, y, "sqeuclidean"))


def flops(n: int, m: int, d: int) -> float:
  """Three Gram blocks: 2 d per pair (inner products), ~8 per pair for distance, scale, exp, sum."""
  pairs = n * n + m * m + n * m
  return float(pairs * (2 * d + 8))


def bytes_moved(n: int, m: int, d: int, itemsize: int = 8) -> float:
  """Samples read once; each Gram block written once and read once."""
  return float(itemsize * ((n + m) * d + 2 * (n * n + m * m + n * m)))


def _agreement(value: float, reference: float, scale: float) -> float:
  """|ours - reference| in units of the sum of the estimator's |terms|."""
  return abs(value - reference) / scale


def compare(n: int, seed: int, *, repeats: int, base_repeats: int) -> list[harness.Row]:
  """The fused path (float64 and float32) and the baselines at n = m."""
  x, y = samples(n, n, D, seed)
  xn, yn = np.asarray(x), np.asarray(y)
  t_cd = harness.time_call(lambda: cdist_mmd2(xn, yn), repeats=base_repeats)
  t_np = harness.time_call(lambda: numpy_mmd2(xn, yn), repeats=base_repeats)
  v_cd, scale = cdist_mmd2(xn, yn)
  v_np, _ = numpy_mmd2(xn, yn)
  rows = []
  for dtype in (jnp.float64, jnp.float32):
    name = jnp.dtype(dtype).name
    xs, ys = x.astype(dtype), y.astype(dtype)
    t, v, cost = harness.time_jit(ours_fused, xs, ys, repeats=repeats)
    agree = dict(mmd2_ours=float(v), mmd2_cdist=v_cd, mmd2_numpy=v_np, terms_scale=scale,
                 diff_vs_cdist=_agreement(float(v), v_cd, scale),
                 diff_numpy_vs_cdist=_agreement(v_np, v_cd, scale))
    fl, by = flops(n, n, D), bytes_moved(n, n, D, jnp.dtype(dtype).itemsize)
    f64 = dtype == jnp.float64
    rows.append(harness.Row(NAME, f"n=m={n} d={D} {name} fused", ours=t, baseline=t_cd,
                            baseline_name="scipy cdist (float64)", flops=fl, bytes=by,
                            target=">=10x", met=t_cd.median / t.median >= 10.0, float64=f64,
                            extra=dict(agreement=agree, xla_cost=cost)))
    rows.append(harness.Row(NAME, f"n=m={n} d={D} {name} fused", ours=t, baseline=t_np,
                            baseline_name="NumPy sq. dists (float64)", flops=fl, bytes=by,
                            float64=f64))
  return rows


def compare_vmap(n: int, seed: int, *, repeats: int) -> harness.Row:
  """The default nested-vmap path (exact differences) against cdist at a smaller n."""
  x, y = samples(n, n, D, seed)
  xn, yn = np.asarray(x), np.asarray(y)
  t_cd = harness.time_call(lambda: cdist_mmd2(xn, yn), repeats=repeats)
  t, v, _ = harness.time_jit(ours_vmap, x, y, repeats=repeats)
  v_cd, scale = cdist_mmd2(xn, yn)
  return harness.Row(NAME, f"n=m={n} d={D} float64 vmap (default)", ours=t, baseline=t_cd,
                     baseline_name="scipy cdist", flops=flops(n, n, D),
                     bytes=bytes_moved(n, n, D), float64=True,
                     extra=dict(agreement=dict(mmd2_ours=float(v), mmd2_cdist=v_cd,
                                               diff_vs_cdist=_agreement(float(v), v_cd, scale))))


def run(*, quick: bool, seed: int) -> list[harness.Row]:
  n = 512 if quick else 4096
  rows = compare(n, seed, repeats=3 if quick else 5, base_repeats=2)
  rows.append(compare_vmap(256 if quick else 1024, seed, repeats=2 if quick else 3))
  rows.append(scaling(quick=quick, seed=seed))
  return rows


def scaling(*, quick: bool, seed: int) -> harness.Row:
  sizes = [256, 512, 1024] + ([] if quick else [2048, 4096, 8192, 16384])
  times = {}
  for n in sizes:
    x, y = samples(n, n, D, seed)
    t, _, _ = harness.time_jit(ours_fused, x, y, repeats=3 if n <= 4096 else 1)
    times[n] = t
    harness.log(f"  B3 scaling n={n}: {t.median:.4g}s")
  fit_sizes = [n for n in sizes if n >= 1024] if not quick else sizes[1:]
  b, a = np.polyfit(np.log(fit_sizes), np.log([times[n].median for n in fit_sizes]), 1)
  big = sizes[-1]
  return harness.Row(NAME, f"scaling n=m={sizes[0]}..{big} d={D} fused", ours=times[big],
                     flops=flops(big, big, D), bytes=bytes_moved(big, big, D),
                     target="exponent ~2", met=None, float64=True,
                     extra=dict(fitted_exponent=float(b), fit_sizes=fit_sizes,
                                median_s={str(n): t.median for n, t in times.items()},
                                spread={str(n): t.spread for n, t in times.items()}))
