"""The machine's own limits, measured in the same run: matmul FLOP/s and copy bytes/s.

- Matmul: C = A B with A, B (s, s); 2 s^3 FLOPs. Measured in float32 and
  float64 (the benchmarks run in both); ``matmul_flops_per_s`` is the float32
  figure, ``matmul_flops_per_s_float64`` the other.
- Copy: x <- x + 1 in place (the input buffer donated) on a large float32
  vector; every byte is read once and written once, so 2 * 4 * len(x) bytes
  move. (A plain ``jnp.copy`` is elided by XLA; the add keeps the copy honest
  and costs nothing next to memory.) The same add into a fresh output buffer
  is reported too: on CPU it is far slower, because every call first-touches
  newly allocated pages, a cost every large fresh output of a benchmark pays.

These are attained limits of this software stack, not datasheet peaks; a
benchmark's fraction of them says how much of what the machine can actually
do a hot path uses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks import harness

NAME = "limits"


def run(*, quick: bool, seed: int) -> tuple[dict, list[harness.Row]]:
  gpu = harness.has_gpu()
  size = 8192 if gpu else (1024 if quick else 2048)
  copy_elems = (1 << 28) if gpu else ((1 << 24) if quick else (1 << 26))
  repeats = 5 if quick else 9
  key = jax.random.key(seed)
  limits, rows = {}, []
  for dtype in (jnp.float32, jnp.float64):
    a = jax.random.normal(key, (size, size), dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (size, size), dtype)
    mm = lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)
    t, _, cost = harness.time_jit(mm, a, b, repeats=repeats)
    flops = 2.0 * size ** 3
    name = jnp.dtype(dtype).name
    limits["matmul_flops_per_s" + ("" if dtype == jnp.float32 else "_float64")] = flops / t.median
    rows.append(harness.Row(NAME, f"matmul {size}^2 {name}", ours=t, flops=flops,
                            bytes=3.0 * size * size * jnp.dtype(dtype).itemsize,
                            float64=dtype == jnp.float64,
                            extra=dict(flops_per_s=flops / t.median, xla_cost=cost)))
  nbytes = 2.0 * 4 * copy_elems
  mib = copy_elems * 4 / 2**20
  t = _inplace_copy(copy_elems, repeats)
  limits["copy_bytes_per_s"] = nbytes / t.median
  rows.append(harness.Row(NAME, f"copy {mib:.0f} MiB float32 in place", ours=t, bytes=nbytes,
                          extra=dict(bytes_per_s=nbytes / t.median)))
  x = jnp.arange(copy_elems, dtype=jnp.float32)
  t, _, cost = harness.time_jit(lambda x: x + 1.0, x, repeats=repeats)
  limits["copy_fresh_output_bytes_per_s"] = nbytes / t.median
  rows.append(harness.Row(NAME, f"copy {mib:.0f} MiB float32 fresh output", ours=t, bytes=nbytes,
                          extra=dict(bytes_per_s=nbytes / t.median, xla_cost=cost)))
  return limits, rows


def _inplace_copy(elems: int, repeats: int) -> harness.Timing:
  """x <- x + 1 with x donated, so input and output share one buffer."""
  step = jax.jit(lambda x: x + 1.0, donate_argnums=0)
  state = {"x": jnp.arange(elems, dtype=jnp.float32)}

  def call():
    state["x"] = step(state["x"])
    return state["x"]

  return harness.time_call(call, repeats=repeats, warmup=2)
