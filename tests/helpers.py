"""Instance builders shared by the tests (data only; no code under test)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import icl_kd


def make_instance(seed, n: int, m: int, d: int, d_k: int, d_v: int, dtype, log10_scale=0.0):
  """A random prompt whose largest |score| is 10**log10_scale (query attending to itself).

  ``seed`` and ``log10_scale`` may be traced (this is vmapped and jitted).
  """
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  params = icl_kd.init_params(d, d_k, d_v, key=k1, dtype=dtype)
  demos = jax.random.normal(k2, (n, d), dtype)
  prefix = jax.random.normal(k3, (m, d), dtype)
  query = jax.random.normal(k4, (d,), dtype)
  context = jnp.concatenate([demos, prefix, query[None]])
  raw = jnp.dot(jnp.dot(context, params.w_k.T), jnp.dot(params.w_q, query))
  target = jnp.asarray(10.0, dtype) ** jnp.asarray(log10_scale, dtype)
  w_q = params.w_q * (target / jnp.max(jnp.abs(raw)))
  return params._replace(w_q=w_q), demos, prefix, query


def c1_tolerance(dtype, max_abs_score):
  """THEORY.md C1: 1e-12 (float64) / 1e-5 (float32), times max(1, max|s|/10)."""
  base = 1e-12 if jnp.dtype(dtype) == jnp.float64 else 1e-5
  return base * jnp.maximum(1.0, max_abs_score / 10.0)
