"""``python -m proofs_check``: check every claim of docs/THEORY.md at scale.

A thin layer over :func:`proofs_check.check` and :func:`proofs_check.replay`.
``--claims-from MODULE`` adds a module's ``CLAIMS`` (made with
:func:`icl_kd.claims.define`) to the registry for the run. Exit codes: 0 when
every row whose role fails the run holds (or a replay reproduces its report),
1 when any fails, 2 on bad usage (one line on stderr, before any work).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import textwrap

from icl_kd import generators, runtime

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
FLAGS = {"report": "--replay"}   # API argument -> the CLI flag that sets it, where they differ
set_cpu_compile_flags = runtime.set_cpu_compile_flags   # kept for existing callers


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m proofs_check",
      description="Check every claim of arXiv:2506.11516 (docs/THEORY.md, C1-C7) on many random "
                  "instances at once; print one table; exit 0 iff every non-conjecture claim holds.")
  p.add_argument("--claims", default="*",
                 help="comma-separated claim ids, globs (thm4.1-*) or theory numbers (C5) "
                      "(default: all; see --list)")
  p.add_argument("--instances", type=_count, default=None,
                 help="instances per claim (default: each claim's own; >= 1e5 except the "
                      "probabilistic C4 checks, which use enough repetitions for their test)")
  p.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                 help="floating type of every instance (default float64)")
  p.add_argument("--json", metavar="PATH",
                 help="write the full report as JSON (the folder must exist and be writable; "
                      "checked before any work)")
  p.add_argument("--claims-from", metavar="MODULE", action="append", default=[],
                 help="a module (dotted name, or a path to a .py file) whose CLAIMS tuple "
                      "(made with icl_kd.claims.define) joins the registry for this run; "
                      "--claims then selects among all (repeatable)")
  p.add_argument("--adversarial", metavar="STEPS", type=int, default=0,
                 help="projected gradient-ascent steps on lhs/rhs for each bound/conjecture")
  p.add_argument("--checkpoint", metavar="DIR",
                 help="save completed chunks here; a rerun with the same arguments resumes")
  p.add_argument("--chunk", type=_count, default=None, help="instances per compiled batch")
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
  p.add_argument("--generator", choices=generators.GENERATORS, default=generators.DEFAULT,
                 help="the instance generator (default %(default)s, the newest); every report "
                      "records it and --replay uses the report's, so a report made with an "
                      f"older one ({generators.V1}: the reports before version 0.2.0) "
                      "regenerates its instances exactly")
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


def _count(text: str) -> int:
  """An instance count: an int, or an integral float such as 1e5."""
  try:
    return int(text)
  except ValueError:
    pass
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer (e.g. 100000 or 1e5), got {text!r}") \
        from None
  if not math.isfinite(value) or value != int(value):
    raise argparse.ArgumentTypeError(f"expected an integral number, got {text!r}")
  return int(value)


def check_writable(path: str, flag: str) -> str:
  """Raises ValueError (starting with ``flag``) unless a file can be written at ``path``.

  The folder must exist, be a folder, and accept a new file (tried with a
  temporary file, removed at once): a run never fails at its end for its output.
  """
  folder = os.path.dirname(os.path.abspath(path)) or "."
  if os.path.isdir(path):
    raise ValueError(f"{flag}: expected a file path, got the folder {path!r}")
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise ValueError(f"{flag}: {folder!r} is a file, not a folder, got {path!r}")
  if not os.path.isdir(folder):
    raise ValueError(f"{flag}: folder {folder!r} does not exist (create it first), got {path!r}")
  try:
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".proofs_check-write-test-"):
      pass
  except OSError as e:
    raise ValueError(f"{flag}: cannot write in folder {folder!r} ({e.strerror or e}), "
                     f"got {path!r}") from None
  return path


def check_writable_dir(path: str, flag: str) -> str:
  """Raises ValueError (starting with ``flag``) unless ``path`` is, or can be made, a writable
  folder (created if missing)."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"{flag}: {path!r} is a file, expected a folder")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ValueError(f"{flag}: cannot create folder {path!r} ({e.strerror or e})") from None
  check_writable(os.path.join(path, "probe"), flag)
  return path


def _list(registry) -> str:
  rows = [[c.id, c.theory, c.kind, c.role.name, c.default_instances, c.figure,
           ", ".join(t.replace("tests/", "") for t in c.tests), c.statement]
          for c in registry.values()]
  return runtime.format_table(("claim", "C", "kind", "role", "default n", "figure", "tests",
                               "statement"), rows, align="llllrlll", max_width=180)


def _fill(text: str, indent: str = "  ") -> str:
  return textwrap.fill(text, width=120, initial_indent=indent, subsequent_indent=indent + "  ",
                       break_long_words=False, break_on_hyphens=False)


