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

from icl_kd import decompose, models, runtime, tasks, train
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


class LinkStat(NamedTuple):
  """A within-group Spearman rho with a percentile bootstrap interval over clusters.

  Attributes:
    rho: the mean over groups of the within-group Spearman correlation.
    lo, hi: the bootstrap interval (clusters resampled with replacement).
    groups: the number of groups whose correlation is defined (non-constant sides).
  """
  rho: float
  lo: float
  hi: float
  groups: int


def _percentile_interval(stats: np.ndarray, level: float) -> tuple[float, float]:
  stats = stats[np.isfinite(stats)]
  if not stats.size:
    return float("nan"), float("nan")
  alpha = (1 - level) / 2
  lo, hi = np.quantile(stats, [alpha, 1 - alpha])
  return float(lo), float(hi)


def _cluster_bootstrap_mean(values: np.ndarray, clusters: np.ndarray, *, seed: int, n_boot: int,
                            level: float) -> tuple[float, float]:
  """Percentile interval of mean(values) when whole clusters are resampled with replacement."""
  names = np.unique(clusters)
  members = [np.flatnonzero(clusters == c) for c in names]
  rng = np.random.default_rng(seed)
  stats = np.empty(n_boot)
  for b in range(n_boot):
    pick = rng.integers(0, len(names), len(names))
    stats[b] = values[np.concatenate([members[i] for i in pick])].mean()
  return _percentile_interval(stats, level)


def group_spearman(x, y, *, groups, units=None) -> dict:
  """Spearman(x, y) within each group, averaged over ``units`` (e.g. heads) inside the group.

  Args:
    x, y: (n,) paired values (e.g. one row per (candidate set, head)).
    groups: (n,) the group of each row (e.g. a (task, trial)); ranks are taken within it.
    units: (n,) or None: rows of one group are split by unit, Spearman is taken per
      (group, unit) and averaged over the group's units (undefined ones left out).

  Returns:
    dict group label -> rho of the group (only groups where it is defined).
  """
  x, y, groups = np.asarray(x, float), np.asarray(y, float), np.asarray(groups)
  if x.shape != y.shape or x.ndim != 1 or groups.shape != x.shape:
    raise ValueError(f"x, y and groups must be 1-D of equal length, got {x.shape}, {y.shape} "
                     f"and {groups.shape}")
  units = np.zeros(len(x), int) if units is None else np.asarray(units)
  out = {}
  for g in np.unique(groups):
    in_g = groups == g
    per = [spearman(x[in_g & (units == u)], y[in_g & (units == u)])
           for u in np.unique(units[in_g])]
    per = [r for r in per if np.isfinite(r)]
    if per:
      out[g.item() if hasattr(g, "item") else g] = float(np.mean(per))
  return out


def cluster_spearman(x, y, *, groups, clusters, units=None, seed: int, n_boot: int = 1000,
                     level: float = 0.95) -> LinkStat:
  """Within-group Spearman averaged over groups, bootstrap over clusters (e.g. tasks).

  rho = mean over groups g of rho_g (:func:`group_spearman`). The interval resamples
  clusters with replacement, each bringing all of its groups (a task's trials are not
  independent of each other), and takes the percentile interval of the mean.

  Args:
    x, y: (n,) values. groups: (n,) group labels. clusters: (n,) the cluster of each row
      (constant within a group). units: see :func:`group_spearman`.
    seed: NumPy seed of the bootstrap. n_boot: resamples. level: interval level.
  """
  per = group_spearman(x, y, groups=groups, units=units)
  groups, clusters = np.asarray(groups), np.asarray(clusters)
  if not per:
    return LinkStat(float("nan"), float("nan"), float("nan"), 0)
  labels = list(per)
  rho_g = np.array([per[g] for g in labels])
  cluster_of = {}
  for g, c in zip(groups.tolist(), clusters.tolist()):
    cluster_of.setdefault(g, c)
  cl = np.array([cluster_of[g] for g in labels])
  lo, hi = _cluster_bootstrap_mean(rho_g, cl, seed=seed, n_boot=n_boot, level=level)
  return LinkStat(float(rho_g.mean()), lo, hi, len(labels))


