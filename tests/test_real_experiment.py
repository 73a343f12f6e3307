"""Tests of the real-text corpus, the experiment dispatcher and the experiment ``real``.

The end-to-end run uses the pretrained model and is skipped only when the model
package is absent. Its saved arrays are checked against closed forms computed
here (eta* = N / (2 D'), entropy bounds, unit-norm embeddings) and against
the tolerances of docs/THEORY.md, not against numbers copied from a run.
"""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_kd import text_corpus
from icl_kd.attention import AttentionParams
from icl_kd.experiments import __main__ as dispatcher
from icl_kd.experiments import real


# -- the corpus -------------------------------------------------------------------------

def test_split_sentences_keeps_prose_and_drops_code():
  text = """Return a new array, e.g. one filled with :func:`numpy.zeros`. The ``shape`` must be
a tuple of positive integers here!

    >>> np.zeros(3)
    array([0., 0., 0.])

x = foo(a[1], b) is not prose at all and has symbols.
Short one. Is this a question that has enough words?"""
  got = text_corpus.split_sentences(text)
  assert got == ["Return a new array, e.g. one filled with numpy.zeros.",
                 "The shape must be a tuple of positive integers here!",
                 "Is this a question that has enough words?"]


def test_domains_have_sources_and_no_shared_sentences():
  corpus = text_corpus.load_corpus()
  assert tuple(corpus) == text_corpus.DOMAINS
  prefixes = {"python_docs": "pydoc_data.topics[", "licenses": ".dist-info",
              "numpy_docs": "numpy.", "jax_docs": "jax."}
  texts = set()
  for d, sents in corpus.items():
    assert len(sents) >= 50, d
    for s in sents:
      assert s.domain == d and prefixes[d] in s.source
      assert text_corpus.MIN_WORDS <= len(s.text.split()) <= text_corpus.MAX_WORDS
    here = {s.text for s in sents}
    assert len(here) == len(sents) and not here & texts
    texts |= here
  with pytest.raises(ValueError, match="domain must be one of"):
    text_corpus.domain_sentences("poetry")


def test_sampling_is_keyed():
  corpus = text_corpus.load_corpus(("python_docs", "numpy_docs"))
  a = text_corpus.sample_sentences(corpus, 5, key=jax.random.key(1))
  b = text_corpus.sample_sentences(corpus, 5, key=jax.random.key(1))
  c = text_corpus.sample_sentences(corpus, 5, key=jax.random.key(2))
  assert a == b and a != c
  assert all(len(v) == 5 and len(set(v)) == 5 for v in a.values())
  with pytest.raises(ValueError, match="n_per_domain must be a positive integer"):
    text_corpus.sample_sentences(corpus, 0, key=jax.random.key(1))


# -- pieces of the experiment -----------------------------------------------------------

log_mmd_jit = jax.jit(real._log_mmd_distillation)


def test_bucketize_keeps_first_and_last_token():
  ids = [101, 5, 6, 7, 8, 9, 10, 102]
  assert real._bucketize(ids, (4, 6, 12)) == [101, 5, 6, 7, 8, 102]
  assert real._bucketize(ids, (8,)) == ids
  assert real._bucketize(ids, (9, 12)) is None


def test_distillation_mmd_matches_numpy():
  """log MMD_kV (biased) against the definition written out in NumPy (claim thm4.1's right side)."""
  ks = jax.random.split(jax.random.key(3), 5)
  d, dk, tau = 6, 3, 2.0
  p = AttentionParams(*(0.5 * jax.random.normal(k, (dk, d), jnp.float64) for k in ks[:3]))
  x = jax.random.normal(ks[3], (7, d), jnp.float64)
  y = 1.0 + jax.random.normal(ks[4], (5, d), jnp.float64)
  wk, wv = np.asarray(p.w_k), np.asarray(p.w_v)

  def k(a, b):
    return (a @ wv.T) @ (b @ wv.T).T * np.exp((a @ wk.T) @ (b @ wk.T).T / tau)
  xn, yn = np.asarray(x), np.asarray(y)
  want = k(xn, xn).mean() + k(yn, yn).mean() - 2 * k(xn, yn).mean()
  got = float(jnp.exp(2 * log_mmd_jit(p, x, y, jnp.asarray(tau))))
  assert got == pytest.approx(want, rel=1e-12)


