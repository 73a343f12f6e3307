"""mkdocs hooks of the site (mkdocs.yml ``hooks:``), run at every build.

- The CLI reference (``cli.md``) is written from the four commands' own
  argparse parsers: every flag with its default and help, as ``--help`` gives
  them, so the page cannot fall behind the code.
- Docstrings' Sphinx roles (``:func:`f` ``) are shown as plain code.
- The figures gallery shows ``figures/gallery/*.png`` from where they live in
  the repository (added to the site's files; nothing is copied into docs/).
"""

from __future__ import annotations

import argparse
import glob
import importlib
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "<!-- cli-reference -->"
GALLERY = os.path.join(ROOT, "figures", "gallery")


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
  """(title, parser) of every command line, in the order of the page."""
  from benchmarks.cli import build_parser as benchmarks_parser
  from figures.__main__ import build_parser as figures_parser
  from icl_kd.experiments.__main__ import EXPERIMENTS
  from icl_kd.experiments.__main__ import build_parser as experiments_parser
  from proofs_check.cli import build_parser as proofs_check_parser
  out = [("python -m proofs_check", proofs_check_parser()),
         ("python -m icl_kd.experiments", experiments_parser())]
  # each experiment's own parser (the protocol of icl_kd.experiments builds it from the
  # experiment module's Config and FLAGS)
  common = importlib.import_module("icl_kd.experiments._common")
  for name, module_name in EXPERIMENTS.items():
    try:
      module = importlib.import_module(module_name)
    except ImportError as e:   # an optional dependency of that experiment is missing
      out.append((f"python -m icl_kd.experiments {name}", f"unavailable here: {e}"))
      continue
    out.append((f"python -m icl_kd.experiments {name}", common.build_parser(module)))
  out += [("python -m figures", figures_parser()), ("python -m benchmarks", benchmarks_parser())]
  return out


def _help(action: argparse.Action, prog: str) -> str:
  """The action's help with ``%(default)s`` and the like filled in, as argparse does."""
  if not action.help or action.help == argparse.SUPPRESS:
    return ""
  params = {k: v for k, v in dict(vars(action), prog=prog).items() if v is not argparse.SUPPRESS}
  params = {k: getattr(v, "__name__", v) for k, v in params.items()}
  if params.get("choices") is not None:
    params["choices"] = ", ".join(str(c) for c in params["choices"])
  return action.help % params


def _cell(text: str) -> str:
  return " ".join(str(text).split()).replace("|", "\\|")


def _flags(action: argparse.Action) -> str:
  if not action.option_strings:   # a positional argument
    return f"`{action.metavar or action.dest}`"
  metavar = ""
  if action.nargs != 0:
    metavar = action.metavar or (("{" + ",".join(map(str, action.choices)) + "}")
                                 if action.choices else action.dest.upper())
  return ", ".join(f"`{s}{' ' + metavar if metavar else ''}`" for s in action.option_strings)


def _default(action: argparse.Action) -> str:
  if action.option_strings and action.nargs == 0:   # a switch
    return ""
  if action.default in (None, argparse.SUPPRESS) or action.default == []:
    return ""
  return f"`{action.default}`"


def parser_markdown(title: str, parser: argparse.ArgumentParser | str) -> str:
  """One section: the usage line, the description, a table of every flag, the epilog."""
  lines = [f"## `{title}`", ""]
  if isinstance(parser, str):
    return "\n".join(lines + [parser, ""])
  lines += ["```text", parser.format_usage().strip(), "```", ""]
  if parser.description:
    lines += [_cell(parser.description), ""]
  subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
  lines += ["| argument | default | meaning |", "|---|---|---|"]
  for action in parser._actions:
    if action in subcommands:
      continue
    lines.append(f"| {_flags(action)} | {_default(action)} | "
                 f"{_cell(_help(action, parser.prog))} |")
  lines.append("")
  for action in subcommands:
    lines += ["| subcommand | what it runs |", "|---|---|"]
    for choice in action._choices_actions:
      lines.append(f"| `{choice.dest}` | {_cell(choice.help or '')} |")
    lines.append("")
  if parser.epilog:
    lines += [_cell(parser.epilog), ""]
  return "\n".join(lines)


def cli_reference() -> str:
  """The markdown of every command line's section (usage lines wrapped at 100 columns)."""
  saved = os.environ.get("COLUMNS")
  os.environ["COLUMNS"] = "102"         # argparse wraps at COLUMNS - 2, whatever the terminal
  try:
    return "\n".join(parser_markdown(title, parser) for title, parser in parsers())
  finally:
    if saved is None:
      del os.environ["COLUMNS"]
    else:
      os.environ["COLUMNS"] = saved


# -- mkdocs events ----------------------------------------------------------------------

def on_page_markdown(markdown: str, page, config, files) -> str:
  if MARKER in markdown:
    return markdown.replace(MARKER, cli_reference())
  return markdown


_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):(?=<code>)")


def on_page_content(html: str, page, config, files) -> str:
  # the docstrings' Sphinx roles (:func:`f`) read as plain code on the site
  return _ROLE.sub("", html)


def on_files(files, config):
  from mkdocs.structure.files import File
  for path in sorted(glob.glob(os.path.join(GALLERY, "*.png"))):
    files.append(File.generated(config, f"gallery/{os.path.basename(path)}",
                                abs_src_path=path))
  return files
