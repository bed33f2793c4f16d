"""SCRL subproblem chains built from reference solutions (arXiv 2605.22074, Sec. 3).

The paper asks an external LLM to turn a reference solution into K verifiable subproblems whose
last one is the original problem. Here the chain is derived programmatically: every reference
step with a checked equation (`Step.expression`, `Step.value`) becomes the subproblem
"Compute <sub-expression>." with that value as its answer, in solution order (easy to hard:
each sub-expression contains the earlier ones it depends on); the last step is dropped when its
value equals the final answer (it *is* the original problem), and the original problem closes
the chain. `num_subproblems=K` keeps the last K (the paper's shorter curricula keep the last 2-3).

Completion formats (`completion_format`):
  "lines" (default): after the work for subproblem k the model writes a line `answer_k: X`
    (k = 1..K). Subproblem k's span runs from the end of line `answer_{k-1}` (or the start) to
    the end of line `answer_k`.
  "blocks" (the paper's format): `<pk> ... \\boxed{X} </pk>` for k = 1..K; the span is the
    block including its tags.
The format is valid iff the K markers appear exactly once each, in order 1..K (and, for blocks,
each block holds a `\\boxed{}`). With `strict_format` (the paper's rule) an invalid completion
scores 0 on every subproblem. Intermediate answers are compared exactly as numbers ("8.0",
"8", "16/2" agree); the last one is scored by the task's own scorer.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import numpy as np

from postrain.tasks._arith import parse_number
from postrain.tasks._extract import clean_answer, extract_boxed
from postrain.tasks._problem import Problem, Task
from postrain.tasks._solutions import Step, reference_steps
from postrain.tasks._verify import VerifierPool, VerifierStats, score_answers

COMPLETION_FORMATS = ("lines", "blocks")

_LINE = re.compile(r"^[ \t*]*answer_(\d+)[ \t*]*:[ \t*]*([^\n]*)$", re.I | re.M)
_BLOCK = re.compile(r"<p(\d+)>(.*?)</p\1>", re.S)


@dataclasses.dataclass(frozen=True)
class Subproblem:
  """One link of a chain. `answer` is the canonical answer; `step` the index of the reference
  step that computes it (the last step for the original problem)."""

  question: str
  answer: str
  step: int


@dataclasses.dataclass(frozen=True)
class ScrlChain:
  """K subproblems of `problem`; `subproblems[-1]` is the original problem."""

  problem: Problem
  subproblems: tuple[Subproblem, ...]
  steps: tuple[Step, ...]

  @property
  def num_subproblems(self) -> int:
    return len(self.subproblems)

  def answer_strings(self, completion_format: str = "lines") -> list[str]:
    """The exact answer marker expected for each subproblem, e.g. "answer_2: 19"."""
    _check_format(completion_format)
    if completion_format == "lines":
      return [f"answer_{k}: {s.answer}" for k, s in enumerate(self.subproblems, 1)]
    return [f"\\boxed{{{s.answer}}}" for s in self.subproblems]


def _check_format(completion_format: str) -> None:
  if completion_format not in COMPLETION_FORMATS:
    raise ValueError(
      f"`completion_format` must be one of {list(COMPLETION_FORMATS)}, got {completion_format!r}."
    )


def scrl_chain(problem: Problem, *, num_subproblems: int | None = None) -> ScrlChain | None:
  """The subproblem chain of `problem` (module docstring), or None without a reference solution.

  Args:
    problem: a problem with a derivable reference solution (`reference_steps`).
    num_subproblems: keep the last K subproblems (K >= 1; the original is always kept). A
      shorter chain is returned as is; `score_subproblems_batch` pads it.
  """
  if num_subproblems is not None and (
    isinstance(num_subproblems, bool) or not isinstance(num_subproblems, int) or num_subproblems < 1
  ):
    raise ValueError(f"`num_subproblems` must be a positive int or None, got {num_subproblems!r}.")
  steps = reference_steps(problem)
  if steps is None:
    return None
  subs, seen = [], set()
  for i, step in enumerate(steps):
    if step.expression is not None and step.expression not in seen:
      seen.add(step.expression)
      subs.append(Subproblem(f"Compute {step.expression}.", step.value, i))
  # Countdown's answer is an expression; the value it must reach is the target.
  target = problem.metadata.get("target") if problem.task == "countdown" else problem.answer
  final = parse_number(str(target))
  if subs and final is not None and parse_number(subs[-1].answer) == final:
    # The last step computes the final answer: the original problem covers it (and for
    # countdown "Compute <the whole expression>" would give the solution away).
    subs.pop()
  subs.append(Subproblem(problem.question, problem.answer, len(steps) - 1))
  if num_subproblems is not None:
    subs = subs[-num_subproblems:]
  return ScrlChain(problem, tuple(subs), tuple(steps))


def scrl_prompt_text(chain: ScrlChain, *, completion_format: str = "lines") -> str:
  """The curriculum user message: the K problems and the answer-format instruction."""
  _check_format(completion_format)
  k = chain.num_subproblems
  if completion_format == "lines":
    rule = (
      f"Solve the problems in order, showing your steps. After the steps of problem k, write a "
      f"line 'answer_k: X' with its answer (answer_1 ... answer_{k})."
    )
  else:
    rule = (
      f"Solve the problems in order. Write the solution of problem k inside <pk></pk> and end "
      f"it with \\boxed{{X}} (blocks <p1></p1> ... <p{k}></p{k}>)."
    )
  problems = "\n".join(f"Problem {j}: {s.question}" for j, s in enumerate(chain.subproblems, 1))
  return f"{rule} Problem {k} is the original problem.\n\n{problems}"


def format_scrl_prompt(
  chain: ScrlChain,
  *,
  completion_format: str = "lines",
  chat_template: Callable[[list[dict[str, str]]], str] | None = None,
  system: str | None = None,
) -> str:
  """The curriculum prompt: plain ("...\\nAnswer:") or through `chat_template(messages)`."""
  text = scrl_prompt_text(chain, completion_format=completion_format)
  if chat_template is None:
    return f"{text}\nAnswer:"
  messages = ([{"role": "system", "content": system}] if system else []) + [
    {"role": "user", "content": text}
  ]
  return chat_template(messages)


def scrl_reference_completion(chain: ScrlChain, *, completion_format: str = "lines") -> str:
  """A correct curriculum completion built from the reference steps (for SFT and tests)."""
  _check_format(completion_format)
  lines, first = [], 0
  for k, sub in enumerate(chain.subproblems, 1):
    work = [s.text for s in chain.steps[first : sub.step + 1]]
    first = sub.step + 1
    if completion_format == "lines":
      lines += [*work, f"answer_{k}: {sub.answer}"]
    else:
      lines += [f"<p{k}>", *work, f"\\boxed{{{sub.answer}}}", f"</p{k}>"]
  return "\n".join(lines)


def _markers(completion: str, k: int, completion_format: str):
  """[(index, answer, start, end)] in order of appearance, and whether the format is valid."""
  if completion_format == "lines":
    found = [
      (int(m.group(1)), clean_answer(m.group(2)), m.start(), m.end())
      for m in _LINE.finditer(completion)
    ]
    found = [(j, extract_boxed(a) or a, s, e) for j, a, s, e in found]
  else:
    found = [
      (int(m.group(1)), extract_boxed(m.group(2)), m.start(), m.end())
      for m in _BLOCK.finditer(completion)
    ]
  ok = [j for j, *_ in found] == list(range(1, k + 1)) and all(a for _, a, *_ in found)
  return found, ok


def extract_subproblem_answers(
  completion: str, num_subproblems: int, *, completion_format: str = "lines"
) -> tuple[list[str | None], bool]:
  """(answers[K], format_ok): the last answer given for each k (None if absent)."""
  _check_format(completion_format)
  found, ok = _markers(completion, num_subproblems, completion_format)
  answers: list[str | None] = [None] * num_subproblems
  for j, answer, _, _ in found:
    if 1 <= j <= num_subproblems and answer:
      answers[j - 1] = answer
  return answers, ok


def scrl_char_spans(
  completion: str, num_subproblems: int, *, completion_format: str = "lines"
) -> list[tuple[int, int]] | None:
  """Character span [start, end) of each subproblem's work in `completion`; None if malformed."""
  _check_format(completion_format)
  found, ok = _markers(completion, num_subproblems, completion_format)
  if not ok:
    return None
  if completion_format == "blocks":
    return [(s, e) for _, _, s, e in found]
  ends = [e for _, _, _, e in found]
  return list(zip([0, *ends[:-1]], ends))


