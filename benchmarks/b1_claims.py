"""B1 claim checking: C1 (``thm3.1``) on 1e6 instances through ``proofs_check``.

Ours: :func:`proofs_check.sweep.sweep` on the claim ``thm3.1`` restricted to
the bucket n = 32 (N = 32 demonstrations, no prefix, the query attending to
itself: 33 context tokens), d = d_k = d_v = 8, in float32 and float64; the
same compiled path as ``python -m proofs_check``. Compile time (reported by
JAX's monitoring events) is separated from the steady state.

Baseline: a Python loop over NumPy doing the same math for one instance at a
time (sample, scores, log-sum-exp softmax, attention output, the dual form of
W_0 + dW at the query, the relative error and its tolerance), timed on a
subset and scaled linearly to the full count.

Target: ours >= 100x faster than the loop on CPU, at the default settings of
``python -m proofs_check`` on a large run (full XLA optimisation, compiled once
into the persistent cache, one device per CPU core: the "default" row, run in
a child process). The same comparison is repeated on one device in this
process, and with XLA's CPU backend optimisation level 0 (the level the test
suite compiles at; on a tenth of the instances). Each row also times the sweep with a
trivial evaluation, which gives the sampler's share of the per-instance cost
(``sampler_share``). A quick run's rows carry a caveat: their size is too
small for the ratio to mean anything.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from icl_kd import generators, runtime
from icl_kd.claims import PromptBucket

NAME = "B1"
# (N, M, d, d_k, d_v, include_query), one of thm3.1's buckets
BUCKET = PromptBucket(32, 0, 8, 8, 8, True)
TARGET = 100.0
GPU_RATE = 1e8     # on a GPU: C1 instances per second (float32)


def claim():
  """``thm3.1`` restricted to the one bucket measured here."""
  from icl_kd.claims import CLAIMS
  return dataclasses.replace(CLAIMS["thm3.1"], buckets=(BUCKET,))


def flops_per_instance(n: int = BUCKET[0] + 1, d: int = BUCKET[2], d_k: int = BUCKET[3],
                       d_v: int = BUCKET[4]) -> float:
  """Both sides of C1 for one instance of n context tokens (multiply-add = 2 FLOPs).

  Each side: keys and values 2 n d (d_k + d_v), query 2 d d_k, scores 2 n d_k,
  weighted sum 2 n d_v, and ~5 n for max/exp/sum/normalise.
  """
  side = 2 * n * d * (d_k + d_v) + 2 * d * d_k + 2 * n * d_k + 2 * n * d_v + 5 * n
  return 2.0 * side


def bytes_per_instance(itemsize: int, n: int = BUCKET[0] + 1, d: int = BUCKET[2],
                       d_k: int = BUCKET[3], d_v: int = BUCKET[4]) -> float:
  """The instance's arrays (params, context, query, tau) plus its two outputs."""
  return float(itemsize * ((2 * d_k + d_v) * d + n * d + d + 1 + 2))


# -- baseline ---------------------------------------------------------------------

def numpy_instance(rng: np.random.Generator, dtype) -> dict:
  """One C1 instance drawn like ``proofs_check.claims.sample_prompt`` (NumPy RNG)."""
  n, m, d, d_k, d_v, _ = BUCKET
  std = 1.0 / math.sqrt(d)
  w_q = (std * rng.standard_normal((d_k, d))).astype(dtype)
  w_k = (std * rng.standard_normal((d_k, d))).astype(dtype)
  w_v = (std * rng.standard_normal((d_v, d))).astype(dtype)
  demos = rng.standard_normal((n, d)).astype(dtype)
  prefix = rng.standard_normal((m, d)).astype(dtype)
  query = rng.standard_normal(d).astype(dtype)
  log10_scale = rng.uniform(-3.0, 3.0)
  tau = dtype(math.exp(rng.uniform(math.log(0.25), math.log(4.0))))
  context = np.concatenate([demos, prefix, query[None]])
  raw = (context @ w_k.T) @ (w_q @ query) / tau
  w_q = (w_q * (10.0 ** log10_scale / np.max(np.abs(raw)))).astype(dtype)
  return dict(w_q=w_q, w_k=w_k, w_v=w_v, demos=demos, prefix=prefix, query=query, tau=tau)


