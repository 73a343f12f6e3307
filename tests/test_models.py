"""Flax models map onto AttentionParams exactly; training loop, weight decay masks, checkpoints."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, strategies as st

from icl_kd import decompose, models, softmax_attention, train

SEEDS = st.integers(0, 2**31 - 1)
F64 = jnp.float64

SINGLE = models.SoftmaxAttentionLayer(d_k=3, d_v=2, tau=1.5, dtype=F64)
LINEAR = models.LinearAttentionLayer(d_k=3, d_v=2, dtype=F64)
DEEP = models.Transformer(n_layers=2, n_heads=2, d_model=8, d_mlp=8, d_out=1, dtype=F64)
FLAT = models.Transformer(n_layers=2, n_heads=2, d_model=8, d_mlp=8, d_out=1, positions=False,
                          dtype=F64)
N, D = 5, 4


def _inputs(seed):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return jax.random.normal(k1, (N, D), F64), jax.random.normal(k2, (D,), F64)


def _init(model, seed):
  demos, query = _inputs(seed)
  return model.init(jax.random.key(seed + 1), demos, query)


apply_single = jax.jit(SINGLE.apply)
apply_linear = jax.jit(LINEAR.apply)
apply_deep = jax.jit(DEEP.apply)
apply_flat = jax.jit(FLAT.apply)
deep_inter = jax.jit(lambda v, dm, q: models.transformer_intermediates(DEEP, v, dm, q))
attention = jax.jit(softmax_attention)
decompose_jit = jax.jit(decompose)


def _np_softmax_attention(w_q, w_k, w_v, context, query, tau):
  s = (context @ w_k.T) @ (w_q @ query) / tau
  p = np.exp(s - s.max())
  return (p / p.sum()) @ (context @ w_v.T)


@given(seed=SEEDS)
def test_single_layer_is_softmax_attention_of_its_params(seed):
  v = _init(SINGLE, seed)
  demos, query = _inputs(seed)
  p = models.attention_params(v)
  assert p.w_q.shape == (3, D) and p.w_v.shape == (2, D)
  out = np.asarray(apply_single(v, demos, query))
  context = np.concatenate([np.asarray(demos), np.asarray(query)[None]])
  expected = _np_softmax_attention(*(np.asarray(a) for a in p), context, np.asarray(query), 1.5)
  np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)
  dec = decompose_jit(p, demos, jnp.zeros((0, D), F64), query, tau=1.5)
  np.testing.assert_allclose(out, np.asarray(dec.reference), rtol=1e-12, atol=1e-14)


@given(seed=SEEDS)
def test_single_layer_is_permutation_invariant(seed):
  v = _init(SINGLE, seed)
  demos, query = _inputs(seed)
  perm = jax.random.permutation(jax.random.key(seed + 7), N)
  np.testing.assert_allclose(np.asarray(apply_single(v, demos[perm], query)),
                             np.asarray(apply_single(v, demos, query)), rtol=1e-12, atol=1e-14)


@given(seed=SEEDS)
def test_linear_attention_formula(seed):
  v = _init(LINEAR, seed)
  demos, query = _inputs(seed)
  w_q, w_k, w_v = (np.asarray(a) for a in models.attention_params(v))
  x = np.asarray(demos)
  expected = sum((w_v @ x[i]) * ((w_k @ x[i]) @ (w_q @ np.asarray(query))) for i in range(N)) / N
  np.testing.assert_allclose(np.asarray(apply_linear(v, demos, query)), expected, rtol=1e-12,
                             atol=1e-14)


@given(seed=SEEDS)
def test_every_transformer_head_is_softmax_attention_of_its_params(seed):
  v = _init(DEEP, seed)
  demos, query = _inputs(seed)
  inter = deep_inter(v, demos, query)
  assert inter.attn_inputs.shape == (2, N + 1, 8)
  assert inter.head_outputs.shape == (2, 2, N + 1, 8)
  tau = models.head_tau(v)
  assert tau == pytest.approx(2.0)                                 # sqrt(d_model / n_heads)
  for layer in range(2):
    x = inter.attn_inputs[layer]
    for head in range(2):
      p = models.head_attention_params(v, layer, head)
      # the query sees every token, itself included
      h_q = attention(p, x, x[N], tau=tau)
      np.testing.assert_allclose(np.asarray(h_q), np.asarray(inter.head_outputs[layer, head, N]),
                                 rtol=1e-11, atol=1e-13)
      # a demonstration sees the demonstrations only
      h_0 = attention(p, x[:N], x[0], tau=tau)
      np.testing.assert_allclose(np.asarray(h_0), np.asarray(inter.head_outputs[layer, head, 0]),
                                 rtol=1e-11, atol=1e-13)
      dec = decompose_jit(p, x[:N], jnp.zeros((0, 8), F64), x[N], tau=tau)
      np.testing.assert_allclose(np.asarray(dec.reference), np.asarray(h_q), rtol=1e-11,
                                 atol=1e-13)
  np.testing.assert_allclose(np.asarray(inter.output), np.asarray(apply_deep(v, demos, query)),
                             rtol=1e-12)


def test_unfolded_head_params_are_the_raw_value_map():
  v = _init(DEEP, 0)
  p = models.head_attention_params(v, 1, 0, fold_output=False)
  np.testing.assert_array_equal(np.asarray(p.w_v), np.asarray(v["params"]["block_1"]["w_v"][0]))
  folded = models.head_attention_params(v, 1, 0)
  np.testing.assert_allclose(np.asarray(folded.w_v),
                             np.asarray(v["params"]["block_1"]["w_o"][0]) @ np.asarray(p.w_v),
                             rtol=1e-12)
  stacked = models.stacked_head_params(v)
  assert stacked.w_v.shape == (2, 2, 8, 8)
  for layer in range(2):
    for head in range(2):
      one = models.head_attention_params(v, layer, head)
      for a, b in zip(stacked, one):
        np.testing.assert_allclose(np.asarray(a[layer, head]), np.asarray(b), rtol=1e-12)
  with pytest.raises(ValueError, match="layer"):
    models.head_attention_params(v, 2, 0)
  with pytest.raises(ValueError, match="head"):
    models.head_attention_params(v, 0, 2)
  with pytest.raises(ValueError, match="attention parameters"):
    models.attention_params(v)


def test_positions_break_and_their_absence_keeps_permutation_invariance():
  v = _init(DEEP, 3)
  demos, query = _inputs(3)
  perm = jnp.array([4, 2, 0, 1, 3])
  a, b = np.asarray(apply_deep(v, demos, query)), np.asarray(apply_deep(v, demos[perm], query))
  assert np.max(np.abs(a - b)) > 1e-6
  a, b = np.asarray(apply_flat(v, demos, query)), np.asarray(apply_flat(v, demos[perm], query))
  np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_sinusoidal_positions_and_mask():
  pe = np.asarray(models.sinusoidal_positions(5, 6, dtype=F64))
  t, i = 3, 1
  assert pe[t, 2 * i] == pytest.approx(np.sin(t / 10000 ** (2 * i / 6)), rel=1e-12)
  assert pe[t, 2 * i + 1] == pytest.approx(np.cos(t / 10000 ** (2 * i / 6)), rel=1e-12)
  mask = np.asarray(models.prompt_mask(3))
  expected = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(mask, expected)


# -- training -------------------------------------------------------------------------


def _quadratic(params, batch):
  return jnp.sum((params["a"] - batch) ** 2) + jnp.sum(params["b"] ** 2)


def _target(key):
  return jnp.ones((3,), F64) + 0.0 * jax.random.normal(key, (3,), F64)


def test_train_is_deterministic_and_minimises():
  p0 = {"a": jnp.zeros((3,), F64), "b": jnp.ones((2,), F64)}
  kw = dict(key=jax.random.key(0), steps=60, optimizer=optax.sgd(0.1), sample_batch=_target,
            log_every=25, stream=io.StringIO())
  r1 = train.train(_quadratic, p0, **kw)
  r2 = train.train(_quadratic, p0, **kw)
  np.testing.assert_array_equal(r1.losses, r2.losses)
  assert r1.losses.shape == (60,)
  # gradient descent on a quadratic with step 0.1: a_t = 1 - 0.8^t, b_t = 0.8^t (exactly).
  np.testing.assert_allclose(np.asarray(r1.params["a"]), 1 - 0.8 ** 60, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(r1.params["b"]), 0.8 ** 60, rtol=1e-10)
  np.testing.assert_allclose(r1.losses[0], 3 + 2, rtol=1e-12)
  with pytest.raises(ValueError, match="steps"):
    train.train(_quadratic, p0, **{**kw, "steps": 0})


def test_adamw_on_decays_only_the_masked_parameters():
  params = {"w_q": jnp.ones((2, 2), F64), "w_k": jnp.ones((2, 2), F64),
            "w_v": jnp.ones((1, 2), F64)}
  mask = train.decay_mask(params)
  assert mask == {"w_q": False, "w_k": True, "w_v": True}
  opt = train.adamw_on(0.1, 0.5)
  state = opt.init(params)
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = opt.update(zero, state, params)
  new = optax.apply_updates(params, updates)
  # with a zero gradient adamw's update is -lr * wd * p on the decayed leaves only.
  np.testing.assert_allclose(np.asarray(new["w_k"]), 1 - 0.1 * 0.5, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(new["w_v"]), 1 - 0.1 * 0.5, rtol=1e-12)
  np.testing.assert_array_equal(np.asarray(new["w_q"]), 1.0)


def test_checkpoint_round_trip(tmp_path):
  v = _init(DEEP, 5)["params"]
  path = str(tmp_path / "ckpt.npz")
  train.save_checkpoint(path, v, steps=7, seed=5)
  like = jax.tree_util.tree_map(jnp.zeros_like, v)
  loaded, meta = train.load_checkpoint(path, like)
  assert meta == {"steps": 7, "seed": 5}
  for a, b in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  other = _init(models.Transformer(n_layers=1, n_heads=2, d_model=8, d_mlp=8, dtype=F64), 5)
  with pytest.raises(ValueError, match="checkpoint"):
    train.load_checkpoint(path, other["params"])
