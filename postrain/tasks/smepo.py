"""SMEPO: semantic masking of expert traces (arXiv 2605.25198).

An expert trace in the prompt helps exploration on hard problems, but the policy can copy the
items the verifier checks. SMEPO hides exactly those items and keeps the plan:

- answers: `\\boxed{..}` / `\\fbox{..}` contents, "Answer: .." / "Final answer: .." / "#### .." lines,
  "the answer is ..", and verbatim occurrences of the verified answer -> `[ANSWER]`;
- numbers: intermediate numeric values -> `[NUMBER]` (LaTeX fractions with digits in both
  arguments, `\\sqrt{..}` with a digit, `a \\times 10^{b}`, `a/b`, percentages, `1e-5`, decimals,
  integers with thousands separators, with a sign where it is not a binary minus). Structural
  labels ("Step 3", "Case 2", "Lemma 1", ...) are kept;
- code: the body of every fenced code block -> `[CODE]`, keeping the fence and language tag;
- entities: answer-related entities -> `[ENTITY]`: given terms (case-insensitive, whole words)
  and/or spans from a pluggable `entity_fn(text) -> [(start, end)]` (e.g. an NER model; the
  paper's search-domain masking is not public).

Masking is deterministic and rule-based; each category is a switch. Categories run in the order
code, answers, entities, numbers, and a span replaced by one category is never touched by a
later one. Digits inside identifiers are masked too (`x_2` -> `x_[NUMBER]`): leaking no value
matters more than readability. The guided prompt puts the masked trace in front of the policy;
`check_answer_leak` rejects traces whose masked form still reveals the answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import NamedTuple

ANSWER, NUMBER, CODE, ENTITY = "[ANSWER]", "[NUMBER]", "[CODE]", "[ENTITY]"

# Fenced code block; an unterminated fence (truncated trace) runs to the end of the text.
_CODE_RE = re.compile(r"```([^\n`]*)\n.*?(?:```|\Z)", re.DOTALL)
_BOXED_RE = re.compile(r"\\(boxed|fbox)\s*\{")
_ANSWER_LINE_RE = re.compile(
  r"(?im)^([ \t>#*-]*(?:\*\*)?(?:final\s+)?answer(?:\*\*)?\s*[:：](?:\*\*)?[ \t]*)(\S.*?)[ \t]*$"
)
_HASH_LINE_RE = re.compile(r"(?m)^(####[ \t]*)(\S.*?)[ \t]*$")
_ANSWER_IS_RE = re.compile(
  r"(?i)\b((?:the\s+)?(?:final\s+)?answer\s+is\s*:?[ \t]*)(\S[^\n]*?)(?=\.\s|\.?[ \t]*$|\n)", re.M
)
_STRUCTURAL_RE = re.compile(
  r"(?i)\b(?:step|case|part|subcase|problem|example|exercise|lemma|theorem|claim|stage|round)"
  r"\s*#?\s*\d+\b"
)
_INT = r"(?:\d{1,3}(?:(?:,|\{,\})\d{3})+(?!\d)|\d+)"  # 1,000 and LaTeX 1{,}000
_UNSIGNED = rf"(?:{_INT}(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER_CORE = (
  r"\\[dt]?frac\s*\{[^{}]*\d[^{}]*\}\s*\{[^{}]*\d[^{}]*\}"  # \frac{3}{4}
  r"|\\sqrt\s*(?:\[[^\]]*\])?\s*\{[^{}]*\d[^{}]*\}"  # \sqrt[3]{8}
  rf"|{_UNSIGNED}\s*\\times\s*10\s*\^\s*(?:\{{\s*[-+]?\d+\s*\}}|[-+]?\d+)"  # 3 \times 10^{5}
  rf"|{_UNSIGNED}/{_UNSIGNED}"  # 12/5
  rf"|{_UNSIGNED}\s*\\?%"  # 50%, 50\%
  rf"|{_UNSIGNED}"
)
# A sign belongs to the number unless it is a binary operator (preceded by an operand).
NUMBER_RE = re.compile(rf"(?:(?<![\w)\]}}.])[-+−])?(?:{_NUMBER_CORE})")

DEFAULT_TEMPLATE = "{prompt}Here is an example solution:\n{trace}<|im_end|>\n<|im_start|>assistant"
"""The released code's guided prompt: the chat prompt (ending with the generation prompt), an
intro line, the masked trace as an earlier assistant turn, and a new assistant turn."""

Spans = list[tuple[int, int]]


def _overlaps(start: int, end: int, frozen: Spans) -> bool:
  return any(start < f_end and f_start < end for f_start, f_end in frozen)


def _apply(text: str, frozen: Spans, edits: list[tuple[int, int, str]]) -> tuple[str, Spans]:
  """Applies (start, end, new) edits that avoid frozen spans and each other; freezes the results."""
  out, added, deltas, pos, shift = [], [], [], 0, 0
  for start, end, new in sorted(e for e in edits if not _overlaps(e[0], e[1], frozen)):
    if start < pos:  # overlaps an earlier edit of this pass
      continue
    out += [text[pos:start], new]
    added.append((start + shift, start + shift + len(new)))
    deltas.append((start, len(new) - (end - start)))
    shift += len(new) - (end - start)
    pos = end
  out.append(text[pos:])
  moved = []
  for f_start, f_end in frozen:
    d = sum(delta for start, delta in deltas if start < f_start)
    moved.append((f_start + d, f_end + d))
  return "".join(out), sorted(moved + added)


def _boxed_edits(text: str) -> list[tuple[int, int, str]]:
  edits = []
  for m in _BOXED_RE.finditer(text):
    depth, i = 1, m.end()
    while i < len(text) and depth:
      depth += {"{": 1, "}": -1}.get(text[i], 0)
      i += 1
    if depth == 0:
      edits.append((m.start(), i, f"\\{m.group(1)}{{{ANSWER}}}"))
  return edits


def _group_edits(pattern: re.Pattern, text: str, group: int, repl: str) -> list:
  return [(m.start(group), m.end(group), repl) for m in pattern.finditer(text)]


def _terms_re(terms: Sequence[str]) -> re.Pattern | None:
  terms = sorted({t.strip() for t in terms if t and t.strip()}, key=len, reverse=True)
  if not terms:
    return None
  alts = "|".join(r"\s+".join(map(re.escape, t.split())) for t in terms)
  return re.compile(rf"(?<!\w)(?:{alts})(?!\w)", re.IGNORECASE)


def mask_trace(
  text: str,
  *,
  answers: bool = True,
  numbers: bool = True,
  code: bool = True,
  entities: bool = False,
  answer: str | None = None,
  entity_terms: Sequence[str] = (),
  entity_fn: Callable[[str], Spans] | None = None,
  protect_structural: bool = True,
) -> str:
  """Masks the reward-relevant spans of an expert trace (SMEPO, arXiv 2605.25198 §2.1).

  Args:
    text: the expert trace.
    answers, numbers, code, entities: category switches (see the module docstring).
    answer: the verified answer; with `answers`, its verbatim occurrences become `[ANSWER]`.
    entity_terms: entity strings masked when `entities` is on (e.g. the answer's aliases).
    entity_fn: optional span finder (NER) used when `entities` is on.
    protect_structural: keep numbers of structural labels such as "Step 3".

  Returns:
    The masked trace.
  """
  frozen: Spans = []
  if code:
    edits = [(m.start(), m.end(), f"```{m.group(1)}\n{CODE}\n```") for m in _CODE_RE.finditer(text)]
    text, frozen = _apply(text, frozen, edits)
  if answers:
    text, frozen = _apply(text, frozen, _boxed_edits(text))
    for pattern in (_ANSWER_LINE_RE, _HASH_LINE_RE, _ANSWER_IS_RE):
      text, frozen = _apply(text, frozen, _group_edits(pattern, text, 2, ANSWER))
    target = _normalize_answer(answer) if answer else ""
    if target:  # the same whitespace-insensitive match as the leak check
      text, frozen = _apply(text, frozen, _group_edits(_answer_re(target), text, 0, ANSWER))
  if entities:
    edits = []
    terms_re = _terms_re(entity_terms)
    if terms_re is not None:
      edits += _group_edits(terms_re, text, 0, ENTITY)
    if entity_fn is not None:
      edits += [(s, e, ENTITY) for s, e in entity_fn(text) if 0 <= s < e <= len(text)]
    text, frozen = _apply(text, frozen, edits)
  if numbers:
    if protect_structural:  # freeze "Step 3" etc. without changing them
      labels = [m.span() for m in _STRUCTURAL_RE.finditer(text)]
      frozen = sorted(frozen + [sp for sp in labels if not _overlaps(*sp, frozen)])
    text, frozen = _apply(text, frozen, _group_edits(NUMBER_RE, text, 0, NUMBER))
  return text


def guided_prompt(
  prompt: str,
  masked_trace: str,
  *,
  template: str = DEFAULT_TEMPLATE,
  prefix_ratio: float = 1.0,
  cut_at_newline: bool = True,
) -> str:
  """Puts the (masked) expert trace in front of the policy (arXiv 2605.25198 §2.2).

  The first ⌊prefix_ratio · len(trace)⌋ characters of the trace are kept and, with
  `cut_at_newline`, cut after their last newline (the released code cuts tokens the same way;
  `guided_prompt_ids` does it on tokens). An empty kept trace returns `prompt` unchanged.

  Args:
    prompt: the chat-formatted prompt, ending with the generation prompt.
    masked_trace: output of `mask_trace`.
    template: format string with `{prompt}` and `{trace}` fields.
    prefix_ratio: fraction of the trace shown, in [0, 1].
    cut_at_newline: end the shown part on a line boundary.
  """
  if not 0.0 <= prefix_ratio <= 1.0:
    raise ValueError(f"`prefix_ratio` must be in [0, 1], got {prefix_ratio}.")
  if "{prompt}" not in template or "{trace}" not in template:
    raise ValueError("`template` must contain the fields {prompt} and {trace}.")
  trace = masked_trace
  if prefix_ratio < 1.0:
    trace = trace[: int(len(trace) * prefix_ratio)]
    if cut_at_newline:
      trace = trace[: trace.rfind("\n") + 1]
  if not trace.strip():
    return prompt
  # Substitute both fields in one pass so braces inside the prompt or trace stay literal.
  fields = {"{prompt}": prompt, "{trace}": trace}
  return "".join(fields.get(p, p) for p in re.split(r"(\{prompt\}|\{trace\})", template))


def guided_prompt_ids(
  prompt_ids: Sequence[int],
  trace_ids: Sequence[int],
  *,
  tokenizer,
  intro: str | Sequence[int] = "Here is an example solution:\n",
  tail: str | Sequence[int] = "<|im_end|>\n<|im_start|>assistant",
  prefix_ratio: float = 1.0,
  max_len: int | None = None,
  cut_at_newline: bool = True,
) -> list[int]:
  """Token-level guided prompt: prompt ⊕ intro ⊕ trace[:k'] ⊕ tail, never longer than max_len.

  k = ⌊n · prefix_ratio⌋, further limited by the room left under `max_len`; with
  `cut_at_newline` the kept tokens are decoded, cut after the last newline and re-encoded.
  `intro`/`tail` are strings (encoded with `tokenizer`) or ready token ids (e.g. to use
  special-token ids). Returns `prompt_ids` unchanged when no trace token fits.
  """
  if not 0.0 <= prefix_ratio <= 1.0:
    raise ValueError(f"`prefix_ratio` must be in [0, 1], got {prefix_ratio}.")
  enc = lambda x: tokenizer.encode(x) if isinstance(x, str) else list(x)  # noqa: E731
  intro_ids, tail_ids = enc(intro), enc(tail)
  k = int(len(trace_ids) * prefix_ratio)
  if max_len is not None:
    k = min(k, max_len - len(prompt_ids) - len(intro_ids) - len(tail_ids))
  if k <= 0:
    return list(prompt_ids)
  kept = list(trace_ids[:k])
  if cut_at_newline and k < len(trace_ids):
    text = tokenizer.decode(kept)
    kept = tokenizer.encode(text[: text.rfind("\n") + 1]) if "\n" in text else []
    kept = kept[:k]  # re-encoding may merge differently; never exceed the budget
  if not kept:
    return list(prompt_ids)
  return list(prompt_ids) + intro_ids + kept + tail_ids


# --- leak check ---------------------------------------------------------------------------

_WRAPPERS = re.compile(r"^\\(?:boxed|fbox|text|mathrm|textbf)\s*\{(.*)\}$", re.DOTALL)


def _normalize_answer(answer: str) -> str:
  s = answer.strip().strip("$").strip()
  while (m := _WRAPPERS.match(s)) is not None:
    s = m.group(1).strip()
  return s.rstrip(".").strip()


def _answer_re(target: str, case_sensitive: bool = False) -> re.Pattern:
  """The answer as a whole token sequence, any whitespace between its characters."""
  chars = [re.escape(c) for c in target if not c.isspace()]
  pattern = r"(?<![A-Za-z0-9])" + r"\s*".join(chars) + r"(?![A-Za-z0-9])"
  return re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)


def parse_number(text: str) -> Fraction | None:
  """Exact value of a numeric string: "1,000", "1000.0", "-3", "3/4", "\\frac{3}{4}", "50%"
  (-> 50), "1e3", "2 \\times 10^{3}", "$1{,}000$". None if it is not a number."""
  s = _normalize_answer(text).replace("−", "-").replace("{,}", "").replace("\\!", "")
  s = re.sub(r"\\?%$", "", s).strip()
  sign = -1 if s.startswith("-") else 1
  s = s.lstrip("+-").strip()
  m = re.fullmatch(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", s)
  if m:
    num, den = parse_number(m.group(1)), parse_number(m.group(2))
    return sign * num / den if num is not None and den else None
  m = re.fullmatch(r"(.+?)\s*\\times\s*10\s*\^\s*\{?\s*([-+]?\d+)\s*\}?", s)
  if m:
    base = parse_number(m.group(1))
    return sign * base * Fraction(10) ** int(m.group(2)) if base is not None else None
  if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
    s = s.replace(",", "")
  if not re.fullmatch(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?:/\d+(?:\.\d+)?)?", s):
    return None
  try:
    if "/" in s:
      num, den = s.split("/")
      return sign * Fraction(num) / Fraction(den) if Fraction(den) else None
    return sign * Fraction(s)
  except (ValueError, ZeroDivisionError):
    return None


class LeakReport(NamedTuple):
  """leaks: the masked trace reveals the answer; reason: "answer_string", "answer_value" or
  "none"; match: the revealing text, if any."""

  leaks: bool
  reason: str
  match: str | None


def check_answer_leak(
  masked_trace: str,
  answer: str,
  *,
  case_sensitive: bool = False,
  ignore_structural: bool = True,
) -> LeakReport:
  """Does the masked trace still reveal the verified answer?

  Two tests: (1) the normalised answer string occurs as a whole token sequence, whitespace
  insensitive (`x^2 + 1` matches `x^2+1`); (2) for a numeric answer, some number left in the
  trace has the same exact value, whatever its format (1,000 / 1000.0 / 1e3 / \\frac{}{}).
  Numbers in structural labels ("Step 3") are ignored unless `ignore_structural=False`.
  Written-out numbers ("one thousand") are not detected.
  """
  target = _normalize_answer(answer)
  if not target:
    raise ValueError("`answer` is empty.")
  text = masked_trace
  if ignore_structural:
    text = _STRUCTURAL_RE.sub(lambda m: re.sub(r"\d", "", m.group(0)), text)
  m = _answer_re(target, case_sensitive).search(text)
  if m is not None:
    return LeakReport(True, "answer_string", m.group(0))
  value = parse_number(target)
  if value is not None:
    for m in NUMBER_RE.finditer(text):
      if parse_number(m.group(0)) == value:
        return LeakReport(True, "answer_value", m.group(0))
  return LeakReport(False, "none", None)


def trace_leaks_answer(masked_trace: str, answer: str, **kwargs) -> bool:
  """True if `check_answer_leak` finds the answer in the masked trace."""
  return check_answer_leak(masked_trace, answer, **kwargs).leaks


def mask_and_check(
  trace: str, answer: str, *, entity_terms: Sequence[str] = (), **mask_kwargs
) -> tuple[str, LeakReport]:
  """`mask_trace` with the verified answer, then `check_answer_leak`. Drop or flag the example
  when the report says it leaks."""
  if not isinstance(answer, str):
    raise TypeError(f"`answer` must be a str, got {type(answer).__name__}.")
  masked = mask_trace(trace, answer=answer, entity_terms=entity_terms, **mask_kwargs)
  return masked, check_answer_leak(masked, answer)
