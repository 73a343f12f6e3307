"""Knowledge distillation: the losses and the one-step weights (claims C2, C3).

docs/THEORY.md C2 (``kd-step``): with the squared KD loss over the demonstrations

    L_D(W) = (1/N) sum_i || W^V x_i - W phi(W^K x_i) ||^2,

one gradient step from W = 0 with learning rate eta gives
W_1 = (2 eta / N) sum_i W^V x_i phi(W^K x_i)^T, which is W_0 at eta* = N/(2D').

docs/THEORY.md C3 (``dw-step``): the linear loss
L_lin(W) = -(1/M) sum_j <W^V x'_j, W phi(W^K x'_j)> over the query tokens adds
exactly dW in one step of size M/D'; the squared loss started at W_0 with
eta = M/(2D') adds dW - R.

The losses come in two forms: on explicit features (primal weights, a
(d_v, m) matrix, for ``jax.grad`` and optax) and as exact functional
gradients in dual form.

Validation (the library's convention, :mod:`icl_kd._checks`): shapes and
dtypes raise ValueError/TypeError, also under ``jit``; values seen only at run
time (a non-finite input, tau <= 0, eta <= 0) raise when called eagerly and
poison the result with NaN under a transformation.

Checked by ``proofs_check`` claims ``kd-step``, ``dw-step-linear`` and
``dw-step-squared`` (:mod:`icl_kd.claims.c2_kd_step`, :mod:`icl_kd.claims.c3_dw_step`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Real

from icl_kd import _checks
from icl_kd.attention import AttentionParams, _check_tokens, check_params
from icl_kd.dual import HIGHEST, DualWeights

LOSS_KINDS = ("squared", "linear")


def _check_kind(kind: str) -> str:
  if kind not in LOSS_KINDS:
    raise ValueError(f"kind must be one of {LOSS_KINDS}, got {kind!r}")
  return kind


_UNDERFLOW_HINT = ("an eta that underflowed to 0.0 (eta* = N / (2 D') of sharp attention, "
                   "e.g. decompose(...).eta) is given exactly by its logarithm: pass "
                   "log_eta=out.log_eta instead of eta=out.eta")


def _log_step(dtype, eta, log_eta) -> jax.Array:
  if (eta is None) == (log_eta is None):
    raise ValueError("give exactly one of eta (> 0) and log_eta")
  if log_eta is not None:
    return _checks.scalar_param("log_eta", log_eta, dtype, positive=False)
  try:
    return jnp.log(_checks.scalar_param("eta", eta, dtype))
  except ValueError as e:
    if "eta must be > 0, got 0.0" in str(e):
      raise ValueError(f"{e}; {_UNDERFLOW_HINT}") from None
    raise


_STEP = "log(eta) (eta > 0, or a finite log_eta)"


def _step_ok(log_step: jax.Array) -> jax.Array:
  """The step's log as a poison input: eta <= 0 (log -inf or NaN) or log_eta = +inf are invalid."""
  return jnp.where(jnp.isneginf(log_step), jnp.nan, log_step)


