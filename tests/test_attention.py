"""Claim C1 (thm3.1): attention == (W_0 + dW) phi(W^Q x'); claim C7 (lr-proxy)."""

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

import icl_kd
from tests.helpers import c1_tolerance, make_instance

# Fixed shape buckets (N, M, d, d_k, d_v): Hypothesis varies values, never shapes
# outside this list, so the jitted check compiles once per bucket and dtype.
SHAPES = [(1, 0, 3, 2, 1), (8, 3, 4, 4, 3), (32, 0, 8, 4, 8), (17, 5, 6, 3, 2)]
DTYPES = [jnp.float64, jnp.float32]
BATCH = 16
MAX_TRACES = len(SHAPES) * len(DTYPES) * 2  # x include_query


@chex.assert_max_traces(n=MAX_TRACES)
def _c1_batch(seeds, log10_scales, shape, dtype, include_query):
  n, m, d, d_k, d_v = shape

  def one(seed, scale):
    params, demos, prefix, query = make_instance(seed, n, m, d, d_k, d_v, dtype, scale)
    out = icl_kd.decompose(params, demos, prefix, query, include_query=include_query)
    context = jnp.concatenate([demos, prefix, query[None]] if include_query else [demos, prefix])
    # Normalise by the magnitude of the convex combination's terms, sum_j p_j |v_j|,
    # computed here from the scores independently of the library.
    s = jnp.dot(jnp.dot(context, params.w_k.T), jnp.dot(params.w_q, query))
    p = jnp.exp(s - jnp.max(s)) / jnp.sum(jnp.exp(s - jnp.max(s)))
    mag = jnp.sum(p * jnp.linalg.norm(jnp.dot(context, params.w_v.T), axis=-1))
    err = jnp.linalg.norm(out.attention - out.reference) / mag
    return err, jnp.max(jnp.abs(s)), jnp.all(jnp.isfinite(out.attention))

  return jax.vmap(one)(seeds, log10_scales)


c1_batch = jax.jit(_c1_batch, static_argnums=(2, 3, 4))


@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES),
       dtype=st.sampled_from(DTYPES), include_query=st.booleans(),
       lo=st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False, allow_subnormal=False))
def test_c1_attention_equals_reference(seed, shape, dtype, include_query, lo):
  """Relative error within docs/THEORY.md's C1 tolerance over score scales 1e-3 .. 1e3."""
  if shape[1] == 0 and not include_query:
    include_query = True  # dW would be empty either way; keep the bucket count fixed
  seeds = jnp.arange(BATCH) + seed
  scales = jnp.linspace(lo, 3.0, BATCH)  # always reaches |s| = 1e3 (naive exp overflows)
  err, max_s, finite = c1_batch(seeds, scales, shape, dtype, include_query)
  assert bool(jnp.all(finite))
  tol = c1_tolerance(dtype, max_s)
  assert bool(jnp.all(err <= tol)), (err / tol).max()


def test_c1_compiles_once_per_bucket():
  """Many more examples than buckets were drawn above; traces stay bounded."""
  seeds, scales = jnp.arange(BATCH), jnp.zeros(BATCH)
  for _ in range(3):
    c1_batch(seeds, scales, SHAPES[1], jnp.float64, True)
    c1_batch(seeds + 100, scales + 1.0, SHAPES[1], jnp.float64, True)
  # assert_max_traces raises inside the call if the bound is exceeded.
  assert c1_batch._cache_size() <= MAX_TRACES


@pytest.mark.parametrize("dtype", DTYPES)
def test_c1_at_scores_that_overflow_naive_exp(dtype):
  params, demos, prefix, query = make_instance(3, 16, 4, 5, 4, 3, dtype, 3.0)  # |s| up to 1e3
  context = jnp.concatenate([demos, prefix, query[None]])
  s = np.asarray(context @ params.w_k.T @ (params.w_q @ query), np.float64)
  with np.errstate(over="ignore"):
    assert not np.all(np.isfinite(np.exp(s)))  # the naive computation overflows here
  out = icl_kd.decompose(params, demos, prefix, query)
  assert np.all(np.isfinite(out.attention)) and np.all(np.isfinite(out.reference))
  # Independent float64 reference in NumPy via the log-sum-exp trick.
  p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
  expected = p @ (np.asarray(context, np.float64) @ np.asarray(params.w_v, np.float64).T)
  tol = float(c1_tolerance(dtype, np.abs(s).max()))
  scale = p @ np.linalg.norm(np.asarray(context @ params.w_v.T, np.float64), axis=-1)
  assert np.linalg.norm(np.asarray(out.attention, np.float64) - expected) / scale <= tol
  assert np.linalg.norm(np.asarray(out.reference, np.float64) - expected) / scale <= tol
  np.testing.assert_allclose(float(out.log_partition),
                             s.max() + np.log(np.exp(s - s.max()).sum()),
                             rtol=10 * np.finfo(dtype).eps)


