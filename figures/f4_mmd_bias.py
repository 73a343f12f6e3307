"""F4 (C5, ``thm4.1``): the bias of the distilled weights is linear in MMD.

Pairs (P, Q): P uniform on the unit ball of R^3, Q the same ball shifted by
s in [0, 2] along a random direction (the shift knob), n = m = 64 samples each,
eta = 1/2, tau = 1, over several random layers. For every pair:

(a) ||W_0(P) - W_0(Q)||_HS against 2 eta MMD_kV (biased): the identity line;
(b) against 2 eta ||W^V||_op MMD_kx: always under the diagonal (the bound);
(c) against the paper's literal eta M_V M_x M_phi MMD_k with a Gaussian k
    (median bandwidth): a conjecture; points above the diagonal are marked,
    with the worst random and the adversarial instances that
    ``python -m proofs_check --claims thm4.1-literal --adversarial STEPS`` finds.

Panels (a)-(c) use the convention ``eq12`` (c = 2, W_0 = 2 eta E_P[...], the
paper's Eq. 12). The second row shows every kernel reading of the literal form
(:func:`icl_kd.bounds.literal_readings`) on the same pairs, as the ratio
lhs / rhs against the shift, under both conventions ``eq12`` (c = 2) and
``half`` (c = 1); a ratio above 1 is a violation:

(d) ``thm4.1-literal-gaussian``: median-heuristic bandwidth (points) and the
    worst bandwidth of the fixed grid :data:`icl_kd.bounds.DEFAULT_BANDWIDTHS`
    (largest ratio over the pairs at each shift, dashed);
(e) ``thm4.1-literal-softmax``: phi's own kernel kappa(W^K x, W^K y);
(f) ``thm4.1-literal-normalised``: k_x / (M_x M_phi)^2 (``thm4.1-bound`` over c);
(g) ``thm4.1-literal-tv``: ||P_hat - Q_hat||_1.

The literal right sides carry no c, so ratio(half) = ratio(eq12) / 2 exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import icl_kd
from figures import style, table
from icl_kd import bounds, distributions

# thm4.1-literal is the Gaussian reading, thm4.1-literal-gaussian
ID, SLUG, CLAIMS = "F4", "mmd_bias", ("thm4.1-identity", "thm4.1-bound", "thm4.1-literal",
                                      "thm4.1-literal-gaussian", "thm4.1-literal-softmax",
                                      "thm4.1-literal-normalised", "thm4.1-literal-tv")
D, N_P, N_Q, ETA = 3, 64, 64, 0.5
MAX_SHIFT = 2.0
CONVENTION = "eq12"   # of panels (a)-(c) and of the pairs table's lhs, identity_rhs, bound_rhs
# reading (a key of bounds.READINGS) -> its claim id; the grid is part of the Gaussian claim
READING_CLAIMS = {"gaussian": "thm4.1-literal-gaussian",
                  "gaussian-grid": "thm4.1-literal-gaussian",
                  "softmax": "thm4.1-literal-softmax",
                  "normalised": "thm4.1-literal-normalised",
                  "tv": "thm4.1-literal-tv"}


def ratio_column(reading: str, convention: str) -> str:
  """The pairs-table column of lhs / rhs of ``reading`` under ``convention``."""
  return f"ratio_{reading.replace('-', '_')}_{convention}"


class Config(NamedTuple):
  seed: int = 0
  layers: int = 16            # random attention layers
  shifts: int = 24            # shift values in [0, MAX_SHIFT] per layer
  check_instances: int = 20000  # proofs_check instances of thm4.1-literal
  adversarial_steps: int = 100
  quick_check: bool = False     # adversarial search from a few instances, no sweep


QUICK = Config(layers=4, shifts=8, check_instances=4, adversarial_steps=3, quick_check=True)


def config(*, quick: bool = False, seed: int = 0, out: str | None = None, **overrides) -> Config:
  del out  # computed from the library alone
  return (QUICK if quick else Config())._replace(seed=seed, **overrides)


def sample_pair(key, shift):
  """(params, x_p (N_P, D), x_q (N_Q, D), extra key) for one pair at shift magnitude ``shift``."""
  ks = jax.random.split(key, 6)
  params = icl_kd.init_params(D, key=ks[0], dtype=jnp.float64,
                              scale=jax.random.uniform(ks[1], (), jnp.float64, 0.5, 1.5))
  direction = jax.random.normal(ks[2], (D,), jnp.float64)
  p = distributions.uniform_ball(D, dtype=jnp.float64)
  q = p.transformed(shift=direction / jnp.linalg.norm(direction) * shift)
  return params, p.sample(N_P, key=ks[3]), q.sample(N_Q, key=ks[4]), ks[5], q


def _pairs(keys, shifts):
  def one(key, shift):
    params, x_p, x_q, _, _ = sample_pair(key, shift)
    b = bounds.distillation_bias(params, x_p, x_q, eta=ETA, convention=CONVENTION)
    rel = jnp.abs(b.lhs - b.identity_rhs) / b.identity_rhs
    log_ratios = []
    for convention in bounds.CONVENTIONS:
      r = bounds.literal_readings(params, x_p, x_q, eta=ETA, convention=convention)
      log_ratios += [r.log_ratio(name) for name in READING_CLAIMS]
    return (b.lhs, b.identity_rhs, b.bound_rhs, b.literal_rhs, rel, b.identity_residual,
            b.mmd_v, b.mmd_x, b.mmd_k, r.bandwidth, *log_ratios,
            dict(w_k=params.w_k, w_v=params.w_v, x_p=x_p, x_q=x_q))
  per_layer = lambda k: jax.vmap(lambda s: one(k, s))(shifts)
  return jax.vmap(per_layer)(keys)


_pairs = jax.jit(_pairs)


def proofs_check_literal(*, seed: int, instances: int, steps: int, quick: bool = False) -> dict:
  """``proofs_check.check("thm4.1-literal", adversarial=STEPS)``: the CLI's run, from Python.

  Returns the report entry of ``thm4.1-literal`` (worst random instance and
  adversarial result, both with their evaluated log_lhs / log_rhs). With
  ``quick``, skips the sweep (its compiles dominate a small run): the same
  adversarial search of ``proofs_check`` starts from the first ``instances``
  instances of the claim's first shape bucket, the best start being the
  "worst random" one.
  """
  if quick:
    import jax.numpy as jnp
    from icl_kd.claims import CLAIMS as _CLAIMS, check_values, log_ratio
    from proofs_check import adversarial, sweep
    claim = _CLAIMS["thm4.1-literal-gaussian"]
    starts = [sweep.instance_of(claim, seed, 0, i, jnp.float64) for i in range(instances)]
    batch = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *starts)
    # one compiled, vmapped evaluation (evaluating op by op costs ~4 s per instance)
    evaluated = jax.jit(jax.vmap(lambda s: claim.evaluate(s, claim.buckets[0])))(batch)
    evals = [jax.tree_util.tree_map(lambda a, i=i: a[i], evaluated) for i in range(instances)]
    ratios = [float(log_ratio(v)) for v in evals]
    worst = int(np.argmax(ratios))
    adv = adversarial.search(claim, starts, 0, steps=steps)
    return dict(instances=instances, violations=int(np.sum(np.asarray(ratios) > 0)),
                verdict="quick: adversarial search only",
                worst_instance=dict(bucket=0, index=worst, values=check_values(evals[worst])),
                adversarial=adv)
  import proofs_check
  report = proofs_check.check("thm4.1-literal-gaussian", instances=instances, seed=seed,
                              adversarial=steps)
  return report.claims["thm4.1-literal-gaussian"].to_json()


def compute(cfg: Config) -> dict:
  """Every side of C5 on layers x shifts, plus the proofs_check worst/adversarial instances."""
  keys = jax.random.split(jax.random.key(cfg.seed), cfg.layers)
  shifts = jnp.linspace(0.0, MAX_SHIFT, cfg.shifts, dtype=jnp.float64)
  *out, samples = _pairs(keys, shifts)
  out = [np.asarray(a) for a in out]
  names = ("lhs", "identity_rhs", "bound_rhs", "literal_rhs", "identity_relative_error",
           "identity_residual", "mmd_v", "mmd_x", "mmd_k", "median_bandwidth")
  names += tuple(ratio_column(r, c) for c in bounds.CONVENTIONS for r in READING_CLAIMS)
  pairs = {"layer": np.repeat(np.arange(cfg.layers), cfg.shifts).tolist(),
           "shift": np.tile(np.asarray(shifts), cfg.layers).tolist()}
  pairs.update({n: (np.exp(a) if n.startswith("ratio_") else a).ravel().tolist()
                for n, a in zip(names, out)})
  readings, summary = _readings_summary(pairs)
  check_pair = _check_pair(samples, cfg)
  lhs, lit = np.asarray(pairs["lhs"]), np.asarray(pairs["literal_rhs"])
  pairs["literal_violated"] = (lhs > lit).tolist()

  entry = proofs_check_literal(seed=cfg.seed, instances=cfg.check_instances,
                               steps=cfg.adversarial_steps, quick=cfg.quick_check)
  found = {"source": [], "lhs": [], "literal_rhs": [], "ratio": []}
  for label, rec in (("proofs_check worst random", entry["worst_instance"]),
                     ("proofs_check adversarial", entry.get("adversarial"))):
    if rec:
      v = rec["values"]
      found["source"].append(label)
      found["lhs"].append(float(np.exp(float(v["log_lhs"]))))
      found["literal_rhs"].append(float(np.exp(float(v["log_rhs"]))))
      found["ratio"].append(float(np.exp(float(v["log_lhs"]) - float(v["log_rhs"]))))
  ratio_bound = lhs / np.asarray(pairs["bound_rhs"])
  meta = dict(id=ID, claims=list(CLAIMS), config=cfg._asdict(), d=D, n_p=N_P, n_q=N_Q, eta=ETA,
              tau=1.0, max_shift=MAX_SHIFT,
              max_identity_relative_error=float(np.max(pairs["identity_relative_error"])),
              max_identity_residual=float(np.max(pairs["identity_residual"])),
              max_bound_ratio=float(ratio_bound.max()),
              max_literal_ratio=float(np.max(lhs / lit)),
              literal_violations=int(np.sum(pairs["literal_violated"])),
              proofs_check=dict(instances=entry["instances"], violations=entry["violations"],
                                verdict=entry["verdict"], adversarial_steps=cfg.adversarial_steps),
              kernel="Gaussian, median-heuristic bandwidth of the pooled sample", dtype="float64",
              convention=CONVENTION, convention_factor=bounds.convention_factor(CONVENTION),
              conventions={c: bounds.convention_factor(c) for c in bounds.CONVENTIONS},
              bandwidth_grid=list(bounds.DEFAULT_BANDWIDTHS), readings=readings,
              check_pair=check_pair)
  return dict(meta=meta, tables=dict(pairs=pairs, proofs_check=found, readings=summary))


def _check_pair(samples: dict, cfg) -> dict:
  """One pair's layer and samples (layer 1, or 0, at the middle shift), so that its row of the
  pairs table can be recomputed from scratch; ``row`` indexes the pairs table."""
  layer, j = min(1, cfg.layers - 1), cfg.shifts // 2
  out = {k: np.asarray(v)[layer, j].tolist() for k, v in samples.items()}
  return dict(layer=layer, shift_index=j, row=layer * cfg.shifts + j, **out)


def _readings_summary(pairs: dict) -> tuple[dict, dict]:
  """Per reading and convention: violations (ratio > 1), pairs and the largest ratio.

  Returns ``{convention: {reading: {...}}}`` for the JSON meta and the same as
  a table (one row per reading and convention).
  """
  meta, rows = {}, {k: [] for k in ("reading", "claim", "convention", "convention_factor",
                                    "violations", "pairs", "max_ratio")}
  for convention in bounds.CONVENTIONS:
    meta[convention] = {}
    for reading, claim in READING_CLAIMS.items():
      ratio = np.asarray(pairs[ratio_column(reading, convention)], float)
      rec = dict(claim=claim, violations=int(np.sum(ratio > 1.0)), pairs=int(ratio.size),
                 max_ratio=float(np.max(ratio)))
      meta[convention][reading] = rec
      for k, v in dict(reading=reading, convention=convention,
                       convention_factor=bounds.convention_factor(convention), **rec).items():
        rows[k].append(v)
  return meta, rows


CONVENTION_STYLE = {"eq12": dict(color=style.PALETTE["blue"], marker="o"),
                    "half": dict(color=style.PALETTE["orange"], marker="s")}
READING_PANELS = (("gaussian", "(d) Gaussian, median $h$"),
                  ("softmax", "(e) softmax $\\kappa$"),
                  ("normalised", "(f) normalised $k_x$"),
                  ("tv", "(g) TV $\\|P - Q\\|_1$"))


@style.styled
def make(results: dict):
  """Top: three log-log panels of ||W_0(P) - W_0(Q)||_HS against the right sides of C5 (eq12).
  Bottom: lhs / rhs of each literal reading against the shift, under eq12 and half."""
  import matplotlib.pyplot as plt
  meta, t, pc = results["meta"], table(results, "pairs"), table(results, "proofs_check")
  fig = plt.figure(figsize=(style.WIDTH, 7.6), layout="constrained")
  row1, row2 = fig.subfigures(2, 1, height_ratios=(1.2, 1.0))
  top, bottom = row1.subplots(1, 3), row2.subplots(1, 4)
  lhs = t["lhs"]
  c = meta.get("convention_factor", 2.0)
  panels = (("identity_rhs", f"${c:g}\\eta\\,\\mathrm{{MMD}}_{{k_V}}(P,Q)$", "(a) identity: $k_V$"),
            ("bound_rhs", f"${c:g}\\eta\\,\\|W^V\\|_{{op}}\\mathrm{{MMD}}_{{k_x}}(P,Q)$",
             "(b) bound: $k_x$"),
            ("literal_rhs", "$\\eta M_V M_x M_\\phi\\,\\mathrm{MMD}_k(P,Q)$",
             "(c) paper's literal form"))
  for i, (col, xlabel, title) in enumerate(panels):
    ax = top[i]
    rhs = t[col]
    extra = [pc["literal_rhs"], pc["lhs"]] if i == 2 and len(pc.get("lhs", [])) else []
    lo, hi = style.log_range(lhs, rhs, *extra)
    viol = lhs > rhs if i == 2 else np.zeros(lhs.shape, bool)
    sc = ax.scatter(rhs[~viol], lhs[~viol], c=t["shift"][~viol], cmap=style.SEQUENTIAL, vmin=0,
                    vmax=meta["max_shift"], s=7, rasterized=True, label="pairs (P, Q)")
    if viol.any():
      ax.scatter(rhs[viol], lhs[viol], marker="x", s=22, color=style.VIOLATION, zorder=6,
                 label=f"violations ({int(viol.sum())})")   # on top of every other marker
    style.identity_line(ax, lo, hi, label="y = x")
    if i == 2:
      for j, src in enumerate(pc.get("source", [])):
        ax.scatter(pc["literal_rhs"][j], pc["lhs"][j], marker="*" if "advers" in src else "P",
                   s=90, color=style.PALETTE["purple"] if "advers" in src else style.PALETTE["orange"],
                   edgecolor="black", linewidths=0.5, zorder=5,
                   label=f"{src.replace('proofs_check ', 'proofs_check: ')} ({pc['ratio'][j]:.2g}x)")
    style.log_square(ax, lo, hi)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("$\\|W_0(P) - W_0(Q)\\|_{HS}$")
    ax.set_title(title, loc="left")
    style.legend_below(ax)
  style.annotate(top[0], f"max rel. error\n{meta['max_identity_relative_error']:.1e}")
  style.annotate(top[1], f"max lhs/rhs\n{meta['max_bound_ratio']:.3f}")
  style.annotate(top[2], f"max lhs/rhs\n{meta['max_literal_ratio']:.3g}")
  cb = row1.colorbar(sc, ax=top[2], pad=0.01, aspect=30)
  cb.set_label("shift $\\|\\mu_Q - \\mu_P\\|$")
  if "readings" in meta:
    _draw_readings(bottom, meta, t)
  row1.suptitle("F4. Claim C5 (thm4.1): $\\|W_0(P) - W_0(Q)\\|_{HS}$ is linear in MMD "
                f"($\\eta$={meta['eta']}, n=m={meta['n_p']})\n"
                f"(a)-(c): convention {meta.get('convention', 'eq12')}, "
                f"$W_0(P) = {c:g}\\eta\\,E_P[W^Vx\\,\\phi(W^Kx)^T]$ (c = {c:g})")
  return fig


def _draw_readings(axes, meta: dict, t: dict) -> None:
  """(d)-(g): lhs / rhs of each literal reading against the shift, both conventions.

  Legend entries: "<convention>: <violations> (max <largest ratio>)" over all pairs.
  """
  shift = t["shift"]
  grid_shifts = np.unique(shift)
  pairs = meta["readings"]["eq12"]["gaussian"]["pairs"]
  for ax, (reading, title) in zip(axes, READING_PANELS):
    for convention, look in CONVENTION_STYLE.items():
      ratio = t[ratio_column(reading, convention)]
      rec = meta["readings"][convention][reading]
      ax.scatter(shift, ratio, s=5, alpha=0.6, lw=0, rasterized=True, color=look["color"],
                 marker=look["marker"],
                 label=f"{convention}: {rec['violations']} (max {rec['max_ratio']:.3g})")
    if reading == "gaussian":     # the worst bandwidth of the grid, largest ratio per shift
      for convention, look in CONVENTION_STYLE.items():
        worst = t[ratio_column("gaussian-grid", convention)]
        worst_per_shift = [np.max(worst[shift == s]) for s in grid_shifts]
        g = meta["readings"][convention]["gaussian-grid"]
        ax.plot(grid_shifts, worst_per_shift, ls="--", lw=1.0, color=look["color"],
                label=f"grid {convention}: {g['violations']} (max {g['max_ratio']:.3g})")
    ax.axhline(1.0, color=style.REFERENCE, ls="-", lw=1.0, zorder=1)
    ax.set_yscale("log")
    ax.set_xlabel("shift $\\|\\mu_Q - \\mu_P\\|$")
    ax.set_title(title, loc="left", fontsize=8)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize=7, handlelength=1.2,
              handletextpad=0.3, markerscale=2.0, borderaxespad=0.0)
  axes[0].set_ylabel("lhs / rhs of the literal form")
  looks = " and ".join(f"{c} (c = {meta['conventions'][c]:g}, "
                       f"{'circles' if c == 'eq12' else 'squares'})" for c in CONVENTION_STYLE)
  axes[0].figure.suptitle(
      f"(d)-(g): each reading of the literal form (a kernel for MMD$_k$), lhs / rhs against the "
      f"shift,\nunder {looks}; legends: violations of {pairs} pairs (max lhs/rhs);\n"
      "grey line: ratio 1; dashed: the grid's worst bandwidth, largest ratio per shift",
      fontsize=8)
