"""What every command line of the project shares: settings, JSON, progress, tables.

The four CLIs (``python -m proofs_check``, ``python -m figures``,
``python -m benchmarks``, ``python -m icl_kd.experiments``) call
:func:`configure` once, before any array exists, to fix the float width and
the compile settings; library functions never touch JAX's global config.

JSON policy (one for the whole project): every file is valid JSON
(``allow_nan=False``); a non-finite float is written as the string ``"nan"``,
``"inf"`` or ``"-inf"`` and :func:`from_jsonable_float` reads it back. NumPy and
JAX arrays become (nested) lists, NumPy scalars Python numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from typing import Any, Sequence

# -- settings ---------------------------------------------------------------------

FAST_COMPILE_MAX_INSTANCES = 300_000
_CACHE_ENV = "ICL_KD_COMPILE_CACHE"


def default_cache_dir() -> str:
  """The persistent compilation cache: ``$ICL_KD_COMPILE_CACHE``, else the user's cache dir."""
  if os.environ.get(_CACHE_ENV):
    return os.environ[_CACHE_ENV]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "icl-kd", "jax")


def has_accelerator_plugin() -> bool:
  """Whether a GPU/TPU plugin of jaxlib is installed (without initialising a backend)."""
  if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
    return False
  return any(importlib.util.find_spec(m) is not None for m in
             ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu"))


def set_cpu_compile_flags(mode: str, instances: int | None = None) -> bool:
  """Chooses XLA's backend optimisation level 0 on CPU-only installs when it pays.

  Level 0 cuts a cold compile ~2.5-4x but runs 2-7x slower in steady state
  (``python -m benchmarks --only B1``), so it wins while compile time
  dominates: ``auto`` uses it up to FAST_COMPILE_MAX_INSTANCES instances (None:
  a small run). An ``XLA_FLAGS`` that already sets the level, and accelerator
  installs, are left alone. Must run before JAX initialises its backend.
  Returns whether level 0 is now set.

  The level is a function of the run's arguments only, never of whether the
  persistent compilation cache is on or warm: level 0 rounds differently (the
  backend fuses multiply-adds differently; measured: 4 of 5 report rows of
  ``python -m proofs_check --claims 'thm3.1,thm4.1-*,kd-step' --instances 2000``
  differ in their worst numbers between the levels), so a cache-dependent level
  would make a report depend on the cache. Large runs and ``python -m
  proofs_check``'s default run compile at the full level, once: the cache keeps
  the compiled programs for every later run.

  Args:
    mode: ``"auto"``, ``"on"`` or ``"off"``.
    instances: the run's size, for ``auto`` (None: small).
  """
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"mode must be 'auto', 'on' or 'off', got {mode!r}")
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" in flags:
    return "xla_backend_optimization_level=0" in flags
  if mode == "off" or has_accelerator_plugin():
    return False
  if mode == "auto" and instances is not None and instances > FAST_COMPILE_MAX_INSTANCES:
    return False
  os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()
  return True


def enable_compile_cache(directory: str | None) -> str | None:
  """Turns on JAX's persistent compilation cache in ``directory`` (None: off); returns it."""
  if not directory:
    return None
  import jax
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


def configure(*, x64: bool, fast_compile: str = "auto", instances: int | None = None,
              compile_cache: str | None = None, silence: bool = True,
              cpu_devices: int | None = None) -> None:
  """Fixes a CLI's global settings; call once, before any JAX array exists.

  Args:
    x64: enable float64 (``jax_enable_x64``).
    fast_compile: see :func:`set_cpu_compile_flags`.
    instances: the run's size, for ``fast_compile="auto"``.
    compile_cache: a directory for JAX's persistent compilation cache, or None
      for no cache (see :func:`add_runtime_arguments`).
    silence: silence warnings of dependencies that do not concern the user.
    cpu_devices: on CPU-only installs, expose this many CPU devices (one per core
      runs a sharded program on every core); None, or an ``XLA_FLAGS`` that sets
      ``xla_force_host_platform_device_count``, leaves JAX's default.
  """
  set_cpu_compile_flags(fast_compile, instances)
  if silence:
    silence_dependency_warnings()
  import jax
  jax.config.update("jax_enable_x64", bool(x64))
  if cpu_devices is not None and cpu_devices > 1 and not has_accelerator_plugin() and \
      "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    jax.config.update("jax_num_cpu_devices", int(cpu_devices))
  enable_compile_cache(compile_cache)


