"""Tests of icl_kd.mmd: kernels, Gram matrices, MMD estimators, permutation test.

References are independent: NumPy/SciPy re-implementations of every kernel and
estimator, the closed form of MMD^2 between isotropic Gaussians, and exact
properties (diagonal independence, symmetry, ties in the permutation test).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import cdist, pdist

import icl_kd
from icl_kd import mmd

SHAPES = [(5, 7, 2), (8, 8, 3), (12, 9, 4)]          # (n, m, d)
KERNELS = ["gaussian", "laplace", "imq", "exp", "k_v", "k_x"]
ESTIMATORS = ("biased", "unbiased", "linear")


# -- independent NumPy references ----------------------------------------------------

def np_gram(name, x, y, h, params=None):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if name == "gaussian":
    return np.exp(-cdist(x, y, "sqeuclidean") / (2 * h * h))
  if name == "laplace":
    return np.exp(-cdist(x, y) / h)
  if name == "imq":
    return (1.0 + cdist(x, y, "sqeuclidean") / (h * h)) ** -0.5
  if name == "exp":
    return np.exp(x @ y.T / h)
  wk, wv = np.asarray(params.w_k), np.asarray(params.w_v)
  kappa = np.exp((x @ wk.T) @ (y @ wk.T).T / h)
  if name == "k_v":
    return ((x @ wv.T) @ (y @ wv.T).T) * kappa
  return (x @ y.T) * kappa


def np_mmd2(name, x, y, h, estimator, params=None):
  """Returns (estimate, scale) with scale = the sum of |terms| (rounding scale)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  n, m = len(x), len(y)
  if estimator == "linear":
    half = n // 2
    terms = []
    for i in range(half):
      a, b = slice(2 * i, 2 * i + 1), slice(2 * i + 1, 2 * i + 2)
      x1, x2, y1, y2 = x[a], x[b], y[a], y[b]
      k = lambda a, b: np_gram(name, a, b, h, params)[0, 0]
      terms.append([k(x1, x2), k(y1, y2), -k(x1, y2), -k(x2, y1)])
    terms = np.array(terms)
    return terms.sum() / half, np.abs(terms).sum() / half
  kxx, kyy, kxy = (np_gram(name, a, b, h, params) for a, b in ((x, x), (y, y), (x, y)))
  if estimator == "biased":
    est = kxx.mean() + kyy.mean() - 2 * kxy.mean()
    scale = np.abs(kxx).mean() + np.abs(kyy).mean() + 2 * np.abs(kxy).mean()
    return est, scale
  off = lambda a: a[~np.eye(len(a), dtype=bool)]
  est = off(kxx).sum() / (n * (n - 1)) + off(kyy).sum() / (m * (m - 1)) - 2 * kxy.mean()
  scale = (np.abs(off(kxx)).mean() + np.abs(off(kyy)).mean() + 2 * np.abs(kxy).mean())
  return est, scale


def make_kernel(name, h, params=None):
  return {"gaussian": lambda: mmd.gaussian_kernel(h), "laplace": lambda: mmd.laplace_kernel(h),
          "imq": lambda: mmd.imq_kernel(h), "exp": lambda: mmd.exp_kernel(h),
          "k_v": lambda: mmd.distillation_kernel(params, tau=h, use_values=True),
          "k_x": lambda: mmd.distillation_kernel(params, tau=h, use_values=False)}[name]()


def gaussian_mmd2_closed_form(mu1, s1, mu2, s2, h):
  """MMD^2 of N(mu1, s1^2 I) and N(mu2, s2^2 I) under exp(-|x - y|^2 / (2 h^2)).

  x - x' ~ N(mu_a - mu_b, (s_a^2 + s_b^2) I) and, for z ~ N(c, v I) in R^d,
  E exp(-|z|^2 / (2 h^2)) = (h^2 / (h^2 + v))^(d/2) exp(-|c|^2 / (2 (h^2 + v))).
  """
  d = len(mu1)

  def e_k(ma, sa, mb, sb):
    v = sa * sa + sb * sb
    c2 = float(np.sum((np.asarray(ma) - np.asarray(mb)) ** 2))
    return (h * h / (h * h + v)) ** (d / 2) * np.exp(-c2 / (2 * (h * h + v)))

  return e_k(mu1, s1, mu1, s1) + e_k(mu2, s2, mu2, s2) - 2 * e_k(mu1, s1, mu2, s2)


def draw_data(seed, n, m, d, dtype=jnp.float64, scale=1.0, shift=0.0):
  kx, ky, kp = jax.random.split(jax.random.key(seed), 3)
  x = scale * jax.random.normal(kx, (n, d), dtype)
  y = scale * jax.random.normal(ky, (m, d), dtype) + shift
  params = icl_kd.init_params(d, key=kp, scale=0.7, dtype=dtype)
  return x, y, params


# -- module-scope jitted entry points -----------------------------------------------


@jax.jit
def _estimates(x, y, kernel):
  """Everything the estimator property tests read, in one compile per (kernel, shape)."""
  k = min(x.shape[0], y.shape[0])
  return dict(
      biased=mmd.mmd2(x, y, kernel=kernel, estimator="biased"),
      unbiased=mmd.mmd2(x, y, kernel=kernel, estimator="unbiased"),
      linear=mmd.mmd2(x[:k], y[:k], kernel=kernel, estimator="linear"),
      biased_yx=mmd.mmd2(y, x, kernel=kernel, estimator="biased"),
      unbiased_yx=mmd.mmd2(y, x, kernel=kernel, estimator="unbiased"),
      self_mmd=mmd.mmd(x, x, kernel=kernel),
      self_permuted=mmd.mmd2(x, x[::-1], kernel=kernel, estimator="biased"))


