"""``proofs_check.check``: claims checked at scale, from Python.

    import icl_kd.runtime, proofs_check
    icl_kd.runtime.configure(x64=True)            # float64 needs x64, set before any array
    report = proofs_check.check("C5", instances=20_000, seed=0)
    report.ok, report.claims["thm4.1-bound"].worst, report.to_json()

The runner is generic: for each group of claims it samples instances, evaluates
them, reduces each chunk and decides, calling the check types' own rules
(:mod:`icl_kd.claims.checks`) and the claims' own hooks (witnesses,
``explain``, ``project``). It runs a researcher's claims
(:func:`icl_kd.claims.define`) as it runs the paper's: pass them to
:func:`check` (mixed with ids, globs and theory labels) or add them to the
registry with ``registry=``. The command line ``python -m proofs_check`` is a
thin layer over :func:`check` and :func:`replay`.
"""

from __future__ import annotations

import fnmatch
import math
import os
import platform as _platform
import time
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from icl_kd import generators, runtime
from icl_kd.claims import (ALIASES, CLAIMS, CONVENTIONS, Claim, Outcome, Registry, check_values,
                           checks, with_convention)
from proofs_check import sweep, verdicts
from proofs_check.report import ClaimResult, Report, WorstInstance

DTYPES = ("float32", "float64")


class UsageError(ValueError):
  """A bad argument of :func:`check` or :func:`replay`; ``argument`` names it."""

  def __init__(self, argument: str, message: str):
    super().__init__(f"{argument}: {message}")
    self.argument = argument
    self.message = message


def claims_spec(spec: str) -> str:
  """How a report records a ``--claims-from`` module: a file's absolute path, or the dotted name."""
  return os.path.abspath(spec) if _is_path(spec) else spec


def _is_path(spec: str) -> bool:
  return spec.endswith(".py") or os.sep in spec or (os.altsep or os.sep) in spec


def load_claims(spec: str) -> tuple[Claim, ...]:
  """The ``CLAIMS`` tuple of a module: a dotted name (imported) or the path of a .py file.

  Raises:
    UsageError: the file or module is not found, or it defines no ``CLAIMS`` tuple of
      :class:`icl_kd.claims.Claim` (errors raised by the module's own code propagate).
  """
  import importlib
  import importlib.util
  import sys
  import zlib
  if not isinstance(spec, str) or not spec:
    raise UsageError("claims_from", f"expected a module name or a .py path, got {spec!r}")
  if _is_path(spec):
    path = os.path.abspath(spec)
    if not os.path.isfile(path):
      raise UsageError("claims_from", f"no such file {path!r}")
    name = f"proofs_check_user_claims_{zlib.crc32(path.encode()):08x}"
    module = sys.modules.get(name)
    if module is None:
      loader_spec = importlib.util.spec_from_file_location(name, path)
      module = importlib.util.module_from_spec(loader_spec)
      sys.modules[name] = module
      try:
        loader_spec.loader.exec_module(module)
      except BaseException:
        del sys.modules[name]
        raise
  else:
    try:
      module = importlib.import_module(spec)
    except ModuleNotFoundError as e:
      raise UsageError("claims_from", f"cannot import {spec!r} ({e})") from None
  claims = getattr(module, "CLAIMS", None)
  if not isinstance(claims, (tuple, list)) or not claims:
    raise UsageError("claims_from", f"{spec!r} defines no CLAIMS tuple (a tuple of claims made "
                                    f"with icl_kd.claims.define), got {type(claims).__name__}")
  for c in claims:
    if not isinstance(c, Claim):
      raise UsageError("claims_from", f"{spec!r}: CLAIMS must hold icl_kd.claims.Claim objects "
                                      f"(made with icl_kd.claims.define), got "
                                      f"{type(c).__name__}: {c!r}")
  return tuple(claims)


def _registry_of(claims, registry: Registry | None) -> Registry:
  registry = CLAIMS if registry is None else registry
  items = [claims] if isinstance(claims, (str, Claim)) else list(claims)
  new = [c for c in items if isinstance(c, Claim) and registry.get(c.id) is not c]
  try:
    return registry.with_claims(new) if new else registry
  except (TypeError, ValueError) as e:
    raise UsageError("claims", str(e)) from None


