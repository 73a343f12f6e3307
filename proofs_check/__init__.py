"""Checks every claim of docs/THEORY.md at scale: ``python -m proofs_check`` or :func:`check`.

The claims themselves (samplers, evaluations, tolerances) live in
:mod:`icl_kd.claims`; this package sweeps them over many instances
(:mod:`proofs_check.sweep`: chunked, sharded, resumable), reduces the
per-instance checks to verdicts (:mod:`proofs_check.verdicts`), searches
adversarially (:mod:`proofs_check.adversarial`) and reports
(:mod:`proofs_check.report`).
"""

from proofs_check.api import check, replay, select
from proofs_check.report import ClaimResult, Report, WorstInstance

__all__ = ["ClaimResult", "Report", "WorstInstance", "check", "replay", "select"]