@jax.jit
def _grams(x, y, kernel):
  return mmd.gram(kernel, x, y), mmd.gram(kernel, x, y, fused=True)


@jax.jit
def _diagonal_bump(x, y, bump):
  """Unbiased and biased MMD^2 under k and k + bump [x == y] (Gaussian, h = 1.3)."""
  base = mmd.gaussian_kernel(1.3)
  bumped = lambda a, b: base(a, b) + bump * jnp.all(a == b)
  return (mmd.mmd2(x, y, kernel=base), mmd.mmd2(x, y, kernel=bumped),
          mmd.mmd2(x, y, kernel=base, estimator="biased"),
          jnp.exp(2 * mmd.log_mmd(x, y, kernel=bumped)))


_log_mmd = jax.jit(lambda x, y, kernel: mmd.log_mmd(x, y, kernel=kernel))
_median_and_grid = jax.jit(lambda x, y: (mmd.median_bandwidth(x, y),
                                         mmd.bandwidth_grid(x, y, num=5, log2_span=2.0)))
_laplace_grad = jax.jit(jax.grad(
    lambda a, b: mmd.mmd2(a, b, kernel=mmd.laplace_kernel(1.0), estimator="biased")))
_batched_unbiased = jax.jit(jax.vmap(lambda a, b, kernel: mmd.mmd2(a, b, kernel=kernel),
                                     in_axes=(0, 0, None)))
_unbiased = jax.jit(lambda x, y, kernel: mmd.mmd2(x, y, kernel=kernel))
_unbiased_fused = jax.jit(lambda x, y, kernel: mmd.mmd2(x, y, kernel=kernel, fused=True))
_unbiased_exact = jax.jit(lambda x, y, kernel: mmd.mmd2(x, y, kernel=kernel, fused=False))
_estimate = jax.jit(mmd.mmd2, static_argnames=("estimator", "fused", "block_size"))
_biased = jax.jit(lambda x, y, kernel: mmd.mmd2(x, y, kernel=kernel, estimator="biased"))
_perm_const = jax.jit(lambda x, y, key: mmd.permutation_test(
    x, y, kernel=lambda a, b: jnp.ones((), a.dtype), key=key, num_permutations=49))
_perm_test = jax.jit(mmd.permutation_test, static_argnames=("num_permutations", "estimator"))


# -- kernels and Gram matrices ---------------------------------------------------------


@pytest.mark.parametrize("name", KERNELS)
@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES),
       h=st.floats(0.5, 4.0, allow_nan=False, allow_infinity=False, width=64))
def test_gram_matches_numpy_and_fused_form(name, seed, shape, h):
  """vmap Gram == NumPy formula == fused Gram, to float64 rounding."""
  n, m, d = shape
  x, y, params = draw_data(seed, n, m, d, scale=0.5)
  kernel = make_kernel(name, jnp.asarray(h), params)
  g_vmap, g_fused = _grams(x, y, kernel)
  ref = np_gram(name, x, y, h, params)
  tol = 1e-12 * np.max(np.abs(ref)) + 1e-300
  assert g_vmap.shape == (n, m)
  np.testing.assert_allclose(np.asarray(g_vmap), ref, rtol=1e-12, atol=tol)
  np.testing.assert_allclose(np.asarray(g_fused), ref, rtol=1e-12, atol=tol)
  # A kernel is defined on one pair: calling it directly agrees with the Gram.
  assert abs(float(kernel(x[0], y[1])) - ref[0, 1]) <= 1e-12 * abs(ref[0, 1]) + tol


@pytest.mark.parametrize("name", ["gaussian", "laplace", "imq"])
def test_far_from_origin_distances_stay_accurate(name):
  """Data offset by 1e4: both Gram forms, the MMD and the median match the unshifted data.

  x + 1e4 is rounded to a grid of 1.8e-12, so the reference is computed from the
  exact translates (x + 1e4) - 1e4; the naive expansion |x|^2 + |y|^2 - 2<x, y>
  at 1e4 would have errors ~eps * 1e8 ~ 1e-8 here.
  """
  x, y, _ = draw_data(3, 40, 30, 3)
  xo, yo = x + 1e4, y + 1e4
  xr, yr = np.asarray(xo) - 1e4, np.asarray(yo) - 1e4                      # exact translates
  kernel = make_kernel(name, jnp.asarray(0.7))
  ref = np_gram(name, xr, yr, 0.7)
  g_vmap, g_fused = _grams(xo, yo, kernel)
  np.testing.assert_allclose(np.asarray(g_vmap), ref, rtol=0, atol=1e-12)
  np.testing.assert_allclose(np.asarray(g_fused), ref, rtol=0, atol=1e-10)
  np.testing.assert_allclose(float(mmd.pairwise_sq_dists(xo, yo)[2, 5]),
                             cdist(xr, yr, "sqeuclidean")[2, 5], rtol=1e-9)
  est, scale = np_mmd2(name, xr, yr, 0.7, "unbiased")
  assert abs(float(_unbiased_exact(xo, yo, kernel)) - est) <= 1e-11 * scale
  assert abs(float(_unbiased_fused(xo, yo, kernel)) - est) <= 1e-10 * scale
  # The default path (matrix form where the kernel has one), tiled with a remainder.
  assert abs(float(_unbiased(xo, yo, kernel)) - est) <= 1e-10 * scale
  blocked = _estimate(xo, yo, kernel=kernel, estimator="unbiased", block_size=7)
  assert abs(float(blocked) - est) <= 1e-10 * scale
  z = np.concatenate([xr, yr])
  np.testing.assert_allclose(float(_median_and_grid(xo, yo)[0]), np.median(pdist(z)), rtol=1e-10)


