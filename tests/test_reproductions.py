"""Published numbers reproduced with fixed seeds.

- Garg, Tsipras, Liang & Valiant (2022), "What can transformers learn
  in-context?": the averaging estimator w_hat = (1/k) sum_i y_i x_i has
  normalised squared error E(<w_hat - w, x'>)^2 / d = (d+1)/k for
  x, w ~ N(0, I_d) (derivation in icl_kd.baselines.one_step_risk).
- von Oswald et al. (2023), "Transformers learn in-context by gradient
  descent": d = N = 10, x ~ U(-1/2, 1/2)^d, w ~ N(0, I), loss = 1/2 mean
  squared error; one GD step from zero at its best learning rate has loss
  0.2047 in the authors' notebook. A single linear self-attention layer
  trained here reaches it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from icl_kd import baselines, models, tasks, train

VON_OSWALD_ONE_STEP_LOSS = 0.2047


def _averaging_errors(prompts, eta):
  def one(xs, ys, queries):
    return jax.vmap(lambda q: baselines.averaging(xs, ys, q, eta=eta))(queries)
  preds = jax.vmap(one)(prompts.xs, prompts.ys, prompts.queries)            # (B, M)
  return (preds - prompts.targets) ** 2


_averaging_errors = jax.jit(_averaging_errors)


@pytest.mark.parametrize("k,expected", [(5, 4.2), (20, 1.05), (40, 0.525)])
def test_garg_averaging_error_is_d_plus_one_over_k(k, expected):
  # 4000 prompts x 8 queries at d = 20; the standard error is computed over the 4000
  # independent prompt means. Within 3 s.e.: false-alarm rate 0.27% per k under a correct
  # implementation (fixed seed, so the outcome is deterministic).
  d = 20
  assert (d + 1) / k == pytest.approx(expected)
  prompts = tasks.sample_regression(4000, k, d, key=jax.random.key(100 + k), n_queries=8,
                                    dtype=jnp.float64)
  err = np.asarray(_averaging_errors(prompts, jnp.asarray(1.0))) / d     # normalised by d
  per_prompt = err.mean(axis=1)
  mean, se = per_prompt.mean(), per_prompt.std(ddof=1) / np.sqrt(len(per_prompt))
  assert abs(mean - expected) < 3 * se, (mean, se, expected)
  assert se < 0.05 * expected                                            # the test has power


def test_von_oswald_one_step_closed_form_and_monte_carlo():
  opt = baselines.optimal_one_step(d=10, n=10, x_dist="uniform")
  closed = 0.5 * opt.risk
  assert abs(closed / VON_OSWALD_ONE_STEP_LOSS - 1) < 0.015, closed
  # Monte Carlo at eta*: 50000 prompts x 4 queries; the prompt-level s.e. is ~0.4% of the
  # mean, so the 1.5% tolerance is > 3.5 s.e. (false-alarm rate < 0.05%).
  prompts = tasks.sample_regression(50000, 10, 10, key=jax.random.key(7), n_queries=4,
                                    x_dist="uniform", dtype=jnp.float64)
  per_prompt = 0.5 * np.asarray(_averaging_errors(prompts, jnp.asarray(opt.eta))).mean(axis=1)
  mc, se = per_prompt.mean(), per_prompt.std(ddof=1) / np.sqrt(len(per_prompt))
  assert abs(mc / closed - 1) < 0.015, (mc, se, closed)
  assert 3 * se < 0.015 * closed
  # a learning rate 20% off the optimum is measurably worse (the optimum is a minimum).
  worse = 0.5 * np.asarray(_averaging_errors(prompts, jnp.asarray(1.2 * opt.eta))).mean()
  assert worse > mc


LSA = models.LinearAttentionLayer(d_k=11, d_v=1, init_scale=0.3)


def test_trained_linear_attention_reaches_one_gd_step():
  # Linear self-attention on tokens (x_i, y_i), query (x', 0), read-out = its output;
  # 1500 Adam steps on fresh batches of 256 prompts (float32). The loss is evaluated on
  # 20000 fresh prompts (s.e. ~0.5% of the mean) and must be within 5% of 0.2047.
  def sample(k):
    return tasks.sample_regression(256, 10, 10, key=k, x_dist="uniform")
  example = sample(jax.random.key(0))
  params = LSA.init(jax.random.key(1), tasks.regression_tokens(example.xs[0], example.ys[0]),
                    tasks.query_token(example.queries[0, 0]))["params"]
  schedule = optax.cosine_decay_schedule(5e-3, 1500, alpha=0.05)
  result = train.train(train.regression_loss(LSA), params, key=jax.random.key(2), steps=1500,
                       optimizer=optax.adam(schedule), sample_batch=sample, log_every=500,
                       progress=False)
  test = tasks.sample_regression(20000, 10, 10, key=jax.random.key(3), x_dist="uniform")
  loss = 0.5 * float(jax.jit(train.regression_loss(LSA))(result.params, test))
  assert abs(loss / VON_OSWALD_ONE_STEP_LOSS - 1) < 0.05, loss
