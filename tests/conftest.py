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

import sys  # noqa: E402

import jax  # noqa: E402

# Shapes in the signatures are checked on every call the suite makes: jaxtyping's import
# hook decorates every function and dataclass of icl_kd with its annotations checked by
# beartype, the library's own refusals first (tests/typecheck.py says how and why). It must
# be installed before icl_kd is first imported. ICL_KD_TYPECHECK=0 runs without it.
if os.environ.get("ICL_KD_TYPECHECK", "1") != "0":
  assert "icl_kd" not in sys.modules, "icl_kd was imported before the type-check hook"
  from jaxtyping import install_import_hook  # noqa: E402

  import tests.typecheck  # noqa: E402,F401  (the hook names it by its dotted path)
  install_import_hook("icl_kd", "tests.typecheck.library_first")

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


def pytest_configure(config):
  # beartype's advice to write list[...] for typing.List[...] concerns style, not correctness
  if os.environ.get("ICL_KD_TYPECHECK", "1") != "0":
    config.addinivalue_line(
        "filterwarnings", "ignore::beartype.roar.BeartypeDecorHintPep585DeprecationWarning")
