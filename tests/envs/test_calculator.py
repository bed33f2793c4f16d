"""The calculator tool: safe `ast` arithmetic against Python's own arithmetic, and its refusals."""

import math

import pytest

from postrain import envs
from postrain.envs import _calculator


@pytest.mark.parametrize(
  "expr",
  ["12345 + 678 - 91", "2 * (3 + 4) - -5", "-7 // 2", "-7 % 3", "2 ** 10", "+3 - -3",
   "1.5 * 4", "10 / 4", "2 ** -2", "(((1)))", "7 - 2 * 3 ** 2", "-2 ** 2", "1e3 + 0.5"],
)  # fmt: skip
def test_values_equal_python_arithmetic(expr):
  assert envs.evaluate(expr) == eval(expr)  # the reference: Python itself, on trusted literals


def test_formatting_of_ints_and_floats():
  assert envs.calculator("12345 + 678") == "13023"
  assert envs.calculator("10 / 4") == "2.5"
  assert envs.calculator("8 / 4") == "2"  # an integral float prints as an int
  assert envs.calculator("1 / 3") == "0.333333333333"
  assert envs.calculator("0.1 + 0.2") == "0.3"
  assert envs.calculator("2 × 3 − 1") == "5"  # unicode operators


@pytest.mark.parametrize(
  "expr, message",
  [
    ("1 / 0", "division by zero"),
    ("5 // 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("9 ** 99999", "too large"),
    ("10 ** 10 ** 10", "too large"),
    ("(2 ** 4000) * (2 ** 4000)", "too large"),
    ("1e308 * 10", "finite"),
    ("2.0 ** 5000", "too large"),
    ("(-8) ** 0.5", "complex"),
    ("__import__('os').system('x')", "unsupported"),
    ("abs(-1)", "unsupported"),
    ("x + 1", "unsupported"),
    ("'a' * 3", "unsupported"),
    ("True + 1", "unsupported"),
    ("1j * 2", "unsupported"),
    ("1 < 2", "unsupported"),
    ("1 +", "syntax"),
    ("", "empty"),
    ("1" * 600, "longer than"),
  ],
)
def test_refusals_are_calculator_errors(expr, message):
  with pytest.raises(envs.CalculatorError, match=message):
    envs.evaluate(expr)


def test_huge_power_is_refused_before_it_is_computed():
  # 10 ** 10 ** 10 would need ~4 GB; the bound refuses from the exponent, so this is instant.
  with pytest.raises(envs.CalculatorError):
    envs.evaluate("7 ** 123456789")
  # the largest allowed power still evaluates exactly
  bits = _calculator.MAX_INT_BITS
  assert envs.evaluate(f"2 ** {bits - 1}") == 2 ** (bits - 1)


def test_deep_nesting_is_an_error_not_a_crash():
  assert envs.evaluate("-" * 500 + "1") == 1  # 500 unary minus signs, within MAX_CHARS
  with pytest.raises(envs.CalculatorError):  # past the parser's nesting limit
    envs.evaluate("(" * 250 + "1" + ")" * 250)


def test_unary_and_float_edge_cases():
  assert envs.evaluate("--1") == 1
  assert envs.evaluate("-0.0") == 0.0 and math.copysign(1, envs.evaluate("-0.0")) == -1
  assert envs.calculator("-3.75") == "-3.75"
  assert envs.calculator("1e20") == "1e+20"