def _print_report(report) -> None:
  from proofs_check.report import format_table, legend
  rows = list(report.claims.values())
  print(format_table(rows))
  for r in rows:
    if r.adversarial:
      a = r.adversarial
      init = a.get("initial_max_ratio")
      log_r = a.get("max_log_ratio")           # absent from reports written before it existed
      best = f"{a['max_ratio']:.4g}" if log_r is None else _exp_text(log_r, ".4g")
      print(f"adversarial {r.id}: max lhs/rhs {best} after {a['steps']} steps "
            f"from the {a['starts']} worst random instances (their max {init:.4g})"
            if init is not None else
            f"adversarial {r.id}: max lhs/rhs {best} after {a['steps']} steps")
  print(legend())
  print(f"convention: {report.convention} (c = {2 if report.convention == 'eq12' else 1})")
  for r in rows:
    if r.explanation is not None and hasattr(r.explanation, "text"):
      print(_fill(f"{r.id}: {r.explanation.text()}"))
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
  shown = {"refutes": "refutes", "tight": "tight (attained)", "holds": "holds"}
  print(runtime.format_table(
      ("counterexample", "reading", "convention", "computed lhs/rhs", "closed form", "agrees",
       "status"),
      [[r.name, r.reading, r.convention, f"{r.computed_ratio:.10g}", f"{r.closed_form_ratio:.10g}",
        "yes" if r.agrees else "NO", shown[r.status]] for r in rows], align="lllrrll"))
  ok = all(r.agrees for r in rows)
  refute = [r for r in rows if r.status == "refutes"]
  tight = [r for r in rows if r.status == "tight"]
  print(wrapped_summary(
      f"{len(rows)} instances: {len(refute)} refutations (lhs/rhs > 1), {len(tight)} tightness "
      f"witnesses (lhs/rhs = 1: the bound is attained, not refuted); "
      + ("every computed ratio equals its closed form" if ok
         else "SOME DISAGREE with their closed form")))
  return EXIT_OK if ok else EXIT_FAIL


def _replay(path: str, claims: str, registry) -> int:
  from proofs_check import api
  from proofs_check.report import Report
  try:
    report = Report.from_json(runtime.read_json(path, flag="--replay"))
  except (KeyError, TypeError) as e:
    raise ValueError(f"--replay: {path!r} is not a proofs_check JSON report ({e})") from None
  except ValueError as e:
    raise ValueError(f"--replay: {path!r}: {e}" if not str(e).startswith("--") else str(e)) \
        from None
  for spec in report.environment.get("claims_from", []):   # the report's own claim modules
    registry = registry.with_claims([c for c in api.load_claims(spec)
                                     if registry.get(c.id) is None])
  lines = api.replay(report, claims, registry=registry)
  for ln in lines:
    print(f"{ln.claim:<26} {ln.label:<12} {ln.quantity:<16} saved {ln.saved: .6e}  "
          f"replayed {ln.replayed: .6e}  {'ok' if ln.agrees else 'DIFFERS'}")
  ok = all(ln.agrees for ln in lines)
  print("replay reproduces the report" if ok else "REPLAY DIFFERS")
  return EXIT_OK if ok else EXIT_FAIL


def _registry(args):
  from icl_kd.claims import CLAIMS
  from proofs_check import api
  registry = CLAIMS
  for spec in args.claims_from:
    claims = api.load_claims(spec)
    try:
      registry = registry.with_claims(claims)
    except (TypeError, ValueError) as e:
      raise api.UsageError("claims_from", f"{spec!r}: {e}") from None
  return registry


def _run(args) -> int:
  import jax
  from proofs_check import api
  registry = _registry(args)
  if args.list:
    print(_list(registry))
    return EXIT_OK
  if args.replay:
    return _replay(args.replay, args.claims, registry)
  if args.counterexamples:
    return _counterexamples()
  api.select(args.claims, registry)                         # usage errors before any work
  if args.json:
    check_writable(args.json, "--json")
  if args.checkpoint:
    check_writable_dir(args.checkpoint, "--checkpoint")
  first = jax.process_index() == 0
  runtime.log(f"proofs_check: seed {args.seed}, {args.dtype}, "
              f"{jax.device_count()} {jax.devices()[0].platform} device(s)") if first else None
  report = api.check(args.claims, instances=args.instances, seed=args.seed, dtype=args.dtype,
                     chunk=args.chunk, checkpoint=args.checkpoint, adversarial=args.adversarial,
                     progress=not args.no_progress and first, convention=args.convention,
                     registry=registry, generator=args.generator)
  if args.claims_from:
    report = dataclasses.replace(report, environment=dict(
        report.environment, claims_from=[api.claims_spec(s) for s in args.claims_from]))
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
  # Every run compiles at XLA's full optimisation level (level 0 rounds differently, and a
  # report's numbers must not depend on how it was compiled), once, into the persistent
  # cache; every CPU core is a device (the numbers do not depend on the device count).
  runtime.configure(x64=x64, fast_compile="off", compile_cache=args.compile_cache,
                    cpu_devices=None if args.replay else (os.cpu_count() or 1))
  multi = [args.coordinator, args.num_processes, args.process_id]
  if args.distributed or any(v is not None for v in multi):
    from proofs_check import sweep
    try:
      sweep.initialize_distributed(*multi)
    except ValueError as e:
      parser.error(str(e))
  from proofs_check.api import UsageError
  try:
    return _run(args)
  except UsageError as e:
    flag = FLAGS.get(e.argument, "--" + e.argument.replace("_", "-"))
    print(f"python -m proofs_check: error: {flag}: {e.message}", file=sys.stderr)
    return EXIT_USAGE
  except ValueError as e:
    if str(e).startswith("--"):
      print(f"python -m proofs_check: error: {e}", file=sys.stderr)
      return EXIT_USAGE
    raise