def _naive_attention(params, context, query, tau):
  s = np.asarray(context, np.float64) @ np.asarray(params.w_k, np.float64).T @ (
      np.asarray(params.w_q, np.float64) @ np.asarray(query, np.float64)) / tau
  p = np.exp(s - s.max())
  return (p / p.sum()) @ (np.asarray(context, np.float64) @ np.asarray(params.w_v, np.float64).T)


@pytest.mark.parametrize("tau", [1.0, 0.25, 7.0])
def test_softmax_attention_matches_numpy_with_temperature(tau):
  params, demos, prefix, query = make_instance(11, 12, 2, 6, 3, 4, jnp.float64, 1.0)
  context = jnp.concatenate([demos, prefix])
  got = icl_kd.softmax_attention(params, context, query, tau=tau)
  np.testing.assert_allclose(got, _naive_attention(params, context, query, tau), rtol=1e-13)


def test_softmax_attention_agrees_with_jax_dot_product_attention():
  """Cross-check against jax.nn.dot_product_attention (xla), float32, 1e-6 relative."""
  tau = 2.0
  keys = jax.random.split(jax.random.key(5), 64)
  worst = 0.0
  for k in keys:
    params, demos, prefix, query = make_instance(int(jax.random.randint(k, (), 0, 1 << 30)),
                                                 24, 0, 8, 8, 8, jnp.float32, 0.5)
    ours = icl_kd.softmax_attention(params, demos, query, tau=tau)
    q = jnp.dot(params.w_q, query, precision="highest")[None, None, None, :]      # (B,T,N,H)
    kk = jnp.dot(demos, params.w_k.T, precision="highest")[None, :, None, :]     # (B,S,K,H)
    vv = jnp.dot(demos, params.w_v.T, precision="highest")[None, :, None, :]
    with jax.default_matmul_precision("highest"):
      ref = jax.nn.dot_product_attention(q, kk, vv, scale=1.0 / tau, implementation="xla")
    worst = max(worst, float(jnp.linalg.norm(ours - ref[0, 0, 0]) / jnp.linalg.norm(ref)))
  assert worst <= 1e-6, worst


def test_decompose_parts_have_the_claimed_form():
  """W_0 and dW are the representer sums of docs/THEORY.md C1, checked coefficient by coefficient."""
  params, demos, prefix, query = make_instance(2, 6, 3, 4, 3, 2, jnp.float64, 0.7)
  out = icl_kd.decompose(params, demos, prefix, query)
  tail = np.concatenate([np.asarray(prefix), np.asarray(query)[None]])
  np.testing.assert_allclose(out.w0.coeffs, np.asarray(demos) @ np.asarray(params.w_v).T, rtol=1e-14)
  np.testing.assert_allclose(out.w0.anchors, np.asarray(demos) @ np.asarray(params.w_k).T, rtol=1e-14)
  np.testing.assert_allclose(out.dw.coeffs, tail @ np.asarray(params.w_v).T, rtol=1e-14)
  np.testing.assert_allclose(out.dw.anchors, tail @ np.asarray(params.w_k).T, rtol=1e-14)
  context = np.concatenate([np.asarray(demos), tail])
  s = context @ np.asarray(params.w_k).T @ (np.asarray(params.w_q) @ np.asarray(query))
  log_d = np.log(np.sum(np.exp(s)))
  np.testing.assert_allclose(out.w0.log_scale, -log_d, rtol=1e-14)
  np.testing.assert_allclose(out.eta, 6 / (2 * np.exp(log_d)), rtol=1e-13)
  p = np.exp(s - log_d)
  np.testing.assert_allclose(out.entropy, -np.sum(p * np.log(p)), rtol=1e-13)
  np.testing.assert_allclose(icl_kd.implicit_learning_rate(params, demos, prefix, query), out.eta,
                             rtol=1e-15)


