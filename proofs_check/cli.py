"""``python -m proofs_check``: check every claim of THEORY.md at scale.

Exit codes: 0 when every non-conjecture claim holds, 1 when any fails, 2 on
bad usage.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import platform as _platform
import sys
import time

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_MIN_INSTANCES = 100_000


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m proofs_check",
      description="Check every claim of arXiv:2506.11516 (THEORY.md C1-C7) on many random "
                  "instances at once; print one table; exit 0 iff every non-conjecture claim holds.")
  p.add_argument("--claims", default="*",
                 help="comma-separated claim ids or globs (default: all; see --list)")
  p.add_argument("--instances", type=int, default=None,
                 help="instances per claim (default: each claim's own; >= 1e5 except the "
                      "probabilistic C4 checks, which use enough repetitions for their test)")
  p.add_argument("--seed", type=int, default=0, help="integer seed; the same seed gives the "
                 "same report numbers")
  p.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                 help="floating type of every instance (default float64)")
  p.add_argument("--json", metavar="PATH", help="write the full report as JSON")
  p.add_argument("--adversarial", metavar="STEPS", type=int, default=0,
                 help="projected gradient-ascent steps on lhs/rhs for each bound/conjecture")
  p.add_argument("--checkpoint", metavar="DIR",
                 help="save completed chunks here; a rerun with the same arguments resumes")
  p.add_argument("--chunk", type=int, default=None, help="instances per compiled batch")
  p.add_argument("--replay", metavar="FILE",
                 help="re-evaluate the worst (and adversarial) instances saved in a JSON report")
  p.add_argument("--list", action="store_true", help="list the claims and exit")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--fast-compile", choices=("auto", "on", "off"), default="auto",
                 help="compile with XLA's backend optimisation level 0 on CPU: faster compiles, "
                      "slower runs; auto = on when at most 300,000 instances per claim")
  p.add_argument("--distributed", action="store_true",
                 help="call jax.distributed.initialize() first (multi-host runs)")
  return p


def _select(spec: str, ids: list[str]) -> list[str]:
  chosen: list[str] = []
  for pat in [s.strip() for s in spec.split(",") if s.strip()]:
    hits = [i for i in ids if fnmatch.fnmatchcase(i, pat)]
    if not hits:
      raise ValueError(f"--claims: no claim matches {pat!r}; known ids: {', '.join(ids)}")
    chosen += [h for h in hits if h not in chosen]
  if not chosen:
    raise ValueError("--claims selects no claim")
  return chosen


def _fmt(x, spec=".2e") -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "-"
  return format(x, spec)


def _worst_cell(kind: str, d: dict) -> str:
  if kind == "identity":
    return f"err {_fmt(d['max_error'])} ({_fmt(d['max_error_over_tolerance'], '.2g')} tol)"
  if kind in ("bound", "conjecture"):
    return f"lhs/rhs {_fmt(d['max_ratio'], '.6g')}"
  if kind == "probabilistic bound":
    return f"rate {d['event_rate']:.4f} vs {d['delta']}; gap/bd {_fmt(d['max_ratio'], '.2g')}"
  return f"median {_fmt(d.get('median'), '.3g')}, max {_fmt(d['max'], '.3g')}"


def _slack_cell(kind: str, d: dict) -> str:
  if kind in ("bound", "conjecture", "probabilistic bound"):
    return _fmt(d["min_slack"], ".2e")
  return "-"


def format_table(rows: list[dict]) -> str:
  head = ["claim", "kind", "instances", "violations", "worst", "min slack", "verdict", "seconds"]
  body = [[r["id"], r["kind"], f"{r['instances']:,}", f"{r['violations']:,}",
           _worst_cell(r["kind"], r["detail"]), _slack_cell(r["kind"], r["detail"]),
           r["verdict"], f"{r['seconds']:.1f}"] for r in rows]
  widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
  line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
  return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def _jsonable(x):
  import numpy as np
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, float)):
    x = float(x)
    return x if math.isfinite(x) else repr(x)
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  return x


def _run(args) -> int:
  import jax
  import jax.numpy as jnp
  import numpy as np

  import icl_kd
  from proofs_check import sweep, verdicts
  from proofs_check.claims import CLAIMS

  ids = list(CLAIMS)
  if args.list:
    for cid in ids:
      c = CLAIMS[cid]
      print(f"{cid:<20} {c.kind:<20} {c.default_instances:>9,}  {c.statement}")
    return EXIT_OK
  chosen = _select(args.claims, ids)
  dtype = jnp.float64 if args.dtype == "float64" else jnp.float32
  if args.replay:
    return _replay(args, CLAIMS, chosen, dtype)

  mesh = sweep.make_mesh()
  quiet = args.no_progress or jax.process_index() != 0
  if args.checkpoint:
    _check_manifest(args, chosen)
  print(f"proofs_check: {len(chosen)} claims, seed {args.seed}, {args.dtype}, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)", file=sys.stderr)
  rows, report_claims, all_ok = [], {}, True
  groups: dict[str, list] = {}
  for cid in chosen:
    groups.setdefault(CLAIMS[cid].group_id, []).append(CLAIMS[cid])
  for group in groups.values():
    n = args.instances if args.instances is not None else max(c.default_instances for c in group)
    t0 = time.perf_counter()
    stats = sweep.sweep(group, instances=n, seed=args.seed, dtype=dtype, dtype_name=args.dtype,
                        checkpoint=args.checkpoint, progress=not quiet, mesh=mesh,
                        chunk=args.chunk)
    shared = (time.perf_counter() - t0) / len(group)
    for claim in group:
      t1 = time.perf_counter()
      entry = _entry(claim, stats[claim.id], args, dtype)
      if args.adversarial and claim.project is not None and claim.kind in ("bound", "conjecture"):
        entry["adversarial"] = _adversarial(claim, stats[claim.id], args, dtype)
        found = entry["adversarial"]["max_ratio"]
        if claim.kind == "bound" and found > 1.0 + verdicts.float_slack(args.dtype):
          entry["verdict"], entry["passed"] = "FAILS (adversarial)", False
        elif claim.kind == "conjecture" and found > 1.0:
          entry["verdict"] = "violated (adversarial)"
      entry["seconds"] = shared + time.perf_counter() - t1
      all_ok &= entry["passed"]
      rows.append(entry)
      report_claims[claim.id] = entry
  rows.sort(key=lambda r: chosen.index(r["id"]))
  report_claims = {r["id"]: report_claims[r["id"]] for r in rows}

  if jax.process_index() == 0:
    print(format_table(rows))
    adv = [r for r in rows if "adversarial" in r]
    for r in adv:
      a = r["adversarial"]
      print(f"adversarial {r['id']}: max lhs/rhs {a['max_ratio']:.4g} after {a['steps']} steps "
            f"from {a['starts']} starts (random max {_fmt(a['initial_max_ratio'], '.4g')})")
    print("all claims hold" if all_ok else "SOME CLAIMS FAIL")
    if args.json:
      report = dict(version=icl_kd.__version__, seed=args.seed, dtype=args.dtype,
                    jax_version=jax.__version__, platform=jax.devices()[0].platform,
                    device_count=jax.device_count(), process_count=jax.process_count(),
                    python=_platform.python_version(), instances=args.instances,
                    adversarial_steps=args.adversarial, claims=report_claims,
                    passed=bool(all_ok))
      os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
      with open(args.json, "w") as f:
        json.dump(_jsonable(report), f, indent=1)
  return EXIT_OK if all_ok else EXIT_FAIL


def _entry(claim, st, args, dtype) -> dict:
  """One report row: the verdict, its numbers and the worst instance (replayable)."""
  import jax
  import numpy as np
  from proofs_check import sweep, verdicts
  verdict = verdicts.decide(claim.kind, st, delta=claim.delta)
  if claim.kind == "measurement":
    verdict.detail["max"] = st.worst
  b, idx = st.worst_index
  inst = sweep.instance_of(claim, args.seed, b, idx, dtype)
  values = {k: float(v) for k, v in jax.jit(claim.evaluate, static_argnums=1)(
      inst, claim.buckets[b]).items()}
  return dict(id=claim.id, kind=claim.kind, statement=claim.statement, group=claim.group_id,
              instances=st.count, violations=st.violations, verdict=verdict.verdict,
              passed=verdict.passed, detail=verdict.detail,
              worst_instance=dict(bucket=b, index=idx, config=list(claim.buckets[b]),
                                  values=values,
                                  arrays={k: np.asarray(v).tolist() for k, v in inst.items()}))


def _adversarial(claim, st, args, dtype) -> dict:
  """Adversarial search from the sweep's worst instances, bucket by bucket."""
  from proofs_check import adversarial, sweep
  best = None
  by_bucket: dict[int, list] = {}
  for _, b, idx in st.top:
    by_bucket.setdefault(int(b), []).append(int(idx))
  for b, idxs in sorted(by_bucket.items()):
    starts = [sweep.instance_of(claim, args.seed, b, i, dtype) for i in idxs]
    res = adversarial.search(claim, starts, b, steps=args.adversarial)
    if best is None or res["max_ratio"] > best["max_ratio"]:
      best = res
  return best