def one_step_kd_weights(params: AttentionParams, demos: Float[ArrayLike, "N d"], *,
                        eta: Real[ArrayLike, ""] | None = None,
                        log_eta: Real[ArrayLike, ""] | None = None,
                        tau: Real[ArrayLike, ""] = 1.0) -> DualWeights:
  """W_1 = (2 eta / N) sum_i W^V x_i phi(W^K x_i)^T, in dual form (C2).

  One gradient step of the squared KD loss from W = 0. At
  eta = eta* = N / (2 D') it equals ``decompose(...).w0`` exactly (claim
  ``kd-step``). Give ``log_eta`` instead of ``eta`` when eta underflows: for
  sharp attention eta* = N / (2 D') is below float64's smallest number and
  ``decompose(...).eta`` is 0.0, while ``decompose(...).log_eta`` is exact, so
  ``one_step_kd_weights(params, demos, log_eta=out.log_eta)`` works at every
  score scale (``eta=0.0`` is refused and the message says so).

  Args:
    params: AttentionParams.
    demos: (N, d) demonstrations, N >= 1.
    eta: learning rate > 0.
    log_eta: its logarithm, instead of ``eta`` (exactly one of the two).
    tau: temperature of the softmax kernel.

  Returns:
    DualWeights of W_1 (anchors W^K x_i). Eagerly, eta <= 0 or non-finite
    inputs raise ValueError; under jit/vmap the weights are NaN instead.
  """
  params = check_params(params)
  demos = _check_tokens("demos", demos, params.d, allow_empty=False)
  dtype = _checks.check_same_dtype(params=params.w_q, demos=demos)
  tau = _checks.scalar_param("tau", tau, dtype)
  log_step = _log_step(dtype, eta, log_eta)
  _checks.check_finite(demos=demos)
  n = demos.shape[0]
  values = jnp.dot(demos, params.w_v.T, precision=HIGHEST)                  # (N, d_v)
  keys = jnp.dot(demos, params.w_k.T, precision=HIGHEST)                    # (N, d_k)
  log_scale = jnp.log(jnp.asarray(2.0, dtype)) + log_step - jnp.log(jnp.asarray(n, dtype))
  out = DualWeights(values, keys, tau, log_scale)
  return _checks.poison_if_nonfinite(
      out, *params, demos, _step_ok(log_step), positive=(tau,), positive_names=("tau",),
      names=("params.w_q", "params.w_k", "params.w_v", "demos", _STEP))


def kd_loss(weights: Float[ArrayLike, "d_v m"], params: AttentionParams,
            inputs: Float[ArrayLike, "n d"], *,
            feature_map: Callable[[Float[Array, " d_k"]], Float[Array, " m"]],
            kind: str = "squared") -> Float[Array, ""]:
  """KD loss of the primal student f_S(x) = W phi_m(W^K x) on ``inputs`` (C2, C3).

      squared: (1/n) sum_i || W^V x_i - W phi_m(W^K x_i) ||^2
      linear:  -(1/n) sum_i < W^V x_i, W phi_m(W^K x_i) >

  Args:
    weights: (d_v, m) primal weights W.
    params: AttentionParams; W^V is the frozen teacher, W^K the student's key map.
    inputs: (n, d) tokens, n >= 1.
    feature_map: callable (d_k,) -> (m,), e.g. :func:`positive_random_features`.
    kind: "squared" or "linear".

  Differentiable with ``jax.grad`` in ``weights``; usable as an optax objective.
  Non-finite ``weights`` or ``inputs`` raise eagerly and give NaN under ``jit``.
  """
  _check_kind(kind)
  params = check_params(params)
  inputs = _check_tokens("inputs", inputs, params.d, allow_empty=False)
  weights = _checks.as_float_array("weights", weights, ndim=2)
  _checks.check_dim("weights", weights, 0, params.d_v, "d_v, the rows of params.w_v")
  _checks.check_same_dtype(params=params.w_k, inputs=inputs, weights=weights)
  _checks.check_finite(inputs=inputs, weights=weights)
  keys = jnp.dot(inputs, params.w_k.T, precision=HIGHEST)                   # (n, d_k)
  feats = jax.vmap(feature_map)(keys)                                       # (n, m)
  _checks.check_dim("weights", weights, 1, feats.shape[1], "m, the feature dimension")
  teacher = jnp.dot(inputs, params.w_v.T, precision=HIGHEST)                # (n, d_v)
  student = jnp.dot(feats, weights.T, precision=HIGHEST)                    # (n, d_v)
  if kind == "squared":
    loss = jnp.mean(jnp.sum((teacher - student) ** 2, axis=-1))
  else:
    loss = -jnp.mean(jnp.sum(teacher * student, axis=-1))
  return _checks.poison_if_nonfinite(
      loss, *params, inputs, weights,
      names=("params.w_q", "params.w_k", "params.w_v", "inputs", "weights"))