def test_embedding_mmd_matches_numpy():
  rng = np.random.default_rng(0)
  x, y = rng.standard_normal((9, 4)), 0.5 + rng.standard_normal((8, 4))
  h = 1.7

  def k(a, b):
    return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * h * h))
  kxx, kyy = k(x, x), k(y, y)
  want = ((kxx.sum() - 9) / 72 + (kyy.sum() - 8) / 56 - 2 * k(x, y).mean())
  assert real._gaussian_mmd2_unbiased(x, y, h) == pytest.approx(want, rel=1e-12)
  z = np.concatenate([x, y])
  dists = [np.linalg.norm(z[i] - z[j]) for i in range(17) for j in range(i + 1, 17)]
  assert real._median_bandwidth(z) == pytest.approx(np.median(dists), rel=1e-12)


def test_cli_arguments():
  args = real.parse_args(["--seed", "3", "--quick", "--out", "x"])
  assert (args.seed, args.quick, args.out) == (3, True, "x")
  assert real.parse_args([]).out == "results/real"
  with pytest.raises(SystemExit):
    real.parse_args(["--seed", "one"])


def test_dispatcher(capsys):
  assert dispatcher.main(["--help"]) == 0
  assert "real" in capsys.readouterr().out
  assert dispatcher.main(["no-such-experiment"]) == 2
  assert "unknown experiment" in capsys.readouterr().err
  assert dispatcher.main([]) == 2


# -- the end-to-end run on the pretrained model --------------------------------------------

def _documented_arrays() -> set:
  doc = real.__doc__
  section = doc[doc.index("``real.npz``"):doc.index("``real.json``:")]
  names = set()
  for line in section.splitlines():
    m = re.match(r"^  ([a-z0-9_]+(?:, [a-z0-9_]+)*)\s", line)
    if m:
      names |= set(m.group(1).split(", "))
  return names


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  try:
    from icl_kd import pretrained
    pretrained.minilm_path()
    import tokenizers  # noqa: F401
  except ModuleNotFoundError as e:
    pytest.skip(f"pretrained model package or the 'real' extra absent ({e})")
  out = tmp_path_factory.mktemp("real")
  cfg = real.RealConfig(sentences_per_domain=4, buckets=(12,), c5_tokens=24, chunk=16)
  res = real.run(cfg, key=jax.random.key(1), log=lambda *_: None)
  real.save(res, out, info={"quick": True, "seed": 1})
  with np.load(out / "real.npz") as f:
    arrays = {k: f[k] for k in f.files}
  return arrays, json.loads((out / "real.json").read_text()), res


def test_main_runs_the_configured_experiment(quick_run, monkeypatch, tmp_path, capsys):
  """The CLI passes --quick/--seed/--sentences-per-domain to run and writes under --out."""
  seen = {}

  def fake_run(config, *, key, model_dir=None, log=print):
    seen.update(config=config, key=key, model_dir=model_dir)
    return quick_run[2]
  monkeypatch.setattr(real, "run", fake_run)
  rc = real.main(["--quick", "--seed", "5", "--sentences-per-domain", "2", "--out", str(tmp_path),
                  "--no-compile-cache"])
  assert rc == 0
  assert seen["config"] == real.QUICK._replace(sentences_per_domain=2)
  assert np.array_equal(jax.random.key_data(seen["key"]), jax.random.key_data(jax.random.key(5)))
  assert (tmp_path / "real.npz").is_file() and (tmp_path / "real.json").is_file()
  doc = json.loads((tmp_path / "real.json").read_text())
  assert (doc["experiment"], doc["quick"], doc["seed"]) == ("real", True, 5)
  assert "| last | float32 |" in capsys.readouterr().out


