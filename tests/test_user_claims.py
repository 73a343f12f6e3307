"""A researcher's own claims: icl_kd.claims.define, proofs_check.check and --claims-from.

The worked example of the README ("Check your own claim": von Oswald et al.'s
linear-attention-is-one-GD-step identity and a deliberately false bound) is
written to a folder outside the repository and run through the CLI exactly as
the README shows; smaller claims written here check the runner's features on
user claims (checkpoints, devices, replay, the adversarial search) and the
errors a malformed claim gets.
"""

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import proofs_check
from icl_kd.claims import (CLAIMS, BoundCheck, IdentityCheck, Witness, define,
                           identity_tolerance)
from proofs_check import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def readme_module() -> str:
  """The README's claim module: the ```python block that starts with '# my_claims.py'."""
  text = open(os.path.join(ROOT, "README.md")).read()
  blocks = [b for lang, b in FENCE.findall(text) if lang.strip() == "python"
            and b.startswith("# my_claims.py")]
  assert len(blocks) == 1, "the README shows one module '# my_claims.py'"
  return blocks[0]


def readme_commands() -> list[str]:
  """The README's commands that run that module (the first ```bash block after it)."""
  text = open(os.path.join(ROOT, "README.md")).read()
  start = text.index("```bash\n", text.index("# my_claims.py")) + len("```bash\n")
  bash = text[start:text.index("```", start)]
  return [line.split("#")[0].strip() for line in bash.splitlines() if line.strip()]


def _cli(args, cwd, env=None, timeout=600):
  e = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
  return subprocess.run([sys.executable, "-m", "proofs_check", *args], cwd=cwd, env=e,
                        capture_output=True, text=True, timeout=timeout)


def test_readme_module_is_short_and_uses_only_the_public_api():
  code = readme_module()
  assert len(code.strip().splitlines()) < 40
  imports = [line for line in code.splitlines() if line.startswith(("import", "from"))]
  assert all("icl_kd" not in line or line.startswith("from icl_kd.claims import")
             for line in imports), imports
  assert "proofs_check" not in code


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
  """The README's module in a folder outside the repository, run as the README says."""
  folder = tmp_path_factory.mktemp("outside")
  (folder / "my_claims.py").write_text(readme_module())
  runs = []
  for cmd in readme_commands():
    args = cmd.split()
    assert args[:3] == ["python", "-m", "proofs_check"], cmd
    runs.append(_cli(args[3:] + ["--no-compile-cache", "--no-progress"], folder))
  return folder, runs


def test_readme_example_true_identity_holds_false_bound_fails(readme_run):
  folder, runs = readme_run
  check = runs[0]
  assert check.returncode == 1, check.stdout + check.stderr          # the false bound fails
  rows = {line.split()[0]: line for line in check.stdout.splitlines() if line[:1].isalpha()}
  assert rows["lsa-is-gd"].split()[-2] == "holds"
  assert "FAILS" in rows["gd-never-overshoots"]
  assert "user claims, statements: 1 holds, 1 FAILS: gd-never-overshoots" in check.stdout
  report = json.loads((folder / "report.json").read_text())
  bad = report["claims"]["gd-never-overshoots"]
  assert bad["violations"] > 0 and bad["worst"] > 1 and bad["role"] == "paper"
  assert set(bad["worst_instance"]["arrays"]) == {"x", "y", "w", "query", "eta"}
  # the worst instance, recomputed here from its saved arrays: |one step| against |<w, x'>|
  arr = {k: np.asarray(v) for k, v in bad["worst_instance"]["arrays"].items()}
  step = arr["eta"] * arr["y"] @ arr["x"] / arr["x"].shape[0] @ arr["query"]
  np.testing.assert_allclose(bad["worst"], abs(step) / abs(arr["w"] @ arr["query"]), rtol=1e-9)
  assert report["claims_from"] == [str(folder / "my_claims.py")]


def test_readme_example_replays_its_worst_instance(readme_run):
  _, runs = readme_run
  replay = runs[1]
  assert replay.returncode == 0, replay.stdout + replay.stderr
  assert "replay reproduces the report" in replay.stdout
  assert "gd-never-overshoots" in replay.stdout


# --- smaller claims of our own -----------------------------------------------------------

class Size(NamedTuple):
  n: int


def _sample(key, b, dtype):
  return dict(x=jax.random.uniform(key, (b.n,), dtype, -1.0, 1.0))


def _mean_le_max(inst, b):       # true: mean(x) <= max(x), lhs/rhs via exp (positive sides)
  return BoundCheck(jnp.mean(inst["x"]), jnp.max(inst["x"]))


