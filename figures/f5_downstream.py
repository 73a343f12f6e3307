"""F5 (C6, ``thm4.2``): the KD risk on the target and the prediction gap grow with MMD.

The (P, Q) pairs of F4: the checker's own pair instances (Q shifted by
|s| ~ U(0, 2)); W_0(P), W_0(Q) are the one-step weights (eta = 1/2) of the two
samples, evaluated on the instance's fresh target sample of Q (64 points) and at
its query x' ~ Q:

(a) the root KD risk sqrt(R_Q(W_0(P))) against ||dW_PQ||_HS = 2 eta MMD_kV,
    with its C6 bound sqrt(R_Q(W_0(Q))) + C ||dW_PQ||_HS (the fraction of
    pairs where W_0(P) is even better on Q than W_0(Q) is annotated: at
    eta = 1/2 neither is the risk minimiser);
(b) the prediction gap ||dW_PQ phi(W^Q x')|| against the same MMD, with its
    C6 bound ||dW_PQ||_HS exp(|W^Q x'|^2 / (2 tau));
(c) ``thm4.2-mmd`` (consistency: thm4.1-bound times Cauchy-Schwarz): the prediction gap against
    c eta ||W^V||_op MMD_kx(P, Q) exp(|W^Q x'|^2 / (2 tau)), under the diagonal;
(d) ``thm4.2-literal`` (conjecture): the same with M_phi = max ||phi(W^K x)|| over
    the two samples in place of ||phi(W^Q x')||; a violation needs a query
    feature longer than M_phi (the query is not one of the keys M_phi bounds).

(a) and (b) are consistency checks (``thm4.2-risk``, ``thm4.2-prediction``:
Cauchy-Schwarz and the triangle inequality). Convention ``eq12`` (c = 2)
throughout; the literal ratio of (d) is the same under ``half`` (both of its
sides carry c).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from figures import style, table
from figures.f4_mmd_bias import ETA, MAX_SHIFT, pair_instances
from icl_kd import bounds
from icl_kd.claims import c5_mmd_bias as c5

ID, SLUG, CLAIMS = "F5", "downstream", ("thm4.2-risk", "thm4.2-prediction", "thm4.2-mmd",
                                        "thm4.2-literal")
TARGET = c5.TARGET_SAMPLE      # Q's target sample of each instance (the risk's R_Q)
CONVENTION = "eq12"


class Config(NamedTuple):
  seed: int = 0
  pairs: int = 384


QUICK = Config(pairs=32)


def config(*, quick: bool = False, seed: int = 0, out: str | None = None, **overrides) -> Config:
  del out  # computed from the library alone
  return (QUICK if quick else Config())._replace(seed=seed, **overrides)


def _sides(inst):
  params = c5.pair_params(inst)
  kw = dict(log_eta=inst["log_eta"], tau=inst["tau"], convention=CONVENTION)
  r = bounds.risk_bound(params, inst["x_p"], inst["x_q"], inst["x_target"], **kw)
  g = bounds.prediction_gap(params, inst["x_p"], inst["x_q"], inst["query"], **kw)
  return (r.weight_gap_norm, r.lhs, r.rhs, r.risk_p - r.risk_q, g.lhs, g.rhs, g.mmd_rhs,
          g.literal_rhs, g.mmd_x, g.log_feature_norm, g.log_feature_bound)


_pairs = jax.jit(jax.vmap(_sides))


def compute(cfg: Config) -> dict:
  """Both sides of the two C6 inequalities on the checker's own pair instances (F4's)."""
  samples = pair_instances(cfg.seed, cfg.pairs)
  out = [np.asarray(a).ravel() for a in _pairs(samples)]
  names = ("weight_gap_norm", "root_risk_p", "root_risk_bound", "excess_risk",
           "prediction_gap", "prediction_gap_bound", "prediction_mmd_rhs",
           "prediction_literal_rhs", "mmd_x", "log_query_feature_norm", "log_feature_bound")
  pairs = {"index": np.arange(cfg.pairs).tolist(),
           "shift": np.linalg.norm(np.asarray(samples["q_center"]), axis=1).tolist()}
  pairs.update({n: a.tolist() for n, a in zip(names, out)})
  gap_norm = out[0]
  risk_ratio = out[1] / out[2]
  pred_ratio = out[4] / out[5]
  mmd_ratio, literal_ratio = out[4] / out[6], out[4] / out[7]
  pairs["prediction_literal_violated"] = (literal_ratio > 1.0).tolist()
  meta = dict(id=ID, claims=list(CLAIMS), config=cfg._asdict(), eta=ETA, tau=1.0, target=TARGET,
              max_shift=MAX_SHIFT, negative_excess_fraction=float(np.mean(out[3] < 0)),
              sampler="icl_kd.claims.sample_pair (the checker's instances 0..pairs-1 of bucket 0)",
              max_risk_ratio=float(np.max(risk_ratio)),
              max_prediction_ratio=float(np.max(pred_ratio)),
              risk_slope=style.fit_loglog_slope(gap_norm, out[1])[0],
              prediction_slope=style.fit_loglog_slope(gap_norm, out[4])[0], dtype="float64",
              convention=CONVENTION, convention_factor=bounds.convention_factor(CONVENTION),
              mmd_violations=int(np.sum(mmd_ratio > 1.0)), max_mmd_ratio=float(mmd_ratio.max()),
              literal_violations=int(np.sum(literal_ratio > 1.0)),
              max_literal_ratio=float(literal_ratio.max()), pairs=int(literal_ratio.size),
              query_beyond_m_phi=int(np.sum(out[9] > out[10])),
              check_pair=_check_pair(samples, cfg))
  return dict(meta=meta, tables=dict(pairs=pairs))


def _check_pair(samples: dict, cfg) -> dict:
  """One pair's instance (the middle one), so that its row of the pairs table can be recomputed
  from scratch; ``row`` indexes the pairs table."""
  row = cfg.pairs // 2
  out = {k: np.asarray(v)[row].tolist() for k, v in samples.items()
         if k in ("w_q", "w_k", "w_v", "x_p", "x_q", "query", "x_target")}
  return dict(row=row, **out)


@style.styled
def make(results: dict):
  """Top: root KD risk and prediction gap against c eta MMD_kV, with their consistency bounds.
  Bottom: the prediction gap against the right sides of thm4.2-mmd and thm4.2-literal."""
  meta, t = results["meta"], table(results, "pairs")
  x = t["weight_gap_norm"]
  c = meta.get("convention_factor", 2.0)
  chain = "prediction_mmd_rhs" in t
  fig, axes = style.figure(2 if chain else 1, 2, height=6.9 if chain else 3.5)
  panels = (("root_risk_p", "root_risk_bound", "root KD risk $\\sqrt{R_Q(W_0(P))}$",
             "bound $\\sqrt{R_Q(W_0(Q))} + C\\|\\Delta W_{PQ}\\|_{HS}$",
             "(a) KD risk on $Q$ of $W_0(P)$", meta["max_risk_ratio"], meta["risk_slope"]),
            ("prediction_gap", "prediction_gap_bound", "$\\|\\Delta W_{PQ}\\,\\phi(W^Q x')\\|$",
             "bound $\\|\\Delta W_{PQ}\\|_{HS}\\, e^{|W^Q x'|^2/2\\tau}$",
             "(b) prediction gap at $x' \\sim Q$", meta["max_prediction_ratio"],
             meta["prediction_slope"]))
  for i, (col, bcol, ylabel, blabel, title, ratio, slope) in enumerate(panels):
    ax = axes[0, i]
    y, b = t[col], t[bcol]
    pos = y > 0
    ax.scatter(x, b, marker="o", facecolor="none", edgecolor=style.PALETTE["vermillion"], s=14,
               lw=0.7, label=blabel, rasterized=True)
    sc = ax.scatter(x[pos], y[pos], c=t["shift"][pos], cmap=style.SEQUENTIAL, vmin=0,
                    vmax=meta["max_shift"], s=9, label="observed (pairs P, Q)", rasterized=True)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"$\\|\\Delta W_{{PQ}}\\|_{{HS}} = {c:g}\\eta\\,\\mathrm{{MMD}}_{{k_V}}(P,Q)$")
    ax.set_ylabel(ylabel)
    ax.set_title(title + " (consistency)", loc="left")
    style.legend_below(ax, bbox_to_anchor=(0.5, -0.2))
    note = f"max observed/bound {ratio:.2f}\nfitted slope {slope:.2f}"
    if i == 0:
      note += f"\n$R_Q(W_0(P)) < R_Q(W_0(Q))$: {100 * meta['negative_excess_fraction']:.0f}%"
    style.annotate(ax, note, loc="upper left")
  if chain:
    _draw_chain(axes[1], meta, t, c)
  cb = fig.colorbar(sc, ax=axes[:, 1], pad=0.01, aspect=40 if chain else 30)
  cb.set_label("shift $\\|\\mu_Q - \\mu_P\\|$")
  fig.suptitle("F5. Claim C6 (thm4.2): downstream cost of the MMD bias "
               f"($\\eta$={meta['eta']}, target sample {meta['target']})\n"
               f"convention {meta.get('convention', 'eq12')}: "
               f"$W_0(P) = {c:g}\\eta\\,E_P[W^Vx\\,\\phi(W^Kx)^T]$ (c = {c:g})")
  return fig


def _draw_chain(axes, meta: dict, t: dict, c: float) -> None:
  """(c) thm4.2-mmd and (d) thm4.2-literal: the prediction gap against each right side."""
  y = t["prediction_gap"]
  panels = (("prediction_mmd_rhs",
             f"${c:g}\\eta\\|W^V\\|_{{op}}\\mathrm{{MMD}}_{{k_x}}(P,Q)\\,e^{{|W^Q x'|^2/2\\tau}}$",
             "(c) thm4.2-mmd (bound)", meta["mmd_violations"], meta["max_mmd_ratio"]),
            ("prediction_literal_rhs",
             f"${c:g}\\eta\\|W^V\\|_{{op}}\\mathrm{{MMD}}_{{k_x}}(P,Q)\\,M_\\phi$",
             "(d) thm4.2-literal (conjecture)", meta["literal_violations"],
             meta["max_literal_ratio"]))
  for ax, (col, xlabel, title, violations, worst) in zip(axes, panels):
    rhs = t[col]
    pos = y > 0
    viol = pos & (y > rhs)
    ok = pos & ~viol
    lo, hi = style.log_range(y[pos], rhs[pos])
    ax.scatter(rhs[ok], y[ok], c=t["shift"][ok], cmap=style.SEQUENTIAL, vmin=0,
               vmax=meta["max_shift"], s=9, label="pairs (P, Q)", rasterized=True)
    if viol.any():
      ax.scatter(rhs[viol], y[viol], marker="x", s=22, color=style.VIOLATION,
                 label=f"violations ({int(viol.sum())})")
    style.identity_line(ax, lo, hi, label="y = x")
    style.log_square(ax, lo, hi)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("$\\|\\Delta W_{PQ}\\,\\phi(W^Q x')\\|$")
    ax.set_title(title, loc="left")
    style.legend_below(ax, bbox_to_anchor=(0.5, -0.2))
    note = f"violations {violations}/{meta['pairs']}, max lhs/rhs {worst:.3g}"
    if col == "prediction_literal_rhs":
      note += (f"\nqueries with $\\|\\phi(W^Qx')\\| > M_\\phi$: "
               f"{meta['query_beyond_m_phi']}/{meta['pairs']}")
    style.annotate(ax, note, loc="upper left")
