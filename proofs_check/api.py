"""``proofs_check.check``: every claim of docs/THEORY.md checked at scale, from Python.

    import icl_kd.runtime, proofs_check
    icl_kd.runtime.configure(x64=True)            # float64 needs x64, set before any array
    report = proofs_check.check("C5", instances=20_000, seed=0)
    report.ok, report.claims["thm4.1-bound"].worst, report.to_json()

The command line ``python -m proofs_check`` is a thin layer over :func:`check`
and :func:`replay`.
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

from icl_kd import runtime
from icl_kd.claims import (ALIASES, CLAIMS, CONVENTIONS, THEORY_NUMBERS, Claim, check_values,
                           convention_factor, with_convention)
from proofs_check import sweep, verdicts
from proofs_check.report import WORST_LABELS, ClaimResult, Report, WorstInstance

DTYPES = ("float32", "float64")


def select(spec: str | Sequence[str] = "*", registry: dict[str, Claim] | None = None) -> list[str]:
  """Claim ids chosen by ids, globs (``thm4.1-*``) or theory numbers (``C5``), comma-separated."""
  registry = CLAIMS if registry is None else registry
  ids = list(registry)
  pats = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
  chosen: list[str] = []
  for pat in pats:
    if pat.upper() in THEORY_NUMBERS:
      hits = [i for i in ids if registry[i].theory == pat.upper()]
    elif pat in ALIASES:
      hits = [ALIASES[pat]]
    else:
      hits = [i for i in ids if fnmatch.fnmatchcase(i, pat)]
    if not hits:
      raise ValueError(f"--claims: no claim matches {pat!r}; known ids: {', '.join(ids)} "
                       f"(or a theory number C1..C7)")
    chosen += [h for h in hits if h not in chosen]
  if not chosen:
    raise ValueError("--claims selects no claim")
  return chosen


def _dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f"--dtype must be one of {DTYPES}, got {name!r}")
  if name == "float64" and not jax.config.jax_enable_x64:
    raise ValueError("--dtype float64 needs jax_enable_x64: call "
                     "icl_kd.runtime.configure(x64=True) before any array exists")
  return jnp.float64 if name == "float64" else jnp.float32


def worst_of(kind: str, values: dict) -> float:
  """The row's worst quantity (see :mod:`proofs_check.report`) from a check's values."""
  if kind == "identity":
    return values["error"] / values["tolerance"] if values["tolerance"] > 0 else math.nan
  if kind == "measurement":
    return values["value"]
  with np.errstate(all="ignore"):
    return float(np.exp(np.minimum(np.float64(values["log_lhs"]) - values["log_rhs"],
                                   verdicts.LOG_CAP)))


def _evaluate(claim: Claim, inst: dict, bucket) -> dict:
  return check_values(jax.jit(claim.evaluate, static_argnums=1)(inst, bucket))


def _check_manifest(checkpoint: str, manifest: dict, chosen: list[str]) -> None:
  path = os.path.join(checkpoint, "manifest.json")
  os.makedirs(checkpoint, exist_ok=True)
  if os.path.exists(path):
    old = runtime.read_json(path, flag="--checkpoint")
    if any(old.get(k) != v for k, v in manifest.items() if k != "claims"):
      raise ValueError(f"--checkpoint {checkpoint} holds a run with other arguments "
                       f"({old}); use a fresh directory")
    manifest["claims"] = sorted(set(old.get("claims", [])) | set(chosen))
  runtime.write_json(path, dict(manifest, claims=manifest.get("claims", chosen)),
                     flag="--checkpoint")


def _result(claim: Claim, st: verdicts.Stats, seed: int, dtype, seconds: float) -> ClaimResult:
  v = verdicts.decide(claim.kind, st, delta=claim.delta)
  worst_inst = None
  if st.worst_index:
    b, idx = st.worst_index
    inst = sweep.instance_of(claim, seed, b, idx, dtype)
    worst_inst = WorstInstance(b, idx, list(claim.buckets[b]),
                               _evaluate(claim, inst, claim.buckets[b]),
                               {k: np.asarray(a) for k, a in inst.items()})
  if claim.kind == "identity" or claim.kind == "measurement":
    worst = st.worst if st.worst_index else math.nan
  else:
    worst = math.exp(min(st.worst, verdicts.LOG_CAP)) if st.worst_index else math.nan
  return ClaimResult(
      id=claim.id, theory=claim.theory, kind=claim.kind, statement=claim.statement,
      verdict=v.verdict, passed=v.passed, instances=st.count, violations=st.violations,
      out_of_range=st.out_of_range, worst=worst, worst_label=WORST_LABELS[claim.kind],
      worst_error=st.worst_error if claim.kind == "identity" else math.nan,
      min_slack=st.min_slack if claim.kind not in ("identity", "measurement") else math.nan,
      seconds=seconds, worst_instance=worst_inst, detail=v.detail, group=claim.group_id,
      tests=tuple(claim.tests), figure=claim.figure)


def _adversarial(claim: Claim, st: verdicts.Stats, seed: int, dtype, steps: int) -> dict | None:
  """The adversarial search from the sweep's worst instances, bucket by bucket."""
  from proofs_check import adversarial
  best = None
  by_bucket: dict[int, list] = {}
  for _, b, idx in st.top:
    by_bucket.setdefault(int(b), []).append(int(idx))
  for b, idxs in sorted(by_bucket.items()):
    starts = [sweep.instance_of(claim, seed, b, i, dtype) for i in idxs]
    res = adversarial.search(claim, starts, b, steps=steps)
    if best is None or res["max_ratio"] > best["max_ratio"]:
      best = res
  return best


