"""A tiny deterministic arithmetic/list DSL, the "twin" of the Python self-play task
(arXiv 2605.22217 uses a 15-operator DSL that removes pretraining priors, output ambiguity and
executor noise). Interpreted in Python without exec or eval.

Syntax (S-expressions over integers and integer lists; the input is the variable `x`)::

  expr := INT | x | [INT INT ...] | (OP expr ...)

15 operators:
  add a b, sub a b, mul a b, div a b (floor, b != 0), mod a b (b != 0), neg a, max a b, min a b
  len xs, sum xs, rev xs, sort xs, take n xs, drop n xs, cat xs ys

Errors (arity, types, division by zero, limits) raise `DslError`. Limits keep every program
cheap: at most `MAX_NODES` nodes, nesting `MAX_DEPTH`, lists of `MAX_LIST` elements and
integers of magnitude `MAX_INT`.
"""

from __future__ import annotations

import operator
import re
from typing import Any

from postrain.tasks.selfplay._gate import GateVerdict, output_leaks

MAX_NODES, MAX_DEPTH, MAX_LIST, MAX_INT = 256, 32, 1024, 10**18

_TOKEN = re.compile(r"\s*(?:(\()|(\))|(\[)|(\])|(-?\d+)|([a-z_]+))")

_ARITY = {
  "add": 2,
  "sub": 2,
  "mul": 2,
  "div": 2,
  "mod": 2,
  "neg": 1,
  "max": 2,
  "min": 2,
  "len": 1,
  "sum": 1,
  "rev": 1,
  "sort": 1,
  "take": 2,
  "drop": 2,
  "cat": 2,
}
OPERATORS = tuple(_ARITY)


class DslError(ValueError):
  """A DSL program that does not parse or fails to evaluate."""


def _tokens(src: str) -> list[tuple[str, str]]:
  out, pos = [], 0
  src = src.rstrip()
  while pos < len(src):
    m = _TOKEN.match(src, pos)
    if m is None:
      raise DslError(f"unexpected character {src[pos:].lstrip()[:1]!r} at {pos}")
    kind = ("(", ")", "[", "]", "int", "name")[m.lastindex - 1]
    out.append((kind, m.group(m.lastindex)))
    pos = m.end()
  return out


def parse(src: str) -> Any:
  """Parses a program into nested tuples: ("op", name, args), ("int", v), ("list", vs), ("x",)."""
  toks = _tokens(src)
  pos = 0
  nodes = 0

  def expr(depth: int) -> Any:
    nonlocal pos, nodes
    nodes += 1
    if nodes > MAX_NODES or depth > MAX_DEPTH:
      raise DslError("program too large")
    if pos >= len(toks):
      raise DslError("unexpected end of program")
    kind, text = toks[pos]
    pos += 1
    if kind == "int":
      return ("int", _check_int(int(text)))
    if kind == "name":
      if text != "x":
        raise DslError(f"unknown name {text!r} (only `x` is a variable)")
      return ("x",)
    if kind == "[":
      vals = []
      while pos < len(toks) and toks[pos][0] == "int":
        vals.append(_check_int(int(toks[pos][1])))
        pos += 1
      if pos >= len(toks) or toks[pos][0] != "]":
        raise DslError("list literals hold integers and end with ]")
      pos += 1
      return ("list", tuple(_check_list(vals)))
    if kind == "(":
      if pos >= len(toks) or toks[pos][0] != "name" or toks[pos][1] not in _ARITY:
        raise DslError(f"expected an operator after ( at token {pos}")
      name = toks[pos][1]
      pos += 1
      args = []
      while pos < len(toks) and toks[pos][0] != ")":
        args.append(expr(depth + 1))
      if pos >= len(toks):
        raise DslError("missing )")
      pos += 1
      if len(args) != _ARITY[name]:
        raise DslError(f"{name} takes {_ARITY[name]} arguments, got {len(args)}")
      return ("op", name, tuple(args))
    raise DslError(f"unexpected {text!r}")

  tree = expr(0)
  if pos != len(toks):
    raise DslError("trailing tokens after the expression")
  return tree


