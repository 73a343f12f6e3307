"""The figures F1-F12: the paper's claims (docs/THEORY.md C1-C7) and the experiments.

F1-F5 draw the claims; F6-F8 and F11 the experiments E1-E4 and E6; F9 the
pretrained-encoder experiment ``real``; F10 the causal-LM experiment ``llm``; F12
the chain of E7, MMD -> bias -> head output -> answer.

``python -m figures`` regenerates every figure; ``python -m figures F4`` one.
Each figure is a module with

- ``ID``, ``SLUG``, ``CLAIMS``: its id (F1..), file stem and the claim ids it shows;
- ``config(*, quick, seed, **overrides) -> Config``: the sizes of a run;
- ``compute(config) -> results``: the numbers, a JSON-able dict of
  ``{"meta": {...}, "tables": {name: {column: list}}}``;
- ``make(results) -> matplotlib.figure.Figure``: a pure function of the numbers.

:func:`run` saves ``<out>/<ID>_<SLUG>.{pdf,png,json}`` and one CSV per table
(``<ID>_<SLUG>_<table>.csv``), so every plotted value can be checked without
rerunning. The same seed writes byte-identical JSON and CSV files.

Every JSON carries ``"quick": true|false``; a quick figure is drawn with a
"QUICK RUN" watermark (:func:`draw`) and its PNG/PDF metadata say so
(:data:`QUICK_MARK`). Layers and heads are numbered from 0 (layer 0 = the
first layer) in every figure, table and JSON, as in the README.
"""

from __future__ import annotations

import collections
import csv
import importlib
import io
import json
import os

import numpy as np

import icl_kd
from icl_kd import runtime

FIGURES = {
    "F1": "figures.f1_decomposition",
    "F2": "figures.f2_learning_rate",
    "F3": "figures.f3_rademacher",
    "F4": "figures.f4_mmd_bias",
    "F5": "figures.f5_downstream",
    "F6": "figures.f6_selection",
    "F7": "figures.f7_proxy_and_decay",
    "F8": "figures.f8_layers",
    "F9": "figures.f9_real",
    "F10": "figures.f10_llm",
    "F11": "figures.f11_interference",
    "F12": "figures.f12_chain",
}


class Skipped(Exception):
  """A figure that cannot be made here (a missing optional dependency); the message says why."""


class MismatchedResults(ValueError):
  """Saved experiment results of another kind of run than the figure's (quick vs full, seed)."""


def module(fig_id: str):
  """The module of figure ``fig_id`` (e.g. 'F4')."""
  if fig_id not in FIGURES:
    raise ValueError(f"unknown figure {fig_id!r}; expected one of {sorted(FIGURES)}")
  return importlib.import_module(FIGURES[fig_id])


def _float(v) -> float:
  return float(v) if v not in (None, "") else float("nan")


def table(results: dict, name: str) -> dict[str, np.ndarray]:
  """The columns of table ``name`` as NumPy arrays (strings stay strings)."""
  out = {}
  for col, vals in results["tables"][name].items():
    arr = np.asarray(vals)
    if arr.dtype.kind in "UO":
      try:
        arr = np.asarray([_float(v) for v in vals], float)
      except ValueError:
        pass
    out[col] = arr
  return out


def _csv_text(columns: dict[str, list]) -> str:
  names = list(columns)
  lengths = {len(v) for v in columns.values()}
  if len(lengths) > 1:
    raise ValueError(f"table columns differ in length: { {k: len(v) for k, v in columns.items()} }")
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(names)
  for row in zip(*(columns[n] for n in names)):
    w.writerow([repr(v) if isinstance(v, float) else v for v in row])
  return buf.getvalue()


def save_data(results: dict, stem: str) -> list[str]:
  """Writes ``stem.json`` (everything) and ``stem_<table>.csv`` per table; returns the paths.

  The JSON follows :mod:`icl_kd.runtime`'s policy (valid JSON; non-finite
  floats as the strings 'nan', 'inf', '-inf'), keys sorted.
  """
  clean = runtime.jsonable(results)
  paths = [runtime.write_json(stem + ".json", clean, indent=1, sort_keys=True)]
  for name, cols in sorted(clean.get("tables", {}).items()):
    path = f"{stem}_{name}.csv"
    with open(path, "w") as f:
      f.write(_csv_text(cols))
    paths.append(path)
  return paths


