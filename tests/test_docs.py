"""The documentation site: every code block runs, the CLI reference is complete, and it builds.

Every ```python and ```bash block of the pages in ``mkdocs.yml``'s nav runs,
unchanged, in a fresh process from the repository root (``tests/helpers.py``:
python blocks under the x64 settings of ``tests/test_readme.py``, bash blocks
under ``bash -euo pipefail``). A block that the site shows but the tests do not
run (an install, a full run of minutes, a cluster launch) has a marker just
above its fence that says why::

    <!-- docs-test: skip (the full run: about 3 minutes on 2 cores) -->

A python block that is also a README block runs in ``tests/test_readme.py``
and is not run twice. The docstring examples (``>>>``) of the modules in the
API reference run as doctests, with x64 off, as a new user runs them. The CLI
reference page is generated from the commands' parsers (``docs/hooks.py``);
a test checks that it names every flag. ``mkdocs build --strict`` (a broken
reference or a docstring that does not match its signature fails it) runs
when mkdocs is installed (the ``docs`` extra; CI installs it).
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT, code_blocks, finish, python_blocks, start_block, x64_settings

DOCS = os.path.join(ROOT, "docs")


def _nav_pages() -> list[str]:
  """The markdown files of mkdocs.yml's nav (read without a YAML parser)."""
  with open(os.path.join(ROOT, "mkdocs.yml")) as f:
    text = f.read()
  nav = text[text.index("\nnav:"):text.index("\n\n", text.index("\nnav:"))]
  return re.findall(r":\s*(\S+\.md)\s*$", nav, re.MULTILINE)


PAGES = _nav_pages()
with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as _f:
  README_PYTHON = set(python_blocks(_f.read()))


def _blocks():
  """(page, block) of every python/bash block of the site."""
  out = []
  for page in PAGES:
    with open(os.path.join(DOCS, page), encoding="utf-8") as f:
      out += [(page, b) for b in code_blocks(f.read()) if b.lang in ("python", "bash")]
  return out


BLOCKS = _blocks()
RUNS = [(page, b.line, b.lang, b.body, x64) for page, b in BLOCKS
        if b.skip is None and not (b.lang == "python" and b.body in README_PYTHON)
        for x64 in (x64_settings(b.body) if b.lang == "python" else ("0",))]


def test_skip_markers_are_parsed_and_need_a_reason():
  text = ("<!-- docs-test: skip (a full run) -->\n```bash\npython -m proofs_check\n```\n"
          "```bash\npython -m proofs_check --list\n```\n"
          "<!-- docs-test: skip () -->\n```python\nprint(1)\n```\n"
          "- item\n\n  <!-- docs-test: skip (a cluster) -->\n  ```bash\n  srun x\n  ```\n")
  blocks = code_blocks(text)
  assert [(b.lang, b.skip) for b in blocks] == [("bash", "a full run"), ("bash", None),
                                                ("python", None), ("bash", "a cluster")]
  assert blocks[3].body == "srun x\n"          # an indented fence, dedented


def test_the_site_has_blocks_that_run():
  """The nav is read and blocks are found (a renamed fence or page would hide them)."""
  assert "index.md" in PAGES and "THEORY.md" in PAGES and len(PAGES) >= 10
  assert any(lang == "bash" for _, _, lang, _, _ in RUNS)
  assert any("icl_kd.checked(" in body for _, _, _, body, _ in RUNS)
  skipped = [b for _, b in BLOCKS if b.skip]
  assert skipped and all(b.skip.strip() for b in skipped)


@pytest.fixture(scope="module")
def finished():
  return finish({run[:2] + run[4:]: start_block(run[2], run[3], run[4]) for run in RUNS})


@pytest.mark.parametrize("page,line,x64", [(p, ln, x) for p, ln, _, _, x in RUNS],
                         ids=[f"{p}:{ln}-x64={x}" for p, ln, _, _, x in RUNS])
def test_site_block_runs(finished, page, line, x64):
  rc, out, err = finished[(page, line, x64)]
  assert rc == 0, f"docs/{page} line {line} (JAX_ENABLE_X64={x64}) failed:\n{err[-4000:]}"
  assert "Traceback" not in err, err[-4000:]
  assert "Float64TruncatedWarning" not in err, err[-4000:]


# -- docstring examples of the API reference ----------------------------------------------

def _api_modules() -> list[str]:
  mods = []
  for name in sorted(os.listdir(os.path.join(DOCS, "api"))):
    with open(os.path.join(DOCS, "api", name)) as f:
      mods += re.findall(r"^::: (\S+)", f.read(), re.MULTILINE)
  return mods


# Modules whose docstring examples are not doctests: the reason, shown in the skip.
NOT_DOCTESTS = {"icl_kd.llm": "its example loads the model package and gives outputs as comments"}

_DOCTEST = """
import doctest, importlib, sys
import icl_kd
names = sys.argv[1:]
mods = [importlib.import_module(n) for n in names]
# the top level re-exports: its examples live in the modules that define them
for m in list(mods):
  if m.__name__ == "icl_kd":
    mods += [importlib.import_module(n) for n in ("icl_kd._checks", "icl_kd.attention")]
failed = tried = 0
for m in mods:
  r = doctest.testmod(m, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  failed, tried = failed + r.failed, tried + r.attempted
print(tried)
sys.exit(1 if failed else 0)
"""


def test_api_reference_docstring_examples_run():
  mods = [m for m in _api_modules() if m not in NOT_DOCTESTS]
  assert "icl_kd" in mods and "icl_kd.pretrained" in mods
  env = {**os.environ, "JAX_ENABLE_X64": "0", "PYTHONPATH": ROOT}
  res = subprocess.run([sys.executable, "-c", _DOCTEST, *mods], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
  assert int(res.stdout.split()[-1]) >= 10      # the examples were found and run


# -- the CLI reference ---------------------------------------------------------------------

def _hooks():
  spec = importlib.util.spec_from_file_location("docs_hooks", os.path.join(DOCS, "hooks.py"))
  hooks = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(hooks)
  return hooks


def test_cli_reference_names_every_flag_of_every_command():
  hooks = _hooks()
  text = hooks.cli_reference()
  titles = [t for t, _ in hooks.parsers()]
  for cli in ("python -m proofs_check", "python -m icl_kd.experiments", "python -m figures",
              "python -m benchmarks", "python -m icl_kd.experiments E1"):
    assert cli in titles, cli
  for title, parser in hooks.parsers():
    if isinstance(parser, str):
      continue
    section = text[text.index(f"## `{title}`"):]
    for action in parser._actions:
      for flag in action.option_strings:
        assert f"`{flag}" in section, (title, flag)
  assert "%(default)s" not in text and "`--chunk CHUNK`" in text
  with open(os.path.join(DOCS, "cli.md")) as f:
    assert hooks.MARKER in f.read()


# -- the build ------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed (pip install -e '.[docs]')")
def test_site_builds_strict(tmp_path):
  """``mkdocs build --strict``: no broken link or reference, docstrings match signatures."""
  res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                        str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
  assert res.returncode == 0, res.stderr[-4000:]
  with open(tmp_path / "site" / "cli" / "index.html") as f:
    assert "--instances" in f.read()
  with open(tmp_path / "site" / "api" / "icl_kd" / "index.html") as f:
    page = html.unescape(re.sub(r"<[^>]+>", "", f.read()))     # the rendered text
  assert re.search(r"demos: Float\[ArrayLike, ['\"]N d['\"]\]", page), "no shapes in signatures"
  assert os.path.exists(tmp_path / "site" / "gallery" / "F1_decomposition.png")
