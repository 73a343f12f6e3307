"""B5 the default ``python -m proofs_check`` end to end: wall time and compile share.

Runs the command line in a fresh process (so its own XLA flags apply: on CPU
it compiles with backend optimisation level 0) with a ``jax.monitoring``
listener that sums the tracing, lowering and XLA compile durations. Reports
the wall time, the compile seconds and their share of the wall time, the
number of XLA compilations, and the per-claim seconds of the report.

The quick mode runs ``--claims thm3.1 --instances 5000`` instead of the
default claims and instance counts.
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


def run(*, quick: bool, seed: int) -> list[harness.Row]:
  args = (QUICK_ARGS if quick else []) + ["--seed", str(seed), "--no-progress"]
  with tempfile.TemporaryDirectory() as tmp:
    out_json = os.path.join(tmp, "report.json")
    child = os.path.join(tmp, "child.json")
    cmd = [sys.executable, "-m", "benchmarks.b5_proofs_check", child, *args, "--json", out_json]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=harness.ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
      raise RuntimeError(f"python -m proofs_check {' '.join(args)} failed "
                         f"(exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    with open(child) as f:
      inner = json.load(f)
    with open(out_json) as f:
      report = json.load(f)
  timing = harness.Timing(wall, wall, wall, 0.0, 1, inner["compile_s"])
  label = "python -m proofs_check " + (" ".join(QUICK_ARGS) if quick else "(default)")
  return [harness.Row(
      NAME, label, ours=timing, target="-",
      extra=dict(wall_s=wall, wall_in_process_s=inner["wall_s"], compile_s=inner["compile_s"],
                 compile_share=inner["compile_s"] / inner["wall_s"],
                 xla_compilations=inner["backend_compiles"], exit_code=proc.returncode,
                 xla_flags=inner["xla_flags"], passed=report.get("passed"),
                 claims={cid: dict(instances=c["instances"], seconds=c["seconds"],
                                   verdict=c["verdict"]) for cid, c in report["claims"].items()},
                 argv=args))]


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
                   xla_flags=os.environ.get("XLA_FLAGS", "")), f)
  return code


if __name__ == "__main__":
  sys.exit(_child(sys.argv[1], sys.argv[2:]))
