"""Benchmarks: the harness runs and writes valid JSON; each benchmark's two sides agree.

No timing is asserted anywhere: only that the measured code paths compute the
same numbers as their baselines, that the baselines are themselves right
(against brute force), and that the report is well formed.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import icl_kd
from benchmarks import b1_claims, b2_attention, b3_mmd, b4_permutation, b6_compiles, cli, harness
from icl_kd import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the harness --------------------------------------------------------------------

def test_quick_run_writes_a_valid_report(tmp_path):
  """``python -m benchmarks --quick --only B2`` runs and writes <platform>-<date>.json."""
  proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "B2",
                         "--out", str(tmp_path), "--seed", "3", "--no-compile-cache"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  files = os.listdir(tmp_path)
  assert len(files) == 1 and files[0].startswith("cpu-") and files[0].endswith("-quick.json"), files
  with open(tmp_path / files[0]) as f:
    report = json.load(f)                 # strict JSON: NaN/inf would be written as strings
  assert report["quick"] is True and report["seed"] == 3
  assert report["icl_kd_version"] == icl_kd.__version__
  for key in ("platform", "device_kind", "jax", "numpy", "scipy", "python"):
    assert report["machine"][key], key
  assert report["limits"]["matmul_flops_per_s"] > 0 and report["limits"]["copy_bytes_per_s"] > 0
  benches = {r["bench"] for r in report["rows"]}
  assert benches == {"limits", "B2"}, benches
  b2 = [r for r in report["rows"] if r["bench"] == "B2"][0]
  ours, base = b2["ours"], b2["baseline"]
  assert ours["min_s"] <= ours["median_s"] <= ours["max_s"] and ours["compile_s"] > 0
  assert math.isclose(b2["ratio_ours_over_baseline"], ours["median_s"] / base["median_s"])
  assert b2["extra"]["max_rel_diff"] <= 1e-6
  assert 0 < b2["frac_matmul"] and 0 < b2["frac_copy"]
  assert "speedup" in proc.stdout and "B2" in proc.stdout    # the printed table
  # a quick run says so in the JSON and under the table; the table fits 120 columns
  assert harness.QUICK_LINE in proc.stdout
  table = proc.stdout[:proc.stdout.index("Targets:")]
  assert max(len(line) for line in table.splitlines()) <= 120
  assert "Targets: 1 met, 0 missed" in proc.stdout and "exit code 0" in proc.stdout
  assert report["exit_code"] == 0 and report["targets"]["met"] == 1
  assert report["compile_cache"]["directory"] is None


def _fake_benchmarks(monkeypatch, met: bool):
  """``limits`` and ``B1`` replaced by instant fakes (B1: one row whose target is ``met``)."""
  limits = types.ModuleType("fake_limits")
  limits.run = lambda *, quick, seed: ({"matmul_flops_per_s": 1e9, "matmul_flops_per_s_float64": 1e9,
                                        "copy_bytes_per_s": 1e9}, [])
  b1 = types.ModuleType("fake_b1")
  b1.run = lambda *, quick, seed: [harness.Row(
      "B1", "fake", ours=_timing(1.0), baseline=_timing(2.0), baseline_name="loop",
      target=">=100x", met=met)]
  monkeypatch.setitem(sys.modules, "fake_limits", limits)
  monkeypatch.setitem(sys.modules, "fake_b1", b1)
  monkeypatch.setitem(cli.MODULES, "limits", "fake_limits")
  monkeypatch.setitem(cli.MODULES, "B1", "fake_b1")


@pytest.mark.parametrize("met", [True, False])
def test_exit_code_is_0_unless_strict_and_a_target_is_missed(monkeypatch, tmp_path, capsys, met):
  """The documented rule: 0 when the run completed; with --strict, 1 when a target was missed."""
  _fake_benchmarks(monkeypatch, met)
  argv = ["--only", "B1", "--out", str(tmp_path), "--no-compile-cache", "--no-progress"]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert ("MISSED  B1 fake: target >=100x; measured speed-up 2x" in out) == (not met)
  assert "exit code 0: the run completed" in out
  assert cli.main(argv + ["--strict"]) == (0 if met else 1)
  out = capsys.readouterr().out
  assert ("exit code 1: a target was missed (--strict)" in out) == (not met)
  (path,) = [p for p in os.listdir(tmp_path)]
  with open(tmp_path / path) as f:
    report = json.load(f)
  assert report["quick"] is False and report["exit_code"] == (0 if met else 1)
  assert report["targets"]["missed"] == (0 if met else 1)


def test_quick_reports_never_take_the_committed_reports_name():
  """Committed full runs are benchmarks/results/<platform>-<date>.json; a quick run is -quick."""
  full = {"machine": {"platform": "cpu"}, "quick": False}
  assert harness.report_name(full, "2026-12-01") == "cpu-2026-12-01.json"
  assert harness.report_name({**full, "quick": True}, "2026-12-01") == "cpu-2026-12-01-quick.json"
  ignored = subprocess.run(["git", "check-ignore", "-q", "benchmarks/results/cpu-2026-12-01-quick.json"],
                           cwd=ROOT).returncode
  assert ignored in (0, 128)      # 0: ignored by git; 128: not a git checkout (nothing to ignore)


def test_unwritable_out_is_a_usage_error_before_any_work(monkeypatch, capsys):
  """``--out`` under /proc: one line on stderr, exit 2, and no benchmark (not even the limits) ran."""
  _fake_benchmarks(monkeypatch, True)
  ran = []
  monkeypatch.setattr(sys.modules["fake_limits"], "run", lambda **kw: ran.append(kw))
  assert cli.main(["--out", "/proc/icl-kd-bench", "--no-compile-cache", "--no-progress"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("python -m benchmarks: error: --out: "), err
  assert "/proc/icl-kd-bench" in err and not ran


def test_help_documents_the_exit_code_and_every_flag():
  text = " ".join(cli.build_parser().format_help().split())
  assert "Exit code: 0 when the run completed" in text and "--strict" in text
  for action in cli.build_parser()._actions:
    assert action.help, action.option_strings


def test_b1_quick_row_carries_a_caveat(monkeypatch):
  """The quick B1 speed-up is flagged as meaningless; the full run's is not."""
  def fake_measure(dtype, *, instances, loop_count, seed, repeats):
    t = _timing(0.01)
    return dict(steady=t, wall=t, loop=_timing(0.02), loop_result={}, stats={})
  monkeypatch.setattr(b1_claims, "measure", fake_measure)
  monkeypatch.setattr(b1_claims, "_child", lambda *a, **k: fake_measure(None, instances=1,
                                                                        loop_count=1, seed=0,
                                                                        repeats=1))
  monkeypatch.setattr(b1_claims, "agreement", lambda dtype, seed: {})
  monkeypatch.setattr(b1_claims, "sampling_only", lambda dtype, n, seed: 1e-6)
  quick = b1_claims.run(quick=True, seed=0)
  assert quick and all("says nothing" in r.note and f"{r.extra['instances']:,}" in r.note
                       for r in quick)
  full = b1_claims.run(quick=False, seed=0)
  assert full and not any(r.note for r in full)


