"""SMEPO masking (arXiv 2605.25198) on hand-written traces with exact expected outputs."""

import re
from fractions import Fraction

import pytest

from postrain.tasks.smepo import (
  DEFAULT_TEMPLATE,
  check_answer_leak,
  guided_prompt,
  guided_prompt_ids,
  mask_and_check,
  mask_trace,
  parse_number,
  trace_leaks_answer,
)


def test_numbers_and_structural_labels():
  assert mask_trace("Step 3: 12/5 = 2.4") == "Step 3: [NUMBER] = [NUMBER]"
  assert mask_trace(r"So \frac{3}{4} of 1,000 is 750.") == "So [NUMBER] of [NUMBER] is [NUMBER]."
  assert mask_trace("By Lemma 2 and Case 1, x = -5 and 3-5 = -2.") == (
    "By Lemma 2 and Case 1, x = [NUMBER] and [NUMBER]-[NUMBER] = [NUMBER]."
  )
  assert mask_trace(r"We get 3 \times 10^{5}, 50%, 12.5\%, 1e-5 and \sqrt{2}.") == (
    "We get [NUMBER], [NUMBER], [NUMBER], [NUMBER] and [NUMBER]."
  )
  # Digits in identifiers are values too; a fraction with a symbolic argument keeps the symbol.
  assert mask_trace(r"x_2 + \frac{a}{2}") == r"x_[NUMBER] + \frac{a}{[NUMBER]}"
  assert mask_trace("Step 3: 7", protect_structural=False) == "Step [NUMBER]: [NUMBER]"
  assert mask_trace("12/5 = 2.4", numbers=False) == "12/5 = 2.4"
  assert mask_trace(r"a total of 1{,}000 or 2,5") == "a total of [NUMBER] or [NUMBER],[NUMBER]"


def test_masked_math_has_no_digits_outside_labels():
  trace = (
    "Step 1: Let n = 17. Then 2n + 3 = 37.\n\nStep 2: 37 mod 5 is 2, and 0.25 * 8 = 2.\n"
    "Theorem 4 says the sum is 1,234,567.\nAnswer: 2"
  )
  masked = mask_trace(trace)
  stripped = re.sub(r"(?i)\b(step|theorem) \d+", "", masked)
  assert not re.search(r"\d", stripped)
  assert masked.endswith("Answer: [ANSWER]")
  assert not trace_leaks_answer(masked, "2")


def test_code_blocks_keep_fence_and_language():
  trace = (
    "First write a helper.\n```python\ndef f(x):\n    return x * 42\n```\n"
    "Then run it:\n```\nprint(f(1))\n```\nDone in 2 steps."
  )
  assert mask_trace(trace) == (
    "First write a helper.\n```python\n[CODE]\n```\n"
    "Then run it:\n```\n[CODE]\n```\nDone in [NUMBER] steps."
  )
  # An unterminated fence (a truncated trace) is masked to the end.
  assert mask_trace("Plan.\n```python\nx = 3\n") == "Plan.\n```python\n[CODE]\n```"
  # With code off, the code is plain text for the other categories.
  assert mask_trace("```py\nx = 3\n```", code=False) == "```py\nx = [NUMBER]\n```"


def test_answers():
  trace = (
    "Thus the value is \\boxed{\\frac{1}{2}} and also \\boxed{x^{2}+1}.\n"
    "**Final Answer:** 14\n"
    "#### 72\n"
    "So the answer is 9 apples.\n"
  )
  assert mask_trace(trace) == (
    "Thus the value is \\boxed{[ANSWER]} and also \\boxed{[ANSWER]}.\n"
    "**Final Answer:** [ANSWER]\n"
    "#### [ANSWER]\n"
    "So the answer is [ANSWER].\n"
  )
  # The answers switch alone leaves intermediate numbers.
  assert mask_trace("2 + 2 = 4. Answer: 4", numbers=False) == "2 + 2 = 4. Answer: 4"
  assert mask_trace("2 + 2 = 4.\nAnswer: 4", numbers=False) == "2 + 2 = 4.\nAnswer: [ANSWER]"
  # The verified answer is masked wherever it appears verbatim.
  assert mask_trace("It is Paris, so Paris it is.", answer="Paris") == (
    "It is [ANSWER], so [ANSWER] it is."
  )
  masked, report = mask_and_check("So x^2+1 and x^2 + 1.\nAnswer: x^2+1", r"$x^2 + 1$")
  assert masked == "So [ANSWER] and [ANSWER].\nAnswer: [ANSWER]" and not report.leaks


def test_entities():
  trace = "The director of Jaws is Steven Spielberg, born in Cincinnati in 1946."
  assert mask_trace(trace, entities=True, entity_terms=["steven spielberg", "Cincinnati"]) == (
    "The director of Jaws is [ENTITY], born in [ENTITY] in [NUMBER]."
  )

  def ner(text):
    return [m.span() for m in re.finditer(r"Jaws", text)]

  assert mask_trace(trace, entities=True, entity_fn=ner, numbers=False) == (
    "The director of [ENTITY] is Steven Spielberg, born in Cincinnati in 1946."
  )
  assert mask_trace(trace, entity_terms=["Cincinnati"], numbers=False) == trace  # switch off


