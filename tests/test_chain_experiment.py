"""The ``chain`` experiment (E7) end to end at tiny sizes: its JSON contract and its links.

One run through the command line (module fixture, ~15 s); the tests read what it
wrote. The links' statistics are pinned to NumPy in tests/test_experiments.py
(cluster_spearman) and tests/test_llm_experiment.py (links of a sweep); here the
trained layer's per-set table is checked against the E1 measures it comes from.
"""

import json
import os

import numpy as np
import pytest

from icl_kd import selection
from icl_kd.experiments import _common
from icl_kd.experiments import chain as chain_exp

TINY = chain_exp.Config(constructions=("ball",), n_trials=3, train_steps=5, n_boot=20,
                        progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("chain"))
  old = chain_exp.QUICK
  chain_exp.QUICK = TINY
  try:
    res = _common.run_cli(chain_exp, ["--quick", "--seed", "2", "--out", out,
                                      "--no-compile-cache", "--no-progress"])
  finally:
    chain_exp.QUICK = old
  with open(os.path.join(out, "chain.json")) as f:
    data = json.load(f)
  with np.load(os.path.join(out, "chain.npz")) as f:
    arrays = {k: f[k] for k in f.files}
  return res, data, arrays


def test_the_json_contract(run):
  _, data, _ = run
  assert data["quick"] is True and data["seed"] == 2 and data["icl_kd_version"]
  fields = {"model", "link", "kernel", "estimator", "layer", "rho", "lo", "hi", "groups"}
  assert data["links"] and all(fields <= set(lk) for lk in data["links"])
  got = {(lk["construction"], lk["link"], lk["kernel"], lk["estimator"]) for lk in data["links"]}
  for c in TINY.constructions:
    for link in ("mmd_bias", "mmd_answer"):
      for k in selection.KERNELS:
        for e in selection.ESTIMATORS:                     # both estimators, every kernel
          assert (c, link, k, e) in got
    assert (c, "bias_output", None, None) in got and (c, "output_answer", None, None) in got
  assert {lk["model"] for lk in data["links"]} == {"trained"}
  pb = data["proved_bound"]
  assert pb["checked"] == 3 * len(chain_exp_sets()) and pb["violations"] == 0
  assert {r["reading"] for r in data["literal"]} == set(chain_exp.READINGS)


def chain_exp_sets():
  from icl_kd.experiments import e1_selection as e1
  cfg = e1.Config(n_mixture=4)                          # the quick E1 design of the chain
  return e1.set_names(cfg)


def test_per_set_per_head_arrays_and_the_identity(run):
  res, _, arrays = run
  for c in TINY.constructions:
    mmd2 = arrays[f"trained_{c}_mmd2"]                      # (sets, layers, kv heads, K, E)
    assert mmd2.shape[1:] == (1, 1, len(selection.KERNELS), len(selection.ESTIMATORS))
    log_bias = arrays[f"trained_{c}_log_bias"]
    # thm4.1-identity: bias = c eta MMD_kV (biased) with c eta = 1 (eq12, eta = 1/2)
    kv_b = mmd2[:, 0, 0, selection.KERNELS.index("k_V"), 1]
    np.testing.assert_allclose(np.exp(2 * log_bias[:, 0, 0]), kv_b, rtol=1e-8)
    assert np.all(arrays[f"trained_{c}_log_bias"] <= arrays[f"trained_{c}_log_bound_rhs"] + 1e-9)
  # the k_V (biased) -> bias link is the identity: rho = 1 in every group
  lk = next(x for x in res.chains[0].links if x.link == "mmd_bias" and x.kernel == "k_V"
            and x.estimator == "biased")
  assert lk.rho == pytest.approx(1.0)