def test_b1_sampling_share_draws_exactly_what_the_check_reads():
  """The trivial evaluation of the sampler's share sums the fields C1 reads and no others.

  C1 (docs/THEORY.md) reads the three weight matrices, the demonstrations, the
  query and tau; the prompt group's ``omega`` directions belong to C2 and are
  dead code in the C1 program, so summing them would time Gaussians the real
  program never draws. A check that does read ``omega`` must get it back.
  """
  expected = ("w_q", "w_k", "w_v", "demos", "query", "tau")
  assert set(b1_claims.fields_read(dtype=jnp.float32)) == set(expected)
  c = b1_claims.claim()
  greedy = dataclasses.replace(
      c, compute=lambda inst, bucket, shared: c.compute(inst, bucket, shared)._replace(
          error=c.compute(inst, bucket, shared).error + 0.0 * jnp.sum(inst["omega"])))
  assert set(b1_claims.fields_read(greedy, dtype=jnp.float32)) == set(expected) | {"omega"}


def test_unknown_benchmark_is_a_usage_error():
  proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "B9"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "unknown benchmark 'B9'" in proc.stderr


def test_timing_summary_and_ratio():
  t = harness._summary([3.0, 1.0, 2.0, 10.0, 4.0], compile_s=0.5)
  assert (t.median, t.min, t.max, t.repeats, t.compile) == (3.0, 1.0, 10.0, 5, 0.5)
  assert t.iqr == pytest.approx(np.percentile([1, 2, 3, 4, 10], 75) - 2.0)
  row = harness.Row("B0", "case", ours=harness._summary([2.0]), baseline=harness._summary([0.5]),
                    scaled=8.0, flops=4e9, bytes=1e9)
  assert row.ratio == pytest.approx(2.0 / (0.5 * 8.0))
  fr = row.fractions({"matmul_flops_per_s": 4e9, "copy_bytes_per_s": 1e9})
  assert fr["frac_matmul"] == pytest.approx(0.5) and fr["frac_copy"] == pytest.approx(0.5)
  row.float64 = True
  assert "frac_matmul" not in row.fractions({"matmul_flops_per_s": 4e9})
  assert row.reason() == "speed-up 2x"      # the default "why" of a target: 1 / ratio
  nan_row = harness.Row("B0", "nan", ours=harness._summary([float("nan")]))
  assert json.loads(json.dumps(runtime.jsonable(nan_row.to_json({}))))["ours"]["median_s"] == "nan"


