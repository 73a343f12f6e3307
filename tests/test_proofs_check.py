"""proofs_check: checkers, verdict machinery, check(), CLI, determinism, resume, sharding, replay.

The documented verdict rules (proofs_check/verdicts.py) are tested here at
their boundaries; the claims' own samplers and negative controls are in
tests/test_claims.py.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import proofs_check
from icl_kd.claims import (CLAIMS, BoundCheck, ConjectureCheck, EventCheck, IdentityCheck,
                           Measurement)
from proofs_check import sweep, verdicts
from proofs_check.report import Report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = 96  # instances per group in these tests: a few per bucket


@pytest.fixture(scope="module")
def small_run():
  """Every claim group swept once on a few instances (shared by the checker tests)."""
  groups = {}
  for c in CLAIMS.values():
    groups.setdefault(c.group_id, []).append(c)
  out = {}
  for group in groups.values():
    n = 24 if group[0].check_type.form.name == "event" or group[0].id == "rademacher-empirical" else SMALL
    out.update(sweep.sweep(group, instances=n, seed=3, dtype=jnp.float64, dtype_name="float64",
                           progress=False, chunk=32))
  return out


@pytest.mark.parametrize("cid", [c for c in CLAIMS if CLAIMS[c].role.fails_run])
def test_each_checker_holds_on_small_instances(small_run, cid):
  claim = CLAIMS[cid]
  st = small_run[cid]
  v = verdicts.decide(claim.check_type, st, delta=claim.delta)
  assert st.count > 0 and st.out_of_range == 0 and st.vacuous == 0
  assert v.passed, (cid, v.detail)
  form = claim.check_type.form.name
  if form == "identity":
    assert v.detail["max_error_over_tolerance"] <= 1.0
  elif form != "event":       # those may exceed 1 at a rate <= delta
    assert v.detail["max_ratio"] <= 1.0 + 1e-9


def test_squared_residual_is_measured_and_its_identity_holds(small_run):
  st = small_run["dw-step-squared"]
  assert st.count > 0 and st.out_of_range == 0
  assert np.median(st.sample) > 1e-3  # R is not negligible: the squared loss is not attention
  err = np.asarray(st.extra_samples["identity_error"])
  assert np.all(err <= 1e-10), err.max()  # step == dW - R at every measured instance


def test_literal_c5_form_is_violated_by_random_instances(small_run):
  """The paper's literal constants fail on some random instances (a result, not a bug)."""
  st = small_run["thm4.1-literal-gaussian"]
  v = verdicts.decide(ConjectureCheck, st)
  assert v.passed  # a conjecture never fails the run
  assert st.violations > 0 and v.detail["max_ratio"] > 1.0


# --- the generic verdict machinery, with planted violations -----------------------------

def test_planted_bound_violation_is_a_failure():
  log_lhs = np.log(np.array([0.5, 0.9, 1.2, 0.1]))
  wrong_rhs = np.zeros(4)                        # rhs = 1 < lhs at instance 2
  st = verdicts.reduce_chunk(BoundCheck(log_lhs, wrong_rhs), bucket=0, start=0,
                             dtype_name="float64")
  v = verdicts.decide(BoundCheck, st)
  assert not v.passed and v.verdict == "FAILS" and st.violations == 1
  assert st.worst_index == (0, 2)
  np.testing.assert_allclose(v.detail["max_ratio"], 1.2)
  np.testing.assert_allclose(v.detail["min_slack"], -0.2)


def test_bound_within_rounding_holds_and_beyond_fails():
  ok = verdicts.reduce_chunk(BoundCheck(np.array([np.log1p(1e-12)]), np.zeros(1)), bucket=0,
                             start=0, dtype_name="float64")
  assert verdicts.decide(BoundCheck, ok).passed
  bad = verdicts.reduce_chunk(BoundCheck(np.array([np.log1p(1e-6)]), np.zeros(1)), bucket=0,
                              start=0, dtype_name="float64")
  assert not verdicts.decide(BoundCheck, bad).passed


def test_planted_identity_failure_and_nonfinite():
  st = verdicts.reduce_chunk(IdentityCheck(np.array([1e-15, 3e-12]), np.array([1e-12, 1e-12])),
                             bucket=1, start=10, dtype_name="float64")
  v = verdicts.decide(IdentityCheck, st)
  assert not v.passed and st.worst_index == (1, 11) and v.detail["max_error"] == 3e-12
  nan = verdicts.reduce_chunk(IdentityCheck(np.array([np.nan]), np.ones(1)), bucket=0, start=0,
                              dtype_name="float64")
  # out of range, not a violation; with no instance in range the claim is undecided (fails)
  v = verdicts.decide(IdentityCheck, nan)
  assert nan.out_of_range == 1 and nan.violations == 0
  assert not v.passed and v.verdict == "undecided"


