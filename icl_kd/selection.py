"""Choosing demonstrations: MMD-greedy, retrieval and random rules, and the kernels they use.

docs/THEORY.md E1, E5, E7. By C5 (``thm4.1``) the bias of the distilled
weights, ||W_0(S) - W_0(T)||_HS = c eta MMD_kV(S, T), is an MMD between the
demonstrations S and a target sample T in the distillation kernel of the
head's own key and value maps. A selection rule that follows the theory
therefore chooses S to make an MMD to T small. This module is the one home of
the rules (the synthetic experiments E1, E6, E7 and the language-model
experiment call it) and of the kernels the theory names:

    normalised  k_x(x, y) / (M_x M_phi)^2, M_x = sup |x|, M_phi = sup exp(|W^K x|^2 / (2 tau))
                over a fixed support: bounded by 1 there; the proved reading of Theorem 4.1
                (``thm4.1-literal-normalised`` is ``thm4.1-bound`` rewritten)
    k_V         <W^V x, W^V y> exp(<W^K x, W^K y> / tau)   (fixed eta; the identity's kernel)
    k_x         <x, y>         exp(<W^K x, W^K y> / tau)   (fixed eta; the literal softmax reading)
    gaussian    exp(-|x - y|^2 / (2 h^2))                   (a kernel the theory does not name)

Estimators (:data:`ESTIMATORS`): ``"unbiased"`` (the U-statistic, the
default) and ``"biased"`` (the V-statistic, the exact MMD of the empirical
measures, hence the exact C5 bias). The biased one reads the Gram diagonal,
k_V(x, x) = |W^V x|^2 exp(|W^K x|^2 / tau): on Gaussian inputs these terms
have infinite mean as soon as an eigenvalue of W^K^T W^K exceeds tau/2, and
the statistic is then dominated by the few largest keys; the unbiased one
never reads the diagonal.

Rules (each a :class:`Rule`, with an ``oracle`` flag: a rule that sees the
target's labels or knows the task is an oracle, not a deployable selector):

- :func:`mmd_greedy`: add, one at a time, the candidate that makes the MMD^2 of
  the chosen set to the target smallest (either estimator);
- :func:`greedy_from_gram`: the same on candidates that are groups of tokens
  (a demonstration line of a language model), from their summed Gram blocks
  (:func:`grouped_gram`);
- :func:`retrieval`: the queries take turns adding their nearest unchosen candidate;
- :func:`random_choice`: uniformly without replacement, optionally among a subset.

Every function is jittable (``k`` and ``num_groups`` static); kernels are the
one-pair kernels of :mod:`icl_kd.mmd` (or a sequence of them, summed: the
heads of a layer), evaluated in log space.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from icl_kd import _checks
from icl_kd import mmd as mmd_lib
from icl_kd.attention import AttentionParams, check_params
from icl_kd.dual import HIGHEST

ESTIMATORS = ("unbiased", "biased")
"""The two quadratic-time MMD^2 estimators every report shows (unbiased first: the default)."""

KERNELS = ("normalised", "k_V", "k_x", "gaussian")
"""The kernels every report shows, in this order (see the module docstring)."""


class Rule(NamedTuple):
  """A demonstration-selection rule as reports name it.

  Attributes:
    name: the rule's id in tables and JSON.
    oracle: True when the rule sees what a deployed selector cannot (the target's
      labels, or which task the query belongs to).
    description: one line.
  """
  name: str
  oracle: bool
  description: str


def _check_estimator(estimator: str) -> str:
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
  return estimator


def _check_k(k, n: int, what: str = "the pool size") -> int:
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
    raise ValueError(f"k must be an int in [1, {n}] ({what}), got {k!r}")
  return k


def as_kernels(kernel) -> tuple:
  """``kernel`` as a non-empty tuple of one-pair kernels (one kernel, or a sequence: summed)."""
  kernels = tuple(kernel) if isinstance(kernel, (tuple, list)) else (kernel,)
  if not kernels:
    raise ValueError("kernel must be a kernel or a non-empty sequence of kernels, got an empty one")
  for k in kernels:
    if not callable(k):
      raise TypeError(f"kernel must be callable on one pair (x, y) -> scalar, got "
                      f"{type(k).__name__}")
  return kernels


# -- the normalised distillation kernel ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NormalisedDistillationKernel:
  """k(x, y) = k_x(x, y) / (M_x M_phi)^2 = <x, y>/M_x^2 exp(<W^K x, W^K y>/tau - 2 log M_phi).

  M_x and M_phi are sups over a fixed support (``input_bound``, ``log_feature_bound`` =
  log M_phi), so |k| <= 1 on it (Cauchy-Schwarz). Its MMD times eta M_V M_x M_phi is the
  right side of ``thm4.1-literal-normalised``, which is ``thm4.1-bound`` divided by c.
  """
  params: AttentionParams
  tau: jax.Array
  input_bound: jax.Array
  log_feature_bound: jax.Array
  kind: str = "normalised"

  def log_factors(self, x, y):
    tau = jnp.asarray(self.tau, x.dtype)
    kx = jnp.dot(self.params.w_k, x, precision=HIGHEST)                     # (d_k,)
    ky = jnp.dot(self.params.w_k, y, precision=HIGHEST)                     # (d_k,)
    c = jnp.dot(x, y, precision=HIGHEST) / self.input_bound ** 2
    return c, jnp.dot(kx, ky, precision=HIGHEST) / tau - 2.0 * self.log_feature_bound

  def fused_log_factors(self, x, y):
    tau = jnp.asarray(self.tau, x.dtype)
    kx = jnp.dot(x, self.params.w_k.T, precision=HIGHEST)                   # (n, d_k)
    ky = jnp.dot(y, self.params.w_k.T, precision=HIGHEST)                   # (m, d_k)
    c = jnp.dot(x, y.T, precision=HIGHEST) / self.input_bound ** 2          # (n, m)
    return c, jnp.dot(kx, ky.T, precision=HIGHEST) / tau - 2.0 * self.log_feature_bound

  def __call__(self, x, y):
    c, l = self.log_factors(x, y)
    return c * jnp.exp(l)


jax.tree_util.register_dataclass(
    NormalisedDistillationKernel,
    data_fields=["params", "tau", "input_bound", "log_feature_bound"], meta_fields=["kind"])


def normalised_kernel(params: AttentionParams, *, tau, support) -> NormalisedDistillationKernel:
  """The normalised distillation kernel of ``params`` with its constants taken over ``support``.

      k(x, y) = k_x(x, y) / (M_x M_phi)^2,  M_x = max_s |s|,  M_phi = max_s exp(|W^K s|^2/(2 tau))

  Args:
    params: AttentionParams (W^K is used).
    tau: softmax temperature.
    support: (n, d) the points over which the sups are taken (e.g. the candidate pool and
      the target together): on them |k| <= 1.

  Returns:
    NormalisedDistillationKernel (a pytree; jittable).
  """
  params = check_params(params)
  support = _checks.as_float_array("support", support, ndim=2)
  if support.shape[0] < 1 or support.shape[1] != params.d:
    raise ValueError(f"support must have shape (n >= 1, {params.d}), got {support.shape}")
  tau = _checks.scalar_param("tau", tau, params.w_k.dtype)
  keys = jnp.dot(support, params.w_k.T, precision=HIGHEST)                  # (n, d_k)
  m_x = jnp.max(jnp.linalg.norm(support, axis=1))
  log_m_phi = jnp.max(jnp.sum(keys * keys, axis=1)) / (2.0 * tau)
  return NormalisedDistillationKernel(params, tau, m_x, log_m_phi)


def theory_kernels(params: AttentionParams, *, tau, support, bandwidth) -> dict:
  """The kernels of :data:`KERNELS` for one head (``params`` with w_k (d_k, d)).

  Args:
    params: the head's AttentionParams (W^K, W^V; W^Q is not used).
    tau: its temperature.
    support: (n, d) points over which the normalised kernel's constants are taken.
    bandwidth: the Gaussian kernel's bandwidth (> 0), e.g. :func:`median_bandwidth_of`
      the target sample.

  Returns:
    dict name -> one-pair kernel, keys :data:`KERNELS` in order.
  """
  return {"normalised": normalised_kernel(params, tau=tau, support=support),
          "k_V": mmd_lib.distillation_kernel(params, tau=tau, use_values=True),
          "k_x": mmd_lib.distillation_kernel(params, tau=tau, use_values=False),
          "gaussian": mmd_lib.gaussian_kernel(bandwidth)}


def median_bandwidth_of(x) -> jax.Array:
  """The median of |x_i - x_j| over pairs i < j of one sample (n >= 2, (n, d)).

  :func:`icl_kd.mmd.median_bandwidth` of the sample split in two halves (that function
  pools its two arguments, so every pair i < j of ``x`` is counted once).
  """
  x = _checks.as_float_array("x", x, ndim=2)
  if x.shape[0] < 2:
    raise ValueError(f"x must hold at least 2 points, got shape {x.shape}")
  half = x.shape[0] // 2
  return mmd_lib.median_bandwidth(x[:half], x[half:])


# -- MMD^2 of summed kernels, both estimators ---------------------------------------------


def summed_mmd2(x, y, *, kernel, estimator: str = "unbiased") -> jax.Array:
  """sum_h MMD_{k_h}^2(x, y): the MMD^2 of the sum kernel (the heads of a layer), one estimator.

  Each term is :func:`icl_kd.mmd.mmd2` (log space, blocked); the unbiased estimate can be
  negative (:data:`icl_kd.mmd.NEGATIVE_MMD2_NOTE`).
  """
  _check_estimator(estimator)
  return sum(mmd_lib.mmd2(x, y, kernel=k, estimator=estimator) for k in as_kernels(kernel))


class MMD2Estimates(NamedTuple):
  """One MMD^2 by both estimators (see :data:`ESTIMATORS`)."""
  unbiased: jax.Array
  biased: jax.Array


def mmd2_estimates(x, y, *, kernel) -> MMD2Estimates:
  """:func:`summed_mmd2` of x (n >= 2, d) and y (m >= 2, d) by both estimators."""
  return MMD2Estimates(summed_mmd2(x, y, kernel=kernel, estimator="unbiased"),
                       summed_mmd2(x, y, kernel=kernel, estimator="biased"))


# -- Gram blocks in log space -----------------------------------------------------------


def _pair_factors(kernel, a: jax.Array, b: jax.Array):
  """(c, l), each (n, m), with k(a_i, b_j) = c exp(l): nested vmap of the one-pair kernel."""
  if hasattr(kernel, "log_factors"):
    fn = kernel.log_factors
  else:
    fn = lambda x, y: (jnp.asarray(kernel(x, y)), jnp.zeros((), a.dtype))   # noqa: E731
  return jax.vmap(lambda x: jax.vmap(lambda y: fn(x, y))(b))(a)


def sum_gram(kernel, a, b) -> tuple[jax.Array, jax.Array]:
  """(K, s) with K_ij exp(s) = sum_h k_h(a_i, b_j): the Gram of the sum kernel, in log space.

  ``s`` is the largest finite log-factor over every head, subtracted before any
  exponential, so scores of 1e3 do not overflow; K carries the kernel's sign.

  Args:
    kernel: a one-pair kernel or a sequence of them (summed).
    a: (n, d); b: (m, d).
  """
  a = _checks.as_float_array("a", a, ndim=2)
  b = _checks.as_float_array("b", b, ndim=2)
  parts = [_pair_factors(k, a, b) for k in as_kernels(kernel)]
  s = jnp.max(jnp.stack([jnp.max(l) for _, l in parts]))
  s = jnp.where(jnp.isfinite(s), s, 0.0)
  return sum(c * jnp.exp(l - s) for c, l in parts), s


class GroupedGram(NamedTuple):
  """The sums of kernel values a greedy MMD selection over candidate groups needs.

  Candidate i is a group of ``sizes[i]`` tokens (one token for a point; a line's tokens
  for a language model). All sums are in units of exp(``log_scale``).

  Attributes:
    within: (P, P) sum over tokens a of group i and b of group j of k(a, b).
    diagonal: (P,) sum over the tokens a of group i of k(a, a) (the terms the unbiased
      estimator leaves out).
    cross: (P,) sum over the tokens a of group i and every target token t of k(a, t).
    sizes: (P,) tokens per group.
    target_size: the number of target tokens m.
    log_scale: the common log factor.
  """
  within: jax.Array
  diagonal: jax.Array
  cross: jax.Array
  sizes: jax.Array
  target_size: int
  log_scale: jax.Array


def point_gram(kernel, pool, target) -> GroupedGram:
  """:class:`GroupedGram` of single points: pool (P, d) against target (m, d)."""
  pool = _checks.as_float_array("pool", pool, ndim=2)
  target = _checks.as_float_array("target", target, ndim=2)
  k_pp, s_pp = sum_gram(kernel, pool, pool)                                 # (P, P)
  k_pt, s_pt = sum_gram(kernel, pool, target)                               # (P, m)
  s = jnp.maximum(s_pp, s_pt)
  k_pp = k_pp * jnp.exp(s_pp - s)
  cross = jnp.sum(k_pt, axis=1) * jnp.exp(s_pt - s)                         # (P,)
  return GroupedGram(k_pp, jnp.diagonal(k_pp), cross, jnp.ones((pool.shape[0],), pool.dtype),
                     target.shape[0], s)


def grouped_gram(kernel, tokens, groups, target, *, num_groups: int,
                 target_mask=None) -> GroupedGram:
  """:class:`GroupedGram` of candidates that are groups of tokens.

  Tokens whose group is outside [0, num_groups) (padding) and target rows outside
  ``target_mask`` take no part, so padded arrays of many sizes share one compile
  (pad with copies of valid rows: the log-space shift is taken over every row).

  Args:
    kernel: a one-pair kernel or a sequence of them (summed).
    tokens: (n, d) every candidate token.
    groups: (n,) int, the candidate each token belongs to, in [0, num_groups) (else padding).
    target: (m, d) the target tokens.
    num_groups: P (static).
    target_mask: (m,) valid target rows (None: all).
  """
  tokens = _checks.as_float_array("tokens", tokens, ndim=2)
  target = _checks.as_float_array("target", target, ndim=2)
  groups = jnp.asarray(groups)
  if groups.shape != (tokens.shape[0],):
    raise ValueError(f"groups must have shape ({tokens.shape[0]},) (one per token), got "
                     f"{groups.shape}")
  wt = row_mask("target_mask", target_mask, target.shape[0], target.dtype)
  onehot = (groups[None, :] == jnp.arange(num_groups)[:, None]).astype(tokens.dtype)  # (P, n)
  k_tt, s_tt = sum_gram(kernel, tokens, tokens)                             # (n, n)
  k_tq, s_tq = sum_gram(kernel, tokens, target)                             # (n, m)
  s = jnp.maximum(s_tt, s_tq)
  k_tt = k_tt * jnp.exp(s_tt - s)
  k_tq = k_tq * jnp.exp(s_tq - s)
  within = jnp.dot(jnp.dot(onehot, k_tt, precision=HIGHEST), onehot.T, precision=HIGHEST)
  diagonal = jnp.dot(onehot, jnp.diagonal(k_tt), precision=HIGHEST)
  cross = jnp.dot(onehot, jnp.dot(k_tq, wt, precision=HIGHEST), precision=HIGHEST)
  return GroupedGram(within, diagonal, cross, jnp.sum(onehot, axis=1), jnp.sum(wt), s)


def add_grams(grams) -> GroupedGram:
  """The :class:`GroupedGram` of the sum kernel from those of its terms (e.g. the key/value
  heads of a layer, each on its own tokens), combined in log space. The terms must share
  the candidates, their sizes and the target size."""
  grams = list(grams)
  if not grams:
    raise ValueError("grams must hold at least one GroupedGram, got none")
  s = jnp.max(jnp.stack([g.log_scale for g in grams]))
  f = [jnp.exp(g.log_scale - s) for g in grams]
  return GroupedGram(sum(w * g.within for w, g in zip(f, grams)),
                     sum(w * g.diagonal for w, g in zip(f, grams)),
                     sum(w * g.cross for w, g in zip(f, grams)), grams[0].sizes,
                     grams[0].target_size, s)


# -- greedy MMD selection ---------------------------------------------------------------


def greedy_from_gram(gram: GroupedGram, k: int, *, estimator: str = "unbiased") -> jax.Array:
  """Indices (k,) of candidate groups chosen greedily to minimise MMD^2(union, target).

  With S the union of the chosen groups' tokens (n_S of them) and T the target (m),
  up to the constant target term,

      biased:    (1/n_S^2) sum_{a, b in S} k(a, b)            - (2/(n_S m)) sum_{a in S, t} k(a, t)
      unbiased:  (1/(n_S(n_S - 1))) sum_{a != b in S} k(a, b) - (2/(n_S m)) sum_{a in S, t} k(a, t)

  (the first unbiased term is 0 while S holds one token: no pair). Each step adds
  the candidate that makes this smallest (without replacement; ties to the lowest
  index). Every sum is in the common scale exp(-log_scale), which does not change the
  argmin.

  Args:
    gram: :class:`GroupedGram` (from :func:`point_gram` or :func:`grouped_gram`).
    k: groups to choose (static), 1 <= k <= P.
    estimator: "unbiased" (default) or "biased".

  Returns:
    (k,) int32 indices, in the order chosen.
  """
  _check_estimator(estimator)
  n = gram.within.shape[0]
  _check_k(k, n, "the number of candidates")
  unbiased = estimator == "unbiased"
  m = gram.target_size
  col = gram.within                                                         # (P, P)
  self_w = jnp.diagonal(col)                                                # (P,)

  def objective(sum_ss, diag_s, size_s, col_s, cross_s):
    size = size_s + gram.sizes                                              # (P,)
    pairs = sum_ss + 2.0 * col_s + self_w                                   # (P,)
    if unbiased:
      within = jnp.where(size > 1, (pairs - diag_s - gram.diagonal)
                         / jnp.maximum(size * (size - 1.0), 1.0), 0.0)
    else:
      within = pairs / size ** 2
    return within - 2.0 * (cross_s + gram.cross) / (size * m)

  def body(t, state):
    chosen, taken, sum_ss, diag_s, size_s, col_s, cross_s = state
    obj = objective(sum_ss, diag_s, size_s, col_s, cross_s)
    c = jnp.argmin(jnp.where(taken, jnp.inf, obj))
    return (chosen.at[t].set(c.astype(jnp.int32)), taken.at[c].set(True),
            sum_ss + 2.0 * col_s[c] + self_w[c], diag_s + gram.diagonal[c],
            size_s + gram.sizes[c], col_s + col[:, c], cross_s + gram.cross[c])

  dt = col.dtype
  zero = jnp.zeros((), dt)
  init = (jnp.zeros((k,), jnp.int32), jnp.zeros((n,), bool), zero, zero, zero,
          jnp.zeros((n,), dt), zero)
  return jax.lax.fori_loop(0, k, body, init)[0]


def mmd_greedy(pool, target, k: int, *, kernel, estimator: str = "unbiased") -> jax.Array:
  """Indices (k,) of pool points chosen greedily to minimise MMD^2(chosen, target).

  :func:`greedy_from_gram` on single points (:func:`point_gram`).

  Args:
    pool: (P, d) candidates. target: (m, d) the target sample. k: static, 1 <= k <= P.
    kernel: a one-pair kernel or a sequence of them (the heads of a layer, summed).
    estimator: "unbiased" (default) or "biased".

  Returns:
    (k,) int32 indices into ``pool``, in the order chosen.
  """
  pool = _checks.as_float_array("pool", pool, ndim=2)
  _check_k(k, pool.shape[0])
  _check_estimator(estimator)
  return greedy_from_gram(point_gram(kernel, pool, target), k, estimator=estimator)


# -- retrieval and random ------------------------------------------------------------


def retrieval(pool, queries, k: int) -> jax.Array:
  """Indices (k,): the queries take turns (0, 1, ..., M-1, 0, ...) adding their nearest
  unchosen pool point (Euclidean); ties to the lowest index.

  Args:
    pool: (P, d) candidates (points, or one pooled vector per candidate line).
    queries: (M, d) the queries' inputs.
    k: static, 1 <= k <= P.
  """
  pool = _checks.as_float_array("pool", pool, ndim=2)
  queries = _checks.as_float_array("queries", queries, ndim=2)
  _check_k(k, pool.shape[0])
  d2 = jax.vmap(lambda q: jax.vmap(lambda p: jnp.sum((p - q) ** 2))(pool))(queries)  # (M, P)
  m = queries.shape[0]

  def body(t, state):
    chosen, taken = state
    row = jnp.where(taken, jnp.inf, d2[t % m])
    c = jnp.argmin(row)
    return chosen.at[t].set(c.astype(jnp.int32)), taken.at[c].set(True)

  init = (jnp.zeros((k,), jnp.int32), jnp.zeros((pool.shape[0],), bool))
  return jax.lax.fori_loop(0, k, body, init)[0]


def random_choice(n: int, k: int, *, key, allowed=None) -> jax.Array:
  """Indices (k,) drawn uniformly without replacement from range(n), or from the indices
  where ``allowed`` (n,) bool is True (it must hold at least k of them).

  ``allowed`` marking the query's own task makes the "random within the task" rule,
  an oracle: it knows the task.
  """
  _checks.check_key(key)
  _check_k(k, n, "the number of candidates")
  if allowed is None:
    return jax.random.choice(key, n, (k,), replace=False).astype(jnp.int32)
  allowed = jnp.asarray(allowed)
  if allowed.shape != (n,) or allowed.dtype != bool:
    raise ValueError(f"allowed must be a bool array of shape ({n},), got {allowed.dtype} "
                     f"{allowed.shape}")
  if _checks.is_concrete(allowed) and int(jnp.sum(allowed)) < k:
    raise ValueError(f"allowed must mark at least k = {k} candidates, got {int(jnp.sum(allowed))}")
  p = allowed.astype(jnp.float32) / jnp.sum(allowed)
  return jax.random.choice(key, n, (k,), replace=False, p=p).astype(jnp.int32)


def set_mmd2(gram: GroupedGram, chosen, *, estimator: str = "unbiased",
             target_term=None) -> jax.Array:
  """MMD^2 of the union of the ``chosen`` groups against the target, from a GroupedGram.

  ``target_term`` is the target's own term in units of exp(log_scale):
  (1/m^2) sum_{t, t'} k (biased) or (1/(m(m-1))) sum_{t != t'} k (unbiased); without it
  the result is the greedy objective (MMD^2 minus that constant). Returns the value
  times exp(log_scale).
  """
  _check_estimator(estimator)
  chosen = jnp.asarray(chosen)
  sel = jnp.zeros(gram.within.shape[0], gram.within.dtype).at[chosen].set(1.0)  # (P,)
  size = jnp.dot(sel, gram.sizes)
  pairs = jnp.dot(sel, jnp.dot(gram.within, sel, precision=HIGHEST))
  if estimator == "unbiased":
    within = (pairs - jnp.dot(sel, gram.diagonal)) / (size * (size - 1.0))
  else:
    within = pairs / size ** 2
  value = within - 2.0 * jnp.dot(sel, gram.cross) / (size * gram.target_size)
  if target_term is not None:
    value = value + target_term
  return value * jnp.exp(gram.log_scale)


# -- padded samples (one compile for many sample sizes) ------------------------------------


def row_mask(name: str, mask, n: int, dtype) -> jax.Array:
  """A (n,) 0/1 float mask of valid rows (None: every row), checked to have shape (n,)."""
  if mask is None:
    return jnp.ones((n,), dtype)
  mask = jnp.asarray(mask)
  if mask.shape != (n,):
    raise ValueError(f"{name} must have shape ({n},) (one flag per row), got {mask.shape}")
  return mask.astype(dtype)


class MMD2Parts(NamedTuple):
  """MMD^2 = exp(log_shift) * value; ``abs_value`` is the same sum over |kernel terms| (the
  scale of the cancellation, in the same units)."""
  log_shift: jax.Array
  value: jax.Array
  abs_value: jax.Array


def masked_mmd2_parts(x, y, *, kernel, estimator: str = "unbiased", x_mask=None,
                      y_mask=None) -> MMD2Parts:
  """MMD^2 of the valid rows of x (n, d) and y (m, d), as :class:`MMD2Parts`.

  The same U- or V-statistic as :func:`icl_kd.mmd.mmd2` on ``x[x_mask]`` and
  ``y[y_mask]`` (tested equal), computed on the padded arrays, so that samples of
  many sizes share one compiled program. Dense Grams (small samples), in log space
  (:func:`sum_gram`: the largest log-factor over all rows is subtracted, so pad with
  copies of valid rows, never with arbitrary values). Needs >= 2 valid rows each for
  the unbiased estimator.

  Args:
    x, y: padded samples. kernel: a one-pair kernel or a sequence of them (summed).
    estimator: "unbiased" (default) or "biased".
    x_mask, y_mask: (n,), (m,) bool or 0/1, True on valid rows; None: every row.
  """
  _check_estimator(estimator)
  x = _checks.as_float_array("x", x, ndim=2)
  y = _checks.as_float_array("y", y, ndim=2)
  wx = row_mask("x_mask", x_mask, x.shape[0], x.dtype)
  wy = row_mask("y_mask", y_mask, y.shape[0], y.dtype)
  kxx, sxx = sum_gram(kernel, x, x)
  kyy, syy = sum_gram(kernel, y, y)
  kxy, sxy = sum_gram(kernel, x, y)
  s = jnp.max(jnp.stack([sxx, syy, sxy]))
  fxx, fyy, fxy = (jnp.exp(v - s) for v in (sxx, syy, sxy))
  n, m = jnp.sum(wx), jnp.sum(wy)
  pxx, pyy = jnp.outer(wx, wx), jnp.outer(wy, wy)
  if estimator == "unbiased":
    pxx = pxx * (1.0 - jnp.eye(x.shape[0], dtype=x.dtype))
    pyy = pyy * (1.0 - jnp.eye(y.shape[0], dtype=y.dtype))
    dxx, dyy = n * (n - 1.0), m * (m - 1.0)
  else:
    dxx, dyy = n * n, m * m
  pxy = jnp.outer(wx, wy) * (2.0 / (n * m))
  value = (fxx * jnp.sum(pxx * kxx) / dxx + fyy * jnp.sum(pyy * kyy) / dyy
           - fxy * jnp.sum(pxy * kxy))
  abs_value = (fxx * jnp.sum(pxx * jnp.abs(kxx)) / dxx + fyy * jnp.sum(pyy * jnp.abs(kyy)) / dyy
               + fxy * jnp.sum(pxy * jnp.abs(kxy)))
  if estimator == "biased":
    value = jnp.maximum(value, 0.0)
  return MMD2Parts(s, value, abs_value)


def masked_mmd2(x, y, *, kernel, estimator: str = "unbiased", x_mask=None, y_mask=None
                ) -> jax.Array:
  """MMD^2 of the valid rows of two padded samples (:func:`masked_mmd2_parts`)."""
  p = masked_mmd2_parts(x, y, kernel=kernel, estimator=estimator, x_mask=x_mask, y_mask=y_mask)
  return jnp.exp(p.log_shift) * p.value


def masked_median_bandwidth(x, y, *, x_mask=None, y_mask=None) -> jax.Array:
  """:func:`icl_kd.mmd.median_bandwidth` of the valid rows of two padded samples.

  The median of |z_i - z_j| over the pairs i < j of the pooled valid rows (the mean of
  the two middle values when their number is even, as ``jnp.median``).
  """
  x = _checks.as_float_array("x", x, ndim=2)
  y = _checks.as_float_array("y", y, ndim=2)
  z = jnp.concatenate([x, y])
  w = jnp.concatenate([row_mask("x_mask", x_mask, x.shape[0], x.dtype),
                       row_mask("y_mask", y_mask, y.shape[0], y.dtype)]) > 0
  n = z.shape[0]
  i, j = jnp.triu_indices(n, 1)
  diff = z[i] - z[j]
  d = jnp.sqrt(jnp.sum(diff * diff, axis=1))                                 # (pairs,)
  ok = w[i] & w[j]
  srt = jnp.sort(jnp.where(ok, d, jnp.inf))
  cnt = jnp.sum(ok)
  return 0.5 * (srt[jnp.maximum(cnt - 1, 0) // 2] + srt[cnt // 2])