def test_query_self_attention_switch():
  params, demos, prefix, query = make_instance(4, 5, 2, 4, 4, 4, jnp.float64, 0.5)
  with_q = icl_kd.decompose(params, demos, prefix, query, include_query=True)
  without = icl_kd.decompose(params, demos, prefix, query, include_query=False)
  assert with_q.dw.num_anchors == 3 and without.dw.num_anchors == 2
  np.testing.assert_allclose(
      without.attention, _naive_attention(params, jnp.concatenate([demos, prefix]), query, 1.0),
      rtol=1e-13)
  np.testing.assert_allclose(without.reference, without.attention, rtol=1e-13)
  assert float(with_q.log_partition) > float(without.log_partition)
  empty = icl_kd.decompose(params, demos, jnp.zeros((0, 4)), query, include_query=False)
  assert empty.dw.num_anchors == 0
  np.testing.assert_allclose(empty.reference, empty.attention, rtol=1e-13)


# --- C7 (lr-proxy): flat and sharp limits ---------------------------------------------------

def test_c7_flat_limit():
  """All scores 0: D' = N + M + 1, eta* = N / (2 (N+M+1)), output = mean value, max entropy."""
  params, demos, prefix, query = make_instance(8, 10, 3, 4, 4, 2, jnp.float64, 0.0)
  params = params._replace(w_q=jnp.zeros_like(params.w_q))
  out = icl_kd.decompose(params, demos, prefix, query)
  np.testing.assert_allclose(np.exp(out.log_partition), 14.0, rtol=1e-14)
  np.testing.assert_allclose(out.eta, 10 / 28, rtol=1e-14)
  np.testing.assert_allclose(out.entropy, np.log(14.0), rtol=1e-14)
  context = np.concatenate([demos, prefix, np.asarray(query)[None]])
  np.testing.assert_allclose(out.attention, (context @ np.asarray(params.w_v).T).mean(0), rtol=1e-13)


def test_c7_sharp_limit():
  """Sharp scores: D' is dominated by the largest score and the entropy vanishes."""
  params, demos, prefix, query = make_instance(9, 10, 3, 4, 4, 2, jnp.float64, 3.0)
  out = icl_kd.decompose(params, demos, prefix, query)
  s = np.sort(np.asarray(out.scores))
  assert s[-1] - s[-2] > 40  # generic instance: a clear winner at this scale
  np.testing.assert_allclose(out.log_partition, s[-1], rtol=1e-14)
  assert float(out.entropy) < 1e-12
  entropies = [float(icl_kd.decompose(*make_instance(9, 10, 3, 4, 4, 2, jnp.float64, sc)).entropy)
               for sc in (-2.0, 0.0, 1.0, 2.0)]
  assert all(a > b for a, b in zip(entropies, entropies[1:]))  # sharper -> lower entropy


# --- padded, masked contexts: one compile for many lengths ------------------------------------

N_PAD, M_PAD = 8, 4
TRUE_LENGTHS = [(3, 0), (5, 2), (8, 4), (1, 1), (6, 3)]   # (N, M) of each prompt, padded to (8, 4)
_TRACES = []


def _decompose_padded(params, demos, prefix, query, demo_mask, prefix_mask):
  _TRACES.append(demos.shape)  # Python side effect: runs once per trace, not per call
  return icl_kd.decompose(params, demos, prefix, query, demo_mask=demo_mask,
                          prefix_mask=prefix_mask)


decompose_padded = jax.jit(_decompose_padded)
# the unpadded reference, compiled (op by op it recompiles every primitive for every length)
decompose_plain = jax.jit(icl_kd.decompose)


def _pad(x, rows, key):
  """x padded to ``rows`` rows with large finite junk (it must not leak into the result)."""
  junk = 5.0 * jax.random.normal(key, (rows - x.shape[0], x.shape[1]), x.dtype)
  return jnp.concatenate([x, junk]), jnp.arange(rows) < x.shape[0]


