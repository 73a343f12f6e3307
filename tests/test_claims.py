"""icl_kd.claims: the registry, the public helpers, the samplers' laws and negative controls.

Every claim must (a) have a checker, tests and a figure; (b) draw each argument
of its instance from the distribution docs/THEORY.md names; (c) report a
violation when the claim is made false on purpose (a wrong right side, a
swapped sample, a wrong step): a checker that cannot fail proves nothing.
Statistical tests use fixed seeds; sample sizes and false-alarm rates are
written next to them.
"""

import importlib
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import icl_kd
from icl_kd import claims
from icl_kd.claims import (CLAIMS, BoundCheck, ConjectureCheck, EventCheck, IdentityCheck,
                           c1_decomposition, c2_kd_step, c4_rademacher, c5_mmd_bias,
                           c6_downstream, c7_lr_proxy)
from proofs_check import sweep, verdicts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the registry ------------------------------------------------------------------------------

def test_every_claim_has_a_checker_tests_and_a_figure():
  figures = {name.split("_")[0] for name in os.listdir(os.path.join(ROOT, "figures", "gallery"))}
  assert len(CLAIMS) >= 12
  for cid, c in CLAIMS.items():
    assert c.id == cid and c.theory in claims.THEORY_NUMBERS, cid
    assert c.check_type in claims.CHECK_TYPES and c.kind in claims.KINDS, cid
    assert callable(c.sample) and callable(c.compute) and callable(c.prepare) and c.buckets
    assert c.tests and all(os.path.isfile(os.path.join(ROOT, t)) for t in c.tests), (cid, c.tests)
    assert c.figure in figures, (cid, c.figure)
    # the figure module names the claim id it shows, and lists it among the claims it draws
    mod = next(f for f in os.listdir(os.path.join(ROOT, "figures"))
               if f.lower().startswith(c.figure.lower() + "_"))
    assert f'"{cid}"' in open(os.path.join(ROOT, "figures", mod)).read(), (cid, mod)
    assert cid in importlib.import_module(f"figures.{mod[:-3]}").CLAIMS, (cid, mod)
    if c.check_type.form.name == "event":
      assert c.delta is not None
  for group in {c.group_id for c in CLAIMS.values()}:
    members = [c for c in CLAIMS.values() if c.group_id == group]
    assert len({(c.sample, c.prepare, c.buckets) for c in members}) == 1, group
  # every theory number C1..C7 has at least one claim
  assert {c.theory for c in CLAIMS.values()} == set(claims.THEORY_NUMBERS)


def test_the_kind_follows_from_the_type_of_the_check():
  """One source: the kind is the type that evaluate returns, in every bucket and dtype."""
  for c in CLAIMS.values():
    for b in c.buckets:
      for dtype in (jnp.float32, jnp.float64):
        out = jax.eval_shape(lambda k, c=c, b=b, dt=dtype: c.evaluate(c.sample(k, b, dt), b),
                             jax.random.key(0))
        assert type(out) is c.check_type and type(out).kind == c.kind, c.id


# What each check is evidence of (docs/THEORY.md, "Kinds of check"): the paper's statements,
# the toolkit's corrected one, checks true by construction, readings that may be false.
EXPECTED_ROLES = {
    "paper": {"thm3.1", "kd-step", "dw-step-linear", "thm3.2"},
    "corrected": {"thm4.1-bound"},
    "consistency": {"thm4.1-identity", "rademacher-empirical", "thm4.2-mmd", "thm4.2-prediction",
                    "thm4.2-risk", "lr-proxy"},
    "conjecture": {"thm3.2-paper-form", "thm4.1-literal-gaussian", "thm4.1-literal-softmax",
                   "thm4.1-literal-normalised", "thm4.1-literal-tv", "thm4.2-literal"},
    "measurement": {"dw-step-squared"},
}


def test_every_claim_has_the_role_of_what_it_is_evidence_of():
  got = {}
  for cid, c in CLAIMS.items():
    got.setdefault(c.role.name, set()).add(cid)
  assert got == EXPECTED_ROLES
  assert CLAIMS["thm4.1-identity"].kind == "consistency"          # an identity of the code
  assert CLAIMS["thm3.2-paper-form"].check_type is claims.ConjectureEventCheck
  assert not claims.CONJECTURE.fails_run and claims.CORRECTED.fails_run


# --- public helpers ------------------------------------------------------------------------------

