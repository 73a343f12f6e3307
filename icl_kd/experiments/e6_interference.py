"""E6: cross-task interference, measured by the theory's MMD.

docs/THEORY.md E6, with C5 (``thm4.1``): replacing a fraction f of a prompt's
demonstrations by demonstrations of another task moves the prompt's
distribution S away from the query task; by C5 the distilled weights move by
||W_0(S) - W_0(T)||_HS = c eta MMD_kV(S, T) from those of a target sample T of
the query task, with the distillation kernel of the trained layer's own key
and value maps on the tokens the head reads, e = (x, y). MMD(S, T) should grow
with f, and the ICL error with it.

Setting. The one-head softmax-attention layer of E1 (:func:`e1_selection.make_model`)
is trained on unshifted linear-regression prompts x ~ N(0, I_d) or, with
``inputs="ball"``, x uniform on the unit ball (bounded support), y = <w, x> +
noise, w ~ N(0, I_d). In each trial the query task A (w_A) and another task B
(w_B, independent) are drawn; a prompt of k demonstrations of A is built, and
for every f on a grid the first round(f k) of them are replaced by
demonstrations of B (inputs from the same distribution). T is ``n_target``
labelled demonstrations of A held out from the prompt (the same kind of object
as the demonstrations: an oracle target, it has A's labels). Paired, nested
design: every f answers the same M queries of task A.

Measured for every (trial, f), by ``icl_kd.chain.chain_measures``: MMD^2 between
the prompt and T in the kernels of :data:`icl_kd.selection.KERNELS` by both
estimators (the unbiased one is the default; the normalised kernel's constants
over every token of the trial; the Gaussian on the inputs alone, blind to the
task by construction: a control), the bias and the rest of the chain; and the
relative ICL error (model MSE over the queries / mean squared query label)
with ridge regression on the same prompt. Correlations are within trials
(Spearman over the fractions of one trial, averaged), with a bootstrap over
trials.
"""

from __future__ import annotations

import sys
import textwrap
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_kd import baselines, chain, mmd, models, runtime, selection, tasks
from icl_kd.experiments import _common
from icl_kd.experiments import e1_selection as e1

NAME = "E6"
DESCRIPTION = ("cross-task interference: MMD (normalised, k_V, k_x, Gaussian; unbiased and "
               "biased) to the query task and ICL error against f (C5)")
KERNELS, ESTIMATORS = selection.KERNELS, selection.ESTIMATORS
HEADS = "one softmax layer with one head: MMD^2 of that head"
TARGET = ("T: n_target labelled demonstrations (x, <w_A, x> + noise) of the query task A, held "
          "out from the prompt (an oracle target: it has A's labels)")
MODEL_TAU = e1.MODEL_TAU
ETA = e1.ETA


class Config(NamedTuple):
  """Sizes of one E6 run (``run`` draws everything from its key)."""
  d: int = 4
  k: int = 16                 # demonstrations per prompt
  n_queries: int = 16
  n_target: int = 16
  n_trials: int = 128
  n_fractions: int = 9        # f on linspace(0, 1, n_fractions), rounded to counts of k
  noise_std: float = 0.25
  ridge_lam: float = 0.1
  inputs: str = "gaussian"    # "gaussian" or "ball" (bounded support)
  train_steps: int = 6000
  batch: int = 128
  learning_rate: float = 3e-3
  n_boot: int = 1000
  progress: bool = True


QUICK = Config(n_trials=12, n_fractions=5, train_steps=300, batch=64, n_boot=200)

FLAGS = (
    _common.Flag("--trials", "n_trials", int, "paired trials (two tasks and queries each)",
                 minimum=2),
    _common.Flag("--steps", "train_steps", int, "training steps of the attention layer",
                 minimum=1),
    _common.Flag("--k", "k", int, "demonstrations per prompt", minimum=2),
    _common.Flag("--target", "n_target", int, "labelled target demonstrations of task A",
                 minimum=2),
    _common.Flag("--fractions", "n_fractions", int,
                 "number of fractions f from the other task, on linspace(0, 1) (>= 2)", minimum=2),
    _common.Flag("--inputs", "inputs", str, "input distribution", choices=_common.INPUTS),
)


