"""Shared pieces of the experiments: the command line, rank correlation, saving, training.

Every experiment module follows one protocol:

- ``NAME`` (e.g. ``"E1"``) and ``DESCRIPTION`` (one line);
- ``Config``, a typed NamedTuple of its sizes, and ``QUICK``, a small one;
- ``FLAGS``: the :class:`Flag` s that override ``Config`` fields;
- ``Results``, a NamedTuple, and ``run(config, *, key) -> Results``;
- ``summary(results) -> (text, dict)``: the printed table and its numbers;
- ``save(results, out, *, info) -> paths``: the files under ``out``;
- ``main(argv) -> int``: :func:`main` on the module.

The integer ``--seed`` of the command line makes the key
(``jax.random.key(seed)``); ``run`` draws everything from that key.

What several experiments compute alike is here too: the theory's distillation
kernels on the heads of one layer and their summed MMD^2 (E1, E6), and C1 on
every head of a trained transformer (E2, E4).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from icl_kd import decompose, mmd, models, runtime, tasks, train
from icl_kd.attention import AttentionParams


def rankdata(a) -> np.ndarray:
  """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
  a = np.asarray(a, dtype=float)
  order = np.argsort(a, kind="mergesort")
  ranks = np.empty(len(a), dtype=float)
  sorted_a = a[order]
  i = 0
  while i < len(a):
    j = i
    while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
      j += 1
    ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
    i = j + 1
  return ranks


def spearman(a, b) -> float:
  """Spearman rank correlation: the Pearson correlation of the ranks (nan if constant)."""
  ra, rb = rankdata(a), rankdata(b)
  ra, rb = ra - ra.mean(), rb - rb.mean()
  den = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
  return float(np.sum(ra * rb) / den) if den > 0 else float("nan")


class Correlation(NamedTuple):
  """Spearman rho with a percentile bootstrap interval over groups (e.g. trials)."""
  rho: float
  lo: float
  hi: float
  n: int


def bootstrap_spearman(a, b, *, seed: int, groups=None, n_boot: int = 1000,
                       level: float = 0.95) -> Correlation:
  """Spearman rho(a, b) and a percentile bootstrap interval.

  Resamples whole groups (rows with equal ``groups`` label) with replacement,
  so rows that share a task are not treated as independent; with
  ``groups=None`` every row is its own group.
  """
  a, b = np.asarray(a, float), np.asarray(b, float)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"a and b must be 1-D of equal length, got {a.shape} and {b.shape}")
  groups = np.arange(len(a)) if groups is None else np.asarray(groups)
  labels = np.unique(groups)
  members = [np.flatnonzero(groups == g) for g in labels]
  rng = np.random.default_rng(seed)
  stats = []
  for _ in range(n_boot):
    pick = rng.integers(0, len(labels), len(labels))
    idx = np.concatenate([members[g] for g in pick])
    stats.append(spearman(a[idx], b[idx]))
  stats = np.asarray(stats)
  stats = stats[np.isfinite(stats)]
  alpha = (1 - level) / 2
  lo, hi = (np.quantile(stats, [alpha, 1 - alpha]) if stats.size else (np.nan, np.nan))
  return Correlation(spearman(a, b), float(lo), float(hi), len(a))


def within_trial_spearman(a, b, *, seed: int, n_boot: int = 1000,
                          level: float = 0.95) -> Correlation:
  """Mean over rows (trials) of Spearman(a[t], b[t]), with a percentile bootstrap over rows.

  Args:
    a, b: (T, P) values of P prompts in each of T trials.
    seed: NumPy seed of the bootstrap. n_boot: resamples. level: interval level.

  Returns:
    Correlation(rho = mean_t rho_t, lo, hi, n = T * P); trials whose rho_t is
    undefined (a constant row) are left out of the mean.
  """
  a, b = np.asarray(a, float), np.asarray(b, float)
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f"a and b must be 2-D (trials, prompts) of equal shape, got {a.shape} and "
                     f"{b.shape}")
  per = np.array([spearman(x, y) for x, y in zip(a, b)])           # (T,)
  per = per[np.isfinite(per)]
  if per.size == 0:
    return Correlation(float("nan"), float("nan"), float("nan"), a.size)
  rng = np.random.default_rng(seed)
  stats = per[rng.integers(0, per.size, (n_boot, per.size))].mean(axis=1)
  alpha = (1 - level) / 2
  lo, hi = np.quantile(stats, [alpha, 1 - alpha])
  return Correlation(float(per.mean()), float(lo), float(hi), a.size)