def kd_step_dual(weights: DualWeights, params: AttentionParams, inputs: Float[ArrayLike, "n d"],
                 *, eta: Real[ArrayLike, ""] | None = None,
                 log_eta: Real[ArrayLike, ""] | None = None,
                 kind: str = "squared") -> DualWeights:
  """One exact functional gradient step W - eta grad L(W), in dual form (C2, C3).

  The functional gradients of the losses of :func:`kd_loss` (with the exact
  phi) are dual weights anchored at the keys k_i = W^K x_i:

      squared: grad = -(2/n) sum_i (W^V x_i - W phi(k_i)) phi(k_i)^T
      linear:  grad = -(1/n) sum_i  W^V x_i phi(k_i)^T

  so the step appends n anchors to ``weights``. Give ``log_eta`` when eta
  under- or overflows (eta = M/(2D') at scores of 1e3).

  Returns:
    The new weights; its last n anchors are the step (see :func:`kd_step_increment`).
  """
  return weights + kd_step_increment(weights, params, inputs, eta=eta, log_eta=log_eta,
                                     kind=kind)


def kd_step_increment(weights: DualWeights, params: AttentionParams,
                      inputs: Float[ArrayLike, "n d"], *, eta: Real[ArrayLike, ""] | None = None,
                      log_eta: Real[ArrayLike, ""] | None = None,
                      kind: str = "squared") -> DualWeights:
  """-eta grad L(W) alone, in dual form with anchors W^K x_i (see :func:`kd_step_dual`)."""
  _check_kind(kind)
  params = check_params(params)
  inputs = _check_tokens("inputs", inputs, params.d, allow_empty=False)
  dtype = _checks.check_same_dtype(params=params.w_q, inputs=inputs)
  if weights.d_v != params.d_v or weights.d_k != params.d_k:
    raise ValueError(f"weights act on (d_v, d_k) = ({weights.d_v}, {weights.d_k}); params "
                     f"need ({params.d_v}, {params.d_k})")
  log_step = _log_step(dtype, eta, log_eta)
  _checks.check_finite(inputs=inputs)
  n = inputs.shape[0]
  keys = jnp.dot(inputs, params.w_k.T, precision=HIGHEST)                   # (n, d_k)
  teacher = jnp.dot(inputs, params.w_v.T, precision=HIGHEST)                # (n, d_v)
  if kind == "squared":
    student = jax.vmap(weights.apply)(keys)                                 # (n, d_v)
    coeffs, factor = teacher - student, 2.0
  else:
    coeffs, factor = teacher, 1.0
  log_scale = log_step + jnp.log(jnp.asarray(factor / n, dtype))
  out = DualWeights(coeffs, keys, weights.tau, log_scale)
  return _checks.poison_if_nonfinite(
      out, *params, inputs, _step_ok(log_step), positive=(weights.tau,),
      names=("params.w_q", "params.w_k", "params.w_v", "inputs", _STEP),
      positive_names=("weights.tau",))


def squared_step_residual(w0: DualWeights, params: AttentionParams,
                          tokens: Float[ArrayLike, "M d"]) -> DualWeights:
  """R = (1/D') sum_j f_S(x'_j; W_0) phi(W^K x'_j)^T of claim C3, in closed form.

  ``w0`` is ``decompose(...).w0`` (its log_scale is -log D') and ``tokens`` are
  the tokens that make dW (the prefix, then the query when it attends to
  itself). The squared-loss step from W_0 with eta = M/(2D') adds dW - R.
  """
  params = check_params(params)
  tokens = _check_tokens("tokens", tokens, params.d, allow_empty=False)
  _checks.check_finite(tokens=tokens)
  keys = jnp.dot(tokens, params.w_k.T, precision=HIGHEST)                   # (M, d_k)
  student = jax.vmap(w0.apply)(keys)                                        # (M, d_v)
  out = DualWeights(student, keys, w0.tau, w0.log_scale)
  return _checks.poison_if_nonfinite(
      out, *params, tokens, positive=(w0.tau,), positive_names=("w0.tau",),
      names=("params.w_q", "params.w_k", "params.w_v", "tokens"))