def test_probabilistic_bound_binomial_test():
  """10 events in 100 at delta = 0.05: P[Bin >= 10] = 0.028 > 0.01 holds; 15 fails."""
  def run(events):
    violated = np.zeros(100, bool)
    violated[:events] = True
    st = verdicts.reduce_chunk(EventCheck(np.zeros(100), np.ones(100), violated), bucket=0,
                               start=0, dtype_name="float64")
    return verdicts.decide(EventCheck, st, delta=0.05)
  assert run(10).passed and not run(15).passed
  # exact binomial tail against a direct sum
  from math import comb
  direct = sum(comb(100, i) * 0.05 ** i * 0.95 ** (100 - i) for i in range(10, 101))
  np.testing.assert_allclose(run(10).detail["binomial_p_value"], direct, rtol=1e-10)


def test_merge_is_order_consistent():
  a = verdicts.reduce_chunk(BoundCheck(np.array([-1.0, -0.5]), np.zeros(2)), bucket=0, start=0,
                            dtype_name="float64")
  b = verdicts.reduce_chunk(BoundCheck(np.array([-0.2, -3.0]), np.zeros(2)), bucket=0, start=2,
                            dtype_name="float64")
  m = verdicts.merge(a, b)
  assert m.count == 4 and m.worst_index == (0, 2)
  np.testing.assert_allclose(m.worst, -0.2)
  assert [t[2] for t in m.top[:2]] == [2, 1]


# --- CLI ---------------------------------------------------------------------------------

def _cli(*args, env=None, timeout=600):
  e = dict(os.environ, **(env or {}))
  e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
  return subprocess.run([sys.executable, "-m", "proofs_check", *args], cwd=ROOT, env=e,
                        capture_output=True, text=True, timeout=timeout)


def _summary(stdout: str) -> str:
  """The closing summary of the CLI's output: its last unindented line and the indented
  continuation lines after it (wrapped at 120 columns), joined back into one line."""
  lines = stdout.rstrip().splitlines()
  start = max(i for i, line in enumerate(lines) if not line.startswith(" "))
  return " ".join(line.strip() for line in lines[start:])


SUBSET = ["--claims", "thm3.1,thm4.1-*,thm4.2-literal", "--instances", "64", "--chunk", "32", "--no-progress"]
NO_CACHE = ["--no-compile-cache"]


def _numbers(report):
  """Every number of a report except wall-clock seconds."""
  claims = {k: {kk: vv for kk, vv in v.items() if kk not in ("seconds",)}
            for k, v in report["claims"].items()}
  return json.dumps(claims, sort_keys=True)


@pytest.fixture(scope="module")
def subset_report(tmp_path_factory):
  path = tmp_path_factory.mktemp("report") / "r.json"
  res = _cli(*SUBSET, *NO_CACHE, "--json", str(path))
  assert res.returncode == 0, res.stderr + res.stdout
  return res, json.loads(path.read_text()), path