class Flag(NamedTuple):
  """A command-line flag that overrides one field of an experiment's ``Config``.

  Attributes:
    name: the flag, e.g. ``"--trials"``.
    field: the ``Config`` field it sets.
    type: parses the flag's text.
    help: what the field means (the defaults are appended).
    choices: allowed values, or None.
  """
  name: str
  field: str
  type: Callable
  help: str
  choices: tuple | None = None


def build_parser(module) -> argparse.ArgumentParser:
  """The command line of one experiment module (its NAME, DESCRIPTION, Config, QUICK, FLAGS).

  Every experiment takes ``--quick``, ``--out DIR``, ``--seed S`` and the
  runtime flags of :func:`icl_kd.runtime.add_runtime_arguments`; each of its
  ``FLAGS`` overrides one ``Config`` field when given.
  """
  p = argparse.ArgumentParser(
      prog=f"python -m icl_kd.experiments {module.NAME}", description=module.DESCRIPTION,
      epilog="Writes the summary table to stdout and the results under --out; exit code 0 "
             "when the run completed, 1 when a needed package is missing, 2 on bad usage.")
  p.add_argument("--quick", action="store_true",
                 help="tiny sizes (about a minute on a CPU); the outputs are marked "
                      "\"quick\": true and are not the experiment's result")
  p.add_argument("--out", default=os.path.join("results", module.NAME), metavar="DIR",
                 help="output folder, created if missing (default %(default)s)")
  runtime.add_runtime_arguments(p)
  full, quick = module.Config(), module.QUICK
  for f in getattr(module, "FLAGS", ()):
    default = getattr(full, f.field)
    small = getattr(quick, f.field)
    shown = f"default {_show(default)}" + ("" if small == default else
                                          f"; --quick: {_show(small)}")
    p.add_argument(f.name, dest=f.field, type=f.type, default=None, choices=f.choices,
                   help=f"{f.help} ({shown})")
  return p


def _show(v) -> str:
  return ",".join(f"{x:g}" for x in v) if isinstance(v, tuple) else str(v)


def config_from_args(module, args: argparse.Namespace):
  """``QUICK`` or ``Config()`` with the given flags applied (and ``progress`` from --no-progress)."""
  config = module.QUICK if args.quick else module.Config()
  changes = {f.field: getattr(args, f.field) for f in getattr(module, "FLAGS", ())
             if getattr(args, f.field, None) is not None}
  if "progress" in config._fields:
    changes["progress"] = not args.no_progress
  return config._replace(**changes)


def run_info(module, config, *, seed: int, quick: bool) -> dict:
  """What every saved summary starts with: the experiment, quick or not, the seed, the config."""
  return {"experiment": module.NAME, "quick": bool(quick), "seed": int(seed),
          "config": config_dict(config)}


def run_cli(module, argv=None):
  """Parses ``argv``, fixes the runtime, runs, prints the summary and saves; returns the results.

  The CLI, not the library, turns on float64 (the decompositions run in
  float64) and the persistent compilation cache; ``--seed`` makes the key.
  """
  args = build_parser(module).parse_args(sys.argv[1:] if argv is None else list(argv))
  runtime.configure(x64=True, fast_compile="off", compile_cache=args.compile_cache)
  config = config_from_args(module, args)
  results = module.run(config, key=jax.random.key(args.seed))
  text, _ = module.summary(results)
  print(text)
  os.makedirs(args.out, exist_ok=True)
  paths = module.save(results, args.out,
                      info=run_info(module, config, seed=args.seed, quick=args.quick))
  print(f"saved {' and '.join(str(p) for p in paths)}")
  return results