def numpy_check(inst: dict) -> tuple[np.ndarray, float, float]:
  """C1 for one instance in NumPy: (attention output, relative error, tolerance).

  Left side: softmax over scores s_j = <W^K x_j, W^Q x'>/tau (max subtracted)
  applied to the values. Right side: W_0 + dW in dual form at the query,
  sum_j W^V x_j exp(s_j - log D').
  """
  w_q, w_k, w_v, tau = inst["w_q"], inst["w_k"], inst["w_v"], inst["tau"]
  context = np.concatenate([inst["demos"], inst["prefix"], inst["query"][None]])  # (n, d)
  keys = context @ w_k.T                                                      # (n, d_k)
  values = context @ w_v.T                                                    # (n, d_v)
  q = w_q @ inst["query"]                                                     # (d_k,)
  s = keys @ q / tau                                                          # (n,)
  e = np.exp(s - s.max())
  p = e / e.sum()
  attention = p @ values                                                      # (d_v,)
  log_partition = s.max() + np.log(e.sum())
  reference = np.exp(keys @ q / tau - log_partition) @ values                 # (d_v,)
  mag = np.sum(p * np.linalg.norm(values, axis=-1))
  err = float(np.linalg.norm(attention - reference) / mag)
  return attention, err, _base_tolerance(context.dtype) * max(1.0, float(np.abs(s).max()) / 10.0)


@functools.lru_cache(maxsize=None)
def _base_tolerance(dtype) -> float:
  """The identity tolerance at unit score scale, from the one rule (read once, not per call)."""
  from icl_kd.tolerances import identity_tolerance
  return float(identity_tolerance(np.dtype(dtype), 0.0))


def numpy_loop(count: int, dtype, seed: int) -> dict:
  """The baseline: ``count`` instances, one at a time; returns violations and worst err/tol."""
  rng = np.random.default_rng(seed)
  violations, worst = 0, 0.0
  for _ in range(count):
    _, err, tol = numpy_check(numpy_instance(rng, dtype))
    violations += not err <= tol
    worst = max(worst, err / tol)
  return dict(count=count, violations=violations, worst_error_over_tolerance=worst)


# -- ours -------------------------------------------------------------------------

def run_ours(dtype, instances: int, seed: int, repeats: int):
  """Steady-state and wall timings of the sweep, and its merged Stats."""
  from proofs_check import sweep
  c = claim()
  name = jnp.dtype(dtype).name
  fn = lambda: sweep.sweep(c, instances=instances, seed=seed, dtype=dtype, dtype_name=name,
                           progress=False)[c.id]
  steady, wall, stats = harness.time_end_to_end(fn, repeats=repeats)
  return steady, wall, stats


def fields_read(c=None, dtype=jnp.float64, seed: int = 0) -> tuple[str, ...]:
  """The instance fields that the claim's check reads (the others are removed as dead code).

  A field is read when filling it with NaN changes the check's result. For
  ``thm3.1`` these are the parameters, tokens and temperature; the C2 group's
  ``omega`` directions are drawn by the shared sampler but not read, so the
  compiled C1 program never draws them.
  """
  from proofs_check import sweep
  c = c or claim()
  inst = sweep.instance_of(c, seed, 0, 0, dtype)
  bucket = c.buckets[0]

  evaluate = jax.jit(lambda i: jax.tree_util.tree_leaves(c.evaluate(i, bucket)))

  def result(i):                      # under jit, where non-finite inputs poison to NaN
    return np.asarray(evaluate(i), np.float64)

  clean = result(inst)
  read = []
  for name, value in inst.items():
    poisoned = dict(inst, **{name: jnp.full_like(value, jnp.nan)})
    if jnp.size(value) and not np.array_equal(result(poisoned), clean, equal_nan=True):
      read.append(name)
  return tuple(read)


