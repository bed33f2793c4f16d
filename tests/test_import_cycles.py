"""No import cycles in postrain, counting imports inside functions: between modules, and between
the top-level subpackages (postrain.models, postrain.sharding, ...; arrows point down)."""

import ast
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


if __name__ == "__main__":
  print(os.linesep.join(" <-> ".join(c) for c in cycles(package_graph(import_graph()))))