def check_config(cfg: Config) -> None:
  """Raises :class:`icl_kd.experiments._common.UsageError` naming the flag of a bad size."""
  if cfg.n_fractions < 2:
    raise _common.UsageError(f"--fractions must be >= 2 (f = 0 and f = 1), got {cfg.n_fractions}")


class Results(NamedTuple):
  """Per trial and fraction.

  Attributes:
    fractions: (F,) the realised fractions counts / k.
    counts: (F,) demonstrations taken from the other task.
    error: (T, F) relative ICL error of the model on the query task.
    ridge_error: (T, F) ridge regression on the same prompts.
    measures: :class:`icl_kd.chain.ChainMeasures` with leading axes (T, F) (NumPy).
    reference: :class:`e1_selection.Reference` of the layer (matched = unshifted here).
    train_losses: (train_steps,). params: the trained layer (float64).
    boot_seed: the bootstrap's NumPy seed. config: the run's Config.
  """
  fractions: np.ndarray
  counts: np.ndarray
  error: np.ndarray
  ridge_error: np.ndarray
  measures: chain.ChainMeasures
  reference: e1.Reference
  train_losses: np.ndarray
  params: dict
  boot_seed: int
  config: Config


def fraction_counts(cfg: Config) -> np.ndarray:
  """(F,) demonstrations from the other task: round(f k) for f in linspace(0, 1, F)."""
  if cfg.n_fractions < 2:
    raise ValueError(f"n_fractions must be >= 2 (f = 0 and f = 1), got {cfg.n_fractions}")
  return np.round(np.linspace(0.0, 1.0, cfg.n_fractions) * cfg.k).astype(np.int32)


class Trial(NamedTuple):
  """One trial: the query task's prompt, queries and target, and the other task's demonstrations.

  Attributes:
    w_a, w_b: (d,) the query task and the other task.
    xs_a, ys_a: (k, d), (k,) demonstrations of the query task.
    xs_b, ys_b: (k, d), (k,) demonstrations of the other task.
    queries: (M, d); targets: (M,) <w_a, x'_j>.
    target_x, target_y: (m, d), (m,) the target sample T of task A.
  """
  w_a: jax.Array
  w_b: jax.Array
  xs_a: jax.Array
  ys_a: jax.Array
  xs_b: jax.Array
  ys_b: jax.Array
  queries: jax.Array
  targets: jax.Array
  target_x: jax.Array
  target_y: jax.Array

  def prompt(self, count) -> tuple[jax.Array, jax.Array]:
    """(xs, ys): the first ``count`` demonstrations from the other task, the rest from A."""
    from_b = jnp.arange(self.xs_a.shape[0]) < count                          # (k,)
    return (jnp.where(from_b[:, None], self.xs_b, self.xs_a),
            jnp.where(from_b, self.ys_b, self.ys_a))

  def target_tokens(self) -> jax.Array:
    """(m, d+1): the target sample T, tokens (x, y)."""
    return tasks.regression_tokens(self.target_x, self.target_y)


def trial_data(key, cfg: Config) -> Trial:
  """Draws one trial's two tasks, their demonstrations, the queries and target of task A."""
  kwa, kwb, kxa, kxb, kea, keb, kq, kt, ket = jax.random.split(key, 9)
  d, k, dt = cfg.d, cfg.k, jnp.float64
  base = lambda kk, n: _common.regression_inputs(kk, n, d, inputs=cfg.inputs, dtype=dt)  # noqa
  w_a, w_b = jax.random.normal(kwa, (d,), dt), jax.random.normal(kwb, (d,), dt)
  xs_a, xs_b = base(kxa, k), base(kxb, k)
  ys_a = jnp.dot(xs_a, w_a) + cfg.noise_std * jax.random.normal(kea, (k,), dt)
  ys_b = jnp.dot(xs_b, w_b) + cfg.noise_std * jax.random.normal(keb, (k,), dt)
  queries = base(kq, cfg.n_queries)
  target_x = base(kt, cfg.n_target)
  target_y = jnp.dot(target_x, w_a) + cfg.noise_std * jax.random.normal(ket, (cfg.n_target,), dt)
  return Trial(w_a, w_b, xs_a, ys_a, xs_b, ys_b, queries, jnp.dot(queries, w_a), target_x,
               target_y)


