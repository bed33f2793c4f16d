"""Step-by-step evaluation of the arithmetic expressions that the tasks print.

A small recursive-descent parser for `+ - * /`, parentheses, negative literals (`2 - -1`) and
unary negation of a group (`-( 3 + 4 )`) with Python's precedence (unary minus binds tighter
than `*`). Evaluation is exact (`fractions.Fraction`); `/` is floor division for basic_arithmetic
(reasoning-gym evaluates it with `//`) and true division elsewhere. Every binary operation is one
step, in post-order, with the source substring of its sub-expression, so a step is both a line of
a reference solution ("56 + -33 = 23") and a self-contained subproblem ("Compute 56 + -33.").
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction

DIVISIONS = ("true", "floor")

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|([-+*/×÷()]))")
_UNICODE_OPS = {"×": "*", "÷": "/"}


@dataclasses.dataclass(frozen=True)
class ArithStep:
  """One binary operation: `left op right = value`, and the sub-expression it evaluates."""

  left: Fraction
  op: str
  right: Fraction
  value: Fraction
  expression: str  # source substring of the sub-expression (self-contained)

  @property
  def text(self) -> str:
    return f"{format_number(self.left)} {self.op} {format_number(self.right)} = {format_number(self.value)}"


def format_number(x: Fraction | int) -> str:
  """Canonical text of an exact number: "12", "-3", "12.5" (terminating), "1/3" otherwise."""
  x = Fraction(x)
  if x.denominator == 1:
    return str(x.numerator)
  den, twos, fives = x.denominator, 0, 0
  while den % 2 == 0:
    den, twos = den // 2, twos + 1
  while den % 5 == 0:
    den, fives = den // 5, fives + 1
  if den != 1:
    return f"{x.numerator}/{x.denominator}"
  digits = max(twos, fives)
  scaled = abs(x) * 10**digits
  sign = "-" if x < 0 else ""
  whole, frac = divmod(int(scaled), 10**digits)
  return f"{sign}{whole}.{frac:0{digits}d}"


def parse_number(text: str) -> Fraction | None:
  """Parses "12", "-3.5", "1,000", "7/2", "+4" exactly; anything else (and > 64 chars) -> None."""
  text = text.strip().replace(",", "")
  if len(text) > 64 or not re.fullmatch(r"[-+]?\d+(?:\.\d+)?(?:/\d+)?", text):
    return None
  try:
    return Fraction(text)
  except (ValueError, ZeroDivisionError):
    return None


def _tokenize(expr: str) -> list[tuple[str, str, int, int]]:
  tokens, pos = [], 0
  while pos < len(expr):
    if expr[pos:].strip() == "":
      break
    match = _TOKEN.match(expr, pos)
    if not match:
      raise ValueError(f"unexpected character at {pos} in {expr!r}")
    start = match.start(1) if match.group(1) else match.start(2)
    if match.group(1):
      tokens.append(("num", match.group(1), start, match.end()))
    else:
      tokens.append(("op", _UNICODE_OPS.get(match.group(2), match.group(2)), start, match.end()))
    pos = match.end()
  return tokens


class _Parser:
  """expr := term (('+'|'-') term)*; term := factor (('*'|'/') factor)*;
  factor := ['-'|'+'] (number | '(' expr ')' | factor)."""

  def __init__(self, expr: str, division: str):
    self.src, self.division = expr, division
    self.tokens, self.i = _tokenize(expr), 0
    self.steps: list[ArithStep] = []

  def peek(self) -> str | None:
    return self.tokens[self.i][1] if self.i < len(self.tokens) else None

  def take(self) -> tuple[str, str, int, int]:
    if self.i >= len(self.tokens):
      raise ValueError(f"unexpected end of {self.src!r}")
    self.i += 1
    return self.tokens[self.i - 1]

  def expr(self) -> tuple[Fraction, int, int]:
    value, start, end = self.term()
    while self.peek() in ("+", "-"):
      op = self.take()[1]
      right, _, end = self.term()
      value = self.binary(value, op, right, start, end)
    return value, start, end

  def term(self) -> tuple[Fraction, int, int]:
    value, start, end = self.factor()
    while self.peek() in ("*", "/"):
      op = self.take()[1]
      right, _, end = self.factor()
      value = self.binary(value, op, right, start, end)
    return value, start, end

  def factor(self) -> tuple[Fraction, int, int]:
    kind, text, start, end = self.take()
    if kind == "num":
      return Fraction(text), start, end
    if text in ("-", "+"):
      if self.peek() is not None and self.tokens[self.i][0] == "num":
        _, num, _, end = self.take()  # a signed literal: no step
        return (-Fraction(num) if text == "-" else Fraction(num)), start, end
      value, _, end = self.factor()
      return (-value if text == "-" else value), start, end
    if text == "(":
      value, _, _ = self.expr()
      closing = self.take()
      if closing[1] != ")":
        raise ValueError(f"expected ')' at {closing[2]} in {self.src!r}")
      return value, start, closing[3]
    raise ValueError(f"unexpected {text!r} at {start} in {self.src!r}")

  def binary(self, left: Fraction, op: str, right: Fraction, start: int, end: int) -> Fraction:
    if op == "+":
      value = left + right
    elif op == "-":
      value = left - right
    elif op == "*":
      value = left * right
    else:
      if right == 0:
        raise ValueError(f"division by zero in {self.src!r}")
      value = Fraction(left // right) if self.division == "floor" else left / right
    expression = " ".join(self.src[start:end].split())
    self.steps.append(ArithStep(left, op, right, value, expression))
    return value


def evaluate_steps(expr: str, *, division: str = "true") -> tuple[Fraction, list[ArithStep]]:
  """Evaluates `expr` exactly; returns (value, binary-operation steps in evaluation order).

  Raises ValueError for anything that is not a well-formed arithmetic expression.
  """
  if division not in DIVISIONS:
    raise ValueError(f"`division` must be one of {list(DIVISIONS)}, got {division!r}.")
  parser = _Parser(expr, division)
  value, _, _ = parser.expr()
  if parser.i != len(parser.tokens):
    raise ValueError(f"trailing input at {parser.tokens[parser.i][2]} in {expr!r}")
  return value, parser.steps