def test_kernel_values_on_a_pair():
  """Hand-computed values at x = (0, 0), y = (3, 4): |x - y| = 5, <x', y> = 11 for x' = (1, 2)."""
  x, y, x2 = jnp.array([0.0, 0.0]), jnp.array([3.0, 4.0]), jnp.array([1.0, 2.0])
  assert np.isclose(float(mmd.gaussian_kernel(5.0)(x, y)), np.exp(-0.5), rtol=1e-14)
  assert np.isclose(float(mmd.laplace_kernel(2.5)(x, y)), np.exp(-2.0), rtol=1e-14)
  assert np.isclose(float(mmd.imq_kernel(5.0)(x, y)), 2 ** -0.5, rtol=1e-14)
  assert np.isclose(float(mmd.exp_kernel(11.0)(x2, y)), np.e, rtol=1e-14)
  eye = jnp.eye(2)
  params = icl_kd.AttentionParams(eye, eye, 2.0 * eye)
  assert np.isclose(float(mmd.distillation_kernel(params, tau=11.0)(x2, y)), 44 * np.e, rtol=1e-14)
  assert np.isclose(float(mmd.distillation_kernel(params, tau=11.0, use_values=False)(x2, y)),
                    11 * np.e, rtol=1e-14)


# -- estimators ----------------------------------------------------------------------


@pytest.mark.parametrize("name", KERNELS)
@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES),
       h=st.floats(0.5, 4.0, allow_nan=False, allow_infinity=False, width=64),
       shift=st.floats(0.0, 1.0, allow_nan=False, allow_infinity=False, width=64))
def test_estimators_match_numpy(name, seed, shape, h, shift):
  """biased, unbiased and linear MMD^2 agree with NumPy re-implementations (1e-12 of the scale)."""
  n, m, d = shape
  x, y, params = draw_data(seed, n, m, d, scale=0.5, shift=shift)
  kernel = make_kernel(name, jnp.asarray(h), params)
  got = _estimates(x, y, kernel)
  k = min(n, m)
  for est_name in ESTIMATORS:
    value = got[est_name]
    xs, ys = (x[:k], y[:k]) if est_name == "linear" else (x, y)
    ref, scale = np_mmd2(name, xs, ys, h, est_name, params)
    if est_name == "biased":
      ref = max(ref, 0.0)
    assert abs(float(value) - ref) <= 1e-12 * scale, (est_name, float(value), ref)


@pytest.mark.parametrize("name", KERNELS)
@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES),
       h=st.floats(0.5, 4.0, allow_nan=False, allow_infinity=False, width=64))
def test_biased_nonnegative_and_symmetric(name, seed, shape, h):
  n, m, d = shape
  x, y, params = draw_data(seed, n, m, d, scale=0.5)
  kernel = make_kernel(name, jnp.asarray(h), params)
  got = _estimates(x, y, kernel)
  b_xy, u_xy, b_yx, u_yx = (got[k] for k in ("biased", "unbiased", "biased_yx", "unbiased_yx"))
  _, scale = np_mmd2(name, x, y, h, "biased", params)
  assert float(b_xy) >= 0.0
  assert abs(float(b_xy) - float(b_yx)) <= 1e-13 * scale
  assert abs(float(u_xy) - float(u_yx)) <= 1e-13 * scale


@pytest.mark.parametrize("name", KERNELS)
@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES),
       h=st.floats(0.5, 4.0, allow_nan=False, allow_infinity=False, width=64))
def test_identical_samples_have_zero_mmd(name, seed, shape, h):
  """MMD(P_hat, P_hat) == 0: the same sample, and the same sample with its rows permuted.

  MMD is the square root of a cancelling sum, so in floating point MMD^2 (not MMD)
  is ~eps times the size of its terms: that is what is bounded.
  """
  n, m, d = shape
  x, y, params = draw_data(seed, n, m, d, scale=0.5)
  kernel = make_kernel(name, jnp.asarray(h), params)
  _, scale = np_mmd2(name, x, x, h, "biased", params)
  got = _estimates(x, y, kernel)
  same, permuted = got["self_mmd"], got["self_permuted"]
  assert float(same) ** 2 <= 1e-13 * scale
  assert float(permuted) <= 1e-13 * scale


@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES),
       bump=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64))
def test_unbiased_ignores_the_gram_diagonal(seed, shape, bump):
  """k'(x, y) = k(x, y) + bump [x == y] changes only the Gram diagonal (continuous data):
  the unbiased estimate is unchanged, the biased one moves by bump (1/n + 1/m)."""
  n, m, d = shape
  x, y, _ = draw_data(seed, n, m, d)
  u0, u1, b0, b1 = _diagonal_bump(x, y, jnp.asarray(bump))
  assert abs(float(u1) - float(u0)) <= 1e-14 * 4
  expected = float(b0) + bump * (1 / n + 1 / m)
  if expected > 0:                        # the biased value is clamped at 0
    assert abs(float(b1) - expected) <= 1e-12 * (4 + abs(bump))


