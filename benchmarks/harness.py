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

The printed table fits a 120-column terminal (the JSON holds every number);
the targets are summarised apart, one line each (:func:`target_lines`).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform as _platform
import statistics
import textwrap
import time
from typing import Any, Callable

import jax
import numpy as np

from icl_kd import runtime

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
    why: the measured value behind ``met``, e.g. "speed-up 6.9x" (default: the
      speed-up, when there is a baseline).
    note: a caveat printed under the table (e.g. a quick size too small for the
      ratio to mean anything).
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
  why: str = ""
  note: str = ""

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
                target=self.target, met=self.met, why=self.reason(), note=self.note,
                **self.fractions(limits), extra=self.extra)

  def reason(self) -> str:
    """``why``, or the measured speed-up when there is a baseline."""
    if self.why:
      return self.why
    r = self.ratio
    return f"speed-up {1 / r:.3g}x" if r else ""


def _fmt_pct(x: float | None) -> str:
  return "-" if x is None else (f"{100 * x:.1f}%" if x >= 1e-3 else f"{100 * x:.2g}%")


TABLE_WIDTH = 120
QUICK_LINE = ("QUICK RUN: small sizes and few repeats; these numbers are not the targets' "
              "measurements (run without --quick for those).")


_SHORT_CASE = (("float32", "f32"), ("float64", "f64"), (" inst ", " "), ("[XLA default]", "[default]"),
               ("[xla opt level 0]", "[opt-0]"), ("[opt level 0]", "[opt-0]"),
               ("permutations", "perms"), ("fresh output", "fresh"),
               ("python -m proofs_check", "proofs_check"))
_SHORT_BASE = (("dot_product_attention", "jax dpa"), ("scipy cdist", "cdist"),
               ("NumPy sq. dists", "NumPy sq.d."), ("recompute per permutation", "recompute/perm."),
               ("(float64)", "(f64)"), ("(float32)", "(f32)"))


def _short(text: str, table=_SHORT_CASE) -> str:
  """The table's abbreviation of a case or baseline name (the JSON keeps the full one)."""
  for a, b in table:
    text = text.replace(a, b)
  return text


def _fmt_time(t: float | None) -> str:
  if t is None or (isinstance(t, float) and math.isnan(t)):
    return "-"
  if t >= 1.0:
    return f"{t:.3g}s"
  if t >= 1e-3:
    return f"{t * 1e3:.3g}ms"
  return f"{t * 1e6:.3g}us"


def format_table(rows: list[Row], limits: dict, *, quick: bool = False) -> str:
  """The printed table, at most :data:`TABLE_WIDTH` columns wide, with its legend.

  One line per row: the median time of ours with its interquartile range,
  the compile time, the baseline's time and name ('*': timed on a subset and
  scaled), the speed-up (baseline / ours time; "[k]": see note k under the
  table), the shares of the measured matmul and copy limits, and whether the
  target is met. Names are abbreviated (f32 = float32, dpa =
  jax.nn.dot_product_attention, ...); every number and full name is in the JSON.
  """
  head = ["bench", "case", "ours ±IQR", "compile", "baseline", "speedup", "%matmul", "%copy",
          "target"]
  body, notes = [], []
  for r in rows:
    fr = r.fractions(limits)
    ours = "-" if r.ours is None else f"{_fmt_time(r.ours.median)} ±{100 * r.ours.spread:.0f}%"
    base = "-" if r.baseline is None else (
        _fmt_time(r.baseline.median * r.scaled) + ("*" if r.scaled != 1.0 else "") +
        f" {_short(r.baseline_name, _SHORT_BASE)}")
    ratio = r.ratio
    speed = "-" if not ratio else f"{1 / ratio:.3g}x"
    if r.note:
      notes.append(r.note)
      speed += f"[{len(notes)}]"
    target = "-" if r.met is None else ("met" if r.met else "MISSED")
    body.append([r.bench, _short(r.case), ours, _fmt_time(r.ours.compile if r.ours else None),
                 base, speed, _fmt_pct(fr.get("frac_matmul")), _fmt_pct(fr.get("frac_copy")),
                 target])
  lines = [runtime.format_table(head, body, align="lllrlrrrl", max_width=TABLE_WIDTH)]
  legend = ("speedup = baseline time / ours (medians); compile = XLA compile (or persistent-cache "
            "load) time; * = baseline timed on a subset and scaled; %matmul, %copy = share of "
            "this machine's measured limits; f32/f64 = float32/float64, dpa = "
            "jax.nn.dot_product_attention, opt-0 = XLA backend optimisation level 0. Targets: "
            "see the summary below; full names and every number: the JSON report.")
  lines += textwrap.wrap(legend, TABLE_WIDTH)
  for i, n in enumerate(notes, 1):
    lines += textwrap.wrap(f"[{i}] {n}", TABLE_WIDTH, subsequent_indent="    ")
  if quick:
    lines += textwrap.wrap(QUICK_LINE, TABLE_WIDTH)
  return "\n".join(lines)


