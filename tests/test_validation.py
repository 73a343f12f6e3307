"""Bad input: clear errors naming the argument, eagerly and under jit.

Every case that used to pass silently has a row: float16 / bfloat16 inputs
(refused: "float32 or float64"), d_k = 0 and d_v = 0 (refused), keys that are
not one PRNG key (``key=0``, a float array, a batch of keys, bad uint32 data),
three arrays given to ``decompose`` (no query), and bad masks. Shape and dtype
errors also fire under jit (at trace time); a mask that keeps no demonstration
is a run-time value, so under jit it poisons the result to NaN (documented in
``decompose``).
"""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import icl_kd
from icl_kd import _checks

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
F16, BF16 = jnp.float16, jnp.bfloat16
NO_DK = P._replace(w_q=jnp.zeros((0, D), F), w_k=jnp.zeros((0, D), F))
NO_DV = P._replace(w_v=jnp.zeros((0, D), F))
KEY = jax.random.key(0)
_BALL = icl_kd.distributions.uniform_ball(D)
_MIX = icl_kd.distributions.truncated_gaussian_mixture(jnp.zeros((2, D)))

# Every public function of attention, features, distributions that takes ``key``.
KEYED = {
    "init_params": lambda k: icl_kd.init_params(D, key=k),
    "positive_random_features": lambda k: icl_kd.positive_random_features(DK, 4, key=k),
    "orthogonal_features": lambda k: icl_kd.positive_random_features(DK, 4, key=k, orthogonal=True),
    "uniform_ball.sample": lambda k: _BALL.sample(3, key=k),
    "mixture.sample": lambda k: _MIX.sample(3, key=k),
    "random_rotation": lambda k: icl_kd.distributions.random_rotation(D, key=k),
}
BAD_KEYS = [
    ("int", 0, TypeError, "key must be a JAX PRNG key .*got int 0"),
    ("float-array", jnp.zeros(2, jnp.float32), TypeError,
     r"key must be a JAX PRNG key .*dtype float32 and shape \(2,\)"),
    ("batch", jax.random.split(KEY, 3), ValueError, r"key must be a single PRNG key.*shape \(3,\)"),
    ("uint32-shape", jnp.zeros(3, jnp.uint32), TypeError, r"key must be .*uint32 array of shape \(3,\)"),
    ("none", None, TypeError, "key must be a JAX PRNG key .*got NoneType"),
]

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
    # dtype policy: half precision is refused, naming the argument.
    ("float16-context", lambda: _attn(context=DEMOS.astype(F16)), TypeError,
     "context must be float32 or float64, got float16"),
    ("bfloat16-demos", lambda: _dec(demos=DEMOS.astype(BF16)), TypeError,
     "demos must be float32 or float64, got bfloat16"),
    ("float16-params", lambda: _attn(params=_params(F16)), TypeError,
     "dtype must be float32 or float64, got float16"),
    ("bfloat16-w_q", lambda: _attn(params=P._replace(w_q=P.w_q.astype(BF16))), TypeError,
     "params.w_q must be float32 or float64, got bfloat16"),
    ("float16-features", lambda: icl_kd.positive_random_features(DK, 4, key=KEY, dtype=F16),
     TypeError, "dtype must be float32 or float64, got float16"),
    ("bfloat16-ball", lambda: icl_kd.distributions.uniform_ball(D, dtype=BF16), TypeError,
     "dtype must be float32 or float64, got bfloat16"),
    ("float16-mixture", lambda: icl_kd.distributions.truncated_gaussian_mixture(
        jnp.zeros((2, D), F16)), TypeError, "means must be float32 or float64, got float16"),
    ("float16-dual", lambda: icl_kd.DualWeights.create(np.ones((3, DV), np.float16),
                                                        np.ones((3, DK))), TypeError,
     "coeffs must be float32 or float64, got float16"),
    # d_k = 0 (uniform attention) and d_v = 0 (empty output) are refused.
    ("d_k-zero", lambda: _attn(params=NO_DK), ValueError, r"params.w_q has shape \(0, 4\): d_k = 0"),
    ("d_v-zero", lambda: _dec(params=NO_DV), ValueError, r"params.w_v has shape \(0, 4\): d_v = 0"),
    ("init-d_k-zero", lambda: icl_kd.init_params(D, 0, key=KEY), ValueError,
     "d_k must be a positive int, got 0"),
    ("init-d_v-zero", lambda: icl_kd.init_params(D, DK, 0, key=KEY), ValueError,
     "d_v must be a positive int, got 0"),
    # decompose's positional contract (params, demos, prefix, query).
    ("three-arrays", lambda: icl_kd.decompose(P, DEMOS, QUERY), TypeError,
     r"decompose\(params, demos, prefix, query\): got 3 arrays.*query.*missing.*prefix=None"),
    ("no-query", lambda: icl_kd.decompose(P, DEMOS, PREFIX), TypeError,
     "query .* is missing; pass prefix=None"),
    ("demo-mask-dtype", lambda: _dec(demo_mask=jnp.ones(5)), TypeError,
     "demo_mask must have dtype bool"),
    ("demo-mask-shape", lambda: _dec(demo_mask=jnp.ones(4, bool)), ValueError,
     r"demo_mask must have shape \(5,\)"),
    ("prefix-mask-shape", lambda: _dec(prefix_mask=jnp.ones(3, bool)), ValueError,
     r"prefix_mask must have shape \(2,\)"),
    ("demo-mask-empty", lambda: _dec(demo_mask=jnp.zeros(5, bool)), ValueError,
     "demo_mask masks out every row of demos"),
    ("attention-mask-empty", lambda: _attn(mask=np.zeros(5, bool)), ValueError,
     "mask masks out every row of context"),
] + [(f"key-{kind}-{fn}", (lambda f=f, k=k: f(k)), exc, msg)
     for fn, f in KEYED.items() for kind, k, exc, msg in BAD_KEYS]


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
    ("float16-context", lambda: _jit_attention(P, DEMOS.astype(F16), QUERY), TypeError,
     "context must be float32 or float64, got float16"),
    ("bfloat16-query", lambda: _jit_decompose(P, DEMOS, PREFIX, QUERY.astype(BF16)), TypeError,
     "query must be float32 or float64, got bfloat16"),
    ("bfloat16-params", lambda: _jit_attention(jax.tree.map(lambda w: w.astype(BF16), P), DEMOS,
                                               QUERY), TypeError,
     "params.w_q must be float32 or float64, got bfloat16"),
    ("d_k-zero", lambda: _jit_attention(NO_DK, DEMOS, QUERY), ValueError, "d_k = 0"),
    ("d_v-zero", lambda: _jit_decompose(NO_DV, DEMOS, PREFIX, QUERY), ValueError, "d_v = 0"),
    ("three-arrays", lambda: _jit_decompose(P, DEMOS, QUERY), TypeError, "got 3 arrays"),
    ("demo-mask-shape", lambda: _jit_decompose(P, DEMOS, PREFIX, QUERY, demo_mask=jnp.ones(4, bool)),
     ValueError, r"demo_mask must have shape \(5,\)"),
] + [(f"key-{kind}-{fn}", (lambda f=f, k=k: jax.jit(f)(k)), exc, msg)
     for fn, f in KEYED.items()
     for kind, k, exc, msg in BAD_KEYS if kind in ("float-array", "batch")] + [
    # A Python int passed to jit becomes an int32 tracer: still named as a bad key.
    ("key-int-traced", lambda: jax.jit(KEYED["init_params"])(0), TypeError,
     "key must be a JAX PRNG key .*dtype int"),
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


def test_mask_keeping_nothing_under_jit_poisons_the_result():
  """A demo_mask with no True entry is a run-time value under jit: every field is NaN."""
  good = _jit_decompose(P, DEMOS, PREFIX, QUERY, demo_mask=jnp.arange(5) < 2)
  assert all(np.all(np.isfinite(leaf)) for leaf in (good.attention, good.reference, good.eta))
  bad = _jit_decompose(P, DEMOS, PREFIX, QUERY, demo_mask=jnp.zeros(5, bool))
  for leaf in jax.tree_util.tree_leaves(bad):
    assert np.all(np.isnan(leaf))
  f = jax.jit(lambda m: icl_kd.softmax_attention(P, DEMOS, QUERY, mask=m))
  assert np.all(np.isnan(f(jnp.zeros(5, bool)))) and np.all(np.isfinite(f(jnp.ones(5, bool))))


def test_valid_keys_are_accepted():
  """Typed keys and legacy uint32 keys both work, under jit too, with the same draws."""
  typed, legacy = jax.random.key(3), jax.random.PRNGKey(3)
  for fn, f in KEYED.items():
    a, b = jax.tree_util.tree_leaves(f(typed)), jax.tree_util.tree_leaves(f(legacy))
    c = jax.tree_util.tree_leaves(jax.jit(f)(legacy))
    for x, y, z in zip(a, b, c):
      np.testing.assert_array_equal(x, y, err_msg=fn)
      np.testing.assert_allclose(z, x, rtol=1e-12, atol=1e-15, err_msg=fn)  # jit: rounding only


_X64_SCRIPT = textwrap.dedent("""
    import warnings
    import jax, numpy as np
    import icl_kd
    assert not jax.config.jax_enable_x64
    params = icl_kd.init_params(4, key=jax.random.key(0))
    assert params.w_q.dtype == np.float32, params.w_q.dtype
    rng = np.random.default_rng(0)
    demos, query = rng.normal(size=(6, 4)), rng.normal(size=4)       # NumPy float64
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = icl_kd.decompose(params, demos, None, query)
        icl_kd.decompose(params, demos, None, query)
        icl_kd.softmax_attention(params, demos, query)
    kinds = [w for w in caught if issubclass(w.category, icl_kd.Float64TruncatedWarning)]
    assert [str(w.message).split(" is ")[0] for w in kinds] == ["demos", "query"] * 2 + [
        "context", "query"], (
        [str(w.message) for w in caught])                   # every call is told ("always")
    assert "demos is a float64 array but jax_enable_x64 is off" in str(kinds[0].message)
    assert out.attention.dtype == np.float32
    print("ok")
""")


def test_float64_truncation_warns_without_x64():
  """With x64 off: init_params gives float32, and every float64 NumPy input is announced."""
  env = {**__import__("os").environ, "JAX_ENABLE_X64": "0", "JAX_PLATFORMS": "cpu"}
  res = subprocess.run([sys.executable, "-c", _X64_SCRIPT], capture_output=True, text=True,
                       env=env, timeout=300)
  assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


def test_no_truncation_warning_with_x64():
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("error", icl_kd.Float64TruncatedWarning)
    icl_kd.decompose(P, np.asarray(DEMOS), None, np.asarray(QUERY))


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


_all_finite = jax.jit(lambda *a: _checks.all_finite(*a))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_all_finite_is_every_element_finite(dtype):
  """The poisoning test, under jit: each non-finite kind anywhere in any array is caught, the
  largest finite values (whose plain sum overflows) are not, and empty or integer arrays are
  finite. Compared with NumPy's np.isfinite(...).all() on every case."""
  big = np.finfo(dtype).max
  cases = [np.zeros((3, 4)), np.full((5,), big), np.array([big, big, -big]), np.arange(6.0)]
  for bad in (np.inf, -np.inf, np.nan):
    for pos in (0, 5, 11):
      a = np.ones((3, 4))
      a.flat[pos] = bad
      cases.append(a)
  for a in cases:
    a = jnp.asarray(a, dtype)
    expected = bool(np.isfinite(np.asarray(a)).all())
    assert bool(_all_finite(a)) == expected, np.asarray(a)
    assert bool(_all_finite(jnp.ones(2, dtype), a, jnp.zeros((0, 3), dtype))) == expected
  assert bool(_all_finite(jnp.arange(4), jnp.zeros((0,), dtype)))


# -- run-time value checks under jit, on request (icl_kd.checked) ----------------------

_checked_decompose = icl_kd.checked(_jit_decompose)


def test_checked_raises_under_jit_where_the_plain_call_poisons():
  """NaN demonstrations under jit: NaN without the wrapper, an error naming demos with it."""
  assert all(np.all(np.isnan(leaf)) for leaf in jax.tree_util.tree_leaves(
      _jit_decompose(P, NAN_DEMOS, PREFIX, QUERY)))
  with pytest.raises(ValueError, match="demos contains non-finite values"):
    _checked_decompose(P, NAN_DEMOS, PREFIX, QUERY)
  with pytest.raises(ValueError, match="tau must be > 0, got 0.0"):
    _checked_decompose(P, DEMOS, PREFIX, QUERY, tau=jnp.asarray(0.0))
  with pytest.raises(ValueError, match="demonstrations kept by demo_mask must be > 0"):
    _checked_decompose(P, DEMOS, PREFIX, QUERY, demo_mask=jnp.zeros(5, bool))
  good = _checked_decompose(P, DEMOS, PREFIX, QUERY)            # valid input: the same numbers
  np.testing.assert_array_equal(good.attention, _jit_decompose(P, DEMOS, PREFIX, QUERY).attention)


def test_checked_inside_jit_says_to_wrap_the_jitted_function():
  with pytest.raises(TypeError, match=r"checked\(jax\.jit\(f\)\), not jax\.jit\(checked\(f\)\)"):
    jax.jit(icl_kd.checked(icl_kd.decompose))(P, NAN_DEMOS, PREFIX, QUERY)


def test_checked_names_the_bad_row_of_a_vmapped_batch():
  eta = jax.jit(jax.vmap(lambda d: icl_kd.one_step_kd_weights(P, d, eta=0.5).coeffs))
  batch = jnp.stack([DEMOS, NAN_DEMOS])
  assert np.all(np.isnan(eta(batch)[1])) and np.all(np.isfinite(eta(batch)[0]))
  with pytest.raises(ValueError, match="demos contains non-finite values"):
    icl_kd.checked(eta)(batch)


def test_underflowed_eta_points_to_log_eta():
  """Sharp attention: eta* underflows to 0.0; eta=out.eta says to pass log_eta, which works."""
  params = P._replace(w_q=P.w_q * 40.0, w_k=P.w_k * 40.0)
  out = icl_kd.decompose(params, DEMOS, None, DEMOS[0])      # the query attends to itself
  assert float(out.eta) == 0.0 and np.isfinite(float(out.log_eta)) and out.log_eta < -745
  with pytest.raises(ValueError, match=r"eta must be > 0, got 0\.0; .*log_eta=out\.log_eta"):
    icl_kd.one_step_kd_weights(params, DEMOS, eta=out.eta)
  w1 = icl_kd.one_step_kd_weights(params, DEMOS, log_eta=out.log_eta)
  assert float(icl_kd.relative_hs_error(w1, out.w0, aligned=True)) < 1e-12


_X64_EVERY_CALL_SITE = textwrap.dedent("""
    import warnings
    import jax, jax.numpy as jnp, numpy as np
    import icl_kd
    assert not jax.config.jax_enable_x64
    demos, query = np.random.default_rng(0).normal(size=(6, 4)), np.ones(4)   # NumPy float64
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")                    # Python's default: once per line
        for _ in range(3):
            a = icl_kd.init_params(4, key=jax.random.key(0), dtype=jnp.float64)   # line A
        b = icl_kd.init_params(4, key=jax.random.key(1), dtype=jnp.float64)       # line B
        params = icl_kd.init_params(4, key=jax.random.key(0))
        icl_kd.decompose(params, demos, None, query)                              # line C
        c = jax.jit(lambda k: icl_kd.init_params(4, key=k, dtype=jnp.float64))(jax.random.key(2))
    kinds = [w for w in caught if issubclass(w.category, icl_kd.Float64TruncatedWarning)]
    assert a.w_q.dtype == b.w_q.dtype == c.w_q.dtype == np.float32
    print([(w.filename, w.lineno, str(w.message).split(" ")[0]) for w in kinds])
""")


def test_float64_request_without_x64_warns_at_every_call_site():
  """x64 off: each line asking for float64 is told, at that line (not once per process)."""
  env = {**__import__("os").environ, "JAX_ENABLE_X64": "0", "JAX_PLATFORMS": "cpu"}
  res = subprocess.run([sys.executable, "-c", _X64_EVERY_CALL_SITE], capture_output=True,
                       text=True, env=env, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  seen = eval(res.stdout.strip().splitlines()[-1])
  lines = _X64_EVERY_CALL_SITE.splitlines()
  where = {tag: 1 + next(i for i, ln in enumerate(lines) if f"# line {tag}" in ln) for tag in "ABC"}
  jit_line = 1 + next(i for i, ln in enumerate(lines) if "jax.jit(lambda k" in ln)
  assert seen == [("<string>", where["A"], "dtype=float64"),
                  ("<string>", where["B"], "dtype=float64"),
                  ("<string>", where["C"], "demos"), ("<string>", where["C"], "query"),
                  ("<string>", jit_line, "dtype=float64")], seen
