"""One version: ``icl_kd.__version__``; pyproject.toml, CITATION.cff and CHANGELOG.md follow it."""

import os
import re
import tomllib

import icl_kd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name: str) -> str:
  with open(os.path.join(ROOT, name), encoding="utf-8") as f:
    return f.read()


def test_pyproject_reads_the_version_from_the_package():
  meta = tomllib.loads(_read("pyproject.toml"))
  assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
  assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "icl_kd.__version__"}
  assert re.fullmatch(r"\d+\.\d+\.\d+", icl_kd.__version__), icl_kd.__version__


def test_citation_names_the_version_and_the_paper():
  cff = _read("CITATION.cff")
  (version,) = re.findall(r"^version: (\S+)$", cff, re.MULTILINE)
  assert version == icl_kd.__version__
  assert "arXiv:2506.11516" in cff and re.search(r"^references:", cff, re.MULTILINE)


def test_changelog_has_a_section_for_the_version():
  heads = re.findall(r"^## (.+)$", _read("CHANGELOG.md"), re.MULTILINE)
  assert any(icl_kd.__version__ in h for h in heads), heads
  assert "0.1.0" in heads