def check(claims: str | Sequence[str] = "*", *, instances: int | None = None, seed: int = 0,
          dtype: str = "float64", chunk: int | None = None, checkpoint: str | None = None,
          adversarial: int = 0, progress: bool = False, convention: str = "eq12") -> Report:
  """Checks the chosen claims on many random instances; returns a typed :class:`Report`.

  Args:
    claims: ids, globs or theory numbers, comma-separated or a list (default all).
    instances: instances per claim (default each claim's own; >= 1e5 except C4's
      probabilistic checks).
    seed: the same seed gives the same report numbers (any device count, chunking
      or resumption).
    dtype: "float64" (needs x64, see :func:`icl_kd.runtime.configure`) or "float32".
    chunk: instances per compiled batch (default each claim's own).
    checkpoint: a directory: completed chunks are saved there, and a rerun with
      the same arguments loads them (``Report.chunks_loaded``).
    adversarial: projected gradient-ascent steps on lhs/rhs for every bound and
      conjecture that admits it (0: none).
    progress: a progress bar on stderr.
    convention: "eq12" (c = 2, the paper's Eq. 12; default) or "half" (c = 1) for
      the C5/C6 claims (docs/THEORY.md, C5).
  Returns:
    A :class:`proofs_check.report.Report`; ``report.ok`` is False when a
    non-conjecture claim fails.
  """
  if instances is not None and (not isinstance(instances, int) or instances < 1):
    raise ValueError(f"--instances must be an int >= 1, got {instances!r}")
  if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
    raise ValueError(f"--chunk must be an int >= 1, got {chunk!r}")
  if not isinstance(adversarial, int) or adversarial < 0:
    raise ValueError(f"--adversarial must be an int >= 0, got {adversarial!r}")
  jdtype = _dtype(dtype)
  if convention not in CONVENTIONS:
    raise ValueError(f"--convention must be one of {CONVENTIONS}, got {convention!r}")
  chosen = select(claims)
  if checkpoint:
    _check_manifest(checkpoint, dict(seed=seed, dtype=dtype, instances=instances, chunk=chunk,
                                     convention=convention, format=sweep.CHECKPOINT_FORMAT),
                    chosen)
  mesh = sweep.make_mesh()
  groups: dict[str, list[Claim]] = {}
  for cid in chosen:
    groups.setdefault(CLAIMS[cid].group_id, []).append(with_convention(CLAIMS[cid], convention))
  results: dict[str, ClaimResult] = {}
  loaded = computed = 0
  for group in groups.values():
    n = instances if instances is not None else max(c.default_instances for c in group)
    t0 = time.perf_counter()
    stats = sweep.sweep(group, instances=n, seed=seed, dtype=jdtype, dtype_name=dtype,
                        checkpoint=checkpoint, progress=progress, mesh=mesh, chunk=chunk)
    loaded += stats.loaded_chunks
    computed += stats.computed_chunks
    shared = (time.perf_counter() - t0) / len(group)
    for claim in group:
      t1 = time.perf_counter()
      res = _result(claim, stats[claim.id], seed, jdtype, 0.0)
      if adversarial and claim.project is not None and claim.kind in ("bound", "conjecture",
                                                                       "consistency"):
        adv = _adversarial(claim, stats[claim.id], seed, jdtype, adversarial)
        verdict, passed = res.verdict, res.passed
        if adv is not None and claim.kind in ("bound", "consistency") and \
            adv["max_ratio"] > 1.0 + verdicts.float_slack(dtype):
          verdict, passed = "FAILS (adversarial)", False
        elif adv is not None and claim.kind == "conjecture" and adv["max_ratio"] > 1.0:
          verdict = "violated (adversarial)"
        res = _replace(res, adversarial=adv, verdict=verdict, passed=passed)
      results[claim.id] = _replace(res, seconds=shared + time.perf_counter() - t1)
  results = {cid: results[cid] for cid in chosen}
  env = dict(version=_version(), jax_version=jax.__version__,
             platform=jax.devices()[0].platform, device_count=jax.device_count(),
             process_count=jax.process_count(), python=_platform.python_version(), chunk=chunk,
             checkpoint=checkpoint)
  return Report(results, seed=seed, dtype=dtype, convention=convention, instances=instances,
                adversarial_steps=adversarial, chunks_loaded=loaded, chunks_computed=computed,
                environment=env, attribution=attribution(results, convention))


