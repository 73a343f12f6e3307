"""Sweeps at scale: the instance generator, the checkpoint log, and multi-process runs.

- The generators (icl_kd/generators.py) are pinned to a NumPy re-implementation
  of its formula, its draws are tested for their distribution, and instance i
  regenerated alone equals the sweep's instance i.
- The checkpoint log: an interrupted run, with a torn last record, resumes to
  the uninterrupted run's numbers, loading every whole chunk.
- Two processes on localhost (CPU collectives over TCP) give the 1-process
  report number for number.
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from icl_kd.claims import CLAIMS
from icl_kd import generators
from proofs_check import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the generator ------------------------------------------------------------------------

def _np_mix32(x):
  x = x.astype(np.uint64) & 0xFFFFFFFF
  x ^= x >> 16
  x = (x * 0x7FEB352D) & 0xFFFFFFFF
  x ^= x >> 15
  x = (x * 0x846CA68B) & 0xFFFFFFFF
  return x ^ (x >> 16)


def _np_words(k0, k1, count):
  """The documented formula word_j = mix(mix((j ^ k0) + c) + k1), in NumPy integers."""
  j = np.arange(count, dtype=np.uint64)
  return _np_mix32((_np_mix32(((j ^ k0) + 0x9E3779B9) & 0xFFFFFFFF) + k1) & 0xFFFFFFFF)


@pytest.mark.parametrize("k0,k1", [(0, 0), (1, 2), (0xFFFFFFFF, 0x12345678)])
def test_counter_hash_matches_its_formula(k0, k1):
  ours = generators.counter_hash_words(jnp.asarray([k0, k1], jnp.uint32), 1000)
  np.testing.assert_array_equal(np.asarray(ours, np.uint64), _np_words(k0, k1, 1000))


def test_random_bits_of_every_width_come_from_the_words():
  key = jax.random.fold_in(generators.key(3), 7)
  k0, k1 = (int(v) for v in jax.random.key_data(key))
  words = _np_words(k0, k1, 20)
  np.testing.assert_array_equal(np.asarray(jax.random.bits(key, (4, 5), jnp.uint32)).ravel(),
                                words)
  np.testing.assert_array_equal(np.asarray(jax.random.bits(key, (20,), jnp.uint8)),
                                words & 0xFF)
  b64 = np.asarray(jax.random.bits(key, (10,), jnp.uint64), np.uint64)   # x64: conftest
  np.testing.assert_array_equal(b64, (words[:10] << np.uint64(32)) | words[10:])


def test_generator_draws_are_uniform_gaussian_and_independent():
  """KS tests and correlations, 2e5 draws, fixed seed; false-alarm rate 1e-3 per test.

  Within one key (consecutive words), across keys of consecutive instances
  (fold_in i), and Gaussians through jax.random.normal.
  """
  base = jax.random.fold_in(generators.key(0, generators.V1), 1)
  u = np.asarray(jax.random.uniform(base, (200_000,), jnp.float32), np.float64)
  assert sps.kstest(u, "uniform").pvalue > 1e-3
  keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(50_000, dtype=jnp.uint32))
  first = np.asarray(jax.vmap(lambda k: jax.random.uniform(k, (4,)))(keys), np.float64)
  assert sps.kstest(first[:, 0], "uniform").pvalue > 1e-3      # word 0 across instances
  z = np.asarray(jax.random.normal(base, (200_000,), jnp.float32), np.float64)
  assert sps.kstest(z, "norm").pvalue > 1e-3
  # |corr| of n pairs is ~N(0, 1/n): 4.5 sigma is a false alarm rate < 1e-5
  n = first.shape[0]
  for a, b in [(first[:, 0], first[:, 1]), (first[:-1, 0], first[1:, 0]),
               (u[:-1], u[1:])]:
    assert abs(np.corrcoef(a, b)[0, 1]) < 4.5 / np.sqrt(min(n, a.size))


def test_instance_i_is_a_pure_function_of_seed_group_bucket_index():
  """The worst instance regenerated alone is the sweep's instance.

  Its key and random bits are equal bit for bit; its arrays (Gaussians scaled by
  1/sqrt(d), W^Q rescaled by a dot product) agree to a few ulps (rtol 8 eps):
  the sweep computes them inside one compiled batch program, the regeneration
  alone, and XLA fuses multiply-adds differently in the two.
  """
  claim = CLAIMS["thm3.1"]
  st = sweep.sweep(claim, instances=300, seed=4, dtype=jnp.float64, dtype_name="float64",
                   progress=False, chunk=64)[claim.id]
  b, idx = st.worst_index
  alone = sweep.instance_of(claim, 4, b, idx, jnp.float64)
  bkey = jax.random.fold_in(sweep.claim_key(4, claim.group_id), b)
  # the sweep's own instance: the sampler batched over the chunk holding idx, in one program
  start = idx - idx % 64
  batch = jax.jit(jax.vmap(lambda i: claim.sample(jax.random.fold_in(bkey, i), claim.buckets[b],
                                                  jnp.float64)))(
      jnp.arange(start, start + 64, dtype=jnp.uint32))
  for name, arr in alone.items():
    np.testing.assert_allclose(np.asarray(arr), np.asarray(batch[name][idx - start]),
                               rtol=8 * np.finfo(np.float64).eps, atol=0, err_msg=name)
  bits_alone = jax.random.bits(jax.random.fold_in(bkey, idx), (64,), jnp.uint32)
  bits_batch = jax.jit(jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(bkey, i), (64,),
                                                          jnp.uint32)))(
      jnp.arange(start, start + 64, dtype=jnp.uint32))
  np.testing.assert_array_equal(np.asarray(bits_alone), np.asarray(bits_batch[idx - start]))
  # another seed gives another instance
  other = sweep.instance_of(claim, 5, b, idx, jnp.float64)
  assert not np.allclose(np.asarray(other["demos"]), np.asarray(alone["demos"]))


@pytest.mark.parametrize("gen", generators.GENERATORS)
def test_every_generator_draws_the_laws_it_states_in_float64(gen):
  """What the samplers draw through icl_kd.generators, in float64, under each generator.

  n = 400,000 normals and uniforms (fixed seed). Moments: |mean| < 5 SE, |var - 1| < 5 SE,
  skewness and excess kurtosis within 5 SE (SE = sqrt(6/n), sqrt(24/n)): false alarms below
  1e-5 each. Kolmogorov-Smirnov against N(0, 1) and U(-3, 5): p > 1e-3 (false-alarm rate 1e-3
  each). Independence: lag-1 correlations within a key and across consecutive instance keys
  below 4.5/sqrt(n) (< 1e-5). The normal's largest |z| stays within the stated tail
  (V2: 5.42, the float32 inverse CDF's end; V1: float64's, about 8.3).
  """
  n = 400_000
  base = jax.random.fold_in(generators.key(11, gen), 3)
  z = np.asarray(jax.jit(lambda k: generators.normal(k, (n,), jnp.float64))(base))
  u = np.asarray(jax.jit(lambda k: generators.uniform(k, (n,), jnp.float64, -3.0, 5.0))(base))
  assert z.dtype == u.dtype == np.float64
  se = 1 / np.sqrt(n)
  assert abs(z.mean()) < 5 * se and abs(z.var() - 1) < 5 * np.sqrt(2) * se
  assert abs(sps.skew(z)) < 5 * np.sqrt(6 / n) and abs(sps.kurtosis(z)) < 5 * np.sqrt(24 / n)
  assert sps.kstest(z, "norm").pvalue > 1e-3
  assert sps.kstest(u, "uniform", args=(-3.0, 8.0)).pvalue > 1e-3
  assert u.min() >= -3.0 and u.max() < 5.0
  assert np.abs(z).max() <= (5.43 if gen == generators.V2 else 8.5)
  keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(n // 4, dtype=jnp.uint32))
  first = np.asarray(jax.jit(jax.vmap(lambda k: generators.normal(k, (2,), jnp.float64)))(keys))
  for a, b in [(z[:-1], z[1:]), (first[:, 0], first[:, 1]), (first[:-1, 0], first[1:, 0])]:
    assert abs(np.corrcoef(a, b)[0, 1]) < 4.5 / np.sqrt(a.size)


def test_generators_agree_in_float32_and_differ_in_float64():
  """V2 draws in float32 exactly what V1 draws (the same bits, JAX's float32 transforms); in
  float64 it is those float32 draws cast, V1 JAX's float64 ones. JAX's own keys pass through
  to jax.random unchanged."""
  k1 = jax.random.fold_in(generators.key(2, generators.V1), 5)
  k2 = jax.random.fold_in(generators.key(2, generators.V2), 5)
  np.testing.assert_array_equal(jax.random.key_data(k1), jax.random.key_data(k2))
  for f in (lambda k, dt: generators.normal(k, (64,), dt),
            lambda k, dt: generators.uniform(k, (64,), dt, 0.5, 1.5)):
    np.testing.assert_array_equal(np.asarray(f(k1, jnp.float32)), np.asarray(f(k2, jnp.float32)))
    assert not np.array_equal(np.asarray(f(k1, jnp.float64)), np.asarray(f(k2, jnp.float64)))
  np.testing.assert_array_equal(np.asarray(generators.normal(k2, (64,), jnp.float64)),
                                np.asarray(generators.normal(k2, (64,), jnp.float32),
                                           np.float64))
  jk = jax.random.key(9)
  np.testing.assert_array_equal(np.asarray(generators.normal(jk, (8,), jnp.float64)),
                                np.asarray(jax.random.normal(jk, (8,), jnp.float64)))
  with pytest.raises(ValueError, match="generator must be one of"):
    generators.key(0, "no-such-generator")


# --- checkpoint log -----------------------------------------------------------------------

def test_interrupted_run_with_a_torn_record_resumes_to_the_same_numbers(tmp_path):
  group = [CLAIMS["thm3.1"]]
  kw = dict(instances=160, seed=6, dtype=jnp.float64, dtype_name="float64", progress=False,
            chunk=16)
  full = sweep.sweep(group, **kw)
  ckpt = str(tmp_path / "ckpt")
  with pytest.raises(KeyboardInterrupt):
    sweep.sweep(group, checkpoint=ckpt, stop_after_chunks=4, **kw)     # interrupted
  # 4 chunks computed: bucket 0 has 40 instances = 3 chunks (16, 16, 8), then 1 of bucket 1
  files = sorted(f for _, _, fs in os.walk(ckpt) for f in fs)
  assert files == ["bucket0.log", "bucket1.log"]   # one file per group and bucket touched
  assert len(sweep.ChunkLog(sweep.log_path(ckpt, "prompt", 0)).chunks) == 3
  path = sweep.log_path(ckpt, "prompt", 1)
  whole = os.path.getsize(path)
  torn = b"ICKP\x40\x00\x00\x00\x00\x00\x00\x00{\"chunk\": 1, \"sta"   # 64 bytes announced
  with open(path, "ab") as f:                      # a kill in the middle of a write
    f.write(torn)
  log = sweep.ChunkLog(path)
  assert len(log.chunks) == 1 and log.valid_bytes == whole and log.dropped_bytes == len(torn)
  resumed = sweep.sweep(group, checkpoint=ckpt, **kw)
  assert resumed.loaded_chunks == 4 and resumed.computed_chunks == 12 - 4
  assert resumed["thm3.1"].to_json() == full["thm3.1"].to_json()
  assert sorted(f for _, _, fs in os.walk(ckpt) for f in fs) == [
      f"bucket{b}.log" for b in range(4)]
  assert sweep.ChunkLog(path).dropped_bytes == 0   # the torn tail was cut before appending
  again = sweep.sweep(group, checkpoint=ckpt, **kw)
  assert again.loaded_chunks == 12 and again.computed_chunks == 0
  assert again["thm3.1"].to_json() == full["thm3.1"].to_json()


def test_a_checkpoint_of_another_chunk_size_is_refused(tmp_path):
  group = [CLAIMS["thm3.1"]]
  kw = dict(instances=40, seed=6, dtype=jnp.float64, dtype_name="float64", progress=False)
  sweep.sweep(group, checkpoint=str(tmp_path), chunk=8, **kw)
  with pytest.raises(ValueError, match="--checkpoint.*another chunk size"):
    sweep.sweep(group, checkpoint=str(tmp_path), chunk=5, **kw)


# --- many processes -----------------------------------------------------------------------

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# chunks of 512 = two micro-batches of 256: each process evaluates one, so the report
# needs both processes' results (smaller chunks would leave process 1 only padding)
ARGS = ["--claims", "thm3.1", "--instances", "2048", "--chunk", "512", "--no-progress",
        "--no-compile-cache"]


def _env():
  e = dict(os.environ, JAX_PLATFORMS="cpu")
  e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
  e.pop("XLA_FLAGS", None)
  return e


def _numbers(report):
  return json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "seconds"}
                     for k, v in report["claims"].items()}, sort_keys=True)


@pytest.mark.slow
def test_two_processes_give_the_one_process_report(tmp_path):
  one = tmp_path / "one.json"
  res = subprocess.run([sys.executable, "-m", "proofs_check", *ARGS, "--json", str(one)],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400)
  assert res.returncode == 0, res.stderr[-3000:]
  two = tmp_path / "two.json"
  coord = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen([sys.executable, "-m", "proofs_check", *ARGS, "--json", str(two),
                             "--coordinator", coord, "--num-processes", "2",
                             "--process-id", str(i)],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  deadline = time.monotonic() + 400
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic())))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "thm3.1" in outs[0][0] and "thm3.1" not in outs[1][0]   # only process 0 reports
  r1, r2 = json.loads(one.read_text()), json.loads(two.read_text())
  assert r2["process_count"] == 2 and r1["process_count"] == 1
  assert r2["device_count"] == 2 and r1["device_count"] == 1
  assert _numbers(r2) == _numbers(r1)


def test_process_flags_go_together():
  res = subprocess.run([sys.executable, "-m", "proofs_check", *ARGS, "--coordinator",
                        "127.0.0.1:1"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=200)
  assert res.returncode == 2
  assert "--coordinator, --num-processes and --process-id go together" in res.stderr


# --- versioned generators: an old report replays and reruns exactly ------------------------

OLD_REPORT = os.path.join(ROOT, "tests", "data", "report-generator-1.json")
"""Made at the commit before generators had versions, by
``XLA_FLAGS=--xla_backend_optimization_level=0 python -m proofs_check --claims
thm3.1,kd-step,thm4.1-bound,thm4.2-literal --instances 64 --chunk 64 --json ...`` (the test
suite's compile level): its JSON has no ``generator`` field."""


def test_a_report_made_before_versioned_generators_replays_and_reruns_exactly():
  import proofs_check
  from proofs_check.report import Report
  raw = json.load(open(OLD_REPORT))
  assert "generator" not in raw
  report = Report.from_json(raw)
  assert report.generator == generators.V1                  # what it was made with
  lines = proofs_check.replay(report)
  assert len(lines) >= 4 and all(ln.agrees for ln in lines), lines
  claims = ",".join(raw["claims"])
  # its instances regenerate from the report's generator: the saved worst arrays are the
  # instance (bucket, index) drawn anew under V1 (the same bits; the arrays to a few ulps, as
  # the instance regenerated alone in test_instance_i_is_a_pure_function...)
  for cid, old in raw["claims"].items():
    w = old["worst_instance"]
    inst = sweep.instance_of(CLAIMS[cid], raw["seed"], w["bucket"], w["index"], jnp.float64,
                             report.generator)
    for name, arr in w["arrays"].items():
      np.testing.assert_allclose(np.asarray(inst[name]),
                                 np.asarray(arr).reshape(w["shapes"][name]),
                                 rtol=8 * np.finfo(np.float64).eps, atol=0, err_msg=(cid, name))
  # rerun with its generator: the same verdicts and counts; a bound's worst instance and ratio
  # (a genuine ratio) are the same; an identity's worst is rounding-level (which instance is
  # worst depends on how the program was compiled: the old one vectorised over micro-batches
  # of the chunk's size, the new one over 256), so it is compared by verdict
  again = proofs_check.check(",".join(raw["claims"]), instances=64, chunk=64,
                             generator=generators.V1)
  for cid, old in raw["claims"].items():
    new = again.claims[cid]
    assert new.violations == old["violations"] and new.verdict == old["verdict"], cid
    if old["worst_label"] == "lhs/rhs":
      assert new.worst_instance.index == old["worst_instance"]["index"], cid
      assert new.check_form.agree(old["worst"], new.worst, "float64"), (cid, old["worst"])
    else:
      assert new.worst <= 1.0 and old["worst"] <= 1.0
  # the newest generator draws other float64 instances from the same seed
  newer = proofs_check.check("thm3.1", instances=64, chunk=64)
  assert newer.environment["generator"] == generators.DEFAULT != generators.V1
  first = sweep.instance_of(CLAIMS["thm3.1"], 0, 0, 0, jnp.float64, generators.V1)
  assert not np.array_equal(np.asarray(first["demos"]),
                            np.asarray(sweep.instance_of(CLAIMS["thm3.1"], 0, 0, 0,
                                                         jnp.float64)["demos"]))


def test_report_numbers_do_not_depend_on_chunking_devices_or_spelling():
  """The same (claims, seed, instances, dtype, convention, generator) give the same report
  numbers: instances spelled out or left to the claim's default, any chunk size, 1 or 4
  devices (CLI), the compile cache on or off."""
  import proofs_check
  from icl_kd.claims import IdentityCheck, define

  from typing import NamedTuple

  class Size(NamedTuple):
    n: int

  def sample(key, b, dtype):
    return dict(x=generators.normal(key, (b.n,), dtype))

  def evaluate(inst, b):
    s = jnp.sum(inst["x"])
    return IdentityCheck(jnp.abs(s - b.n * jnp.mean(inst["x"])) / jnp.sum(jnp.abs(inst["x"])),
                         jnp.asarray(1e-12, inst["x"].dtype))
  claim = define("sum-mean", statement="sum == n mean", sample=sample, evaluate=evaluate,
                 buckets=(Size(5), Size(9)), instances=700, chunk=128)

  def numbers(report):
    return {cid: {k: v for k, v in r.to_json().items() if k != "seconds"}
            for cid, r in report.claims.items()}
  base = numbers(proofs_check.check([claim, "thm3.1"], instances=700))
  assert numbers(proofs_check.check([claim], chunk=96))["sum-mean"] == base["sum-mean"]
  assert numbers(proofs_check.check([claim]))["sum-mean"] == base["sum-mean"]   # default count
  assert numbers(proofs_check.check("thm3.1", instances=700, chunk=64))["thm3.1"] == \
      base["thm3.1"]
