"""Bad input: clear errors naming the argument, eagerly and under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import icl_kd

D, DK, DV = 4, 3, 2
F = jnp.float64


def _params(dtype=F):
  return icl_kd.init_params(D, DK, DV, key=jax.random.key(0), dtype=dtype)


def _ok():
  k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
  return (_params(), jax.random.normal(k1, (5, D), F), jax.random.normal(k2, (2, D), F),
          jax.random.normal(k3, (D,), F))


P, DEMOS, PREFIX, QUERY = _ok()
NAN_DEMOS = DEMOS.at[1, 2].set(jnp.nan)
INF_QUERY = QUERY.at[0].set(jnp.inf)

_attn = lambda **kw: icl_kd.softmax_attention(**{"params": P, "context": DEMOS, "query": QUERY, **kw})
_dec = lambda **kw: icl_kd.decompose(**{"params": P, "demos": DEMOS, "prefix": PREFIX,
                                        "query": QUERY, **kw})

# (id, thunk, exception, message fragment that must name the argument / expectation)
CASES = [
    ("context-rank", lambda: _attn(context=DEMOS[0]), ValueError, "context must have rank 2"),
    ("context-d", lambda: _attn(context=DEMOS[:, :3]), ValueError, r"context has shape \(5, 3\)"),
    ("query-shape", lambda: _attn(query=QUERY[:2]), ValueError, r"query must have shape \(4,\)"),
    ("query-rank", lambda: _attn(query=DEMOS), ValueError, "query must have rank 1"),
    ("empty-context", lambda: _attn(context=DEMOS[:0]), ValueError, "context must hold at least one"),
    ("w_k-shape", lambda: _attn(params=P._replace(w_k=P.w_k[:2])), ValueError, "params.w_k must have"),
    ("w_v-d", lambda: _attn(params=P._replace(w_v=P.w_v[:, :3])), ValueError, "params.w_v has shape"),
    ("params-type", lambda: _attn(params=tuple(P)), TypeError, "params must be an AttentionParams"),
    ("tau-zero", lambda: _attn(tau=0.0), ValueError, "tau must be > 0, got 0.0"),
    ("tau-negative", lambda: _attn(tau=-1.0), ValueError, "tau must be > 0, got -1.0"),
    ("tau-vector", lambda: _attn(tau=jnp.ones(2)), ValueError, r"tau must be a scalar, got shape \(2,\)"),
    ("tau-inf", lambda: _attn(tau=jnp.inf), ValueError, "tau must be finite"),
    ("int-context", lambda: _attn(context=jnp.ones((5, D), jnp.int32)), TypeError,
     "context must have a floating dtype"),
    ("mixed-dtype", lambda: _attn(context=DEMOS.astype(jnp.float32)), TypeError,
     "share one floating dtype"),
    ("nan-context", lambda: _attn(context=NAN_DEMOS), ValueError, "context contains 1 non-finite"),
    ("inf-query", lambda: _attn(query=INF_QUERY), ValueError, "query contains 1 non-finite"),
    ("nan-params", lambda: _attn(params=P._replace(w_v=P.w_v.at[0, 0].set(jnp.nan))), ValueError,
     "params.w_v contains"),
    ("empty-demos", lambda: _dec(demos=DEMOS[:0]), ValueError, "demos must hold at least one"),
    ("prefix-d", lambda: _dec(prefix=PREFIX[:, :2]), ValueError, r"prefix has shape \(2, 2\)"),
    ("nan-demos", lambda: _dec(demos=NAN_DEMOS), ValueError, "demos contains 1 non-finite"),
    ("kd-eta-zero", lambda: icl_kd.one_step_kd_weights(P, DEMOS, eta=0.0), ValueError,
     "eta must be > 0"),
    ("kd-eta-missing", lambda: icl_kd.one_step_kd_weights(P, DEMOS), ValueError,
     "exactly one of eta"),
    ("kd-loss-kind", lambda: icl_kd.kd_loss(jnp.zeros((DV, 8)), P, DEMOS, feature_map=lambda z: z,
                                            kind="cubic"), ValueError, "kind must be one of"),
    ("kd-loss-weights", lambda: icl_kd.kd_loss(jnp.zeros((DV, 8)), P, DEMOS, feature_map=lambda z: z),
     ValueError, r"weights has shape \(2, 8\): expected axis 1 of size 3"),
    ("rf-features", lambda: icl_kd.positive_random_features(DK, 0, key=jax.random.key(0)), ValueError,
     "num_features must be a positive int"),
    ("taylor-degree", lambda: icl_kd.taylor_features(DK, -1), ValueError, "degree must be an int >= 0"),
    ("dual-rows", lambda: icl_kd.DualWeights.create(np.ones((3, DV)), np.ones((2, DK))), ValueError,
     r"anchors has shape \(2, 3\): expected axis 0 of size 3"),
    ("dual-apply", lambda: icl_kd.DualWeights.create(np.ones((3, DV)), np.ones((3, DK))).apply(
        jnp.ones(DK + 1)), ValueError, r"z must have shape \(3,\)"),
    ("feature-z", lambda: icl_kd.positive_random_features(DK, 8, key=jax.random.key(0))(jnp.ones(2)),
     ValueError, r"z must have shape \(3,\)"),
]


@pytest.mark.parametrize("thunk,exc,msg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error(thunk, exc, msg):
  with pytest.raises(exc, match=msg):
    thunk()


# Shape and dtype errors are raised while tracing, so they fire under jit too.
_jit_attention = jax.jit(icl_kd.softmax_attention)
_jit_decompose = jax.jit(icl_kd.decompose, static_argnames=("include_query",))

JIT_CASES = [
    ("context-d", lambda: _jit_attention(P, DEMOS[:, :3], QUERY), ValueError, "context has shape"),
    ("query-shape", lambda: _jit_attention(P, DEMOS, QUERY[:2]), ValueError, "query must have shape"),
    ("w_k-shape", lambda: _jit_attention(P._replace(w_k=P.w_k[:2]), DEMOS, QUERY), ValueError,
     "params.w_k must have"),
    ("int-context", lambda: _jit_attention(P, jnp.ones((5, D), jnp.int32), QUERY), TypeError,
     "floating dtype"),
    ("mixed-dtype", lambda: _jit_attention(P, DEMOS.astype(jnp.float32), QUERY), TypeError,
     "share one floating dtype"),
    ("empty-demos", lambda: _jit_decompose(P, DEMOS[:0], PREFIX, QUERY), ValueError,
     "demos must hold at least one"),
    ("tau-vector", lambda: _jit_attention(P, DEMOS, QUERY, tau=jnp.ones(2)), ValueError,
     "tau must be a scalar"),
]


@pytest.mark.parametrize("thunk,exc,msg", [c[1:] for c in JIT_CASES], ids=[c[0] for c in JIT_CASES])
def test_bad_input_raises_under_jit(thunk, exc, msg):
  with pytest.raises(exc, match=msg):
    thunk()


def test_non_finite_under_jit_poisons_the_result():
  """Documented behaviour: under jit a non-finite input yields all-NaN, never a finite number."""
  good = _jit_attention(P, DEMOS, QUERY)
  assert np.all(np.isfinite(good))
  for bad in (_jit_attention(P, NAN_DEMOS, QUERY), _jit_attention(P, DEMOS, INF_QUERY),
              _jit_attention(P._replace(w_v=P.w_v.at[1, 1].set(-jnp.inf)), DEMOS, QUERY)):
    assert np.all(np.isnan(bad))
  out = _jit_decompose(P, NAN_DEMOS, PREFIX, QUERY)
  for leaf in jax.tree_util.tree_leaves(out):
    assert np.all(np.isnan(leaf))


def test_non_positive_tau_under_jit_poisons_the_result():
  assert np.all(np.isnan(_jit_attention(P, DEMOS, QUERY, tau=jnp.asarray(-1.0))))
  assert np.all(np.isnan(_jit_attention(P, DEMOS, QUERY, tau=jnp.asarray(0.0))))
  assert np.all(np.isfinite(_jit_attention(P, DEMOS, QUERY, tau=jnp.asarray(0.5))))


def test_vmap_path_poisons_instead_of_raising():
  batch = jnp.stack([DEMOS, NAN_DEMOS])
  out = jax.vmap(lambda c: icl_kd.softmax_attention(P, c, QUERY))(batch)
  assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1]))


def test_checks_on_arrays_captured_by_jit():
  """Concrete arrays closed over by a jitted function are checked, not crashed on."""
  f = jax.jit(lambda eta: icl_kd.one_step_kd_weights(P, DEMOS, eta=eta).coeffs)
  np.testing.assert_allclose(f(0.5), DEMOS @ P.w_v.T)
  g = jax.jit(lambda q: icl_kd.softmax_attention(P, NAN_DEMOS, q))
  with pytest.raises(ValueError, match="context contains 1 non-finite"):
    g(QUERY)
  h = jax.jit(lambda q: icl_kd.softmax_attention(P, DEMOS, q, tau=-2.0))
  with pytest.raises(ValueError, match="tau must be > 0"):
    h(QUERY)
