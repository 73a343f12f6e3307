"""Instance generators: how a seed becomes the numbers of every instance a sweep draws.

A generator is named by a version string that every report records
(``generator``); ``python -m proofs_check --generator NAME`` selects one, and
``--replay`` uses the one its report names, so a report made with an older
generator still regenerates its instances exactly.

Both generators derive keys the same way: instance i of bucket b of a claim
group comes from ``fold_in(fold_in(key(seed), group), b), i)`` with Threefry-2x32
keys (JAX's ``seed``, ``fold_in`` and ``split``), and the bits *inside* one key
come from a keyed counter hash instead of Threefry's 20 rounds per pair of words:

    word_j = mix(mix((j XOR k0) + c) + k1),   j = 0, 1, 2, ...   (k0, k1: the key's two words)

with ``mix`` the 32-bit avalanche function "lowbias32"
(x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16),
a bijection on 32-bit words, and c = 0x9E3779B9 (so that mix's fixed point 0 is
not the first word of the zero key). 64-bit draws take two words (high, low).

They differ in how bits become numbers (:func:`normal`, :func:`uniform`, which
the samplers call):

- ``"counter-hash-1"`` (:data:`V1`, the reports before version 0.2.0): JAX's
  own transforms in the requested dtype: ``jax.random.normal`` (the inverse
  error function of a uniform) and ``jax.random.uniform``; in float64 they take
  64 bits and a float64 ``erf_inv`` per number.
- ``"counter-hash-f32-2"`` (:data:`V2`, the default): every normal and uniform is
  drawn in float32 with JAX's transforms (23-bit uniforms, a float32
  ``erf_inv``) and then cast to the requested dtype. In float32 it is V1
  exactly; in float64 it is ~4x cheaper (B1). Its law: N(0, 1) and U(a, b) at
  float32 resolution; the normal's tails stop at |z| = 5.42 (the largest float32
  uniform below 1), where N(0, 1) puts 6e-8 of its mass. The moments, a
  Kolmogorov-Smirnov test and the independence of draws are tested
  (tests/test_sweep_scale.py).

A pure function of the key: instance i of bucket b is the same whatever the
chunking, the device or process count, the micro-batch or a resumption. The
hash draws test instances; it is not for cryptography. Keys of JAX's own
implementations (a user's ``jax.random.key``) pass through :func:`normal` and
:func:`uniform` to JAX's functions unchanged.
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


def _impl(name: str, tag: str):
  return jex_random.define_prng_impl(
      key_shape=_TF.key_shape, seed=_TF.seed, split=_TF.split, fold_in=_TF.fold_in,
      random_bits=_random_bits, name=name, tag=tag)


V1 = "counter-hash-1"
V2 = "counter-hash-f32-2"
DEFAULT = V2
"""The generator of new reports."""
IMPLS = {V1: _impl("threefry_keys_counter_hash_bits", "tfch"),
         V2: _impl("threefry_keys_counter_hash_bits_f32_transforms", "tfc2")}
"""Generator name -> its PRNG implementation (the key's type carries it)."""
GENERATORS = tuple(IMPLS)
_FLOAT32_TRANSFORMS = (IMPLS[V2],)


def check_generator(generator: str) -> str:
  """``generator`` if it is one of :data:`GENERATORS`; ValueError naming it otherwise."""
  if generator not in IMPLS:
    raise ValueError(f"generator must be one of {GENERATORS}, got {generator!r}")
  return generator


def key(seed: int, generator: str = DEFAULT) -> jax.Array:
  """A typed key of ``generator`` (default :data:`DEFAULT`)."""
  return jax.random.key(seed, impl=IMPLS[check_generator(generator)])


def _float32_transforms(key) -> bool:
  return jax.random.key_impl(key) in _FLOAT32_TRANSFORMS


def normal(key, shape=(), dtype=None) -> jax.Array:
  """Standard normal draws as ``key``'s generator makes them (module docstring).

  Keys of JAX's own implementations give ``jax.random.normal(key, shape, dtype)``.
  """
  dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
  if _float32_transforms(key) and dtype != jnp.float32:
    return jax.random.normal(key, shape, jnp.float32).astype(dtype)
  return jax.random.normal(key, shape, dtype)


def uniform(key, shape=(), dtype=None, minval=0.0, maxval=1.0) -> jax.Array:
  """U(minval, maxval) draws as ``key``'s generator makes them (module docstring).

  Keys of JAX's own implementations give ``jax.random.uniform(key, shape, dtype, minval,
  maxval)``; under :data:`V2` a float32 draw in [0, 1) is cast and then scaled, in the
  requested dtype.
  """
  dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
  if _float32_transforms(key) and dtype != jnp.float32:
    u = jax.random.uniform(key, shape, jnp.float32).astype(dtype)
    lo, hi = jnp.asarray(minval, dtype), jnp.asarray(maxval, dtype)
    return jnp.clip(lo + u * (hi - lo), lo, hi)
  return jax.random.uniform(key, shape, dtype, minval, maxval)
