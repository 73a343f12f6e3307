"""What several test files share (no code under test).

- Instance builders: the prompt and the tolerance are the claims layer's own
  (``icl_kd.claims``): one definition for the checker, the figures and the tests.
- ``np_mmd2``: MMD^2 from scratch in NumPy, the reference the MMD estimators, the
  selection rules and the chain are compared with.
- The code blocks of the README and of the documentation site: parsed from
  markdown (with their ``docs-test: skip`` markers) and run in fresh processes
  (``tests/test_readme.py``, ``tests/test_docs.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from icl_kd import claims


def make_instance(seed, n: int, m: int, d: int, d_k: int, d_v: int, dtype, log10_scale=0.0):
  """A random prompt whose largest |score| is 10**log10_scale (query attending to itself).

  ``seed`` and ``log10_scale`` may be traced (this is vmapped and jitted).
  """
  target = jnp.asarray(10.0, dtype) ** jnp.asarray(log10_scale, dtype)
  p = claims.scaled_prompt(jax.random.key(seed), (n, m, d, d_k, d_v), dtype, max_abs_score=target)
  return p.params, p.demos, p.prefix, p.query


c1_tolerance = claims.identity_tolerance   # docs/THEORY.md, C1


def np_mmd2(x, y, gram, estimator):
  """MMD^2 from scratch: the V-statistic ("biased"), or the U-statistic (diagonals left out).

  ``gram(a, b)`` is the kernel matrix; with one point on the x side the x-x term is 0.
  """
  kxx, kyy, kxy = gram(x, x), gram(y, y), gram(x, y)
  n, m = len(x), len(y)
  if estimator == "biased":
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()
  wxx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) if n > 1 else 0.0
  return wxx + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()


# -- code blocks of the README and the documentation site ------------------------------------

import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from typing import NamedTuple  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A fenced block, possibly indented (inside a list item): its language and body.
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.MULTILINE | re.DOTALL)
# A block the documentation shows but the tests do not run says why, just above its fence:
#   <!-- docs-test: skip (the full run: minutes) -->
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<why>[^)\n]*[^)\s][^)\n]*)\)\s*-->[ \t]*\n[ \t]*\Z")


class Block(NamedTuple):
  lang: str          # the fence's language: python, bash, text, ...
  body: str          # the code, dedented to the fence's indentation
  skip: str | None   # why it is not run (a docs-test skip marker above it), or None
  line: int          # 1-based line of the fence in its file


def code_blocks(text: str) -> list[Block]:
  """Every fenced block of a markdown text, in order."""
  out = []
  for m in FENCE.finditer(text):
    indent = m.group("indent")
    body = "".join(ln[len(indent):] if ln.startswith(indent) else ln
                   for ln in m.group("body").splitlines(keepends=True))
    skip = SKIP.search(text[:m.start()])
    out.append(Block(m.group("lang").strip(), body, skip.group("why") if skip else None,
                     text.count("\n", 0, m.start()) + 1))
  return out


def python_blocks(text: str) -> list[str]:
  """The bodies of the ```python blocks, in order."""
  return [b.body for b in code_blocks(text) if b.lang == "python"]


SETS_X64 = re.compile(r"jax_enable_x64\",\s*True|configure\([^)]*x64=True")
API_EXAMPLE = re.compile(r"icl_kd\.decompose\(|bounds\.distillation_bias\(")


def x64_settings(block: str) -> tuple[str, ...]:
  """("1",) for a block that turns x64 on itself; ("0", "1") for the API examples (their
  dtypes follow x64: both must run); ("0",) for the others, as a new user runs them."""
  if SETS_X64.search(block):
    return ("1",)
  return ("0", "1") if API_EXAMPLE.search(block) else ("0",)


def start_block(lang: str, body: str, x64: str = "0") -> subprocess.Popen:
  """Runs a python or bash block in a fresh process from the repository root (not waited on)."""
  env = {**os.environ, "JAX_ENABLE_X64": x64, "PYTHONPATH": ROOT, "MPLBACKEND": "Agg"}
  cmd = ([sys.executable, "-c", body] if lang == "python" else
         ["bash", "-euo", "pipefail", "-c", body])
  if lang == "bash":   # ``python`` in a block is this interpreter
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def finish(procs: dict, timeout: float = 600) -> dict:
  """{key: (returncode, stdout, stderr)} of started blocks."""
  done = {}
  for run, p in procs.items():
    out, err = p.communicate(timeout=timeout)
    done[run] = (p.returncode, out, err)
  return done