def token_span_ids(
  char_spans: Sequence[tuple[int, int]] | None, token_offsets: Sequence[tuple[int, int]]
) -> np.ndarray:
  """span_ids: i32[T] for `postrain.advantages` SCRL: token t gets the 0-based index of the span
  containing its first character, -1 outside every span (and everywhere if `char_spans` is None).

  Args:
    char_spans: from `scrl_char_spans`.
    token_offsets: T (start, end) character offsets of the completion's tokens.
  """
  starts = np.asarray([start for start, _ in token_offsets], np.int64)
  ids = np.full(len(starts), -1, np.int32)
  for k, (lo, hi) in enumerate(char_spans or ()):
    ids[(starts >= lo) & (starts < hi)] = k
  return ids


def _intermediate_reward(answer: str | None, expected: str) -> float:
  got = parse_number(answer) if answer is not None else None
  return 1.0 if got is not None and got == parse_number(expected) else 0.0


def score_subproblems(
  task: Task,
  chain: ScrlChain,
  completion: str,
  *,
  completion_format: str = "lines",
  strict_format: bool = True,
) -> np.ndarray:
  """Per-subproblem rewards of one curriculum completion, in this process (no deadline).

  Returns:
    rewards: f32[K] in {0, 1} for intermediates; the last is `task.score` of the final answer.
    All zeros if the format is invalid and `strict_format` is set.
  """
  k = chain.num_subproblems
  answers, ok = extract_subproblem_answers(completion, k, completion_format=completion_format)
  rewards = np.zeros(k, np.float32)
  if strict_format and not ok:
    return rewards
  for j, sub in enumerate(chain.subproblems[:-1]):
    rewards[j] = _intermediate_reward(answers[j], sub.answer)
  if answers[-1] is not None:
    rewards[-1] = task.score(answers[-1], chain.problem)
  return rewards


