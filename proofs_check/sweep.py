"""Chunked, sharded, resumable sweeps of one claim over many instances.

Instance i of bucket b is generated from ``fold_in(fold_in(claim_key, b), i)``
(keys of :mod:`icl_kd.generators`, whose version every report records: Threefry
keys, counter-hash bits), so it is a pure function of (seed, generator, claim
group, bucket, i): it does not depend on chunking, sharding, the process count
or resumption, and :func:`instance_of` regenerates it alone. Each chunk is a
fixed-size batch (padded at the end) whose instance indices are sharded over a
1-D mesh of all devices: one program per (group, bucket), compiled once for the
whole mesh (``jax.shard_map``), in which every device runs the same
micro-batched block on its shard (micro-batches of :data:`MICRO_BATCH`
whatever the chunk, so an instance's numbers do not depend on the chunk size);
per-instance results come back to the host and are reduced there in float64,
in chunk order. Memory therefore stays flat as the instance count grows, and
the report is bitwise the same for any device count.

Checkpoints: one append-only log per claim group and bucket
(:class:`ChunkLog`), one checksummed record per chunk; a kill loses at most the
chunk in flight, and a rerun loads every whole record.

Many processes: call :func:`initialize_distributed` first (``--distributed``,
or ``--coordinator/--num-processes/--process-id``); the mesh then spans every
process's devices and per-chunk results are gathered with
``multihost_utils.process_allgather`` so each process reduces the same numbers
(only process 0 prints and writes the checkpoint and the report).
"""

from __future__ import annotations

import functools
import json
import os
import struct
import zlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from icl_kd import generators, runtime
from icl_kd.claims import Claim, checks
from proofs_check import verdicts

Progress = runtime.Progress  # the project's one progress bar


def claim_key(seed: int, claim_id: str, generator: str = generators.DEFAULT) -> jax.Array:
  """A key per claim group that does not depend on which other claims run.

  A key of ``generator`` (:mod:`icl_kd.generators`: Threefry keys, counter-hash
  bits; the generator's transforms make the numbers).
  """
  return jax.random.fold_in(generators.key(seed, generator),
                            zlib.crc32(claim_id.encode()) & 0x7FFFFFFF)


