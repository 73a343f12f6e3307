"""F3 (C4, ``thm3.2``): generalization gap of the distilled weights and the Rademacher bound.

One layer (d = 3, tau = 1) and inputs uniform on the unit ball, so
C = exp(||W^K||_op^2 / 2) bounds ||phi(W^K x)|| and D_T = ||W^V||_op bounds
||W^V x||. For each N, repeated samples give W = the one-step weights W_0
(eta = 1/2) scaled into the ball ||W||_HS <= B = 1, its empirical KD loss
L_hat(W) and its population loss L(W) (Monte Carlo on a fresh sample).

(a) the gap L - L_hat (median and the 1 - delta quantile over samples) and
    the C4 bound 4BC(D_T+BC)/sqrt(N) + (D_T+BC)^2 sqrt(log(1/delta)/(2N)),
    delta = 0.05, log-log (``thm3.2``, Hoeffding's confidence term), next to the
    paper's form 4BC(D_T+BC)/sqrt(N) + (D_T+BC)^2 log(1/delta)/N
    (``thm3.2-paper-form``: its O(log(1/delta)/N) with the constant (D_T+BC)^2),
    which is smaller for N > 2 log(1/delta), so its violation rate is a finding;
(b) the empirical Rademacher complexity R_hat = (B/N) E_sigma sqrt(sigma^T K sigma)
    (Monte Carlo), its bound B sqrt(tr K)/N and B C / sqrt(N);
(c) the tightness ratio bound / gap (at the 1 - delta quantile of the gap), for both forms.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import icl_kd
from figures import style, table
from icl_kd import bounds, claims, distributions, mmd

ID, SLUG, CLAIMS = "F3", "rademacher", ("thm3.2", "thm3.2-paper-form", "rademacher-empirical")
D, DELTA, RADIUS, ETA = 3, 0.05, 1.0, 0.5


class Config(NamedTuple):
  seed: int = 0
  sizes: tuple = (16, 32, 64, 128, 256, 512, 1024)
  repetitions: int = 200       # samples per N for the gap
  population: int = 4096       # fresh points for L(W)
  rademacher_samples: int = 4  # samples per N for R_hat
  sign_draws: int = 500
  param_scale: float = 0.8


QUICK = Config(sizes=(16, 128), repetitions=64, population=1024, rademacher_samples=2,
               sign_draws=100)


def config(*, quick: bool = False, seed: int = 0, out: str | None = None, **overrides) -> Config:
  del out  # computed from the library alone
  return (QUICK if quick else Config())._replace(seed=seed, **overrides)


def _gaps(params, keys, x_pop, n):
  """(L - L_hat, L_hat, L) of the scaled one-step weights for each key (one sample of size n)."""
  ball = distributions.uniform_ball(D, dtype=jnp.float64)

  def one(key):
    x = ball.sample(n, key=key)                                          # (n, d)
    w = icl_kd.one_step_kd_weights(params, x, eta=ETA)
    # scale W itself (not its representation) into the ball: ||W||_HS = min(||W_0||, B)
    shrink = jnp.minimum(0.0, math.log(RADIUS) - w.log_hs_norm())
    w = icl_kd.DualWeights(w.coeffs, w.anchors, w.tau, w.log_scale + shrink)
    g = claims.generalization_gap(w, params, x, x_pop)                   # C4's L - L_hat
    return g.gap, g.empirical_risk, g.population_risk, w.hs_norm()
  # sequential over samples (lax.map): a vmap would hold (R, P, n) kernel values at once
  return jax.lax.map(one, keys, batch_size=8)


_gaps = jax.jit(_gaps, static_argnums=3)


def _rademacher(params, keys, sign_key, n, draws):
  ball = distributions.uniform_ball(D, dtype=jnp.float64)

  def one(key):
    z = jnp.dot(ball.sample(n, key=key), params.w_k.T)                   # (n, d_k)
    est = bounds.empirical_rademacher(mmd.gram(mmd.exp_kernel(1.0), z, z), radius=RADIUS,
                                      key=sign_key, num_draws=draws)
    return est.estimate, est.std_error, est.analytic_bound
  return jax.vmap(one)(keys)


_rademacher = jax.jit(_rademacher, static_argnums=(3, 4))


def compute(cfg: Config) -> dict:
  """Gap quantiles, the bound, R_hat and its bounds for every N of ``cfg.sizes``."""
  k_par, k_pop, k_gap, k_rad, k_sign = jax.random.split(jax.random.key(cfg.seed), 5)
  params = icl_kd.init_params(D, key=k_par, scale=cfg.param_scale, dtype=jnp.float64)
  x_pop = distributions.uniform_ball(D, dtype=jnp.float64).sample(cfg.population, key=k_pop)
  log_c = float(np.linalg.norm(np.asarray(params.w_k), 2) ** 2 / 2.0)   # tau = 1, |x| <= 1
  c, d_t = math.exp(log_c), float(np.linalg.norm(np.asarray(params.w_v), 2))
  rows = {k: [] for k in ("n", "gap_median", "gap_quantile", "gap_max", "violation_rate",
                          "bound", "complexity_term", "confidence_term", "empirical_risk_mean",
                          "population_risk_mean", "weight_norm_median", "rademacher",
                          "rademacher_se", "trace_bound", "bc_over_sqrt_n", "tightness",
                          "bound_paper", "confidence_term_paper", "violation_rate_paper",
                          "tightness_paper")}
  samples = {"n": [], "gap": []}    # every sample's gap L - L_hat, for recounting violations
  for n in cfg.sizes:
    keys = jax.random.split(jax.random.fold_in(k_gap, n), cfg.repetitions)
    gap, l_hat, l_pop, norm = map(np.asarray, _gaps(params, keys, x_pop, n))
    samples["n"] += [n] * gap.size
    samples["gap"] += gap.tolist()
    rb = bounds.rademacher_bound(radius=RADIUS, feature_bound=c, teacher_bound=d_t, n=n,
                                 delta=DELTA)
    rkeys = jax.random.split(jax.random.fold_in(k_rad, n), cfg.rademacher_samples)
    est, se, tr_bound = map(np.asarray, _rademacher(params, rkeys, k_sign, n, cfg.sign_draws))
    q = float(np.quantile(gap, 1.0 - DELTA))
    rows["n"].append(n)
    rows["gap_median"].append(float(np.median(gap)))
    rows["gap_quantile"].append(q)
    rows["gap_max"].append(float(gap.max()))
    rows["violation_rate"].append(float(np.mean(gap > float(rb.hoeffding))))
    rows["bound"].append(float(rb.hoeffding))
    rows["complexity_term"].append(float(rb.complexity))
    rows["confidence_term"].append(float(rb.confidence_hoeffding))
    rows["empirical_risk_mean"].append(float(l_hat.mean()))
    rows["population_risk_mean"].append(float(l_pop.mean()))
    rows["weight_norm_median"].append(float(np.median(norm)))
    rows["rademacher"].append(float(est.mean()))
    rows["rademacher_se"].append(float(np.sqrt(np.mean(se ** 2))))
    rows["trace_bound"].append(float(tr_bound.mean()))
    rows["bc_over_sqrt_n"].append(RADIUS * c / math.sqrt(n))
    rows["tightness"].append(float(rb.hoeffding) / q if q > 0 else float("inf"))
    rows["bound_paper"].append(float(rb.paper))
    rows["confidence_term_paper"].append(float(rb.confidence_paper))
    rows["violation_rate_paper"].append(float(np.mean(gap > float(rb.paper))))
    rows["tightness_paper"].append(float(rb.paper) / q if q > 0 else float("inf"))
  meta = dict(id=ID, claims=list(CLAIMS), config=cfg._asdict(), d=D, delta=DELTA, radius=RADIUS,
              eta=ETA, tau=1.0, feature_bound_c=c, teacher_bound_d_t=d_t,
              confidence_form="hoeffding: (D_T+BC)^2 sqrt(log(1/delta)/(2N))",
              max_violation_rate=max(rows["violation_rate"]),
              min_tightness=min(rows["tightness"]), dtype="float64",
              confidence_form_paper="paper (thm3.2-paper-form): (D_T+BC)^2 log(1/delta)/N",
              max_violation_rate_paper=max(rows["violation_rate_paper"]),
              min_tightness_paper=min(rows["tightness_paper"]))
  return dict(meta=meta, tables=dict(by_n=rows, gaps=samples))


@style.styled
def make(results: dict):
  """Three log-log panels against N: gap vs bound, Rademacher complexity, tightness."""
  meta, t = results["meta"], table(results, "by_n")
  n = t["n"]
  fig, axes = style.figure(1, 3, height=3.0)
  ax = axes[0, 0]
  viol = f"\nviolations $\\leq$ {100 * meta['max_violation_rate']:.1f}% per $N$"
  ax.plot(n, t["bound"], color=style.PALETTE["vermillion"], marker="D",
          label="C4 bound, Hoeffding $\\sqrt{\\log(1/\\delta)/2N}$" + viol)
  if "bound_paper" in t:
    ax.plot(n, t["bound_paper"], color=style.PALETTE["orange"], marker="v", ls="-.",
            label="paper's form $\\log(1/\\delta)/N$\nviolations $\\leq$ "
                  f"{100 * meta['max_violation_rate_paper']:.1f}% per $N$")
  ax.plot(n, t["gap_quantile"], color=style.PALETTE["blue"], marker="o",
          label=f"gap $L - \\hat L$, {100 * (1 - meta['delta']):.0f}% quantile")
  med = t["gap_median"]
  ax.plot(n[med > 0], med[med > 0], color=style.PALETTE["sky"], marker="s", ls="--",
          label="gap, median")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("sample size $N$")
  ax.set_ylabel("KD loss gap $L(W) - \\hat L(W)$")
  ax.set_title(f"(a) gap vs C4 ($\\delta$ = {meta['delta']})", loc="left")
  style.legend_below(ax)

  ax = axes[0, 1]
  ax.plot(n, t["bc_over_sqrt_n"], color=style.PALETTE["vermillion"], marker="D",
          label="$BC/\\sqrt{N}$")
  ax.plot(n, t["trace_bound"], color=style.PALETTE["orange"], marker="s",
          label="$B\\sqrt{\\mathrm{tr}\\,K}/N$")
  ax.errorbar(n, t["rademacher"], yerr=3 * t["rademacher_se"], color=style.PALETTE["green"],
              marker="o", capsize=2, label="$\\hat{\\mathcal{R}}_N(F_B)$ ($\\pm$3 SE)")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("sample size $N$")
  ax.set_ylabel("Rademacher complexity")
  ax.set_title("(b) empirical Rademacher", loc="left")
  style.legend_below(ax)

  ax = axes[0, 2]
  ax.plot(n, t["tightness"], color=style.PALETTE["purple"], marker="^",
          label="Hoeffding form / gap quantile")
  if "tightness_paper" in t:
    ax.plot(n, t["tightness_paper"], color=style.PALETTE["orange"], marker="v", ls="-.",
            label="paper's form / gap quantile")
  ax.axhline(1.0, color=style.REFERENCE, ls="--", label="ratio 1 (tight)")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("sample size $N$")
  ax.set_ylabel("tightness: bound / gap")
  ax.set_title("(c) how loose is C4", loc="left")
  style.legend_below(ax)
  fig.suptitle(f"F3. Claim C4 (thm3.2): generalization of the distilled weights "
               f"($B$=1, $C$={meta['feature_bound_c']:.2f}, $D_T$={meta['teacher_bound_d_t']:.2f})")
  return fig
