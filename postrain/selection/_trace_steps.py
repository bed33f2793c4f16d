"""Host-side helpers that turn a reasoning trace into GRACE inputs (arXiv 2605.13130).

The paper's step-splitting rule is in an appendix that was not available; `split_steps` offers
the usual readings as an explicit `rule`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from postrain import _validation as V

_STEP_MARKER = re.compile(r"(?im)^(?=\s*(?:\*\*)?\s*step\s*\d+)")


def split_steps(trace: str, *, rule: str = "paragraph") -> list[str]:
  """Splits a trace into non-empty steps (surrounding whitespace stripped).

  rule: "paragraph" (blocks separated by blank lines; default), "line" (non-empty lines), or
  "marker" (a new step starts at each line beginning with "Step <n>"; text before the first
  marker is a step of its own).
  """
  V.check_choice("rule", rule, ("paragraph", "line", "marker"))
  if rule == "paragraph":
    steps = re.split(r"\n[ \t]*\n", trace)
  elif rule == "line":
    steps = trace.splitlines()
  else:
    steps = _STEP_MARKER.split(trace)
  return [s.strip() for s in steps if s.strip()]


def pack_steps(
  prompt_ids: Sequence[int],
  step_ids: Sequence[Sequence[int]],
  answer_ids: Sequence[int],
  *,
  length: int,
  pad_id: int = 0,
  left_pad: bool = True,
) -> dict[str, np.ndarray]:
  """Concatenates prompt, steps and answer into one row of GRACE inputs.

  Returns a dict of numpy arrays of shape [length]: "tokens" (i32), "segment_ids" (i32: k for
  tokens of step k, -1 elsewhere), "answer_mask" (bool), "valid" (bool, False on padding).
  Raises ValueError if the sequence does not fit.
  """
  segs = [-1] * len(prompt_ids)
  toks = list(prompt_ids)
  for k, ids in enumerate(step_ids):
    toks += list(ids)
    segs += [k] * len(ids)
  ans = [False] * len(toks) + [True] * len(answer_ids)
  toks += list(answer_ids)
  segs += [-1] * len(answer_ids)
  n = len(toks)
  if n > length:
    raise ValueError(f"prompt + steps + answer has {n} tokens, more than `length`={length}.")
  pad = length - n
  valid = [True] * n

  def padded(x: list, fill) -> list:
    return [fill] * pad + x if left_pad else x + [fill] * pad

  return {
    "tokens": np.asarray(padded(toks, pad_id), np.int32),
    "segment_ids": np.asarray(padded(segs, -1), np.int32),
    "answer_mask": np.asarray(padded(ans, False), bool),
    "valid": np.asarray(padded(valid, False), bool),
  }
