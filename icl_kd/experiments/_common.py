"""Shared pieces of the experiments: CLI flags, rank correlation, tables, saving."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from icl_kd import tasks, train


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


def parser(name: str, description: str) -> argparse.ArgumentParser:
  """The flags every experiment takes: --seed, --quick, --out DIR (default results/<name>)."""
  p = argparse.ArgumentParser(prog=f"python -m icl_kd.experiments {name}", description=description)
  p.add_argument("--seed", type=int, default=0, help="integer seed of every random draw")
  p.add_argument("--quick", action="store_true", help="tiny sizes (under a minute on a CPU)")
  p.add_argument("--out", default=os.path.join("results", name), help="output directory")
  return p


def override(config, args: argparse.Namespace, fields: Sequence[str]):
  """Replaces the config ``fields`` whose flags were given on the command line."""
  changes = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
  return config._replace(**changes)


def enable_x64() -> None:
  """The experiment CLIs decompose in float64 (set before any array exists)."""
  jax.config.update("jax_enable_x64", True)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A plain-text table; floats with 4 significant digits."""
  def cell(v):
    if isinstance(v, (float, np.floating)):
      return f"{v:.4g}"
    return str(v)
  body = [[cell(v) for v in r] for r in rows]
  widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
            for i, h in enumerate(headers)]
  line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))
  return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in body])


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  if isinstance(x, (np.floating, float)):
    return float(x)
  if isinstance(x, (np.integer, int)) and not isinstance(x, bool):
    return int(x)
  return x


def save(out_dir: str, name: str, *, arrays: dict, summary: dict, params=None) -> tuple[str, str]:
  """Writes ``<out>/<name>.npz`` (arrays) and ``<out>/<name>.json`` (summary); returns paths.

  With ``params``, the trained parameters also go to ``<out>/<name>_model.npz``
  (:func:`icl_kd.train.save_checkpoint`).
  """
  os.makedirs(out_dir, exist_ok=True)
  if params is not None:
    train.save_checkpoint(os.path.join(out_dir, f"{name}_model.npz"), params,
                          config=summary.get("config", {}))
  npz = os.path.join(out_dir, f"{name}.npz")
  js = os.path.join(out_dir, f"{name}.json")
  np.savez(npz, **{k: np.asarray(v) for k, v in arrays.items()})
  with open(js, "w") as f:
    json.dump(_jsonable(summary), f, indent=2)
  return npz, js


def configure(parser: argparse.ArgumentParser, argv, default, quick, fields: Sequence[str]):
  """Parses argv and returns (args, config): ``quick`` or ``default`` with the seed and the
  command-line overrides of ``fields`` applied; float64 is enabled for the decompositions."""
  args = parser.parse_args(argv)
  enable_x64()
  config = (quick if args.quick else default)._replace(seed=args.seed)
  return args, override(config, args, fields)


def report(out_dir: str, name: str, config, summary: tuple[str, dict], *, arrays: dict,
           params=None) -> tuple[str, str]:
  """Prints an experiment's summary table and saves it with its arrays (see :func:`save`)."""
  text, data = summary
  print(text)
  paths = save(out_dir, name, arrays=arrays, summary={"config": config_dict(config), **data},
               params=params)
  print(f"saved {paths[0]} and {paths[1]}")
  return paths


def config_dict(config) -> dict:
  return _jsonable(dict(config._asdict()) if hasattr(config, "_asdict")
                   else dataclasses.asdict(config))


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