def _max_le_mean(inst, b):       # false for any non-constant sample
  return BoundCheck(jnp.max(inst["x"]), jnp.mean(inst["x"]))


def _sum_identity(inst, b):      # sum(x) == n mean(x)
  s = jnp.sum(inst["x"])
  return IdentityCheck(jnp.abs(s - b.n * jnp.mean(inst["x"])) / jnp.sum(jnp.abs(inst["x"])),
                       identity_tolerance(inst["x"].dtype, 1.0))


def _clip(inst, b):
  return dict(inst, x=jnp.clip(inst["x"], -1.0, 1.0))


BUCKETS = (Size(4), Size(9))
TRUE = define("mean-le-max", statement="mean(x) <= max(x)", sample=_sample,
              evaluate=_mean_le_max, buckets=BUCKETS, instances=512, chunk=128, project=_clip)
FALSE = define("max-le-mean", statement="max(x) <= mean(x) (false)", sample=_sample,
               evaluate=_max_le_mean, buckets=BUCKETS, instances=512, chunk=128, project=_clip)
IDENT = define("sum-is-n-mean", statement="sum x == n mean x", sample=_sample,
               evaluate=_sum_identity, buckets=BUCKETS, instances=512, chunk=128)


def test_check_runs_claim_objects_mixed_with_ids_and_replays():
  report = proofs_check.check(["thm3.1", TRUE, FALSE, IDENT], instances=256, chunk=128)
  assert list(report.claims) == ["thm3.1", "mean-le-max", "max-le-mean", "sum-is-n-mean"]
  assert report.claims["mean-le-max"].verdict == "holds"
  assert report.claims["sum-is-n-mean"].verdict == "holds"
  bad = report.claims["max-le-mean"]
  assert not report.ok and bad.verdict == "FAILS" and bad.violations == 256
  # the worst is the largest max/mean over the very instances drawn, recomputed in NumPy
  worst = 0.0
  for b, n_b in enumerate(sweep.bucket_counts(256, 2)):
    x = np.asarray(sweep.instances(FALSE, 0, b, np.arange(n_b), jnp.float64)["x"])
    worst = max(worst, float(np.max(np.exp(x.max(1) - x.mean(1)))))
  np.testing.assert_allclose(bad.worst, worst, rtol=1e-12)
  lines = proofs_check.replay(report, [FALSE, IDENT])
  assert lines and all(ln.agrees for ln in lines)
  # the JSON round trip keeps the user claims' rows; replaying needs them in a registry
  back = proofs_check.Report.from_json(json.dumps(report.to_json()))
  lines = proofs_check.replay(back, "user", registry=CLAIMS.with_claims([TRUE, FALSE, IDENT]))
  assert {ln.claim for ln in lines} == {"mean-le-max", "max-le-mean", "sum-is-n-mean"}
  assert all(ln.agrees for ln in lines)


def test_user_claims_resume_from_a_checkpoint(tmp_path):
  kw = dict(instances=512, seed=4, dtype=jnp.float64, dtype_name="float64", progress=False,
            chunk=64)
  full = sweep.sweep([FALSE], **kw)
  with pytest.raises(KeyboardInterrupt):
    sweep.sweep([FALSE], checkpoint=str(tmp_path), stop_after_chunks=3, **kw)
  resumed = sweep.sweep([FALSE], checkpoint=str(tmp_path), **kw)
  assert resumed.loaded_chunks == 3
  assert resumed["max-le-mean"].to_json() == full["max-le-mean"].to_json()


def test_adversarial_search_runs_on_a_user_claim_with_a_projection():
  report = proofs_check.check([TRUE], instances=128, chunk=64, adversarial=20)
  r = report.claims["mean-le-max"]
  assert r.adversarial is not None and r.adversarial["starts"] == 16
  assert r.adversarial["max_ratio"] <= 1.0 + 1e-9 and r.verdict == "holds"
  inst = {k: np.asarray(v) for k, v in r.adversarial["instance"].items()}
  assert np.all(np.abs(inst["x"]) <= 1.0)                         # projected back


