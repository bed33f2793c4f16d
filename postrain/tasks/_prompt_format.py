"""Prompt formatting: plain "Question: ...\\nAnswer:" text or a model's chat template.

A chat template is any callable `messages -> str` (messages are `{"role", "content"}` dicts),
e.g. `functools.partial(postrain.models.tokenizers.apply_chat_template, template_name=...)`;
it is expected to append the assistant-turn opener (generation prompt) itself.
"""

from __future__ import annotations

from collections.abc import Callable

from postrain.tasks._problem import Problem
from postrain.tasks._solutions import ANSWER_FORMATS, reference_solution

ChatTemplate = Callable[[list[dict[str, str]]], str]

INSTRUCTIONS = {
  "answer": "Solve the problem step by step. Write the final answer on the last line as 'answer: X'.",
  "boxed": "Solve the problem step by step. Put the final answer in \\boxed{}.",
}


def _instruction(answer_format: str, instruction: str | None) -> str:
  if answer_format not in ANSWER_FORMATS:
    raise ValueError(
      f"`answer_format` must be one of {list(ANSWER_FORMATS)}, got {answer_format!r}."
    )
  return INSTRUCTIONS[answer_format] if instruction is None else instruction


def format_prompt(
  problem: Problem | str,
  *,
  chat_template: ChatTemplate | None = None,
  answer_format: str = "answer",
  instruction: str | None = None,
  system: str | None = None,
) -> str:
  """The prompt for one problem.

  Plain (no `chat_template`): "{instruction}\\n\\nQuestion: {question}\\nAnswer:". With a
  template: `chat_template([system?, {"role": "user", "content": question + instruction}])`.

  Args:
    problem: a Problem or a question string.
    chat_template: `messages -> str`, or None for the plain format.
    answer_format: "answer" (ask for an `answer: X` line) or "boxed" (ask for `\\boxed{X}`).
    instruction: replaces the default instruction for `answer_format` ("" for none).
    system: optional system message (chat template only).
  """
  question = problem.question if isinstance(problem, Problem) else problem
  if not isinstance(question, str):
    raise TypeError(f"`problem` must be a Problem or str, got {type(problem).__name__}.")
  text = _instruction(answer_format, instruction)
  if chat_template is None:
    head = f"{text}\n\n" if text else ""
    return f"{head}Question: {question}\nAnswer:"
  user = f"{question}\n\n{text}" if text else question
  messages = ([{"role": "system", "content": system}] if system else []) + [
    {"role": "user", "content": user}
  ]
  return chat_template(messages)


def sft_example(
  problem: Problem,
  *,
  chat_template: ChatTemplate | None = None,
  answer_format: str = "answer",
  instruction: str | None = None,
  system: str | None = None,
  worked: bool = True,
) -> tuple[str, str] | None:
  """(prompt, target completion) for SFT warm starts, or None without a reference solution.

  The plain prompt ends with "Answer:"; the target then starts on a new line. With
  `worked=False` the target is the final answer line alone (a terse demonstration without the
  working), as mixed-quality SFT corpora contain.
  """
  solution = reference_solution(problem, answer_format=answer_format)
  if solution is None:
    return None
  if not worked:
    solution = solution.rsplit("\n", 1)[-1]
  prompt = format_prompt(
    problem,
    chat_template=chat_template,
    answer_format=answer_format,
    instruction=instruction,
    system=system,
  )
  return prompt, ("\n" + solution if chat_template is None else solution)
