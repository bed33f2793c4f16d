"""`postrain.sharding` uses only the public surface of `postrain.sampling`: no private module
(`postrain.sampling._x`) imported, no private attribute of a `Sampler` or of a sampling module
accessed (issue 14, item 5: the sampler takes its shardings as an argument)."""

import ast
import pathlib

import sharding_case as case

from postrain import sampling

ANY_DEVICES = True  # no devices used: runs in-process
SHARDING = pathlib.Path(__file__).resolve().parents[2] / "postrain" / "sharding"


def _private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def sampler_private_names() -> set[str]:
  """Private names of a `Sampler` (class and instance attributes) and of the sampling modules."""
  s = sampling.Sampler(case.factory())
  names = {n for n in [*dir(type(s)), *vars(s)] if _private(n)}
  for mod in (sampling, sampling._sampler, sampling._prompts, sampling._conversation):
    names |= {n for n in vars(mod) if _private(n)}
  return names


def violations(source: str, private: set[str]) -> list[str]:
  """Private sampling imports and private Sampler / sampling-module attributes in `source`."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module.startswith("postrain.sampling._"):
        found.append(f"line {node.lineno}: from {node.module} import ...")
      if node.module == "postrain.sampling":
        found += [f"line {node.lineno}: {a.name}" for a in node.names if _private(a.name)]
    elif isinstance(node, ast.Import):
      found += [
        f"line {node.lineno}: import {a.name}"
        for a in node.names
        if a.name.startswith("postrain.sampling._")
      ]
    elif isinstance(node, ast.Attribute) and node.attr in private:
      found.append(f"line {node.lineno}: .{node.attr}")
  return found


def test_sharding_uses_only_the_public_sampler():
  private = sampler_private_names()
  assert {"_run_prefill", "_prepare", "_assemble", "_decode_impl"} <= private
  bad = {
    str(f.relative_to(SHARDING.parent)): v
    for f in sorted(SHARDING.rglob("*.py"))
    if (v := violations(f.read_text(encoding="utf-8"), private))
  }
  assert not bad, f"postrain/sharding uses private sampling names: {bad}"


def test_the_check_finds_private_use():
  """The former ShardedSampler's patterns are all flagged."""
  private = sampler_private_names()
  src = (
    "from postrain.sampling._prompts import stop_array\n"
    "from postrain.sampling import _sampler\n"
    "import postrain.sampling._sampler\n"
    "s._sampler._run_prefill = f\n"
    "p, mode = s._prepare(prompts, None)\n"
    "out = _sampler._assemble(p)\n"
  )
  v = violations(src, private)
  assert {int(x.split(":")[0].split()[1]) for x in v} == {1, 2, 3, 4, 5, 6}, v
  assert violations("out = sampler(prompts)\nsampler.update(m)\n", private) == []