def sampling_only(dtype, instances: int, seed: int) -> float:
  """Seconds per instance of the same sweep with a trivial evaluation: the sampler's share.

  The trivial evaluation sums exactly the fields the real check reads
  (:func:`fields_read`), so the program draws what the real one draws: a field
  the check ignores is dead code there and is not drawn, and summing it here
  would overstate the sampler's share.
  """
  from proofs_check import sweep

  from icl_kd.claims import IdentityCheck
  read = fields_read(dtype=dtype, seed=seed)

  def compute(inst, bucket, shared):
    del shared
    total = sum(jnp.sum(inst[k]) for k in read)
    return IdentityCheck(1e-30 * jnp.abs(total), jnp.ones_like(total))

  c = dataclasses.replace(claim(), compute=compute, prepare=lambda inst, bucket: None)
  name = jnp.dtype(dtype).name
  steady, _, _ = harness.time_end_to_end(
      lambda: sweep.sweep(c, instances=instances, seed=seed, dtype=dtype, dtype_name=name,
                          progress=False), repeats=1)
  return steady.median / instances


def agreement(dtype, seed: int, count: int = 16) -> dict:
  """ours == baseline on the same instances: NumPy re-evaluation of sweep-drawn instances.

  Returns the largest relative difference of the attention outputs (NumPy in
  float64 on the instance's values vs icl_kd in ``dtype``) and of the C1
  errors' verdicts.
  """
  import icl_kd
  from proofs_check import sweep
  c = claim()
  worst_rel, same_verdict = 0.0, True
  for i in range(count):
    inst = sweep.instance_of(c, seed, 0, i, dtype)
    np_inst = {k: np.asarray(v, np.float64) for k, v in inst.items()}
    np_inst["tau"] = float(np_inst["tau"])
    att, err, tol = numpy_check(np_inst)
    out = icl_kd.decompose(icl_kd.AttentionParams(inst["w_q"], inst["w_k"], inst["w_v"]),
                           inst["demos"], inst["prefix"], inst["query"], tau=inst["tau"])
    ours = np.asarray(out.attention, np.float64)
    worst_rel = max(worst_rel, float(np.linalg.norm(ours - att) / np.linalg.norm(att)))
    ev = c.evaluate(inst, BUCKET)
    same_verdict &= bool(float(ev.error) <= float(ev.tolerance)) == bool(err <= tol)
  return dict(max_rel_diff_attention=worst_rel, same_verdicts=same_verdict, instances=count)


def measure(dtype, *, instances: int, loop_count: int, seed: int, repeats: int) -> dict:
  steady, wall, stats = run_ours(dtype, instances, seed, repeats)
  np_dtype = np.float64 if dtype == jnp.float64 else np.float32
  loop = harness.time_call(lambda: numpy_loop(loop_count, np_dtype, seed), repeats=5, warmup=1)
  loop_result = numpy_loop(min(loop_count, 200), np_dtype, seed)
  return dict(steady=steady, wall=wall, loop=loop, loop_result=loop_result,
              stats=dict(count=stats.count, violations=stats.violations,
                         worst_error_over_tolerance=stats.worst))


QUICK_CAVEAT = ("quick run: {n:,} instances take a fraction of a second, so dispatch and "
                "per-chunk host work dominate; the ratio says nothing about the steady state "
                "(run without --quick)")


