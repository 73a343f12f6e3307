"""Command line of ``python -m benchmarks``: run, print the table and the targets, write the JSON.

Exit code: 0 when the run completed, whether or not every target was met
(the targets summary says which were missed and why); with ``--strict``, 1
when a target was missed; 2 on bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import icl_kd
from icl_kd import runtime

MODULES = {"limits": "benchmarks.limits", "B1": "benchmarks.b1_claims",
           "B2": "benchmarks.b2_attention", "B3": "benchmarks.b3_mmd",
           "B4": "benchmarks.b4_permutation", "B5": "benchmarks.b5_proofs_check",
           "B6": "benchmarks.b6_compiles"}

EXIT_CODES = ("Exit code: 0 when the run completed, whether or not every target was met (the "
              "targets summary says which were missed and why); with --strict, 1 when a target "
              "was missed; 2 on bad usage.")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m benchmarks",
      description="Time the toolkit's hot paths against baselines in the same run and against "
                  "the machine's measured matmul and copy limits; print a table (120 columns) "
                  "and a summary of the targets, and write <out>/<platform>-<date>.json (a --quick run: "
                  "<platform>-<date>-quick.json).",
      epilog=EXIT_CODES)
  p.add_argument("--quick", action="store_true",
                 help="small sizes and few repeats (CI-sized; about two minutes on 2 CPU cores); "
                      "the table and the JSON say \"quick\", and the numbers are not the targets' "
                      "measurements")
  p.add_argument("--only", metavar="NAME", action="append",
                 help=f"run only this benchmark (repeatable; one of {', '.join(MODULES)}); the "
                      "machine limits are always measured")
  p.add_argument("--out", default=os.path.join("benchmarks", "results"), metavar="DIR",
                 help="directory of the JSON report, created if missing (default %(default)s)")
  p.add_argument("--strict", action="store_true",
                 help="exit with 1 when a target is missed (default: 0 whenever the run completed)")
  runtime.add_runtime_arguments(p)
  return p


def _cache_entries(directory: str | None) -> int:
  return len(os.listdir(directory)) if directory and os.path.isdir(directory) else 0


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  only = []
  for name in args.only or []:
    match = [k for k in MODULES if k.lower() == name.lower()]
    if not match:
      parser.error(f"--only: unknown benchmark {name!r}; known: {', '.join(MODULES)}")
    only.append(match[0])
  try:
    runtime.check_output_dir(args.out, flag="--out")       # before any work
  except ValueError as e:
    print(f"python -m benchmarks: error: {e}", file=sys.stderr)
    return 2
  warm = _cache_entries(args.compile_cache)
  # CI-sized runs are dominated by compilation: compile like ``python -m proofs_check``
  # does on CPU (no effect on accelerator installs). Full runs keep XLA's defaults.
  # float64 is on; float32 inputs are created explicitly.
  runtime.configure(x64=True, fast_compile="on" if args.quick else "off",
                    compile_cache=args.compile_cache)
  from benchmarks import harness
  harness.QUIET = args.no_progress

  selected = [k for k in MODULES if k != "limits" and (not only or k in only)]
  report = dict(icl_kd_version=icl_kd.__version__, quick=args.quick, seed=args.seed,
                argv=list(sys.argv[1:] if argv is None else argv),
                machine=harness.machine(),
                compile_cache=dict(directory=args.compile_cache, entries_at_start=warm),
                benchmarks={}, rows=[])
  t_start = time.perf_counter()
  harness.log(f"benchmarks on {report['machine']['device_kind']} "
              f"({report['machine']['platform']}), quick={args.quick}")
  harness.log("  limits: matmul and copy")
  limits, rows = importlib.import_module(MODULES["limits"]).run(quick=args.quick, seed=args.seed)
  report["limits"] = limits
  for name in selected:
    harness.log(f"  {name} ...")
    t0 = time.perf_counter()
    new = importlib.import_module(MODULES[name]).run(quick=args.quick, seed=args.seed)
    report["benchmarks"][name] = dict(seconds=time.perf_counter() - t0)
    rows += new
  report["total_seconds"] = time.perf_counter() - t_start
  report["rows"] = [r.to_json(limits) for r in rows]
  targets = harness.target_lines(rows, quick=args.quick)
  missed = [r for r in rows if r.met is False]
  report["targets"] = dict(met=sum(r.met is True for r in rows), missed=len(missed),
                           lines=targets)
  code = 1 if args.strict and missed else 0
  report["exit_code"] = code
  print(harness.format_table(rows, limits, quick=args.quick))
  print(f"matmul limit {limits['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s (float32), "
        f"{limits['matmul_flops_per_s_float64'] / 1e9:.1f} GFLOP/s (float64); "
        f"copy limit {limits['copy_bytes_per_s'] / 1e9:.1f} GB/s; "
        f"total {report['total_seconds']:.0f}s")
  print()
  print(summary_text(targets, len(missed), quick=args.quick, strict=args.strict))
  path = harness.write_report(args.out, report)
  print(f"wrote {path}")
  return code


def summary_text(lines: list[str], missed: int, *, quick: bool, strict: bool) -> str:
  """The targets summary: one line per target, then what the exit code says."""
  head = f"Targets: {len(lines) - missed} met, {missed} missed"
  if quick:
    head += " (QUICK RUN: small sizes, not the measurement the targets are about)"
  tail = ("exit code 1: a target was missed (--strict)" if strict and missed else
          "exit code 0: the run completed" + ("" if strict else
                                              " (targets do not set the exit code; see --strict)"))
  return "\n".join([head + ":"] + [f"  {ln}" for ln in lines] + [tail])