def test_identity_tolerance_rule():
  """docs/THEORY.md: 1e-12 (float64) / 1e-5 (float32), times max(1, max|s|/10)."""
  f64, f32 = jnp.float64, jnp.float32
  for s, factor in ((0.0, 1.0), (3.0, 1.0), (10.0, 1.0), (20.0, 2.0), (1000.0, 100.0)):
    assert float(claims.identity_tolerance(f64, s)) == pytest.approx(1e-12 * factor, rel=1e-15)
    assert float(claims.identity_tolerance(f32, s)) == pytest.approx(1e-5 * factor, rel=1e-6)
  with pytest.raises(ValueError, match="dtype"):
    claims.identity_tolerance(jnp.float16, 1.0)


def _numpy_c1(params, demos, prefix, query, tau, include_query):
  ctx = np.concatenate([demos, prefix] + ([query[None]] if include_query else []))
  wq, wk, wv = (np.asarray(a) for a in params)
  s = (ctx @ wk.T) @ (wq @ query) / tau
  p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
  return p, float(np.sum(p * np.linalg.norm(ctx @ wv.T, axis=1))), float(np.abs(s).max())


@pytest.mark.parametrize("include_query", [True, False])
def test_c1_error_unit_and_tolerance_against_numpy(include_query):
  bucket = claims.PromptBucket(6, 2, 4, 3, 2, include_query)
  p = claims.scaled_prompt(jax.random.key(4), bucket, jnp.float64, max_abs_score=30.0, tau=0.5)
  e = claims.c1_error(p.params, p.demos, p.prefix, p.query, tau=p.tau,
                      include_query=include_query)
  _, unit, smax = _numpy_c1(p.params, *(np.asarray(a) for a in (p.demos, p.prefix, p.query)),
                            0.5, include_query)
  np.testing.assert_allclose(float(e.unit), unit, rtol=1e-13)
  np.testing.assert_allclose(float(e.max_abs_score), smax, rtol=1e-13)
  assert smax == pytest.approx(30.0, rel=1e-12)       # the prompt is at the asked score scale
  np.testing.assert_allclose(float(e.tolerance), 1e-12 * 3.0, rtol=1e-12)
  assert 0 <= float(e.error) <= float(e.tolerance)


def test_c1_error_without_a_prefix_on_a_users_prompt():
  """prefix=None means M = 0: the same unit as an explicit empty prefix, computed in NumPy."""
  kp, kx = jax.random.split(jax.random.key(7))
  params = icl_kd.init_params(5, 3, 2, key=kp, dtype=jnp.float64)
  x = jax.random.normal(kx, (9, 5), jnp.float64)
  e = claims.c1_error(params, x[:8], None, x[8], tau=0.7)
  _, unit, smax = _numpy_c1(params, np.asarray(x[:8]), np.zeros((0, 5)), np.asarray(x[8]), 0.7,
                            True)
  np.testing.assert_allclose(float(e.unit), unit, rtol=1e-13)
  np.testing.assert_allclose(float(e.tolerance), 1e-12 * max(1.0, smax / 10.0), rtol=1e-12)
  assert 0 <= float(e.error) <= float(e.tolerance)


