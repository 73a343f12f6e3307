"""B3 MMD^2 (unbiased, Gaussian kernel) at n = m = 4096, d = 64, float64, and its scaling to 65,536.

    MMD_u^2 = sum_{i!=j} k(x_i, x_j) / n(n-1) + sum_{i!=j} k(y_i, y_j) / m(m-1)
              - 2 sum_ij k(x_i, y_j) / nm,   k(a, b) = exp(-|a - b|^2 / (2 h^2))

(Gretton et al., 2012, JMLR 13, Eq. 3).

Ours: the DEFAULT path, ``icl_kd.mmd.mmd2(x, y, kernel=gaussian_kernel(h))``
jitted: the three kernel sums over tiles of at most 512 x 512 pairs on CPU
(``mmd.DEFAULT_BLOCK_SIZE``; 4096 x 4096 on accelerators), each tile
from one matmul by the centred expansion |a|^2 + |b|^2 - 2 <a, b>, the x-x
and y-y sums on and above the diagonal only.
Also timed: ``fused=False`` (the nested vmap of the one-pair kernel, exact
differences; at n = 1024, it is slower) and, in full runs, one dense tile
(``block_size`` >= n: the Gram blocks materialised).

Baselines: NumPy with an explicit squared-distance matrix
|x_i|^2 + |y_j|^2 - 2 <x_i, y_j> (BLAS matmul), and
``scipy.spatial.distance.cdist(..., "sqeuclidean")``, each followed by the
same exp and sums, all in the same process. Target: the default path >= 10x
faster than cdist at n = m = 4096 in float64 on CPU (quick runs use n = 512
and do not judge it).

FLOPs count the pairs actually evaluated (half of the symmetric x-x and y-y
sums plus the cross sum), 2 d + 8 per pair (inner product; distance, scale,
exp, mask, sum); bytes count the sample rows each tile reads (the Gram blocks
stay in cache).

Scaling: the default path (float64) over n = m = 256 .. 65,536 (quick: ..
1024); the baseline only up to 8192 (above, its three dense n x n float64
matrices need 3 * 8 n^2 bytes: 6 GiB at 16,384, 96 GiB at 65,536). The
largest size runs in a child process, which reports its own peak resident
memory before and after the run (``VmHWM`` of /proc/self/status; ``ru_maxrss``
only where /proc is absent, since Linux carries it over from the parent).
XLA's memory plan (temporaries of the compiled program) is reported for every
size. The exponent b of t ~ n^b is
fitted by least squares on log t over n >= 1024 (quick: n >= 512).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.distance import cdist

from benchmarks import harness
from icl_kd import mmd

NAME = "B3"
D = 64
BANDWIDTH = math.sqrt(D)
TARGET = 10.0
GPU_TARGET_S = 0.5e-3   # GPU: the float32 unbiased MMD^2 at n = m = 4096 within 0.5 ms
BASELINE_MAX_N = 8192


def samples(n: int, m: int, d: int, seed: int, dtype=jnp.float64):
  """x ~ N(0, I), y ~ N(0.1, I) in R^d."""
  kx, ky = jax.random.split(jax.random.key(seed))
  return (jax.random.normal(kx, (n, d), dtype),
          0.1 + jax.random.normal(ky, (m, d), dtype))


def ours(x, y):
  """The default path of ``mmd2``."""
  return mmd.mmd2(x, y, kernel=mmd.gaussian_kernel(BANDWIDTH), estimator="unbiased")


def ours_fused(x, y):
  """The matrix form asked for explicitly (the default path for this kernel)."""
  return mmd.mmd2(x, y, kernel=mmd.gaussian_kernel(BANDWIDTH), estimator="unbiased", fused=True)


def ours_vmap(x, y):
  """The nested vmap of the one-pair kernel (exact differences), tiled likewise."""
  return mmd.mmd2(x, y, kernel=mmd.gaussian_kernel(BANDWIDTH), estimator="unbiased", fused=False)


def ours_dense(x, y):
  """One dense tile per sum: the Gram blocks materialised."""
  return mmd.mmd2(x, y, kernel=mmd.gaussian_kernel(BANDWIDTH), estimator="unbiased",
                  block_size=max(x.shape[0], y.shape[0]))


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


def _block(n: int, dtype) -> int:
  """The default tile side of ``mmd2`` on this backend."""
  return mmd.default_block_size(dtype)


def _tiles(n: int, block: int) -> tuple[int, int]:
  t = -(-n // block)
  return t, -(-n // t)


def pairs_evaluated(n: int, m: int, block: int) -> int:
  """Pairs in the tiles the default path computes: x-x and y-y on and above the diagonal."""
  (tn, sn), (tm, sm) = _tiles(n, block), _tiles(m, block)
  sym = lambda t, s: t * (t + 1) // 2 * s * s
  return sym(tn, sn) + sym(tm, sm) + tn * sn * tm * sm


def flops(n: int, m: int, d: int, block: int | None = None) -> float:
  """2 d (inner product) + 8 (distance, scale, mask, exp, sum) per evaluated pair."""
  pairs = pairs_evaluated(n, m, block) if block else n * n + m * m + n * m
  return float(pairs * (2 * d + 8))


def bytes_moved(n: int, m: int, d: int, itemsize: int = 8, block: int | None = None) -> float:
  """Tiled: each tile reads its two row blocks. Dense (``block`` None): samples once, each
  Gram block written and read once."""
  if block is None:
    return float(itemsize * ((n + m) * d + 2 * (n * n + m * m + n * m)))
  (tn, sn), (tm, sm) = _tiles(n, block), _tiles(m, block)
  tiles = tn * (tn + 1) // 2 + tm * (tm + 1) // 2 + tn * tm
  return float(itemsize * d * 2 * max(sn, sm) * tiles)


def _agreement(value: float, reference: float, scale: float) -> float:
  """|ours - reference| in units of the sum of the estimator's |terms|."""
  return abs(value - reference) / scale


