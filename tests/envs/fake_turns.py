"""A scripted stand-in for `sampling.Conversation` and a character tokenizer, for driver tests."""

from types import SimpleNamespace

import numpy as np

EOS, PAD, OFFSET = 2, 0, 10


class CharTokenizer:
  """One token per character (id = ord + OFFSET); EOS decodes to `end_of_turn`."""

  def __init__(self, end_of_turn=""):
    self.end_of_turn = end_of_turn

  def encode(self, text):
    return [ord(c) + OFFSET for c in text]

  def decode(self, ids):
    return "".join(self.end_of_turn if i == EOS else chr(i - OFFSET) for i in ids if i != PAD)


class ScriptedConversation:
  """Row b's turn t generates `scripts[b][t]` encoded, then EOS (a turn ending in "…" is cut
  without a stop token); `max_new_tokens` cuts a turn. Builds the layout `Conversation.result()`
  promises: prompt, then turns and observations in order, mask 1 on generated tokens only."""

  def __init__(self, scripts, tokenizer, cache_size=None):
    self.scripts, self.tok, self.cache_size = scripts, tokenizer, cache_size
    self.calls = []  # (method, observations or prompts, max_new_tokens)

  @property
  def remaining(self):
    """Like `Conversation.remaining`: slots left when every row's columns are kept aligned."""
    if self.cache_size is None:
      raise AttributeError("remaining")
    return self.cache_size - max(map(len, self.rows))

  def _turn(self, rows, max_new_tokens):
    out_tokens, stopped = [], []
    for b in range(len(self.rows)):
      if b not in rows:
        out_tokens.append([])
        stopped.append(True)
        continue
      text = self.scripts[b][self.turn_index[b]]
      self.turn_index[b] += 1
      ids = self.tok.encode(text.rstrip("…")) + ([] if text.endswith("…") else [EOS])
      ids = ids[:max_new_tokens]
      self.rows[b] += ids
      self.mask[b] += [1] * len(ids)
      out_tokens.append(ids)
      stopped.append(bool(ids) and ids[-1] == EOS)
    return SimpleNamespace(tokens=out_tokens, stopped=stopped)

  def start(self, prompts, *, key, max_new_tokens, temperature=1.0, top_p=None, stop_tokens=()):
    del key, temperature, top_p
    assert tuple(stop_tokens) == (EOS,)
    self.calls.append(("start", prompts, max_new_tokens))
    self.rows = [list(p) for p in prompts]
    self.prompt_lens = [len(p) for p in prompts]
    self.mask = [[0] * len(p) for p in prompts]
    self.turn_index = [0] * len(prompts)
    return self._turn(set(range(len(prompts))), max_new_tokens)

  def extend(self, observations, *, key, max_new_tokens, temperature=1.0, top_p=None,
             stop_tokens=()):  # fmt: skip
    del key, temperature, top_p, stop_tokens
    self.calls.append(("extend", observations, max_new_tokens))
    rows = set()
    for b, obs in enumerate(observations):
      if obs is not None:
        self.rows[b] += obs
        self.mask[b] += [0] * len(obs)
        rows.add(b)
    return self._turn(rows, max_new_tokens)

  def result(self):
    t = max(map(len, self.rows))
    tokens = np.full((len(self.rows), t), PAD, np.int32)
    mask = np.zeros((len(self.rows), t), np.float32)
    for b, (row, m) in enumerate(zip(self.rows, self.mask)):
      tokens[b, : len(row)], mask[b, : len(m)] = row, m
    return SimpleNamespace(tokens=tokens, response_mask=mask, lengths=mask.sum(-1))
