"""Timing, machine description, result records, JSON and table for ``python -m benchmarks``.

Every clock read follows ``jax.block_until_ready`` on the timed function's
output, so asynchronous dispatch never hides work. A jitted function is timed
in two parts: compilation (``lower(...).compile()``, reported separately) and
the steady state of the compiled executable (after ``warmup`` untimed calls,
``repeats`` timed calls; the median is reported with the min, max and
interquartile range). Baselines written in NumPy are timed the same way
without the compile step.

Ratios are "ours / baseline" in time: below 1 means ours is faster; the
speed-up is its inverse.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform as _platform
import statistics
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root


@dataclasses.dataclass
class Timing:
  """Wall-clock statistics of one timed function (seconds)."""
  median: float
  min: float
  max: float
  iqr: float
  repeats: int
  compile: float | None = None

  @property
  def spread(self) -> float:
    """Interquartile range over the median: the relative noise of this measurement."""
    return self.iqr / self.median if self.median > 0 else float("nan")

  def to_json(self) -> dict:
    return dict(median_s=self.median, min_s=self.min, max_s=self.max, iqr_s=self.iqr,
                spread=self.spread, repeats=self.repeats, compile_s=self.compile)


def _summary(samples: list[float], compile_s: float | None = None) -> Timing:
  q = np.percentile(samples, [25, 75]) if len(samples) > 1 else (samples[0], samples[0])
  return Timing(statistics.median(samples), min(samples), max(samples), float(q[1] - q[0]),
                len(samples), compile_s)


def time_call(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> Timing:
  """Times ``fn()`` (already compiled, or plain Python/NumPy) ``repeats`` times after warm-up."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  samples = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    samples.append(time.perf_counter() - t0)
  return _summary(samples)


def time_jit(fn: Callable, *args, repeats: int = 5, warmup: int = 1, static_argnums=(),
             **kwargs) -> tuple[Timing, Any, dict]:
  """Compiles ``jax.jit(fn)`` for ``args`` (timed), then times the executable.

  Returns:
    (timing with ``compile`` set, the output of the last call, XLA's cost
    analysis of the executable: ``flops`` and ``bytes accessed`` when the
    backend reports them).
  """
  jitted = jax.jit(fn, static_argnums=static_argnums)
  t0 = time.perf_counter()
  compiled = jitted.lower(*args, **kwargs).compile()
  compile_s = time.perf_counter() - t0
  dyn = [a for i, a in enumerate(args) if i not in static_argnums]
  out = None

  def call():
    nonlocal out
    out = compiled(*dyn, **kwargs)
    return out

  timing = time_call(call, repeats=repeats, warmup=warmup)
  timing.compile = compile_s
  return timing, out, xla_cost(compiled)


