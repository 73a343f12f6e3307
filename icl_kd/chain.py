"""The theory's chain from demonstrations to answer, measured on one head (docs/THEORY.md E7).

For a candidate demonstration set S and a target sample T (both samples of
tokens as one head reads them) at a fixed learning rate eta:

    link 1  MMD(S, T)  ->  bias ||W_0(S) - W_0(T)||_HS           (C5: thm4.1-identity / -bound)
    link 2  bias       ->  output gap ||dW phi(z)|| at a query z  (C6: thm4.2-prediction)
    link 3  output gaps (summed over heads) -> the answer          (measured by the caller)

with W_0(X) = c eta (1/|X|) sum_{x in X} W^V x phi(W^K x)^T (c = 2, the eq12
convention) and dW = W_0(S) - W_0(T), both exact in dual form.
:func:`chain_measures` returns, for one (set, head), everything a report of
the chain needs:

- MMD^2(S, T) in the four kernels of :data:`icl_kd.selection.KERNELS` by both
  estimators, and the squared RKHS norm of T's embedding in each (to state an
  MMD^2 relative to the target's size);
- the bias, and the two exact right sides of C5: c eta MMD_kV (biased; the
  identity: equal to the bias) and c eta ||W^V||_op MMD_kx (biased; the proved
  bound ``thm4.1-bound``: never below it);
- log(lhs/rhs) of the paper's literal Theorem 4.1 under each kernel reading
  (the right sides of ``bounds.literal_readings``: gaussian at the median
  bandwidth, softmax, normalised, tv) under eq12; under the "half" convention
  every ratio is exactly half of it;
- at each query z = W^Q x': ||dW phi(z)|| and ||W_0(T) phi(z)|| (their ratio is
  the output gap relative to the target's own output, free of eta).

Samples may be padded with masks, so that sets of many sizes (a language
model's demonstration lines differ in length) share one compiled program; the
results equal those of ``bounds.distillation_bias``, ``bounds.literal_readings``
and ``mmd.mmd2`` on the valid rows (tests/test_chain.py).

Every quantity that can overflow is a logarithm. The caller fixes eta (every
ratio and every rank within one head is independent of it), the support of the
normalised kernel and the Gaussian's bandwidth, so that all sets of one trial
are measured in the same kernels.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from icl_kd import _checks, bounds, kd, selection, tolerances
from icl_kd import mmd as mmd_lib
from icl_kd.attention import AttentionParams, check_params
from icl_kd.dual import HIGHEST, DualWeights

READINGS = ("gaussian", "softmax", "normalised", "tv")
"""The literal readings of Theorem 4.1 measured on every (set, head), in this order
(the readings of :data:`icl_kd.bounds.READINGS`; their claims are ``thm4.1-literal-<reading>``)."""

CONVENTION = "eq12"
"""The convention of every bias here (c = 2, the paper's Eq. 12); literal ratios under
"half" are these divided by 2."""


class ChainMeasures(NamedTuple):
  """The chain on one (set, head); see the module docstring.

  Attributes:
    mmd2: (K, E) MMD^2(S, T), kernels :data:`icl_kd.selection.KERNELS` by estimators
      :data:`icl_kd.selection.ESTIMATORS` (unbiased first).
    log_target_norm2: (K,) log ||mu_T||^2 in each kernel, (1/m^2) sum_{t,t'} k(t, t') (the
      biased mean of T's Gram; NaN where it is <= 0, impossible for these PSD kernels).
    log_bias: log ||W_0(S) - W_0(T)||_HS (eq12, the given eta).
    log_identity_rhs: log(c eta MMD_kV(S, T)), biased: equals ``log_bias`` (thm4.1-identity).
    identity_residual: |bias^2 - identity_rhs^2| over the cancelled terms (~(n + m) eps).
    log_bound_rhs: log(c eta ||W^V||_op MMD_kx(S, T)), biased: >= ``log_bias`` (thm4.1-bound).
    log_literal_ratio: (R,) log(lhs / rhs) of the literal form per :data:`READINGS` (eq12).
    log_target_weight: log ||W_0(T)||_HS.
    log_output_gap: (Q,) log ||dW phi(W^Q x'_q)|| at each query.
    log_target_output: (Q,) log ||W_0(T) phi(W^Q x'_q)||.
    log_bias_floor: log of the float64 resolution of the bias: sqrt((n + m) eps) times
      the root of its cancelled terms (c^2 eta^2 sum |k_V| weights). A bias below it is
      rounding noise of a cancellation (identical huge-key tokens in S and T), and so is
      any comparison of it with a bound: such an instance is "unresolved".
  """
  mmd2: jax.Array
  log_target_norm2: jax.Array
  log_bias: jax.Array
  log_identity_rhs: jax.Array
  identity_residual: jax.Array
  log_bound_rhs: jax.Array
  log_literal_ratio: jax.Array
  log_target_weight: jax.Array
  log_output_gap: jax.Array
  log_target_output: jax.Array
  log_bias_floor: jax.Array


def _log_norm_apply(w, z: jax.Array) -> jax.Array:
  """log ||W phi(z)|| of dual weights, the sum over anchors taken in log space."""
  logs = w.log_kernel(z) + w.log_scale                                      # (n,)
  top = jnp.max(logs)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  v = jnp.dot(jnp.exp(logs - top), w.coeffs, precision=HIGHEST)             # (d_v,)
  return top + jnp.log(jnp.linalg.norm(v))


def _log_mmd(parts: selection.MMD2Parts) -> jax.Array:
  """log MMD from biased parts (-inf at 0)."""
  return 0.5 * (parts.log_shift + jnp.log(jnp.maximum(parts.value, 0.0)))


def _distilled(params, x, mask, log_eta, tau):
  """W_0 = c eta (1/n) sum_{valid i} W^V x_i phi(W^K x_i)^T (eq12, c = 2) in dual form; the
  padded rows get coefficient 0 (``kd.one_step_kd_weights`` rescaled to the valid count)."""
  rows = x.shape[0]
  n = jnp.sum(mask)
  w = kd.one_step_kd_weights(params, x, log_eta=log_eta + jnp.log(rows / n), tau=tau)
  return DualWeights(w.coeffs * mask[:, None], w.anchors, w.tau, w.log_scale)


def _masked_total_variation(x_p, x_q, mp, mq) -> jax.Array:
  """||P_hat - Q_hat||_1 of the valid rows (:func:`icl_kd.bounds.total_variation`, padded)."""
  z = jnp.concatenate([x_p, x_q])
  valid = jnp.concatenate([mp, mq])
  w = jnp.concatenate([mp / jnp.sum(mp), -mq / jnp.sum(mq)])
  same = jnp.all(z[:, None, :] == z[None, :, :], axis=-1) & (valid[:, None] > 0) & (
      valid[None, :] > 0)
  net = jnp.dot(same.astype(z.dtype), w, precision=HIGHEST)
  mult = jnp.maximum(jnp.sum(same, axis=1), 1).astype(z.dtype)
  return jnp.sum(valid * jnp.abs(net) / mult)


def chain_measures(params: AttentionParams, s, t, queries, *, tau, eta, support, bandwidth,
                   gaussian_s=None, gaussian_t=None, s_mask=None, t_mask=None,
                   support_mask=None, gaussian_s_mask=None, gaussian_t_mask=None
                   ) -> ChainMeasures:
  """Every link of the chain on one head, for a set S and a target T (docs/THEORY.md E7).

  Samples may be padded (the ``*_mask`` arguments mark the valid rows; pad with copies
  of valid rows), so that sets of many sizes share one compiled program; every
  quantity is that of the valid rows, and equals ``bounds.distillation_bias``,
  ``bounds.literal_readings`` and ``mmd.mmd2`` on them (tested).

  Args:
    params: the head (W^Q, W^K, W^V) acting on tokens of width d.
    s: (n, d) the candidate set's tokens (>= 2 valid). t: (m, d) the target's (>= 2 valid).
    queries: (Q, d) query tokens x' (the head reads z = W^Q x').
    tau: the head's temperature. eta: the fixed learning rate (> 0).
    support: (p, d) the points over which the normalised kernel's M_x, M_phi are taken
      (the same for every set of a trial); ``support_mask`` its valid rows.
    bandwidth: the Gaussian kernel's bandwidth (the same for every set of a trial).
    gaussian_s, gaussian_t: what the Gaussian kernel reads instead of s and t (e.g. the
      inputs of regression tokens, or one pooled state per line); default s and t, with
      their masks.
    s_mask, t_mask, support_mask, gaussian_s_mask, gaussian_t_mask: valid rows (None: all).

  Returns:
    ChainMeasures. Jittable and vmappable over sets and heads.
  """
  params = check_params(params)
  s = _checks.as_float_array("s", s, ndim=2)
  t = _checks.as_float_array("t", t, ndim=2)
  queries = _checks.as_float_array("queries", queries, ndim=2)
  for name, arr in (("s", s), ("t", t)):
    if arr.shape[0] < 2 or arr.shape[1] != params.d:
      raise ValueError(f"{name} must have shape (>= 2, {params.d}), got {arr.shape}")
  if queries.shape[1] != params.d:
    raise ValueError(f"queries must have shape (Q, {params.d}), got {queries.shape}")
  dt = s.dtype
  ms = selection.row_mask("s_mask", s_mask, s.shape[0], dt)
  mt = selection.row_mask("t_mask", t_mask, t.shape[0], dt)
  if gaussian_s is None:
    gs, gt, mgs, mgt = s, t, ms, mt
  else:
    gs = _checks.as_float_array("gaussian_s", gaussian_s, ndim=2)
    gt = _checks.as_float_array("gaussian_t", gaussian_t, ndim=2)
    mgs = selection.row_mask("gaussian_s_mask", gaussian_s_mask, gs.shape[0], dt)
    mgt = selection.row_mask("gaussian_t_mask", gaussian_t_mask, gt.shape[0], dt)
  support = _checks.as_float_array("support", support, ndim=2)
  if support_mask is not None:
    # rows outside the mask are replaced by a valid row: they then change no maximum
    first = jnp.argmax(jnp.asarray(support_mask))
    support = jnp.where(jnp.asarray(support_mask)[:, None], support, support[first][None, :])
  tau = _checks.scalar_param("tau", tau, dt)
  log_eta = jnp.log(_checks.scalar_param("eta", eta, dt))
  log_c = math.log(bounds.convention_factor(CONVENTION))

  kernels = selection.theory_kernels(params, tau=tau, support=support, bandwidth=bandwidth)
  samples = {name: (gs, gt, mgs, mgt) if name == "gaussian" else (s, t, ms, mt)
             for name in kernels}

  def parts(name, k, est):
    a, b, ma, mb = samples[name]
    return selection.masked_mmd2_parts(a, b, kernel=k, estimator=est, x_mask=ma, y_mask=mb)

  mmd2 = jnp.stack([jnp.stack([jnp.exp(p.log_shift) * p.value for p in
                               (parts(n, k, e) for e in selection.ESTIMATORS)])
                    for n, k in kernels.items()])

  def log_mean_gram(k, b, mb):
    g, sh = selection.sum_gram(k, b, b)
    mean = jnp.sum(jnp.outer(mb, mb) * g) / jnp.sum(mb) ** 2
    return jnp.where(mean > 0, jnp.log(jnp.where(mean > 0, mean, 1.0)) + sh, jnp.nan)

  log_target = jnp.stack([log_mean_gram(k, samples[n][1], samples[n][3])
                          for n, k in kernels.items()])

  # C5: the bias in dual form, its identity and its proved bound (biased MMDs).
  w_s = _distilled(params, s, ms, log_eta, tau)
  w_t = _distilled(params, t, mt, log_eta, tau)
  gap = w_s - w_t
  log_bias = gap.log_hs_norm()
  pv = parts("k_V", kernels["k_V"], "biased")
  px = parts("k_x", kernels["k_x"], "biased")
  value_norm = jnp.linalg.norm(params.w_v, 2)
  log_identity = log_c + log_eta + _log_mmd(pv)
  log_bound = log_c + log_eta + jnp.log(value_norm) + _log_mmd(px)
  log_scale = 2.0 * (log_c + log_eta) + pv.log_shift + jnp.log(pv.abs_value)
  safe = jnp.where(jnp.isfinite(log_scale), log_scale, 0.0)
  residual = jnp.abs(jnp.exp(2.0 * log_bias - safe) - jnp.exp(2.0 * log_identity - safe))
  eps = jnp.finfo(dt).eps
  log_floor = 0.5 * (log_scale + jnp.log((jnp.sum(ms) + jnp.sum(mt)) * eps))

  # the literal form eta M_V M_x M_phi D(S, T) under each reading (eq12; no c on the right)
  both = jnp.concatenate([s, t])
  valid = jnp.concatenate([ms, mt]) > 0
  keys = jnp.dot(both, params.w_k.T, precision=HIGHEST)
  m_x = jnp.max(jnp.where(valid, jnp.linalg.norm(both, axis=1), 0.0))
  log_m_phi = jnp.max(jnp.where(valid, jnp.sum(keys * keys, axis=1), -jnp.inf)) / (2.0 * tau)
  log_const = log_eta + jnp.log(value_norm) + jnp.log(m_x) + log_m_phi
  h = selection.masked_median_bandwidth(s, t, x_mask=ms, y_mask=mt)
  gauss = selection.masked_mmd2_parts(s, t, kernel=mmd_lib.GaussianKernel(jnp.where(h > 0, h, 1.0)),
                                      estimator="biased", x_mask=ms, y_mask=mt)
  soft = selection.masked_mmd2_parts(jnp.dot(s, params.w_k.T, precision=HIGHEST),
                                     jnp.dot(t, params.w_k.T, precision=HIGHEST),
                                     kernel=mmd_lib.ExpKernel(tau), estimator="biased",
                                     x_mask=ms, y_mask=mt)
  tv = _masked_total_variation(s, t, ms, mt)
  rhs = {"gaussian": jnp.where(h > 0, log_const + _log_mmd(gauss), jnp.nan),
         "softmax": log_const + _log_mmd(soft),
         "normalised": log_eta + jnp.log(value_norm) + _log_mmd(px),
         "tv": log_const + jnp.log(tv)}
  ratios = jnp.stack([log_bias - rhs[r] for r in READINGS])

  # C6: the output gap at each query, and the target's own output there
  z = jnp.dot(queries, params.w_q.T, precision=HIGHEST)                     # (Q, d_k)
  log_gap = jax.vmap(lambda q: _log_norm_apply(gap, q))(z)
  log_out = jax.vmap(lambda q: _log_norm_apply(w_t, q))(z)
  return ChainMeasures(mmd2=mmd2, log_target_norm2=log_target, log_bias=log_bias,
                       log_identity_rhs=log_identity, identity_residual=residual,
                       log_bound_rhs=log_bound, log_literal_ratio=ratios,
                       log_target_weight=w_t.log_hs_norm(), log_output_gap=log_gap,
                       log_target_output=log_out, log_bias_floor=log_floor)


BOUND_SLACK = tolerances.bound_slack(jnp.float64)
"""A bound holds on an instance when lhs <= rhs (1 + BOUND_SLACK) (float64 rounding; the
rule of docs/THEORY.md's "bound" kind, :func:`icl_kd.tolerances.bound_slack`)."""


def bound_violated(log_lhs, log_rhs) -> jax.Array:
  """True where lhs > rhs (1 + :data:`BOUND_SLACK`), from logarithms (NaN counts as violated)."""
  ok = jnp.asarray(log_lhs) <= jnp.asarray(log_rhs) + jnp.log1p(BOUND_SLACK)
  return ~ok


def resolved(log_bias, log_bias_floor) -> jax.Array:
  """True where the bias lies above its float64 resolution (:class:`ChainMeasures`)."""
  return jnp.asarray(log_bias) > jnp.asarray(log_bias_floor)