def main(module, argv=None) -> int:
  """``python -m icl_kd.experiments NAME ...`` for one experiment module.

  Returns 0 when the run completed, 1 when an optional package it needs is
  missing (the message says which); argparse exits with 2 on bad usage.
  """
  try:
    run_cli(module, argv)
  except ModuleNotFoundError as e:
    print(f"[{module.NAME}] {e}", file=sys.stderr)
    return 1
  return 0


def seed_of(key) -> int:
  """An integer seed for NumPy generators (the bootstrap), drawn from ``key``."""
  return int(jax.random.randint(key, (), 0, 2 ** 31 - 1))


def save(out_dir: str, name: str, *, arrays: dict, summary: dict, params=None) -> list[str]:
  """Writes ``<out>/<name>.npz`` (arrays) and ``<out>/<name>.json`` (summary); returns the paths.

  The JSON follows :mod:`icl_kd.runtime`'s policy (valid JSON, non-finite
  floats as strings). With ``params``, the trained parameters also go to
  ``<out>/<name>_model.npz`` (:func:`icl_kd.train.save_checkpoint`, with the
  summary's experiment, quick, seed and config as metadata).
  """
  os.makedirs(out_dir, exist_ok=True)
  npz = os.path.join(out_dir, f"{name}.npz")
  js = os.path.join(out_dir, f"{name}.json")
  np.savez(npz, **{k: np.asarray(v) for k, v in arrays.items()})
  runtime.write_json(js, summary, indent=2)
  paths = [npz, js]
  if params is not None:
    meta = {k: summary[k] for k in ("experiment", "quick", "seed", "config") if k in summary}
    path = os.path.join(out_dir, f"{name}_model.npz")
    train.save_checkpoint(path, params, **runtime.jsonable(meta))
    paths.append(path)
  return paths


def save_results(module, results, out_dir: str, *, info: dict) -> list[str]:
  """:func:`save` of an experiment module's ``results``: the protocol's ``save``.

  The arrays are ``module.arrays(results)``, the summary JSON is ``info``
  followed by the numbers of ``module.summary(results)``, and the trained
  parameters are ``results.params``; the files are ``<out>/<NAME>.npz``,
  ``.json`` and ``_model.npz``.
  """
  return save(out_dir, module.NAME, arrays=module.arrays(results),
              summary={**info, **module.summary(results)[1]}, params=results.params)


def config_dict(config) -> dict:
  return runtime.jsonable(dict(config._asdict()) if hasattr(config, "_asdict")
                          else dataclasses.asdict(config))


MMD2_NOTE = ("MMD^2 is the unbiased estimate: it can be slightly negative when the two "
             "samples are close (its expectation is >= 0).")


def train_regression_model(model, *, key, d: int, n_demos: int, n_queries: int, steps: int,
                           batch: int, learning_rate: float, noise_std: float = 0.0,
                           optimizer: optax.GradientTransformation | None = None,
                           dataset: tasks.RegressionPrompts | None = None,
                           sampler: Callable | None = None,
                           progress: bool = True, desc: str = "train", dtype=jnp.float32):
  """Initialises and trains ``model`` on linear-regression prompts; returns (params, losses).

  Batches are fresh prompts from :func:`icl_kd.tasks.sample_regression` (x ~ N(0, I)),
  or the fixed ``dataset`` when given (full batch, the key is then unused), or
  ``sampler(key) -> RegressionPrompts`` when given.
  """
  k_init, k_data, k_train = jax.random.split(key, 3)
  del k_data
  # shapes only: the initial parameters do not depend on the example's values.
  init = jax.jit(model.init)
  params = init(k_init, jnp.zeros((n_demos, d + 1), dtype), jnp.zeros((d + 1,), dtype))["params"]
  if sampler is not None:
    sample = sampler
  elif dataset is None:
    def sample(k):
      return tasks.sample_regression(batch, n_demos, d, key=k, n_queries=n_queries,
                                     noise_std=noise_std, dtype=dtype)
  else:
    def sample(k):
      del k
      return dataset
  opt = optax.adam(learning_rate) if optimizer is None else optimizer
  result = train.train(train.regression_loss(model), params, key=k_train, steps=steps,
                       optimizer=opt, sample_batch=sample, log_every=max(1, min(100, steps)),
                       progress=progress, desc=desc)
  return result.params, result.losses