def silence_dependency_warnings() -> None:
  """Silences dependency warnings that say nothing about the user's run."""
  import logging
  import warnings
  # absl/XLA chatter on CPU-only installs, and the persistent cache's notices.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
  logging.getLogger("jax._src.compilation_cache").setLevel(logging.ERROR)
  warnings.filterwarnings("ignore", message=".*'created' timestamp seems very low.*")
  # fontTools (matplotlib's PDF font subsetting) logs "'created' timestamp seems very
  # low" once per embedded font: a property of the shipped fonts, not of the run.
  logging.getLogger("fontTools.ttLib.tables._h_e_a_d").setLevel(logging.ERROR)


def add_runtime_arguments(parser: argparse.ArgumentParser, *, seed: bool = True) -> None:
  """Adds the flags every CLI shares: ``--seed``, ``--compile-cache``, ``--no-progress``."""
  if seed:
    parser.add_argument("--seed", type=int, default=0,
                        help="integer seed of every random draw; the same seed gives the same "
                             "report and data (default 0)")
  parser.add_argument("--compile-cache", metavar="DIR", default=default_cache_dir(),
                      help="JAX's persistent compilation cache: compiled programs are reused "
                           "across runs (default %(default)s, or $ICL_KD_COMPILE_CACHE)")
  parser.add_argument("--no-compile-cache", dest="compile_cache", action="store_const",
                      const=None, help="compile everything afresh; write no cache")
  parser.add_argument("--no-progress", action="store_true", help="no progress output on stderr")


# -- JSON -------------------------------------------------------------------------

def jsonable(x: Any) -> Any:
  """A JSON-able copy under the project's policy (module docstring)."""
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, (str, bytes)) or x is None:
    return x
  if hasattr(x, "__array__"):
    import numpy as np
    arr = np.asarray(x)
    return jsonable(arr.tolist()) if arr.ndim else jsonable(arr.item())
  if isinstance(x, bool) or type(x).__name__ == "bool_":
    return bool(x)
  if isinstance(x, int) or type(x).__module__ == "numpy" and "int" in type(x).__name__:
    return int(x)
  if isinstance(x, float) or type(x).__module__ == "numpy" and "float" in type(x).__name__:
    x = float(x)
    return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
  return x


def from_jsonable_float(v: Any) -> float:
  """A float written by :func:`jsonable` (numbers, or 'nan' / 'inf' / '-inf')."""
  if v is None:
    return math.nan
  return float(v)


def check_output_path(path: str, *, flag: str = "path") -> str:
  """Raises ValueError (naming ``flag``) unless ``path``'s folder exists; returns ``path``."""
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise ValueError(f"{flag}: folder {folder!r} does not exist (create it first), got {path!r}")
  if os.path.isdir(path):
    raise ValueError(f"{flag}: expected a file path, got the folder {path!r}")
  return path