def test_generalization_gap_against_numpy():
  inst = c4_rademacher.sample(jax.random.key(2), c4_rademacher.SampleBucket(16, 3, "distilled"),
                              jnp.float64)
  params = icl_kd.AttentionParams(inst["w_q"], inst["w_k"], inst["w_v"])
  w = icl_kd.one_step_kd_weights(params, inst["x"], eta=0.5)
  g = claims.generalization_gap(w, params, inst["x"], inst["x_pop"])
  a, z = np.asarray(w.coeffs), np.asarray(w.anchors)

  def losses(x):
    keys = x @ np.asarray(inst["w_k"]).T
    student = np.exp(keys @ z.T + float(w.log_scale)) @ a           # kappa = exp(<k, z>), tau 1
    return np.sum((x @ np.asarray(inst["w_v"]).T - student) ** 2, axis=1)
  pop, emp = losses(np.asarray(inst["x_pop"])), losses(np.asarray(inst["x"]))
  np.testing.assert_allclose(float(g.population_risk), pop.mean(), rtol=1e-12)
  np.testing.assert_allclose(float(g.empirical_risk), emp.mean(), rtol=1e-12)
  np.testing.assert_allclose(float(g.gap), pop.mean() - emp.mean(), rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(float(g.population_risk_se), pop.std(ddof=1) / math.sqrt(len(pop)),
                             rtol=1e-10)


def test_rademacher_signs_come_from_the_instance_key():
  """Two instances (or two seeds) draw different signs; the same key, the same number."""
  c = CLAIMS["rademacher-empirical"]
  b = c.buckets[0]
  inst = c.sample(jax.random.key(0), b, jnp.float64)
  other = dict(inst, sign_key=c.sample(jax.random.key(1), b, jnp.float64)["sign_key"])
  e1 = float(c.evaluate(inst, b).extras.estimate_over_trace_bound)
  e2 = float(c.evaluate(other, b).extras.estimate_over_trace_bound)
  assert e1 != e2 and e1 == float(c.evaluate(dict(inst), b).extras.estimate_over_trace_bound)
  i0 = sweep.instance_of(c, 0, 0, 3, jnp.float64)
  i1 = sweep.instance_of(c, 1, 0, 3, jnp.float64)
  assert not np.array_equal(np.asarray(i0["sign_key"]), np.asarray(i1["sign_key"]))


# --- samplers draw from the distributions docs/THEORY.md names -----------------------------------

N_LAW = 400   # instances per law test


@pytest.fixture(scope="module")
def pair_draws():
  b = c5_mmd_bias.PAIRS[0]
  keys = jax.random.split(jax.random.key(11), N_LAW)

  def one(key):
    inst = c5_mmd_bias.sample_pair(key, b, jnp.float64)
    # P and Q as the sampler's key fixes them (split as in sample_pair)
    p, q = c5_mmd_bias.pair_distributions(jax.random.split(key, 7)[2], b.d, jnp.float64)
    return inst, q.shift, q.scale
  return b, jax.jit(jax.vmap(one))(keys)


@pytest.mark.parametrize("name,source", [("x_p", "P"), ("x_q", "Q"), ("x_target", "Q"),
                                         ("query", "Q")])
def test_pair_sampler_draws_each_argument_from_its_distribution(pair_draws, name, source):
  """Standardised sample means against the distribution's own mean: N(0, 1) when right.

  x ~ uniform ball: mean = shift, per-coordinate sd = scale / sqrt(d + 2). Over
  N_LAW = 400 instances x d = 3 coordinates (1200 z-scores) the mean z is within
  5 / sqrt(1200) and var z within 1 +- 5 sqrt(2/1200) (false alarm < 1e-6 each).
  A sample drawn from P where Q is meant is off by |shift| ~ U(0, 2): tens of SE.
  """
  b, (inst, shift, scale) = pair_draws
  x = np.asarray(inst[name])
  x = x[:, None, :] if x.ndim == 2 else x                                  # (I, n, d)
  shift, scale = np.asarray(shift), np.asarray(scale)[:, None]
  if source == "P":
    shift, scale = np.zeros_like(shift), np.ones_like(scale)
  n = x.shape[1]
  z = (x.mean(axis=1) - shift) / (scale / math.sqrt(b.d + 2) / math.sqrt(n))
  z = z.ravel()
  assert abs(z.mean()) < 5 / math.sqrt(z.size), z.mean()
  assert abs(z.var() - 1) < 5 * math.sqrt(2 / z.size), z.var()
  # the support: P in the unit ball, Q in its (shifted, scaled) ball
  r = np.linalg.norm(x - shift[:, None, :], axis=-1) / scale
  assert r.max() <= 1 + 1e-12


def test_prompt_sampler_law():
  """log10 max|score| ~ U(-3, 3) (mean 0, var 3); log tau ~ U(log 1/4, log 4) (var 0.641).

  2000 prompts: SE of the mean sqrt(3/2000) = 0.039 (tolerance 5 SE); variance of a
  uniform's sample variance ~ 0.8 var^2 / n, so 5 SE = 5 sqrt(0.8/2000) var = 0.1 var.
  """
  b = c1_decomposition.PROMPTS[2]
  keys = jax.random.split(jax.random.key(5), 2000)

  def one(key):
    inst = claims.sample_prompt(key, b, jnp.float64)
    ctx = jnp.concatenate([inst["demos"], inst["prefix"], inst["query"][None]])
    s = jnp.dot(jnp.dot(ctx, inst["w_k"].T), jnp.dot(inst["w_q"], inst["query"])) / inst["tau"]
    return jnp.log10(jnp.max(jnp.abs(s))), jnp.log(inst["tau"]), inst["demos"]
  u, log_tau, demos = (np.asarray(a) for a in jax.jit(jax.vmap(one))(keys))
  assert u.min() >= -3 - 1e-9 and u.max() <= 3 + 1e-9
  assert abs(u.mean()) < 5 * math.sqrt(3 / 2000) and abs(u.var() / 3 - 1) < 0.1
  var_tau = (2 * math.log(4)) ** 2 / 12
  assert abs(log_tau.mean()) < 5 * math.sqrt(var_tau / 2000)
  assert abs(log_tau.var() / var_tau - 1) < 0.1
  # tokens N(0, I): mean 0, var 1 over 2000 x 16 x 6 coordinates
  assert abs(demos.mean()) < 5 / math.sqrt(demos.size) and abs(demos.var() - 1) < 0.02


def test_generalization_sampler_law():
  """x and x_pop uniform in the unit ball: E|x|^2 = d/(d+2); radius_frac ~ U(0.1, 1)."""
  b = c4_rademacher.SampleBucket(32, 3, "random")
  keys = jax.random.split(jax.random.key(6), 200)
  inst = jax.jit(jax.vmap(lambda k: c4_rademacher.sample(k, b, jnp.float64)))(keys)
  for name in ("x", "x_pop"):
    sq = np.sum(np.asarray(inst[name]) ** 2, axis=-1).ravel()
    # |x|^2 = R^2 with R^d ~ U(0,1): var = d/(d+4) - (d/(d+2))^2
    sd = math.sqrt(3 / 7 - 0.36) / math.sqrt(sq.size)
    assert abs(sq.mean() - 0.6) < 5 * sd and sq.max() <= 1 + 1e-12, name
    assert abs(np.asarray(inst[name]).mean()) < 5 * math.sqrt(0.2 / sq.size)
  frac = np.asarray(inst["radius_frac"])
  assert frac.min() >= 0.1 and frac.max() <= 1 and abs(frac.mean() - 0.55) < 5 * 0.26 / math.sqrt(200)


# --- negative controls: each checker reports a violation when the claim is made false ------------

N_CTRL = 32


def _verdicts(claim, compute, bucket_index=0, n=N_CTRL, seed=0):
  """The true claim's and the falsified claim's verdicts on the same n instances."""
  b = claim.buckets[bucket_index]

  def one(key):
    inst = claim.sample(key, b, jnp.float64)
    shared = claim.prepare(inst, b)
    return claim.compute(inst, b, shared), compute(inst, b, shared)
  true, false = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), n))
  false = claim.check_type(*false)        # the falsified values, judged as the claim's own type
  out = []
  for check in (true, false):
    st = verdicts.reduce_chunk(jax.tree_util.tree_map(np.asarray, check), bucket=0, start=0,
                               dtype_name="float64")
    out.append((st, verdicts.decide(claim.check_type, st, delta=claim.delta)))
  return out


