"""Checks every claim of THEORY.md at scale: ``python -m proofs_check``.

The registry of claims is :data:`proofs_check.claims.CLAIMS`; the generic
verdicts live in :mod:`proofs_check.verdicts`, the chunked and sharded sweep
in :mod:`proofs_check.sweep`, and the adversarial search in
:mod:`proofs_check.adversarial`.
"""