class PairedDifference(NamedTuple):
  """A paired difference (rule A minus rule B) averaged over groups, bootstrap over clusters.

  Attributes:
    mean: the mean over groups of the per-group difference.
    lo, hi: percentile bootstrap interval (clusters resampled).
    detectable: the smallest true mean difference the design detects with 80% power at
      two-sided level 0.05 (:func:`minimum_detectable_difference` on the cluster means).
    clusters: the number of clusters.
  """
  mean: float
  lo: float
  hi: float
  detectable: float
  clusters: int


def paired_difference(diff, *, clusters, seed: int, n_boot: int = 1000,
                      level: float = 0.95) -> PairedDifference:
  """:class:`PairedDifference` of per-group differences ``diff`` (n,), clustered by ``clusters``."""
  diff, clusters = np.asarray(diff, float), np.asarray(clusters)
  lo, hi = _cluster_bootstrap_mean(diff, clusters, seed=seed, n_boot=n_boot, level=level)
  names = np.unique(clusters)
  cluster_means = np.array([diff[clusters == c].mean() for c in names])
  return PairedDifference(float(diff.mean()), lo, hi,
                          minimum_detectable_difference(cluster_means), len(names))


def student_t_cdf(t: float, df: float) -> float:
  """P(T <= t) for Student's t with ``df`` degrees of freedom (regularised incomplete beta)."""
  import jax.scipy.special as jsp
  x = df / (df + t * t)
  tail = 0.5 * float(jsp.betainc(df / 2.0, 0.5, jnp.asarray(x, jnp.float64)))
  return 1.0 - tail if t > 0 else tail


def student_t_quantile(p: float, df: float) -> float:
  """The p-quantile of Student's t (bisection on :func:`student_t_cdf`, to 1e-10)."""
  if not 0 < p < 1 or not df > 0:
    raise ValueError(f"need 0 < p < 1 and df > 0, got p = {p} and df = {df}")
  lo, hi = -1e3, 1e3
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if student_t_cdf(mid, df) < p:
      lo = mid
    else:
      hi = mid
    if hi - lo < 1e-10:
      break
  return 0.5 * (lo + hi)


def minimum_detectable_difference(cluster_means, *, alpha: float = 0.05,
                                  power: float = 0.8) -> float:
  """Smallest true mean difference a paired design detects with the given power.

      MDD = (t_{1 - alpha/2, C-1} + t_{power, C-1}) * sd(cluster means) / sqrt(C)

  the two-sided one-sample t-test on the C cluster means of the paired difference (the
  unit of resampling); its standard deviation is the observed one. NaN for C < 2.
  """
  m = np.asarray(cluster_means, float)
  c = m.size
  if c < 2:
    return float("nan")
  q = student_t_quantile(1 - alpha / 2, c - 1) + student_t_quantile(power, c - 1)
  return float(q * m.std(ddof=1) / np.sqrt(c))


class UsageError(ValueError):
  """A bad value of a command-line flag or of a Config size, found before any work: the CLI
  prints it as one line and exits with status 2."""


class Flag(NamedTuple):
  """A command-line flag that overrides one field of an experiment's ``Config``.

  Attributes:
    name: the flag, e.g. ``"--trials"``.
    field: the ``Config`` field it sets.
    type: parses the flag's text (for a tuple field: each comma-separated item).
    help: what the field means (the defaults are appended).
    choices: allowed values, or None.
    minimum: the smallest allowed value (of each item of a tuple), or None.
  """
  name: str
  field: str
  type: Callable
  help: str
  choices: tuple | None = None
  minimum: float | None = None


def _show(v) -> str:
  return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) if isinstance(
      v, tuple) else str(v)


