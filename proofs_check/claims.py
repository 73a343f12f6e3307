"""The registry of checkable claims, re-exported from :mod:`icl_kd.claims`.

Each claim's sampler, evaluation, tolerance and documentation live in one
module of ``icl_kd.claims`` (C1 .. C7); this name is kept for existing code.
"""

from icl_kd.claims import CLAIMS, Claim  # noqa: F401

__all__ = ["CLAIMS", "Claim"]
