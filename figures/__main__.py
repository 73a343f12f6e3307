"""``python -m figures [F1 F4 ...] [--quick] [--out DIR] [--seed S]``: regenerate the figures.

Without ids, every figure is made. One progress line per figure goes to
stderr. Exit code 0 on success (a figure whose optional dependency is missing,
F9 without the pretrained model package, is skipped with a message), 1 when a
figure fails (the others are still made), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback


def build_parser() -> argparse.ArgumentParser:
  from figures import FIGURES
  p = argparse.ArgumentParser(
      prog="python -m figures",
      description="Regenerate the figures of arXiv:2506.11516's claims (THEORY.md C1-C7) and "
                  "experiments (E1-E4) as PDF + PNG, with the numbers behind each as JSON/CSV.")
  p.add_argument("ids", nargs="*", metavar="ID",
                 help=f"figures to make (default: all of {', '.join(FIGURES)})")
  p.add_argument("--quick", action="store_true", help="small sizes (all figures in ~2 minutes)")
  p.add_argument("--out", default=os.path.join("figures", "out"), help="output directory")
  p.add_argument("--seed", type=int, default=0, help="integer seed of every random draw")
  return p


def main(argv=None) -> int:
  from figures import FIGURES
  parser = build_parser()
  args = parser.parse_args(argv)
  ids = [i.upper() for i in args.ids] or list(FIGURES)
  unknown = [i for i in ids if i not in FIGURES]
  if unknown:
    parser.error(f"unknown figure id(s) {unknown}; expected some of {list(FIGURES)}")
  from proofs_check.cli import set_cpu_compile_flags
  set_cpu_compile_flags("auto", None)  # small programs compiled once each: compile dominates
  import jax
  # Identities are drawn in float64; fixed before any array exists.
  jax.config.update("jax_enable_x64", True)
  import figures
  failed = []
  for fig_id in ids:
    t0 = time.perf_counter()
    try:
      paths = figures.run(fig_id, out=args.out, quick=args.quick, seed=args.seed)
    except figures.Skipped as e:
      print(f"[figures] {fig_id} skipped: {e}", file=sys.stderr, flush=True)
      continue
    except Exception as e:  # report, keep making the other figures
      failed.append(fig_id)
      traceback.print_exc()
      print(f"[figures] {fig_id} FAILED after {time.perf_counter() - t0:.1f} s: {e}",
            file=sys.stderr, flush=True)
      continue
    png = next(p for p in paths if p.endswith(".png"))
    print(f"[figures] {fig_id} done in {time.perf_counter() - t0:.1f} s -> {png}",
          file=sys.stderr, flush=True)
  if failed:
    print(f"[figures] failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