def test_cli_table_json_schema_and_exit_code(subset_report):
  res, report, _ = subset_report
  assert "thm3.1" in res.stdout and "viol." in res.stdout
  # the paper's statements, the corrected one, consistency checks and conjectures apart
  summary = _summary(res.stdout)
  assert summary.startswith("statements of the paper: 1 holds; corrected statements")
  assert "consistency checks (true by construction: not evidence): 1 holds" in summary
  assert "5 violated: thm4.1-literal-gaussian" in summary
  assert summary == report["summary"]                          # the JSON's line, unwrapped
  table = res.stdout.split("\nn: instances.")[0].splitlines()   # the table, before its legend
  assert len(table) >= 9 and max(len(line) for line in res.stdout.splitlines()) <= 120
  for key in ("version", "seed", "dtype", "jax_version", "platform", "device_count", "claims"):
    assert key in report
  assert report["dtype"] == "float64" and report["seed"] == 0
  assert set(report["claims"]) == {"thm3.1", "thm4.1-identity", "thm4.1-bound",
                                   "thm4.1-literal-gaussian", "thm4.1-literal-softmax",
                                   "thm4.1-literal-normalised", "thm4.1-literal-tv",
                                   "thm4.2-literal"}
  assert report["convention"] == "eq12"
  att = report["attribution"]["thm4.1-literal-normalised"]
  # the normalised reading is thm4.1-bound / c: under half it cannot be violated
  assert att["rate_half"] == 0 and att["max_ratio_half"] <= 1 + 1e-9
  assert att["max_ratio_eq12"] <= 2 + 1e-9
  # ... and it is its own reference kernel in the 2 x 2 (kernel x convention)
  assert att["normalised_rate_eq12"] == att["rate_eq12"]
  # every literal reading reads violated: refuted analytically under eq12, whatever the sweep
  for cid in ("thm4.1-literal-gaussian", "thm4.1-literal-softmax", "thm4.1-literal-normalised",
              "thm4.1-literal-tv", "thm4.2-literal"):
    assert report["claims"][cid]["verdict"] == "violated (analytic)", cid
    assert report["attribution"][cid]["refuted_by"], cid
  assert report["claims"]["thm4.1-literal-tv"]["violations"] == 0    # the sweep finds none
  assert report["counts"]["conjecture"]["ids"]["violated"][0] == "thm4.1-literal-gaussian"
  assert {e["role"] for e in report["claims"].values()} == {"paper", "corrected", "consistency",
                                                          "conjecture"}
  for entry in report["claims"].values():
    for key in ("kind", "role", "form", "theory", "instances", "violations", "out_of_range",
                "vacuous", "verdict", "passed", "seconds", "detail", "worst", "worst_label",
                "min_slack", "worst_instance", "events", "extras", "witnesses"):
      assert key in entry
    assert entry["instances"] == 64
    assert set(entry["worst_instance"]) >= {"bucket", "index", "config", "values", "arrays"}


def test_cli_same_seed_same_numbers_with_and_without_compile_cache(subset_report, tmp_path):
  """A second run, now through a fresh persistent compile cache, gives the same numbers."""
  _, report, _ = subset_report
  path = tmp_path / "again.json"
  cache = tmp_path / "cache"
  res = _cli(*SUBSET, "--compile-cache", str(cache), "--json", str(path))
  assert res.returncode == 0, res.stderr
  assert os.listdir(cache)                         # the cache was written
  assert _numbers(json.loads(path.read_text())) == _numbers(report)


@pytest.mark.slow
def test_check_agrees_with_the_cli_json(subset_report):
  """proofs_check.check() in this process gives the CLI's report, number for number."""
  _, report, _ = subset_report
  ours = proofs_check.check("thm3.1,thm4.1-*,thm4.2-literal", instances=64, chunk=32).to_json()
  assert _numbers(json.loads(json.dumps(ours))) == _numbers(report)
  assert ours["passed"] == report["passed"] and ours["summary"] == report["summary"]
  back = Report.from_json(report)
  assert back.ok == report["passed"] and list(back.claims) == list(report["claims"])
  assert _numbers(json.loads(json.dumps(back.to_json()))) == _numbers(report)


def test_table_worst_is_the_json_worst_and_the_largest_error_over_tolerance(subset_report):
  res, report, _ = subset_report
  entry = report["claims"]["thm3.1"]
  assert entry["worst_label"] == "error/tolerance"
  vals = entry["worst_instance"]["values"]
  # the saved instance re-evaluated alone: the same error in units of its tolerance
  assert abs(entry["worst"] - vals["error"] / vals["tolerance"]) <= 0.1
  row = next(line for line in res.stdout.splitlines() if line.startswith("thm3.1 "))
  assert f"{entry['worst']:.2g}" in row and f"{entry['worst_error']:.1e}" in row


def test_cli_sharded_equals_unsharded(subset_report, tmp_path):
  """Four host devices give the same report numbers as one per core (the CLI's choice), at
  the same compile level (the suite's, from XLA_FLAGS)."""
  _, report, _ = subset_report
  path = tmp_path / "sharded.json"
  flags = os.environ.get("XLA_FLAGS", "")
  res = _cli(*SUBSET, "--json", str(path),
             env={"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=4",
                  "JAX_PLATFORMS": "cpu"})
  assert res.returncode == 0, res.stderr
  sharded = json.loads(path.read_text())
  assert sharded["device_count"] == 4 and report["device_count"] == (os.cpu_count() or 1) != 4
  assert _numbers(sharded) == _numbers(report)


def test_cli_replay_reproduces_worst_instances(subset_report):
  _, _, path = subset_report
  res = _cli("--replay", str(path), *NO_CACHE)
  assert res.returncode == 0, res.stdout + res.stderr
  assert "replay reproduces the report" in res.stdout and "DIFFERS" not in res.stdout


