"""Reference step-by-step solutions: correct steps, and scored 1.0 by reasoning-gym's scorer."""

from fractions import Fraction

import pytest
import reasoning_gym

from postrain import tasks

SIZES = {"chain_sum": 30, "basic_arithmetic": 30, "gsm_symbolic": 30, "countdown": 5}


@pytest.fixture(scope="module")
def problems():
  out = {}
  for name, n in SIZES.items():
    kwargs = {"allow_negation": True} if name == "chain_sum" else {}
    out[name] = tasks.get_task(name, **kwargs).generate("train", n, seed=7)
  return out


def _python_value(left: str, op: str, right: str, floor: bool) -> Fraction:
  """An independent evaluation of one printed step with Python's own arithmetic."""
  a, b = Fraction(left), Fraction(right)
  if op == "/":
    return Fraction(a // b) if floor else a / b
  return {"+": a + b, "-": a - b, "*": a * b}[op]


@pytest.mark.parametrize("name", list(SIZES))
@pytest.mark.parametrize("answer_format", ["answer", "boxed"])
def test_reference_scored_one_by_reasoning_gym(problems, name, answer_format):
  score = reasoning_gym.get_score_answer_fn(name)
  for p in problems[name]:
    solution = tasks.reference_solution(p, answer_format=answer_format)
    assert solution is not None, p
    entry = {"question": p.question, "answer": p.answer, "metadata": p.metadata}
    assert score(tasks.extract_answer(solution), entry) == 1.0, solution


@pytest.mark.parametrize("name", ["chain_sum", "basic_arithmetic", "countdown"])
def test_arithmetic_steps_are_correct(problems, name):
  for p in problems[name]:
    steps = tasks.reference_steps(p)
    assert len(steps) >= 1
    for step in steps:
      lhs, rhs = step.text.split(" = ")
      left, op, right = lhs.split(" ")
      expected = _python_value(left, op, right, floor=name == "basic_arithmetic")
      assert Fraction(rhs) == expected, step
      # The sub-expression evaluates, by Python's eval, to the same value.
      if name == "basic_arithmetic":  # reasoning-gym evaluates "/" as "//"
        assert eval(step.expression.replace("/", "//")) == Fraction(rhs), step
      else:
        assert eval(step.expression) == pytest.approx(float(Fraction(rhs))), step


def test_hand_written_chain_sum():
  p = tasks.Problem("c/x", "12 + 7 - 4 =", "15", {"expression": "12 + 7 - 4"}, "chain_sum")
  assert tasks.reference_solution(p) == "12 + 7 = 19\n19 - 4 = 15\nanswer: 15"
  assert (
    tasks.reference_solution(p, answer_format="boxed") == "12 + 7 = 19\n19 - 4 = 15\n\\boxed{15}"
  )


def test_hand_written_basic_arithmetic_precedence_and_floor():
  expr = "-( 3 + 4 ) * 2 - 7 / 2"  # Python: -(7)*2 - 7//2 = -14 - 3 = -17
  p = tasks.Problem(
    "b/x",
    "Calculate.",
    str(eval(expr.replace("/", "//"))),
    {"expression": expr},
    "basic_arithmetic",
  )
  assert p.answer == "-17"
  assert [s.text for s in tasks.reference_steps(p)] == [
    "3 + 4 = 7",
    "-7 * 2 = -14",
    "7 / 2 = 3",
    "-14 - 3 = -17",
  ]


def test_inconsistent_metadata_gives_no_solution():
  p = tasks.Problem("c/x", "q", "16", {"expression": "12 + 7 - 4"}, "chain_sum")
  assert tasks.reference_solution(p) is None
  assert tasks.reference_solution(tasks.Problem("c/x", "q", "1", {}, "chain_sum")) is None


def test_gsm8k_style_solution_uses_calculator_annotations():
  solution = (
    "She sold 48/2 = <<48/2=24>>24 clips in May.\nIn total 48+24 = <<48+24=72>>72.\n#### 72"
  )
  p = tasks.Problem("g/x", "How many?", "72", {"solution": solution}, "gsm8k")
  steps = tasks.reference_steps(p)
  assert [s.text for s in steps] == ["She sold 48/2 = 24 clips in May.", "In total 48+24 = 72."]
  assert [(s.expression, s.value) for s in steps] == [("48/2", "24"), ("48+24", "72")]
  assert tasks.reference_solution(p).endswith("\nanswer: 72")


def test_gsm_symbolic_equations_are_checked(problems):
  for p in problems["gsm_symbolic"]:
    for step in tasks.reference_steps(p):
      if step.expression is not None:
        assert abs(eval(step.expression) - float(Fraction(step.value))) < 1e-9
