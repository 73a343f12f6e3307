"""proofs_check: checkers, verdict machinery, CLI, determinism, resume, sharding, replay."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proofs_check import cli, sweep, verdicts
from proofs_check.claims import CLAIMS

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
    n = 24 if group[0].kind == "probabilistic bound" or group[0].id == "rademacher-empirical" else SMALL
    out.update(sweep.sweep(group, instances=n, seed=3, dtype=jnp.float64, dtype_name="float64",
                           progress=False, chunk=32))
  return out


@pytest.mark.parametrize("cid", [c for c in CLAIMS if CLAIMS[c].kind not in
                                 ("conjecture", "measurement")])
def test_each_checker_holds_on_small_instances(small_run, cid):
  claim = CLAIMS[cid]
  st = small_run[cid]
  v = verdicts.decide(claim.kind, st, delta=claim.delta)
  assert st.count > 0 and st.nonfinite == 0
  assert v.passed, (cid, v.detail)
  if claim.kind == "identity":
    assert v.detail["max_error_over_tolerance"] <= 1.0
  else:
    assert v.detail["max_ratio"] <= 1.0 + 1e-9


def test_squared_residual_is_measured_and_its_identity_holds(small_run):
  st = small_run["dw-step-squared"]
  assert st.count > 0 and st.nonfinite == 0
  assert np.median(st.sample) > 1e-3  # R is not negligible: the squared loss is not attention
  err = np.asarray(st.extra_samples["identity_error"])
  assert np.all(err <= 1e-10), err.max()  # step == dW - R at every measured instance


def test_literal_c5_form_is_violated_by_random_instances(small_run):
  """The paper's literal constants fail on some random instances (a result, not a bug)."""
  st = small_run["thm4.1-literal"]
  v = verdicts.decide("conjecture", st)
  assert v.passed  # a conjecture never fails the run
  assert st.violations > 0 and v.detail["max_ratio"] > 1.0


# --- the generic verdict machinery, with planted violations -----------------------------

def test_planted_bound_violation_is_a_failure():
  log_lhs = np.log(np.array([0.5, 0.9, 1.2, 0.1]))
  wrong_rhs = np.zeros(4)                        # rhs = 1 < lhs at instance 2
  st = verdicts.reduce_chunk("bound", dict(log_lhs=log_lhs, log_rhs=wrong_rhs), bucket=0,
                             start=0, dtype_name="float64")
  v = verdicts.decide("bound", st)
  assert not v.passed and v.verdict == "FAILS" and st.violations == 1
  assert st.worst_index == (0, 2)
  np.testing.assert_allclose(v.detail["max_ratio"], 1.2)
  np.testing.assert_allclose(v.detail["min_slack"], -0.2)


def test_bound_within_rounding_holds_and_beyond_fails():
  ok = verdicts.reduce_chunk("bound", dict(log_lhs=np.array([np.log1p(1e-12)]),
                                           log_rhs=np.zeros(1)), bucket=0, start=0,
                             dtype_name="float64")
  assert verdicts.decide("bound", ok).passed
  bad = verdicts.reduce_chunk("bound", dict(log_lhs=np.array([np.log1p(1e-6)]),
                                            log_rhs=np.zeros(1)), bucket=0, start=0,
                              dtype_name="float64")
  assert not verdicts.decide("bound", bad).passed


def test_planted_identity_failure_and_nonfinite():
  st = verdicts.reduce_chunk("identity", dict(error=np.array([1e-15, 3e-12]),
                                              tolerance=np.array([1e-12, 1e-12])),
                             bucket=1, start=10, dtype_name="float64")
  v = verdicts.decide("identity", st)
  assert not v.passed and st.worst_index == (1, 11) and v.detail["max_error"] == 3e-12
  nan = verdicts.reduce_chunk("identity", dict(error=np.array([np.nan]), tolerance=np.ones(1)),
                              bucket=0, start=0, dtype_name="float64")
  assert not verdicts.decide("identity", nan).passed and nan.nonfinite == 1