def to_float64(tree):
  """Casts every float leaf to float64 (needs x64 enabled)."""
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


# -- the theory's kernels on the heads of one layer (E1, E6) --------------------------------


def theory_kernels(params: AttentionParams, *, tau, use_values: bool = True) -> tuple:
  """The distillation kernels of the heads of one layer, one per head (docs/THEORY.md C5).

      use_values=True:  k_V(e, e') = <W^V e, W^V e'> exp(<W^K e, W^K e'> / tau)
      use_values=False: k_x(e, e') = <e, e'>         exp(<W^K e, W^K e'> / tau)

  Args:
    params: AttentionParams of one head (w_k (d_k, d)) or of the H heads of one layer
      (leading head axis: w_k (H, d_k, d), w_v (H, d_v, d)). W^Q is not used.
    tau: the softmax temperature of the layer.
    use_values: k_V (True) or k_x (False).

  Returns:
    A tuple of :class:`icl_kd.mmd.DistillationKernel`; the MMD^2 of their sum
    kernel (the sum of the heads' MMD^2) is what the ``mmd_kv``/``mmd_kx`` rules use.
  """
  if params.w_k.ndim == 2:
    return (mmd.distillation_kernel(params, tau=tau, use_values=use_values),)
  if params.w_k.ndim != 3:
    raise ValueError(f"params.w_k must have shape (d_k, d) or (H, d_k, d), got {params.w_k.shape}")
  return tuple(mmd.distillation_kernel(AttentionParams(*(p[h] for p in params)), tau=tau,
                                       use_values=use_values)
               for h in range(params.w_k.shape[0]))


def as_kernels(kernel) -> tuple:
  """``kernel`` as a non-empty tuple of one-pair kernels (one kernel, or a sequence of them)."""
  kernels = tuple(kernel) if isinstance(kernel, (tuple, list)) else (kernel,)
  if not kernels:
    raise ValueError("kernel must be a kernel or a non-empty sequence of kernels, got an empty one")
  for k in kernels:
    if not callable(k):
      raise TypeError(f"kernel must be callable on one pair (x, y) -> scalar, got "
                      f"{type(k).__name__}")
  return kernels


def summed_mmd2(x: jax.Array, y: jax.Array, *, kernel) -> jax.Array:
  """Biased MMD^2 of the sum kernel, sum_h MMD_{k_h}^2(x, y), via :func:`icl_kd.mmd.mmd2`."""
  return sum(mmd.mmd2(x, y, kernel=k, estimator="biased") for k in as_kernels(kernel))


# -- C1 on every head of a trained transformer (E2, E4) -------------------------------------

DTYPES = {"float32": jnp.float32, "float64": jnp.float64}


def layer_head_decomposition(model: models.Transformer, params, xs, ys, query):
  """C1 at the query for every (layer, head) of one prompt, on the layer's actual inputs.

  Returns (residual, consistency, log_eta, entropy), each (L, H): the relative
  C1 residual |h - reference| / |h| of ``decompose`` in float64, and the
  relative difference between ``decompose``'s h and the head output inside
  the model.
  """
  demos = tasks.regression_tokens(xs, ys)
  inter = models.transformer_intermediates(model, params, demos, tasks.query_token(query))
  n = xs.shape[0]
  tau = models.head_tau(params)
  heads = to_float64(models.stacked_head_params(params))                   # (L, H, ...)
  x = inter.attn_inputs.astype(jnp.float64)                                # (L, N+1, d_model)
  h_model = inter.head_outputs[:, :, n].astype(jnp.float64)                # (L, H, d_model)

  def one(p, x_l, h_m):
    out = decompose(p, x_l[:n], jnp.zeros((0, x_l.shape[1]), x_l.dtype), x_l[n], tau=tau)
    norm = jnp.linalg.norm(out.attention)
    return (jnp.linalg.norm(out.attention - out.reference) / norm,
            jnp.linalg.norm(out.attention - h_m) / jnp.linalg.norm(h_m), out.log_eta, out.entropy)

  per_head = jax.vmap(one, in_axes=(0, None, 0))                           # over heads
  return jax.vmap(per_head, in_axes=(0, 0, 0))(heads, x, h_model)          # over layers