def memory_plan(n: int, dtype=jnp.float64, fn=ours) -> dict:
  """XLA's memory plan of the compiled program (compiled, not run): bytes of temporaries."""
  spec = jax.ShapeDtypeStruct((n, D), dtype)
  plan = jax.jit(fn).lower(spec, spec).compile().memory_analysis()
  return dict(temp_bytes=int(plan.temp_size_in_bytes),
              argument_bytes=int(plan.argument_size_in_bytes))


def compare(n: int, seed: int, *, quick: bool, repeats: int, base_repeats: int
            ) -> list[harness.Row]:
  """The default path (float64 and float32) and the baselines at n = m, in one process."""
  x, y = samples(n, n, D, seed)
  xn, yn = np.asarray(x), np.asarray(y)
  t_cd = harness.time_call(lambda: cdist_mmd2(xn, yn), repeats=base_repeats)
  t_np = harness.time_call(lambda: numpy_mmd2(xn, yn), repeats=base_repeats)
  v_cd, scale = cdist_mmd2(xn, yn)
  v_np, _ = numpy_mmd2(xn, yn)
  rows = []
  variants = [(jnp.float64, ours, "default"), (jnp.float32, ours, "default")]
  if not quick:
    variants.append((jnp.float64, ours_dense, "one dense tile"))
  for dtype, fn, label in variants:
    name = jnp.dtype(dtype).name
    xs, ys = x.astype(dtype), y.astype(dtype)
    t, v, cost = harness.time_jit(fn, xs, ys, repeats=repeats)
    block = _block(n, dtype) if fn is ours else None
    agree = dict(mmd2_ours=float(v), mmd2_cdist=v_cd, mmd2_numpy=v_np, terms_scale=scale,
                 diff_vs_cdist=_agreement(float(v), v_cd, scale),
                 diff_numpy_vs_cdist=_agreement(v_np, v_cd, scale))
    fl = flops(n, n, D, block)
    by = bytes_moved(n, n, D, jnp.dtype(dtype).itemsize, block)
    f64 = dtype == jnp.float64
    judged = fn is ours and f64
    target = ""
    if judged:
      target = f">={TARGET:g}x" + (" (judged at n=4096 only)" if quick else "")
    met = None if (not judged or quick) else t_cd.median / t.median >= TARGET
    if harness.has_gpu() and fn is ours and not f64 and n == 4096:
      # on a GPU: the float32 estimate at n = 4096 within GPU_TARGET_S
      target, met = f"<= {GPU_TARGET_S * 1e3:g} ms on GPU", (None if quick
                                                             else t.median <= GPU_TARGET_S)
    extra = dict(agreement=agree, xla_cost=cost, block_size=block,
                 speedup_vs_cdist=t_cd.median / t.median,
                 speedup_vs_numpy=t_np.median / t.median)
    rows.append(harness.Row(NAME, f"n=m={n} d={D} {name} {label}", ours=t, baseline=t_cd,
                            baseline_name="scipy cdist (float64)", flops=fl, bytes=by,
                            target=target, met=met, float64=f64, extra=extra))
    rows.append(harness.Row(NAME, f"n=m={n} d={D} {name} {label}", ours=t, baseline=t_np,
                            baseline_name="NumPy sq. dists (float64)", flops=fl, bytes=by,
                            float64=f64))
  return rows