def _close(a, b, tol=1e-13):
  """Relative 2-norm difference (the C1 error unit), with a tiny absolute floor."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert np.linalg.norm(a - b) <= tol * np.linalg.norm(b) + 1e-300, (a, b)


def _assert_same_decomposition(padded, plain, n, m):
  for field in ("attention", "reference", "log_partition", "eta", "log_eta", "max_abs_score"):
    _close(getattr(padded, field), getattr(plain, field))
  _close(padded.entropy, plain.entropy, 1e-12) if float(plain.entropy) > 1e-3 else (
      np.testing.assert_allclose(padded.entropy, plain.entropy, atol=1e-15))
  scores = np.asarray(padded.scores)
  kept = np.r_[np.arange(n), N_PAD + np.arange(m), N_PAD + M_PAD]
  _close(scores[kept], plain.scores)
  assert np.all(np.isneginf(np.delete(scores, kept)))
  # The dual weights act identically: evaluated at random feature points, and in norm.
  zs = jax.random.normal(jax.random.key(9), (3, plain.w0.d_k), jnp.float64)
  for part in ("w0", "dw"):
    wp, wu = getattr(padded, part), getattr(plain, part)
    for z in zs:
      _close(wp.apply(z), wu.apply(z), 1e-12)
    _close(wp.log_hs_norm(), wu.log_hs_norm(), 1e-12)
  _close(padded.w0.inner(padded.dw), plain.w0.inner(plain.dw), 1e-12)


@pytest.mark.parametrize("log10_scale", [0.0, 3.0])
def test_masked_padding_matches_unpadded_with_one_compile(log10_scale):
  """Five prompt lengths padded to one bucket: one trace, and float64 agreement ~1e-13.

  At log10_scale = 3 the scores reach +-1e3, where exp over- and underflows:
  masked anchors must not change the max-shift of the log-space sums.
  """
  for i, (n, m) in enumerate(TRUE_LENGTHS):
    params, demos, prefix, query = make_instance(40 + i, n, m, 5, 3, 2, jnp.float64, log10_scale)
    kd, kp = jax.random.split(jax.random.key(100 + i))
    demos_p, demo_mask = _pad(demos, N_PAD, kd)
    prefix_p, prefix_mask = _pad(prefix, M_PAD, kp)
    padded = decompose_padded(params, demos_p, prefix_p, query, demo_mask, prefix_mask)
    plain = decompose_plain(params, demos, prefix if m else None, query)
    _assert_same_decomposition(padded, plain, n, m)
    np.testing.assert_allclose(padded.log_eta, np.log(n / 2) - float(plain.log_partition),
                               rtol=1e-13)  # N counts kept demonstrations only
  assert len(_TRACES) == 1, _TRACES  # over both scales too: same shapes, one program


def test_masked_softmax_attention_and_query_switch():
  params, demos, prefix, query = make_instance(7, 4, 2, 5, 3, 2, jnp.float64, 0.5)
  context = jnp.concatenate([demos, prefix])
  padded, mask = _pad(context, 9, jax.random.key(1))
  np.testing.assert_allclose(icl_kd.softmax_attention(params, padded, query, mask=mask),
                             _naive_attention(params, context, query, 1.0), rtol=1e-13)
  # include_query=False with every prefix token masked: dW is the zero weight.
  prefix_p, _ = _pad(prefix[:0], 3, jax.random.key(2))
  out = icl_kd.decompose(params, demos, prefix_p, query, include_query=False,
                         prefix_mask=jnp.zeros(3, bool))
  plain = icl_kd.decompose(params, demos, None, query, include_query=False)
  np.testing.assert_allclose(out.attention, plain.attention, rtol=1e-13)
  np.testing.assert_allclose(out.reference, out.attention, rtol=1e-13)
  assert float(out.dw.hs_norm()) == 0.0
  np.testing.assert_array_equal(out.dw.apply(jnp.ones(3)), np.zeros(2))


def test_prefix_none_is_an_empty_prefix():
  params, demos, _, query = make_instance(5, 6, 0, 4, 4, 3, jnp.float64, 0.0)
  explicit = icl_kd.decompose(params, demos, jnp.zeros((0, 4)), query)
  for none in (icl_kd.decompose(params, demos, None, query),
               icl_kd.decompose(params, demos, query=query),
               icl_kd.decompose(params, demos, [], query)):
    for a, b in zip(jax.tree_util.tree_leaves(none), jax.tree_util.tree_leaves(explicit)):
      np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(icl_kd.implicit_learning_rate(params, demos, None, query),
                                explicit.eta)


def test_init_params_default_dtype_follows_x64():
  """The suite runs with x64 on: the default is float64, like jax.random.normal's."""
  params = icl_kd.init_params(3, key=jax.random.key(0))
  assert {p.dtype for p in params} == {jax.random.normal(jax.random.key(0), (2,)).dtype}
  assert params.w_q.dtype == jnp.float64
  assert icl_kd.init_params(3, key=jax.random.key(0), dtype=jnp.float32).w_q.dtype == jnp.float32