def run(*, quick: bool, seed: int) -> list[harness.Row]:
  instances = 20_000 if quick else 1_000_000
  loop_count = 200 if quick else 2_000
  repeats = 1 if quick else 2
  rows = []
  flags = os.environ.get("XLA_FLAGS", "")
  cores = os.cpu_count() or 1
  here = "opt level 0" if "optimization_level=0" in flags else "XLA default"
  # (label, extra XLA flag for a child process or None for this process, instance divisor)
  variants = [(f"{here}, 1 device", None, 1)]
  if not quick and not harness.has_gpu():
    if cores > 1:
      # the setting of ``python -m proofs_check`` on a large run: full level, a device per core
      variants.insert(0, (f"default: XLA default, {cores} devices",
                          f"--xla_force_host_platform_device_count={cores}", 1))
    # ~5x slower steady state: a tenth of the instances keeps the run short
    variants.append(("xla opt level 0, 1 device", "--xla_backend_optimization_level=0", 10))
  for dtype in (jnp.float32, jnp.float64):
    name = jnp.dtype(dtype).name
    for label, flag, div in variants:
      count = instances // div
      harness.log(f"  B1 {name} {label}: {count:,} instances")
      if flag is None:
        m = measure(dtype, instances=count, loop_count=loop_count, seed=seed, repeats=repeats)
        agree = agreement(dtype, seed)
        m["sampling_s_per_instance"] = sampling_only(dtype, max(instances // 10, 8192), seed)
      else:
        m = _child(name, flag, instances=count, loop_count=loop_count, seed=seed,
                   repeats=1 if div > 1 else repeats)
        agree = {}
      scale = count / loop_count
      ratio = m["steady"].median / (m["loop"].median * scale)
      itemsize = jnp.dtype(dtype).itemsize
      sampler = m.get("sampling_s_per_instance", math.nan)
      per = m["steady"].median / count
      extra = dict(instances=count, loop_instances_timed=loop_count,
                   instances_per_s=count / m["steady"].median,
                   wall_including_compile=m["wall"].to_json(),
                   ratio_wall_including_compile=m["wall"].median / (m["loop"].median * scale),
                   sweep=m["stats"], loop=m["loop_result"], agreement=agree,
                   us_per_instance=1e6 * per,
                   loop_us_per_instance=1e6 * m["loop"].median / loop_count,
                   sampler_us_per_instance=1e6 * sampler,
                   sampler_share=sampler / per if math.isfinite(sampler) else math.nan,
                   devices=m.get("devices", 1), generator=generators.DEFAULT,
                   xla_flags=flag or flags)
      case = f"C1 {count:.0e} inst n=33 d=8 {name} [{label}]"
      judged = label.startswith("default") or len(variants) == 1
      if harness.has_gpu():        # on a GPU: C1 instances per second, float32
        judged = judged and dtype == jnp.float32
        target = f">={GPU_RATE:.0e} instances/s" if judged else "-"
        met = (count / m["steady"].median >= GPU_RATE) if judged and not quick else None
      else:
        target = ">=100x" if judged else "-"
        met = (1.0 / ratio >= TARGET) if judged else None
      note = ""
      if quick:
        extra["caveat"] = note = QUICK_CAVEAT.format(n=count)
        case += " (quick: too small to mean anything)"
      rows.append(harness.Row(
          NAME, case, why=f"speed-up {1 / ratio:.3g}x vs the NumPy loop", note=note,
          ours=m["steady"], baseline=m["loop"], baseline_name="NumPy loop",
          scaled=scale, flops=flops_per_instance() * count,
          bytes=bytes_per_instance(itemsize) * count,
          target=target, met=met, float64=dtype == jnp.float64, extra=extra))
  return rows


def _child(dtype_name: str, flag: str, **kw) -> dict:
  """Runs :func:`measure` in a fresh process whose XLA_FLAGS include ``flag``."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag).strip()
  args = [sys.executable, "-m", "benchmarks.b1_claims", dtype_name, json.dumps(kw)]
  out = subprocess.run(args, env=env, check=True, capture_output=True, text=True,
                       cwd=harness.ROOT)
  data = json.loads(out.stdout.strip().splitlines()[-1])
  for k in ("steady", "wall", "loop"):
    data[k] = harness.Timing(**data[k])
  data["sampling_s_per_instance"] = float(data.get("sampling_s_per_instance", math.nan))
  return data


def _child_main(dtype_name: str, kw: str) -> None:
  runtime.configure(x64=True, fast_compile="off")   # XLA_FLAGS come from the parent
  dtype = jnp.float64 if dtype_name == "float64" else jnp.float32
  kw = json.loads(kw)
  m = measure(dtype, **kw)
  m["devices"] = jax.device_count()
  if jax.device_count() > 1:
    m["sampling_s_per_instance"] = sampling_only(dtype, max(kw["instances"] // 10, 8192),
                                                 kw["seed"])
  for k in ("steady", "wall", "loop"):
    m[k] = dataclasses.asdict(m[k])
  print(json.dumps(runtime.jsonable(m), allow_nan=False))


if __name__ == "__main__":
  _child_main(sys.argv[1], sys.argv[2])