def bucket_counts(total: int, num_buckets: int) -> list[int]:
  """Splits ``total`` instances evenly over buckets (earlier buckets take the remainder)."""
  return [total // num_buckets + (b < total % num_buckets) for b in range(num_buckets)]


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins a multi-process run: ``jax.distributed.initialize`` (before any array exists).

  With no arguments the cluster is detected from the environment (SLURM, Open
  MPI, Kubernetes, TPU pods). Otherwise every process gets the same
  ``coordinator`` ("HOST:PORT", served by process 0) and ``num_processes``, and
  its own ``process_id`` in 0..num_processes-1. On CPU the processes exchange
  results through JAX's CPU collectives (Gloo over TCP).

  Raises:
    ValueError: the three are not given together, or out of range.
  """
  given = [coordinator is not None, num_processes is not None, process_id is not None]
  if any(given) and not all(given):
    raise ValueError("--coordinator, --num-processes and --process-id go together, got "
                     f"coordinator={coordinator!r}, num_processes={num_processes!r}, "
                     f"process_id={process_id!r}")
  if all(given):
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"--process-id must be in 0..{num_processes - 1} and --num-processes "
                       f">= 1, got {process_id} of {num_processes}")
    if ":" not in coordinator:
      raise ValueError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if all(given):
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ("instances",))


def bucket_key(seed: int, claim: Claim, bucket: int,
               generator: str = generators.DEFAULT) -> jax.Array:
  """The key of one bucket of a claim's group; instance i's key is ``fold_in(it, i)``."""
  return jax.random.fold_in(claim_key(seed, claim.group_id, generator), bucket)


def instance_of(claim: Claim, seed: int, bucket: int, index: int, dtype,
                generator: str = generators.DEFAULT) -> dict:
  """Regenerates one instance exactly as the sweep drew it."""
  key = jax.random.fold_in(bucket_key(seed, claim, bucket, generator), index)
  return claim.sample(key, claim.buckets[bucket], dtype)


@functools.lru_cache(maxsize=None)
def _drawer(sample, cfg, dtype) -> Callable:
  return jax.jit(jax.vmap(lambda bkey, i: sample(jax.random.fold_in(bkey, i), cfg, dtype),
                          in_axes=(None, 0)))


def instances(claim: Claim, seed: int, bucket: int, indices, dtype,
              generator: str = generators.DEFAULT) -> dict:
  """The instances ``indices`` of one bucket, exactly as the sweep draws them, stacked.

  What a figure or an experiment uses to show the very instances the checker
  checks, and what the report draws its worst instances with (one compiled,
  vmapped draw per group and bucket; each equals :func:`instance_of` of its index).
  """
  idx = jnp.asarray(np.asarray(indices), jnp.uint32)
  return _drawer(claim.sample, claim.buckets[bucket], dtype)(
      bucket_key(seed, claim, bucket, generator), idx)


MICRO_BATCH = 256  # instances vmapped at once inside a device, whatever the chunk size


def padded_size(chunk: int, n_dev: int) -> int:
  """Instances computed per chunk: whole micro-batches on every device (>= chunk)."""
  per_device = -(-(-(-chunk // n_dev)) // MICRO_BATCH) * MICRO_BATCH
  return per_device * n_dev


def _block(claims, bucket: int, dtype) -> Callable:
  """The per-device body: draw and evaluate the instances ``indices`` of one bucket."""
  cfg = claims[0].buckets[bucket]
  sample, prepare = claims[0].sample, claims[0].prepare

  def one(bkey, i):
    inst = sample(jax.random.fold_in(bkey, i), cfg, dtype)
    shared = prepare(inst, cfg)                    # the group's shared work, once per instance
    return {c.id: c.compute(inst, cfg, shared) for c in claims}

  def block(bkey, indices):                                        # (per_device,)
    blocks = indices.reshape(-1, MICRO_BATCH)                      # (blocks, MICRO_BATCH)
    out = jax.lax.map(lambda ix: jax.vmap(lambda i: one(bkey, i))(ix), blocks)
    return jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), out)
  return block


def batch_fn(claims: list[Claim], bucket: int, dtype, chunk: int | None = None) -> Callable:
  """A single-device program evaluating every claim of a group on a block of indices.

  ``batch_fn(claims, bucket, dtype)(bucket_key, indices)`` returns, per claim id,
  the checks of the instances ``indices`` (uint32, a multiple of
  :data:`MICRO_BATCH`) of bucket ``bucket``, drawn from ``bucket_key``: what each
  device runs on its shard in one chunk of :func:`sweep` (used to profile it, see
  ``benchmarks/profile_c1.py``). ``chunk`` is accepted for older callers and unused.
  """
  del chunk
  return jax.jit(_block(claims, bucket, dtype))


@functools.lru_cache(maxsize=None)
def sharded_fn(claims: tuple, bucket: int, dtype, mesh: Mesh) -> Callable:
  """The program of one chunk over the whole mesh: one compile for every device.

  ``jax.shard_map`` runs :func:`batch_fn`'s block on each device's shard of the
  indices (the bucket key replicated), so each device computes exactly what the
  single-device block computes on those indices: the numbers are bitwise the
  same for any device count (tested with 1, 2 and 4 devices).
  """
  spec = PartitionSpec("instances")
  # check_vma=False: the block is purely per-device (no collective), and claims' loops start
  # from constant carries that the varying-axes type check would otherwise reject
  return jax.jit(jax.shard_map(_block(claims, bucket, dtype), mesh=mesh,
                               in_specs=(PartitionSpec(), spec), out_specs=spec,
                               check_vma=False))


EVAL_BATCH = 8   # fixed instances (worst, witnesses, replays) are evaluated in batches of this


@functools.lru_cache(maxsize=None)
def _evaluator(claims: tuple, bucket: int, dtype) -> Callable:
  cfg = claims[0].buckets[bucket]
  prepare = claims[0].prepare

  def one(inst):
    shared = prepare(inst, cfg)                    # the group's shared work, once per instance
    return {c.id: c.compute(inst, cfg, shared) for c in claims}
  return jax.jit(jax.vmap(one))


def evaluate_instances(claims: list[Claim], bucket: int, dtype, instances: list[dict]) -> list:
  """Evaluates given instances (worst ones, witnesses, replays) of one group's bucket.

  Every claim of ``claims`` (one group) is evaluated on every instance by one
  compiled, vmapped program per (group, bucket, dtype), in batches of
  :data:`EVAL_BATCH` (padded with the first instance), so the report's fixed
  instances cost one compile per group and bucket, not one per claim.
  Returns one dict {claim id: check (host arrays)} per instance.
  """
  if not instances:
    return []
  fn = _evaluator(tuple(claims), bucket, dtype)
  out = []
  for start in range(0, len(instances), EVAL_BATCH):
    block = list(instances[start:start + EVAL_BATCH])
    real = len(block)
    block += [block[0]] * (EVAL_BATCH - real)
    batch = jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *block)
    res = jax.tree_util.tree_map(np.asarray, fn(batch))
    out += [jax.tree_util.tree_map(lambda a, i=i: a[i], res) for i in range(real)]
  return out


def _run_sharded(fn: Callable, bkey, indices_host: np.ndarray, mesh: Mesh) -> dict:
  """Runs the mesh program ``fn`` on the given instance indices (a multiple of the mesh size).

  The index array is sharded with ``NamedSharding(mesh, P("instances"))`` and
  the bucket key replicated; the result comes back in index order, gathered
  from every process on multi-host runs.
  """
  sharding = NamedSharding(mesh, PartitionSpec("instances"))
  host = np.asarray(indices_host, np.uint32)
  indices = jax.make_array_from_callback(host.shape, sharding, lambda sl: host[sl])
  key = jax.device_put(bkey, NamedSharding(mesh, PartitionSpec()))
  return _gather(fn(key, indices))


def _gather(tree):
  """The full arrays on the host (all-gathered across processes on multi-host runs)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    tree = multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree_util.tree_map(np.asarray, tree)


# -- checkpoint ----------------------------------------------------------------------

CHECKPOINT_FORMAT = 2   # 2: one append-only log per claim group and bucket, counter-hash instances
_MAGIC = b"ICKP"
_HEADER = struct.Struct("<4sII")   # magic, payload length, CRC-32 of the payload


def log_path(directory: str, group: str, bucket: int) -> str:
  """The checkpoint log of one claim group and bucket: ``DIR/<group>/bucket<b>.log``."""
  return os.path.join(directory, group, f"bucket{bucket}.log")


class ChunkLog:
  """An append-only log of the chunks of one claim group and bucket.

  Each record is ``magic | length | crc32 | payload`` with a JSON payload
  ``{"chunk": j, "start": s, "count": n, "stats": {claim id: Stats}}``, written
  with one ``write`` and ``fsync``-ed before the next chunk starts. Reading stops
  at the first record whose magic, length or checksum is wrong (a write torn by
  a kill): it and anything after it are dropped (``dropped_bytes``), and the file
  is cut back to its last whole record before the next append. A later record of
  the same chunk adds the stats of claims the earlier one lacked.

  One file per (group, bucket): a sweep of 1e8 instances keeps a handful of
  files, not one per chunk.
  """

  def __init__(self, path: str):
    self.path = path
    self.chunks: dict[int, dict] = {}     # chunk -> {"start", "count", "stats": {id: json}}
    self.valid_bytes = 0
    self.dropped_bytes = 0
    self._fd = None
    if os.path.exists(path):
      self._read()

  def _read(self) -> None:
    with open(self.path, "rb") as f:
      data = f.read()
    off = 0
    while off + _HEADER.size <= len(data):
      magic, n, crc = _HEADER.unpack_from(data, off)
      payload = data[off + _HEADER.size:off + _HEADER.size + n]
      if magic != _MAGIC or len(payload) != n or zlib.crc32(payload) != crc:
        break
      rec = json.loads(payload)
      entry = self.chunks.setdefault(int(rec["chunk"]), dict(start=rec["start"],
                                                             count=rec["count"], stats={}))
      entry["stats"].update(rec["stats"])
      off += _HEADER.size + n
    self.valid_bytes, self.dropped_bytes = off, len(data) - off

  def stats(self, chunk: int, start: int, count: int, ids) -> dict | None:
    """The saved Stats of ``chunk`` for every id in ``ids``, or None if any is missing."""
    entry = self.chunks.get(chunk)
    if entry is None or not all(i in entry["stats"] for i in ids):
      return None
    if (entry["start"], entry["count"]) != (start, count):
      raise ValueError(f"--checkpoint: {self.path} chunk {chunk} covers instances "
                       f"{entry['start']}+{entry['count']}, expected {start}+{count}: it holds a "
                       f"run with another chunk size; use a fresh directory")
    return {i: verdicts.Stats.from_json(entry["stats"][i]) for i in ids}

  def append(self, chunk: int, start: int, count: int, stats: dict) -> None:
    """Appends one record (atomically: one write, then fsync)."""
    if self._fd is None:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
      os.ftruncate(self._fd, self.valid_bytes)          # drop a torn last record
      os.lseek(self._fd, self.valid_bytes, os.SEEK_SET)
    payload = json.dumps(runtime.jsonable(dict(
        chunk=chunk, start=start, count=count,
        stats={cid: st.to_json() for cid, st in stats.items()})),
        allow_nan=False, separators=(",", ":")).encode()
    record = _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload
    os.write(self._fd, record)
    os.fsync(self._fd)
    self.valid_bytes += len(record)

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None


def saved_chunks(directory: str, group: str) -> int:
  """How many chunks of ``group`` the checkpoint ``directory`` holds (all buckets)."""
  folder = os.path.join(directory, group)
  if not os.path.isdir(folder):
    return 0
  return sum(len(ChunkLog(os.path.join(folder, f)).chunks) for f in sorted(os.listdir(folder))
             if f.endswith(".log"))


class Sweep(dict):
  """The merged Stats by claim id, with how many chunks were loaded from the checkpoint.

  Also: ``chunks`` (bucket -> instances per chunk, the size the bucket's program was
  compiled for) and ``output_types`` (claim id -> (check type, extras type, events
  type) of what its evaluation returned; empty when every chunk came from the
  checkpoint).
  """
  loaded_chunks: int = 0
  computed_chunks: int = 0
  chunks: dict = {}
  output_types: dict = {}


def sweep(claims: Claim | list[Claim], *, instances: int, seed: int, dtype, dtype_name: str,
          checkpoint: str | None = None, progress: bool = True,
          mesh: Mesh | None = None, chunk: int | None = None,
          stop_after_chunks: int | None = None,
          generator: str = generators.DEFAULT) -> Sweep:
  """Evaluates ``instances`` instances of each claim of one group; returns merged Stats by id.

  Args:
    claims: one claim, or several of the same group (shared sampler and buckets).
    checkpoint: a directory; chunks already saved there are loaded, not recomputed,
      and each new chunk is appended to its (group, bucket) log as soon as it is
      done (:class:`ChunkLog`).
    chunk: instances per chunk (default the smallest ``claim.chunk``); the unit of
      checkpointing and of host reduction, independent of the device count.
    stop_after_chunks: compute at most this many new chunks, then raise
      KeyboardInterrupt (used to test resumption).
    generator: the instance generator (:mod:`icl_kd.generators`).
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
  ids = [c.id for c in claims]
  # every log of the group is read before any work, so that every process of a
  # multi-process run sees the same saved chunks (only process 0 appends)
  logs = {b: ChunkLog(log_path(checkpoint, group, b)) for b, n_b in enumerate(counts) if n_b} \
      if checkpoint else {}
  writer = jax.process_index() == 0
  bar = Progress(", ".join(ids), instances, progress)
  merged: dict[str, verdicts.Stats] = {cid: verdicts.Stats() for cid in ids}
  done, computed, loaded = 0, 0, 0
  chunks, output_types = {}, {}
  try:
    for b, n_b in enumerate(counts):
      if n_b == 0:
        continue
      c = min(size, n_b)                                           # instances per chunk
      chunks[b] = c
      padded = padded_size(c, n_dev)                               # computed per chunk
      fn = None
      bkey = bucket_key(seed, claims[0], b, generator)
      log = logs.get(b)
      for j, start in enumerate(range(0, n_b, c)):
        valid = min(c, n_b - start)
        stats = log.stats(j, start, valid, ids) if log is not None else None
        if stats is not None:
          loaded += 1
          bar.skip(valid)
        else:
          if stop_after_chunks is not None and computed >= stop_after_chunks:
            raise KeyboardInterrupt(f"stopped after {computed} new chunks")
          fn = fn or sharded_fn(tuple(claims), b, dtype, mesh)
          values = _run_sharded(fn, bkey, np.arange(start, start + padded), mesh)
          stats = {}
          for cl in claims:
            check = jax.tree_util.tree_map(lambda v: v[:valid], values[cl.id])
            try:
              output_types[cl.id] = (checks.check_type_of(check), type(check.extras),
                                     type(check.events))
            except TypeError as e:
              raise TypeError(f"claim {cl.id!r}: {e}") from None
            stats[cl.id] = verdicts.reduce_chunk(check, bucket=b, start=start,
                                                 dtype_name=dtype_name)
          if log is not None and writer:
            log.append(j, start, valid, stats)
          computed += 1
        for cid, st in stats.items():
          merged[cid] = verdicts.merge(merged[cid], st)
        done += valid
        bar.update(done)
  finally:
    for log in logs.values():
      log.close()
  out = Sweep(merged)
  out.loaded_chunks, out.computed_chunks = loaded, computed
  out.chunks, out.output_types = chunks, output_types
  return out