def _wrong_tau_reference(inst, b, shared):
  """C1 with the right side built at the wrong temperature (tau * 1.5)."""
  wrong = c1_decomposition.decompose_prompt(dict(inst, tau=inst["tau"] * 1.5), b)
  return c1_decomposition.compute(inst, b, shared._replace(reference=wrong.reference))


def _kd_wrong_eta(inst, b, shared):
  """C2 at eta = 2 eta* (the one-step weights are then 2 W_0)."""
  return c2_kd_step.compute(inst, b, shared._replace(log_eta=shared.log_eta + math.log(2.0)))


def _dw_wrong_step(inst, b, shared):
  """C3: the linear step of size M/(2D') (the squared loss's size) adds dW/2, not dW."""
  tokens = claims.prompt_tail(inst, b)
  log_eta = jnp.log(0.5 * tokens.shape[0]) - shared.log_partition
  inc = icl_kd.kd_step_increment(shared.w0, claims.prompt_params(inst), tokens, log_eta=log_eta,
                                 kind="linear")
  return IdentityCheck(icl_kd.relative_hs_error(inc, shared.dw, aligned=True),
                       claims.identity_tolerance(jnp.float64, shared.max_abs_score))


def _thm32_no_complexity(inst, b, shared):
  """C4 with the complexity term dropped and the confidence term / 1000 (a wrong rhs)."""
  c = c4_rademacher.compute_thm32(inst, b, shared)
  small = c.extras.bound * 1e-4
  return EventCheck(c.log_lhs, jnp.log(small), c.extras.gap > small, c.extras, c.events)