def trial_keys(key, cfg: Config):
  """(model key, (n_trials,) trial keys, bootstrap key, reference key): how :func:`run` splits."""
  k_model, k_trials, k_boot, k_ref = jax.random.split(key, 4)
  return k_model, jax.random.split(k_trials, cfg.n_trials), k_boot, k_ref


def measure_trial(model, params, cfg: Config, counts, key):
  """(error, ridge error, ChainMeasures) of every fraction of one trial; jittable."""
  tr = trial_data(key, cfg)
  p = models.attention_params(params)
  denom = jnp.mean(tr.targets ** 2)
  target = tr.target_tokens()
  support = jnp.concatenate([tasks.regression_tokens(tr.xs_a, tr.ys_a),
                             tasks.regression_tokens(tr.xs_b, tr.ys_b), target])
  bandwidth = mmd.median_bandwidth(tr.xs_a, tr.target_x)
  q_tokens = jax.vmap(tasks.query_token)(tr.queries)

  def one(count):
    xs, ys = tr.prompt(count)
    demos = tasks.regression_tokens(xs, ys)
    pred = jax.vmap(lambda q: models.icl_predict(model, params, demos,
                                                 tasks.query_token(q)))(tr.queries)
    rid = jax.vmap(lambda q: baselines.ridge(xs, ys, q, lam=cfg.ridge_lam))(tr.queries)
    m = chain.chain_measures(p, demos, target, q_tokens, tau=MODEL_TAU, eta=ETA,
                             support=support, bandwidth=bandwidth, gaussian_s=xs,
                             gaussian_t=tr.target_x)
    return (jnp.mean((pred - tr.targets) ** 2) / denom,
            jnp.mean((rid - tr.targets) ** 2) / denom, m)

  return jax.vmap(one)(jnp.asarray(counts))


def run(config: Config = Config(), *, key) -> Results:
  """Trains the layer, then measures every fraction on ``n_trials`` paired trials.

  Args:
    config: the sizes (:data:`QUICK` for a small run).
    key: PRNG key (keyword-only); split by :func:`trial_keys`.
  """
  cfg = config
  counts = fraction_counts(cfg)
  k_model, keys, k_boot, k_ref = trial_keys(key, cfg)
  model, params, losses = e1.train_layer(cfg, k_model, shift_lengths=(0.0,), name=NAME)
  ref_cfg = e1.Config(d=cfg.d, k=cfg.k, noise_std=cfg.noise_std, ridge_lam=cfg.ridge_lam,
                      inputs=cfg.inputs, query_shift=0.0, n_reference=2000, progress=False)
  reference = e1.reference_errors(model, params, losses, ref_cfg, k_ref)
  fn = jax.jit(lambda prm, k: measure_trial(model, prm, cfg, counts, k))
  outs = []
  bar = runtime.Progress(f"{NAME} trials", cfg.n_trials, enabled=cfg.progress)
  for t in range(cfg.n_trials):
    outs.append(jax.tree_util.tree_map(np.asarray, fn(params, keys[t])))
    bar.update(t + 1)
  stack = lambda i: jax.tree_util.tree_map(lambda *a: np.stack(a), *[o[i] for o in outs])  # noqa
  return Results(counts / cfg.k, counts, stack(0), stack(1), stack(2), reference, losses, params,
                 _common.seed_of(k_boot), cfg)


def mmd2_of(res: Results, kernel: str, estimator: str) -> np.ndarray:
  """(T, F) MMD^2(prompt, T) in one kernel and estimator."""
  return res.measures.mmd2[..., KERNELS.index(kernel), ESTIMATORS.index(estimator)]


class Statistics(NamedTuple):
  """Within-trial Spearman correlations (bootstrap over trials).

  Attributes:
    f_error: Spearman(f, error).
    f_mmd: dict "kernel/estimator" -> Spearman(f, MMD^2).
    mmd_error: dict "kernel/estimator" -> Spearman(MMD^2, error).
  """
  f_error: _common.LinkStat
  f_mmd: dict
  mmd_error: dict


def statistics(res: Results) -> Statistics:
  """:class:`Statistics` of an E6 run."""
  n_t, n_f = res.error.shape
  trial = np.repeat(np.arange(n_t), n_f)
  f = np.broadcast_to(res.fractions, res.error.shape).ravel()
  kw = dict(groups=trial, clusters=trial, seed=res.boot_seed, n_boot=res.config.n_boot)
  f_mmd, mmd_err = {}, {}
  for k in KERNELS:
    for es in ESTIMATORS:
      m = mmd2_of(res, k, es).ravel()
      f_mmd[f"{k}/{es}"] = _common.cluster_spearman(f, m, **kw)
      mmd_err[f"{k}/{es}"] = _common.cluster_spearman(m, res.error.ravel(), **kw)
  return Statistics(_common.cluster_spearman(f, res.error.ravel(), **kw), f_mmd, mmd_err)