def score_subproblems_batch(
  task: Task,
  chains: Sequence[ScrlChain],
  completions: Sequence[str],
  *,
  num_subproblems: int | None = None,
  completion_format: str = "lines",
  strict_format: bool = True,
  timeout_s: float | None = 5.0,
  pool: VerifierPool | None = None,
) -> tuple[np.ndarray, np.ndarray, VerifierStats]:
  """Subproblem rewards for N curriculum completions; the final answers go through the
  deadline-guarded verifier (`score_answers`).

  Chains shorter than K are left-padded with reward 1.0: a missing easy subproblem counts as
  solved, so the progress product (Eq. 3) is unchanged and the padded column, constant across
  the group, gets advantage 0 after per-position normalisation (Eq. 4).

  Args:
    task: the task of the original problems.
    chains: N chains (repeat a chain G times for a group).
    completions: N completions.
    num_subproblems: K (default: the longest chain). A longer chain is an error.
    completion_format, strict_format: see `score_subproblems`.
    timeout_s, pool: see `score_answers`.

  Returns:
    (rewards: f32[N, K], format_ok: bool[N], stats). Invalid rows are all zero (padding too)
    when `strict_format`, and counted in `stats.format_errors`.
  """
  _check_format(completion_format)
  if len(chains) != len(completions):
    raise ValueError(f"`completions` has {len(completions)} items but `chains` has {len(chains)}.")
  longest = max((c.num_subproblems for c in chains), default=1)
  k_max = longest if num_subproblems is None else num_subproblems
  if k_max < longest:
    raise ValueError(f"`num_subproblems`={k_max} is less than the longest chain ({longest}).")
  n = len(chains)
  rewards = np.zeros((n, k_max), np.float32)
  format_ok = np.zeros(n, bool)
  finals: list[str | None] = []
  for i, (chain, completion) in enumerate(zip(chains, completions)):
    k = chain.num_subproblems
    answers, ok = extract_subproblem_answers(completion, k, completion_format=completion_format)
    format_ok[i] = ok
    if strict_format and not ok:
      finals.append(None)
      continue
    pad = k_max - k
    rewards[i, :pad] = 1.0
    for j, sub in enumerate(chain.subproblems[:-1]):
      rewards[i, pad + j] = _intermediate_reward(answers[j], sub.answer)
    finals.append(answers[-1])
  final_rewards, stats = score_answers(
    task, [c.problem for c in chains], finals, timeout_s=timeout_s, pool=pool
  )
  rewards[:, -1] = final_rewards
  stats.format_errors = int(n - format_ok.sum())
  return rewards, format_ok, stats
