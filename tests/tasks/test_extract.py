"""Answer extraction on hand-written completions."""

import sys

import pytest

from postrain import tasks
from postrain.tasks import _extract


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


# --- modes, sources, the scan cap and linear cost --------------------------------------------

# What SmolLM2-135M-Instruct writes for "What is 3 + 4?" (chat template, no format instruction).
_SMOL = "To find the sum of 3 and 4, we simply add them together:\n\n3 + 4 = 7\n\nSo, 3 + 4 = 7."


@pytest.mark.parametrize(
  "text, mode, expected",
  [
    (_SMOL, "marked", (None, None)),
    (_SMOL, "any", ("7", "last_number")),
    (_SMOL, "last_number", ("7", "last_number")),
    ("The answer is: 12.\nCheck: 12 - 5 = 7", "any", ("12", "answer_line")),
    ("The answer is: 12.\nCheck: 12 - 5 = 7", "last_number", ("7", "last_number")),
    (r"so \boxed{9}. answer: 8, i.e. 10", "any", ("9", "boxed")),
    (r"so \boxed{9}. answer: 8, i.e. 10", "answer_line", ("8, i.e. 10", "answer_line")),
    (r"so \boxed{9}. answer: 8", "boxed", ("9", "boxed")),
    ("answer: 8", "boxed", (None, None)),
    (r"\boxed{} then 5", "any", ("5", "last_number")),  # an empty box falls through
    ("**Final Answer:** -1,250", "any", ("-1,250", "answer_line")),
    ("The total is 1,250 dollars", "any", ("1250", "last_number")),
    ("no digits at all", "any", (None, None)),
  ],
)
def test_extract_modes_and_sources(text, mode, expected):
  assert tasks.extract_answer_source(text, mode=mode) == expected
  assert tasks.extract_answer(text, mode=mode) == expected[0]


def test_modes_match_the_fallback_flag():
  for text in [_SMOL, "answer: 3", r"\boxed{2} 5", "x"]:
    assert tasks.extract_answer(text, mode="marked") == tasks.extract_answer(text)
    assert tasks.extract_answer(text, mode="any") == tasks.extract_answer(
      text, last_number_fallback=True
    )


def test_bad_mode_and_cap():
  with pytest.raises(ValueError, match="mode"):
    tasks.extract_answer("1", mode="first_number")
  with pytest.raises(ValueError, match="max_chars"):
    tasks.extract_answer("1", max_chars=0)


def test_only_the_last_max_chars_are_read():
  text = r"\boxed{7}" + " filler" * 10
  assert tasks.extract_answer(text, max_chars=len(text)) == "7"
  assert tasks.extract_answer(text, max_chars=len(text) - 1) is None  # the box is cut open
  assert tasks.MAX_EXTRACT_CHARS >= 4096
  long = "answer: 1\n" + "x" * tasks.MAX_EXTRACT_CHARS + "\nanswer: 2"
  assert tasks.extract_answer(long) == "2"
  assert tasks.extract_answer("answer: 1\n" + "x" * tasks.MAX_EXTRACT_CHARS) is None


def _line_events(text: str, **kwargs) -> int:
  """Python lines executed inside postrain/tasks/_extract.py while extracting from `text`: a
  deterministic operation count (a regex scan is one line however long its input)."""
  count = 0

  def tracer(frame, event, arg):
    nonlocal count
    if frame.f_code.co_filename != _extract.__file__:
      return None
    if event == "line":
      count += 1
    return tracer

  sys.settrace(tracer)
  try:
    tasks.extract_answer(text, **kwargs)
  finally:
    sys.settrace(None)
  return count


@pytest.mark.parametrize(
  "unit",
  [
    r"\boxed{ 1 + ",  # unclosed boxes: once rescanned to the end of the text for each one
    r"\boxed{\frac{1}{",  # nested, unclosed
  ],
)
def test_extraction_is_linear(unit):
  """Doubling the input at most doubles the work (quadratic code quadruples it)."""
  n = 150
  small = _line_events(unit * n + "answer: 3", mode="any", max_chars=10**7)
  large = _line_events(unit * (2 * n) + "answer: 3", mode="any", max_chars=10**7)
  assert large <= 2.2 * small + 20, (small, large)


def test_40kb_of_unclosed_boxes_reads_the_answer():
  unit = r"\boxed{" + "1 + 2 " * 2
  text = unit * 2500 + "\nanswer: 42"
  assert len(text) > 40_000
  assert tasks.extract_answer(text) == "42"
  # Bounded work: a few lines per box inside the MAX_EXTRACT_CHARS cap (quadratic code ran
  # ~5 lines per character per box: ~10^8 here).
  assert _line_events(text) <= 16 * (tasks.MAX_EXTRACT_CHARS // len(unit) + 1)
