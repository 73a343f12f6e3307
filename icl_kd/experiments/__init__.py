"""Experiments on the claims of docs/THEORY.md; run one with ``python -m icl_kd.experiments NAME``.

Each experiment is a module with ``NAME``, ``DESCRIPTION``, a typed ``Config``
with ``QUICK``, ``Results``, ``run(config, *, key) -> Results``,
``summary(results) -> (text, dict)``, ``save`` and ``main(argv)`` (the
protocol of :mod:`icl_kd.experiments._common`); ``__main__`` dispatches by name.
"""

from icl_kd.experiments._common import run_info  # noqa: E402  (the info every saved result carries)

__all__ = ["run_info"]
