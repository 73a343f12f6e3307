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
from icl_kd.claims.base import (CHECK_TYPES, CONVENTIONS, KINDS, RATIO_KINDS, THEORY_NUMBERS,
                                BoundCheck, Claim, ConjectureCheck, ConsistencyCheck, EventCheck,
                                IdentityCheck, Instance, Measurement, bound_slack, check_values,
                                convention_factor, identity_tolerance, log_ratio)
from icl_kd.claims.c1_decomposition import (C1Error, Prompt, PromptBucket, c1_error,
                                            decompose_prompt, prompt_params, prompt_tail,
                                            sample_prompt, scaled_prompt)
from icl_kd.claims.c4_rademacher import GeneralizationGap, SampleBucket, generalization_gap
from icl_kd.claims.c5_mmd_bias import ALIASES, PairBucket, pair_distributions, sample_pair

_ORDER = ("thm3.1", "kd-step", "dw-step-linear", "dw-step-squared", "thm3.2",
          "thm3.2-paper-form", "rademacher-empirical", "thm4.1-identity", "thm4.1-bound",
          "thm4.1-literal-gaussian", "thm4.1-literal-softmax", "thm4.1-literal-normalised",
          "thm4.1-literal-tv", "thm4.2-prediction", "thm4.2-mmd", "thm4.2-literal",
          "thm4.2-risk", "lr-proxy")


class Registry(dict):
  """Claim id -> Claim, in report order; an alias (``thm4.1-literal``) looks up its target."""

  def __getitem__(self, cid):
    return super().__getitem__(ALIASES.get(cid, cid))

  def __contains__(self, cid):
    return super().__contains__(ALIASES.get(cid, cid))

  def get(self, cid, default=None):
    return super().get(ALIASES.get(cid, cid), default)


def _registry() -> Registry:
  found = {c.id: c for mod in (c1_decomposition, c2_kd_step, c3_dw_step, c4_rademacher,
                               c5_mmd_bias, c6_downstream, c7_lr_proxy) for c in mod.CLAIMS}
  return Registry((cid, found[cid]) for cid in _ORDER + tuple(c for c in found if c not in _ORDER))


CLAIMS: Registry = _registry()


def with_convention(claim: Claim, convention: str) -> Claim:
  """The claim under convention ``"eq12"`` (c = 2) or ``"half"`` (c = 1), where c enters it."""
  import dataclasses
  convention_factor(convention)                       # validates
  if not any(hasattr(b, "convention") for b in claim.buckets):
    return claim
  return dataclasses.replace(claim, buckets=tuple(b._replace(convention=convention)
                                                  for b in claim.buckets))

__all__ = [
    "ALIASES", "CONVENTIONS", "Registry", "bound_slack", "convention_factor", "with_convention",
    "CHECK_TYPES", "CLAIMS", "KINDS", "RATIO_KINDS", "THEORY_NUMBERS", "BoundCheck", "C1Error",
    "Claim", "ConjectureCheck", "ConsistencyCheck", "EventCheck", "GeneralizationGap",
    "IdentityCheck", "Instance", "Measurement", "PairBucket", "Prompt", "PromptBucket",
    "SampleBucket", "c1_error", "check_values", "decompose_prompt", "generalization_gap",
    "identity_tolerance", "log_ratio", "pair_distributions", "prompt_params", "prompt_tail",
    "sample_pair", "sample_prompt", "scaled_prompt",
]
