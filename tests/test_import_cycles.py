"""No import cycles in postrain, counting imports inside functions: between modules, and between
the top-level subpackages (postrain.models, postrain.sharding, ...; arrows point down); and no
private `postrain.train._x` module imported outside `postrain/train/`."""

import ast
import json
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent


def import_graph() -> dict[str, set[str]]:
  """{module: modules it imports} over postrain/ (and kernels/ as postrain.kernels), every
  `import` / `from ... import` statement counted wherever it is (module level or in a function)."""
  files = {}
  for base, pkg in ((REPO / "postrain", "postrain"), (REPO / "kernels", "postrain.kernels")):
    for f in base.rglob("*.py"):
      parts = [p for p in f.relative_to(base).with_suffix("").parts if p != "__init__"]
      files[".".join([pkg, *parts])] = f
  packages = {m for m, f in files.items() if f.name == "__init__.py"}
  edges: dict[str, set[str]] = {m: set() for m in files}
  for m, f in files.items():
    here = m if m in packages else m.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        if node.level:
          base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
          mod = ".".join(base + ([node.module] if node.module else []))
        else:
          mod = node.module or ""
        targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in files else mod for a in node.names]
      for t in targets:
        while t and t not in files and "." in t:
          t = t.rsplit(".", 1)[0]
        if t in files and t != m:
          edges[m].add(t)
  return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one node (Tarjan, iterative)."""
  index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

  def visit(root):
    work = [(root, iter(sorted(edges[root])))]
    index[root] = low[root] = counter[0]
    counter[0] += 1
    stack.append(root)
    on.add(root)
    while work:
      v, it = work[-1]
      w = next(it, None)
      if w is not None:
        if w not in index:
          index[w] = low[w] = counter[0]
          counter[0] += 1
          stack.append(w)
          on.add(w)
          work.append((w, iter(sorted(edges[w]))))
        elif w in on:
          low[v] = min(low[v], index[w])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[v])
      if low[v] == index[v]:
        comp = []
        while True:
          w = stack.pop()
          on.discard(w)
          comp.append(w)
          if w == v:
            break
        if len(comp) > 1:
          out.append(sorted(comp))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return out


def package_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
  """The module graph collapsed to postrain's top-level subpackages (postrain.train, ...)."""

  def top(m):
    return ".".join(m.split(".")[:2])

  out: dict[str, set[str]] = {}
  for m, targets in edges.items():
    out.setdefault(top(m), set())
    for t in targets:
      out.setdefault(top(t), set())
      if top(t) != top(m) and top(m) != "postrain" and top(t) != "postrain":
        out[top(m)].add(top(t))
  return out


def test_the_graph_sees_function_level_imports():
  edges = import_graph()
  assert len(edges) > 50
  # `_trainer.py` imports `tqdm` and the trainer's parts; `__main__` imports `train` inside main().
  assert "postrain.train._trainer" in edges["postrain.train.__main__"] or (
    "postrain.train" in edges["postrain.train.__main__"]
  )
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_import_cycles():
  found = cycles(import_graph())
  assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_package_import_cycles():
  found = cycles(package_graph(import_graph()))
  assert not found, "subpackage cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_pure_core_imports_no_model_sampling_or_trainer():
  edges = package_graph(import_graph())
  for core in ("postrain.losses", "postrain.advantages", "postrain.selection"):
    assert not edges[core] & {"postrain.models", "postrain.sampling", "postrain.train"}, core


def private_train_imports(source: str) -> list[str]:
  """The `postrain.train._x` modules a Python source imports (`import postrain.train._x`,
  `from postrain.train._x import ...`, `from postrain.train import _x`), anywhere in it."""
  out = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      out += [a.name for a in node.names if a.name.startswith("postrain.train._")]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      if node.module.startswith("postrain.train._"):
        out.append(node.module)
      elif node.module == "postrain.train":
        out += [f"postrain.train.{a.name}" for a in node.names if a.name.startswith("_")]
  return out


def test_no_private_train_module_outside_postrain_train():
  """The package, benchmarks, experiments, notebooks and configs use the trainer's public surface
  (tests may reach into private modules)."""
  sources = {}
  for top in ("postrain", "benchmarks", "experiments", "configs", "kernels"):
    for f in (REPO / top).rglob("*.py"):
      # not the git-ignored venvs and caches (`benchmarks/.venv-trl`, ...)
      hidden = any(p.startswith(".") for p in f.relative_to(REPO).parts)
      if (REPO / "postrain" / "train") not in f.parents and not hidden:
        sources[f] = f.read_text(encoding="utf-8")
  for nb in (REPO / "notebooks").rglob("*.ipynb"):
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    text = "\n".join("".join(c["source"]) for c in code)
    sources[nb] = "\n".join(
      ln for ln in text.splitlines() if not ln.lstrip().startswith(("!", "%"))
    )
  assert len(sources) > 50
  found = {
    str(f.relative_to(REPO)): m for f, s in sources.items() if (m := private_train_imports(s))
  }
  assert not found, f"private trainer modules imported: {found}"
  assert private_train_imports("from postrain.train import _data, load_run") == [
    "postrain.train._data"
  ]
  assert private_train_imports("import postrain.train._rl_step as s") == ["postrain.train._rl_step"]


if __name__ == "__main__":
  print(os.linesep.join(" <-> ".join(c) for c in cycles(package_graph(import_graph()))))