def _check_int(v: int) -> int:
  if abs(v) > MAX_INT:
    raise DslError("integer out of range")
  return v


def _check_list(v: list) -> list:
  if len(v) > MAX_LIST:
    raise DslError("list too long")
  return v


def _int(v: Any, name: str) -> int:
  if not isinstance(v, int):
    raise DslError(f"{name} expects an integer, got a list")
  return v


def _list(v: Any, name: str) -> list:
  if not isinstance(v, list):
    raise DslError(f"{name} expects a list, got an integer")
  return v


_BINARY = {
  "add": operator.add,
  "sub": operator.sub,
  "mul": operator.mul,
  "div": operator.floordiv,
  "mod": operator.mod,
  "max": max,
  "min": min,
}


def _apply(name: str, a: list) -> Any:
  if name in _BINARY:
    p, q = _int(a[0], name), _int(a[1], name)
    if name in ("div", "mod") and q == 0:
      raise DslError(f"{name} by zero")
    return _check_int(_BINARY[name](p, q))  # operands are bounded, so p * q is cheap
  if name == "neg":
    return -_int(a[0], name)
  if name == "len":
    return len(_list(a[0], name))
  if name == "sum":
    return _check_int(sum(_list(a[0], name)))
  if name == "rev":
    return _list(a[0], name)[::-1]
  if name == "sort":
    return sorted(_list(a[0], name))
  if name in ("take", "drop"):
    n, xs = max(_int(a[0], name), 0), _list(a[1], name)
    return xs[:n] if name == "take" else xs[n:]
  return _check_list(_list(a[0], name) + _list(a[1], name))  # cat


def evaluate(tree: Any, x: int | list[int]) -> int | list[int]:
  """Evaluates a parsed program with input `x`."""
  kind = tree[0]
  if kind == "int":
    return tree[1]
  if kind == "list":
    return list(tree[1])
  if kind == "x":
    return list(x) if isinstance(x, list) else x
  return _apply(tree[1], [evaluate(arg, x) for arg in tree[2]])


def parse_value(text: str) -> int | list[int]:
  """Parses a DSL literal: an integer "5" or a list "[3 1 2]" (commas allowed)."""
  tree = parse(text.replace(",", " "))
  if tree[0] not in ("int", "list"):
    raise DslError(f"not a literal: {text!r}")
  return evaluate(tree, 0)


def format_value(v: int | list[int]) -> str:
  """Canonical text of a value: "5" or "[1 2 3]"."""
  return "[" + " ".join(map(str, v)) + "]" if isinstance(v, list) else str(v)


def run_dsl(program: str, x: str | int | list[int]) -> str:
  """Runs a program on an input (a literal string or a value); returns the canonical output."""
  value = parse_value(x) if isinstance(x, str) else x
  return format_value(evaluate(parse(program), value))


def dsl_gate(
  program: str, inputs: str, *, reject_output_leak: bool = True, min_leak_chars: int = 3
) -> GateVerdict:
  """The execution gate for the DSL: parse, evaluate (deterministic by construction), and the
  same output-leak filter as the Python gate. Reasons: "ok", "parse_error", "bad_input",
  "eval_error", "output_leak"."""
  try:
    tree = parse(program)
  except DslError:
    return GateVerdict(False, "parse_error")
  try:
    x = parse_value(inputs)
  except DslError:
    return GateVerdict(False, "bad_input")
  try:
    out = format_value(evaluate(tree, x))
  except DslError:
    return GateVerdict(False, "eval_error")
  if reject_output_leak and output_leaks(program, out, min_chars=min_leak_chars):
    return GateVerdict(False, "output_leak", out)
  return GateVerdict(True, "ok", out)