def _check_manifest(args, chosen) -> None:
  manifest = dict(seed=args.seed, dtype=args.dtype, instances=args.instances,
                  chunk=args.chunk, claims=chosen)
  path = os.path.join(args.checkpoint, "manifest.json")
  os.makedirs(args.checkpoint, exist_ok=True)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if any(old.get(k) != v for k, v in manifest.items() if k != "claims"):
      raise ValueError(f"--checkpoint {args.checkpoint} holds a run with other arguments "
                       f"({old}); use a fresh directory")
    manifest["claims"] = sorted(set(old.get("claims", [])) | set(chosen))
  with open(path, "w") as f:
    json.dump(manifest, f)


def _replay(args, claims, chosen, dtype) -> int:
  """Re-evaluates saved instances; exit 0 when every stored number is reproduced."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  with open(args.replay) as f:
    report = json.load(f)
  if "claims" not in report:
    raise ValueError(f"--replay {args.replay}: not a proofs_check JSON report (no 'claims')")
  dtype = jnp.float64 if report.get("dtype", "float64") == "float64" else jnp.float32
  ok = True
  for cid, entry in report["claims"].items():
    if cid not in chosen or cid not in claims:
      continue
    claim = claims[cid]
    for label, saved in (("worst", entry.get("worst_instance")),
                         ("adversarial", entry.get("adversarial"))):
      if not saved:
        continue
      inst = {k: jnp.asarray(np.asarray(v), dtype) for k, v in saved["instance" if label ==
                                                                   "adversarial" else "arrays"].items()}
      cfg = claim.buckets[saved["bucket"]]
      got = {k: float(v) for k, v in claim.evaluate(inst, cfg).items()}
      for k, want in saved["values"].items():
        want = float(want)
        same = (got[k] == want or (math.isnan(got[k]) and math.isnan(want)) or
                abs(got[k] - want) <= 1e-9 * max(abs(want), 1e-300))
        ok &= same
        print(f"{cid:<20} {label:<12} {k:<28} saved {want: .6e}  replayed {got[k]: .6e}  "
              f"{'ok' if same else 'DIFFERS'}")
  print("replay reproduces the report" if ok else "REPLAY DIFFERS")
  return EXIT_OK if ok else EXIT_FAIL


FAST_COMPILE_MAX_INSTANCES = 300_000


def set_cpu_compile_flags(mode: str, instances: int | None) -> None:
  """Chooses XLA's backend optimisation level 0 on CPU-only installs when it pays.

  A sweep compiles one small program per shape bucket. Level 0 cuts a cold
  compile ~2.5-4x (e.g. 8.6 s -> 3.5 s for the C1 group) but runs 2-7x slower
  in steady state (``python -m benchmarks --only B1``), so it wins while
  compile time dominates: ``auto`` uses it up to FAST_COMPILE_MAX_INSTANCES
  instances per claim (the default run has 1e5). Accelerator installs and an
  XLA_FLAGS that already sets the level are left alone.
  """
  import importlib.util
  flags = os.environ.get("XLA_FLAGS", "")
  if mode == "off" or "xla_backend_optimization_level" in flags:
    return
  if mode == "auto" and instances is not None and instances > FAST_COMPILE_MAX_INSTANCES:
    return
  platforms = os.environ.get("JAX_PLATFORMS", "")
  has_accel = any(importlib.util.find_spec(m) is not None for m in
                  ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu"))
  if platforms.strip().lower() == "cpu" or not has_accel:
    os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.instances is not None and args.instances < 1:
    parser.error(f"--instances must be >= 1, got {args.instances}")
  if args.adversarial < 0:
    parser.error(f"--adversarial must be >= 0, got {args.adversarial}")
  if args.chunk is not None and args.chunk < 1:
    parser.error(f"--chunk must be >= 1, got {args.chunk}")
  set_cpu_compile_flags(args.fast_compile, args.instances)
  import jax
  # The dtype is fixed before any array exists.
  jax.config.update("jax_enable_x64", args.dtype == "float64")
  if args.distributed:
    jax.distributed.initialize()
  try:
    return _run(args)
  except (ValueError, FileNotFoundError) as e:
    if "--" in str(e) or isinstance(e, FileNotFoundError):
      print(f"python -m proofs_check: error: {e}", file=sys.stderr)
      return EXIT_USAGE
    raise