def _timing(seconds):
  return harness._summary([seconds], compile_s=0.1)


def test_table_fits_120_columns_and_marks_quick_runs_and_notes():
  long = "x" * 200
  rows = [harness.Row("B1", "C1 1e+06 inst n=33 d=8 float32 [XLA default] " + long,
                      ours=_timing(12.3), baseline=_timing(0.08), baseline_name="NumPy loop " + long,
                      scaled=1000.0, flops=1e9, bytes=1e8, target=">=100x", met=False,
                      note="quick size too small for this ratio"),
          harness.Row("B6", "c1_batch all buckets: 36 calls", target="compiles <= buckets", met=True)]
  limits = {"matmul_flops_per_s": 5e10, "matmul_flops_per_s_float64": 2.5e10,
            "copy_bytes_per_s": 2e10}
  for quick in (True, False):
    text = harness.format_table(rows, limits, quick=quick)
    assert max(len(line) for line in text.splitlines()) <= 120
    assert (harness.QUICK_LINE in text) == quick
    assert "[1] quick size too small for this ratio" in text
    assert "6.5x[1]" in text                                # speed-up 0.08 * 1000 / 12.3
  lines = harness.target_lines(rows)
  assert len(lines) == 2 and lines[0].startswith("MISSED  B1") and lines[1].startswith("met")
  assert "measured speed-up 6.5x" in lines[0]


def test_time_jit_separates_compile_and_blocks():
  timing, out, _ = harness.time_jit(lambda x: jnp.sum(x * x), jnp.arange(4.0), repeats=3)
  assert float(out) == 14.0 and timing.repeats == 3 and timing.compile is not None


def test_time_end_to_end_reports_the_cold_compile():
  """A function that builds a fresh jitted program per call: compile is seen and subtracted."""
  steady, wall, out = harness.time_end_to_end(
      lambda: jax.jit(lambda x: x * 3.0)(jnp.arange(3.0)), repeats=2)
  np.testing.assert_array_equal(out, [0.0, 3.0, 6.0])
  assert wall.compile > 0 and steady.repeats == wall.repeats == 2
  assert steady.median <= wall.median


# -- B1 -----------------------------------------------------------------------------

def test_b1_numpy_check_matches_the_proofs_check_path():
  """NumPy's attention == icl_kd.decompose on sweep-drawn instances; same C1 verdicts."""
  from proofs_check import sweep
  c = b1_claims.claim()
  for i in range(6):
    inst = sweep.instance_of(c, 7, 0, i, jnp.float64)
    np_inst = {k: np.asarray(v) for k, v in inst.items()}
    np_inst["tau"] = float(np_inst["tau"])
    att, err, tol = b1_claims.numpy_check(np_inst)
    out = icl_kd.decompose(icl_kd.AttentionParams(inst["w_q"], inst["w_k"], inst["w_v"]),
                           inst["demos"], inst["prefix"], inst["query"], tau=inst["tau"])
    np.testing.assert_allclose(np.asarray(out.attention), att, rtol=1e-11, atol=1e-14)
    ev = c.evaluate(inst, b1_claims.BUCKET)
    assert err <= tol and float(ev.error) <= float(ev.tolerance)