def test_witnesses_decide_a_user_conjecture():
  """A witness (a fixed instance with a closed form) refutes a claim the sweep never breaks."""
  from icl_kd.claims import ConjectureCheck

  def spread(inst, b):    # max - min <= 1.999 on [-1, 1]: false only near both ends at once
    return ConjectureCheck(jnp.log(jnp.max(inst["x"]) - jnp.min(inst["x"])),
                           jnp.log(jnp.asarray(1.999, inst["x"].dtype)))
  w = Witness("two-ends", 0, lambda dtype: dict(x=jnp.asarray([-1.0, 1.0, 0.0, 0.0], dtype)),
              lambda bucket: 2.0 / 1.999, "(max - min) / 1.999 = 2 / 1.999")
  claim = define("spread-below-two", statement="max(x) - min(x) <= 1.999", sample=_sample,
                 evaluate=spread, buckets=BUCKETS, witnesses=(w,))
  r = proofs_check.check([claim], instances=64, chunk=64).claims["spread-below-two"]
  assert r.violations == 0                        # the random sweep finds nothing ...
  assert r.verdict == "violated (analytic)" and r.detail["refuted_by"] == ["two-ends"]
  (res,) = r.witnesses                            # ... the witness does
  assert res.status == "refutes" and res.agrees
  np.testing.assert_allclose(math.exp(res.log_ratio), 2.0 / 1.999, rtol=1e-12)


@pytest.mark.parametrize("make, error, match", [
    (lambda: define("a,b", statement="", sample=_sample, evaluate=_max_le_mean,
                    buckets=BUCKETS), ValueError, "without commas"),
    (lambda: define("x", statement="", sample=_sample, evaluate=_max_le_mean,
                    buckets=((4,),)), TypeError, "must be a NamedTuple"),
    (lambda: define("x", statement="", sample=_sample, evaluate=_max_le_mean,
                    buckets=(Size([4]),)), TypeError, "must be hashable"),
    (lambda: define("x", statement="", sample=_sample, evaluate=_max_le_mean,
                    buckets=()), TypeError, "non-empty tuple"),
    (lambda: define("x", statement="", sample=_sample, evaluate="nope",
                    buckets=BUCKETS), TypeError, "evaluate must be callable"),
    (lambda: define("x", statement="", sample=_sample, evaluate=_max_le_mean,
                    buckets=BUCKETS, delta=2.0), ValueError, "delta must be a probability"),
    (lambda: CLAIMS.with_claims([dataclasses.replace(TRUE, id="thm3.1")]), ValueError,
     "'thm3.1' is defined twice"),
])
def test_malformed_claims_get_a_clear_error(make, error, match):
  with pytest.raises(error, match=match):
    make()


def test_a_claim_returning_no_check_type_is_named():
  bad = define("returns-float", statement="", sample=_sample,
               evaluate=lambda inst, b: jnp.sum(inst["x"]), buckets=BUCKETS)
  with pytest.raises(TypeError, match=r"claim 'returns-float': a claim's evaluate must return "
                                      r"one of the check types.*got an array of shape \(\d+,\) and dtype float"):
    proofs_check.check([bad], instances=8)
  from icl_kd.claims import EventCheck
  no_delta = define("no-delta", statement="", sample=_sample, buckets=BUCKETS,
                    evaluate=lambda inst, b: EventCheck(jnp.zeros(()), jnp.zeros(()),
                                                        jnp.asarray(False)))
  with pytest.raises(ValueError, match="give the claim delta="):
    proofs_check.check([no_delta], instances=8)


def test_cli_claims_from_a_dotted_module_on_two_devices(tmp_path):
  """--claims-from takes a dotted module name too; two devices give one device's numbers."""
  pkg = tmp_path / "mypkg"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "bounds.py").write_text(textwrap.dedent('''
      from tests.test_user_claims import FALSE, TRUE
      CLAIMS = (TRUE, FALSE)
  '''))
  env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
  outs = []
  for devices in (1, 2):
    path = tmp_path / f"r{devices}.json"
    res = _cli(["--claims-from", "mypkg.bounds", "--claims", "user", "--instances", "256",
                "--chunk", "128", "--json", str(path), "--no-progress", "--no-compile-cache"],
               ROOT, env=dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                              JAX_PLATFORMS="cpu"))
    assert res.returncode == 1, res.stdout + res.stderr
    rep = json.loads(path.read_text())
    assert rep["device_count"] == devices
    outs.append({k: {kk: vv for kk, vv in v.items() if kk != "seconds"}
                 for k, v in rep["claims"].items()})
  assert outs[0] == outs[1]
  # a module without CLAIMS, and a missing file, are usage errors (exit 2, one line)
  (pkg / "empty.py").write_text("X = 1\n")
  for spec, msg in (("mypkg.empty", "defines no CLAIMS tuple"), ("no_such_file.py", "no such file")):
    res = _cli(["--claims-from", spec, "--no-compile-cache"], ROOT, env=env)
    assert res.returncode == 2 and msg in res.stderr and "Traceback" not in res.stderr, res.stderr