def test_gaussian_closed_form_agrees_within_4_se():
  """Unbiased MMD^2 at n = m = 4096 vs the closed form, d = 3 and 16 (fixed seeds).

  The standard error is estimated from the same sample through the variance of a
  U-statistic (Hoeffding decomposition; Serfling 1980, Sec. 5.2.1):
  Var U ~ 4 (n-2)/(n(n-1)) zeta_1 + 2/(n(n-1)) zeta_2, with zeta_1 the variance of
  the row means of H_ij = k(x_i,x_j) + k(y_i,y_j) - k(x_i,y_j) - k(x_j,y_i) and zeta_2
  that of H. A 4-sigma miss has probability ~6e-5 per case under a correct estimator.
  d = 3 uses the nested vmap of the one-pair kernel, d = 16 the default path (the
  matrix form), both tiled (the two are proven equal above).
  """
  n = 4096
  for d, seed, estimate in ((3, 11, _unbiased_exact), (16, 12, _unbiased)):
    h = float(np.sqrt(d))
    mu1, mu2 = np.zeros(d), np.full(d, 0.6 / np.sqrt(d))
    s1, s2 = 1.0, 1.2
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jnp.asarray(mu1)[None, :] + s1 * jax.random.normal(kx, (n, d))
    y = jnp.asarray(mu2)[None, :] + s2 * jax.random.normal(ky, (n, d))
    est = float(estimate(x, y, mmd.gaussian_kernel(jnp.asarray(h))))
    truth = gaussian_mmd2_closed_form(mu1, s1, mu2, s2, h)

    xn, yn = np.asarray(x), np.asarray(y)
    row_sums, h_sum, h_sq = np.zeros(n), 0.0, 0.0
    for start in range(0, n, 512):                     # H in row blocks, diagonal removed
      sl = slice(start, start + 512)
      k = lambda a, b: np.exp(-cdist(a, b, "sqeuclidean") / (2 * h * h))
      hb = k(xn[sl], xn) + k(yn[sl], yn) - k(xn[sl], yn) - k(yn[sl], xn)
      rows = np.arange(hb.shape[0])
      hb[rows, rows + start] = 0.0
      row_sums[sl] = hb.sum(axis=1)
      h_sum += hb.sum()
      h_sq += (hb ** 2).sum()
    u = h_sum / (n * (n - 1))
    zeta1 = np.var(row_sums / (n - 1))
    zeta2 = h_sq / (n * (n - 1)) - u * u
    se = np.sqrt(4 * (n - 2) / (n * (n - 1)) * zeta1 + 2 / (n * (n - 1)) * zeta2)
    assert abs(est - truth) <= 4 * se, (d, est, truth, se)
    assert abs(truth) > 10 * se                        # the test resolves a nonzero MMD


# -- blocked estimators ------------------------------------------------------------------

BLOCK_KERNELS = ["gaussian", "laplace", "exp", "k_v", "plain"]


def _plain_kernel(a, b):
  """A plain callable: no matrix form, no symmetry assumed (the full tile grid)."""
  return jnp.exp(-jnp.sum((a - b) ** 2) / (2 * 0.9 ** 2))


def _blocked_values(x, y, kernel):
  """Biased and unbiased MMD^2 with tiles of side 7, 1 and one dense tile: one compile."""
  return {(est, block): mmd.mmd2(x, y, kernel=kernel, estimator=est, block_size=block)
          for est in ("biased", "unbiased") for block in (7, 1, 10**6)}


_blocked_jit = jax.jit(_blocked_values)
_blocked_plain = jax.jit(lambda x, y: _blocked_values(x, y, _plain_kernel))


@pytest.mark.parametrize("name,dtype", [(k, jnp.float64) for k in BLOCK_KERNELS]
                         + [("gaussian", jnp.float32), ("k_v", jnp.float32)])
def test_blocked_equals_dense(name, dtype):
  """Tiles of side 7 (50 = 7 * 7 + 1 and 33 = 7 * 4 + 5 rows: remainders, n != m) and of
  side 1 give the single dense tile's value and NumPy's, for biased and unbiased.

  ``plain`` is a callable with no matrix form and no symmetry assumed (the full tile
  grid); ``laplace`` takes the one-pair vmap by default, the others their matrix form.
  float64: 1e-12 of the sum of |terms|; float32: 2e-6 of it (eps32 ~ 1.2e-7 times the
  ~10 roundings of each term and of summation over ~2500 terms in tiles).
  """
  x, y, params = draw_data(4, 50, 33, 3, dtype=dtype, scale=0.5, shift=0.3)
  if name == "plain":
    got, ref_name = _blocked_plain(x, y), "gaussian"
  else:
    got, ref_name = _blocked_jit(x, y, make_kernel(name, jnp.asarray(0.9), params)), name
  tol = 1e-12 if dtype == jnp.float64 else 2e-6
  for estimator in ("biased", "unbiased"):
    ref, scale = np_mmd2(ref_name, x, y, 0.9, estimator, params)
    ref = max(ref, 0.0) if estimator == "biased" else ref
    dense = float(got[estimator, 10**6])
    for block in (7, 1):
      value = got[estimator, block]
      assert value.dtype == dtype
      assert abs(float(value) - dense) <= tol * scale, (estimator, block, float(value), dense)
    assert abs(dense - ref) <= tol * scale, (estimator, dense, ref)