def load_data(path: str) -> dict:
  """Reads a saved ``<ID>_<SLUG>.json`` back (``make`` accepts it as is)."""
  with open(path) as f:
    return json.load(f)


QUICK_MARK = "QUICK RUN: small sizes, not the published result"


def is_quick(results: dict) -> bool:
  """Whether ``results`` (a figure's numbers) come from a quick run."""
  return bool(results.get("quick", results.get("meta", {}).get("quick", False)))


def draw(mod, results: dict):
  """``mod.make(results)``, with the :data:`QUICK_MARK` watermark when the run was quick."""
  from figures import style
  fig = mod.make(results)
  if is_quick(results):
    style.watermark(fig, QUICK_MARK)
  return fig


def save_figure(fig, stem: str, *, quick: bool = False) -> list[str]:
  """Writes ``stem.pdf`` and ``stem.png`` without time stamps (reproducible files).

  The run kind goes into the files' metadata: the PNG text field ``Run`` and
  the PDF ``Subject`` are :data:`QUICK_MARK` for a quick run, "full run" otherwise.
  """
  import matplotlib.pyplot as plt
  from figures import style
  kind = QUICK_MARK if quick else "full run"
  with plt.rc_context(style.RC):
    fig.savefig(stem + ".pdf", metadata={"CreationDate": None, "ModDate": None, "Subject": kind})
    fig.savefig(stem + ".png", metadata={"Software": None, "Run": kind})
  return [stem + ".pdf", stem + ".png"]


def run(fig_id: str, *, out: str, quick: bool = False, seed: int = 0, **overrides) -> list[str]:
  """Computes, saves the numbers of, draws and saves figure ``fig_id``; returns the paths.

  The JSON gets ``"quick": quick`` (top level and in ``meta``) and
  ``"icl_kd_version"``, the version of the toolkit that computed the numbers.
  """
  import matplotlib.pyplot as plt
  mod = module(fig_id)
  os.makedirs(out, exist_ok=True)
  cfg = mod.config(quick=quick, seed=seed, out=out, **overrides)
  results = mod.compute(cfg)
  results = {**results, "quick": bool(quick), "icl_kd_version": icl_kd.__version__,
             "meta": {**results.get("meta", {}), "quick": bool(quick)}}
  stem = os.path.join(out, f"{mod.ID}_{mod.SLUG}")
  paths = save_data(results, stem)
  fig = draw(mod, load_data(stem + ".json"))   # drawn from the saved numbers, as a reader would
  paths += save_figure(fig, stem, quick=quick)
  plt.close(fig)
  return paths


def results_config(module: str, **dirs: str):
  """``(Config, config)`` of a figure drawn from saved experiment results.

  ``Config`` is a NamedTuple of ``seed`` (0), ``quick`` (False) and, for each
  ``field=NAME`` in ``dirs``, ``field`` (default ``results/NAME``): where
  experiment NAME's results are read (and written when missing, see
  :func:`experiment_results`). ``config(*, quick, seed, out, **overrides)``
  keeps these defaults for full runs; a quick run given ``out`` keeps its
  experiment results under ``<out>/experiments/NAME`` instead (an override wins).

  Args:
    module: the figure module's ``__name__``; ``Config`` and ``config`` are its own.
    **dirs: field name -> experiment name, e.g. ``results_dir="E1"``.

  Returns:
    ``(Config, config)``, the figure protocol's class and function.
  """
  Config = collections.namedtuple(
      "Config", ("seed", "quick", *dirs),
      defaults=(0, False, *(os.path.join("results", name) for name in dirs.values())),
      module=module)

  def config(*, quick: bool = False, seed: int = 0, out: str | None = None, **overrides):
    """Full runs read results/<E>; quick runs keep theirs under <out>/experiments/<E>."""
    if quick and out is not None:
      for field, name in dirs.items():
        overrides.setdefault(field, os.path.join(out, "experiments", name))
    return Config(seed=seed, quick=quick, **overrides)

  config.__module__, config.__qualname__ = module, "config"
  return Config, config


