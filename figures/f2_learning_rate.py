"""F2 (C2 ``kd-step``, C3 ``dw-step``, C7 ``lr-proxy``): what the partition function D' does.

Fixed prompts are rescaled so that the largest |score| sweeps from 1e-3
(flat attention) to 1e3 (sharp attention); at each scale:

(a) the implicit learning rate eta* = N / (2 D') of the KD step that gives W_0
    (C2), with its flat limit N / (2 (N + M + 1)); the error of the one-step
    identity of C2 (dual form and autodiff) is annotated;
(b) the attention entropy, with its flat limit log(N + M + 1) (C7);
(c) the squared-loss residual ||R||_HS / ||dW||_HS of C3: dW is one gradient
    step of the linear KD loss exactly, of the squared loss only up to R.
Lines are medians over prompts, bands the 10-90 % range.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from figures import style, table
from icl_kd import claims
from icl_kd.claims import c2_kd_step, c3_dw_step, c7_lr_proxy

ID, SLUG, CLAIMS = "F2", "learning_rate", ("kd-step", "dw-step-linear", "dw-step-squared",
                                          "lr-proxy")
BUCKET = claims.PromptBucket(16, 4, 6, 4, 3, True)   # (N, M, d, d_k, d_v, self-attention)


class Config(NamedTuple):
  seed: int = 0
  prompts: int = 256
  scales: int = 61               # max|score| values, log-spaced over [1e-3, 1e3]


QUICK = Config(prompts=32, scales=13)


def config(*, quick: bool = False, seed: int = 0, out: str | None = None, **overrides) -> Config:
  del out  # computed from the library alone
  return (QUICK if quick else Config())._replace(seed=seed, **overrides)


def _instance(key, score):
  """A prompt of BUCKET (tau = 1) with w_q scaled so that max_j |s_j| = score."""
  k_prompt, k_omega = jax.random.split(key)
  p = claims.scaled_prompt(k_prompt, BUCKET, jnp.float64, max_abs_score=score)
  return dict(w_q=p.params.w_q, w_k=p.params.w_k, w_v=p.params.w_v, demos=p.demos,
              prefix=p.prefix, query=p.query, tau=p.tau,
              omega=jax.random.normal(k_omega, (32, BUCKET.d_k), jnp.float64))


def _sweep(keys, scores):
  def one(key, score):
    inst = _instance(key, score)
    out = claims.decompose_prompt(inst, BUCKET)          # shared by the three checks
    lr = c7_lr_proxy.compute(inst, BUCKET, out).extras
    kd = c2_kd_step.compute(inst, BUCKET, out)
    lin = c3_dw_step.compute_linear(inst, BUCKET, out)
    # log ||R||_HS / ||dW||_HS (dw-step-squared's value, kept in log space: it underflows)
    log_ratio = c3_dw_step.log_residual_ratio(inst, BUCKET, out)
    return (lr.log_eta, lr.entropy, lr.log_partition, kd.error, log_ratio / np.log(10.0),
            lin.error)
  per_key = lambda k: jax.vmap(lambda s: one(k, s))(scores)
  return jax.vmap(per_key)(keys)                                       # each (P, S)


_sweep = jax.jit(_sweep)


def compute(cfg: Config) -> dict:
  """eta*, entropy, log D', the C2 error and the C3 residual over prompts x score scales."""
  keys = jax.random.split(jax.random.key(cfg.seed), cfg.prompts)
  scores = jnp.logspace(-3.0, 3.0, cfg.scales, dtype=jnp.float64)
  log_eta, ent, log_z, kd_err, resid, lin_err = map(np.asarray, _sweep(keys, scores))
  # ||R|| underflows to exactly 0 at the sharpest scales: log10 = -inf, kept out of the quantiles
  resid = np.where(np.isfinite(resid), resid, np.nan)
  n, m = BUCKET[0], BUCKET[1] + 1
  rows = {"max_abs_score": np.asarray(scores).tolist()}
  for name, v in (("log10_eta", log_eta / np.log(10.0)), ("entropy", ent),
                  ("log_partition", log_z), ("log10_residual_ratio", resid)):
    some = ~np.all(np.isnan(v), axis=0)                  # scales with at least one finite value
    q = np.full((3, v.shape[1]), np.nan)
    q[:, some] = np.nanquantile(v[:, some], [0.1, 0.5, 0.9], axis=0)
    rows[f"{name}_q10"], rows[f"{name}_median"], rows[f"{name}_q90"] = (
        q[0].tolist(), q[1].tolist(), q[2].tolist())
  meta = dict(id=ID, claims=list(CLAIMS), config=cfg._asdict(), bucket=list(BUCKET), tau=1.0,
              flat_eta=n / (2.0 * (n + m)), flat_entropy=float(np.log(n + m)),
              max_kd_step_error=float(kd_err.max()), max_dw_linear_error=float(lin_err.max()),
              residual_ratio_at_flat=float(10 ** np.median(resid[:, 0])),
              log10_residual_ratio_smallest=float(np.nanmin(resid)),
              residual_exactly_zero=int(np.isnan(resid).sum()),
              log10_eta_at_sharp=float(np.median(log_eta[:, -1]) / np.log(10.0)),
              dtype="float64")
  return dict(meta=meta, tables=dict(sweep=rows))


