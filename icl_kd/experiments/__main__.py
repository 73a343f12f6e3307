"""python -m icl_kd.experiments NAME [flags]: run one experiment (see --help of each)."""

import importlib
import sys

EXPERIMENTS = {
    "E1": "icl_kd.experiments.e1_selection",
    "E2": "icl_kd.experiments.e2_lr_proxy",
    "E3": "icl_kd.experiments.e3_weight_norm",
    "E4": "icl_kd.experiments.e4_layers",
}


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] not in EXPERIMENTS:
    print(f"usage: python -m icl_kd.experiments {{{','.join(EXPERIMENTS)}}} [--seed S] [--quick] "
          f"[--out DIR]", file=sys.stderr)
    return 2
  importlib.import_module(EXPERIMENTS[argv[0]]).main(argv[1:])
  return 0


if __name__ == "__main__":
  sys.exit(main())