CLOSED_FORM_WORST = {
    "thm4.1-literal-gaussian": "unbounded: 2c/sqrt(2 - 2k(a, -a)) >= c sqrt(2), grows with the "
                               "bandwidth (d = 1 point masses)",
    "thm4.1-literal-softmax": "unbounded: MMD = 0 with dW != 0 when W^K has a null space",
    "thm4.1-literal-normalised": "c (2 under eq12, attained; holds under half)",
    "thm4.1-literal-tv": "c (2 under eq12; holds under half)",
}


def attribution(results: dict, convention: str) -> dict:
  """Per literal reading: violation rate and largest ratio under both conventions.

  The literal right sides carry no c while the left side does, so a ratio under
  c' is the ratio under c times c'/c; violations under each convention are
  counted per instance (the checks' ``events``). ``share_vanishing_under_half``
  is the share of the eq12 violations that are not violations under half: the
  part of the failures due to the factor c; the rest is due to the kernel.
  Rates depend on the sampler (docs/THEORY.md, C5).
  """
  c = convention_factor(convention)
  out = {}
  for cid, r in results.items():
    ev = r.detail
    if r.kind == "conjecture" and "events_query_beyond_m_phi" in ev:
      out[cid] = _query_feature_attribution(r)
      continue
    if r.kind != "conjecture" or "events_violated_eq12" not in ev:
      continue
    n = max(r.instances - r.out_of_range, 1)
    v12, vh = ev["events_violated_eq12"], ev["events_violated_half"]
    entry = dict(instances=r.instances, violations_eq12=v12, violations_half=vh,
                 rate_eq12=v12 / n, rate_half=vh / n,
                 max_ratio_eq12=r.worst * 2.0 / c, max_ratio_half=r.worst / c,
                 share_vanishing_under_half=(v12 - vh) / v12 if v12 else math.nan,
                 closed_form_worst=CLOSED_FORM_WORST.get(cid, ""),
                 note="rates depend on the sampler (P: unit ball; Q: shifted, scaled ball)")
    if r.adversarial:
      m = float(r.adversarial["max_ratio"])
      entry.update(adversarial_max_ratio_eq12=m * 2.0 / c, adversarial_max_ratio_half=m / c)
    out[cid] = entry
  return out


def _query_feature_attribution(r) -> dict:
  """``thm4.2-literal``: its ratio is ``thm4.2-mmd``'s times ||phi(z)|| / M_phi (docs/THEORY.md C6).

  Counts the instances whose query feature exceeds M_phi (the only way the
  literal form can fail while the proved bound holds) and splits the worst
  instance's log ratio into its two parts.
  """
  n = max(r.instances - r.out_of_range, 1)
  beyond = r.detail["events_query_beyond_m_phi"]
  extras = (r.worst_instance.values.get("extras", {}) if r.worst_instance else {})
  return dict(instances=r.instances, violations=r.violations, rate=r.violations / n,
              query_beyond_m_phi=beyond, rate_query_beyond_m_phi=beyond / n,
              max_ratio=r.worst,
              worst_log_mmd_ratio=extras.get("log_mmd_ratio", math.nan),
              worst_log_query_over_m_phi=extras.get("log_query_over_m_phi", math.nan),
              note="ratio = thm4.2-mmd's ratio x ||phi(W^Q x')|| / M_phi; M_phi bounds the key "
                   "features only, so a query feature beyond it is what a violation needs")


