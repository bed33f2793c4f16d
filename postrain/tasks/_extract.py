"""Answer extraction from model completions.

What counts as the final answer is chosen by `mode` (the trainer's `config.task.extract`):

  mode           tries, in order (first that matches wins)
  "boxed"        the last `\\boxed{...}`
  "answer_line"  the last `answer: X` line
  "last_number"  the last number in the text
  "marked"       boxed, then answer line (the default: only an explicitly marked answer counts)
  "any"          boxed, then answer line, then the last number (chat models that answer in prose)

- `\\boxed{...}` (also `\\fbox{...}`): braces balanced, so `\\boxed{\\frac{1}{2}}` gives
  `\\frac{1}{2}`; an unclosed `\\boxed{` is ignored; `\\boxed 5` gives "5".
- `answer: X` lines: case-insensitive, also "Final answer:", "The answer is:", markdown
  `**Answer:**`; X is the rest of that line. Numbered subproblem lines `answer_k: X` (SCRL) never
  count.
- the last number: integers and decimals, optionally negative, thousands separators removed
  ("1,234" -> "1234").

The *source* of an extracted answer is the rule that produced it ("boxed", "answer_line" or
"last_number"); an answer is *marked* when its source is "boxed" or "answer_line" (the trainer's
optional format reward, `config.task.format_reward`, pays for marked answers only).

Cost: extraction reads at most the last `max_chars` characters of a completion (default
`MAX_EXTRACT_CHARS`; final answers sit at the end) and is linear in them: the braces are matched
in one pass, and the patterns cannot backtrack over a run of spaces. Under the verifier
(`postrain.tasks.score_batch`) it also runs inside the scorer's deadline.
"""

from __future__ import annotations

import re

# The most characters of a completion extraction reads (the last ones): ~4k tokens of text.
MAX_EXTRACT_CHARS = 16384

EXTRACT_MODES = ("marked", "any", "boxed", "answer_line", "last_number")
SOURCES = ("boxed", "answer_line", "last_number")
MARKED_SOURCES = ("boxed", "answer_line")
_ORDER = {
  "marked": ("boxed", "answer_line"),
  "any": ("boxed", "answer_line", "last_number"),
  "boxed": ("boxed",),
  "answer_line": ("answer_line",),
  "last_number": ("last_number",),
}

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*+")
_BRACE = re.compile(r"[{}]")
_TOKEN = re.compile(r"[^\s$]+")
# Possessive quantifiers (`*+`): a long run of spaces after "answer" cannot be re-split
# quadratically when the colon is missing.
_ANSWER = re.compile(
  r"(?<![\w])(?:final\s++)?answer\s*+(?:is\s*+)?\**+\s*+:\**+[ \t]*+([^\n]*)", re.I
)
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")
_STRIP = " \t*$`"


def clean_answer(value: str) -> str:
  """Strips markdown/LaTeX wrappers and a sentence-final period from an extracted value."""
  value = value.strip().strip(_STRIP).strip()
  if value.startswith("\\(") and value.endswith("\\)"):
    value = value[2:-2].strip()
  if value.endswith(".") and not value.endswith(".."):
    value = value[:-1].rstrip()
  return value


def _closing_braces(text: str) -> dict[int, int]:
  """{index of "{": index of its matching "}"} for every closed brace; one pass, O(len(text)).

  A "}" with no open brace is ignored; an unclosed "{" has no entry.
  """
  closes, stack = {}, []
  for m in _BRACE.finditer(text):
    if m.group(0) == "{":
      stack.append(m.start())
    elif stack:
      closes[stack.pop()] = m.start()
  return closes


def boxed_contents(text: str) -> list[str]:
  """Contents of every `\\boxed{...}` (and `\\fbox{...}`) in order; nested braces are kept.

  An unclosed `\\boxed{` is ignored. `\\boxed 5` (no braces) gives "5". Linear in `len(text)`.
  """
  out, closes = [], None
  for match in _BOXED.finditer(text):
    i = match.end()
    if i < len(text) and text[i] == "{":
      if closes is None:
        closes = _closing_braces(text)
      j = closes.get(i)
      if j is not None:
        out.append(text[i + 1 : j].strip())
    elif match.group(0)[-1].isspace():
      token = _TOKEN.match(text, i)
      if token:
        out.append(token.group(0))
  return out


def extract_boxed(text: str) -> str | None:
  """The last `\\boxed{...}` contents, or None."""
  contents = boxed_contents(text)
  return contents[-1] if contents else None


def extract_answer_line(text: str) -> str | None:
  """The value of the last non-empty `answer: X` line, or None."""
  values = [clean_answer(m.group(1)) for m in _ANSWER.finditer(text)]
  values = [v for v in values if v]
  return values[-1] if values else None


def extract_last_number(text: str) -> str | None:
  """The last number in `text` (thousands separators removed), or None."""
  numbers = _NUMBER.findall(text)
  return numbers[-1].replace(",", "") if numbers else None


_EXTRACTORS = {
  "boxed": extract_boxed,
  "answer_line": extract_answer_line,
  "last_number": extract_last_number,
}


def check_extract_args(mode: str, max_chars: int) -> None:
  """Raises ValueError for an unknown `mode` or a `max_chars` that is not a positive int."""
  if mode not in _ORDER:
    raise ValueError(f"`mode` must be one of {list(EXTRACT_MODES)}, got {mode!r}.")
  if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
    raise ValueError(f"`max_chars` must be a positive int, got {max_chars!r}.")


def extract_answer_source(
  text: str, *, mode: str = "marked", max_chars: int = MAX_EXTRACT_CHARS
) -> tuple[str | None, str | None]:
  """(answer, source) of a completion under `mode` (module docstring), or (None, None).

  Args:
    text: the completion (the generated text only, not the prompt).
    mode: one of `EXTRACT_MODES`.
    max_chars: only the last `max_chars` characters are read.

  Returns:
    The answer string and the rule that found it ("boxed", "answer_line" or "last_number").
  """
  if not isinstance(text, str):
    raise TypeError(f"`text` must be a str, got {type(text).__name__}.")
  check_extract_args(mode, max_chars)
  text = text[-max_chars:]
  for source in _ORDER[mode]:
    answer = _EXTRACTORS[source](text)
    if answer:
      return answer, source
  return None, None


def extract_answer(
  text: str,
  *,
  last_number_fallback: bool = False,
  mode: str | None = None,
  max_chars: int = MAX_EXTRACT_CHARS,
) -> str | None:
  """Extracts the final answer from a completion (rules in the module docstring).

  Args:
    text: the completion (the generated text only, not the prompt).
    last_number_fallback: with `mode=None`, True means mode "any" and False mode "marked".
    mode: one of `EXTRACT_MODES` (overrides `last_number_fallback`).
    max_chars: only the last `max_chars` characters are read.

  Returns:
    The answer string, or None if nothing could be extracted.
  """
  if mode is None:
    mode = "any" if last_number_fallback else "marked"
  return extract_answer_source(text, mode=mode, max_chars=max_chars)[0]