def _band(ax, x, t, name, color, marker, label):
  ax.fill_between(x, t[f"{name}_q10"], t[f"{name}_q90"], color=color, alpha=0.25, lw=0)
  ax.plot(x, t[f"{name}_median"], color=color, marker=marker, markevery=max(1, len(x) // 12),
          label=label)


@style.styled
def make(results: dict):
  """Three panels against the largest |score|: eta*, entropy, C3 residual."""
  meta, t = results["meta"], table(results, "sweep")
  x = t["max_abs_score"]
  n, m = meta["bucket"][0], meta["bucket"][1] + 1
  fig, axes = style.figure(1, 3, height=3.0)
  ax = axes[0, 0]
  _band(ax, x, t, "log10_eta", style.PALETTE["blue"], "o",
        "$\\log_{10}\\eta^*$, $\\eta^* = N/(2D')$")
  ax.axhline(np.log10(meta["flat_eta"]), color=style.REFERENCE, ls="--",
             label=f"flat limit $\\eta^* = N/(2(N{{+}}M{{+}}1))$ = {meta['flat_eta']:.2f}")
  ax.set_xscale("log")
  ax.set_xlabel("largest score $\\max|s_j|$")
  ax.set_ylabel("$\\log_{10}$ implicit learning rate $\\eta^*$")
  ax.set_title("(a) C2/C7: $\\eta^*$, flat to sharp", loc="left")
  style.legend_below(ax)
  style.annotate(ax, f"C2 one-step error\n$\\leq${meta['max_kd_step_error']:.0e}", loc="lower left")

  ax = axes[0, 1]
  _band(ax, x, t, "entropy", style.PALETTE["orange"], "s", "entropy $H$ (nats)")
  ax.axhline(meta["flat_entropy"], color=style.REFERENCE, ls="--",
             label=f"$\\log(N{{+}}M{{+}}1)$ = {meta['flat_entropy']:.2f}")
  ax.set_xscale("log")
  ax.set_ylim(-0.1, meta["flat_entropy"] * 1.25)
  ax.set_xlabel("largest score $\\max|s_j|$")
  ax.set_ylabel("attention entropy $H$ (nats)")
  ax.set_title("(b) C7: attention entropy", loc="left")
  style.legend_below(ax)

  ax = axes[0, 2]
  _band(ax, x, t, "log10_residual_ratio", style.PALETTE["green"], "^",
        "squared loss: $\\log_{10}\\|R\\|_{HS}/\\|\\Delta W\\|_{HS}$")
  ax.axhline(0.0, color=style.REFERENCE, ls=":", lw=1.0, label="$\\|R\\| = \\|\\Delta W\\|$")
  ax.set_xscale("log")
  ax.set_xlabel("largest score $\\max|s_j|$")
  ax.set_ylabel("$\\log_{10}\\|R\\|_{HS}/\\|\\Delta W\\|_{HS}$")
  ax.set_title("(c) C3: residual of the squared loss", loc="left")
  style.legend_below(ax)
  style.annotate(ax, f"linear-loss step:\nerror $\\leq${meta['max_dw_linear_error']:.0e}",
                 loc="lower left")
  fig.suptitle(f"F2. Claims C2, C3, C7: the partition function $D'$ sets the KD step "
               f"(N={n}, M+1={m}, $\\tau$=1)")
  return fig
