"""C3 ``dw-step``: dW is a gradient step too, but only for the linear loss.

- ``dw-step-linear`` (identity): one step of the linear KD loss over the
  query-prefix tokens, of size M/D', adds exactly dW.
- ``dw-step-squared`` (measurement): the squared loss from W_0 with
  eta = M/(2D') adds dW - R; the value is ||R||_HS / ||dW||_HS, and
  ``extras.identity_error`` checks that the step is dW - R exactly.

A note on the measurement's maximum: ||R|| / ||dW|| is unbounded when dW is
tiny (a prefix whose scores are far below the demonstrations': dW ~ exp(-1000)
while R stays of order W_0's output), so its maximum over random prompts is
huge and says nothing wrong; the median is the number to read
(docs/THEORY.md, C3).

Tested by tests/test_kd.py and tests/test_claims.py; shown in figure F2.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from icl_kd import dual, kd
from icl_kd.claims.base import Claim
from icl_kd.claims.checks import IdentityCheck, Measurement, identity_tolerance

MAX_ERROR = 2.0
"""The largest dw-step-linear error the check can produce: the step and dW have the same
HS norm, so ||step - dW|| / ||dW|| <= 2."""
from icl_kd.claims.c1_decomposition import (PREFIXED, decompose_prompt, prompt_params,
                                            prompt_tail, sample_prompt)


def dw_step_increment(inst, bucket, out, kind: str) -> dual.DualWeights:
  """-eta grad L(W_0) over the prefix tokens: eta = M/D' (linear), M/(2D') (squared)."""
  tokens = prompt_tail(inst, bucket)
  m = tokens.shape[0]
  factor = 1.0 if kind == "linear" else 0.5
  log_eta = jnp.log(jnp.asarray(m * factor, out.log_partition.dtype)) - out.log_partition
  return kd.kd_step_increment(out.w0, prompt_params(inst), tokens, log_eta=log_eta, kind=kind)


def compute_linear(inst, bucket, shared) -> IdentityCheck:
  """C3 (linear loss): relative HS error of the step against dW."""
  inc = dw_step_increment(inst, bucket, shared, "linear")
  return IdentityCheck(dual.relative_hs_error(inc, shared.dw, aligned=True),
                       identity_tolerance(inst["w_q"].dtype, shared.max_abs_score),
                       max_error=MAX_ERROR)


class SquaredExtras(NamedTuple):
  identity_error: jax.Array     # ||step - (dW - R)|| / (||dW|| + ||R||): 0 to rounding
  log10_max_score: jax.Array


def log_residual_ratio(inst, bucket, out) -> jax.Array:
  """log(||R||_HS / ||dW||_HS) of C3's squared loss (kept in logs: it under/overflows)."""
  resid = kd.squared_step_residual(out.w0, prompt_params(inst), prompt_tail(inst, bucket))
  return resid.log_hs_norm() - out.dw.log_hs_norm()


def compute_squared(inst, bucket, shared) -> Measurement:
  """C3 (squared loss): value ||R|| / ||dW||, with the identity step == dW - R as an extra."""
  out = shared
  inc = dw_step_increment(inst, bucket, out, "squared")
  resid = kd.squared_step_residual(out.w0, prompt_params(inst), prompt_tail(inst, bucket))
  mismatch = dual.aligned_difference(dual.aligned_difference(out.dw, inc), resid)
  log_scale = jnp.logaddexp(out.dw.log_hs_norm(), resid.log_hs_norm())
  return Measurement(jnp.exp(resid.log_hs_norm() - out.dw.log_hs_norm()),
                     SquaredExtras(jnp.exp(mismatch.log_hs_norm() - log_scale),
                                   jnp.log10(out.max_abs_score)))


CLAIMS = (
    Claim(id="dw-step-linear", theory="C3",
          statement="one step of the linear KD loss, size M/D', adds dW exactly",
          buckets=PREFIXED, sample=sample_prompt, compute=compute_linear,
          prepare=decompose_prompt,
          tests=("tests/test_kd.py", "tests/test_claims.py"), figure="F2", group="prefixed"),
    Claim(id="dw-step-squared", theory="C3",
          statement="squared KD loss from W_0, eta = M/(2D'): adds dW - R; value = ||R||/||dW||",
          buckets=PREFIXED, sample=sample_prompt, compute=compute_squared,
          prepare=decompose_prompt,
          tests=("tests/test_kd.py", "tests/test_claims.py"), figure="F2", group="prefixed"),
)