def head_columns(n_layers: int, n_heads: int) -> dict[str, list[int]]:
  """The ``layer`` and ``head`` columns of a per-head table, layer-major, numbered from 0."""
  return {"layer": np.repeat(np.arange(n_layers), n_heads).tolist(),
          "head": np.tile(np.arange(n_heads), n_layers).tolist()}


def correlation_table(summary: dict, names, *, column: str) -> dict[str, list]:
  """The Spearman correlations of an experiment's summary as one table, pooled rows first.

  A row per (kind, name): kind "pooled" (``summary["spearman"]``), then "within
  trials" (``summary["spearman_within_trial"]``), for each of ``names``; the
  columns are ``column`` (the name), ``kind``, ``rho``, ``lo``, ``hi`` and ``n``.
  """
  corr = {column: [], "kind": [], "rho": [], "lo": [], "hi": [], "n": []}
  for kind, key in (("pooled", "spearman"), ("within trials", "spearman_within_trial")):
    for name in names:
      c = summary[key][name]
      corr[column].append(name)
      corr["kind"].append(kind)
      for f in ("rho", "lo", "hi", "n"):
        corr[f].append(c[f])
  return corr


def experiment_results(name: str, *, results_dir: str, seed: int, quick: bool,
                       overrides: dict | None = None, figure: str | None = None
                       ) -> tuple[dict, dict]:
  """The saved arrays (npz) and summary (json) of experiment ``name`` (E1..E4, real).

  Reads ``<results_dir>/<name>.npz`` and ``.json`` as written by
  ``python -m icl_kd.experiments NAME --out <results_dir>``; when they are
  missing, runs the experiment first through its library protocol
  (``run(config, key=jax.random.key(seed))`` and ``save``): its full
  ``Config()``, or under ``quick`` its ``QUICK`` config with the fields in
  ``overrides`` (smaller still, for quick figures).

  One line on stderr says which results the figure draws from: the saved files, or
  the run it makes (a quick figure keeps its own runs under ``<out>/experiments``,
  apart from those of ``python -m icl_kd.experiments NAME --quick`` in ``results/NAME``).

  Raises:
    MismatchedResults: the saved summary says it is a quick run and ``quick``
      is False (or the reverse), or its seed is not ``seed``: a full figure is
      never drawn, unmarked, from a quick run's numbers.
  """
  npz, js = (os.path.join(results_dir, f"{name}.{ext}") for ext in ("npz", "json"))
  who = f"[figures] {figure}" if figure else "[figures]"
  kind = "quick" if quick else "full"
  saved = os.path.exists(npz) and os.path.exists(js)
  if not saved:
    sizes = f"quick sizes with {overrides}" if quick and overrides else f"{kind} sizes"
    runtime.log(f"{who}: no results of {name} in {results_dir}; running {name} ({sizes}, "
                f"seed {seed}) and drawing from it")
    import jax
    from icl_kd.experiments import run_info
    from icl_kd.experiments.__main__ import module as experiment
    mod = experiment(name)
    config = (mod.QUICK._replace(**(overrides or {})) if quick else mod.Config())
    config = config._replace(progress=False)
    results = mod.run(config, key=jax.random.key(seed))
    mod.save(results, results_dir, info=run_info(mod, config, seed=seed, quick=quick))
  with open(js) as f:
    summary = json.load(f)
  got_quick, got_seed = summary.get("quick"), summary.get("seed")
  if ((got_quick is not None and bool(got_quick) != bool(quick))
      or (got_seed is not None and int(got_seed) != int(seed))):
    kind = {True: "quick", False: "full"}
    raise MismatchedResults(
        f"{js} holds a {kind[bool(got_quick)]} run of {name} with seed {got_seed}, but this "
        f"figure needs a {kind[bool(quick)]} run with seed {seed}: move {results_dir} away "
        f"(the figure then runs {name} itself) or rerun `python -m icl_kd.experiments {name} "
        f"--out {results_dir}{' --quick' if quick else ''} --seed {seed}`")
  if saved:
    runtime.log(f"{who} draws from {js} (saved results of {name}, {kind} run, seed {seed})")
  with np.load(npz) as f:
    arrays = {k: f[k] for k in f.files if f[k].dtype != object}
  return arrays, summary