def select(spec: str | Claim | Sequence[str | Claim] = "*",
           registry: dict[str, Claim] | None = None) -> list[str]:
  """Claim ids chosen by ids, globs (``thm4.1-*``), theory labels (``C5``, ``user``) or Claim
  objects (which must be in ``registry``; :func:`check` adds them), in registry order of each."""
  registry = CLAIMS if registry is None else registry
  ids = list(registry)
  theories = {c.theory.upper(): c.theory for c in registry.values()}
  if isinstance(spec, (str, Claim)):
    spec = spec.split(",") if isinstance(spec, str) else [spec]
  chosen: list[str] = []
  for item in spec:
    if isinstance(item, Claim):
      if registry.get(item.id) is not item:
        raise UsageError("claims", f"claim {item.id!r} is not in the registry; pass it to "
                                   f"proofs_check.check, which adds it")
      hits = [item.id]
    elif isinstance(item, str):
      pat = item.strip()
      if not pat:
        continue
      if pat.upper() in theories:
        hits = [i for i in ids if registry[i].theory == theories[pat.upper()]]
      elif pat in ALIASES:
        hits = [ALIASES[pat]]
      else:
        hits = [i for i in ids if fnmatch.fnmatchcase(i, pat)]
      if not hits:
        raise UsageError("claims", f"no claim matches {pat!r}; known ids: {', '.join(ids)} "
                                   f"(or a theory label: {', '.join(theories.values())})")
    else:
      raise UsageError("claims", f"expected ids, globs, theory labels or Claim objects, got "
                                 f"{type(item).__name__}: {item!r}")
    chosen += [h for h in hits if h not in chosen]
  if not chosen:
    raise UsageError("claims", "selects no claim")
  return chosen


def _dtype(name: str):
  if name not in DTYPES:
    raise UsageError("dtype", f"must be one of {DTYPES}, got {name!r}")
  if name == "float64" and not jax.config.jax_enable_x64:
    raise UsageError("dtype", "float64 needs jax_enable_x64: call "
                              "icl_kd.runtime.configure(x64=True) before any array exists")
  return jnp.float64 if name == "float64" else jnp.float32


def _check_int(name: str, value, minimum: int, *, allow_none: bool = False) -> None:
  if value is None and allow_none:
    return
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
    raise UsageError(name, f"must be an int >= {minimum}, got {value!r}")


def worst_of(check_type, values: dict) -> float:
  """The row's worst quantity (see :mod:`proofs_check.report`) from a check's values."""
  return check_type.form.worst_of(values)


def _check_manifest(checkpoint: str, manifest: dict, chosen: list[str]) -> None:
  path = os.path.join(checkpoint, "manifest.json")
  os.makedirs(checkpoint, exist_ok=True)
  if os.path.exists(path):
    old = runtime.read_json(path, flag="checkpoint")
    if any(old.get(k) != v for k, v in manifest.items() if k != "claims"):
      raise UsageError("checkpoint", f"{checkpoint} holds a run with other arguments "
                                     f"({old}); use a fresh directory")
    manifest["claims"] = sorted(set(old.get("claims", [])) | set(chosen))
  runtime.write_json(path, dict(manifest, claims=manifest.get("claims", chosen)),
                     flag="checkpoint")


def _host(tree):
  return jax.tree_util.tree_map(np.asarray, tree)


def _output_types(claim: Claim, stats: sweep.Sweep) -> tuple:
  """(check type, extras type, events type) of the claim's evaluation: as the sweep saw them,
  or, when every chunk came from a checkpoint, from tracing one instance."""
  if claim.id in stats.output_types:
    return stats.output_types[claim.id]
  out = claim.output
  return claim.check_type, type(out.extras), type(out.events)