def test_replay_of_an_empty_prefix_worst_instance(subset_report, tmp_path):
  """A worst instance with M = 0 (prefix saved as shape (0, d)) replays by verdict."""
  _, report, _ = subset_report
  claim = CLAIMS["thm3.1"]
  assert claim.buckets[0].m == 0
  inst = sweep.instance_of(claim, 0, 0, 5, jnp.float64)
  from icl_kd.claims import check_values
  values = check_values(claim.evaluate(inst, claim.buckets[0]))
  entry = report["claims"]["thm3.1"]
  entry["worst_instance"] = dict(
      bucket=0, index=5, config=list(claim.buckets[0]), values=values,
      arrays={k: np.asarray(v).tolist() for k, v in inst.items()})   # no shapes: old reports
  entry["worst"] = values["error"] / values["tolerance"]
  entry["worst_error"] = values["error"]
  assert entry["worst_instance"]["arrays"]["prefix"] == []
  path = tmp_path / "m0.json"
  path.write_text(json.dumps(report))
  lines = proofs_check.replay(Report.from_json(json.loads(path.read_text())), "thm3.1")
  assert lines and all(ln.agrees for ln in lines), lines
  res = _cli("--replay", str(path), "--claims", "thm3.1", *NO_CACHE)
  assert res.returncode == 0 and "replay reproduces the report" in res.stdout, res.stdout + res.stderr


def test_cli_replay_detects_a_tampered_report(subset_report, tmp_path):
  _, report, _ = subset_report
  report = json.loads(json.dumps(report))
  report["claims"]["thm3.1"]["worst"] = 2.0          # a violation the instance does not have
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps(report))
  res = _cli("--replay", str(bad), "--claims", "thm3.1", *NO_CACHE)
  assert res.returncode == 1 and "DIFFERS" in res.stdout


@pytest.mark.parametrize("args", [["--claims", "nope"], ["--instances", "0"],
                                  ["--dtype", "float16"], ["--adversarial", "-1"],
                                  ["--bogus"], ["--replay", "/no/such/report.json"],
                                  ["--claims", "thm3.1", "--json", "/no/such/folder/r.json"]])
def test_cli_bad_usage_exits_2(args):
  res = _cli(*args, *NO_CACHE)
  assert res.returncode == 2, (args, res.stdout, res.stderr)
  assert "error" in res.stderr
  last = res.stderr.strip().splitlines()[-1]
  assert "Traceback" not in res.stderr and "python -m proofs_check: error:" in last


def test_cli_bad_replay_file_is_one_line(tmp_path):
  bad = tmp_path / "x.json"
  bad.write_text("{not json")
  res = _cli("--replay", str(bad), *NO_CACHE)
  assert res.returncode == 2 and "Traceback" not in res.stderr and "--replay" in res.stderr


def test_cli_list():
  res = _cli("--list", *NO_CACHE)
  assert res.returncode == 0
  for cid in ("thm3.1", "kd-step", "dw-step-linear", "dw-step-squared", "thm3.2",
              "rademacher-empirical", "thm4.1-identity", "thm4.1-bound", "thm4.1-literal-gaussian",
              "thm4.1-literal-softmax", "thm4.1-literal-normalised", "thm4.1-literal-tv",
              "thm3.2-paper-form", "thm4.2-mmd", "thm4.2-literal",
              "thm4.2-prediction", "thm4.2-risk", "lr-proxy"):
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith(cid + " "))
    c = CLAIMS[cid]
    assert c.theory in line and c.figure in line and c.kind in line


def test_select_by_theory_number_glob_and_id():
  assert proofs_check.select("C5") == ["thm4.1-identity", "thm4.1-bound",
                                       "thm4.1-literal-gaussian", "thm4.1-literal-softmax",
                                       "thm4.1-literal-normalised", "thm4.1-literal-tv"]
  assert proofs_check.select("C4,thm3.1") == ["thm3.2", "thm3.2-paper-form",
                                              "rademacher-empirical", "thm3.1"]
  assert proofs_check.select("thm4.2-*") == ["thm4.2-prediction", "thm4.2-mmd", "thm4.2-literal",
                                             "thm4.2-risk"]
  # the old id is an alias of the Gaussian reading
  assert proofs_check.select("thm4.1-literal") == ["thm4.1-literal-gaussian"]
  with pytest.raises(ValueError, match="claims: no claim matches 'C9'"):
    proofs_check.select("C9")


