"""The instance generator of the sweep: threefry keys, counter-hash bits.

Every instance of a sweep is drawn from its own key (:func:`proofs_check.sweep.instance_key`):
the keys are derived with Threefry-2x32 (JAX's default ``seed``, ``fold_in``
and ``split``), so keys of different instances, buckets, claim groups and seeds
are as independent as JAX's keys are. The bits *inside* one key are drawn by a
keyed counter hash instead of Threefry's 20 rounds per pair of words:

    word_j = mix(mix((j XOR k0) + c) + k1),   j = 0, 1, 2, ...   (k0, k1: the key's two words)

with ``mix`` the 32-bit avalanche function "lowbias32"
(x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16),
a bijection on 32-bit words, and c = 0x9E3779B9 (so that mix's fixed point 0
is not the first word of the zero key). 64-bit draws take two words (high, low). The sweep
draws ~460 Gaussians per C1 instance; this cuts the cost of their bits ~4x
on CPU (see benchmarks/b1_claims.py, where the sampler's share is measured),
and leaves the Gaussian transform (``erf_inv``) as the sampler's main cost.

A pure function of the key: instance i of bucket b is the same whatever the
chunking, the device or process count, the micro-batch or a resumption, and
:func:`proofs_check.sweep.instance_of` regenerates it alone. The hash is for
drawing test instances, not for cryptography; its uniforms and Gaussians are
tested for their moments, their distribution and independence across words and
keys in tests/test_sweep_scale.py.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import random as jex_random

_TF = jex_random.threefry_prng_impl
_M1, _M2, _C = np.uint32(0x7FEB352D), np.uint32(0x846CA68B), np.uint32(0x9E3779B9)


def mix32(x: jax.Array) -> jax.Array:
  """lowbias32: a bijective 32-bit avalanche function (uint32 -> uint32, elementwise)."""
  x = x ^ (x >> np.uint32(16))
  x = x * _M1
  x = x ^ (x >> np.uint32(15))
  x = x * _M2
  return x ^ (x >> np.uint32(16))


def counter_hash_words(key_data: jax.Array, count: int) -> jax.Array:
  """``count`` uint32 words of one raw key (uint32[2]): mix(mix((j ^ k0) + c) + k1)."""
  j = jax.lax.iota(jnp.uint32, count)
  return mix32(mix32((j ^ key_data[0]) + _C) + key_data[1])


def _random_bits(key_data: jax.Array, bit_width: int, shape) -> jax.Array:
  if bit_width not in (8, 16, 32, 64):
    raise TypeError(f"bit_width must be 8, 16, 32 or 64, got {bit_width}")
  n = math.prod(shape)
  if bit_width == 64:
    w = counter_hash_words(key_data, 2 * n).reshape(2, n)
    out = (w[0].astype(jnp.uint64) << np.uint64(32)) | w[1].astype(jnp.uint64)
  else:
    out = counter_hash_words(key_data, n)
    if bit_width < 32:
      out = out.astype(jnp.uint8 if bit_width == 8 else jnp.uint16)
  return out.reshape(shape)


IMPL = jex_random.define_prng_impl(
    key_shape=_TF.key_shape, seed=_TF.seed, split=_TF.split, fold_in=_TF.fold_in,
    random_bits=_random_bits, name="threefry_keys_counter_hash_bits", tag="tfch")
"""The sweep's PRNG: ``jax.random.key(seed, impl=IMPL)``."""


def key(seed: int) -> jax.Array:
  """A typed key of the sweep's generator (:data:`IMPL`)."""
  return jax.random.key(seed, impl=IMPL)