def _rademacher_half_trace(inst, b, shared):
  """R_hat against B sqrt(tr K)/(2N): the Jensen bound halved."""
  c = c4_rademacher.compute_rademacher(inst, b, shared)
  return BoundCheck(c.log_lhs + math.log(2.0), c.log_rhs, c.extras)


def _identity_swapped_sample(inst, b, shared):
  """C5 identity with Q's sample swapped for another draw of Q (x_target[:m])."""
  swapped = dict(inst, x_q=inst["x_target"][:inst["x_q"].shape[0]])
  other = c5_mmd_bias.bias(swapped)
  return IdentityCheck(jnp.abs(shared.bias.lhs - other.identity_rhs) / shared.bias.lhs,
                       claims.identity_tolerance(jnp.float64, 1.0))


def _bound_wrong_factor(inst, b, shared):
  """C5 bound with eta in place of 2 eta and ||W^V||_op / 2 (a right side 4x too small)."""
  return BoundCheck(shared.bias.log_lhs, shared.bias.log_bound_rhs - math.log(4.0))


def _prediction_perturbed_query(inst, b, shared):
  """C6 prediction with the right side at a shrunken query feature (z / 10)."""
  params = c5_mmd_bias.pair_params(inst)
  g = icl_kd.bounds.prediction_gap(params, inst["x_p"], inst["x_q"], inst["query"],
                                   log_eta=inst["log_eta"], tau=inst["tau"])
  z = jnp.dot(inst["w_q"], inst["query"]) / 10.0
  return BoundCheck(g.log_lhs, g.log_rhs - g.log_feature_norm + jnp.sum(z * z) / 2.0 - 2.0)


def _risk_without_c(inst, b, shared):
  """C6 risk with C ||dW|| replaced by 0: sqrt(R_Q(W_0(P))) <= sqrt(R_Q(W_0(Q)))."""
  r = icl_kd.bounds.risk_bound(c5_mmd_bias.pair_params(inst), inst["x_p"], inst["x_q"],
                               inst["x_target"], log_eta=inst["log_eta"], tau=inst["tau"])
  return BoundCheck(0.5 * jnp.log(r.risk_p), 0.5 * jnp.log(r.risk_q))


def _entropy_swapped(inst, b, shared):
  """C7 with the sides swapped: H(p) <= log D' - max s (false unless attention is one-hot)."""
  c = c7_lr_proxy.compute(inst, b, shared)
  return BoundCheck(c.log_rhs, c.log_lhs, c.extras, c.events)


def _paper_form_tiny_rhs(inst, b, shared):
  """C4's paper form with its right side / 1e4."""
  c = c4_rademacher.compute_paper_form(inst, b, shared)
  small = c.extras.bound * 1e-4
  return EventCheck(c.log_lhs, jnp.log(small), c.extras.gap > small, c.extras)


def _mmd_chain_quartered(inst, b, shared):
  """thm4.2-mmd with a right side 4x too small (eta for 2 eta and ||W^V||/2)."""
  c = c6_downstream.compute_mmd(inst, b, shared)
  return BoundCheck(c.log_lhs, c.log_rhs - math.log(4.0))


CONTROLS = {
    "thm3.2-paper-form": _paper_form_tiny_rhs, "thm4.2-mmd": _mmd_chain_quartered,
    "thm3.1": _wrong_tau_reference, "kd-step": _kd_wrong_eta, "dw-step-linear": _dw_wrong_step,
    "thm3.2": _thm32_no_complexity, "rademacher-empirical": _rademacher_half_trace,
    "thm4.1-identity": _identity_swapped_sample, "thm4.1-bound": _bound_wrong_factor,
    "thm4.2-prediction": _prediction_perturbed_query, "thm4.2-risk": _risk_without_c,
    "lr-proxy": _entropy_swapped,
}


def test_every_enforced_claim_has_a_negative_control():
  enforced = {cid for cid, c in CLAIMS.items() if c.role.fails_run}
  assert enforced <= set(CONTROLS)