def test_real_outputs_are_the_documented_arrays(quick_run):
  arrays, doc, _ = quick_run
  assert set(arrays) == _documented_arrays()
  s = len(arrays["num_tokens"])
  assert s == len(doc["sequences"]) >= 8
  assert doc["quick"] is True and doc["seed"] == 1
  assert set(doc["headline"]) >= {"c1_max_rel_err_f32", "c1_max_rel_err_f64", "c5_max_rel_err"}
  for name in ("c1_err_f32", "c1_err_f64", "c1_model_err_f32", "c1_tol_ratio_f64"):
    assert arrays[name].shape == (2, 6, 12)
  for name in ("log_partition", "log_eta", "entropy", "max_abs_score"):
    assert arrays[name].shape == (2, s, 6, 12)
  p = len(arrays["c5_pairs"])
  assert p == 12 and arrays["c5_rel_err"].shape == (p, 6, 12)
  assert "| last | float64 |" in doc["summary"]
  for rec in doc["sequences"]:
    assert rec["domain"] in text_corpus.DOMAINS and rec["source"] and rec["text"]


def test_real_c1_holds_on_every_head(quick_run):
  """docs/THEORY.md C1 tolerances: 1e-5 (float32), 1e-12 (float64), times max(1, max|s|/10)."""
  a, _, _ = quick_run
  for dt, tol in (("f32", 1e-5), ("f64", 1e-12)):
    scale = np.maximum(1.0, a["max_abs_score"].max(axis=1) / 10)
    assert np.all(a[f"c1_tol_ratio_{dt}"] <= 1.0)
    assert np.all(a[f"c1_err_{dt}"] <= tol * scale)
    assert np.all(a[f"c1_model_err_{dt}"] <= 10 * tol * scale)
  assert np.all(a["c1_err_f64"] < a["c1_err_f32"])      # float32 really ran in float32


def test_real_lr_proxy_closed_forms(quick_run):
  """eta* = N / (2 D') with N = b - 1 (query = last) and b - 2 (query = last word piece);
  0 <= entropy <= log(context size) with context size b."""
  a, _, _ = quick_run
  b = a["num_tokens"].astype(float)[:, None, None]
  for qi, n_demo in ((0, b - 1), (1, b - 2)):
    np.testing.assert_allclose(a["log_eta"][qi], np.log(n_demo / 2) - a["log_partition"][qi],
                               rtol=0, atol=1e-12)
    assert np.all(a["entropy"][qi] >= -1e-12)
    assert np.all(a["entropy"][qi] <= np.log(b) + 1e-12)
    # D' >= exp(max score) and D' <= b exp(max score): the max score bounds log D'.
    assert np.all(a["log_partition"][qi] <= np.log(b) + a["max_abs_score"][qi] + 1e-12)


def test_real_c5_identity_and_embeddings(quick_run):
  """C5 (thm4.1) holds on every real head to float64 precision; embeddings are unit vectors."""
  a, _, _ = quick_run
  assert np.all(a["c5_rel_err"] <= 1e-10)
  assert np.all(a["c5_hs_norm"] > 0)
  pairs = [tuple(x) for x in a["c5_pairs"]]
  for i, (p, q) in enumerate(pairs):      # symmetric in (P, Q)
    j = pairs.index((q, p))
    np.testing.assert_allclose(a["c5_hs_norm"][i], a["c5_hs_norm"][j], rtol=1e-10)
  np.testing.assert_allclose(np.linalg.norm(a["embeddings"], axis=1), 1.0, rtol=1e-12)
  assert np.all(np.isfinite(a["emb_mmd2"]))
  np.testing.assert_allclose(a["emb_mmd2"], a["emb_mmd2"].T, rtol=1e-12)
