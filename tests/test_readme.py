"""The README's Python examples run as written, with x64 off and on.

Every block fenced as ```python in README.md is executed, unchanged, in a fresh
interpreter from the repository root. The API examples (``icl_kd.decompose``,
``bounds.distillation_bias``) run twice, with JAX_ENABLE_X64=0 and with
JAX_ENABLE_X64=1, since their dtypes follow x64; a block that switches x64 on
itself before any array exists (``jax.config.update("jax_enable_x64", True)``
or ``icl_kd.runtime.configure(x64=True)``) computes the same either way and runs
once; any other block runs once as a new user runs it, with x64 off. Blocks that are not meant to run use another fence language (```bash for
commands, ```text for output). A block passes when it exits 0 without a
traceback or a Float64TruncatedWarning. All runs start at once, so the file
costs about one interpreter start plus the slowest block.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import finish, python_blocks, start_block, x64_settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


BLOCKS = python_blocks(README.read_text())
RUNS = [(i, x64) for i, block in enumerate(BLOCKS) for x64 in x64_settings(block)]


def test_fence_parser_separates_languages():
  text = "a\n```bash\npip install x\n```\n```python\nprint(1)\n```\n```text\n$ out\n```\n"
  assert python_blocks(text) == ["print(1)\n"]


def test_blocks_that_set_x64_run_once():
  assert x64_settings('jax.config.update("jax_enable_x64", True)\n') == ("1",)
  assert x64_settings("icl_kd.runtime.configure(x64=True)\n") == ("1",)
  assert x64_settings("import jax\nprint(jax.numpy.ones(2))\n") == ("0",)
  assert x64_settings("out = icl_kd.decompose(params, demos, None, query)\n") == ("0", "1")


def test_readme_has_the_api_examples():
  """The ten-line API example and the claim module at least (a renamed fence would hide
  them; the MMD and bounds examples are on the site's library page, run by test_docs)."""
  assert len(BLOCKS) >= 2
  assert any("icl_kd.decompose(" in b for b in BLOCKS)
  assert any(b.startswith("# my_claims.py") for b in BLOCKS)


@pytest.fixture(scope="module")
def finished():
  """Starts every (block, x64) run at once; returns {(i, x64): (returncode, stdout, stderr)}."""
  return finish({(i, x64): start_block("python", BLOCKS[i], x64) for i, x64 in RUNS})


@pytest.mark.parametrize("block,x64", RUNS, ids=[f"block{i}-x64={x}" for i, x in RUNS])
def test_readme_block_runs(finished, block, x64):
  rc, out, err = finished[(block, x64)]
  assert rc == 0, f"README python block {block} (JAX_ENABLE_X64={x64}) failed:\n{err[-4000:]}"
  assert "Traceback" not in err, err[-4000:]
  assert "Float64TruncatedWarning" not in err, err[-4000:]


def test_the_site_shows_the_committed_results_tables():
  """Every table ``python -m icl_kd.experiments.report`` makes from the committed result
  summaries (results/*/*.json) appears verbatim on the documentation site's pages of the
  experiments (docs/verdicts.md, docs/real-models.md): their numbers are those of the
  committed runs."""
  from icl_kd.experiments import report
  found = report.sections(str(ROOT / "results"))
  assert {"e1_rules_gaussian", "e1_correlations", "e6_correlations", "chain_trained",
          "llm_selection", "llm_chain", "llm_sweep"} <= set(found)
  text = "".join((ROOT / "docs" / page).read_text() for page in ("verdicts.md", "real-models.md"))
  for name, (src, md) in found.items():
    assert md in text, f"the site does not show the table {name} made from {src}"
