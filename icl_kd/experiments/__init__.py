"""Experiments on the claims of THEORY.md; run one with ``python -m icl_kd.experiments NAME``.

Each experiment is a module exposing ``main(argv) -> int`` and accepting
``--seed``, ``--quick`` and ``--out DIR``; ``__main__`` dispatches by name.
"""
