"""Teacher models for on-policy distillation: another postrain run, imported weights, or an EMA copy.

`config.teacher.source`:
  * "workdir": the latest orbax checkpoint of another postrain run (`teacher.path` = its workdir),
    built from that run's own `config.json` (model name, overrides, tokenizer);
  * "hf" / "gguf": weights imported with `postrain.models.from_hf_dir` / `from_gguf`;
  * "ema": an exponential moving average of the student itself (MOPD self-distillation,
    rate 1 - `teacher.ema_decay`), initialised to the student when distillation starts;
  * "none": no teacher (modes "sft" and "rl").

Teacher and student must share a vocabulary, or `teacher.vocab_map` (an .npy of i32[V_s] student
id -> teacher id) must say how to translate; otherwise `check_vocab` raises before any compilation.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections as mlc
import numpy as np
from flax import nnx

from postrain import losses, models, tasks
from postrain.train._distill_config import SOURCES, teacher_config  # noqa: F401
from postrain.train.runs import (  # noqa: F401  (the run API; default_tokenizer for the trainer)
  default_tokenizer,
  load_run,
  read_config,
  run_tokenizer_path,
)


def build_teacher(
  config: mlc.ConfigDict, *, student_vocab: int
) -> tuple[nnx.Module, np.ndarray | None, dict[str, Any]]:
  """The frozen teacher for sources "workdir", "hf" and "gguf": (model, vocab_map, info).

  The vocabularies are compared (`check_vocab`) before any teacher weights are built or loaded
  where the vocabulary size is known from a config file (workdir runs, HF directories).
  """
  t = config.teacher
  if not os.path.exists(t.path):
    raise FileNotFoundError(f"config.teacher.path: no such file or directory {t.path!r}")
  if t.source == "hf":
    with open(os.path.join(t.path, "config.json"), encoding="utf-8") as f:
      vmap = check_vocab(student_vocab, int(json.load(f)["vocab_size"]), vocab_map_path=t.vocab_map)
    _, model = models.from_hf_dir(t.path, dtype=t.dtype)
    return model, vmap, {}
  if t.source == "gguf":
    _, model = models.from_gguf(t.path, dtype=t.dtype)
    return model, check_vocab(student_vocab, vocab_size(model), vocab_map_path=t.vocab_map), {}
  run = read_config(t.path, what="config.teacher.path")
  if run.model.source == "scratch":
    # Compare vocabularies before building anything (and long before any compilation).
    tok_path = run_tokenizer_path(t.path, what="config.teacher.path")
    if tok_path is None:
      raise ValueError(f"config.teacher.path: cannot tell the vocabulary of run {t.path!r}")
    vocab = models.tokenizers.SentencePieceTokenizer(tok_path).vocab_size
    vmap = check_vocab(student_vocab, vocab, vocab_map_path=t.vocab_map)
  loaded = load_run(
    t.path,
    model_name=t.model_name,
    overrides=t.overrides.to_dict(),
    dtype=t.dtype,
    what="config.teacher.path",
  )
  if run.model.source != "scratch":  # a run that fine-tuned imported weights
    vmap = check_vocab(student_vocab, vocab_size(loaded.model), vocab_map_path=t.vocab_map)
  return loaded.model, vmap, {"teacher_step": loaded.step}


def vocab_size(model: nnx.Module) -> int:
  return int(model.cfg.vocab_size)


def load_vocab_map(path: str) -> np.ndarray | None:
  if not path:
    return None
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.teacher.vocab_map: no such file {path!r}")
  return np.asarray(np.load(path))


def check_vocab(student_vocab: int, teacher_vocab: int, *, vocab_map_path: str = "") -> Any:
  """Raises ValueError when the vocabularies differ and no map is given; returns the map or None.

  Uses `losses.match_vocab` on zero-size stand-ins, so the check is the loss's own rule.
  """
  vocab_map = load_vocab_map(vocab_map_path)
  try:
    losses.match_vocab(
      np.zeros((1, 1, student_vocab), np.float32),
      np.zeros((1, 1, teacher_vocab), np.float32),
      student_to_teacher=None if vocab_map is None else vocab_map.astype(np.int32),
    )
  except (ValueError, TypeError) as err:
    raise ValueError(
      f"config.teacher: teacher vocabulary ({teacher_vocab}) does not match the student's "
      f"({student_vocab}) and config.teacher.vocab_map does not translate it: {err}"
    ) from None
  return vocab_map


# -- the teacher's view of a rollout (MOPD prompts, OPD release segments) ----------------------

_BREAKS = (".", "!", "?")


def segment_ids(tokens: np.ndarray, mask: np.ndarray, tokenizer: Any, num_segments: int):
  """Sentence index i32[B, R] of each response token (-1 off the mask), for the release rule.

  A segment ends after a token whose text contains a newline or ends with . ! ? (the paper uses
  NLTK sentences; the toy tasks' solutions are one equation per line). Indices are capped at
  `num_segments - 1`, so a long tail shares the last segment.
  """
  cache: dict[int, bool] = {}
  out = np.full(tokens.shape, -1, np.int32)
  for b in range(tokens.shape[0]):
    seg = 0
    for t in range(tokens.shape[1]):
      if not mask[b, t]:
        continue
      out[b, t] = min(seg, num_segments - 1)
      tok = int(tokens[b, t])
      if tok not in cache:
        text = tokenizer.decode([tok])
        cache[tok] = "\n" in text or text.rstrip().endswith(_BREAKS)
      seg += cache[tok]
  return out


def mopd_teacher_prompts(
  data: Any,  # the run's TaskData
  problems: list[tasks.Problem],
  texts: list[str],
  rewards: np.ndarray,
  *,
  group_size: int,
  d: mlc.ConfigDict,
  seed: int,
) -> tuple[list[list[int]], np.ndarray, int]:
  """Token ids of each rollout's teacher prompt (MOPD Step B), whether it has peers, and how many
  prompts fell back to the plain prompt for exceeding `d.max_teacher_prompt_len`.

  The peer blocks go into the question text, which is then formatted exactly like the student's
  prompt (plain "Question: ...\\nAnswer:" or the chat template), so a row without peers gets the
  student's own prompt: MOPD without peers is plain OPD.
  """
  questions = [p.question for p in problems]
  teacher_q = tasks.mopd.build_batch_teacher_prompts(
    questions,
    texts,
    [float(r) for r in rewards],
    group_size=group_size,
    mode=d.context,
    max_peers=d.max_peers,
    max_failures=d.max_failures,
    success_threshold=d.success_threshold,
    order=d.peer_order,
    seed=seed,
  )
  ids, has_peer, truncated = [], np.zeros(len(texts), bool), 0
  for i, q in enumerate(teacher_q):
    plain = questions[i // group_size]
    row = data.encode_prompt(
      tasks.format_prompt(q, chat_template=data.chat_template, instruction=data.instruction)
    )
    if q != plain and len(row) > d.max_teacher_prompt_len:
      truncated += 1
      q = plain
      row = data.encode_prompt(
        tasks.format_prompt(q, chat_template=data.chat_template, instruction=data.instruction)
      )
    has_peer[i] = q != plain
    ids.append(row)
  return ids, has_peer, truncated


def teacher_layout(
  prompts: list[list[int]],
  response: np.ndarray,
  response_valid: np.ndarray,
  *,
  pad_id: int,
  longest: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """`left-padded teacher prompt ++ student response` (i32[B, W + R], bool[B, W + R]).

  W is the longest prompt rounded up to a multiple of 32 (fewer recompilations); the response
  occupies the last R columns, as in the student's sequence. `longest`: the longest prompt of the
  whole batch when `prompts` are one process's rows (default: the longest of `prompts`).
  """
  b, r = response.shape
  longest = max(len(p) for p in prompts) if longest is None else longest
  width = -(-longest // 32) * 32
  tokens = np.full((b, width + r), pad_id, np.int32)
  valid = np.zeros((b, width + r), bool)
  for i, p in enumerate(prompts):
    tokens[i, width - len(p) : width] = p
    valid[i, width - len(p) : width] = True
  tokens[:, width:] = response
  valid[:, width:] = response_valid
  return tokens, valid
