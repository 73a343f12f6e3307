"""Where C1's time goes: sampling vs evaluation, per instance generator.

    python -m benchmarks.profile_c1

Times the compiled chunk program of :func:`proofs_check.sweep` on 65,536
instances of ``thm3.1``'s bucket N = 32, d = 8 (1 device), once with the real
evaluation and once with a trivial one that only sums the sampled arrays the
real check reads (the sampling share; :func:`benchmarks.b1_claims.fields_read`),
for keys of JAX's default Threefry and of each of the sweep's generators
(:mod:`icl_kd.generators`), in float32 and float64. Prints CPU microseconds per
instance (process time: less sensitive to other jobs than the wall clock, best
of 3). Then the cost of the sampler's Gaussians by stage
(bits, uniforms, the ``erf_inv`` transform) in the same layout.
"""

from __future__ import annotations

import dataclasses
import time
import zlib

import jax
import jax.numpy as jnp


def gaussian_stages(instances: int = 65_536, per_instance: int = 456) -> None:
  """CPU us per instance of drawing ``per_instance`` Gaussians (C1's count at N = 32, d = 8):
  the sweep's bits, their uniforms, and ``jax.random.normal`` (uniforms through ``erf_inv``),
  in the sweep's layout (``lax.map`` over micro-batches of 256 vmapped instances), under
  the V1 generator (JAX's transforms in the requested dtype) and the default one."""
  from icl_kd import generators
  from proofs_check import sweep

  def program(draw):
    def block(bkey, ix):
      return jax.lax.map(lambda b: jax.vmap(lambda i: draw(jax.random.fold_in(bkey, i)))(b),
                         ix.reshape(-1, sweep.MICRO_BATCH))
    return jax.jit(block)

  for gen in generators.GENERATORS:
    for dt in (jnp.float32, jnp.float64):
      word = jnp.uint32 if dt == jnp.float32 else jnp.uint64
      stages = (("bits", lambda k: jnp.sum(jax.random.bits(k, (per_instance,), word).astype(dt))),
                ("uniform", lambda k: jnp.sum(generators.uniform(k, (per_instance,), dt))),
                ("normal", lambda k: jnp.sum(generators.normal(k, (per_instance,), dt))))
      us = {name: _best_us(program(draw), generators.key(0, gen), instances)
            for name, draw in stages}
      print(f"{gen} {per_instance} Gaussians, {jnp.dtype(dt).name}: bits {us['bits']:.2f} us "
            f"CPU/instance, uniform {us['uniform']:.2f}, normal {us['normal']:.2f} "
            f"(the transform ~{us['normal'] - us['uniform']:.2f})", flush=True)


def _best_us(fn, key, instances: int) -> float:
  """Best of 3 CPU (process) times of fn(key, 0..instances-1), in us per instance."""
  ix = jnp.arange(instances, dtype=jnp.uint32)
  jax.block_until_ready(fn(key, ix))
  best = float("inf")
  for _ in range(3):
    t0 = time.process_time()
    jax.block_until_ready(fn(key, ix))
    best = min(best, time.process_time() - t0)
  return 1e6 * best / instances


def main(instances: int = 65_536) -> None:
  jax.config.update("jax_enable_x64", True)
  from icl_kd import generators
  from icl_kd.claims import CLAIMS, IdentityCheck, PromptBucket
  from proofs_check import sweep
  c = dataclasses.replace(CLAIMS["thm3.1"], buckets=(PromptBucket(32, 0, 8, 8, 8, True),))

  from benchmarks.b1_claims import fields_read
  read = fields_read(c)       # the fields the real check reads; the others are never drawn

  def trivial(inst, bucket, shared):
    total = sum(jnp.sum(inst[k]) for k in read)
    return IdentityCheck(1e-30 * jnp.abs(total), jnp.ones_like(total))

  sampling = dataclasses.replace(c, compute=trivial, prepare=lambda inst, bucket: None)
  makers = [("threefry", jax.random.key)] + [
      (gen, lambda seed, gen=gen: generators.key(seed, gen)) for gen in generators.GENERATORS]
  for gen, make in makers:
    for dt in (jnp.float32, jnp.float64):
      us = {}
      for name, cl in (("total", c), ("sampling", sampling)):
        fn = sweep.batch_fn([cl], 0, dt)
        gkey = jax.random.fold_in(make(0), zlib.crc32(b"prompt") & 0x7FFFFFFF)
        us[name] = _best_us(fn, jax.random.fold_in(gkey, 0), instances)
      print(f"{gen:19s} {jnp.dtype(dt).name}: total {us['total']:.2f} us CPU/instance, "
            f"sampling {us['sampling']:.2f}, evaluation {us['total'] - us['sampling']:.2f}",
            flush=True)
  gaussian_stages(instances)


if __name__ == "__main__":
  main()
