"""Figures refuse saved experiment results of another kind of run (quick vs full, seed).

``python -m icl_kd.experiments E4 --quick`` writes ``results/E4`` by default,
the directory the full figure F8 reads: without this check ``python -m
figures F8`` drew the quick numbers as a full run (no watermark). The saved
files here are tiny stand-ins: the check reads only the summary's ``quick`` and
``seed`` fields before any array. Also the shared pieces of those figures: their
``Config``/``config`` (:func:`figures.results_config`), the correlation table and
the per-head columns.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import figures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _save(results_dir, name, **info):
  os.makedirs(results_dir, exist_ok=True)
  np.savez(os.path.join(results_dir, f"{name}.npz"), residual=np.arange(4.0).reshape(2, 2))
  with open(os.path.join(results_dir, f"{name}.json"), "w") as f:
    json.dump({"experiment": name, **info}, f)


@pytest.mark.parametrize("saved, asked", [
    (dict(quick=True, seed=0), dict(quick=False, seed=0)),    # a quick run read by a full figure
    (dict(quick=False, seed=0), dict(quick=True, seed=0)),    # and the reverse
    (dict(quick=False, seed=1), dict(quick=False, seed=0)),   # another seed
])
def test_mismatched_results_are_refused(tmp_path, saved, asked):
  _save(str(tmp_path), "E4", **saved)
  with pytest.raises(figures.MismatchedResults) as err:
    figures.experiment_results("E4", results_dir=str(tmp_path), **asked)
  kind = "quick" if saved["quick"] else "full"
  assert f"holds a {kind} run of E4 with seed {saved['seed']}" in str(err.value)
  assert str(tmp_path) in str(err.value)


def test_matching_results_are_read(tmp_path):
  _save(str(tmp_path), "E4", quick=False, seed=3)
  arrays, summary = figures.experiment_results("E4", results_dir=str(tmp_path), seed=3,
                                               quick=False)
  np.testing.assert_array_equal(arrays["residual"], [[0.0, 1.0], [2.0, 3.0]])
  assert summary == {"experiment": "E4", "quick": False, "seed": 3}


def test_cli_says_so_in_one_line(tmp_path):
  """``python -m figures F8`` over a quick results/E4: exit 1, one FAILED line, no traceback."""
  _save(str(tmp_path / "results" / "E4"), "E4", quick=True, seed=0)
  env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  proc = subprocess.run([sys.executable, "-m", "figures", "F8", "--out", str(tmp_path / "out"),
                         "--no-compile-cache", "--no-progress"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert lines[0].startswith("[figures] F8 FAILED: ") and "holds a quick run of E4" in lines[0]
  assert lines[1:] == ["[figures] failed: F8"], lines
  assert not os.path.exists(tmp_path / "out" / "F8_layers.png")


def test_results_config_reads_results_and_keeps_quick_runs_under_out():
  """Full runs read results/<E> (``out`` does not move them); a quick run keeps its own
  experiment results under <out>/experiments/<E>, unless a field is given."""
  Config, config = figures.results_config("figures.fx", e2_dir="E2", e3_dir="E3")
  assert Config._fields == ("seed", "quick", "e2_dir", "e3_dir")
  assert Config.__module__ == config.__module__ == "figures.fx"
  full = (os.path.join("results", "E2"), os.path.join("results", "E3"))
  assert tuple(config()) == (0, False, *full)
  assert tuple(config(seed=2, out="o")) == (2, False, *full)
  assert tuple(config(quick=True)) == (0, True, *full)
  assert tuple(config(quick=True, out="o")) == (0, True, os.path.join("o", "experiments", "E2"),
                                                os.path.join("o", "experiments", "E3"))
  assert config(quick=True, out="o", e3_dir="mine").e3_dir == "mine"
  with pytest.raises(TypeError):
    config(results_dir="x")                         # not a field of this figure


def test_correlation_table_rows_pooled_then_within_trials():
  corr = lambda r: {"rho": r, "lo": r - 0.1, "hi": r + 0.1, "n": 8}
  summary = {"spearman": {"a": corr(0.5), "b": corr(0.25)},
             "spearman_within_trial": {"a": corr(0.75), "b": corr(-0.5)}}
  t = figures.correlation_table(summary, ("b", "a"), column="mmd")
  assert list(t) == ["mmd", "kind", "rho", "lo", "hi", "n"]
  assert t["mmd"] == ["b", "a", "b", "a"]
  assert t["kind"] == ["pooled", "pooled", "within trials", "within trials"]
  assert t["rho"] == [0.25, 0.5, -0.5, 0.75]
  assert t["hi"] == [0.35, 0.6, -0.4, 0.85]


def test_head_columns_are_layer_major_from_zero():
  assert figures.head_columns(2, 3) == {"layer": [0, 0, 0, 1, 1, 1], "head": [0, 1, 2, 0, 1, 2]}


def test_a_figure_says_which_results_it_draws_from(tmp_path, capsys):
  """A quick figure keeps its own experiment runs; one stderr line names the files it reads,
  so a user who just ran ``python -m icl_kd.experiments E4 --quick`` sees which numbers
  the figure shows."""
  _save(str(tmp_path), "E4", quick=True, seed=0)
  figures.experiment_results("E4", results_dir=str(tmp_path), seed=0, quick=True, figure="F8")
  err = capsys.readouterr().err
  assert "[figures] F8 draws from" in err and os.path.join(str(tmp_path), "E4.json") in err
  assert "quick run" in err