def test_default_path_on_several_tiles_matches_numpy():
  """n = 2B + 88, m = 2B + 18 with the default float64 tile side B (3 x 3 tiles, the last
  padded) and rows offset by 1e4 in the mean: default == one-pair (exact differences) == NumPy."""
  b = mmd.DEFAULT_BLOCK_SIZE["float64"]
  n, m = 2 * b + 88, 2 * b + 18
  for rows in (n, m):
    tiles, side = -(-rows // b), -(-rows // -(-rows // b))
    assert tiles == 3 and tiles * side > rows       # several tiles, the last one padded
  x, y, _ = draw_data(9, n, m, 5, shift=0.2)
  x, y = x + 1e4, y + 1e4
  xr, yr = np.asarray(x) - 1e4, np.asarray(y) - 1e4
  kernel = mmd.gaussian_kernel(2.0)
  for estimator in ("biased", "unbiased"):
    ref, scale = np_mmd2("gaussian", xr, yr, 2.0, estimator)
    default = float(_estimate(x, y, kernel=kernel, estimator=estimator))
    exact = float(_estimate(x, y, kernel=kernel, estimator=estimator, fused=False))
    assert abs(default - ref) <= 1e-10 * scale, (estimator, default, ref)
    assert abs(exact - ref) <= 1e-11 * scale, (estimator, exact, ref)


_grad_tiled = jax.jit(jax.grad(lambda a, b, est: mmd.mmd2(
    a, b, kernel=mmd.gaussian_kernel(1.1), estimator=est, block_size=6)), static_argnums=2)
_grad_pairs = jax.jit(jax.grad(lambda a, b, est: mmd.mmd2(
    a, b, kernel=mmd.gaussian_kernel(1.1), estimator=est, fused=False, block_size=100)),
    static_argnums=2)


def test_gradient_of_the_tiled_matrix_form():
  """d MMD^2 / dx through the tiles (matrix form, side 6, remainders) equals the gradient
  through one dense tile of the one-pair kernel (exact differences), to 1e-12 of its size."""
  x, y, _ = draw_data(12, 20, 17, 3, shift=0.3)
  for est in ("biased", "unbiased"):
    g_tiled, g_pairs = np.asarray(_grad_tiled(x, y, est)), np.asarray(_grad_pairs(x, y, est))
    assert np.all(np.isfinite(g_tiled))
    np.testing.assert_allclose(g_tiled, g_pairs, rtol=0, atol=1e-12 * np.max(np.abs(g_pairs)))


def test_blocked_memory_is_bounded():
  """n = m = 65,536, d = 64, float64: XLA's own memory plan for the default path needs under
  64 MiB of temporaries (one dense n x n Gram matrix would be 32 GiB). Compiled, not run."""
  spec = jax.ShapeDtypeStruct((65536, 64), jnp.float64)
  for estimator in ("unbiased", "biased"):
    fn = jax.jit(lambda x, y: mmd.mmd2(x, y, kernel=mmd.gaussian_kernel(8.0), estimator=estimator))
    plan = fn.lower(spec, spec).compile().memory_analysis()
    assert plan.temp_size_in_bytes < 64 * 2**20, plan.temp_size_in_bytes


def test_unbiased_estimate_is_negative_about_half_the_time_under_the_null():
  """The unbiased MMD^2 is unbiased for MMD^2 = 0 when P = Q, so it is negative with probability
  near 1/2: 200 null draws (n = m = 40, d = 2) must give between 70 and 130 negatives (the
  central ~99.99% of Binomial(200, 1/2); the exact probability is close to but not 1/2).
  Their mean is 0 within 4 standard errors; the biased one is never negative."""
  keys = jax.random.split(jax.random.key(31), 200)
  vals = np.asarray(_null_unbiased(keys))
  biased = np.asarray(_null_biased(keys))
  assert 70 <= int(np.sum(vals < 0)) <= 130, int(np.sum(vals < 0))
  assert abs(vals.mean()) <= 4 * vals.std(ddof=1) / np.sqrt(len(vals))
  assert np.all(biased >= 0.0)
  assert "can be < 0" in mmd.NEGATIVE_MMD2_NOTE


def _null_sample(key):
  kx, ky = jax.random.split(key)
  return jax.random.normal(kx, (40, 2)), jax.random.normal(ky, (40, 2))


_null_unbiased = jax.jit(jax.vmap(
    lambda key: mmd.mmd2(*_null_sample(key), kernel=mmd.gaussian_kernel(1.0))))
_null_biased = jax.jit(jax.vmap(
    lambda key: mmd.mmd2(*_null_sample(key), kernel=mmd.gaussian_kernel(1.0), estimator="biased")))


def _linear_draw(key, h):
  x = jax.random.normal(jax.random.fold_in(key, 0), (256, 3))
  y = 0.5 + 1.3 * jax.random.normal(jax.random.fold_in(key, 1), (256, 3))
  kernel = mmd.gaussian_kernel(h)
  return mmd.mmd2(x, y, kernel=kernel, estimator="linear"), mmd.linear_mmd2(x, y, kernel=kernel)


_linear_repeats = jax.jit(jax.vmap(_linear_draw, in_axes=(0, None)))


def test_linear_estimator_is_unbiased_and_its_standard_error_is_the_spread():
  """4000 independent linear-time estimates (n = 256, d = 3, fixed seed).

  Mean vs the closed form: tolerance 4 SE with SE = sample std / sqrt(4000), so a
  correct estimator fails with probability ~6e-5. Reported standard error vs the
  empirical spread: the mean of the 4000 reported ``std_error`` must equal the
  sample std of the 4000 estimates within 4 times the relative standard error of a
  sample std, sqrt((kurtosis - 1) / (4 * 4000)) ~ 1.6% (false-alarm rate ~6e-5);
  an SE off by sqrt(128) (the number of terms) or by sqrt(2) is far outside.
  """
  keys = jax.random.split(jax.random.key(2024), 4000)
  vals, lin = _linear_repeats(keys, jnp.asarray(1.5))
  vals, value, se = np.asarray(vals), np.asarray(lin.value), np.asarray(lin.std_error)
  np.testing.assert_allclose(value, vals, rtol=0, atol=1e-14)   # the same estimator (|terms| ~ 1)
  truth = gaussian_mmd2_closed_form(np.zeros(3), 1.0, np.full(3, 0.5), 1.3, 1.5)
  spread = vals.std(ddof=1)
  assert abs(vals.mean() - truth) <= 4 * spread / np.sqrt(len(vals)), (vals.mean(), truth)
  assert truth > 10 * spread / np.sqrt(len(vals))
  centred = vals - vals.mean()
  kurtosis = np.mean(centred ** 4) / np.mean(centred ** 2) ** 2
  rel_se = np.sqrt((kurtosis - 1) / (4 * len(vals)))
  assert abs(se.mean() / spread - 1) <= 4 * rel_se, (se.mean(), spread, rel_se)
  # Independently of the repeats: the SE of one draw from its own terms, in NumPy.
  key = keys[0]
  x = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), (256, 3)))
  y = np.asarray(0.5 + 1.3 * jax.random.normal(jax.random.fold_in(key, 1), (256, 3)))
  g = lambda a, b: np.exp(-np.sum((a - b) ** 2, axis=1) / (2 * 1.5 ** 2))
  h = g(x[0::2], x[1::2]) + g(y[0::2], y[1::2]) - g(x[0::2], y[1::2]) - g(x[1::2], y[0::2])
  np.testing.assert_allclose(value[0], h.mean(), rtol=1e-12)
  np.testing.assert_allclose(se[0], h.std(ddof=1) / np.sqrt(len(h)), rtol=1e-12)