def test_probabilistic_bound_binomial_test():
  """10 events in 100 at delta = 0.05: P[Bin >= 10] = 0.028 > 0.01 holds; 15 fails."""
  def run(events):
    violated = np.zeros(100, bool)
    violated[:events] = True
    st = verdicts.reduce_chunk("probabilistic bound", dict(
        log_lhs=np.zeros(100), log_rhs=np.ones(100), violated=violated), bucket=0, start=0,
        dtype_name="float64")
    return verdicts.decide("probabilistic bound", st, delta=0.05)
  assert run(10).passed and not run(15).passed
  # exact binomial tail against a direct sum
  from math import comb
  direct = sum(comb(100, i) * 0.05 ** i * 0.95 ** (100 - i) for i in range(10, 101))
  np.testing.assert_allclose(run(10).detail["binomial_p_value"], direct, rtol=1e-10)


def test_merge_is_order_consistent():
  a = verdicts.reduce_chunk("bound", dict(log_lhs=np.array([-1.0, -0.5]), log_rhs=np.zeros(2)),
                            bucket=0, start=0, dtype_name="float64")
  b = verdicts.reduce_chunk("bound", dict(log_lhs=np.array([-0.2, -3.0]), log_rhs=np.zeros(2)),
                            bucket=0, start=2, dtype_name="float64")
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


SUBSET = ["--claims", "thm3.1,thm4.1-*", "--instances", "64", "--chunk", "32", "--no-progress"]


def _numbers(report):
  """Every number of a report except wall-clock seconds."""
  claims = {k: {kk: vv for kk, vv in v.items() if kk != "seconds"}
            for k, v in report["claims"].items()}
  return json.dumps(claims, sort_keys=True)


@pytest.fixture(scope="module")
def subset_report(tmp_path_factory):
  path = tmp_path_factory.mktemp("report") / "r.json"
  res = _cli(*SUBSET, "--json", str(path))
  assert res.returncode == 0, res.stderr + res.stdout
  return res, json.loads(path.read_text()), path


def test_cli_table_json_schema_and_exit_code(subset_report):
  res, report, _ = subset_report
  assert "thm3.1" in res.stdout and "violations" in res.stdout and "all claims hold" in res.stdout
  for key in ("version", "seed", "dtype", "jax_version", "platform", "device_count", "claims"):
    assert key in report
  assert report["dtype"] == "float64" and report["seed"] == 0
  assert set(report["claims"]) == {"thm3.1", "thm4.1-identity", "thm4.1-bound", "thm4.1-literal"}
  for entry in report["claims"].values():
    for key in ("kind", "instances", "violations", "verdict", "passed", "seconds", "detail",
                "worst_instance"):
      assert key in entry
    assert entry["instances"] == 64
    assert set(entry["worst_instance"]) >= {"bucket", "index", "config", "values", "arrays"}


def test_cli_same_seed_same_numbers(subset_report, tmp_path):
  _, report, _ = subset_report
  path = tmp_path / "again.json"
  assert _cli(*SUBSET, "--json", str(path)).returncode == 0
  assert _numbers(json.loads(path.read_text())) == _numbers(report)


def test_cli_sharded_equals_unsharded(subset_report, tmp_path):
  """Four host devices give the same report numbers as one."""
  _, report, _ = subset_report
  path = tmp_path / "sharded.json"
  res = _cli(*SUBSET, "--json", str(path),
             env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                  "JAX_PLATFORMS": "cpu"})
  assert res.returncode == 0, res.stderr
  sharded = json.loads(path.read_text())
  assert sharded["device_count"] == 4 and report["device_count"] == 1
  assert _numbers(sharded) == _numbers(report)


def test_cli_replay_reproduces_worst_instances(subset_report):
  _, _, path = subset_report
  res = _cli("--replay", str(path))
  assert res.returncode == 0, res.stdout + res.stderr
  assert "replay reproduces the report" in res.stdout and "DIFFERS" not in res.stdout


def test_cli_replay_detects_a_tampered_report(subset_report, tmp_path):
  _, report, _ = subset_report
  report["claims"]["thm3.1"]["worst_instance"]["values"]["error"] *= 2
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps(report))
  res = _cli("--replay", str(bad), "--claims", "thm3.1")
  assert res.returncode == 1 and "DIFFERS" in res.stdout


