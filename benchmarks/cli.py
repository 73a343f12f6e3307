"""Command line of ``python -m benchmarks``: run, print the table, write the JSON report."""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time

MODULES = {"limits": "benchmarks.limits", "B1": "benchmarks.b1_claims",
           "B2": "benchmarks.b2_attention", "B3": "benchmarks.b3_mmd",
           "B4": "benchmarks.b4_permutation", "B5": "benchmarks.b5_proofs_check",
           "B6": "benchmarks.b6_compiles"}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m benchmarks",
      description="Time the toolkit's hot paths against baselines in the same run and against "
                  "the machine's measured matmul and copy limits; print a table and write "
                  "<out>/<platform>-<date>.json.")
  p.add_argument("--quick", action="store_true",
                 help="small sizes and few repeats (CI-sized; about two minutes on 2 CPU cores)")
  p.add_argument("--only", metavar="NAME", action="append",
                 help=f"run only this benchmark (repeatable; one of {', '.join(MODULES)}); the "
                      "machine limits are always measured")
  p.add_argument("--seed", type=int, default=0, help="integer seed of every random input")
  p.add_argument("--out", default="benchmarks/results", help="directory of the JSON report")
  return p


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  only = []
  for name in args.only or []:
    match = [k for k in MODULES if k.lower() == name.lower()]
    if not match:
      parser.error(f"--only: unknown benchmark {name!r}; known: {', '.join(MODULES)}")
    only.append(match[0])
  if args.quick:
    # CI-sized runs are dominated by compilation: compile like ``python -m proofs_check``
    # does on CPU (no effect on accelerator installs). Full runs keep XLA's defaults.
    from proofs_check.cli import set_cpu_compile_flags
    set_cpu_compile_flags("on", None)
  import jax
  jax.config.update("jax_enable_x64", True)  # float32 inputs are created explicitly
  cache_dir = tempfile.mkdtemp(prefix="benchmarks-jax-cache-")
  # A run-local persistent cache: repeated sweeps (which build fresh jitted programs)
  # compile once; every first compile is still a miss and is reported.
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  from benchmarks import harness

  selected = [k for k in MODULES if k != "limits" and (not only or k in only)]
  report = dict(quick=args.quick, seed=args.seed,
                argv=list(sys.argv[1:] if argv is None else argv),
                machine=harness.machine(), benchmarks={}, rows=[])
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
  print(harness.format_table(rows, limits))
  print(f"matmul limit {limits['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s (float32), "
        f"{limits['matmul_flops_per_s_float64'] / 1e9:.1f} GFLOP/s (float64); "
        f"copy limit {limits['copy_bytes_per_s'] / 1e9:.1f} GB/s; "
        f"total {report['total_seconds']:.0f}s")
  path = harness.write_report(args.out, report)
  print(f"wrote {path}")
  shutil.rmtree(cache_dir, ignore_errors=True)
  return 0