def compare_vmap(n: int, seed: int, *, repeats: int) -> harness.Row:
  """``fused=False`` (one-pair kernel, exact differences) against cdist at a smaller n."""
  x, y = samples(n, n, D, seed)
  xn, yn = np.asarray(x), np.asarray(y)
  t_cd = harness.time_call(lambda: cdist_mmd2(xn, yn), repeats=repeats)
  t, v, _ = harness.time_jit(ours_vmap, x, y, repeats=repeats)
  v_cd, scale = cdist_mmd2(xn, yn)
  block = _block(n, jnp.float64)
  return harness.Row(NAME, f"n=m={n} d={D} float64 fused=False (one-pair vmap)", ours=t,
                     baseline=t_cd, baseline_name="scipy cdist", flops=flops(n, n, D, block),
                     bytes=bytes_moved(n, n, D, 8, block), float64=True,
                     extra=dict(agreement=dict(mmd2_ours=float(v), mmd2_cdist=v_cd,
                                               diff_vs_cdist=_agreement(float(v), v_cd, scale))))


_CHILD = r"""
import json, resource, sys, time
import jax


def peak_kib():
  # VmHWM: this address space's peak resident set. ru_maxrss is not usable here: Linux
  # keeps it across exec, so a child started by a large parent reports the parent's peak.
  try:
    with open("/proc/self/status") as f:
      return int(next(l for l in f if l.startswith("VmHWM:")).split()[1])
  except (OSError, StopIteration):
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


jax.config.update("jax_enable_x64", True)
from benchmarks import b3_mmd
n, seed = int(sys.argv[1]), int(sys.argv[2])
x, y = b3_mmd.samples(n, n, b3_mmd.D, seed)
fn = jax.jit(b3_mmd.ours).lower(x, y).compile()
jax.block_until_ready(x)
before = peak_kib()
t0 = time.perf_counter()
v = float(fn(x, y))
t = time.perf_counter() - t0
after = peak_kib()
print(json.dumps(dict(seconds=t, mmd2=v, maxrss_before_kib=before, maxrss_after_kib=after)))
"""


def largest_in_child(n: int, seed: int) -> dict:
  """One run of the default path at n = m in a fresh process: time and peak memory (KiB)."""
  out = subprocess.run([sys.executable, "-c", _CHILD, str(n), str(seed)], cwd=harness.ROOT,
                       capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def scaling(*, quick: bool, seed: int) -> harness.Row:
  sizes = [256, 512, 1024] + ([] if quick else [2048, 4096, 8192, 16384, 65536])
  times, base, plans, child = {}, {}, {}, None
  for n in sizes:
    plans[str(n)] = memory_plan(n)
    if n == 65536:
      child = largest_in_child(n, seed)
      times[n] = harness.Timing(child["seconds"], child["seconds"], child["seconds"], 0.0, 1)
      harness.log(f"  B3 scaling n={n}: {child['seconds']:.4g}s (child process), peak RSS "
                  f"{child['maxrss_after_kib'] / 2**20:.2f} GiB")
      continue
    x, y = samples(n, n, D, seed)
    t, _, _ = harness.time_jit(ours, x, y, repeats=3 if n <= 4096 else 1)
    times[n] = t
    if n <= BASELINE_MAX_N and not quick:
      xn, yn = np.asarray(x), np.asarray(y)
      base[str(n)] = harness.time_call(lambda: cdist_mmd2(xn, yn), repeats=1,
                                       warmup=0 if n >= 4096 else 1).median
    harness.log(f"  B3 scaling n={n}: {t.median:.4g}s")
  fit_sizes = [n for n in sizes if n >= 1024] if not quick else sizes[1:]
  b, _ = np.polyfit(np.log(fit_sizes), np.log([times[n].median for n in fit_sizes]), 1)
  big = sizes[-1]
  extra = dict(fitted_exponent=float(b), fit_sizes=fit_sizes,
               median_s={str(n): t.median for n, t in times.items()},
               spread={str(n): t.spread for n, t in times.items()},
               cdist_median_s=base,
               cdist_omitted=(f"n > {BASELINE_MAX_N}: three dense n x n float64 matrices "
                              f"(6 GiB at 16384, 96 GiB at 65536)"),
               xla_memory_plan=plans)
  if child is not None:
    extra["largest_child"] = dict(child, peak_rss_gib=child["maxrss_after_kib"] / 2**20,
                                  rss_growth_gib=(child["maxrss_after_kib"]
                                                  - child["maxrss_before_kib"]) / 2**20)
  block = _block(big, jnp.float64)
  return harness.Row(NAME, f"scaling n=m={sizes[0]}..{big} d={D} default", ours=times[big],
                     flops=flops(big, big, D, block), bytes=bytes_moved(big, big, D, 8, block),
                     target="exponent ~2", met=None, float64=True, extra=extra)


def run(*, quick: bool, seed: int) -> list[harness.Row]:
  n = 512 if quick else 4096
  rows = compare(n, seed, quick=quick, repeats=3 if quick else 5, base_repeats=2)
  rows.append(compare_vmap(256 if quick else 1024, seed, repeats=2 if quick else 3))
  rows.append(scaling(quick=quick, seed=seed))
  return rows
