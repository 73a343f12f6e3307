"""C2 ``kd-step``: W_0 is one step of knowledge distillation (identity; the paper's Eq. 12).

One gradient step of L_D(W) = (1/N) sum_i ||W^V x_i - W phi(W^K x_i)||^2 from
W = 0 at eta* = N / (2 D') equals W_0 (docs/THEORY.md, C2). Checked in dual
form and against ``jax.grad`` of the primal loss on explicit positive random
features; the error is the larger of the two relative HS errors.

Tested by tests/test_kd.py and tests/test_claims.py; shown in figure F2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from icl_kd import dual, features, kd
from icl_kd.claims.base import Claim
from icl_kd.claims.checks import IdentityCheck, identity_tolerance

MAX_ERROR = 2.0
"""The largest C2 error the check can produce: W_1 and W_0 (and their primal images) each
have HS norm at most that of |W_0| (positive kernel, |W^V x| <= |W^V||x| coordinatewise)."""
from icl_kd.claims.c1_decomposition import PROMPTS, decompose_prompt, prompt_params, sample_prompt


def abs_weights(w0: dual.DualWeights, params, demos) -> dual.DualWeights:
  """|W_0|: W_0 with each value W^V x_i replaced by |W^V| |x_i| (the unit of C2's error)."""
  coeffs = jnp.dot(jnp.abs(demos), jnp.abs(params.w_v).T, precision=jax.lax.Precision.HIGHEST)
  return dual.DualWeights(coeffs, w0.anchors, w0.tau, w0.log_scale)


def compute(inst, bucket, shared) -> IdentityCheck:
  """C2 on one prompt: max(dual error, autodiff error) of W_1(eta*) against W_0, in units
  of |W_0| (see the module docstring)."""
  out = shared
  params = prompt_params(inst)
  w1 = kd.one_step_kd_weights(params, inst["demos"], log_eta=out.log_eta, tau=inst["tau"])
  unit = abs_weights(out.w0, params, inst["demos"])
  diff = dual.aligned_difference(w1, out.w0)
  dual_err = jnp.exp(diff.log_hs_norm() - unit.log_hs_norm())
  fm = features.PositiveRandomFeatures(inst["omega"], inst["tau"])
  zero = jnp.zeros((params.d_v, inst["omega"].shape[0]), inst["w_q"].dtype)
  grad = jax.grad(kd.kd_loss)(zero, params, inst["demos"], feature_map=fm)
  # Compared at the scale D' W_0 (so that eta* ~ exp(-1000) does not underflow).
  zero_scale = jnp.zeros_like(out.w0.log_scale)
  closed = dual.DualWeights(out.w0.coeffs, out.w0.anchors, out.w0.tau, zero_scale).to_primal(fm)
  closed_unit = dual.DualWeights(unit.coeffs, unit.anchors, unit.tau, zero_scale).to_primal(fm)
  step = -jnp.exp(out.log_eta + out.log_partition) * grad
  primal_err = jnp.linalg.norm(step - closed) / jnp.linalg.norm(closed_unit)
  return IdentityCheck(jnp.maximum(dual_err, primal_err),
                       identity_tolerance(inst["w_q"].dtype, out.max_abs_score),
                       max_error=MAX_ERROR)


CLAIMS = (
    Claim(id="kd-step", theory="C2",
          statement="one KD step at eta* = N/(2D') == W_0 (dual), == -eta* grad L_D(0) (autodiff)",
          buckets=PROMPTS, sample=sample_prompt, compute=compute, prepare=decompose_prompt,
          tests=("tests/test_kd.py", "tests/test_claims.py"), figure="F2", group="prompt"),
)
