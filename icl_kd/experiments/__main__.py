"""Runs one experiment: ``python -m icl_kd.experiments NAME [--seed S] [--quick] [--out DIR]``.

To add an experiment, add ``name: "module"`` to ``EXPERIMENTS``; the module
must expose ``main(argv) -> int``. Modules are imported only when run.
"""

import importlib
import sys

EXPERIMENTS = {
    "E1": "icl_kd.experiments.e1_selection",
    "E2": "icl_kd.experiments.e2_lr_proxy",
    "E3": "icl_kd.experiments.e3_weight_norm",
    "E4": "icl_kd.experiments.e4_layers",
    "E6": "icl_kd.experiments.e6_interference",
    "real": "icl_kd.experiments.real",
    "llm": "icl_kd.experiments.llm",
}


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  usage = (f"usage: python -m icl_kd.experiments {{{','.join(EXPERIMENTS)}}} "
           "[--seed S] [--quick] [--out DIR]")
  if argv[:1] in (["-h"], ["--help"]):
    print(usage)
    return 0
  if not argv or argv[0] not in EXPERIMENTS:
    got = repr(argv[0]) if argv else "nothing"
    print(f"{usage}\nunknown experiment: expected one of {sorted(EXPERIMENTS)}, got {got}",
          file=sys.stderr)
    return 2
  return importlib.import_module(EXPERIMENTS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
  sys.exit(main())