def test_check_planted_failure_is_not_ok():
  """A claim whose right side is deliberately wrong fails the report (the CLI exits 1)."""
  import dataclasses
  from icl_kd.claims import c5_mmd_bias

  def wrong_rhs(inst, bucket, shared):
    v = c5_mmd_bias.compute_bound(inst, bucket, shared)     # noqa: the real bound
    return v._replace(log_rhs=v.log_rhs - 1.0)              # rhs / e: now too small

  planted = dataclasses.replace(CLAIMS["thm4.1-bound"], id="planted", compute=wrong_rhs,
                                group="planted")
  report = proofs_check.check([planted], instances=32, chunk=32)
  r = report.claims["planted"]
  assert not report.ok and r.verdict == "FAILS" and r.violations > 0
  assert "1 FAILS: planted" in report.summary()


# --- resume --------------------------------------------------------------------------------

@pytest.mark.slow   # tests/test_sweep_scale.py resumes a killed run (torn record) by default
def test_checkpoint_resume_matches_uninterrupted(tmp_path):
  group = [CLAIMS["thm3.1"], CLAIMS["lr-proxy"]]
  kw = dict(instances=200, seed=5, dtype=jnp.float64, dtype_name="float64", progress=False,
            chunk=16)
  full = sweep.sweep(group, **kw)
  ckpt = str(tmp_path / "ckpt")
  with pytest.raises(KeyboardInterrupt):
    sweep.sweep(group, checkpoint=ckpt, stop_after_chunks=5, **kw)   # killed mid-run
  assert sweep.saved_chunks(ckpt, group[0].group_id) == 5
  calls = []
  orig = sweep.batch_fn

  def counting(*a, **k):
    fn = orig(*a, **k)
    def wrapped(*x):
      calls.append(1)
      return fn(*x)
    return wrapped

  sweep.batch_fn = counting
  try:
    resumed = sweep.sweep(group, checkpoint=ckpt, **kw)
  finally:
    sweep.batch_fn = orig
  total_chunks = sum(-(-n // 16) for n in sweep.bucket_counts(200, len(group[0].buckets)))
  assert len(calls) == total_chunks - 5       # the saved chunks were not redone
  assert resumed.loaded_chunks == 5 and resumed.computed_chunks == total_chunks - 5
  for cid in ("thm3.1", "lr-proxy"):
    assert resumed[cid].to_json() == full[cid].to_json()


@pytest.mark.slow   # tests/test_sweep_scale.py checks instance i as a pure function by default
def test_instance_of_regenerates_the_swept_instance():
  """The worst instance is regenerated bit for bit and re-evaluates to the swept ratio."""
  claim = CLAIMS["lr-proxy"]
  st = sweep.sweep(claim, instances=40, seed=2, dtype=jnp.float64, dtype_name="float64",
                   progress=False, chunk=8)[claim.id]
  b, idx = st.worst_index
  inst = sweep.instance_of(claim, 2, b, idx, jnp.float64)
  bkey = jax.random.fold_in(sweep.claim_key(2, claim.group_id), b)
  batch = jax.vmap(lambda i: claim.sample(jax.random.fold_in(bkey, i), claim.buckets[b],
                                          jnp.float64))(jnp.arange(idx + 1, dtype=jnp.uint32))
  for name, arr in inst.items():
    np.testing.assert_array_equal(arr, batch[name][idx])
  v = claim.evaluate(inst, claim.buckets[b])
  # a genuine ratio (not a rounding-level error), so eager and batched agree closely
  np.testing.assert_allclose(float(v.log_lhs - v.log_rhs), st.worst, rtol=1e-10)


# --- adversarial search ----------------------------------------------------------------------

def _starts(cid, n=4, bucket=0, seed=11):
  claim = CLAIMS[cid]
  return claim, [sweep.instance_of(claim, seed, bucket, i, jnp.float64) for i in range(n)]


@pytest.mark.slow   # every bound's negative control (tests/test_claims.py) runs by default
def test_adversarial_cannot_push_a_true_bound_above_one():
  from proofs_check import adversarial
  claim, starts = _starts("thm4.1-bound")
  res = adversarial.search(claim, starts, 0, steps=25)
  assert res["initial_max_ratio"] <= 1.0
  assert res["max_ratio"] >= res["initial_max_ratio"] * (1 - 1e-12)  # it searched upward
  assert res["max_ratio"] <= 1.0 + 1e-9
  # the saved instance is inside the assumptions and replays to the same ratio
  inst = {k: jnp.asarray(v) for k, v in res["instance"].items()}
  assert float(jnp.max(jnp.linalg.norm(inst["x_p"], axis=-1))) <= 1.0 + 1e-12
  v = claim.evaluate(inst, claim.buckets[0])
  np.testing.assert_allclose(np.exp(float(v.log_lhs - v.log_rhs)), res["max_ratio"],
                             rtol=1e-12)


def test_adversarial_raises_the_literal_ratio():
  """On the paper's literal C5 form the search climbs from its starts past 1."""
  from proofs_check import adversarial
  claim, starts = _starts("thm4.1-literal")
  res = adversarial.search(claim, starts, 0, steps=40)
  assert res["max_ratio"] > res["initial_max_ratio"]
  assert res["max_ratio"] > 1.0
  np.testing.assert_allclose(res["max_log_ratio"], np.log(res["max_ratio"]), rtol=1e-12)


def test_adversarial_ratio_beyond_float64_is_capped_without_overflow():
  """A searched log ratio above LOG_CAP (thm4.2-literal's is unbounded) gives the report's
  capped ratio e^LOG_CAP, as the table's worst does, and no overflow warning."""
  import warnings

  from proofs_check import adversarial
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert adversarial._capped_exp(2500.0) == np.exp(verdicts.LOG_CAP)
    assert adversarial._capped_exp(3.0) == np.exp(3.0)


# --- documented verdict rules at their boundaries (proofs_check/verdicts.py) -------------------

def _id(err, tol=None, bucket=0, start=0):
  err = np.asarray(err, np.float64)
  tol = np.full_like(err, 1e-12) if tol is None else np.asarray(tol, np.float64)
  return verdicts.reduce_chunk(IdentityCheck(err, tol), bucket=bucket, start=start,
                               dtype_name="float64")


def test_identity_error_exactly_at_tolerance_holds():
  """Rule: an identity holds on an instance when error <= tolerance (equality included)."""
  st = _id([1e-12, 5e-13])
  v = verdicts.decide(IdentityCheck, st)
  assert v.passed and st.violations == 0 and st.worst == 1.0 and st.worst_index == (0, 0)
  above = _id([np.nextafter(1e-12, 1.0)])
  assert not verdicts.decide(IdentityCheck, above).passed and above.violations == 1


def test_bound_at_the_rounding_allowance_holds_and_just_beyond_fails():
  """Rule: a bound is violated when log(lhs/rhs) > log1p(float_slack), strictly."""
  at = np.log1p(verdicts.bound_slack("float64"))
  st = verdicts.reduce_chunk(BoundCheck(np.array([at]), np.zeros(1)), bucket=0, start=0,
                             dtype_name="float64")
  assert st.violations == 0 and verdicts.decide(BoundCheck, st).passed
  st = verdicts.reduce_chunk(BoundCheck(np.array([np.nextafter(at, 1.0)]), np.zeros(1)),
                             bucket=0, start=0, dtype_name="float64")
  assert st.violations == 1
  # float32 runs allow 1e-4: the same ratio holds there
  st = verdicts.reduce_chunk(BoundCheck(np.array([np.log1p(5e-5)]), np.zeros(1)), bucket=0,
                             start=0, dtype_name="float32")
  assert st.violations == 0


def _same_detail(x, y):
  """Equal reported numbers; sums (mean, std) to float64 rounding (the documented rule)."""
  assert set(x) == set(y)
  for k in x:
    if k in ("mean", "std"):
      np.testing.assert_allclose(x[k], y[k], rtol=1e-14)
    else:
      assert x[k] == y[k], k


def test_ties_keep_the_earliest_instance_whatever_the_merge_order():
  """Rule: equal worst values go to the instance first in (bucket, index) order."""
  a = _id([5e-13, 9e-13], bucket=1, start=0)        # worst 0.9 at (1, 1)
  b = _id([9e-13, 1e-13], bucket=0, start=40)       # worst 0.9 at (0, 40)
  c = _id([9e-13], bucket=0, start=60)              # worst 0.9 at (0, 60)
  for order in ((a, b, c), (c, b, a), (b, a, c), (a, c, b)):
    m = verdicts.Stats()
    for st in order:
      m = verdicts.merge(m, st)
    assert m.worst_index == (0, 40) and m.worst == 0.9 and m.count == 5
    _same_detail(verdicts.decide(IdentityCheck, m).detail,
                 verdicts.decide(IdentityCheck, verdicts.merge(verdicts.merge(a, b), c)).detail)
  # within a chunk the first of equal values is kept
  assert _id([9e-13, 9e-13], start=7).worst_index == (0, 7)


def test_empty_chunks_are_the_identity_of_the_merge():
  empty = _id(np.zeros(0))
  assert empty.count == 0 and empty.worst_index == ()
  a = _id([3e-13, 4e-13], bucket=2, start=8)
  for m in (verdicts.merge(empty, a), verdicts.merge(a, empty)):
    assert m.to_json() == a.to_json()
  assert verdicts.decide(IdentityCheck, empty).verdict == "undecided"


def test_merge_order_does_not_change_the_reported_numbers():
  rng = np.random.default_rng(0)
  chunks = [verdicts.reduce_chunk(BoundCheck(rng.normal(-1, 0.5, 16), np.zeros(16)),
                                  bucket=k % 2, start=16 * k, dtype_name="float64")
            for k in range(5)]
  details = []
  for perm in ((0, 1, 2, 3, 4), (4, 3, 2, 1, 0), (2, 0, 4, 1, 3)):
    m = verdicts.Stats()
    for k in perm:
      m = verdicts.merge(m, chunks[k])
    details.append((verdicts.decide(BoundCheck, m).detail, m.worst_index, m.top, m.violations))
  for d in details[1:]:
    _same_detail(d[0], details[0][0])
    assert d[1:] == details[0][1:]


def test_out_of_range_is_counted_apart_and_never_crashes():
  """Overflowed sides (+inf, NaN) are out of range; huge finite ratios do not overflow the mean."""
  log_lhs = np.array([0.0, np.inf, np.nan, 800.0, -np.inf, 1.0])
  log_rhs = np.array([1.0, 0.0, 0.0, 0.0, -np.inf, -np.inf])
  st = verdicts.reduce_chunk(BoundCheck(log_lhs, log_rhs), bucket=0, start=0,
                             dtype_name="float32")
  assert st.out_of_range == 2                  # +inf lhs and NaN
  assert st.violations == 2                    # ratio e^800 and rhs = 0 < lhs are real violations
  v = verdicts.decide(BoundCheck, st)
  assert not v.passed and v.detail["out_of_range"] == 2 and np.isfinite(v.detail["max_ratio"])
  st = verdicts.reduce_chunk(BoundCheck(np.array([0.0, np.inf]), np.ones(2)), bucket=0,
                             start=0, dtype_name="float32")
  v = verdicts.decide(BoundCheck, st)
  assert v.passed and st.out_of_range == 1 and st.violations == 0
  m = verdicts.reduce_chunk(Measurement(np.array([1e300, 1e300, np.inf])), bucket=0, start=0,
                            dtype_name="float64")
  v = verdicts.decide(Measurement, m)      # mean/std of 1e300s: inf, not OverflowError
  assert m.out_of_range == 1 and v.detail["max"] == 1e300


def test_stats_json_round_trip_with_non_finite_fields():
  st = verdicts.reduce_chunk(BoundCheck(np.array([-np.inf, np.inf]), np.zeros(2)), bucket=0,
                             start=0, dtype_name="float64")
  back = verdicts.Stats.from_json(json.loads(json.dumps(st.to_json(), allow_nan=False)))
  assert back.to_json() == st.to_json()


# --- float32 ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_float32_every_claim_completes():
  """The default claims in float32 (few instances): no crash; out-of-range apart from violations."""
  res = _cli("--dtype", "float32", "--instances", "24", "--chunk", "24", "--no-progress",
             *NO_CACHE, timeout=900)
  assert res.returncode in (0, 1), res.stderr[-3000:]
  assert "Traceback" not in res.stderr
  for cid in CLAIMS:
    assert any(line.startswith(cid + " ") for line in res.stdout.splitlines()), cid
  assert "oor" in res.stdout and "statements of the paper" in _summary(res.stdout)
  assert max(len(line) for line in res.stdout.splitlines()) <= 120


def test_cli_counterexamples_agree_with_their_closed_forms():
  """Refutations (ratio > 1) are told from tightness witnesses (ratio = 1 under half)."""
  res = _cli("--counterexamples", *NO_CACHE)
  assert res.returncode == 0, res.stdout + res.stderr
  assert "every computed ratio equals its closed form" in _summary(res.stdout)
  assert "10 refutations" in res.stdout and "2 tightness witnesses" in res.stdout
  rows = {tuple(line.split()[:3]): line for line in res.stdout.splitlines()}
  assert rows[("normalised-factor-two", "normalised", "half")].endswith("tight (attained)")
  assert rows[("normalised-factor-two", "normalised", "eq12")].endswith("refutes")
  assert rows[("query-inside-support", "m-phi", "half")].endswith("refutes")


def test_importing_the_cli_starts_no_backend():
  """The CLI sets x64 and the device count before any array exists: importing it (and the
  claims' registry, witnesses included) must not initialise a JAX backend."""
  code = ("import proofs_check.cli, icl_kd.claims\n"
          "from jax._src import xla_bridge\n"
          "assert not xla_bridge._backends, 'a backend was initialised at import'\n")
  res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
  assert res.returncode == 0, res.stderr


def test_literal_prediction_attribution_counts_query_features_beyond_m_phi(subset_report):
  """The report's thm4.2-literal entry: the number of instances whose query feature exceeds
  M_phi, recounted in NumPy on every instance the sweep drew (|W^Q x'|^2 > max_x |W^K x|^2
  over both samples), and the worst ratio split into thm4.2-mmd's ratio times
  ||phi(z)||/M_phi, whose product is the reported worst ratio."""
  res, report, _ = subset_report
  a = report["attribution"]["thm4.2-literal"]
  c = CLAIMS["thm4.2-literal"]
  beyond = 0
  for b, count in enumerate(sweep.bucket_counts(64, len(c.buckets))):
    for i in range(count):
      inst = {k: np.asarray(v, np.float64) for k, v in
              sweep.instance_of(c, 0, b, i, jnp.float64).items()}
      z = inst["w_q"] @ inst["query"]
      keys = np.concatenate([inst["x_p"], inst["x_q"]]) @ inst["w_k"].T
      beyond += bool(z @ z > np.max(np.sum(keys ** 2, 1)))
  assert a["query_beyond_m_phi"] == beyond and 0 < beyond < 64
  assert a["violations"] == report["claims"]["thm4.2-literal"]["violations"] <= beyond
  np.testing.assert_allclose(a["worst_log_mmd_ratio"] + a["worst_log_query_over_m_phi"],
                             np.log(a["max_ratio"]), rtol=1e-12, atol=1e-12)
  assert a["worst_log_mmd_ratio"] <= 1e-9            # thm4.2-mmd, a bound, holds there
  assert "thm4.2-literal: violated" in res.stdout and "||phi(z)|| > M_phi in" in res.stdout


def test_cli_exponential_text_never_overflows():
  from proofs_check import cli
  assert cli._exp_text(np.log(2.5e-4)) == "0.00025" and cli._exp_text(800.0) == "e^800"
  assert cli._exp_text(float("nan")) == "nan"


def test_the_runner_names_no_kind_and_no_claim():
  """proofs_check knows check types, never a claim id or a kind string: no string literal of
  its code (docstrings aside) is a kind, a role or a claim id, or contains a claim id."""
  import ast
  from icl_kd.claims import KINDS, ROLES
  words = set(KINDS) | {r.name for r in ROLES}
  ids = set(CLAIMS) | {"thm4.1-literal"}
  folder = os.path.join(ROOT, "proofs_check")
  found = []
  for name in sorted(os.listdir(folder)):
    if not name.endswith(".py"):
      continue
    tree = ast.parse(open(os.path.join(folder, name)).read())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
      if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
        if node.value in words or any(cid in node.value for cid in ids):
          found.append((name, node.lineno, node.value))
  assert not found, found
  # the scan itself finds a planted one
  planted = ast.parse('x = "conjecture"\n')
  assert any(isinstance(n, ast.Constant) and n.value in words for n in ast.walk(planted))


def test_python_api_errors_name_the_argument_not_a_flag(subset_report, tmp_path):
  """check() and replay() name their own arguments (the CLI maps them to its flags), and a
  report is read from a dict, its JSON text or its path alike."""
  for kw, match in ((dict(seed=1.5), r"^seed: must be an int >= 0, got 1.5"),
                    (dict(instances=0), r"^instances: must be an int >= 1, got 0"),
                    (dict(chunk=-1), r"^chunk: must be an int >= 1"),
                    (dict(adversarial=-2), r"^adversarial: must be an int >= 0"),
                    (dict(convention="c3"), r"^convention: must be one of"),
                    (dict(dtype="float16"), r"^dtype: must be one of")):
    with pytest.raises(ValueError, match=match):
      proofs_check.check("thm3.1", **kw)
  _, report, path = subset_report
  a = Report.from_json(report)
  b = Report.from_json(str(path))
  c = Report.from_json(path.read_text())
  assert list(a.claims) == list(b.claims) == list(c.claims)
  assert a.to_json()["summary"] == b.to_json()["summary"] == c.to_json()["summary"]
  lines = proofs_check.replay(report, "thm3.1")          # a dict, as json.load gives it
  assert lines and all(ln.agrees for ln in lines)
  with pytest.raises(ValueError, match="no 'claims' object"):
    Report.from_json({"seed": 0})
  with pytest.raises(ValueError, match="not valid JSON"):
    Report.from_json("{broken")
