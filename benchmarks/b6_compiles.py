"""B6 compile count of the test suite's jitted property checks vs the number of shape buckets.

The Hypothesis property test of claim C1 (``tests/test_attention.py``,
``test_c1_attention_equals_reference``) draws shapes and dtypes from a fixed
list of buckets and calls the module-level jitted ``c1_batch``. Here, in a
fresh process configured like ``tests/conftest.py`` (x64, rank promotion
raises, the ``ci`` Hypothesis profile):

1. the property test runs with its own examples; every call of ``c1_batch``
   is recorded with its static arguments (the bucket), and the XLA
   compilations of ``c1_batch`` are counted;
2. ``c1_batch`` is then driven over every reachable bucket three times with
   fresh values (quick mode: only over the buckets the property test drew,
   and the property test uses the ``dev`` profile).

The child compiles with XLA's CPU backend optimisation level 0 (as the test
suite does, ``tests/conftest.py``): the count does not depend on it, the time
spent compiling does.

Target: compilations <= distinct buckets in both (one compile per bucket,
never one per example).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys

NAME = "B6"
# The child imports nothing of icl_kd before tests/conftest.py has installed the suite's
# type-check hook, so this module reaches the harness (which imports icl_kd) only in run().
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*, quick: bool, seed: int) -> list:
  from benchmarks import harness
  env = dict(os.environ, HYPOTHESIS_PROFILE="dev" if quick else "ci")
  if not harness.has_gpu() and "xla_backend_optimization_level" not in env.get("XLA_FLAGS", ""):
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
  proc = subprocess.run([sys.executable, "-m", "benchmarks.b6_compiles", str(seed),
                         "quick" if quick else "full"], cwd=ROOT,
                        env=env, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"B6 child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  res = json.loads(proc.stdout.strip().splitlines()[-1])
  rows = []
  for phase in ("property_test", "all_buckets"):
    r = res[phase]
    ok = r["compiles"] <= r["buckets"]
    rows.append(harness.Row(NAME, f"c1_batch {phase.replace('_', ' ')}: {r['calls']} calls",
                            target="compiles <= buckets", met=ok,
                            why=f"{r['compiles']} compiles for {r['buckets']} buckets",
                            extra=dict(compiles=r["compiles"], buckets=r["buckets"],
                                       calls=r["calls"], cache_size=r["cache_size"],
                                       max_traces=res["max_traces"])))
  return rows


class _CompileCounter(logging.Handler):
  """Counts JAX's "Compiling <name> ..." log records whose module name contains ``name``."""

  def __init__(self, name: str):
    super().__init__(logging.DEBUG)
    self.name, self.count = name, 0

  def emit(self, record: logging.LogRecord) -> None:
    if record.msg.startswith("Compiling ") and record.args and self.name in str(record.args[0]):
      self.count += 1


@contextlib.contextmanager
def count_compiles(name: str):
  """``jax.log_compiles`` with a handler counting the compilations of functions called ``name``."""
  import jax
  logger = logging.getLogger("jax._src.interpreters.pxla")
  counter = _CompileCounter(name)
  logger.addHandler(counter)
  try:
    with jax.log_compiles(True):
      yield counter
  finally:
    logger.removeHandler(counter)


def _child(seed: int, quick: bool) -> None:
  sys.path.insert(0, ROOT)
  # The suite's configuration, first: x64, rank promotion raises, the Hypothesis profiles,
  # and (unless ICL_KD_TYPECHECK=0) the type-check hook, which must precede icl_kd's import.
  import tests.conftest  # noqa: F401
  import jax
  from icl_kd import runtime
  runtime.configure(x64=True, fast_compile="off")   # like tests/conftest.py; flags from the parent
  jax.config.update("jax_numpy_rank_promotion", "raise")
  import jax.numpy as jnp
  from tests import test_attention as ta

  jitted = ta.c1_batch
  calls: list[tuple] = []

  def recording(seeds, scales, shape, dtype, include_query):
    calls.append((shape, jnp.dtype(dtype).name, include_query))
    return jitted(seeds, scales, shape, dtype, include_query)

  out = {"max_traces": ta.MAX_TRACES}
  ta.c1_batch = recording
  try:
    with count_compiles("c1_batch") as log:
      ta.test_c1_attention_equals_reference()
  finally:
    ta.c1_batch = jitted
  out["property_test"] = dict(calls=len(calls), buckets=len(set(calls)),
                              compiles=log.count, cache_size=jitted._cache_size())
  if quick:
    buckets = set(calls)
  else:
    buckets = {(s, jnp.dtype(d).name, q if s[1] > 0 else True)
               for s in ta.SHAPES for d in ta.DTYPES for q in (True, False)}
  by_name = {jnp.dtype(d).name: d for d in ta.DTYPES}  # the test's own static dtype objects
  before = jitted._cache_size()
  n_calls = 0
  with count_compiles("c1_batch") as log:
    for rep in range(3):
      for shape, dtype, q in sorted(buckets, key=repr):
        seeds = jnp.arange(ta.BATCH) + 1000 * rep + seed
        scales = jnp.linspace(-1.0 + rep, 3.0, ta.BATCH)
        jax.block_until_ready(jitted(seeds, scales, shape, by_name[dtype], q))
        n_calls += 1
  new_entries = jitted._cache_size() - before
  out["all_buckets"] = dict(calls=n_calls, buckets=len(buckets),
                            compiles=out["property_test"]["compiles"] + log.count,
                            cache_size=jitted._cache_size(), new_cache_entries=new_entries)
  print(json.dumps(out))


if __name__ == "__main__":
  _child(int(sys.argv[1]) if len(sys.argv) > 1 else 0,
         len(sys.argv) > 2 and sys.argv[2] == "quick")
