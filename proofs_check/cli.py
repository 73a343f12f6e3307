"""``python -m proofs_check``: check every claim of docs/THEORY.md at scale.

A thin layer over :func:`proofs_check.check` and :func:`proofs_check.replay`.
Exit codes: 0 when every non-conjecture claim holds (or a replay reproduces
its report), 1 when any fails, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap

from icl_kd import runtime

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
FAST_COMPILE_MAX_INSTANCES = runtime.FAST_COMPILE_MAX_INSTANCES
DEFAULT_RUN = 10 ** 6   # the size --fast-compile auto and the device count assume for the default run
set_cpu_compile_flags = runtime.set_cpu_compile_flags   # kept for existing callers


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m proofs_check",
      description="Check every claim of arXiv:2506.11516 (docs/THEORY.md, C1-C7) on many random "
                  "instances at once; print one table; exit 0 iff every non-conjecture claim holds.")
  p.add_argument("--claims", default="*",
                 help="comma-separated claim ids, globs (thm4.1-*) or theory numbers (C5) "
                      "(default: all; see --list)")
  p.add_argument("--instances", type=int, default=None,
                 help="instances per claim (default: each claim's own; >= 1e5 except the "
                      "probabilistic C4 checks, which use enough repetitions for their test)")
  p.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                 help="floating type of every instance (default float64)")
  p.add_argument("--json", metavar="PATH",
                 help="write the full report as JSON (the folder must exist)")
  p.add_argument("--adversarial", metavar="STEPS", type=int, default=0,
                 help="projected gradient-ascent steps on lhs/rhs for each bound/conjecture")
  p.add_argument("--checkpoint", metavar="DIR",
                 help="save completed chunks here; a rerun with the same arguments resumes")
  p.add_argument("--chunk", type=int, default=None, help="instances per compiled batch")
  p.add_argument("--replay", metavar="FILE",
                 help="re-evaluate the worst (and adversarial) instances saved in a JSON report")
  p.add_argument("--convention", choices=("eq12", "half"), default="eq12",
                 help="the constant c of W_0 = c eta E[W^V x phi(W^K x)^T] in the C5/C6 claims: "
                      "eq12 (c = 2, the paper's Eq. 12; default) or half (c = 1)")
  p.add_argument("--counterexamples", action="store_true",
                 help="evaluate the analytic counterexamples of the literal readings: computed "
                      "ratio next to its closed form; exit 0 when all agree")
  p.add_argument("--list", action="store_true",
                 help="list the claims (theory number, kind, tests, figure) and exit")
  p.add_argument("--fast-compile", choices=("auto", "on", "off"), default="auto",
                 help="compile with XLA's backend optimisation level 0 on CPU: faster compiles, "
                      "slower runs, other rounding; auto = on when --instances is at most "
                      "300,000 (the default run compiles at the full level, once, into the "
                      "compile cache); on large runs every CPU core is a device")
  p.add_argument("--distributed", action="store_true",
                 help="call jax.distributed.initialize() first, detecting the cluster from the "
                      "environment (SLURM, Open MPI, Kubernetes, TPU pods)")
  p.add_argument("--coordinator", metavar="HOST:PORT",
                 help="a multi-process run without a detected cluster: process 0's address "
                      "(with --num-processes and --process-id; every process gets the same "
                      "arguments and its own id)")
  p.add_argument("--num-processes", type=int, metavar="N", help="processes of the run")
  p.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1")
  runtime.add_runtime_arguments(p)
  return p


def _list() -> str:
  from icl_kd.claims import CLAIMS
  rows = [[c.id, c.theory, c.kind, c.default_instances, c.figure,
           ", ".join(t.replace("tests/", "") for t in c.tests), c.statement]
          for c in CLAIMS.values()]
  return runtime.format_table(("claim", "C", "kind", "default n", "figure", "tests", "statement"),
                              rows, align="lllrlll", max_width=160)


def _print_report(report) -> None:
  from proofs_check.report import LEGEND, format_table
  rows = list(report.claims.values())
  print(format_table(rows))
  for r in rows:
    if r.adversarial:
      a = r.adversarial
      init = a.get("initial_max_ratio")
      log_r = a.get("max_log_ratio")           # absent from reports written before it existed
      best = f"{a['max_ratio']:.4g}" if log_r is None else _exp_text(log_r, ".4g")
      print(f"adversarial {r.id}: max lhs/rhs {best} after {a['steps']} steps "
            f"from {a['starts']} starts (random max {init:.4g})" if init is not None else
            f"adversarial {r.id}: max lhs/rhs {best} after {a['steps']} steps")
  print(LEGEND)
  print(f"convention: {report.convention} (c = {2 if report.convention == 'eq12' else 1})")
  for cid, a in report.attribution.items():
    if "query_beyond_m_phi" in a:
      print(textwrap.fill(
          f"  {cid}: violated {a['rate']:.2%}; ||phi(z)|| > M_phi in "
          f"{a['rate_query_beyond_m_phi']:.2%}; worst ratio {a['max_ratio']:.3g} = "
          f"{_exp_text(a['worst_log_mmd_ratio'])} (thm4.2-mmd's) x "
          f"{_exp_text(a['worst_log_query_over_m_phi'])} (||phi(z)||/M_phi)",
          width=120, subsequent_indent="    ", break_long_words=False, break_on_hyphens=False))
      continue
    print(f"  {cid}: violated {a['rate_eq12']:.2%} under eq12, {a['rate_half']:.2%} under half; "
          f"max ratio {a['max_ratio_eq12']:.3g} / {a['max_ratio_half']:.3g}")
  print(wrapped_summary(report.summary()))


def _exp_text(log_x: float, fmt: str = ".3g") -> str:
  """exp(log_x) formatted with ``fmt``, or "e^x" above the reports' cap (LOG_CAP = 700), where
  the capped ratio would be printed in place of the true one."""
  from proofs_check import verdicts
  return f"e^{log_x:.4g}" if log_x > verdicts.LOG_CAP else format(math.exp(log_x), fmt)


def wrapped_summary(line: str, width: int = 120) -> str:
  """The summary line wrapped to ``width`` columns, continuation lines indented by two."""
  return textwrap.fill(line, width=width, subsequent_indent="  ", break_long_words=False,
                       break_on_hyphens=False)


def _counterexamples() -> int:
  from proofs_check import api
  rows = api.counterexamples()
  print(runtime.format_table(
      ("counterexample", "reading", "convention", "computed lhs/rhs", "closed form", "agrees"),
      [[r.name, r.reading, r.convention, f"{r.computed_ratio:.10g}", f"{r.closed_form_ratio:.10g}",
        "yes" if r.agrees else "NO"] for r in rows], align="lllrrl"))
  ok = all(r.agrees for r in rows)
  print(f"{len(rows)} counterexamples: " + ("every computed ratio equals its closed form" if ok
                                            else "SOME DISAGREE with their closed form"))
  return EXIT_OK if ok else EXIT_FAIL


def _replay(path: str, claims: str) -> int:
  from proofs_check import api
  from proofs_check.report import Report
  try:
    report = Report.from_json(runtime.read_json(path, flag="--replay"))
  except (KeyError, TypeError) as e:
    raise ValueError(f"--replay: {path!r} is not a proofs_check JSON report ({e})") from None
  except ValueError as e:
    raise ValueError(f"--replay: {path!r}: {e}" if not str(e).startswith("--") else str(e)) \
        from None
  lines = api.replay(report, claims)
  for ln in lines:
    print(f"{ln.claim:<26} {ln.label:<12} {ln.quantity:<16} saved {ln.saved: .6e}  "
          f"replayed {ln.replayed: .6e}  {'ok' if ln.agrees else 'DIFFERS'}")
  ok = all(ln.agrees for ln in lines)
  print("replay reproduces the report" if ok else "REPLAY DIFFERS")
  return EXIT_OK if ok else EXIT_FAIL


def _run(args) -> int:
  import jax
  from proofs_check import api
  if args.list:
    print(_list())
    return EXIT_OK
  if args.replay:
    return _replay(args.replay, args.claims)
  if args.counterexamples:
    return _counterexamples()
  api.select(args.claims)                                   # usage errors before any work
  if args.json:
    runtime.check_output_path(args.json, flag="--json")
  first = jax.process_index() == 0
  runtime.log(f"proofs_check: seed {args.seed}, {args.dtype}, "
              f"{jax.device_count()} {jax.devices()[0].platform} device(s)") if first else None
  report = api.check(args.claims, instances=args.instances, seed=args.seed, dtype=args.dtype,
                     chunk=args.chunk, checkpoint=args.checkpoint, adversarial=args.adversarial,
                     progress=not args.no_progress and first, convention=args.convention)
  if first:
    if args.checkpoint:
      print(f"checkpoint {args.checkpoint}: loaded {report.chunks_loaded} chunk(s), computed "
            f"{report.chunks_computed}")
    _print_report(report)
    if args.json:
      runtime.write_json(args.json, report.to_json(), flag="--json")
  return EXIT_OK if report.ok else EXIT_FAIL


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.instances is not None and args.instances < 1:
    parser.error(f"--instances must be >= 1, got {args.instances}")
  if args.adversarial < 0:
    parser.error(f"--adversarial must be >= 0, got {args.adversarial}")
  if args.chunk is not None and args.chunk < 1:
    parser.error(f"--chunk must be >= 1, got {args.chunk}")
  x64 = args.dtype == "float64"
  if args.replay:
    # a replay runs in the dtype its report was made in
    try:
      x64 = runtime.read_json(args.replay, flag="--replay").get("dtype", "float64") == "float64"
    except (ValueError, AttributeError) as e:
      print(f"python -m proofs_check: error: {e}", file=sys.stderr)
      return EXIT_USAGE
  # the default run is large (>= 1e5 instances for each of a dozen claims): full XLA
  # optimisation, compiled once into the persistent cache, and every core as a device
  size = args.instances if args.instances is not None else (1 if args.replay else DEFAULT_RUN)
  large = size > FAST_COMPILE_MAX_INSTANCES
  runtime.configure(x64=x64, fast_compile=args.fast_compile, instances=size,
                    compile_cache=args.compile_cache,
                    cpu_devices=(os.cpu_count() or 1) if large else None)
  multi = [args.coordinator, args.num_processes, args.process_id]
  if args.distributed or any(v is not None for v in multi):
    from proofs_check import sweep
    try:
      sweep.initialize_distributed(*multi)
    except ValueError as e:
      parser.error(str(e))
  try:
    return _run(args)
  except ValueError as e:
    if str(e).startswith("--"):
      print(f"python -m proofs_check: error: {e}", file=sys.stderr)
      return EXIT_USAGE
    raise
