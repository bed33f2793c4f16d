"""Tokenizers behind one small interface, and chat templates written in Python.

tok = tokenizers.from_gguf(models.smollm2_gguf_path())   # byte-level BPE from GGUF metadata
tok = tokenizers.HFTokenizer("dir/tokenizer.json")       # any HF `tokenizers` JSON
tok = tokenizers.SentencePieceTokenizer("spm.model")
text = tokenizers.apply_chat_template([{"role": "user", "content": "2+2?"}], "smollm2")
ids = tok.encode(text)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import tokenizers as hf_tokenizers
from tokenizers import AddedToken, Regex, decoders, pre_tokenizers

from postrain._validation import check_choice


@runtime_checkable
class Tokenizer(Protocol):
  """What postrain needs from a tokenizer; special ids are -1 when the vocabulary has none."""

  vocab_size: int
  bos_id: int
  eos_id: int
  pad_id: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


class SentencePieceTokenizer:
  """A sentencepiece `.model` file. `encode` adds no BOS/EOS."""

  def __init__(self, path: str | os.PathLike):
    import sentencepiece as spm

    path = os.fspath(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"sentencepiece model not found: {path}")
    try:
      self._sp = spm.SentencePieceProcessor(model_file=path)
    except (RuntimeError, OSError) as err:  # a garbage or truncated file
      raise ValueError(
        f"{path} is not a readable sentencepiece model ({str(err).splitlines()[0][:200]}). "
        "Delete it to have the trainer rebuild it from the task corpus (a workdir's "
        "tokenizer/ directory), or point tokenizer.path at a valid .model file."
      ) from None
    self.vocab_size = int(self._sp.get_piece_size())
    self.bos_id, self.eos_id, self.pad_id = (
        int(self._sp.bos_id()), int(self._sp.eos_id()), int(self._sp.pad_id()))  # fmt: skip

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])


def _token_content(value: Any) -> str | None:
  # tokenizer_config.json writes special tokens as strings or as AddedToken dicts.
  return value.get("content") if isinstance(value, dict) else value


class HFTokenizer:
  """A Hugging Face `tokenizers` tokenizer (a `tokenizer.json` path or a `tokenizers.Tokenizer`).

  Special tokens are given as strings or ids (`bos`, `eos`, `pad`); when omitted and `path` is a
  file, they are read from the `tokenizer_config.json` next to it (absent ones are -1).
  `encode` runs no post-processor (no BOS/EOS added) unless `add_special_tokens=True`;
  `decode` keeps special tokens unless `skip_special_tokens=True`.
  """

  def __init__(
    self,
    path_or_tokenizer: str | os.PathLike | hf_tokenizers.Tokenizer,
    *,
    bos: str | int | None = None,
    eos: str | int | None = None,
    pad: str | int | None = None,
    add_special_tokens: bool = False,
    skip_special_tokens: bool = False,
  ):
    if isinstance(path_or_tokenizer, hf_tokenizers.Tokenizer):
      self._tok = path_or_tokenizer
    else:
      path = os.fspath(path_or_tokenizer)
      if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
      self._tok = hf_tokenizers.Tokenizer.from_file(path)
      config = os.path.join(os.path.dirname(path), "tokenizer_config.json")
      if os.path.exists(config):
        with open(config) as f:
          cfg = json.load(f)
        bos = bos if bos is not None else _token_content(cfg.get("bos_token"))
        eos = eos if eos is not None else _token_content(cfg.get("eos_token"))
        pad = pad if pad is not None else _token_content(cfg.get("pad_token"))
    self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
    self.bos_id, self.eos_id, self.pad_id = (self._id(bos), self._id(eos), self._id(pad))
    self.add_special_tokens = add_special_tokens
    self.skip_special_tokens = skip_special_tokens

  def _id(self, token: str | int | None) -> int:
    if token is None:
      return -1
    if isinstance(token, int):
      return token
    token_id = self._tok.token_to_id(token)
    if token_id is None:
      raise ValueError(f"Special token {token!r} is not in the vocabulary.")
    return int(token_id)

  @property
  def backend(self) -> hf_tokenizers.Tokenizer:
    return self._tok

  def encode(self, text: str) -> list[int]:
    return list(self._tok.encode(text, add_special_tokens=self.add_special_tokens).ids)

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=self.skip_special_tokens)


# ---------------------------------------------------------------------------------------------
# GGUF: byte-level BPE rebuilt from the vocabulary and merges in the file's metadata.

# How each llama.cpp pre-tokenizer type (`tokenizer.ggml.pre`) splits text before BPE
# (llama.cpp src/llama-vocab.cpp). `None`: GPT-2's regex (ByteLevel's own).
_GPT2_PRE = ("gpt2", "default", "mpt", "olmo", "jais")
_DIGITS_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone")
_SPLITS = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}  # fmt: skip
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def _pre_tokenizer(pre: str):
  if pre in _GPT2_PRE:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in _DIGITS_PRE:
    # Every digit on its own, then GPT-2's regex (how SmolLM2's own tokenizer.json splits).
    return pre_tokenizers.Sequence(
      [
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
      ]
    )
  if pre in _SPLITS:
    return pre_tokenizers.Sequence(
      [
        pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
      ]
    )
  known = sorted([*_GPT2_PRE, *_DIGITS_PRE, *_SPLITS])
  raise ValueError(f"GGUF pre-tokenizer {pre!r} is not supported; known: {known}.")


def from_gguf(path: str | os.PathLike) -> HFTokenizer:
  """The byte-level BPE tokenizer (`tokenizer.ggml.model == "gpt2"`) stored in a GGUF file.

  Control tokens (e.g. `<|im_start|>`) become special tokens matched whole in the text; the
  special ids come from `tokenizer.ggml.{bos,eos,padding}_token_id`.
  """
  from postrain.models._gguf_file import GGUFFile

  meta = GGUFFile(path).metadata

  def field(name, default=None):
    return meta.get(name, default)

  kind = field("tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(
      f"{path}: GGUF tokenizer model {kind!r} is not supported (only byte-level BPE 'gpt2')."
    )
  tokens = field("tokenizer.ggml.tokens")
  merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
  types = field("tokenizer.ggml.token_type") or [1] * len(tokens)
  vocab = {t: i for i, t in enumerate(tokens)}
  tok = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE(vocab, merges))
  tok.pre_tokenizer = _pre_tokenizer(field("tokenizer.ggml.pre", "default"))
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(
    [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == _CONTROL]
  )
  tok.add_tokens([
      AddedToken(t, special=False, normalized=False)
      for t, k in zip(tokens, types) if k == _USER_DEFINED
  ])  # fmt: skip
  ids = [field(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")]
  bos, eos, pad = (-1 if i is None else int(i) for i in ids)
  return HFTokenizer(tok, bos=bos, eos=eos, pad=pad)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """A tokenizer from a `.gguf`, a sentencepiece `.model`, a `tokenizer.json` or its directory."""
  path = os.fspath(path)
  if path.endswith(".gguf"):
    return from_gguf(path)
  if path.endswith(".model"):
    return SentencePieceTokenizer(path)
  return HFTokenizer(path)


# ---------------------------------------------------------------------------------------------
# Chat templates.

TEMPLATES = ("chatml", "smollm2", "qwen3")
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def _chatml(messages: Sequence[dict[str, str]]) -> str:
  return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def apply_chat_template(
  messages: Sequence[dict[str, str]],
  template_name: str,
  *,
  add_generation_prompt: bool = True,
  enable_thinking: bool = True,
) -> str:
  """Renders `messages` ([{"role": ..., "content": ...}]) as the model's prompt text.

  Templates:
    "chatml": `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, then
      `<|im_start|>assistant\\n` when `add_generation_prompt`.
    "smollm2": ChatML with SmolLM2-Instruct's default system message when the first message is not
      a system message (its GGUF/hub template).
    "qwen3": ChatML as in Qwen3's template without tools: earlier assistant turns keep only the text
      after `</think>`; `enable_thinking=False` appends an empty `<think>\\n\\n</think>\\n\\n` block
      to the generation prompt.
  """
  check_choice("template_name", template_name, TEMPLATES)
  for i, m in enumerate(messages):
    if not isinstance(m, dict) or not {"role", "content"} <= set(m):
      raise ValueError(f"`messages[{i}]` must be a dict with 'role' and 'content', got {m!r}.")
  messages = list(messages)
  if template_name == "smollm2" and (not messages or messages[0]["role"] != "system"):
    messages = [{"role": "system", "content": SMOLLM2_SYSTEM}, *messages]
  if template_name == "qwen3":
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    messages = [
        {**m, "content": m["content"].split("</think>")[-1].lstrip("\n")}
        if m["role"] == "assistant" and i < last_user else m
        for i, m in enumerate(messages)
    ]  # fmt: skip
  text = _chatml(messages)
  if add_generation_prompt:
    text += "<|im_start|>assistant\n"
    if template_name == "qwen3" and not enable_thinking:
      text += "<think>\n\n</think>\n\n"
  return text
