"""Chunked, sharded, resumable sweeps of one claim over many instances.

Instance i of bucket b is generated from ``fold_in(fold_in(claim_key, b), i)``,
so its value does not depend on chunking, sharding or resumption. Each chunk
is a fixed-size batch (padded at the end; one compile per bucket) whose
instance indices are sharded over a 1-D mesh of all devices, each device
running the same micro-batched program on its shard; per-instance results
come back to the host and are reduced there in float64, in chunk order.
Memory therefore stays flat as the instance count grows, and the report is
bitwise the same for any device count.

Multi-host: call ``jax.distributed.initialize()`` first (``--distributed``);
the mesh then spans every process's devices and per-chunk results are
gathered with ``multihost_utils.process_allgather`` so each process reduces
the same numbers (only process 0 prints and writes).
"""

from __future__ import annotations

import os
import zlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from icl_kd import runtime
from icl_kd.claims import Claim
from proofs_check import rng, verdicts

Progress = runtime.Progress  # the project's one progress bar


def claim_key(seed: int, claim_id: str) -> jax.Array:
  """A key per claim group that does not depend on which other claims run.

  A key of the sweep's generator (:mod:`proofs_check.rng`: Threefry keys,
  counter-hash bits).
  """
  return jax.random.fold_in(rng.key(seed), zlib.crc32(claim_id.encode()) & 0x7FFFFFFF)


def bucket_counts(total: int, num_buckets: int) -> list[int]:
  """Splits ``total`` instances evenly over buckets (earlier buckets take the remainder)."""
  return [total // num_buckets + (b < total % num_buckets) for b in range(num_buckets)]


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ("instances",))


def instance_of(claim: Claim, seed: int, bucket: int, index: int, dtype) -> dict:
  """Regenerates one instance exactly as the sweep drew it."""
  key = jax.random.fold_in(jax.random.fold_in(claim_key(seed, claim.group_id), bucket), index)
  return claim.sample(key, claim.buckets[bucket], dtype)


MICRO_BATCH = 256  # instances vmapped at once inside a device (fixed: see _batch_fn)


def _micro(chunk: int) -> int:
  return min(MICRO_BATCH, chunk)


def padded_size(chunk: int, n_dev: int) -> int:
  """Instances computed per chunk: whole micro-batches on every device (>= chunk)."""
  mb = _micro(chunk)
  per_device = -(-(-(-chunk // n_dev)) // mb) * mb
  return per_device * n_dev


def _batch_fn(claims: list[Claim], bucket: int, dtype, chunk: int) -> Callable:
  """A single-device program evaluating every claim of a group on a block of indices.

  The block is mapped (``lax.map``) over micro-batches of a fixed size, each
  ``vmap``-ed, and the same executable runs on every device's shard (see
  :func:`_run_sharded`). An instance's numbers are therefore bitwise the same
  whatever the device count; a multi-partition SPMD program was measured to
  round some of them differently on CPU.
  """
  cfg = claims[0].buckets[bucket]
  sample, prepare = claims[0].sample, claims[0].prepare
  mb = _micro(chunk)

  def one(bkey, i):
    inst = sample(jax.random.fold_in(bkey, i), cfg, dtype)
    shared = prepare(inst, cfg)                    # the group's shared work, once per instance
    return {c.id: c.compute(inst, cfg, shared) for c in claims}

  def block(bkey, indices):                                        # (per_device,)
    blocks = indices.reshape(-1, mb)                               # (blocks, mb)
    out = jax.lax.map(lambda ix: jax.vmap(lambda i: one(bkey, i))(ix), blocks)
    return jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), out)

  return jax.jit(block)


def _run_sharded(fn: Callable, bkey, start: int, size: int, mesh: Mesh) -> dict:
  """Runs ``fn`` on the indices start..start+size laid out on the 1-D mesh.

  The index array is sharded with ``NamedSharding(mesh, P("instances"))``; the
  program is dispatched on each addressable shard (asynchronously, so the
  devices run in parallel) and the results are concatenated in index order.
  """
  sharding = NamedSharding(mesh, PartitionSpec("instances"))
  host = np.arange(start, start + size, dtype=np.uint32)
  indices = jax.make_array_from_callback((size,), sharding, lambda sl: host[sl])
  shards = sorted(indices.addressable_shards, key=lambda s: s.index[0].start or 0)
  outs = [fn(jax.device_put(bkey, s.device), s.data) for s in shards]
  local = jax.tree_util.tree_map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *outs)
  return _gather(local)


