"""Test configuration, set once before any array exists.

float64 is enabled so that identities can be checked to ~1e-12; float32 paths
are exercised by creating float32 arrays explicitly. Rank promotion raises, so
an accidental broadcast is a test failure.

Hypothesis profiles (select with HYPOTHESIS_PROFILE=dev|ci|nightly; ci is the
default and is derandomized, so every run draws the same examples):
  dev      few examples, for editing loops;
  ci       the built-in ci profile, derandomized, deadline=None;
  nightly  many examples, randomized.
"""

import os

# The suite compiles many small programs whose run time is tiny: XLA's backend
# optimisation level 0 compiles them several times faster (the CLI does the
# same on CPU). Set before JAX initialises its backend; a user's own XLA_FLAGS
# setting of the level wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_backend_optimization_level=0").strip()
# The run has one xdist worker per core: each worker (and each subprocess it starts)
# runs XLA's Eigen kernels on its own thread, instead of every process spreading its
# small programs over every core and the processes contending for them.
if "xla_cpu_multi_thread_eigen" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_cpu_multi_thread_eigen=false"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

from hypothesis import HealthCheck, settings  # noqa: E402

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=8, derandomize=True, **_COMMON)
settings.register_profile("ci", settings.get_profile("ci"), max_examples=25, derandomize=True,
                          print_blob=True, **_COMMON)
settings.register_profile("nightly", max_examples=1000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