def _evaluated(group: list[Claim], dtype, stats: sweep.Sweep, seed: int,
               generator: str) -> tuple[dict, dict]:
  """Every fixed instance the report needs, without a program per claim.

  The worst instances' checks come from the sweep itself (each chunk's reduction
  keeps its worst row: the very numbers the sweep reduced); their arrays are
  drawn by one vmapped draw per bucket. The witnesses (fixed arrays) are
  evaluated by one vmapped program per group and bucket. Returns ({claim id:
  (instance, check)}, {claim id: [checks of its witnesses]}).
  """
  head = group[0]
  worst_by_bucket: dict[int, list[tuple[str, int]]] = {}
  for c in group:
    if stats[c.id].worst_index:
      b, idx = stats[c.id].worst_index
      worst_by_bucket.setdefault(b, []).append((c.id, idx))
  worst = {}
  for b, items in sorted(worst_by_bucket.items()):
    drawn = _host(sweep.instances(head, seed, b, [idx for _, idx in items], dtype, generator))
    for j, (cid, _) in enumerate(items):
      claim = next(c for c in group if c.id == cid)
      ctype, extras_type, events_type = _output_types(claim, stats)
      check = checks.check_from_values(ctype, stats[cid].worst_values, extras_type, events_type)
      worst[cid] = ({k: v[j] for k, v in drawn.items()}, check)
  witnessed = {c.id: [None] * len(c.witnesses) for c in group}
  by_bucket: dict[int, list] = {}
  for c in group:
    for j, w in enumerate(c.witnesses):
      by_bucket.setdefault(w.bucket, []).append((c.id, j, w.instance(dtype)))
  for b, items in sorted(by_bucket.items()):
    out = sweep.evaluate_instances(group, b, dtype, [inst for _, _, inst in items])
    for (cid, j, _), checks_ in zip(items, out):
      witnessed[cid][j] = checks_[cid]
  return worst, witnessed


def _adversarial(claim: Claim, st: verdicts.Stats, seed: int, dtype, steps: int,
                 generator: str) -> dict | None:
  """The adversarial search from the sweep's worst instances, over every bucket they are in.

  ``starts`` counts them all and ``initial_max_ratio`` is their largest ratio, so the line a
  report prints agrees with its table; the best instance comes with its bucket.
  """
  from proofs_check import adversarial
  by_bucket: dict[int, list] = {}
  for _, b, idx in st.top:
    by_bucket.setdefault(int(b), []).append(int(idx))
  results = []
  for b, idxs in sorted(by_bucket.items()):
    drawn = _host(sweep.instances(claim, seed, b, idxs, dtype, generator))
    starts = [{k: jnp.asarray(v[j]) for k, v in drawn.items()} for j in range(len(idxs))]
    results.append(adversarial.search(claim, starts, b, steps=steps))
  if not results:
    return None
  best = max(results, key=lambda r: r["max_log_ratio"])
  initial = [r["initial_max_ratio"] for r in results if r["initial_max_ratio"] is not None]
  return dict(best, starts=sum(r["starts"] for r in results),
              initial_max_ratio=max(initial) if initial else None,
              buckets=sorted(by_bucket))


