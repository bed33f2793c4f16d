"""A small sentencepiece tokenizer trained on the task corpus (the from-scratch default).

Digits are split (`split_digits=True`) so numbers tokenise one digit per token; newlines are a
user-defined piece and the normaliser is the identity with whitespace kept, so a reference
solution decodes back to exactly the same text. Special ids: pad=0, bos=1, eos=2, unk=3. The
model is cached under `cache_dir` by a hash of the corpus and the options: the same corpus and
options reuse the file without training.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Sequence

from postrain.tasks._problem import Problem
from postrain.tasks._prompt_format import INSTRUCTIONS, format_prompt
from postrain.tasks._scrl_chains import format_scrl_prompt, scrl_chain, scrl_reference_completion
from postrain.tasks._solutions import reference_solution

MODEL_TYPES = ("bpe", "unigram")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


def task_corpus(problems: Sequence[Problem], *, include_scrl: bool = True) -> list[str]:
  """Texts the model will read and write: prompts (both answer formats' instructions), reference
  solutions, and (optionally) SCRL curriculum prompts and completions."""
  texts = list(INSTRUCTIONS.values())
  for problem in problems:
    solution = reference_solution(problem)
    texts.append(format_prompt(problem) + ("\n" + solution if solution else ""))
    if include_scrl:
      chain = scrl_chain(problem)
      if chain is not None:
        for fmt in ("lines", "blocks"):
          texts.append(
            format_scrl_prompt(chain, completion_format=fmt)
            + "\n"
            + scrl_reference_completion(chain, completion_format=fmt)
          )
  return texts


def train_tokenizer(
  texts: Iterable[str],
  cache_dir: str | os.PathLike,
  *,
  vocab_size: int = 512,
  model_type: str = "bpe",
  split_digits: bool = True,
  byte_fallback: bool = False,
  user_defined_symbols: Sequence[str] = ("\n",),
  character_coverage: float = 1.0,
) -> str:
  """Trains (or reuses) a sentencepiece model; returns the `.model` path.

  Args:
    texts: the corpus (e.g. `task_corpus(problems)`).
    cache_dir: directory for the cached model (created if missing).
    vocab_size: upper bound on the vocabulary (`hard_vocab_limit=False`: a small corpus may give
      fewer pieces; read the real size from the loaded model).
    model_type: "bpe" or "unigram".
    split_digits: one token per digit.
    byte_fallback: add the 256 byte pieces so any text is encodable (needs vocab_size > 260).
    user_defined_symbols: pieces kept whole (the newline by default).
    character_coverage: sentencepiece's character coverage (1.0 keeps every character seen).

  Returns:
    Path of `spm_<model_type>_<vocab_size>_<hash>.model` in `cache_dir`.
  """
  import sentencepiece as spm

  if model_type not in MODEL_TYPES:
    raise ValueError(f"`model_type` must be one of {list(MODEL_TYPES)}, got {model_type!r}.")
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 8:
    raise ValueError(f"`vocab_size` must be an int >= 8, got {vocab_size!r}.")
  texts = [t for t in texts if t]
  if not texts:
    raise ValueError("`texts` is empty: nothing to train the tokenizer on.")
  options = {
    "vocab_size": vocab_size,
    "model_type": model_type,
    "split_digits": split_digits,
    "byte_fallback": byte_fallback,
    "user_defined_symbols": list(user_defined_symbols),
    "character_coverage": character_coverage,
    "pad_id": PAD_ID,
    "bos_id": BOS_ID,
    "eos_id": EOS_ID,
    "unk_id": UNK_ID,
  }
  digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
  for text in texts:
    digest.update(text.encode("utf-8") + b"\0")
  os.makedirs(cache_dir, exist_ok=True)
  path = os.path.join(
    os.fspath(cache_dir), f"spm_{model_type}_{vocab_size}_{digest.hexdigest()[:16]}.model"
  )
  if os.path.isfile(path):
    return path
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(texts),
    model_writer=model,
    hard_vocab_limit=False,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    allow_whitespace_only_pieces=True,
    max_sentence_length=1 << 16,
    minloglevel=2,
    **{k: v for k, v in options.items() if k != "user_defined_symbols"},
    user_defined_symbols=list(user_defined_symbols),
  )
  # Write then rename: a concurrent reader never sees a half-written model.
  fd, tmp = tempfile.mkstemp(dir=os.fspath(cache_dir), suffix=".tmp")
  with os.fdopen(fd, "wb") as f:
    f.write(model.getvalue())
  os.replace(tmp, path)
  return path
