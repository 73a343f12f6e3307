"""The layering of the code base, read from the source (no import is executed).

Bottom up: the ``icl_kd`` core (attention, dual, kd, features, mmd, bounds,
distributions, tasks, models, pretrained, llm, ...), then ``icl_kd.claims``,
``proofs_check``, ``icl_kd.experiments``, ``figures`` and ``benchmarks``. A
module may import its own layer and the layers below it, never one above,
including imports inside functions. A package (``icl_kd``, ``proofs_check``,
``figures``, ``benchmarks``) never reaches another package's private names
(``_name``), by ``from x import _name`` or by ``module._name``.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("icl_kd", "proofs_check", "figures", "benchmarks")
LAYERS = ("icl_kd", "icl_kd.claims", "proofs_check", "icl_kd.experiments", "figures",
          "benchmarks")


def layer(module: str) -> int | None:
  """Index in LAYERS of the longest prefix naming ``module``'s layer; None outside the project."""
  best = None
  for i, name in enumerate(LAYERS):
    if module == name or module.startswith(name + "."):
      if best is None or len(name) > len(LAYERS[best]):
        best = i
  return best


def modules() -> dict[str, str]:
  """Every module of the project: dotted name -> file path."""
  out = {}
  for pkg in PACKAGES:
    for dirpath, dirnames, files in os.walk(os.path.join(ROOT, pkg)):
      dirnames[:] = [d for d in dirnames if d != "__pycache__"]
      for f in files:
        if f.endswith(".py"):
          rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].split(os.sep)
          if rel[-1] == "__init__":
            rel = rel[:-1]
          out[".".join(rel)] = os.path.join(dirpath, f)
  return out


MODULES = modules()


def imports(name: str, path: str):
  """(imported module, private names taken from it, line) for every import in the file.

  ``from a import b`` counts as importing the module ``a.b`` when that is a
  module of the project, else ``a``. Private names are those bound by
  ``from a import _x`` and those read as ``m._x`` from a name ``m`` bound to a
  module by an import.
  """
  tree = ast.parse(open(path).read(), path)
  is_pkg = path.endswith("__init__.py")
  here = name if is_pkg else name.rpartition(".")[0]
  bound = {}                                        # local name -> module it is bound to
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        found.append((a.name, [], node.lineno))
        bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = here.split(".")
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
      for a in node.names:
        sub = f"{base}.{a.name}"
        target = sub if sub in MODULES else base
        private = [a.name] if target == base and a.name.startswith("_") else []
        if target == sub and a.name.startswith("_"):
          private = [a.name]
        found.append((target, private, node.lineno))
        if target == sub:
          bound[a.asname or a.name] = sub
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in bound and node.attr.startswith("_")
        and not node.attr.startswith("__")):
      found.append((bound[node.value.id], [node.attr], node.lineno))
  return found


def test_the_project_has_every_layer():
  for name in LAYERS:
    assert name in MODULES, name
  assert len(MODULES) > 50


@pytest.mark.parametrize("name", sorted(MODULES))
def test_nothing_imports_upward_nor_another_packages_private_names(name):
  mine = layer(name)
  top = name.split(".")[0]
  for target, private, line in imports(name, MODULES[name]):
    theirs = layer(target)
    if theirs is None:
      continue                                      # jax, numpy, the standard library, ...
    assert theirs <= mine, (f"{MODULES[name]}:{line}: {name} (layer {LAYERS[mine]}) imports "
                            f"{target} (layer {LAYERS[theirs]}, above it)")
    if target.split(".")[0] != top:
      assert not private, (f"{MODULES[name]}:{line}: {name} uses the private name(s) "
                           f"{private} of {target}")


def test_the_checks_catch_an_upward_import_and_a_private_name(tmp_path):
  """The scanner itself: a core module importing a figure, and a benchmark reaching a private
  helper of the core through a module alias, are both found."""
  core = tmp_path / "core.py"
  core.write_text("def f():\n  from figures import f4_mmd_bias\n  return f4_mmd_bias\n")
  found = imports("icl_kd.core", str(core))
  assert [(t, layer(t)) for t, _, _ in found] == [("figures.f4_mmd_bias", LAYERS.index("figures"))]
  bench = tmp_path / "bench.py"
  bench.write_text("from icl_kd import mmd\nfrom icl_kd.mmd import _check_finite\n"
                   "mmd._tiling(3, 2)\n")
  found = imports("benchmarks.bench", str(bench))
  assert sorted(p for _, ps, _ in found for p in ps) == ["_check_finite", "_tiling"]