def test_leak_check_catches_planted_leaks():
  trace = "Each box holds 250, four boxes hold 1,000 in total.\nAnswer: \\boxed{1000}"
  masked = mask_trace(trace, numbers=False)  # numbers left in: a planted leak
  assert masked == "Each box holds 250, four boxes hold 1,000 in total.\nAnswer: \\boxed{[ANSWER]}"
  report = check_answer_leak(masked, "1000.0")
  assert report.leaks and report.reason == "answer_value" and report.match == "1,000"
  assert not check_answer_leak(mask_trace(trace), "1000").leaks
  # Formatting variants of the same value.
  for text in ["it is 1000.00", "it is 1e3", r"it is 1{,}000", "it is 1,000."]:
    assert trace_leaks_answer(text, "1000"), text
  assert trace_leaks_answer(r"half: \frac{1}{2}", "0.5")
  assert not trace_leaks_answer("it is 10000 or 100", "1000")
  # String answers, whitespace-insensitive, whole tokens only.
  report = check_answer_leak("we reach x^2+1 here", r"$\boxed{x^2 + 1}$")
  assert report.leaks and report.reason == "answer_string"
  assert trace_leaks_answer("the city of paris", "Paris")
  assert not trace_leaks_answer("the city of paris", "Paris", case_sensitive=True)
  assert not trace_leaks_answer("Parisian food", "Paris")
  # Structural labels are not leaks unless asked.
  assert not trace_leaks_answer("Step 3: [NUMBER]", "3")
  assert trace_leaks_answer("Step 3: [NUMBER]", "3", ignore_structural=False)
  masked, report = mask_and_check("We use Paris.\nAnswer: Paris", "Paris", numbers=True)
  assert masked == "We use [ANSWER].\nAnswer: [ANSWER]" and not report.leaks


def test_parse_number():
  assert parse_number("1,000") == 1000
  assert parse_number("1000.0") == 1000
  assert parse_number("-3/4") == Fraction(-3, 4)
  assert parse_number(r"\dfrac{3}{4}") == Fraction(3, 4)
  assert parse_number(r"2 \times 10^{3}") == 2000
  assert parse_number("50%") == 50
  assert parse_number("x+1") is None
  assert parse_number("1/0") is None


def test_guided_prompt_text():
  prompt = "<|im_start|>user\nSolve it.<|im_end|>\n<|im_start|>assistant\n"
  trace = "Step 1: add.\nStep 2: double.\nStep 3: done."
  out = guided_prompt(prompt, trace)
  assert (
    out == prompt + "Here is an example solution:\n" + trace + "<|im_end|>\n<|im_start|>assistant"
  )
  assert out == DEFAULT_TEMPLATE.format(prompt=prompt, trace=trace)
  assert guided_prompt(prompt, trace, prefix_ratio=0.0) == prompt
  half = guided_prompt("Q: ", trace, template="{prompt}Hint:\n{trace}A: ", prefix_ratio=0.7)
  assert half == "Q: Hint:\nStep 1: add.\nStep 2: double.\nA: "
  assert guided_prompt("{trace}?", "{prompt}\n") == (
    "{trace}?Here is an example solution:\n{prompt}\n<|im_end|>\n<|im_start|>assistant"
  )
  with pytest.raises(ValueError, match="template"):
    guided_prompt("Q", trace, template="{prompt}")


class CharTokenizer:
  def encode(self, text):
    return [ord(c) for c in text]

  def decode(self, ids):
    return "".join(chr(i) for i in ids)


def test_guided_prompt_ids():
  tok = CharTokenizer()
  prompt = tok.encode("Q?")
  trace = tok.encode("ab\ncd\nef")
  full = guided_prompt_ids(prompt, trace, tokenizer=tok, intro="[", tail=[0])
  assert full == prompt + tok.encode("[") + trace + [0]
  assert guided_prompt_ids(prompt, trace, tokenizer=tok, prefix_ratio=0.0) == prompt
  for max_len in range(0, 14):
    out = guided_prompt_ids(prompt, trace, tokenizer=tok, intro="[", tail=[0], max_len=max_len)
    assert len(out) <= max(max_len, len(prompt))
    if len(out) > len(prompt):
      shown = tok.decode(out[len(prompt) + 1 : -1])
      assert shown.endswith("\n") or shown == "ab\ncd\nef"
  # Budget for 7 trace tokens: "ab\ncd\ne" is cut back to "ab\ncd\n".
  out = guided_prompt_ids(prompt, trace, tokenizer=tok, intro="[", tail=[0], max_len=11)
  assert tok.decode(out) == "Q?[ab\ncd\n\x00"
