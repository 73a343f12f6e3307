"""The figures of the paper's claims (THEORY.md C1-C7) and experiments (E1-E4).

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
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import os
from typing import Any

import numpy as np

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
}


class Skipped(Exception):
  """A figure that cannot be made here (a missing optional dependency); the message says why."""


def module(fig_id: str):
  """The module of figure ``fig_id`` (e.g. 'F4')."""
  if fig_id not in FIGURES:
    raise ValueError(f"unknown figure {fig_id!r}; expected one of {sorted(FIGURES)}")
  return importlib.import_module(FIGURES[fig_id])


def _clean(x: Any) -> Any:
  """JSON-able copy: arrays to lists, numpy scalars to Python, non-finite floats to strings."""
  if isinstance(x, dict):
    return {str(k): _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  if hasattr(x, "__array__") and not isinstance(x, (str, bytes)):
    arr = np.asarray(x)
    return _clean(arr.tolist()) if arr.ndim else _clean(arr.item())
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    x = float(x)
    return x if math.isfinite(x) else repr(x)   # 'nan', 'inf', '-inf'
  return x


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
  """Writes ``stem.json`` (everything) and ``stem_<table>.csv`` per table; returns the paths."""
  clean = _clean(results)
  paths = [stem + ".json"]
  with open(paths[0], "w") as f:
    json.dump(clean, f, indent=1, sort_keys=True)
    f.write("\n")
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


def save_figure(fig, stem: str) -> list[str]:
  """Writes ``stem.pdf`` and ``stem.png`` without time stamps (reproducible files)."""
  import matplotlib.pyplot as plt
  from figures import style
  with plt.rc_context(style.RC):
    fig.savefig(stem + ".pdf", metadata={"CreationDate": None, "ModDate": None})
    fig.savefig(stem + ".png", metadata={"Software": None})
  return [stem + ".pdf", stem + ".png"]


def run(fig_id: str, *, out: str, quick: bool = False, seed: int = 0, **overrides) -> list[str]:
  """Computes, saves the numbers of, draws and saves figure ``fig_id``; returns the paths."""
  import matplotlib.pyplot as plt
  mod = module(fig_id)
  os.makedirs(out, exist_ok=True)
  cfg = mod.config(quick=quick, seed=seed, out=out, **overrides)
  results = mod.compute(cfg)
  stem = os.path.join(out, f"{mod.ID}_{mod.SLUG}")
  paths = save_data(results, stem)
  fig = mod.make(load_data(stem + ".json"))   # drawn from the saved numbers, as a reader would
  paths += save_figure(fig, stem)
  plt.close(fig)
  return paths


def experiment_results(name: str, *, results_dir: str, seed: int, quick: bool,
                       extra_args: tuple = ()) -> tuple[dict, dict]:
  """The saved arrays (npz) and summary (json) of experiment ``name`` (E1..E4, real).

  Reads ``<results_dir>/<name>.npz`` and ``.json`` as written by
  ``python -m icl_kd.experiments NAME --out <results_dir>``; when they are
  missing, runs that command in process first (with ``--quick`` and
  ``extra_args`` under ``quick``).
  """
  npz, js = (os.path.join(results_dir, f"{name}.{ext}") for ext in ("npz", "json"))
  if not (os.path.exists(npz) and os.path.exists(js)):
    import contextlib
    from icl_kd.experiments.__main__ import main as run_experiment
    argv = [name, "--out", results_dir, "--seed", str(seed)]
    argv += (["--quick", *extra_args] if quick else [])
    with contextlib.redirect_stdout(io.StringIO()):
      run_experiment(argv)
    if not os.path.exists(npz):
      raise FileNotFoundError(f"{npz} missing: run `python -m icl_kd.experiments {name} "
                              f"--out {results_dir} --seed {seed}` first")
  with np.load(npz) as f:
    arrays = {k: f[k] for k in f.files if f[k].dtype != object}
  with open(js) as f:
    summary = json.load(f)
  return arrays, summary