def _result(claim: Claim, st: verdicts.Stats, *, ctype, dtype, dtype_name: str,
            convention: str, worst, witness_checks, adversarial: dict | None) -> ClaimResult:
  form = ctype.form
  if form is checks.EventForm and claim.delta is None:
    raise ValueError(f"claim {claim.id!r} returns {ctype.__name__}, whose verdict tests an "
                     f"event rate against delta: give the claim delta= (a probability in (0, "
                     f"1)), got None")
  buckets = claim.buckets
  witnesses = tuple(
      checks.witness_result(w, float(checks.log_ratio(c)), w.closed_form(buckets[w.bucket]),
                            dtype)
      for w, c in zip(claim.witnesses, witness_checks))
  adv_log = None if adversarial is None else float(adversarial["max_log_ratio"])
  v = verdicts.decide(ctype, st, delta=claim.delta, witnesses=witnesses,
                      adversarial_log_ratio=adv_log, dtype_name=dtype_name)
  worst_inst, worst_check = None, None
  if worst is not None:
    inst, worst_check = worst
    b, idx = st.worst_index
    worst_inst = WorstInstance(b, idx, list(buckets[b]), check_values(worst_check), inst)
  out_type = worst_check if worst_check is not None else claim.output
  events_type = type(out_type.events)
  extras_type = type(out_type.extras)
  events = (events_type(**{k: st.extra_events.get(k, 0) for k in events_type._fields})
            if hasattr(events_type, "_fields") else ())
  medians = {k: float(np.median([x for x in st.extra_samples.get(k, []) if math.isfinite(x)]))
             if any(math.isfinite(x) for x in st.extra_samples.get(k, [])) else math.nan
             for k in getattr(extras_type, "_fields", ())}
  extras = extras_type(**medians) if hasattr(extras_type, "_fields") else ()
  explanation = None
  if claim.explain is not None:
    explanation = claim.explain(Outcome(st, convention, worst_check, adv_log, witnesses))
  return ClaimResult(
      id=claim.id, theory=claim.theory, kind=ctype.kind, statement=claim.statement,
      verdict=v.verdict, passed=v.passed, instances=st.count, violations=st.violations,
      out_of_range=st.out_of_range, worst=form.worst_number(st), worst_label=form.worst_label,
      worst_error=st.worst_error, min_slack=st.min_slack if form.has_slack else math.nan,
      seconds=0.0, worst_instance=worst_inst, detail=v.detail, adversarial=adversarial,
      group=claim.group_id, tests=tuple(claim.tests), figure=claim.figure, role=ctype.role.name,
      form=form.name, vacuous=st.vacuous, events=events, extras=extras, witnesses=witnesses,
      explanation=explanation)


def check(claims: str | Claim | Sequence[str | Claim] = "*", *, instances: int | None = None,
          seed: int = 0, dtype: str = "float64", chunk: int | None = None,
          checkpoint: str | None = None, adversarial: int = 0, progress: bool = False,
          convention: str = "eq12", registry: Registry | None = None,
          generator: str = generators.DEFAULT) -> Report:
  """Checks the chosen claims on many random instances; returns a typed :class:`Report`.

  Args:
    claims: ids, globs, theory labels (``C5``; ``user`` for claims made with
      :func:`icl_kd.claims.define`) or Claim objects, comma-separated or a list
      (default all of the registry). A Claim object not in the registry is added
      for this run.
    instances: instances per claim (default each claim's own; >= 1e5 for the
      paper's claims except C4's probabilistic checks).
    seed: an int; the same seed gives the same report numbers (any device count,
      chunking or resumption).
    dtype: "float64" (needs x64, see :func:`icl_kd.runtime.configure`) or "float32".
    chunk: instances per compiled batch (default each claim's own).
    checkpoint: a directory: completed chunks are saved there, and a rerun with
      the same arguments loads them (``Report.chunks_loaded``).
    adversarial: projected gradient-ascent steps on lhs/rhs for every claim of a
      ratio form that gives a projection (0: none).
    progress: a progress bar on stderr.
    convention: "eq12" (c = 2, the paper's Eq. 12; default) or "half" (c = 1) for
      the C5/C6 claims (docs/THEORY.md, C5).
    registry: the claims ids and globs select from (default :data:`icl_kd.claims.CLAIMS`;
      ``CLAIMS.with_claims(mine)`` adds yours).
    generator: the instance generator (:data:`icl_kd.generators.GENERATORS`; default the
      newest, :data:`icl_kd.generators.DEFAULT`); every report records it.
  Returns:
    A :class:`proofs_check.report.Report`; ``report.ok`` is False when a row whose
    role fails the run fails.
  Raises:
    UsageError (a ValueError): a bad argument, named; TypeError/ValueError naming the
      claim when a claim's evaluation does not return a check type.
  """
  _check_int("seed", seed, 0)
  _check_int("instances", instances, 1, allow_none=True)
  _check_int("chunk", chunk, 1, allow_none=True)
  _check_int("adversarial", adversarial, 0)
  jdtype = _dtype(dtype)
  if convention not in CONVENTIONS:
    raise UsageError("convention", f"must be one of {CONVENTIONS}, got {convention!r}")
  if generator not in generators.GENERATORS:
    raise UsageError("generator", f"must be one of {generators.GENERATORS}, got {generator!r}")
  registry = _registry_of(claims, registry)
  chosen = select(claims, registry)
  if checkpoint:
    _check_manifest(checkpoint, dict(seed=seed, dtype=dtype, instances=instances, chunk=chunk,
                                     convention=convention, format=sweep.CHECKPOINT_FORMAT,
                                     generator=generator), chosen)
  mesh = sweep.make_mesh()
  groups: dict[str, list[Claim]] = {}
  for cid in chosen:
    groups.setdefault(registry[cid].group_id, []).append(with_convention(registry[cid],
                                                                         convention))
  results: dict[str, ClaimResult] = {}
  loaded = computed = 0
  for group in groups.values():
    n = instances if instances is not None else max(c.default_instances for c in group)
    t0 = time.perf_counter()
    stats = sweep.sweep(group, instances=n, seed=seed, dtype=jdtype, dtype_name=dtype,
                        checkpoint=checkpoint, progress=progress, mesh=mesh, chunk=chunk,
                        generator=generator)
    loaded += stats.loaded_chunks
    computed += stats.computed_chunks
    worst, witnessed = _evaluated(group, jdtype, stats, seed, generator)
    shared = (time.perf_counter() - t0) / len(group)
    for claim in group:
      t1 = time.perf_counter()
      adv = None
      ctype = _output_types(claim, stats)[0]
      if adversarial and claim.project is not None and ctype.form.searchable:
        adv = _adversarial(claim, stats[claim.id], seed, jdtype, adversarial, generator)
      res = _result(claim, stats[claim.id], ctype=ctype, dtype=jdtype, dtype_name=dtype,
                    convention=convention, worst=worst.get(claim.id),
                    witness_checks=witnessed[claim.id], adversarial=adv)
      results[claim.id] = _replace(res, seconds=shared + time.perf_counter() - t1)
  results = {cid: results[cid] for cid in chosen}
  env = dict(version=_version(), generator=generator, compile_level=_compile_level(),
             jax_version=jax.__version__,
             platform=jax.devices()[0].platform, device_count=jax.device_count(),
             process_count=jax.process_count(), python=_platform.python_version(), chunk=chunk,
             checkpoint=checkpoint)
  return Report(results, seed=seed, dtype=dtype, convention=convention, instances=instances,
                adversarial_steps=adversarial, chunks_loaded=loaded, chunks_computed=computed,
                environment=env)


