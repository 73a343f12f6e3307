"""Every claim of docs/THEORY.md as a typed, checkable object: ``icl_kd.claims``.

One module per claim (C1 .. C7): its shape buckets, its sampler, its
evaluation returning a typed check (:mod:`icl_kd.claims.base`), its
tolerance, and the test module and figure that show it. The registry
:data:`CLAIMS` maps each claim id to its :class:`Claim`, in report order.

A researcher's own claim is made with :func:`define` (a sampler, an
evaluation returning one of the check types of :mod:`icl_kd.claims.checks`,
shape buckets) and checked by the same runner (``proofs_check.check``).

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
                           c6_downstream, c7_lr_proxy, checks)
from icl_kd.claims.base import (CONVENTIONS, THEORY_NUMBERS, Claim, Instance, Outcome,
                                convention_factor, define)
from icl_kd.claims.c1_decomposition import (C1Error, Prompt, PromptBucket, c1_error,
                                            decompose_prompt, prompt_params, prompt_tail,
                                            sample_prompt, scaled_prompt)
from icl_kd.claims.c4_rademacher import GeneralizationGap, SampleBucket, generalization_gap
from icl_kd.claims.c5_mmd_bias import ALIASES, PairBucket, pair_distributions, sample_pair
from icl_kd.claims.checks import (CHECK_TYPES, CONJECTURE, CONSISTENCY, CORRECTED, KINDS,
                                  MEASUREMENT, PAPER, ROLES, BoundCheck, ConjectureCheck,
                                  ConjectureEventCheck, ConsistencyCheck,
                                  ConsistencyIdentityCheck, CorrectedCheck, EventCheck,
                                  IdentityCheck, Measurement, Role, Stats, Witness,
                                  WitnessResult, bound_slack, check_values, identity_tolerance,
                                  log_ratio)

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

  def theories(self) -> tuple[str, ...]:
    """The theory labels of its claims (C1 .. C7, and any a researcher's claims use), once each."""
    return tuple(dict.fromkeys(c.theory for c in self.values()))

  def with_claims(self, claims) -> "Registry":
    """A new registry with ``claims`` (Claim objects) added after these.

    Raises:
      TypeError: an entry is not a Claim.
      ValueError: an id (or alias) is already taken, naming both.
    """
    out = Registry(self)
    for c in claims:
      if not isinstance(c, Claim):
        raise TypeError(f"claims must be icl_kd.claims.Claim objects (made with "
                        f"icl_kd.claims.define), got {type(c).__name__}: {c!r}")
      if c.id in out or c.id in ALIASES:
        raise ValueError(f"claim id {c.id!r} is defined twice: by {c.statement!r} and by "
                         f"{out[c.id].statement!r}; give the new claim another id")
      out[c.id] = c
    return out


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
    "ALIASES", "CHECK_TYPES", "CLAIMS", "CONJECTURE", "CONSISTENCY", "CONVENTIONS", "CORRECTED",
    "KINDS", "MEASUREMENT", "PAPER", "ROLES", "THEORY_NUMBERS", "BoundCheck", "C1Error", "Claim",
    "ConjectureCheck", "ConjectureEventCheck", "ConsistencyCheck", "ConsistencyIdentityCheck",
    "CorrectedCheck", "EventCheck", "GeneralizationGap", "IdentityCheck", "Instance",
    "Measurement", "Outcome", "PairBucket", "Prompt", "PromptBucket", "Registry", "Role",
    "SampleBucket", "Stats", "Witness", "WitnessResult", "bound_slack", "c1_error",
    "check_values", "checks", "convention_factor", "decompose_prompt", "define",
    "generalization_gap", "identity_tolerance", "log_ratio", "pair_distributions",
    "prompt_params", "prompt_tail", "sample_pair", "sample_prompt", "scaled_prompt",
    "with_convention",
]
