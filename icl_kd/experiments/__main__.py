"""``python -m icl_kd.experiments NAME [--quick] [--seed S] [--out DIR] ...``: run one experiment.

``python -m icl_kd.experiments --help`` lists the experiments with their
one-line descriptions; ``python -m icl_kd.experiments NAME --help`` shows the
flags of one. To add an experiment, add ``name: "module"`` to ``EXPERIMENTS``;
the module follows the protocol of :mod:`icl_kd.experiments._common` (NAME,
DESCRIPTION, Config, QUICK, run(config, *, key), summary, save, main).
"""

from __future__ import annotations

import argparse
import importlib
import sys

EXPERIMENTS = {
    "E1": "icl_kd.experiments.e1_selection",
    "E2": "icl_kd.experiments.e2_lr_proxy",
    "E3": "icl_kd.experiments.e3_weight_norm",
    "E4": "icl_kd.experiments.e4_layers",
    "E6": "icl_kd.experiments.e6_interference",
    "chain": "icl_kd.experiments.chain",
    "real": "icl_kd.experiments.real",
    "llm": "icl_kd.experiments.llm",
}


def module(name: str):
  """The module of experiment ``name`` (one of :data:`EXPERIMENTS`)."""
  if name not in EXPERIMENTS:
    raise ValueError(f"unknown experiment: expected one of {sorted(EXPERIMENTS)}, got {name!r}")
  return importlib.import_module(EXPERIMENTS[name])


def description(name: str) -> str:
  """The one-line DESCRIPTION of experiment ``name`` (or why it cannot be imported here)."""
  try:
    mod = module(name)
  except ImportError as e:  # an optional dependency of that experiment is missing
    return f"(unavailable here: {e})"
  return getattr(mod, "DESCRIPTION", None) or (mod.__doc__ or "").strip().splitlines()[0]


def build_parser() -> argparse.ArgumentParser:
  """The top-level parser: one subcommand per experiment (its flags: ``NAME --help``)."""
  p = argparse.ArgumentParser(
      prog="python -m icl_kd.experiments",
      description="Run one experiment on the claims of docs/THEORY.md; it prints a summary "
                  "table and writes its results under --out (default results/NAME).",
      epilog="Every experiment takes --quick, --seed S, --out DIR, --compile-cache DIR, "
             "--no-compile-cache and --no-progress; see `python -m icl_kd.experiments NAME "
             "--help`. Exit code: 0 when the run completed, 1 when a package it needs is "
             "missing, 2 on bad usage.")
  sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", title="experiments")
  for name in EXPERIMENTS:
    sub.add_parser(name, help=description(name), add_help=False)
  return p


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] in (["-h"], ["--help"]):
    build_parser().print_help()
    return 0
  if not argv or argv[0] not in EXPERIMENTS:
    got = repr(argv[0]) if argv else "nothing"
    print(f"usage: python -m icl_kd.experiments {{{','.join(EXPERIMENTS)}}} [--quick] [--seed S] "
          f"[--out DIR] ...\nunknown experiment: expected one of {sorted(EXPERIMENTS)}, "
          f"got {got} (see --help)", file=sys.stderr)
    return 2
  return module(argv[0]).main(argv[1:])


if __name__ == "__main__":
  sys.exit(main())