@pytest.mark.parametrize("args", [["--claims", "nope"], ["--instances", "0"],
                                  ["--dtype", "float16"], ["--adversarial", "-1"],
                                  ["--bogus"]])
def test_cli_bad_usage_exits_2(args):
  res = _cli(*args)
  assert res.returncode == 2, (args, res.stdout, res.stderr)
  assert "error" in res.stderr


def test_cli_list():
  res = _cli("--list")
  assert res.returncode == 0
  for cid in ("thm3.1", "kd-step", "dw-step-linear", "dw-step-squared", "thm3.2",
              "rademacher-empirical", "thm4.1-identity", "thm4.1-bound", "thm4.1-literal",
              "thm4.2-prediction", "thm4.2-risk", "lr-proxy"):
    assert cid in res.stdout


def test_cli_planted_failure_exits_1(monkeypatch, capsys):
  """A claim whose right side is deliberately wrong fails the run (exit 1)."""
  import dataclasses
  from proofs_check import claims as claims_mod

  def wrong_rhs(inst, bucket):
    v = claims_mod.eval_c5_bound(inst, bucket)
    return dict(log_lhs=v["log_lhs"], log_rhs=v["log_rhs"] - 1.0)  # rhs / e: now too small

  planted = dataclasses.replace(CLAIMS["thm4.1-bound"], id="planted", evaluate=wrong_rhs,
                                group="planted")
  monkeypatch.setitem(claims_mod.CLAIMS, "planted", planted)
  code = cli.main(["--claims", "planted", "--instances", "32", "--chunk", "32", "--no-progress"])
  out = capsys.readouterr().out
  assert code == 1 and "FAILS" in out and "SOME CLAIMS FAIL" in out


# --- resume --------------------------------------------------------------------------------

def test_checkpoint_resume_matches_uninterrupted(tmp_path):
  group = [CLAIMS["thm3.1"], CLAIMS["lr-proxy"]]
  kw = dict(instances=200, seed=5, dtype=jnp.float64, dtype_name="float64", progress=False,
            chunk=16)
  full = sweep.sweep(group, **kw)
  ckpt = str(tmp_path / "ckpt")
  with pytest.raises(KeyboardInterrupt):
    sweep.sweep(group, checkpoint=ckpt, stop_after_chunks=5, **kw)   # killed mid-run
  saved = sorted(os.listdir(os.path.join(ckpt, "thm3.1")))
  assert len(saved) == 5
  calls = []
  orig = sweep._batch_fn

  def counting(*a, **k):
    fn = orig(*a, **k)
    def wrapped(*x):
      calls.append(1)
      return fn(*x)
    return wrapped

  sweep._batch_fn = counting
  try:
    resumed = sweep.sweep(group, checkpoint=ckpt, **kw)
  finally:
    sweep._batch_fn = orig
  total_chunks = sum(-(-n // 16) for n in sweep.bucket_counts(200, len(group[0].buckets)))
  assert len(calls) == total_chunks - 5       # the saved chunks were not redone
  for cid in ("thm3.1", "lr-proxy"):
    assert resumed[cid].to_json() == full[cid].to_json()


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
  np.testing.assert_allclose(float(v["log_lhs"] - v["log_rhs"]), st.worst, rtol=1e-10)


# --- adversarial search ----------------------------------------------------------------------

def _starts(cid, n=4, bucket=0, seed=11):
  claim = CLAIMS[cid]
  return claim, [sweep.instance_of(claim, seed, bucket, i, jnp.float64) for i in range(n)]


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
  np.testing.assert_allclose(np.exp(float(v["log_lhs"] - v["log_rhs"])), res["max_ratio"],
                             rtol=1e-12)


def test_adversarial_raises_the_literal_ratio():
  """On the paper's literal C5 form the search climbs from its starts past 1."""
  from proofs_check import adversarial
  claim, starts = _starts("thm4.1-literal")
  res = adversarial.search(claim, starts, 0, steps=40)
  assert res["max_ratio"] > res["initial_max_ratio"]
  assert res["max_ratio"] > 1.0