def xla_cost(compiled) -> dict:
  """``flops`` and ``bytes accessed`` from XLA's cost analysis (empty if unavailable)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - optional on some backends
    return {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  return {k: float(cost[k]) for k in ("flops", "bytes accessed", "transcendentals") if k in cost}


# -- machine -----------------------------------------------------------------------


def machine() -> dict:
  """Device, versions and host: recorded with every result."""
  dev = jax.devices()[0]
  import scipy
  info = dict(platform=dev.platform, device_kind=dev.device_kind, device_count=jax.device_count(),
              jax=jax.__version__, jaxlib=getattr(jax.lib, "__version__", None) or _jaxlib(),
              numpy=np.__version__, scipy=scipy.__version__, python=_platform.python_version(),
              host=_platform.node(), processor=_platform.processor() or _platform.machine(),
              cpu_count=os.cpu_count(), xla_flags=os.environ.get("XLA_FLAGS", ""),
              x64=bool(jax.config.jax_enable_x64),
              load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
  return info


def _jaxlib() -> str | None:
  try:
    import jaxlib
    return jaxlib.__version__
  except Exception:  # noqa: BLE001
    return None


def has_gpu() -> bool:
  try:
    return any(d.platform == "gpu" for d in jax.devices())
  except RuntimeError:
    return False


# -- results -----------------------------------------------------------------------


@dataclasses.dataclass
class Row:
  """One line of the printed table: a measurement of ours, optionally against a baseline.

  Attributes:
    bench: benchmark name (B1..B6, limits).
    case: what was measured (shape, dtype, variant).
    ours: timing of the toolkit's path (None for pure counts).
    baseline: timing of the baseline (None when there is none).
    baseline_name: what the baseline is.
    scaled: factor applied to the baseline's timing (a loop timed on a subset
      and scaled to the full count); 1 when timed in full.
    flops, bytes: counted per run of ``ours`` (analytic, see each benchmark).
    target: the target as text, and ``met`` whether it holds (None: no target).
    extra: any other numbers (agreement, instances/s, fit exponent, counts).
    float64: compare with the float64 matmul limit instead of the float32 one.
  """
  bench: str
  case: str
  ours: Timing | None = None
  baseline: Timing | None = None
  baseline_name: str = ""
  scaled: float = 1.0
  flops: float | None = None
  bytes: float | None = None
  target: str = ""
  met: bool | None = None
  extra: dict = dataclasses.field(default_factory=dict)
  float64: bool = False

  @property
  def ratio(self) -> float | None:
    """ours / baseline time (< 1: ours is faster)."""
    if self.ours is None or self.baseline is None:
      return None
    return self.ours.median / (self.baseline.median * self.scaled)

  def fractions(self, limits: dict) -> dict:
    """Achieved FLOP/s and bytes/s of ``ours`` as fractions of the measured limits."""
    out = {}
    if self.ours is None or self.ours.median <= 0:
      return out
    key = "matmul_flops_per_s" + ("_float64" if self.float64 else "")
    if self.flops and limits.get(key):
      out["flops_per_s"] = self.flops / self.ours.median
      out["frac_matmul"] = out["flops_per_s"] / limits[key]
    if self.bytes and limits.get("copy_bytes_per_s"):
      out["bytes_per_s"] = self.bytes / self.ours.median
      out["frac_copy"] = out["bytes_per_s"] / limits["copy_bytes_per_s"]
    return out

  def to_json(self, limits: dict) -> dict:
    return dict(bench=self.bench, case=self.case,
                ours=self.ours.to_json() if self.ours else None,
                baseline=self.baseline.to_json() if self.baseline else None,
                baseline_name=self.baseline_name, baseline_scale=self.scaled,
                ratio_ours_over_baseline=self.ratio, flops=self.flops, bytes=self.bytes,
                target=self.target, met=self.met, **self.fractions(limits),
                extra=self.extra)


def _fmt_s(t: float | None) -> str:
  if t is None or (isinstance(t, float) and math.isnan(t)):
    return "-"
  if t >= 1.0:
    return f"{t:.2f}s"
  if t >= 1e-3:
    return f"{t * 1e3:.1f}ms"
  return f"{t * 1e6:.0f}us"


def _fmt_pct(x: float | None) -> str:
  return "-" if x is None else (f"{100 * x:.1f}%" if x >= 1e-3 else f"{100 * x:.2g}%")


def format_table(rows: list[Row], limits: dict) -> str:
  """The printed table: one line per row; the ratio column is ours / baseline time."""
  head = ["bench", "case", "ours (median ±IQR)", "compile", "baseline", "ours/base", "speed-up",
          "%matmul", "%copy", "target"]
  body = []
  for r in rows:
    fr = r.fractions(limits)
    ours = "-" if r.ours is None else f"{_fmt_s(r.ours.median)} ±{100 * r.ours.spread:.0f}%"
    base = "-" if r.baseline is None else (
        _fmt_s(r.baseline.median * r.scaled) + (" (scaled)" if r.scaled != 1.0 else "") +
        f" {r.baseline_name}")
    ratio = r.ratio
    target = r.target + ("" if r.met is None else (" met" if r.met else " MISSED"))
    body.append([r.bench, r.case, ours, _fmt_s(r.ours.compile if r.ours else None), base,
                 "-" if ratio is None else f"{ratio:.3g}",
                 "-" if not ratio else f"{1 / ratio:.3g}x",
                 _fmt_pct(fr.get("frac_matmul")), _fmt_pct(fr.get("frac_copy")), target])
  widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
            for i, h in enumerate(head)]
  line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
  return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def jsonable(x):
  """Plain JSON types; non-finite floats as strings (JSON has no NaN)."""
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    x = float(x)
    return x if math.isfinite(x) else repr(x)
  if isinstance(x, np.ndarray):
    return jsonable(x.tolist())
  return x


def write_report(out_dir: str, report: dict) -> str:
  """Writes ``<out_dir>/<platform>-<UTC date>.json``; returns the path."""
  os.makedirs(out_dir, exist_ok=True)
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
  path = os.path.join(out_dir, f"{report['machine']['platform']}-{date}.json")
  with open(path, "w") as f:
    json.dump(jsonable(report), f, indent=1, allow_nan=False)
    f.write("\n")
  return path


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


# -- compile accounting ------------------------------------------------------------

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
_ACTIVE: list["CompileLog"] = []
_REGISTERED = False


def _on_duration(event: str, duration: float, **_) -> None:
  if event in COMPILE_EVENTS:
    for rec in _ACTIVE:
      rec.seconds += duration
      rec.backend_compiles += event == COMPILE_EVENTS[2]


class CompileLog:
  """Context manager summing JAX's tracing, lowering and XLA compile durations inside it.

  Uses ``jax.monitoring`` duration events, so it also sees compilations done
  deep inside library code (e.g. each bucket of a ``proofs_check`` sweep).
  ``backend_compiles`` counts XLA compilations.
  """

  def __init__(self):
    self.seconds = 0.0
    self.backend_compiles = 0

  def __enter__(self) -> "CompileLog":
    global _REGISTERED
    if not _REGISTERED:
      jax.monitoring.register_event_duration_secs_listener(_on_duration)
      _REGISTERED = True
    _ACTIVE.append(self)
    return self

  def __exit__(self, *exc) -> None:
    _ACTIVE.remove(self)


def time_end_to_end(fn: Callable[[], Any], *, repeats: int) -> tuple[Timing, Timing, Any]:
  """Times ``fn()`` that compiles internally; returns (steady state, wall, last output).

  Steady state is wall time minus the compile time JAX reports during the call.
  ``Timing.compile`` holds the first (cold) call's compile time: later calls may
  hit the run's compilation cache.
  """
  walls, steady, compiles, out = [], [], [], None
  for _ in range(repeats):
    with CompileLog() as cl:
      t0 = time.perf_counter()
      out = jax.block_until_ready(fn())
      wall = time.perf_counter() - t0
    walls.append(wall)
    compiles.append(cl.seconds)
    steady.append(max(wall - cl.seconds, 1e-9))
  return _summary(steady, compiles[0]), _summary(walls, compiles[0]), out
