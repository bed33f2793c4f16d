"""Prompt formatting: plain and chat-template."""

import pytest

from postrain import tasks


def _problem():
  return tasks.Problem("chain_sum/x", "What is 1 + 2?", "3", {"expression": "1 + 2"}, "chain_sum")


def test_plain_prompt():
  prompt = tasks.format_prompt(_problem())
  assert prompt == (
    "Solve the problem step by step. Write the final answer on the last line as 'answer: X'."
    "\n\nQuestion: What is 1 + 2?\nAnswer:"
  )
  assert tasks.format_prompt("Q?", instruction="") == "Question: Q?\nAnswer:"
  assert "\\boxed{}" in tasks.format_prompt("Q?", answer_format="boxed")


def test_chat_template_gets_messages():
  seen = []

  def template(messages):
    seen.append(messages)
    return "|".join(f"<{m['role']}>{m['content']}" for m in messages) + "|<assistant>"

  out = tasks.format_prompt(_problem(), chat_template=template, system="Be brief.")
  assert seen[0][0] == {"role": "system", "content": "Be brief."}
  assert seen[0][1]["role"] == "user"
  assert seen[0][1]["content"].startswith("What is 1 + 2?\n\n")
  assert "answer: X" in seen[0][1]["content"]
  assert out.endswith("|<assistant>")


def test_sft_example():
  prompt, target = tasks.sft_example(_problem())
  assert prompt.endswith("Answer:")
  assert target == "\n1 + 2 = 3\nanswer: 3"
  _, boxed = tasks.sft_example(_problem(), answer_format="boxed")
  assert boxed.endswith("\\boxed{3}")
  no_solution = tasks.Problem("t/x", "q", "1", {}, "unknown_task")
  assert tasks.sft_example(no_solution) is None
  _, terse = tasks.sft_example(_problem(), worked=False)
  assert terse == "\nanswer: 3"
  _, terse_boxed = tasks.sft_example(_problem(), answer_format="boxed", worked=False)
  assert terse_boxed == "\n\\boxed{3}"


def test_bad_answer_format():
  with pytest.raises(ValueError, match="answer_format"):
    tasks.format_prompt("q", answer_format="latex")
  with pytest.raises(TypeError, match="problem"):
    tasks.format_prompt(3)