@pytest.mark.parametrize("cid", sorted(CONTROLS))
def test_negative_control_reports_a_violation(cid):
  """A falsified claim is reported: FAILS where its role fails the run, violated for a
  conjecture (thm3.2-paper-form), which never fails it."""
  claim = CLAIMS[cid]
  event = claim.check_type.form.name == "event"
  n = 48 if event else N_CTRL
  bucket = 2 if cid == "thm3.1" else 0       # thm3.1's bucket 0 has a single value: tau-free
  (st_true, v_true), (st_false, v_false) = _verdicts(claim, CONTROLS[cid], bucket, n)
  assert v_true.passed and st_true.violations == 0 and st_true.out_of_range == 0, v_true.detail
  if claim.role.fails_run:
    assert v_true.verdict == "holds"
    assert not v_false.passed and v_false.verdict == "FAILS", (cid, v_false.detail)
  else:
    assert v_true.verdict == "not violated"
    assert v_false.passed and v_false.verdict == "violated", (cid, v_false.detail)
  if not event:
    assert st_false.violations > 0


def test_literal_conjecture_is_violated_and_half_convention_rhs_is_larger():
  """thm4.1-literal is a conjecture: violations are reported, never a failure."""
  claim = CLAIMS["thm4.1-literal"]
  (st, v), _ = _verdicts(claim, c5_mmd_bias.compute_literal, 0, 64)
  assert v.passed and v.verdict in ("violated", "not violated")
  assert isinstance(claim.evaluate(claim.sample(jax.random.key(0), claim.buckets[0], jnp.float64),
                                   claim.buckets[0]), ConjectureCheck)


# one compiled evaluation per (claim, bucket): the eager op-by-op form costs a minute here
_evaluate = jax.jit(lambda claim, inst, bucket: claim.evaluate(inst, bucket), static_argnums=(0, 2))


def test_convention_half_halves_every_literal_ratio_and_counts_both():
  """Under half (c = 1) the left side halves and no right side moves: ratio(half) = ratio(eq12)/2."""
  for cid in ("thm4.1-literal-gaussian", "thm4.1-literal-softmax", "thm4.1-literal-normalised",
              "thm4.1-literal-tv"):
    c12 = CLAIMS[cid]
    ch = claims.with_convention(c12, "half")
    b12, bh = c12.buckets[1], ch.buckets[1]
    assert bh.convention == "half" and b12.convention == "eq12"
    inst = c12.sample(jax.random.key(3), b12, jnp.float64)
    r12, rh = _evaluate(c12, inst, b12), _evaluate(ch, inst, bh)
    np.testing.assert_allclose(float(rh.log_lhs), float(r12.log_lhs) - math.log(2), rtol=1e-12)
    np.testing.assert_allclose(float(rh.log_rhs), float(r12.log_rhs), rtol=1e-12)
    assert r12.events == rh.events          # both conventions counted the same way
    lr = float(r12.log_lhs - r12.log_rhs)
    assert bool(r12.events.violated_eq12) == (lr > math.log1p(1e-9))
    assert bool(r12.events.violated_half) == (lr - math.log(2) > math.log1p(1e-9))
  # thm4.2-literal carries c on both sides: its ratio does not depend on the convention
  c12 = CLAIMS["thm4.2-literal"]
  ch = claims.with_convention(c12, "half")
  inst = c12.sample(jax.random.key(3), c12.buckets[1], jnp.float64)
  r12, rh = _evaluate(c12, inst, c12.buckets[1]), _evaluate(ch, inst, ch.buckets[1])
  np.testing.assert_allclose(float(rh.log_lhs - rh.log_rhs), float(r12.log_lhs - r12.log_rhs),
                             rtol=1e-12, atol=1e-12)


def test_literal_prediction_extras_split_the_ratio_against_numpy():
  """thm4.2-literal's extras: log_query_over_m_phi = |W^Q x'|^2/(2 tau) - max_x |W^K x|^2/(2 tau)
  over both samples (NumPy), log_mmd_ratio = log lhs - thm4.2-mmd's log rhs, and the two add up
  to the literal log ratio; the event says whether the query feature exceeds M_phi. Eight
  instances of two buckets, on both sides of the event."""
  lit, mmd_c = CLAIMS["thm4.2-literal"], CLAIMS["thm4.2-mmd"]
  seen = set()
  for i in range(8):
    b = lit.buckets[i % 2]                       # two buckets: two compiles per claim
    inst = lit.sample(jax.random.key(40 + i), b, jnp.float64)
    r, m = _evaluate(lit, inst, b), _evaluate(mmd_c, inst, b)
    a = {k: np.asarray(v, np.float64) for k, v in inst.items() if k != "sign_key"}
    z = a["w_q"] @ a["query"]
    keys = np.concatenate([a["x_p"], a["x_q"]]) @ a["w_k"].T
    gap = z @ z / (2 * a["tau"]) - np.max(np.sum(keys ** 2, 1)) / (2 * a["tau"])
    np.testing.assert_allclose(float(r.extras.log_query_over_m_phi), gap, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(r.extras.log_mmd_ratio), float(m.log_lhs - m.log_rhs),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(r.extras.log_mmd_ratio + r.extras.log_query_over_m_phi),
                               float(r.log_lhs - r.log_rhs), rtol=1e-12, atol=1e-12)
    assert bool(r.events.query_beyond_m_phi) == (gap > 0)
    seen.add(bool(gap > 0))
  assert seen == {True, False}