def test_exp_kernel_in_log_space_at_large_scores():
  """Scores <x, y>/tau ~ 1000: MMD^2 ~ e^1000 overflows, log MMD stays exact."""
  x, y, _ = draw_data(5, 6, 7, 3, scale=0.05)
  a = jnp.array([1.0, 0.0, 0.0]) * np.sqrt(1000.0)
  x, y = x + a[None, :], y + a[None, :]
  kernel = mmd.exp_kernel(1.0)
  got = float(_log_mmd(x, y, kernel))
  xn, yn = np.asarray(x), np.asarray(y)
  shifted = lambda p, q: np.exp(p @ q.T - 1000.0)          # a fixed shift, chosen here
  v = shifted(xn, xn).mean() + shifted(yn, yn).mean() - 2 * shifted(xn, yn).mean()
  assert np.isfinite(got)
  np.testing.assert_allclose(got, 0.5 * (1000.0 + np.log(v)), rtol=1e-9)
  res = _perm_test(x, y, kernel=kernel, key=jax.random.key(0), num_permutations=19,
                   estimator="unbiased")
  assert 0.0 < float(res.p_value) <= 1.0


def test_float32_path():
  x, y, _ = draw_data(1, 30, 20, 3, shift=0.5)
  k = mmd.gaussian_kernel(1.0)
  v64 = float(_unbiased(x, y, k))
  v32 = _unbiased(x.astype(jnp.float32), y.astype(jnp.float32), k)
  assert v32.dtype == jnp.float32
  assert abs(float(v32) - v64) <= 1e-5


def test_jit_vmap_and_kernel_as_pytree():
  """The kernel is a pytree argument of jit; vmap over samples equals a loop."""
  xs = jax.random.normal(jax.random.key(0), (4, 10, 3))
  ys = jax.random.normal(jax.random.key(1), (4, 9, 3)) + 0.3
  k = mmd.gaussian_kernel(jnp.asarray(1.1))
  batched = _batched_unbiased(xs, ys, k)
  looped = [float(_unbiased(a, b, k)) for a, b in zip(xs, ys)]
  np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-12)
  refs = [np_mmd2("gaussian", a, b, 1.1, "unbiased") for a, b in zip(xs, ys)]
  np.testing.assert_allclose(looped, [r for r, _ in refs], rtol=0,
                             atol=1e-12 * max(sc for _, sc in refs))


def test_laplace_gradient_is_finite_at_coincident_points():
  x = jnp.array([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]])
  g = _laplace_grad(x, x)
  assert bool(jnp.all(jnp.isfinite(g)))


# -- bandwidths -------------------------------------------------------------------------


@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES))
def test_median_bandwidth_and_grid(seed, shape):
  n, m, d = shape
  x, y, _ = draw_data(seed, n, m, d, shift=0.7)
  h, grid = _median_and_grid(x, y)
  ref = np.median(pdist(np.concatenate([np.asarray(x), np.asarray(y)])))
  np.testing.assert_allclose(float(h), ref, rtol=1e-12)
  grid = np.asarray(grid)
  np.testing.assert_allclose(grid, ref * np.array([0.25, 0.5, 1.0, 2.0, 4.0]), rtol=1e-12)


# -- permutation test ---------------------------------------------------------------------


@given(seed=st.integers(0, 2**31 - 1),
       shift=st.floats(0.0, 2.0, allow_nan=False, allow_infinity=False, width=64),
       estimator=st.sampled_from(["biased", "unbiased"]))
def test_permutation_p_value_lattice(seed, shift, estimator):
  """p in {1/(B+1), ..., 1}; the statistic is the MMD^2 estimate of the observed split."""
  n, m, d = 8, 11, 3
  x, y, _ = draw_data(seed, n, m, d, shift=shift)
  k = mmd.gaussian_kernel(jnp.asarray(1.0))
  b = 39
  res = _perm_test(x, y, kernel=k, key=jax.random.key(seed), num_permutations=b,
                   estimator=estimator)
  p = float(res.p_value)
  assert 1.0 / (b + 1) <= p <= 1.0
  assert abs(p * (b + 1) - round(p * (b + 1))) < 1e-9
  ref = float((_biased if estimator == "biased" else _unbiased)(x, y, k))
  assert abs(float(res.statistic) - ref) <= 1e-12 * 4


