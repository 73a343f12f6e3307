"""B5 the default ``python -m proofs_check`` end to end: a cold and a warm run.

Runs the command line twice in fresh processes (so its own settings apply: the
default run compiles at XLA's full optimisation level with a device per CPU
core) sharing a fresh persistent compilation cache: the first run compiles
everything (cold), the second loads it (warm). A ``jax.monitoring`` listener
sums the tracing, lowering and XLA compile durations. Reports, per run, the
wall time, the compile seconds and their share of the wall time, the number
of XLA compilations, the per-claim seconds, and whether the two reports are
identical (every number but the seconds).

The quick mode runs ``--claims thm3.1 --instances 5000`` instead of the
default claims and instance counts.

Targets (full mode, a 2-core CPU): the cold default run within COLD_TARGET_S
with at most MAX_SLOW_COMPILES XLA compilations of 0.1 s or more, and the warm
one within WARM_TARGET_S. A run that has not finished after TIMEOUT_S is
killed and reported as missed ("no result"), never waited on forever: a
stalled claim group (e.g. a kernel that hangs when two CPU devices run it at
once) shows up here as a missed target rather than as a benchmark that never
ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks import harness

NAME = "B5"
QUICK_ARGS = ["--claims", "thm3.1", "--instances", "5000"]
COLD_TARGET_S = 60.0     # the default job, cold (every program compiled), on a 2-core CPU
WARM_TARGET_S = 15.0     # the same with the compile cache warm
MAX_SLOW_COMPILES = 40   # XLA compilations of >= 0.1 s in the cold run
TIMEOUT_S = 3600.0       # a run still going after an hour is a hang


def run(*, quick: bool, seed: int) -> list[harness.Row]:
  args = (QUICK_ARGS if quick else []) + ["--seed", str(seed), "--no-progress"]
  rows, reports = [], {}
  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, "compile-cache")         # empty: the first run is cold
    for state in ("cold", "warm"):
      rows.append(_one(args, cache, tmp, state, quick, reports))
      if state not in reports:                          # timed out: no warm run after a hang
        break
  if len(reports) < 2:                                  # a run timed out: nothing to compare
    return rows
  same = _numbers(reports["cold"]) == _numbers(reports["warm"])
  for r in rows:
    r.extra["reports_identical_cold_warm"] = same
  cold, warm = (r.extra for r in rows)
  rows[1].extra["speedup_over_cold"] = cold["wall_s"] / warm["wall_s"]
  return rows


def _numbers(report: dict) -> str:
  return json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "seconds"}
                     for k, v in report["claims"].items()}, sort_keys=True)


def _one(args, cache, tmp, state, quick, reports) -> harness.Row:
  out_json = os.path.join(tmp, f"report-{state}.json")
  child = os.path.join(tmp, f"child-{state}.json")
  cmd = [sys.executable, "-m", "benchmarks.b5_proofs_check", child, *args,
         "--compile-cache", cache, "--json", out_json]
  load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
  label = ("python -m proofs_check " + (" ".join(QUICK_ARGS) if quick else "(default)") +
           f" [{state} compile cache]")
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=harness.ROOT,
                          timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired as e:
    tail = (e.stderr or b"")[-600:]
    tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
    return harness.Row(NAME, label, target=f"completes within {TIMEOUT_S:.0f} s", met=False,
                       why=f"no result after {TIMEOUT_S:.0f} s (killed)",
                       extra=dict(cache=state, timed_out=True, last_progress=tail,
                                  load_average_before=load))
  wall = time.perf_counter() - t0
  if proc.returncode not in (0, 1):
    raise RuntimeError(f"python -m proofs_check {' '.join(args)} failed "
                       f"(exit {proc.returncode}):\n{proc.stderr[-2000:]}")
  with open(child) as f:
    inner = json.load(f)
  with open(out_json) as f:
    report = json.load(f)
  reports[state] = report
  timing = harness.Timing(wall, wall, wall, 0.0, 1, inner["compile_s"])
  slow = inner["slow_compiles"]
  if quick:
    target, met, why = "-", None, ""
  elif state == "cold":
    target = f"cold run <= {COLD_TARGET_S:.0f} s, <= {MAX_SLOW_COMPILES} compilations >= 0.1 s"
    met = wall <= COLD_TARGET_S and slow <= MAX_SLOW_COMPILES
    why = f"{wall:.1f} s wall, {slow} compilations >= 0.1 s ({inner['backend_s']:.1f} s)"
  else:
    target, met = f"warm run <= {WARM_TARGET_S:.0f} s", wall <= WARM_TARGET_S
    why = f"{wall:.1f} s wall ({inner['compile_s']:.1f} s tracing, lowering, cache loads)"
  return harness.Row(
      NAME, label, ours=timing, target=target, met=met, why=why,
      extra=dict(cache=state, wall_s=wall, wall_in_process_s=inner["wall_s"],
                 compile_s=inner["compile_s"],
                 compile_share=inner["compile_s"] / inner["wall_s"],
                 xla_compilations=inner["backend_compiles"], slow_compilations=slow,
                 backend_compile_s=inner["backend_s"], exit_code=proc.returncode,
                 xla_flags=inner["xla_flags"], devices=report.get("device_count"),
                 passed=report.get("passed"), load_average_before=load,
                 claims={cid: dict(instances=c["instances"], seconds=c["seconds"],
                                   verdict=c["verdict"]) for cid, c in report["claims"].items()},
                 argv=args + ["--compile-cache", "<fresh dir>"]))


def _child(out_path: str, argv: list[str]) -> int:
  """Runs ``python -m proofs_check`` in this process under a compile-time listener."""
  import runpy
  with harness.CompileLog() as log:
    t0 = time.perf_counter()
    sys.argv = ["proofs_check", *argv]
    try:
      runpy.run_module("proofs_check", run_name="__main__", alter_sys=True)
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else 1
    wall = time.perf_counter() - t0
  with open(out_path, "w") as f:
    json.dump(dict(wall_s=wall, compile_s=log.seconds, backend_compiles=log.backend_compiles,
                   slow_compiles=log.slow_compiles, backend_s=log.backend_seconds,
                   xla_flags=os.environ.get("XLA_FLAGS", "")), f)
  return code


if __name__ == "__main__":
  sys.exit(_child(sys.argv[1], sys.argv[2:]))