def _gather(tree):
  """Concatenates every process's block (in process order) on multi-host runs."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    tree = multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree_util.tree_map(np.asarray, tree)


def _chunk_path(directory: str, claim_id: str, bucket: int, chunk: int) -> str:
  return os.path.join(directory, claim_id, f"b{bucket}_c{chunk:08d}.json")


def _atomic_write(path: str, payload: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  runtime.write_json(path, payload, indent=None, flag="--checkpoint")


def _load(path: str) -> verdicts.Stats:
  return verdicts.Stats.from_json(runtime.read_json(path, flag="--checkpoint"))


class Sweep(dict):
  """The merged Stats by claim id, with how many chunks were loaded from the checkpoint."""
  loaded_chunks: int = 0
  computed_chunks: int = 0


def sweep(claims: Claim | list[Claim], *, instances: int, seed: int, dtype, dtype_name: str,
          checkpoint: str | None = None, progress: bool = True,
          mesh: Mesh | None = None, chunk: int | None = None,
          stop_after_chunks: int | None = None) -> Sweep:
  """Evaluates ``instances`` instances of each claim of one group; returns merged Stats by id.

  Args:
    claims: one claim, or several of the same group (shared sampler and buckets).
    checkpoint: a directory; chunks already saved there are loaded, not recomputed,
      and each new chunk is saved as soon as it is done.
    chunk: instances per chunk (default the smallest ``claim.chunk``); the unit of
      checkpointing and of host reduction, independent of the device count.
    stop_after_chunks: compute at most this many new chunks, then raise
      KeyboardInterrupt (used to test resumption).
  Returns:
    A :class:`Sweep`: Stats by claim id, and ``loaded_chunks`` / ``computed_chunks``.
  """
  claims = [claims] if isinstance(claims, Claim) else list(claims)
  group = claims[0].group_id
  if any(c.group_id != group for c in claims):
    raise ValueError(f"claims of one sweep must share a group, got {[c.id for c in claims]}")
  mesh = make_mesh() if mesh is None else mesh
  n_dev = mesh.devices.size
  size = min(c.chunk for c in claims) if chunk is None else chunk
  counts = bucket_counts(instances, len(claims[0].buckets))
  bar = Progress(", ".join(c.id for c in claims), instances, progress)
  merged: dict[str, verdicts.Stats] = {c.id: verdicts.Stats() for c in claims}
  done, computed, loaded = 0, 0, 0
  gkey = claim_key(seed, group)
  for b, n_b in enumerate(counts):
    if n_b == 0:
      continue
    c = min(size, n_b)                                             # instances per chunk
    padded = padded_size(c, n_dev)                                 # computed per chunk
    fn = None
    bkey = jax.random.fold_in(gkey, b)
    for j, start in enumerate(range(0, n_b, c)):
      valid = min(c, n_b - start)
      paths = {cl.id: _chunk_path(checkpoint, cl.id, b, j) if checkpoint else None
               for cl in claims}
      if checkpoint and all(os.path.exists(p) for p in paths.values()):
        stats = {cid: _load(p) for cid, p in paths.items()}
        loaded += 1
      else:
        if stop_after_chunks is not None and computed >= stop_after_chunks:
          raise KeyboardInterrupt(f"stopped after {computed} new chunks")
        fn = fn or _batch_fn(claims, b, dtype, c)
        values = _run_sharded(fn, bkey, start, padded, mesh)
        stats = {}
        for cl in claims:
          check = jax.tree_util.tree_map(lambda v: v[:valid], values[cl.id])
          stats[cl.id] = verdicts.reduce_chunk(check, bucket=b, start=start,
                                               dtype_name=dtype_name)
          if checkpoint and jax.process_index() == 0:
            _atomic_write(paths[cl.id], stats[cl.id].to_json())
        computed += 1
      for cid, st in stats.items():
        merged[cid] = verdicts.merge(merged[cid], st)
      done += valid
      bar.update(done)
  out = Sweep(merged)
  out.loaded_chunks, out.computed_chunks = loaded, computed
  return out
