"""B4 permutation test: 1000 permutations at n = m = 1024 (d = 64, float64, Gaussian kernel).

Ours: ``icl_kd.mmd.permutation_test`` (unbiased MMD^2, default settings): one
Gram matrix K of the pooled sample and one product K A for all B + 1 label
vectors A (drawn by ``icl_kd.mmd.random_splits``),

    T(a) = a^T K a / n(n-1) + b^T K b / m(m-1) - 2 a^T K b / nm,   b = 1 - a, diag K = 0.

Baseline: the same permutations (the same label vectors), each recomputing
the unbiased MMD^2 from scratch on the permuted split with the DEFAULT
``mmd2`` path (tiled matrix form) inside a jitted ``lax.map``: the cost
without the one-Gram trick. It is timed on a subset of the permutations and
scaled linearly (its cost is exactly linear in B). Target: ours >= 30x faster.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from icl_kd import mmd

NAME = "B4"
D = 64
BANDWIDTH = math.sqrt(D)
TARGET = 30.0


def kernel():
  return mmd.gaussian_kernel(BANDWIDTH)


def ours(x, y, key, num_permutations: int):
  return mmd.permutation_test(x, y, kernel=kernel(), key=key, num_permutations=num_permutations)


def recompute(x, y, labels):
  """Unbiased MMD^2 of the split each row of ``labels`` (first, N) marks (ones: the new x)."""
  n = x.shape[0]
  z = jnp.concatenate([x, y])                                               # (N, d)

  def one(a):
    order = jnp.argsort(1.0 - a, stable=True)                               # ones first
    zp = z[order]
    return mmd.mmd2(zp[:n], zp[n:], kernel=kernel(), estimator="unbiased")

  observed = mmd.mmd2(x, y, kernel=kernel(), estimator="unbiased")
  return observed, jax.lax.map(one, labels)                                 # (), (first,)


def permuted_statistics(x, y, key, num_permutations: int, first: int):
  """Unbiased MMD^2 recomputed for permutations 0..first-1 of the same draw as ``ours``.

  Permutation b is row b of ``mmd.random_splits(key, n, m, B)``, exactly as
  ``permutation_test`` draws it; the points labelled 1 form the new x.
  """
  labels = mmd.random_splits(key, x.shape[0], y.shape[0], num_permutations, x.dtype)
  return recompute(x, y, labels[:first])


def p_value(observed, stats) -> float:
  """(1 + #{b : T_b >= T_obs}) / (B + 1)."""
  stats = np.asarray(stats)
  return float((1 + np.sum(stats >= float(observed))) / (stats.shape[0] + 1))


def flops(n: int, m: int, d: int, b: int) -> float:
  """One Gram (N^2 (2 d + 8)) and the (B + 1, N) x (N, N) product (2 (B + 1) N^2)."""
  big = n + m
  return float(big * big * (2 * d + 8) + 2 * (b + 1) * big * big)


def bytes_moved(n: int, m: int, d: int, b: int, itemsize: int = 8) -> float:
  """Samples, the Gram written and read, the label matrix read and K A written."""
  big = n + m
  return float(itemsize * (big * d + 2 * big * big + 2 * (b + 1) * big))


def samples(n: int, seed: int):
  kx, ky = jax.random.split(jax.random.key(seed))
  return (jax.random.normal(kx, (n, D), jnp.float64),
          0.05 + jax.random.normal(ky, (n, D), jnp.float64))


def run(*, quick: bool, seed: int) -> list[harness.Row]:
  n, b = (256, 200) if quick else (1024, 1000)
  subset = b if quick else 20
  repeats = 3 if quick else 5
  x, y = samples(n, seed)
  key = jax.random.key(seed + 1)
  t_ours, res, cost = harness.time_jit(ours, x, y, key, b, static_argnums=(3,), repeats=repeats)
  # The label vectors are drawn outside the timed baseline: only the recomputation is
  # scaled by B / subset.
  labels = mmd.random_splits(key, n, n, b, x.dtype)[:subset]                 # (subset, N)
  t_base, (obs, stats), _ = harness.time_jit(recompute, x, y, labels, repeats=2)
  scale = b / subset
  ratio = t_ours.median / (t_base.median * scale)
  agree = dict(statistic_ours=float(res.statistic), statistic_baseline=float(obs),
               rel_diff_statistic=abs(float(res.statistic) - float(obs)) / abs(float(obs)),
               permutations_recomputed=subset)
  if subset == b:
    agree.update(p_value_ours=float(res.p_value), p_value_baseline=p_value(obs, stats))
  return [harness.Row(NAME, f"{b} permutations n=m={n} d={D} float64", ours=t_ours,
                      baseline=t_base, baseline_name="recompute per permutation", scaled=scale,
                      flops=flops(n, n, D, b), bytes=bytes_moved(n, n, D, b),
                      target=">=30x", met=1.0 / ratio >= TARGET, float64=True,
                      extra=dict(agreement=agree, xla_cost=cost))]
