"""Answer extraction on hand-written completions."""

import pytest

from postrain import tasks


@pytest.mark.parametrize(
  "text, expected",
  [
    (r"so the result is \boxed{42}.", "42"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"first \boxed{3}, corrected: \boxed{ 4 }", "4"),
    (r"\boxed{\text{a {b} c}} end", r"\text{a {b} c}"),
    (r"\boxed 7", "7"),
    (r"answer: 5 and also \boxed{6}", "6"),  # boxed wins over an answer line
    ("12 + 7 = 19\n19 - 4 = 15\nanswer: 15", "15"),
    ("Answer: -3", "-3"),
    ("Final answer: 1,000.", "1,000"),
    ("**Answer:** 8", "8"),
    ("The answer is: 12", "12"),
    ("answer: 1\nanswer: 2", "2"),  # the last one counts
    ("answer: 94*4 - 61 - 6", "94*4 - 61 - 6"),
    ("answer: $5$", "5"),
  ],
)
def test_extract_answer(text, expected):
  assert tasks.extract_answer(text) == expected


@pytest.mark.parametrize(
  "text",
  [
    "",
    "no answer here",
    "the sum is 15",  # numbers only count with the fallback
    r"\boxed{unclosed 3",
    "answer_1: 19\nanswer_2: 15",  # SCRL lines are not the final-answer form
    "answer:",
  ],
)
def test_extract_answer_none(text):
  assert tasks.extract_answer(text) is None


def test_last_number_fallback():
  assert tasks.extract_answer("the sum is 15, not 14", last_number_fallback=True) == "14"
  assert tasks.extract_answer("total 1,234 apples", last_number_fallback=True) == "1234"
  assert tasks.extract_answer("x = -2.5", last_number_fallback=True) == "-2.5"
  assert tasks.extract_answer("nothing", last_number_fallback=True) is None
  assert tasks.extract_answer("answer: 3 then 9", last_number_fallback=True) == "3 then 9"


def test_boxed_contents_nested_and_order():
  assert tasks.boxed_contents(r"\boxed{a{b{c}}} x \fbox{d}") == ["a{b{c}}", "d"]
  assert tasks.extract_boxed("none") is None


def test_extract_rejects_non_string():
  with pytest.raises(TypeError, match="text"):
    tasks.extract_answer(None)