def test_permutation_extremes_and_ties():
  """Constant kernel: all permutations tie, p = 1 (ties count). Far apart: p = 1/(B+1)."""
  x, y, _ = draw_data(0, 10, 12, 2)
  res = _perm_const(x, y, jax.random.key(1))
  assert float(res.p_value) == 1.0
  res = _perm_test(x, y + 50.0, kernel=mmd.gaussian_kernel(1.0), key=jax.random.key(1),
                   num_permutations=49, estimator="unbiased")
  assert float(res.p_value) == pytest.approx(1 / 50, rel=1e-12)


def _trial(key, shift, num_permutations):
  kx, ky, kp = jax.random.split(key, 3)
  x = jax.random.normal(kx, (200, 5))
  y = jax.random.normal(ky, (200, 5)) + shift * jnp.eye(5)[0][None, :]
  # h = sqrt(2 d) is where the median heuristic lands for N(0, I_5) samples (the
  # median of |x - x'| ~ sqrt(2 d)); fixed here, as sorting 80k distances per trial
  # would dominate the run time. The median heuristic itself is tested above.
  kernel = mmd.gaussian_kernel(jnp.sqrt(10.0))
  return mmd.permutation_test(x, y, kernel=kernel, key=kp,
                              num_permutations=num_permutations).p_value


_trials = jax.jit(lambda keys, shift: jax.lax.map(lambda k: _trial(k, shift, 99), keys,
                                                  batch_size=25))


def test_permutation_test_level_and_power():
  """n = m = 200, d = 5, Gaussian kernel (h = sqrt(10)), B = 99, alpha = 0.05.

  Level: under P = Q the p-value is uniform on {k/100} (exchangeability), so the
  number of rejections in 200 independent trials is Binomial(200, 0.05); it must
  lie in its central 99% interval [3, 19] (false-alarm rate of this check ~1%,
  fixed seed). Power: against a unit mean shift (|mu_P - mu_Q| = 1) at least
  95% of 200 trials reject.
  """
  alpha = 0.05
  keys = jax.random.split(jax.random.key(7), 200)
  p_null = np.asarray(_trials(keys, jnp.asarray(0.0)))
  lo, hi = stats.binom.interval(0.99, 200, alpha)
  rejections = int(np.sum(p_null <= alpha))
  assert lo <= rejections <= hi, rejections
  p_alt = np.asarray(_trials(jax.random.split(jax.random.key(8), 200), jnp.asarray(1.0)))
  assert np.mean(p_alt <= alpha) > 0.95, np.mean(p_alt <= alpha)


_perm_keys = jax.jit(jax.vmap(
    lambda x, y, key: mmd.permutation_test(x, y, kernel=mmd.gaussian_kernel(1.0), key=key,
                                           num_permutations=99).p_value,
    in_axes=(None, None, 0)))


def test_permutation_p_value_spread_over_keys():
  """Fixed data (n = 30, m = 25, d = 2, P = Q, a draw with p ~ 0.37).

  The exact permutation p-value p is computed in NumPy from 100,000 uniformly random
  splits (its own SE ~1.5e-3). Over 400 keys with B = 99, the count #{T_b >= T_obs} is
  Binomial(99, p), so the p-values have mean (1 + 99 p) / 100 and variance
  99 p (1 - p) / 100^2. Checks: mean within 4 SE (false-alarm ~6e-5) and sample variance
  within +-35% (sample variance of 400 draws: relative SE ~7%, so 35% is ~5 SE). A label
  sampler drawing the wrong law moves p; a p-value formula off by a factor moves both.
  """
  x, y, _ = draw_data(6, 30, 25, 2)
  xn, yn = np.asarray(x), np.asarray(y)
  z = np.concatenate([xn, yn])
  k = np.exp(-cdist(z, z, "sqeuclidean") / 2.0)
  np.fill_diagonal(k, 0.0)
  n, m = 30, 25

  def stat(a):                                           # a: (S, N) labels with n ones
    b = 1.0 - a
    ka = a @ k
    return (np.sum(ka * a, 1) / (n * (n - 1)) + np.sum((b @ k) * b, 1) / (m * (m - 1))
            - 2 * np.sum(ka * b, 1) / (n * m))

  obs = stat(np.concatenate([np.ones((1, n)), np.zeros((1, m))], 1))[0]
  rng = np.random.default_rng(5)
  splits = np.argsort(rng.random((100_000, n + m)), axis=1) < n   # uniform subsets of size n
  p = np.mean(stat(splits.astype(float)) >= obs)
  assert 0.05 < p < 0.6, p                               # a p-value with visible spread
  pv = np.asarray(_perm_keys(x, y, jax.random.split(jax.random.key(77), 400)))
  mean, var = (1 + 99 * p) / 100, 99 * p * (1 - p) / 100 ** 2
  assert abs(pv.mean() - mean) <= 4 * np.sqrt(var / len(pv)), (pv.mean(), mean)
  assert abs(pv.var(ddof=1) / var - 1) <= 0.35, (pv.var(ddof=1), var)


