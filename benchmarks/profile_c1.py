"""Where C1's time goes: sampling vs evaluation, Threefry bits vs the sweep's counter hash.

    python -m benchmarks.profile_c1

Times the compiled chunk program of :func:`proofs_check.sweep` on 65,536
instances of ``thm3.1``'s bucket N = 32, d = 8 (1 device), once with the real
evaluation and once with a trivial one that only sums the sampled arrays the
real check reads (the sampling share; :func:`benchmarks.b1_claims.fields_read`),
for keys of JAX's default Threefry and of the sweep's generator (:mod:`proofs_check.rng`), in float32 and float64. Prints CPU
microseconds per instance (process time: less sensitive to other jobs than
the wall clock, best of 3).
"""

from __future__ import annotations

import dataclasses
import time
import zlib

import jax
import jax.numpy as jnp


def main(instances: int = 65_536) -> None:
  jax.config.update("jax_enable_x64", True)
  from icl_kd.claims import CLAIMS, IdentityCheck, PromptBucket
  from proofs_check import rng, sweep
  c = dataclasses.replace(CLAIMS["thm3.1"], buckets=(PromptBucket(32, 0, 8, 8, 8, True),))

  from benchmarks.b1_claims import fields_read
  read = fields_read(c)       # the fields the real check reads; the others are never drawn

  def trivial(inst, bucket, shared):
    total = sum(jnp.sum(inst[k]) for k in read)
    return IdentityCheck(1e-30 * jnp.abs(total), jnp.ones_like(total))

  sampling = dataclasses.replace(c, compute=trivial, prepare=lambda inst, bucket: None)
  for gen, make in (("threefry", jax.random.key), ("counter-hash", rng.key)):
    for dt in (jnp.float32, jnp.float64):
      us = {}
      for name, cl in (("total", c), ("sampling", sampling)):
        fn = sweep._batch_fn([cl], 0, dt, 8192)
        gkey = jax.random.fold_in(make(0), zlib.crc32(b"prompt") & 0x7FFFFFFF)
        bkey, ix = jax.random.fold_in(gkey, 0), jnp.arange(instances, dtype=jnp.uint32)
        jax.block_until_ready(fn(bkey, ix))
        best = float("inf")
        for _ in range(3):
          t0 = time.process_time()
          jax.block_until_ready(fn(bkey, ix))
          best = min(best, time.process_time() - t0)
        us[name] = 1e6 * best / instances
      print(f"{gen:13s} {jnp.dtype(dt).name}: total {us['total']:.2f} us CPU/instance, "
            f"sampling {us['sampling']:.2f}, evaluation {us['total'] - us['sampling']:.2f}",
            flush=True)


if __name__ == "__main__":
  main()