def summary(results: Results) -> tuple[str, dict]:
  """(printed table, JSON-able dict): the curves against f and the correlations."""
  res = results
  st = statistics(res)
  n = res.error.shape[0]
  se = lambda a: a.std(axis=0, ddof=1) / np.sqrt(n)                        # noqa: E731
  curves = {"f": res.fractions, "count": res.counts, "error_mean": res.error.mean(0),
            "error_se": se(res.error), "ridge_error_mean": res.ridge_error.mean(0)}
  for k in KERNELS:
    for es in ESTIMATORS:
      curves[f"{k}/{es}_median"] = np.median(mmd2_of(res, k, es), axis=0)
  rows = [[float(curves["f"][i]), int(curves["count"][i]), float(curves["error_mean"][i]),
           float(curves["error_se"][i]),
           *(float(curves[f"{k}_median"][i]) for k in ("normalised/unbiased", "k_V/unbiased",
                                                       "k_V/biased", "gaussian/unbiased")),
           float(curves["ridge_error_mean"][i])] for i in range(len(res.fractions))]
  table = runtime.format_table(["f", "foreign", "error", "se", "norm. MMD^2 u", "MMD_kV^2 u",
                                "MMD_kV^2 b", "Gauss MMD^2 u", "ridge"], rows)
  corr_rows = [[key, st.f_mmd[key].rho, f"[{st.f_mmd[key].lo:.3f}, {st.f_mmd[key].hi:.3f}]",
                c.rho, f"[{c.lo:.3f}, {c.hi:.3f}]"] for key, c in st.mmd_error.items()]
  lines = [table,
           textwrap.fill(f"inputs: {res.config.inputs}; target: {TARGET}; {HEADS}. MMD^2 "
                         f"medians over trials (u = unbiased, the default; b = biased); "
                         f"{mmd.NEGATIVE_MMD2_NOTE}.", width=120),
           textwrap.fill(e1.reference_line(res.reference).replace(
               "prompts of k demonstrations from Q", "prompts of k demonstrations of one task"),
               width=120),
           f"Spearman within trials (over the {len(res.fractions)} fractions; bootstrap over "
           f"{n} trials): (f, error) {st.f_error.rho:.3f} [{st.f_error.lo:.3f}, "
           f"{st.f_error.hi:.3f}]",
           runtime.format_table(["kernel/estimator", "rho(f, MMD^2)", "95% CI",
                                 "rho(MMD^2, error)", "95% CI"], corr_rows, align="lrlrl")]
  data = {"curves": {k: np.asarray(v).tolist() for k, v in curves.items()},
          "spearman_f_error": st.f_error._asdict(),
          "spearman_f_mmd": {k: c._asdict() for k, c in st.f_mmd.items()},
          "spearman_mmd_error": {k: c._asdict() for k, c in st.mmd_error.items()},
          "reference": res.reference._asdict(), "heads": HEADS, "target": TARGET,
          "kernels": list(KERNELS), "estimators": list(ESTIMATORS),
          "default_estimator": "unbiased"}
  return "\n".join(lines), data


def arrays(results: Results) -> dict:
  """The arrays saved to ``E6.npz``."""
  res = results
  out = dict(fractions=res.fractions, counts=res.counts, error=res.error,
             ridge_error=res.ridge_error, train_losses=res.train_losses)
  out.update({f"measures_{k}": v for k, v in res.measures._asdict().items()})
  return out



def save(res: Results, out: str, *, info: dict) -> list[str]:
  """Writes ``E6.json`` (info and summary), ``E6.npz`` (arrays), ``E6_model.npz`` under ``out``."""
  return _common.save_results(sys.modules[__name__], res, out, info=info)


def main(argv=None) -> int:
  """``python -m icl_kd.experiments E6 [--quick] [--seed S] [--out DIR] ...``; returns 0."""
  return _common.main(sys.modules[__name__], argv)