def check_output_dir(path: str, *, flag: str = "--out") -> str:
  """Makes sure ``path`` is a folder this process can write in; returns it.

  Creates the folder when missing, then writes and removes a probe file, so an
  unwritable ``--out`` fails before any work is done rather than at the end.

  Raises:
    ValueError: one line naming ``flag``, the folder and the reason (e.g. a path under
      ``/proc``, a read-only file system, an existing file in the way).
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"{flag}: expected a folder, got the file {path!r}")
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".icl-kd-write-probe-{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"{flag}: cannot write in folder {path!r} ({e.strerror or e})") from None
  return path


def write_json(path: str, obj: Any, *, indent: int | None = 1, flag: str = "path",
               sort_keys: bool = False) -> str:
  """Writes ``obj`` as valid JSON to ``path`` atomically; the folder must exist."""
  check_output_path(path, flag=flag)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(jsonable(obj), f, indent=indent, allow_nan=False, sort_keys=sort_keys)
    f.write("\n")
  os.replace(tmp, path)
  return path


def read_json(path: str, *, flag: str = "path") -> Any:
  """Reads a JSON file; a missing or malformed file is a ValueError naming ``flag``."""
  if not os.path.isfile(path):
    raise ValueError(f"{flag}: no such file {path!r}")
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{flag}: {path!r} is not a JSON file ({e})") from None


# -- progress ---------------------------------------------------------------------

class Progress:
  """A one-line progress bar on stderr, with the rate and the time left.

  On a terminal the line is redrawn at every update; otherwise (a log file, a
  batch job) a plain line is written at every 25% and at least every
  ``interval`` seconds in between. Only process 0 of a multi-process run prints.

  Args:
    label: what is counted (cut to 40 characters).
    total: the count at completion.
    enabled: False prints nothing.
    stream: where to write (default ``sys.stderr``).
    interval: the longest gap between two plain lines, in seconds.
    clock: the time source (default ``time.perf_counter``).
  """

  def __init__(self, label: str, total: int, enabled: bool = True, *, stream=None,
               interval: float = 60.0, clock=time.perf_counter):
    try:
      import jax
      first = jax.process_index() == 0
    except Exception:  # noqa: BLE001 (no backend yet: a single process)
      first = True
    self.label, self.total, self.enabled = label, total, enabled and first
    self.clock, self.interval = clock, interval
    self.start = self.last = clock()
    self.stream = sys.stderr if stream is None else stream
    self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
    self.next_pct = 25
    self.skipped = 0

  def skip(self, count: int) -> None:
    """Marks ``count`` of the items done so far as done without work (e.g. loaded from a
    checkpoint): they count as done but not in the rate, so the time left stays honest."""
    self.skipped += count

  def _rate_and_left(self, done: int, el: float) -> str:
    """The rate and the time left, e.g. ``  1.2e+05/s, 3m20s left``; empty before any progress."""
    worked = done - self.skipped
    if worked <= 0 or el <= 0 or done >= self.total:
      return ""
    rate = worked / el
    left = (self.total - done) / rate
    left_s = f"{left:.0f}s" if left < 60 else (f"{left // 60:.0f}m{left % 60:02.0f}s"
                                               if left < 3600 else
                                               f"{left // 3600:.0f}h{left % 3600 // 60:02.0f}m")
    return f"  {rate:.3g}/s, {left_s} left"

  def update(self, done: int, note: str = "") -> None:
    """Shows ``done`` of ``total``, and ``note`` (e.g. the current loss) after the time."""
    if not self.enabled:
      return
    now = self.clock()
    pct = 100 * done // max(self.total, 1)
    el = now - self.start
    tail = self._rate_and_left(done, el) + (f"  {note}" if note else "")
    if self.tty:
      bar = "#" * (pct // 5) + "." * (20 - pct // 5)
      self.stream.write(f"\r  {self.label[:40]:<40} [{bar}] {done:>11,}/{self.total:,}  "
                        f"{el:6.1f}s{tail}")
      if done >= self.total:
        self.stream.write("\n")
      self.stream.flush()
    elif pct >= self.next_pct or done >= self.total or now - self.last >= self.interval:
      self.stream.write(f"  {self.label[:40]:<40} {done:>11,}/{self.total:,}  {el:6.1f}s{tail}\n")
      self.stream.flush()
      self.last = now
      if pct >= self.next_pct:
        self.next_pct = pct // 25 * 25 + 25


def log(msg: str) -> None:
  """One line of progress on stderr."""
  print(msg, file=sys.stderr, flush=True)


# -- tables -----------------------------------------------------------------------

def format_cell(v: Any) -> str:
  if v is None:
    return "-"
  if isinstance(v, bool):
    return str(v)
  if isinstance(v, int):
    return f"{v:,}"
  if isinstance(v, float):
    return "-" if math.isnan(v) else f"{v:.4g}"
  return str(v)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *,
                 align: str | None = None, max_width: int = 120) -> str:
  """A plain-text table (``align``: one 'l'/'r' per column; default numbers right).

  Cells wider than the table allows are cut with '~' so that no line exceeds
  ``max_width`` characters; put the full numbers in the JSON.
  """
  body = [[format_cell(v) for v in r] for r in rows]
  if align is None:
    align = "".join("r" if rows and isinstance(rows[0][i], (int, float)) and
                    not isinstance(rows[0][i], bool) else "l" for i in range(len(headers)))
  widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
  while sum(widths) + 2 * (len(widths) - 1) > max_width and max(widths) > 8:
    widths[widths.index(max(widths))] -= 1

  def fit(c: str, w: int) -> str:
    return c if len(c) <= w else c[:w - 1] + "~"

  def line(cells):
    return "  ".join(fit(c, w).rjust(w) if a == "r" else fit(c, w).ljust(w)
                     for c, w, a in zip(cells, widths, align)).rstrip()
  return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in body])
