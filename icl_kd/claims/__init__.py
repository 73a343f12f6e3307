"""Every claim of docs/THEORY.md as a typed, checkable object: ``icl_kd.claims``.

One module per claim (C1 .. C7): its shape buckets, its sampler, its
evaluation returning a typed check (:mod:`icl_kd.claims.base`), its
tolerance, and the test module and figure that show it. The registry
:data:`CLAIMS` maps each claim id to its :class:`Claim`, in report order.

Public helpers, each defined once and used by the checker, the figures, the
experiments, the benchmarks and the tests:

- :func:`identity_tolerance` (C1's tolerance rule, every identity);
- :func:`c1_error` (the C1 error in units of sum_j p_j ||W^V x_j||);
- :func:`scaled_prompt` (a prompt at score scale 10^u) and :func:`sample_prompt`;
- :func:`generalization_gap` (C4's L(W) - L_hat(W)).

This package sits above the core (``icl_kd.attention``, ``dual``, ``kd``,
``mmd``, ``bounds``, ``distributions``) and below ``proofs_check``, which
sweeps, reduces and reports these claims (``proofs_check.check``).
"""

from __future__ import annotations

from icl_kd.claims import (c1_decomposition, c2_kd_step, c3_dw_step, c4_rademacher, c5_mmd_bias,
                           c6_downstream, c7_lr_proxy)
from icl_kd.claims.base import (CHECK_TYPES, KINDS, RATIO_KINDS, THEORY_NUMBERS, BoundCheck, Claim,
                                ConjectureCheck, ConsistencyCheck, EventCheck, IdentityCheck,
                                Instance, Measurement, check_values, identity_tolerance,
                                log_ratio)
from icl_kd.claims.c1_decomposition import (C1Error, Prompt, PromptBucket, c1_error,
                                            decompose_prompt, prompt_params, prompt_tail,
                                            sample_prompt, scaled_prompt)
from icl_kd.claims.c4_rademacher import GeneralizationGap, SampleBucket, generalization_gap
from icl_kd.claims.c5_mmd_bias import PairBucket, pair_distributions, sample_pair

_ORDER = ("thm3.1", "kd-step", "dw-step-linear", "dw-step-squared", "thm3.2",
          "rademacher-empirical", "thm4.1-identity", "thm4.1-bound", "thm4.1-literal",
          "thm4.2-prediction", "thm4.2-risk", "lr-proxy")


def _registry() -> dict[str, Claim]:
  found = {c.id: c for mod in (c1_decomposition, c2_kd_step, c3_dw_step, c4_rademacher,
                               c5_mmd_bias, c6_downstream, c7_lr_proxy) for c in mod.CLAIMS}
  return {cid: found[cid] for cid in _ORDER + tuple(c for c in found if c not in _ORDER)}


CLAIMS: dict[str, Claim] = _registry()

__all__ = [
    "CHECK_TYPES", "CLAIMS", "KINDS", "RATIO_KINDS", "THEORY_NUMBERS", "BoundCheck", "C1Error",
    "Claim", "ConjectureCheck", "ConsistencyCheck", "EventCheck", "GeneralizationGap",
    "IdentityCheck", "Instance", "Measurement", "PairBucket", "Prompt", "PromptBucket",
    "SampleBucket", "c1_error", "check_values", "decompose_prompt", "generalization_gap",
    "identity_tolerance", "log_ratio", "pair_distributions", "prompt_params", "prompt_tail",
    "sample_pair", "sample_prompt", "scaled_prompt",
]
