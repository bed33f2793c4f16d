"""The deterministic self-play DSL (arXiv 2605.22217's "DSL twin"), evaluated by hand."""

import pytest

from postrain.tasks.selfplay._dsl import (
  OPERATORS,
  DslError,
  dsl_gate,
  format_value,
  parse,
  parse_value,
  run_dsl,
)
from postrain.tasks.selfplay._gate import GateVerdict


@pytest.mark.parametrize(
  ("program", "x", "expected"),
  [
    ("(add x 3)", "4", "7"),
    ("(sub 2 x)", "5", "-3"),
    ("(mul (neg x) 6)", "7", "-42"),
    ("(div -7 2)", "0", "-4"),  # floor division
    ("(mod -7 3)", "0", "2"),  # sign of the divisor
    ("(max x (min 3 9))", "-1", "3"),
    ("(len x)", "[5 6 7]", "3"),
    ("(sum x)", "[5, -6, 7]", "6"),
    ("(rev x)", "[1 2 3]", "[3 2 1]"),
    ("(sort x)", "[3 -1 2 -1]", "[-1 -1 2 3]"),
    ("(take 2 x)", "[9 8 7]", "[9 8]"),
    ("(take -1 x)", "[9 8 7]", "[]"),
    ("(drop 2 x)", "[9 8 7]", "[7]"),
    ("(cat x (rev x))", "[1 2]", "[1 2 2 1]"),
    ("(sum (take 3 (sort (cat x [10 -4]))))", "[7 1 5]", "2"),  # -4 + 1 + 5
    ("x", "[]", "[]"),
    ("  ( add   1\n 2 ) ", "0", "3"),
  ],
)
def test_evaluates(program, x, expected):
  assert run_dsl(program, x) == expected


@pytest.mark.parametrize(
  "program",
  [
    "(add 1)",
    "(foo 1 2)",
    "(add 1 2",
    "(add 1 2))",
    "y",
    "[1 [2]]",
    "(len 3)",
    "(add [1] 2)",
    "(div 1 0)",
    "(mod 1 0)",
    "(mul 1000000000000 1000000000000)",
    "1.5",
    "(add 1 2) 3",
  ],
)
def test_errors(program):
  with pytest.raises(DslError):
    run_dsl(program, "0")


def test_limits_and_values():
  deep = "(neg " * 40 + "1" + ")" * 40
  with pytest.raises(DslError, match="too large"):
    parse(deep)
  with pytest.raises(DslError, match="too long"):
    run_dsl("(cat x x)", [1] * 600)
  assert len(OPERATORS) == 15
  assert parse_value("[1, 2 ,3]") == [1, 2, 3]
  assert format_value([]) == "[]" and format_value(-3) == "-3"
  assert run_dsl("(rev x)", [1, 2]) == "[2 1]"  # a value instead of a literal


def test_dsl_gate():
  assert dsl_gate("(sort x)", "[3 1 2]") == GateVerdict(True, "ok", "[1 2 3]")
  assert dsl_gate("(sort x", "[3 1 2]").reason == "parse_error"
  assert dsl_gate("(sort x)", "[3 1").reason == "bad_input"
  assert dsl_gate("(div x 0)", "3").reason == "eval_error"
  assert dsl_gate("(cat [4 5 6] [])", "0") == GateVerdict(False, "output_leak", "[4 5 6]")
  assert dsl_gate("(cat [4 5 6] [])", "0", reject_output_leak=False).admitted