def test_random_splits_law():
  """Each row has exactly n ones, and the C(5, 2) = 10 subsets of 2 among 5 are equally
  likely: 20,000 draws, Pearson chi-square with 9 degrees of freedom below its 0.999
  quantile 27.88 (false-alarm rate 1e-3, fixed seed). Marginals alone would not catch a
  sampler that favours some pairs; the subset frequencies do."""
  labels = np.asarray(mmd.random_splits(jax.random.key(3), 2, 3, 20_000))
  assert labels.shape == (20_000, 5)
  np.testing.assert_array_equal(labels.sum(axis=1), 2)
  codes = labels @ (2 ** np.arange(5))
  counts = np.array([np.sum(codes == c) for c in np.unique(codes)])
  assert len(counts) == 10
  chi2 = np.sum((counts - 2000.0) ** 2 / 2000.0)
  assert chi2 < stats.chi2.ppf(0.999, 9), (chi2, counts)
  # Larger sizes: exactly n ones in every row.
  big = np.asarray(mmd.random_splits(jax.random.key(4), 700, 300, 50))
  np.testing.assert_array_equal(big.sum(axis=1), 700)


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [mmd.gaussian_kernel, mmd.laplace_kernel, mmd.imq_kernel,
                                     mmd.exp_kernel])
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_bandwidth(factory, value):
  with pytest.raises(ValueError, match="bandwidth|tau"):
    factory(value)


def test_bad_inputs():
  x, y, params = draw_data(0, 6, 5, 3)
  k = mmd.gaussian_kernel(1.0)
  with pytest.raises(ValueError, match="x must hold at least"):
    mmd.mmd2(jnp.zeros((0, 3)), y, kernel=k, estimator="biased")
  with pytest.raises(ValueError, match="y must hold at least 2"):
    mmd.mmd2(x, y[:1], kernel=k)                        # unbiased needs n, m >= 2
  with pytest.raises(ValueError, match="y has shape"):
    mmd.mmd2(x, y[:, :2], kernel=k)
  with pytest.raises(ValueError, match="y has shape"):  # shape checks fire under jit too
    _unbiased(x, y[:, :2], k)
  with pytest.raises(ValueError, match="non-finite"):
    mmd.mmd2(x.at[0, 0].set(jnp.nan), y, kernel=k)
  with pytest.raises(ValueError, match="non-finite"):
    mmd.mmd(x, y.at[1, 2].set(jnp.inf), kernel=k)
  with pytest.raises(ValueError, match="estimator must be one of"):
    mmd.mmd2(x, y, kernel=k, estimator="quadratic")
  with pytest.raises(ValueError, match="equal sample sizes"):
    mmd.mmd2(x, y, kernel=k, estimator="linear")
  with pytest.raises(ValueError, match="rank 2"):
    mmd.mmd2(x[0], y, kernel=k)
  with pytest.raises(TypeError, match="kernel must be callable"):
    mmd.mmd2(x, y, kernel=1.0)
  with pytest.raises(TypeError, match="dtype"):
    mmd.mmd2(x, y.astype(jnp.float32), kernel=k)
  with pytest.raises(ValueError, match="num_permutations"):
    mmd.permutation_test(x, y, kernel=k, key=jax.random.key(0), num_permutations=0)
  with pytest.raises(ValueError, match="non-finite"):
    mmd.permutation_test(x.at[0, 0].set(jnp.nan), y, kernel=k, key=jax.random.key(0))
  with pytest.raises(ValueError, match="one pair"):
    k(x, y)
  with pytest.raises(ValueError, match="tau"):
    mmd.distillation_kernel(params, tau=0.0)
  with pytest.raises(TypeError, match="params"):
    mmd.distillation_kernel((1, 2, 3), tau=1.0)
  with pytest.raises(ValueError, match="num"):
    mmd.bandwidth_grid(x, y, num=0)
  for bad in (0, -3):
    with pytest.raises(ValueError, match="block_size must be an int >= 1"):
      mmd.mmd2(x, y, kernel=k, block_size=bad)
  for bad in (2.5, True, "64"):
    with pytest.raises(TypeError, match="block_size must be None or an int"):
      mmd.mmd2(x, y, kernel=k, block_size=bad)
  with pytest.raises(TypeError, match="fused must be None, True or False"):
    mmd.mmd2(x, y, kernel=k, fused="yes")
  with pytest.raises(ValueError, match="no matrix .fused. form"):
    mmd.mmd2(x, y, kernel=lambda a, b: jnp.sum(a * b), fused=True)
  with pytest.raises(ValueError, match="y must hold at least 1"):
    mmd.mmd2(x, jnp.zeros((0, 3)), kernel=k, estimator="biased")
  with pytest.raises(ValueError, match="y has shape .* expected axis 1 of size 3"):
    mmd.mmd2(x, y[:, :2], kernel=k, block_size=2)
  with pytest.raises(ValueError, match="x must hold at least 4"):
    mmd.linear_mmd2(x[:3], y[:3], kernel=k)
  with pytest.raises(ValueError, match="equal sample sizes"):
    mmd.linear_mmd2(x, y, kernel=k)
  with pytest.raises(TypeError, match="key must be one PRNG key"):
    mmd.permutation_test(x, y, kernel=k, key=0)
  with pytest.raises(TypeError, match="key must be one PRNG key"):
    mmd.random_splits(jax.random.split(jax.random.key(0), 2), 2, 3, 4)
  with pytest.raises(ValueError, match="n must be an int >= 1"):
    mmd.random_splits(jax.random.key(0), 0, 3, 4)
  # Under jit non-finite values cannot raise: the result is NaN, never a silent number.
  assert np.isnan(float(_unbiased(x.at[0, 0].set(jnp.nan), y, k)))
  assert np.isnan(float(_unbiased(x, y, mmd.GaussianKernel(jnp.asarray(-1.0)))))
  bad_tau = mmd.DistillationKernel(params, jnp.asarray(0.0), True)
  assert np.isnan(float(_biased(x, y, bad_tau)))