def test_b1_numpy_check_against_brute_force():
  """The baseline's attention is sum_j softmax_j W^V x_j computed term by term."""
  inst = b1_claims.numpy_instance(np.random.default_rng(4), np.float64)
  att, err, _ = b1_claims.numpy_check(inst)
  ctx = np.concatenate([inst["demos"], inst["prefix"], inst["query"][None]])
  s = [float((inst["w_k"] @ x) @ (inst["w_q"] @ inst["query"])) / inst["tau"] for x in ctx]
  w = [math.exp(v - max(s)) for v in s]
  want = sum(wi * (inst["w_v"] @ x) for wi, x in zip(w, ctx)) / sum(w)
  np.testing.assert_allclose(att, want, rtol=1e-12)
  assert err <= 1e-12 * max(1.0, max(abs(v) for v in s) / 10)
  # The sampler scales W^Q so that the largest |score| is 10^u with u in [-3, 3].
  assert 1e-3 * (1 - 1e-9) <= max(abs(v) for v in s) <= 1e3 * (1 + 1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_b1_numpy_loop_finds_no_violation(dtype):
  res = b1_claims.numpy_loop(40, dtype, seed=1)
  assert res["count"] == 40 and res["violations"] == 0
  assert 0 < res["worst_error_over_tolerance"] <= 1


# -- B2 -----------------------------------------------------------------------------

_b2_ours = jax.jit(b2_attention.ours)
_b2_base = jax.jit(b2_attention.baseline)


def test_b2_ours_equals_dot_product_attention():
  params, contexts, queries = b2_attention.make_inputs(256, jnp.float32, 2)
  diff = b2_attention.max_rel_diff(_b2_ours(params, contexts, queries),
                                   _b2_base(params, contexts, queries))
  assert diff <= 1e-6, diff


def test_b2_baseline_against_numpy_float64():
  """The baseline computes softmax(q k^T / tau) v (float32 inputs; NumPy float64 reference).

  (The xla path of ``dot_product_attention`` takes its softmax in float32 even
  for float64 inputs, so float32 is its precision.)
  """
  params, contexts, queries = b2_attention.make_inputs(8, jnp.float32, 5)
  got = np.asarray(_b2_base(params, contexts, queries), np.float64)
  p = {k: np.asarray(v, np.float64) for k, v in params._asdict().items()}
  for b in range(8):
    c, q = np.asarray(contexts[b], np.float64), np.asarray(queries[b], np.float64)
    s = (c @ p["w_k"].T) @ (p["w_q"] @ q) / b2_attention.TAU
    w = np.exp(s - s.max())
    want = (w / w.sum()) @ (c @ p["w_v"].T)
    assert np.linalg.norm(got[b] - want) <= 2e-6 * np.linalg.norm(want)


# -- B3 -----------------------------------------------------------------------------

_b3_fused = jax.jit(b3_mmd.ours_fused)
_b3_vmap = jax.jit(b3_mmd.ours_vmap)


def _brute_mmd2_unbiased(x, y, h):
  k = lambda a, b: math.exp(-float(np.sum((a - b) ** 2)) / (2 * h * h))
  n, m = len(x), len(y)
  sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j)
  syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
  sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
  return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)


def test_b3_baselines_against_brute_force():
  x, y = (np.asarray(a) for a in b3_mmd.samples(7, 9, b3_mmd.D, 0))
  want = _brute_mmd2_unbiased(x, y, b3_mmd.BANDWIDTH)
  for fn in (b3_mmd.numpy_mmd2, b3_mmd.cdist_mmd2):
    value, scale = fn(x, y)
    assert abs(value - want) <= 1e-13 * scale, (fn.__name__, value, want)


def test_b3_ours_equals_baselines():
  x, y = b3_mmd.samples(96, 80, b3_mmd.D, 1)
  ref, scale = b3_mmd.cdist_mmd2(np.asarray(x), np.asarray(y))
  for fn in (_b3_fused, _b3_vmap):
    assert abs(float(fn(x, y)) - ref) <= 1e-13 * scale
  f32 = float(_b3_fused(x.astype(jnp.float32), y.astype(jnp.float32)))
  assert abs(f32 - ref) <= 1e-5 * scale


# -- B4 -----------------------------------------------------------------------------

_b4_ours = jax.jit(b4_permutation.ours, static_argnums=(3,))
_b4_base = jax.jit(b4_permutation.permuted_statistics, static_argnums=(3, 4))