class CounterexampleRow(NamedTuple):
  name: str
  reading: str
  convention: str
  computed_ratio: float
  closed_form_ratio: float
  agrees: bool


def counterexamples() -> list[CounterexampleRow]:
  """Every analytic counterexample of :mod:`icl_kd.counterexamples`: computed vs closed form."""
  from icl_kd import counterexamples as ce
  return [CounterexampleRow(c.name, c.reading, c.convention, c.computed_ratio,
                            c.closed_form_ratio, c.agrees) for c in ce.evaluate_all()]


def _replace(r: ClaimResult, **kw) -> ClaimResult:
  import dataclasses
  return dataclasses.replace(r, **kw)


def _version() -> str:
  import icl_kd
  return icl_kd.__version__


# -- replay ----------------------------------------------------------------------------

class ReplayLine(NamedTuple):
  """One replayed number: saved against replayed, and whether they agree (in their units)."""
  claim: str
  label: str          # "worst" | "adversarial"
  quantity: str       # e.g. "error/tolerance", "lhs/rhs", "log_lhs"
  saved: float
  replayed: float
  agrees: bool


def _instance_arrays(claim: Claim, saved: dict, bucket, dtype) -> dict:
  """The saved arrays with the sampler's shapes and dtypes (empty arrays included)."""
  like = jax.eval_shape(lambda k: claim.sample(k, bucket, dtype), jax.random.key(0))
  out = {}
  for name, spec in like.items():
    if name not in saved:
      raise ValueError(f"--replay: the saved instance of {claim.id} lacks array {name!r}")
    out[name] = jnp.asarray(np.asarray(saved[name], dtype=spec.dtype).reshape(spec.shape))
  return out


def _agree(kind: str, saved: float, got: float, dtype_name: str) -> bool:
  """Identities: same verdict and within 0.1 tolerance; ratios: log within float slack."""
  if math.isnan(saved) or math.isnan(got):
    return math.isnan(saved) and math.isnan(got)
  if saved == got:
    return True
  if kind == "identity":                       # numbers in units of the tolerance
    return (saved <= 1.0) == (got <= 1.0) and abs(saved - got) <= 0.1
  if kind == "measurement":
    return abs(saved - got) <= 1e3 * verdicts.float_slack(dtype_name) * abs(saved)
  if saved <= 0 or got <= 0 or math.isinf(saved) or math.isinf(got):
    return False
  return abs(math.log(got) - math.log(saved)) <= verdicts.float_slack(dtype_name)


def replay(report: Report, claims: str | Sequence[str] = "*") -> list[ReplayLine]:
  """Re-evaluates the worst (and adversarial) instances saved in ``report``.

  The worst instance is regenerated from its saved arrays (shapes from the
  claim's sampler) and evaluated again; its worst quantity (error/tolerance for
  identities, lhs/rhs for ratios, the value for measurements) is compared with
  the report's ``worst``: identities by verdict and within 0.1 of their tolerance
  (not by a relative error on a rounding-level number), ratios in log space within
  the dtype's rounding allowance.
  """
  dtype = _dtype(report.dtype)
  chosen = set(select(claims)) if claims != "*" else set(CLAIMS)
  chosen |= {a for a, target in ALIASES.items() if target in chosen}
  lines: list[ReplayLine] = []
  for cid, r in report.claims.items():
    if cid not in chosen or cid not in CLAIMS:
      continue
    claim = with_convention(CLAIMS[cid], report.convention)
    if r.worst_instance is not None:
      w = r.worst_instance
      bucket = claim.buckets[w.bucket]
      values = _evaluate(claim, _instance_arrays(claim, w.arrays, bucket, dtype), bucket)
      got = worst_of(claim.kind, values)
      lines.append(ReplayLine(cid, "worst", r.worst_label, r.worst, got,
                              _agree(claim.kind, r.worst, got, report.dtype)))
      if claim.kind == "identity":
        lines.append(ReplayLine(cid, "worst", "error", r.worst_error, values["error"],
                                _agree("identity", r.worst_error / values["tolerance"],
                                       values["error"] / values["tolerance"], report.dtype)))
    if r.adversarial:
      a = r.adversarial
      bucket = claim.buckets[int(a["bucket"])]
      values = _evaluate(claim, _instance_arrays(claim, a["instance"], bucket, dtype), bucket)
      got = worst_of(claim.kind, values)
      lines.append(ReplayLine(cid, "adversarial", "lhs/rhs", float(a["max_ratio"]), got,
                              _agree(claim.kind, float(a["max_ratio"]), got, report.dtype)))
  return lines