class CounterexampleRow(NamedTuple):
  """One analytic counterexample: computed ratio, closed form, and whether it refutes."""
  name: str
  reading: str
  convention: str
  computed_ratio: float
  closed_form_ratio: float
  agrees: bool
  status: str           # "refutes" | "tight" | "holds"


def counterexamples() -> list[CounterexampleRow]:
  """Every analytic counterexample of :mod:`icl_kd.counterexamples`: computed vs closed form."""
  from icl_kd import counterexamples as ce
  return [CounterexampleRow(c.name, c.reading, c.convention, c.computed_ratio,
                            c.closed_form_ratio, c.agrees, c.status) for c in ce.evaluate_all()]


def _replace(r: ClaimResult, **kw) -> ClaimResult:
  import dataclasses
  return dataclasses.replace(r, **kw)


def _compile_level() -> str:
  """XLA's CPU backend optimisation level the run compiled at: "default" unless XLA_FLAGS
  sets it (the CLI never does: the level changes rounding, and so report numbers)."""
  import re
  m = re.search(r"xla_backend_optimization_level=(\d+)", os.environ.get("XLA_FLAGS", ""))
  return m.group(1) if m else "default"


def _version() -> str:
  import icl_kd
  return icl_kd.__version__


# -- replay ----------------------------------------------------------------------------

class ReplayLine(NamedTuple):
  """One replayed number: saved against replayed, and whether they agree (in their units)."""
  claim: str
  label: str          # "worst" | "adversarial"
  quantity: str       # e.g. "error/tolerance", "lhs/rhs", "error"
  saved: float
  replayed: float
  agrees: bool


