"""B2 attention: ``softmax_attention`` vmapped over 65,536 prompts vs dot_product_attention.

Each instance is one prompt: a context of n = 32 tokens and one query token,
d = d_k = d_v = 16, with one shared set of AttentionParams:

    h_b = sum_j softmax_j(<W^K x_bj, W^Q x'_b> / tau) W^V x_bj,   b = 1..B.

Ours: ``jax.jit(jax.vmap(icl_kd.softmax_attention, in_axes=(None, 0, 0)))``.
Baseline: the same projections (HIGHEST precision) followed by
``jax.nn.dot_product_attention(q, k, v, scale=1/tau, implementation="xla")``
in float32 under ``jax.default_matmul_precision("highest")``, shapes
(B, T=1, heads=1, d_k). Target: time ratio within 0.8-1.25 and agreement
within 1e-6 (max over instances of the relative 2-norm difference). A ratio
below 0.8 (ours faster than parity) counts as met and is flagged
``faster_than_range`` in the JSON.

On a GPU, also ``implementation="cudnn"`` in bfloat16 (agreement to bfloat16
precision, 2e-2). icl_kd refuses half precision by policy, so that row runs ours
in float32 on the same bfloat16-rounded inputs: its time ratio compares float32
with bfloat16 and says so in the row.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import icl_kd
from benchmarks import harness

NAME = "B2"
N_CTX, D = 32, 16
TAU = 4.0  # sqrt(d_k), the transformer convention


def make_inputs(batch: int, dtype, seed: int):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  # Drawn in float32 and rounded to ``dtype`` (init_params makes float32/float64 only).
  params = icl_kd.init_params(D, key=k1, dtype=jnp.float32)
  params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
  contexts = jax.random.normal(k2, (batch, N_CTX, D), dtype)                # (B, n, d)
  queries = jax.random.normal(k3, (batch, D), dtype)                        # (B, d)
  return params, contexts, queries


def ours(params, contexts, queries):
  """(B, d_v) outputs of the toolkit's layer, one prompt per vmapped call."""
  return jax.vmap(lambda c, q: icl_kd.softmax_attention(params, c, q, tau=TAU))(contexts, queries)


def baseline(params, contexts, queries, implementation: str = "xla"):
  """(B, d_v) outputs of ``jax.nn.dot_product_attention`` on the projected tokens."""
  hi = jax.lax.Precision.HIGHEST
  q = jnp.einsum("bd,kd->bk", queries, params.w_q, precision=hi)[:, None, None, :]    # (B,1,1,dk)
  k = jnp.einsum("bnd,kd->bnk", contexts, params.w_k, precision=hi)[:, :, None, :]    # (B,n,1,dk)
  v = jnp.einsum("bnd,vd->bnv", contexts, params.w_v, precision=hi)[:, :, None, :]    # (B,n,1,dv)
  with jax.default_matmul_precision("highest"):
    out = jax.nn.dot_product_attention(q, k, v, scale=1.0 / TAU, implementation=implementation)
  return out[:, 0, 0, :]                                                              # (B, dv)


def max_rel_diff(a, b) -> float:
  """max_b ||a_b - b_b|| / ||b_b|| in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)))


def flops_per_instance(n: int = N_CTX, d: int = D) -> float:
  """Projections 2 n d (d_k + d_v) + 2 d d_k, scores 2 n d_k, weighted sum 2 n d_v, softmax ~5 n."""
  return float(2 * n * d * 2 * d + 2 * d * d + 2 * n * d + 2 * n * d + 5 * n)


def bytes_per_instance(itemsize: int, n: int = N_CTX, d: int = D) -> float:
  """Context and query read once, output written once (the shared params are negligible)."""
  return float(itemsize * (n * d + d + d))


def _row(case, dtype, batch, t_ours, t_base, base_name, diff, tol, lo=0.8, hi=1.25):
  ratio = t_ours.median / t_base.median
  itemsize = jnp.dtype(dtype).itemsize
  return harness.Row(NAME, case, ours=t_ours, baseline=t_base, baseline_name=base_name,
                     flops=flops_per_instance() * batch, bytes=bytes_per_instance(itemsize) * batch,
                     target=f"ratio {lo}-{hi}, agree {tol:g}",
                     met=bool(ratio <= hi and diff <= tol),
                     why=f"ratio ours/baseline {ratio:.3g}, agreement {diff:.1e}",
                     extra=dict(instances=batch, max_rel_diff=diff, agreement_tolerance=tol,
                                ratio_in_range=bool(lo <= ratio <= hi),
                                faster_than_range=bool(ratio < lo)))


def run(*, quick: bool, seed: int) -> list[harness.Row]:
  batch = 8192 if quick else 65536
  repeats = 3 if quick else 7
  params, contexts, queries = make_inputs(batch, jnp.float32, seed)
  t_ours, out_ours, cost_ours = harness.time_jit(ours, params, contexts, queries, repeats=repeats)
  t_base, out_base, cost_base = harness.time_jit(baseline, params, contexts, queries,
                                                 repeats=repeats)
  # Interleave a second round so that drifting machine load hits both sides alike.
  t_ours2, _, _ = harness.time_jit(ours, params, contexts, queries, repeats=repeats)
  t_base2, _, _ = harness.time_jit(baseline, params, contexts, queries, repeats=repeats)
  t_ours, t_base = _best(t_ours, t_ours2), _best(t_base, t_base2)
  diff = max_rel_diff(out_ours, out_base)
  row = _row(f"{batch:,} prompts n={N_CTX} d={D} float32", jnp.float32, batch, t_ours, t_base,
             "dot_product_attention xla", diff, 1e-6)
  row.extra.update(xla_cost_ours=cost_ours, xla_cost_baseline=cost_base)
  rows = [row]
  if harness.has_gpu():
    rows.append(_cudnn_row(batch, seed, repeats))
  else:
    harness.log("  B2: no GPU; the bfloat16 / cudnn comparison is skipped")
  return rows


def _best(a: harness.Timing, b: harness.Timing) -> harness.Timing:
  """The round with the lower median (the less disturbed one on a shared machine).

  The compile time is the first round's (the second may hit a compilation cache).
  """
  best = a if a.median <= b.median else b
  return dataclasses.replace(best, compile=a.compile)


def _cudnn_row(batch: int, seed: int, repeats: int) -> harness.Row:
  params, contexts, queries = make_inputs(batch, jnp.bfloat16, seed)
  # icl_kd computes in float32 or float64 only: ours reads the bfloat16-rounded inputs in float32.
  up = lambda t: jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), t)
  t_ours, out_ours, _ = harness.time_jit(ours, up(params), up(contexts), up(queries),
                                         repeats=repeats)
  case = f"{batch:,} prompts n={N_CTX} d={D} bfloat16 (ours: float32 on the same inputs)"
  try:
    t_base, out_base, _ = harness.time_jit(
        lambda p, c, q: baseline(p, c, q, implementation="cudnn"), params, contexts, queries,
        repeats=repeats)
  except Exception as e:  # noqa: BLE001 - cudnn availability depends on the install
    return harness.Row(NAME, case, ours=t_ours, target="cudnn unavailable",
                       extra=dict(error=f"{type(e).__name__}: {e}"[:500]))
  return _row(case, jnp.bfloat16, batch, t_ours, t_base, "dot_product_attention cudnn",
              max_rel_diff(out_ours, out_base.astype(jnp.float32)), 2e-2)
