"""F1 (C1, ``thm3.1``): attention is the reference model (W_0 + dW) phi(W^Q x').

(a) Every output coordinate of h(x') against (W_0 + dW) phi(W^Q x') evaluated
    in exact dual form, for prompts whose largest |score| spans 1e-3 .. 1e3
    (the instances of ``proofs_check`` claim ``thm3.1``): on the identity line.
(b) The relative error per prompt against the largest |score|, with docs/THEORY.md's
    tolerance 1e-12 max(1, max|s|/10) (float64).
(c) Explicit feature maps: the error of the primal prediction W_m phi_m(W^Q x')
    against the exact h(x'), in units of sum_j p_j ||W^V x_j||, as the feature count m grows,
    for i.i.d. and orthogonal positive random features (Choromanski et al.,
    2021) and Taylor features of increasing degree, log-log with fitted slopes
    (random features: m^{-1/2} expected).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import icl_kd
from figures import style, table
from icl_kd import claims
from icl_kd.tolerances import identity_tolerance

ID, SLUG, CLAIMS = "F1", "decomposition", ("thm3.1",)
BUCKETS = (claims.PromptBucket(16, 4, 6, 4, 3, True),)  # (N, M, d, d_k, d_v, self-attention)


class Config(NamedTuple):
  seed: int = 0
  instances: int = 1024           # per bucket, panels (a, b)
  feature_instances: int = 32     # prompts for panel (c)
  feature_draws: int = 4          # random-feature draws per prompt
  feature_counts: tuple = (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
  taylor_degrees: tuple = (0, 1, 2, 3, 4, 5, 6, 7)
  feature_bucket: tuple = (16, 0, 4, 4, 2)   # (N, M, d, d_k, d_v)
  feature_score: float = 1.0      # largest |score| of the panel (c) prompts


QUICK = Config(instances=64, feature_instances=8, feature_draws=2,
               feature_counts=(4, 16, 64, 256), taylor_degrees=(0, 1, 2, 3, 4))


def config(*, quick: bool = False, seed: int = 0, out: str | None = None, **overrides) -> Config:
  del out  # computed from the library alone
  return (QUICK if quick else Config())._replace(seed=seed, **overrides)


def _identity_batch(keys, bucket):
  def one(key):
    inst = claims.sample_prompt(key, bucket, jnp.float64)
    out = claims.decompose_prompt(inst, bucket)
    # the C1 error of proofs_check's thm3.1, in units of sum_j p_j |W^V x_j| (e.unit)
    e = claims.c1_error(claims.prompt_params(inst), inst["demos"], inst["prefix"], inst["query"],
                        tau=inst["tau"], include_query=bucket.include_query, decomposition=out)
    return out.attention, out.reference, e.error, e.tolerance, out.max_abs_score, e.unit
  return jax.vmap(one)(keys)


_identity_batch = jax.jit(_identity_batch, static_argnums=1)


def _prompt(key, bucket, score):
  """A prompt (params, demos, prefix, query) scaled so that max_j |s_j| = score (tau = 1)."""
  # tokens N(0, I/d), so |x| ~ 1 and kappa stays O(1): the regime of the error rates.
  p = claims.scaled_prompt(key, bucket, jnp.float64, max_abs_score=score,
                           token_scale=1.0 / np.sqrt(bucket[2]))
  return p.params, p.demos, p.prefix, p.query


def _feature_errors(keys, fkeys, bucket, score, counts, degrees):
  """Relative errors of W_m phi_m(W^Q x') for every m of ``counts`` and degree of ``degrees``.

  One draw of m_max = max(counts) random features serves every m: its first m
  rows are a draw of m features (for the orthogonal map, m a multiple of d_k
  keeps whole blocks), rescaled by sqrt(m_max / m). Likewise the degree-p
  Taylor features are the first sum_{n<=p} d_k^n coordinates of the top degree.
  Returns (iid (P, D, C), orthogonal (P, D, C), taylor (P, T)).
  """
  d_k, m_max = bucket[3], max(counts)

  def one(key, fkey):
    params, demos, prefix, query = _prompt(key, bucket, score)
    out = icl_kd.decompose(params, demos, prefix, query)
    w = out.w0 + out.dw
    z = jnp.dot(params.w_q, query)                                           # (d_k,)
    # errors in units of sum_j p_j |W^V x_j| (as proofs_check's C1 check): |h| itself can
    # cancel to ~0 and would turn a small absolute error into an arbitrary relative one
    norm = claims.c1_error(params, demos, prefix, query, decomposition=out).unit

    def rf(orthogonal):
      fm = icl_kd.positive_random_features(d_k, m_max, key=fkey, orthogonal=orthogonal,
                                           dtype=jnp.float64)
      w_max, phi = w.to_primal(fm), fm(z)                                    # (d_v, m_max), (m_max,)
      return jnp.stack([jnp.linalg.norm(jnp.dot(w_max[:, :m], phi[:m]) * (m_max / m)
                                        - out.attention) / norm for m in counts])

    fm = icl_kd.taylor_features(d_k, max(degrees), dtype=jnp.float64)
    w_max, phi = w.to_primal(fm), fm(z)
    dims = [sum(d_k ** n for n in range(p + 1)) for p in degrees]
    taylor = jnp.stack([jnp.linalg.norm(jnp.dot(w_max[:, :k], phi[:k]) - out.attention) / norm
                        for k in dims])
    return rf(False), rf(True), taylor

  per_prompt = lambda k, fk: jax.vmap(lambda f: one(k, f))(fk)
  iid, orth, taylor = jax.vmap(per_prompt)(keys, fkeys)                     # (P, D, ...)
  return iid, orth, taylor[:, 0]


_feature_errors = jax.jit(_feature_errors, static_argnums=(2, 3, 4, 5))


def compute(cfg: Config) -> dict:
  """Both sides of C1 on many prompts, and the primal feature-map errors (see module doc)."""
  k_id, k_feat, k_rf = jax.random.split(jax.random.key(cfg.seed), 3)
  points = {"bucket": [], "instance": [], "coord": [], "attention": [], "reference": [],
            "log10_max_score": []}
  errors = {"bucket": [], "instance": [], "relative_error": [], "tolerance": [],
            "log10_max_score": [], "error_unit": []}
  for b, bucket in enumerate(BUCKETS):
    keys = jax.random.split(jax.random.fold_in(k_id, b), cfg.instances)
    att, ref, err, tol, smax, scale = map(np.asarray, _identity_batch(keys, bucket))
    n, d_v = att.shape
    points["bucket"] += [b] * (n * d_v)
    points["instance"] += np.repeat(np.arange(n), d_v).tolist()
    points["coord"] += np.tile(np.arange(d_v), n).tolist()
    points["attention"] += att.ravel().tolist()
    points["reference"] += ref.ravel().tolist()
    points["log10_max_score"] += np.repeat(np.log10(smax), d_v).tolist()
    errors["bucket"] += [b] * n
    errors["instance"] += list(range(n))
    errors["relative_error"] += err.tolist()
    errors["tolerance"] += tol.tolist()
    errors["log10_max_score"] += np.log10(smax).tolist()
    errors["error_unit"] += scale.tolist()

  fb = tuple(cfg.feature_bucket)
  keys = jax.random.split(k_feat, cfg.feature_instances)
  fkeys = jax.random.split(k_rf, cfg.feature_instances * cfg.feature_draws)
  fkeys = fkeys.reshape(cfg.feature_instances, cfg.feature_draws)
  iid, orth, taylor = map(np.asarray, _feature_errors(keys, fkeys, fb, cfg.feature_score,
                                                      tuple(cfg.feature_counts),
                                                      tuple(cfg.taylor_degrees)))
  features = {"family": [], "num_features": [], "mean_error": [], "std_error_of_mean": []}
  runs = [("i.i.d. RF", iid, cfg.feature_counts), ("orthogonal RF", orth, cfg.feature_counts),
          ("Taylor", taylor, [sum(fb[3] ** n for n in range(p + 1)) for p in cfg.taylor_degrees])]
  for fam, errs, counts in runs:
    for j, m in enumerate(counts):
      e = errs[..., j].ravel()
      features["family"].append(fam)
      features["num_features"].append(int(m))
      features["mean_error"].append(float(e.mean()))
      features["std_error_of_mean"].append(float(e.std(ddof=1) / np.sqrt(e.size)))

  # random features: slope over the upper half of the m range (past the small-m saturation);
  # Taylor: over every degree (its decay is faster than any power, so this is only a summary)
  slopes = {}
  fam_all = np.asarray(features["family"])
  m_all = np.asarray(features["num_features"], float)
  e_all = np.asarray(features["mean_error"])
  for fam in ("i.i.d. RF", "orthogonal RF", "Taylor"):
    sel = fam_all == fam
    if fam != "Taylor":
      sel &= m_all >= np.sqrt(min(cfg.feature_counts) * max(cfg.feature_counts))
    slopes[fam] = style.fit_loglog_slope(m_all[sel], e_all[sel])[0]
  rel = np.asarray(errors["relative_error"])
  ratio = rel / np.asarray(errors["tolerance"])
  meta = dict(id=ID, claims=list(CLAIMS), config=cfg._asdict(), buckets=[list(b) for b in BUCKETS],
              max_relative_error=float(rel.max()), max_error_over_tolerance=float(ratio.max()),
              max_abs_score=float(10 ** np.max(errors["log10_max_score"])),
              min_abs_score=float(10 ** np.min(errors["log10_max_score"])),
              fitted_slopes=slopes, dtype="float64",
              feature_taylor_degrees=list(cfg.taylor_degrees))
  return dict(meta=meta, tables=dict(points=points, errors=errors, features=features))


@style.styled
def make(results: dict):
  """Three panels: identity scatter, error vs score scale, feature-map error vs m."""
  meta = results["meta"]
  pts, err, feat = (table(results, t) for t in ("points", "errors", "features"))
  fig, axes = style.figure(1, 3, height=3.3)
  ax = axes[0, 0]
  sc = ax.scatter(pts["attention"], pts["reference"], c=pts["log10_max_score"], s=5,
                  cmap=style.SEQUENTIAL, vmin=-3, vmax=3, rasterized=True, label="coordinates")
  lo = float(min(pts["attention"].min(), pts["reference"].min()))
  hi = float(max(pts["attention"].max(), pts["reference"].max()))
  style.identity_line(ax, lo, hi)
  ax.set_xlabel("attention output $h(x')_k$")
  ax.set_ylabel("reference model, coordinate $k$")
  ax.set_title("(a) C1: output = reference model", loc="left")
  cb = fig.colorbar(sc, ax=ax, pad=0.01, aspect=30)
  cb.set_label("$\\log_{10}\\max|s_j|$")
  style.legend(ax, loc="upper left", markerscale=2)
  style.annotate(ax, f"max rel. error\n{meta['max_relative_error']:.1e} (float64)")

  ax = axes[0, 1]
  score = 10 ** err["log10_max_score"]
  floor = 1e-18
  exact = err["relative_error"] == 0
  ax.scatter(score[~exact], err["relative_error"][~exact], s=5, color=style.PALETTE["blue"],
             rasterized=True, label="prompts")
  ax.scatter(score[exact], np.full(exact.sum(), floor), s=8, marker="v",
             color=style.PALETTE["sky"], label=f"error exactly 0 ({int(exact.sum())})")
  grid = np.logspace(np.log10(score.min()), np.log10(score.max()), 100)
  ax.plot(grid, np.asarray(identity_tolerance(np.float64, grid)), color=style.VIOLATION,
          ls="--", label="tolerance (float64)")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_ylim(floor / 3, 1e-9)
  ax.set_xlabel("largest score $\\max|s_j|$")
  ax.set_ylabel("relative error of C1")
  ax.set_title("(b) exact up to rounding", loc="left")
  style.legend_below(ax)
  style.annotate(ax, f"max error / tol.\n= {meta['max_error_over_tolerance']:.1e}",
                 loc="upper left")

  ax = axes[0, 2]
  fams = ("i.i.d. RF", "orthogonal RF", "Taylor")
  for i, fam in enumerate(fams):
    sel = feat["family"] == fam
    m, e, se = feat["num_features"][sel], feat["mean_error"][sel], feat["std_error_of_mean"][sel]
    slope = meta["fitted_slopes"][fam]
    what = "slope, upper half" if "RF" in fam else "slope"
    ax.errorbar(m, e, yerr=se, marker=style.MARKERS[i], color=style.CYCLE[i], capsize=2,
                label=f"{fam} ({what} {slope:.2f})")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("feature count $m$")
  ax.set_ylabel("error of $W_m\\phi_m$ / $\\Sigma\\, p_j\\|W^V x_j\\|$")
  ax.set_title("(c) explicit feature maps", loc="left")
  style.legend_below(ax)
  fig.suptitle("F1. Claim C1 (thm3.1): attention output $h(x')$ = reference model "
               "$(W_0+\\Delta W)\\,\\phi(W^Q x')$")
  return fig