def test_literal_normalised_reading_is_the_bound_over_c():
  """thm4.1-literal-normalised's right side is thm4.1-bound's divided by c (docs/THEORY.md C5)."""
  c = CLAIMS["thm4.1-literal-normalised"]
  b = c.buckets[0]
  inst = c.sample(jax.random.key(8), b, jnp.float64)
  shared = c.prepare(inst, b)
  lit = c.compute(inst, b, shared)
  bnd = CLAIMS["thm4.1-bound"].compute(inst, b, shared)
  np.testing.assert_allclose(float(lit.log_rhs), float(bnd.log_rhs) - math.log(2), rtol=1e-12)


def test_support_constants_bound_the_sample_constants():
  """M_x and M_phi over the sampler's supports (the two balls) are at least their sups over
  the pooled samples, on 1,000 instances of each pair bucket (the instances are in the balls),
  and each equals a NumPy recomputation: M_x = max(|c| + r), the key sup over the unit ball
  ||W^K||^2, the key sup over Q's ball by bisection on the secular equation in the
  eigenbasis of W^K^T W^K (numpy.linalg.eigh), and at least the best of 4,000 points on the
  sphere."""

  def np_ball_sup(a, c, r):
    w, v = np.linalg.eigh(a.T @ a)
    cc = v.T @ c

    def step(lam):
      return w * cc / (lam - w)
    lo, hi = w[-1] * (1 + 1e-14), w[-1] * (1 + np.linalg.norm(c) / r) + 1.0
    for _ in range(200):
      mid = 0.5 * (lo + hi)
      lo, hi = (mid, hi) if np.linalg.norm(step(mid)) > r else (lo, mid)
    u = step(hi)
    return float(np.sum(w * (cc + u) ** 2) + w[-1] * max(0.0, r * r - u @ u))
  from proofs_check import sweep as sw
  claim = CLAIMS["thm4.1-literal-tv"]
  rng = np.random.default_rng(0)
  for b, bucket in enumerate(claim.buckets):
    inst = sw.instances(claim, 0, b, np.arange(1000), jnp.float64)
    m_x, log_m_phi = jax.jit(jax.vmap(c5_mmd_bias.support_constants))(inst)
    pooled = np.concatenate([np.asarray(inst["x_p"]), np.asarray(inst["x_q"])], axis=1)
    keys = np.einsum("ind,ikd->ink", pooled, np.asarray(inst["w_k"]))
    assert np.all(np.asarray(m_x) >= np.linalg.norm(pooled, axis=2).max(1) * (1 - 1e-14))
    assert np.all(2 * np.asarray(log_m_phi) >= np.sum(keys ** 2, 2).max(1) * (1 - 1e-12))
    c, r = np.asarray(inst["q_center"]), np.asarray(inst["q_radius"])
    np.testing.assert_allclose(np.asarray(m_x), np.maximum(1.0, np.linalg.norm(c, axis=1) + r),
                               rtol=1e-14)
    for i in range(0, 1000, 97):
      w_k = np.asarray(inst["w_k"][i])
      u = rng.normal(size=(4000, w_k.shape[1]))
      u /= np.linalg.norm(u, axis=1, keepdims=True)
      dense = np.max(np.sum(((c[i] + r[i] * u) @ w_k.T) ** 2, axis=1))
      sup = max(np.linalg.norm(w_k, 2) ** 2, np_ball_sup(w_k, c[i], r[i]))
      got = 2.0 * float(log_m_phi[i])                                        # tau = 1
      np.testing.assert_allclose(got, sup, rtol=1e-9, err_msg=str((b, i)))
      assert dense <= got * (1 + 1e-12)
