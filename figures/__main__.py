"""``python -m figures [F1 F4 ...] [--quick] [--out DIR] [--seed S]``: regenerate the figures.

Without ids, every figure is made. One progress line per figure goes to
stderr. Exit code 0 on success (a figure whose optional dependency is missing,
F9 without the pretrained model package, is skipped with a message), 1 when a
figure fails (the others are still made), 2 on bad usage. Quick figures carry
a "QUICK RUN" watermark and ``"quick": true`` in their JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from icl_kd import runtime


def build_parser() -> argparse.ArgumentParser:
  from figures import FIGURES
  p = argparse.ArgumentParser(
      prog="python -m figures",
      description="Regenerate the figures F1-F12 as PDF + PNG, with the numbers behind each as "
                  "JSON/CSV: F1-F5 draw the claims of arXiv:2506.11516 (docs/THEORY.md C1-C7); "
                  "F6-F8 and F11 the experiments E1-E4 and E6 on trained attention models; F9 "
                  "pretrained all-MiniLM-L6-v2 (the real experiment); F10 SmolLM2-135M (the llm "
                  "experiment); F12 the chain MMD -> bias -> output -> answer (E7).")
  p.add_argument("ids", nargs="*", metavar="ID",
                 help=f"figures to make (default: all of {', '.join(FIGURES)})")
  p.add_argument("--quick", action="store_true",
                 help="small sizes (all figures in a few minutes); each figure is watermarked "
                      "QUICK RUN and its JSON says \"quick\": true")
  p.add_argument("--out", default=os.path.join("figures", "out"), metavar="DIR",
                 help="output directory, created if missing (default %(default)s)")
  runtime.add_runtime_arguments(p)
  p.epilog = ("Exit code: 0 when every figure was made or skipped for a missing optional "
              "package, 1 when a figure failed, 2 on bad usage.")
  return p


def main(argv=None) -> int:
  from figures import FIGURES
  parser = build_parser()
  args = parser.parse_args(argv)
  ids = [i.upper() for i in args.ids] or list(FIGURES)
  unknown = [i for i in ids if i not in FIGURES]
  if unknown:
    parser.error(f"unknown figure id(s) {unknown}; expected some of {list(FIGURES)}")
  try:
    runtime.check_output_dir(args.out, flag="--out")       # before any work
  except ValueError as e:
    print(f"python -m figures: error: {e}", file=sys.stderr)
    return 2
  # Identities are drawn in float64; small programs compiled once each, so compile time
  # dominates (XLA's fast-compile level on CPU); fixed before any array exists.
  runtime.configure(x64=True, fast_compile="auto", compile_cache=args.compile_cache)
  import figures
  failed = []
  for fig_id in ids:
    t0 = time.perf_counter()
    try:
      paths = figures.run(fig_id, out=args.out, quick=args.quick, seed=args.seed)
    except figures.Skipped as e:
      print(f"[figures] {fig_id} skipped: {e}", file=sys.stderr, flush=True)
      continue
    except figures.MismatchedResults as e:  # the user's saved results: one line, no traceback
      failed.append(fig_id)
      print(f"[figures] {fig_id} FAILED: {e}", file=sys.stderr, flush=True)
      continue
    except Exception as e:  # report, keep making the other figures
      failed.append(fig_id)
      traceback.print_exc()
      print(f"[figures] {fig_id} FAILED after {time.perf_counter() - t0:.1f} s: {e}",
            file=sys.stderr, flush=True)
      continue
    png = next(p for p in paths if p.endswith(".png"))
    if not args.no_progress:
      runtime.log(f"[figures] {fig_id} done in {time.perf_counter() - t0:.1f} s -> {png}")
  if failed:
    print(f"[figures] failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
