"""Safe arithmetic: an expression parsed with Python's `ast` and evaluated node by node.

Only numbers (int, float), `+ - * / // % **` and unary `+ -` are allowed; names, calls,
attributes, subscripts, comparisons, strings, booleans and complex numbers are refused. Nothing is
ever passed to `eval`. Bounds keep a hostile expression cheap: at most `MAX_CHARS` characters, an
integer power whose result would exceed `MAX_INT_BITS` bits is refused before it is computed, and
so is every intermediate integer past that size. Floats that overflow or give inf / NaN are errors.
"""

from __future__ import annotations

import ast
import math
import operator

MAX_CHARS = 512
MAX_INT_BITS = 4096  # ~1233 decimal digits

_BINOPS = {
  ast.Add: operator.add,
  ast.Sub: operator.sub,
  ast.Mult: operator.mul,
  ast.Div: operator.truediv,
  ast.FloorDiv: operator.floordiv,
  ast.Mod: operator.mod,
  ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
  """An expression the calculator refuses or cannot evaluate (the message is shown to the model)."""


def _check(value: int | float) -> int | float:
  if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
    raise CalculatorError(f"result too large (more than {MAX_INT_BITS} bits)")
  if isinstance(value, float) and not math.isfinite(value):
    raise CalculatorError("result is not a finite number")
  return value


def _pow(base: int | float, exp: int | float) -> int | float:
  if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
    # |base| ** exp has about exp * log2|base| bits: refuse before computing it.
    if exp * math.log2(abs(base)) > MAX_INT_BITS:
      raise CalculatorError(f"result too large (more than {MAX_INT_BITS} bits)")
  if base == 0 and exp < 0:
    raise CalculatorError("division by zero (0 to a negative power)")
  result = base**exp
  if isinstance(result, complex):
    raise CalculatorError("complex result (negative number to a fractional power)")
  return result


def _eval(node: ast.AST) -> int | float:
  if isinstance(node, ast.Expression):
    return _eval(node.body)
  if isinstance(node, ast.Constant):
    if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
      raise CalculatorError(f"unsupported constant {node.value!r}")
    return _check(node.value)
  if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
    return _UNARY[type(node.op)](_eval(node.operand))
  if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
    left, right = _eval(node.left), _eval(node.right)
    try:
      if isinstance(node.op, ast.Pow):
        value = _pow(left, right)
      else:
        value = _BINOPS[type(node.op)](left, right)
    except ZeroDivisionError:
      raise CalculatorError("division by zero") from None
    except OverflowError:
      raise CalculatorError("result too large") from None
    return _check(value)
  raise CalculatorError(f"unsupported syntax: {type(node).__name__}")


def evaluate(expression: str) -> int | float:
  """The value of an arithmetic `expression` ("12 + 3 * (4 - 1)", "2 ** 10", "-7 / 2").

  Raises `CalculatorError` (a ValueError) with a short message for anything else: syntax errors,
  names or calls, division by zero, results too large, non-finite floats.
  """
  if not isinstance(expression, str):
    raise CalculatorError(f"expression must be a string, got {type(expression).__name__}")
  if len(expression) > MAX_CHARS:
    raise CalculatorError(f"expression longer than {MAX_CHARS} characters")
  text = expression.strip().replace("×", "*").replace("÷", "/").replace("−", "-")
  if not text:
    raise CalculatorError("empty expression")
  try:
    tree = ast.parse(text, mode="eval")
  except SyntaxError as err:
    raise CalculatorError(f"syntax error: {err.msg}") from None
  except (RecursionError, MemoryError):
    raise CalculatorError("expression nested too deeply") from None
  try:
    return _eval(tree)
  except RecursionError:
    raise CalculatorError("expression nested too deeply") from None


def format_number(value: int | float) -> str:
  """Integers as they are; floats with 12 significant digits, integral floats without '.0'."""
  if isinstance(value, int):
    return str(value)
  if value == int(value) and abs(value) < 1e15:
    return str(int(value))
  return f"{value:.12g}"


def calculator(expression: str) -> str:
  """Evaluates an arithmetic expression (numbers, + - * / // % ** and parentheses)."""
  return format_number(evaluate(expression))


CALCULATOR_SCHEMA = {
  "type": "object",
  "properties": {
    "expression": {
      "type": "string",
      "description": "An arithmetic expression, e.g. '12345 + 678 - 91'.",
    }
  },
  "required": ["expression"],
  "additionalProperties": False,
}