def _instance_arrays(claim: Claim, saved: dict, bucket_index: int, dtype, seed: int,
                     index: int | None, generator: str) -> dict:
  """The saved arrays with the sampler's shapes and dtypes (empty arrays included).

  An array the sampler draws but the report lacks (a report written before the
  sampler gained it) is regenerated from the instance's (seed, bucket, index) when
  the report gives them, after checking that every saved array equals the
  regenerated one; otherwise it is an error naming the array.
  """
  bucket = claim.buckets[bucket_index]
  like = jax.eval_shape(lambda k: claim.sample(k, bucket, dtype), jax.random.key(0))
  missing = [name for name in like if name not in saved]
  fresh = None
  if missing:
    if index is None:
      raise UsageError("report", f"the saved instance of {claim.id} lacks arrays {missing}")
    fresh = sweep.instance_of(claim, seed, bucket_index, index, dtype, generator)
  out = {}
  for name, spec in like.items():
    if name in saved:
      out[name] = jnp.asarray(np.asarray(saved[name], dtype=spec.dtype).reshape(spec.shape))
      if fresh is not None and not np.array_equal(np.asarray(out[name]), np.asarray(fresh[name])):
        raise UsageError("report", f"the saved instance of {claim.id} lacks arrays {missing}, "
                                   f"and its array {name!r} differs from instance {index} of "
                                   f"bucket {bucket_index} regenerated with seed {seed}")
    else:
      out[name] = fresh[name]
  return out


def replay(report: Report | dict | str, claims: str | Sequence[str | Claim] = "*", *,
           registry: Registry | None = None) -> list[ReplayLine]:
  """Re-evaluates the worst (and adversarial) instances saved in ``report``.

  The worst instance is rebuilt from its saved arrays (shapes from the claim's
  sampler) and evaluated again; its worst quantity is compared with the
  report's ``worst`` by the claim's check type (identities by verdict and within
  0.1 of their tolerance, ratios in log space within the rounding allowance).

  Args:
    report: a :class:`Report`, or what :meth:`Report.from_json` takes (a dict, JSON text,
      a path).
    claims: which rows (ids, globs, theory labels or Claim objects).
    registry: the claims the report's ids refer to (add a researcher's claims with
      ``CLAIMS.with_claims(...)``, or pass the Claim objects in ``claims``).
  """
  if not isinstance(report, Report):
    report = Report.from_json(report)
  dtype = _dtype(report.dtype)
  generator = report.generator
  registry = _registry_of(claims, registry)
  chosen = set(select(claims, registry)) if claims != "*" else set(registry)
  chosen |= {a for a, target in ALIASES.items() if target in chosen}
  lines: list[ReplayLine] = []
  for cid, r in report.claims.items():
    if cid not in chosen:
      continue
    if cid not in registry:
      raise UsageError("claims", f"the report's claim {cid!r} is not in the registry: pass its "
                                 f"module (--claims-from) or its Claim object")
    claim = with_convention(registry[cid], report.convention)
    ctype = claim.check_type
    form = ctype.form

    def evaluate(inst, b, claim=claim):
      return sweep.evaluate_instances([claim], b, dtype, [inst])[0][claim.id]
    if r.worst_instance is not None:
      w = r.worst_instance
      inst = _instance_arrays(claim, w.arrays, w.bucket, dtype, report.seed, w.index, generator)
      values = check_values(evaluate(inst, w.bucket))
      got = form.worst_of(values)
      lines.append(ReplayLine(cid, "worst", form.worst_label, r.worst, got,
                              form.agree(r.worst, got, report.dtype)))
      if "error" in values and "tolerance" in values:
        lines.append(ReplayLine(cid, "worst", "error", r.worst_error, values["error"],
                                form.agree(r.worst_error / values["tolerance"],
                                           values["error"] / values["tolerance"], report.dtype)))
    if r.adversarial:
      a = r.adversarial
      b = int(a["bucket"])
      inst = _instance_arrays(claim, a["instance"], b, dtype, report.seed, None, generator)
      values = check_values(evaluate(inst, b))
      got = form.worst_of(values)
      lines.append(ReplayLine(cid, "adversarial", form.worst_label, float(a["max_ratio"]), got,
                              form.agree(float(a["max_ratio"]), got, report.dtype)))
  return lines