def target_lines(rows: list[Row], *, quick: bool = False) -> list[str]:
  """The targets, one line each: met or MISSED, and the measured value behind it."""
  out = []
  for r in rows:
    if r.met is None:
      continue
    why = r.reason()
    line = (f"{'met   ' if r.met else 'MISSED'}  {r.bench} {_short(r.case)}: target {r.target}"
            + (f"; measured {why}" if why else "") + (f" ({r.note})" if r.note and quick else ""))
    out.append(line)
  return out


def report_name(report: dict, date: str) -> str:
  """``<platform>-<date>.json``, or ``<platform>-<date>-quick.json`` for a ``--quick`` run.

  The committed reports in ``benchmarks/results/`` are full runs; a quick run
  never takes their name (and ``*-quick.json`` is ignored by git there).
  """
  return f"{report['machine']['platform']}-{date}{'-quick' if report.get('quick') else ''}.json"


def write_report(out_dir: str, report: dict) -> str:
  """Writes ``<out_dir>/`` :func:`report_name` (UTC date; valid JSON, see icl_kd.runtime)."""
  os.makedirs(out_dir, exist_ok=True)
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
  path = os.path.join(out_dir, report_name(report, date))
  return runtime.write_json(path, report, indent=1, flag="--out")


QUIET = False   # set by ``--no-progress``


def log(msg: str) -> None:
  """One progress line on stderr (nothing under ``--no-progress``)."""
  if not QUIET:
    runtime.log(msg)


# -- compile accounting ------------------------------------------------------------

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
_ACTIVE: list["CompileLog"] = []
_REGISTERED = False


SLOW_COMPILE_S = 0.1   # a compilation that takes at least this long is counted as "slow"


def _on_duration(event: str, duration: float, **_) -> None:
  if event in COMPILE_EVENTS:
    for rec in _ACTIVE:
      rec.seconds += duration
      rec.backend_compiles += event == COMPILE_EVENTS[2]
      rec.slow_compiles += event == COMPILE_EVENTS[2] and duration >= SLOW_COMPILE_S
      rec.backend_seconds += duration if event == COMPILE_EVENTS[2] else 0.0


class CompileLog:
  """Context manager summing JAX's tracing, lowering and XLA compile durations inside it.

  Uses ``jax.monitoring`` duration events, so it also sees compilations done
  deep inside library code (e.g. each bucket of a ``proofs_check`` sweep).
  ``backend_compiles`` counts XLA compilations (a persistent-cache load is not one),
  ``slow_compiles`` those that took at least :data:`SLOW_COMPILE_S`, and
  ``backend_seconds`` their total time.
  """

  def __init__(self):
    self.seconds = 0.0
    self.backend_compiles = 0
    self.slow_compiles = 0
    self.backend_seconds = 0.0

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