def _parse_flag(flag: Flag, tuple_field: bool):
  """argparse ``type`` of a flag: parses (a comma-separated list for a tuple field) and checks
  ``minimum``, so a bad size is a one-line usage error naming the flag (exit status 2)."""
  def parse(text: str):
    parts = text.split(",") if tuple_field else [text]
    try:
      values = [flag.type(p.strip()) for p in parts if p.strip() or not tuple_field]
    except (TypeError, ValueError) as e:
      raise argparse.ArgumentTypeError(f"expected {getattr(flag.type, '__name__', 'a value')}"
                                       f"{' list' if tuple_field else ''}, got {text!r} "
                                       f"({e})") from None
    if tuple_field and not values:
      raise argparse.ArgumentTypeError(f"expected a non-empty comma-separated list, got {text!r}")
    if flag.minimum is not None:
      bad = [v for v in values if not v >= flag.minimum]
      if bad:
        raise argparse.ArgumentTypeError(f"must be >= {flag.minimum:g}, got {text!r}")
    return tuple(values) if tuple_field else values[0]
  parse.__name__ = getattr(flag.type, "__name__", "value")
  return parse


class OneLineParser(argparse.ArgumentParser):
  """An ArgumentParser whose usage errors are one line on stderr (exit status 2)."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(module) -> argparse.ArgumentParser:
  """The command line of one experiment module (its NAME, DESCRIPTION, Config, QUICK, FLAGS).

  Every experiment takes ``--quick``, ``--out DIR``, ``--seed S`` and the
  runtime flags of :func:`icl_kd.runtime.add_runtime_arguments`; each of its
  ``FLAGS`` overrides one ``Config`` field when given, checked as it is parsed.
  """
  p = OneLineParser(
      prog=f"python -m icl_kd.experiments {module.NAME}", description=module.DESCRIPTION,
      epilog="Writes the summary table to stdout and the results under --out; exit code 0 "
             "when the run completed, 1 when a needed package is missing, 2 on bad usage.")
  p.add_argument("--quick", action="store_true",
                 help="tiny sizes (about a minute on a CPU); the tables say QUICK RUN and the "
                      "outputs are marked \"quick\": true: they are not the experiment's result")
  p.add_argument("--out", default=os.path.join("results", module.NAME), metavar="DIR",
                 help="output folder, created if missing; checked writable before any work "
                      "(default %(default)s)")
  runtime.add_runtime_arguments(p)
  full, quick = module.Config(), module.QUICK
  for f in getattr(module, "FLAGS", ()):
    default = getattr(full, f.field)
    small = getattr(quick, f.field)
    shown = f"default {_show(default)}" + ("" if small == default else
                                          f"; --quick: {_show(small)}")
    p.add_argument(f.name, dest=f.field, type=_parse_flag(f, isinstance(default, tuple)),
                   default=None, choices=f.choices,
                   metavar=None if f.choices else f.field.upper(),
                   help=f"{f.help} ({shown})")
  return p


def config_from_args(module, args: argparse.Namespace):
  """``QUICK`` or ``Config()`` with the given flags applied (``progress`` from --no-progress)."""
  config = module.QUICK if args.quick else module.Config()
  changes = {f.field: getattr(args, f.field) for f in getattr(module, "FLAGS", ())
             if getattr(args, f.field, None) is not None}
  if "progress" in config._fields:
    changes["progress"] = not args.no_progress
  return config._replace(**changes)


def check_output_dir(out: str) -> str:
  """Creates ``out`` if missing and checks that a file can be written in it; raises
  :class:`UsageError` (naming --out) otherwise. Called before any work."""
  try:
    os.makedirs(out, exist_ok=True)
    probe = os.path.join(out, f".write-test-{os.getpid()}")
    with open(probe, "w") as f:
      f.write("")
    os.remove(probe)
  except OSError as e:
    raise UsageError(f"--out {out!r} is not a writable folder ({e.strerror or e})") from None
  return out


def versions() -> dict:
  """The versions a result depends on: icl_kd, Python, jax, jaxlib, numpy, flax, optax."""
  import platform

  import icl_kd
  out = {"icl_kd": icl_kd.__version__, "python": platform.python_version()}
  for name in ("jax", "jaxlib", "numpy", "flax", "optax"):
    try:
      out[name] = __import__(name).__version__
    except (ImportError, AttributeError):
      out[name] = None
  return out


def run_info(module, config, *, seed: int, quick: bool, command: str | None = None,
             seconds: float | None = None) -> dict:
  """What every saved summary starts with: the experiment, quick or not, the seed, the config,
  ``icl_kd_version``, ``versions`` (:func:`versions`), the ``command`` that reruns it
  (default: the flags that reproduce ``config`` are in ``config``; the command says
  ``--quick`` and ``--seed``) and the wall time ``seconds`` of the run."""
  import icl_kd
  name = getattr(module, "NAME", "?")
  if command is None:
    command = (f"python -m icl_kd.experiments {name}" + (" --quick" if quick else "")
               + f" --seed {int(seed)}")
  return {"experiment": name, "quick": bool(quick), "seed": int(seed),
          "config": config_dict(config), "icl_kd_version": icl_kd.__version__,
          "versions": versions(), "command": command,
          "wall_seconds": None if seconds is None else float(seconds)}


QUICK_BANNER = ("=== QUICK RUN (--quick): tiny sizes for trying the command; these numbers are "
                "not the experiment's result ===")


def run_cli(module, argv=None):
  """Parses ``argv``, checks every size and --out, fixes the runtime, runs, prints and saves.

  Bad usage (a flag's value, a Config size the module's ``check_config`` refuses, an
  --out that cannot be written) is found before any work and raised as
  :class:`UsageError` (``main`` prints it on one line and returns 2). The CLI, not the
  library, turns on float64 and the persistent compilation cache; ``--seed`` makes the
  key. A quick run's printed tables start and end with :data:`QUICK_BANNER`.
  """
  import time
  argv = sys.argv[1:] if argv is None else list(argv)
  args = build_parser(module).parse_args(argv)
  config = config_from_args(module, args)
  if hasattr(module, "check_config"):
    module.check_config(config)
  check_output_dir(args.out)
  runtime.configure(x64=True, fast_compile="off", compile_cache=args.compile_cache)
  t0 = time.perf_counter()
  results = module.run(config, key=jax.random.key(args.seed))
  seconds = time.perf_counter() - t0
  text, _ = module.summary(results)
  print("\n".join([QUICK_BANNER, text, QUICK_BANNER]) if args.quick else text)
  command = " ".join(["python -m icl_kd.experiments", module.NAME] + argv)
  paths = module.save(results, args.out, info=run_info(module, config, seed=args.seed,
                                                        quick=args.quick, command=command,
                                                        seconds=seconds))
  print(f"saved {' and '.join(str(p) for p in paths)}")
  return results


def main(module, argv=None) -> int:
  """``python -m icl_kd.experiments NAME ...`` for one experiment module.

  Returns 0 when the run completed, 1 when an optional package it needs is
  missing (the message says which), 2 on bad usage (argparse's own errors, and
  :class:`UsageError`: one line on stderr, before any work).
  """
  try:
    run_cli(module, argv)
  except UsageError as e:
    print(f"python -m icl_kd.experiments {module.NAME}: error: {e}", file=sys.stderr)
    return 2
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
  np.savez_compressed(npz, **{k: np.asarray(v) for k, v in arrays.items()})
  runtime.write_json(js, summary, indent=2, flag="--out")
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


INPUTS = ("gaussian", "ball")
"""Input distributions of the synthetic experiments: N(0, I_d), or uniform on the unit ball
(bounded support, as docs/THEORY.md assumes: every moment of the distillation kernels exists)."""


def regression_inputs(key, n: int, d: int, *, inputs: str, dtype=jnp.float32) -> jax.Array:
  """(n, d) base inputs: N(0, I_d) (``inputs="gaussian"``) or uniform on the unit ball ("ball")."""
  if inputs not in INPUTS:
    raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")
  return tasks.base_inputs(key, n, d, x_dist=inputs, dtype=dtype)


def to_float64(tree):
  """Casts every float leaf to float64 (needs x64 enabled)."""
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


# -- the heads of one layer as AttentionParams (E1, E6, chain) --------------------------------


def head_params(params: AttentionParams) -> tuple:
  """The heads of one layer, one AttentionParams each (``params`` of one head, w_k (d_k, d), or
  of H heads stacked on a leading axis, w_k (H, d_k, d))."""
  if params.w_k.ndim == 2:
    return (params,)
  if params.w_k.ndim != 3:
    raise ValueError(f"params.w_k must have shape (d_k, d) or (H, d_k, d), got {params.w_k.shape}")
  return tuple(AttentionParams(*(p[h] for p in params)) for h in range(params.w_k.shape[0]))


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
