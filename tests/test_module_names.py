"""One file name per concept: no two modules of postrain/ share a basename (besides the package
files `__init__.py` / `__main__.py`), so a name like `_scrl.py` or `_metrics.py` says which
module it is without its folder."""

import collections
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "postrain"


def duplicate_basenames(root: pathlib.Path) -> dict[str, list[str]]:
  """{basename: [paths]} of the .py files under `root` whose basename occurs more than once."""
  seen = collections.defaultdict(list)
  for path in sorted(root.rglob("*.py")):
    if path.name not in ("__init__.py", "__main__.py"):
      seen[path.name].append(str(path.relative_to(root.parent)))
  return {name: paths for name, paths in seen.items() if len(paths) > 1}


def test_no_two_modules_share_a_basename():
  dupes = duplicate_basenames(ROOT)
  assert not dupes, f"modules sharing a file name (rename one so each name is one concept): {dupes}"


def test_the_check_finds_a_duplicate(tmp_path):
  for sub in ("a", "b"):
    (tmp_path / "postrain" / sub).mkdir(parents=True)
    (tmp_path / "postrain" / sub / "_steps.py").write_text("")
    (tmp_path / "postrain" / sub / "__init__.py").write_text("")
  assert duplicate_basenames(tmp_path / "postrain") == {
    "_steps.py": ["postrain/a/_steps.py", "postrain/b/_steps.py"]
  }


def test_config_does_not_import_the_distillation_step():
  """`train/config.py` reads the distillation sections from `_distill_config`, never the step
  module `_distill` (function-level imports counted)."""
  import ast

  tree = ast.parse((ROOT / "train" / "config.py").read_text())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
    elif isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
  assert "postrain.train._distill_config" in names
  assert not {"postrain.train._distill", "postrain.train._distill_local"} & names, names
