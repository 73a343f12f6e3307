"""C7 ``lr-proxy``: what D' does (eta* = N/(2D'), the attention entropy, their limits).

The checked statement is the entropy sandwich of every softmax,

    log D' - max_j s_j <= H(p) <= log n,

reported with D', eta* and H together (``extras``) so that sharp and flat
attention can be compared on the same instances; ``events.entropy_above_log_n``
counts instances whose entropy exceeds log n (never, when the code is right).
Both inequalities hold by softmax algebra (docs/THEORY.md, C7): a consistency
check of the implementation, not evidence about the paper.

Tested by tests/test_attention.py and tests/test_claims.py; shown in figure F2.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from icl_kd.claims.base import Claim
from icl_kd.claims.checks import ConsistencyCheck, bound_slack
from icl_kd.claims.c1_decomposition import PROMPTS, decompose_prompt, sample_prompt


class LrProxyExtras(NamedTuple):
  log_partition: jax.Array   # log D'
  log_eta: jax.Array         # log eta* = log N - log 2 - log D'
  entropy: jax.Array         # H(p), nats
  log10_max_score: jax.Array


class LrProxyEvents(NamedTuple):
  entropy_above_log_n: jax.Array


def compute(inst, bucket, shared) -> ConsistencyCheck:
  """log(log D' - max_j s_j) <= log H(p), with H(p) <= log n counted as an event."""
  out = shared
  n_ctx = out.scores.shape[0]
  gap = out.log_partition - jnp.max(out.scores)          # in [0, log n]
  # H >= 0; a rounding-level negative entropy (float32, sharp attention) counts as 0
  return ConsistencyCheck(jnp.log(jnp.maximum(gap, 0.0)), jnp.log(jnp.maximum(out.entropy, 0.0)),
                    LrProxyExtras(out.log_partition, out.log_eta, out.entropy,
                                  jnp.log10(out.max_abs_score)),
                    LrProxyEvents(out.entropy > math.log(n_ctx)
                                  * (1 + bound_slack(out.entropy.dtype))))


CLAIMS = (
    Claim(id="lr-proxy", theory="C7",
          statement="log D' - max_j s_j <= H(attention) <= log n; D', eta*, H reported together",
          buckets=PROMPTS, sample=sample_prompt, compute=compute, prepare=decompose_prompt,
          tests=("tests/test_attention.py", "tests/test_claims.py"), figure="F2",
          group="prompt"),
)