def test_b4_recomputation_reproduces_the_permutation_test():
  """Same permutations: the recomputed statistics give the same statistic and p-value."""
  x, y = b4_permutation.samples(24, 0)
  key = jax.random.key(9)
  res = _b4_ours(x, y, key, 60)
  obs, stats = _b4_base(x, y, key, 60, 60)
  assert abs(float(res.statistic) - float(obs)) <= 1e-12 * abs(float(obs)) + 1e-15
  assert float(res.p_value) == b4_permutation.p_value(obs, stats)
  # Under H1 with a large shift the observed split beats every permutation.
  res_far = _b4_ours(x, y + 3.0, key, 60)
  obs_far, stats_far = _b4_base(x, y + 3.0, key, 60, 60)
  assert float(res_far.p_value) == b4_permutation.p_value(obs_far, stats_far) == 1 / 61


def test_b4_permutations_are_label_shuffles():
  """Each recomputed split has n points of the pooled sample on one side, none repeated."""
  x, y = b4_permutation.samples(10, 1)
  _, stats = _b4_base(x, y, jax.random.key(2), 30, 30)
  assert stats.shape == (30,) and len(set(np.round(np.asarray(stats), 14))) > 20


# -- B6 -----------------------------------------------------------------------------

@jax.jit
def _counted_square(x):
  return x * x


def test_b6_counter_counts_one_compile_per_shape():
  with b6_compiles.count_compiles("_counted_square") as counter:
    for _ in range(3):
      for n in (3, 5):
        _counted_square(jnp.arange(float(n)))
  assert counter.count == 2


def test_b6_child_runs_the_property_test_in_a_fresh_process():
  """The child process configures itself as the suite does (type-check hook before icl_kd) and
  reports one compile per bucket the dev-profile property test drew (8 examples, <= 8 buckets)."""
  rows = b6_compiles.run(quick=True, seed=0)
  assert [r.bench for r in rows] == ["B6", "B6"]
  for r in rows:
    assert 1 <= r.extra["buckets"] <= 8 and r.extra["compiles"] == r.extra["buckets"], r.extra
    assert r.met
  assert rows[0].extra["calls"] == 8 and rows[1].extra["calls"] == 3 * rows[1].extra["buckets"]


def test_b5_reports_a_hung_run_as_a_missed_target(monkeypatch):
  """A default run that does not finish is killed after TIMEOUT_S and becomes one MISSED row
  (no warm run after it), not a benchmark that waits forever."""
  import subprocess

  from benchmarks import b5_proofs_check as b5

  calls = []

  def hang(cmd, **kw):
    calls.append(kw["timeout"])
    raise subprocess.TimeoutExpired(cmd, kw["timeout"], stderr=b"  rademacher-empirical 0/3,000")

  monkeypatch.setattr(b5.subprocess, "run", hang)
  rows = b5.run(quick=False, seed=0)
  assert calls == [b5.TIMEOUT_S]
  assert len(rows) == 1 and rows[0].met is False
  assert "no result after" in rows[0].reason() and "rademacher" in rows[0].extra["last_progress"]


def test_gpu_script_runs_its_steps_on_the_cpu_with_check(tmp_path):
  """benchmarks/gpu.sh --check: every step of the GPU run on the CPU at small sizes, nothing
  installed: the benchmark report (quick B3), the main job cold then warm on one compile cache,
  and their wall times; the script refuses an unknown argument."""
  import json as _json
  import subprocess as _sp
  script = os.path.join(ROOT, "benchmarks", "gpu.sh")
  env = dict(os.environ, PYTHON=sys.executable)
  env.pop("XLA_FLAGS", None)
  res = _sp.run(["bash", script, "--check", "--out", str(tmp_path)], cwd=ROOT, env=env,
                capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
  names = sorted(os.listdir(tmp_path))
  assert any(n.endswith("-quick.json") and n.startswith("cpu-") for n in names), names
  bench = _json.load(open(tmp_path / next(n for n in names if n.endswith("-quick.json"))))
  assert {r["bench"] for r in bench["rows"]} >= {"B3"}
  times = _json.load(open(tmp_path / next(n for n in names if n.endswith("-times.json"))))
  assert set(times) == {"cold", "warm"} and all(t["exit"] == 0 for t in times.values())
  cold = _json.load(open(tmp_path / next(n for n in names if n.endswith("-cold.json"))))
  warm = _json.load(open(tmp_path / next(n for n in names if n.endswith("-warm.json"))))
  assert cold["platform"] == "cpu" and cold["compile_level"] == "default"
  assert {k: v["worst"] for k, v in cold["claims"].items()} == \
      {k: v["worst"] for k, v in warm["claims"].items()}
  bad = _sp.run(["bash", script, "--bogus"], cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode == 2 and "unknown argument" in bad.stderr
