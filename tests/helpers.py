"""Instance builders shared by the tests (data only; no code under test).

The prompt and the tolerance are the claims layer's own (``icl_kd.claims``):
one definition for the checker, the figures and the tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from icl_kd import claims


def make_instance(seed, n: int, m: int, d: int, d_k: int, d_v: int, dtype, log10_scale=0.0):
  """A random prompt whose largest |score| is 10**log10_scale (query attending to itself).

  ``seed`` and ``log10_scale`` may be traced (this is vmapped and jitted).
  """
  target = jnp.asarray(10.0, dtype) ** jnp.asarray(log10_scale, dtype)
  p = claims.scaled_prompt(jax.random.key(seed), (n, m, d, d_k, d_v), dtype, max_abs_score=target)
  return p.params, p.demos, p.prefix, p.query


c1_tolerance = claims.identity_tolerance   # docs/THEORY.md, C1
