"""Answer extraction from model completions.

Precedence (first that matches wins):
  1. the last `\\boxed{...}` (braces balanced, so `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`);
  2. the last `answer: X` line (case-insensitive, also "Final answer:", markdown `**Answer:**`);
     X is the rest of that line;
  3. optionally (`last_number_fallback=True`) the last number in the text.
Numbered subproblem lines `answer_k: X` (SCRL) never count as `answer: X`.
"""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_ANSWER = re.compile(r"(?<![\w])(?:final\s+)?answer\s*(?:is\s*)?\**\s*:\**[ \t]*([^\n]*)", re.I)
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


def boxed_contents(text: str) -> list[str]:
  """Contents of every `\\boxed{...}` (and `\\fbox{...}`) in order; nested braces are kept.

  An unclosed `\\boxed{` is ignored. `\\boxed 5` (no braces) gives "5".
  """
  out = []
  for match in _BOXED.finditer(text):
    i = match.end()
    if i < len(text) and text[i] == "{":
      depth, j = 0, i
      while j < len(text):
        if text[j] == "{":
          depth += 1
        elif text[j] == "}":
          depth -= 1
          if depth == 0:
            break
        j += 1
      if depth == 0 and j < len(text):
        out.append(text[i + 1 : j].strip())
    elif match.group(0)[-1].isspace():
      token = re.match(r"[^\s$]+", text[i:])
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


def extract_answer(text: str, *, last_number_fallback: bool = False) -> str | None:
  """Extracts the final answer from a completion (precedence in the module docstring).

  Args:
    text: the completion (the generated text only, not the prompt).
    last_number_fallback: if True, fall back to the last number when there is neither a boxed
      answer nor an `answer:` line.

  Returns:
    The answer string, or None if nothing could be extracted.
  """
  if not isinstance(text, str):
    raise TypeError(f"`text` must be a str, got {type(text).__name__}.")
  boxed = extract_boxed(text)
  if boxed:
    return boxed
  line = extract_answer_line(text)
  if line is not None:
    return line
  return extract_last_number(text) if last_number_fallback else None
