"""The episode driver: a batch of multi-turn episodes with a turn sampler.

    out, stats = run_episodes(conversation, envs, prompts, encode=tok.encode, decode=decode,
                              key=key, max_new_tokens=64, max_turns=4, max_total_tokens=192,
                              stop_tokens=(eos,))

`conversation` is a fresh turn sampler with the interface of `postrain.sampling.Conversation`:
`start(prompts, *, key, max_new_tokens, temperature, top_p, stop_tokens)` and
`extend(observations, *, key, ...)` each return the turn (per row the generated token ids and
whether the row stopped at a stop token), `result()` the whole batch as a `SampleOutput` whose
`response_mask` is 1 exactly on model-generated tokens (observations are context, mask 0) and
whose log-probs cover every generated token of every turn.

Row b is one episode of `envs[b]` (reset by the caller; its prompt is `prompts[b]`). After each
turn the driver decodes the row's new tokens (without the stop token), calls `env.step`, and
either appends the observation's tokens or ends the row. A row ends when
  * the environment says done, or returns no observation (a final answer);
  * it has taken `max_turns` turns;
  * its turn hit `max_new_tokens` without a stop token (cut mid-turn; counted as truncated);
  * the observation plus one more token would pass `max_total_tokens`, the budget of tokens
    after the prompt (generated + observation tokens); counted as truncated;
  * the conversation's cache (`conversation.remaining` free slots, when it has that attribute)
    cannot hold the observations and one more token; every continuing row ends, truncated.
Each turn generates at most `min(max_new_tokens, the largest remaining budget of its rows, the
free cache slots)` tokens, rounded down to a power of two when below `max_new_tokens` (the decode
loop compiles once per length), so a row with less budget than that may exceed it by the rest of its last turn (then it
ends, truncated); the sampler's cache size is the hard limit.

Several processes, each with the environments of its own rows (the trainer's env stage): the
`conversation` is their view of one global conversation, and `reduce_max` (the maximum of an int
over the processes) makes the three batch-wide decisions global (whether any row continues, the
turn's length, the longest observation), so every process runs the same turns as one process
holding every row.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass
class EpisodeStats:
  """Per-episode counts of one batch (B rows).

  turns i32[B], tool_calls i32[B], tool_errors i32[B], generated_tokens i32[B] (model tokens incl.
  stop tokens), context_tokens i32[B] (observation tokens), truncated bool[B], shaping f32[B]
  (sum of the env's per-turn rewards), final_texts (the last model turn of each row, what the
  verifier scores), texts (every model turn of each row), calls_per_tool {name: i32[B]},
  errors_per_kind {kind: int}, tool_seconds (summed over rows), env_seconds (wall time in
  `env.step`, tools included), tool_results (per row the texts of its successful calls).
  """

  turns: np.ndarray
  tool_calls: np.ndarray
  tool_errors: np.ndarray
  generated_tokens: np.ndarray
  context_tokens: np.ndarray
  truncated: np.ndarray
  shaping: np.ndarray
  final_texts: list[str]
  texts: list[list[str]]
  calls_per_tool: dict[str, np.ndarray]
  errors_per_kind: dict[str, int]
  tool_seconds: float
  env_seconds: float
  tool_results: list[list[str]] = dataclasses.field(default_factory=list)

  def metrics(self) -> dict[str, float]:
    """Batch means: turns_per_episode, tool_calls_per_episode (and per tool), tool_error_rate
    (errors / calls, 0 without calls), generated / context tokens per episode, time in tools."""
    calls = int(self.tool_calls.sum())
    out = {
      "turns_per_episode": float(np.mean(self.turns)),
      "tool_calls_per_episode": float(np.mean(self.tool_calls)),
      "tool_error_rate": float(self.tool_errors.sum()) / max(calls, 1),
      "generated_tokens_per_episode": float(np.mean(self.generated_tokens)),
      "context_tokens_per_episode": float(np.mean(self.context_tokens)),
      "truncated_episode_frac": float(np.mean(self.truncated)),
      "tool_time_s": float(self.tool_seconds),
      "env_time_s": float(self.env_seconds),
    }
    for name, counts in sorted(self.calls_per_tool.items()):
      out[f"tool_calls_per_episode/{name}"] = float(np.mean(counts))
    return out


def _turn_rows(turn: Any) -> tuple[list[list[int]], list[bool]]:
  """(per-row generated token ids, per-row stopped flags) of a turn result."""
  tokens = [list(map(int, t)) for t in turn.tokens]
  stopped = [bool(s) for s in turn.stopped]
  return tokens, stopped


def run_episodes(
  conversation: Any,
  envs: Sequence[Any],
  prompts: Sequence[Sequence[int]],
  *,
  encode: Callable[[str], list[int]],
  decode: Callable[[list[int]], str],
  key: jax.Array,
  max_new_tokens: int,
  max_turns: int,
  max_total_tokens: int,
  stop_tokens: Sequence[int],
  temperature: float = 1.0,
  top_p: float | None = None,
  top_k: int | None = None,
  reduce_max: Callable[[int], int] | None = None,
) -> tuple[Any, EpisodeStats]:
  """Runs one episode per row (see the module docstring); returns `(conversation.result(),
  EpisodeStats)`. `decode` receives a turn's token ids without its stop token. `reduce_max`: the
  maximum of an int over every process (None: one process, the identity)."""
  b = len(prompts)
  if len(envs) != b:
    raise ValueError(f"`envs` has {len(envs)} environments for {b} prompts")
  if max_turns < 1:
    raise ValueError(f"`max_turns` must be >= 1, got {max_turns}")
  if max_total_tokens < 1 or max_new_tokens < 1:
    raise ValueError("`max_total_tokens` and `max_new_tokens` must be >= 1")
  stops = set(int(s) for s in stop_tokens)
  reduce_max = reduce_max or int
  turns = np.zeros(b, np.int32)
  generated = np.zeros(b, np.int32)
  context = np.zeros(b, np.int32)
  truncated = np.zeros(b, bool)
  shaping = np.zeros(b, np.float32)
  texts: list[list[str]] = [[] for _ in range(b)]
  active = np.ones(b, bool)
  env_seconds = 0.0
  kw = dict(temperature=temperature, top_p=top_p, stop_tokens=tuple(stop_tokens))
  if top_k:
    kw["top_k"] = top_k
  budget = min(max_new_tokens, max_total_tokens)
  turn = conversation.start(
    [list(p) for p in prompts], key=jax.random.fold_in(key, 0), max_new_tokens=budget, **kw
  )
  for t in range(1, max_turns + 1):
    tokens, stopped = _turn_rows(turn)
    observations: list[list[int] | None] = [None] * b
    for row in np.flatnonzero(active):
      ids = tokens[row]
      generated[row] += len(ids)
      turns[row] += 1
      text = decode([i for i in ids if i not in stops])
      texts[row].append(text)
      start = time.perf_counter()
      obs, reward, done = envs[row].step(text)
      env_seconds += time.perf_counter() - start
      shaping[row] += float(reward)
      if done or obs is None:
        active[row] = False
        continue
      obs_ids = list(encode(obs))
      used = int(generated[row] + context[row])
      if not stopped[row] or t == max_turns or used + len(obs_ids) + 1 > max_total_tokens:
        active[row], truncated[row] = False, True
        continue
      context[row] += len(obs_ids)
      observations[row] = obs_ids
    if not reduce_max(int(active.any())):
      break
    live = np.flatnonzero(active)
    budget = max((max_total_tokens - int(generated[r] + context[r]) for r in live), default=0)
    limit = min(max_new_tokens, reduce_max(budget))
    room = getattr(conversation, "remaining", None)  # free cache slots (sampling.Conversation)
    if room is not None:  # the chunk [last token, observation] and the new tokens must fit
      longest = reduce_max(max((len(observations[r]) for r in live), default=0))
      limit = min(limit, int(room) - 1 - longest)
      if limit < 1:  # the cache is full: every continuing row ends here
        truncated[live], active[live] = True, False
        context[live] -= np.asarray([len(observations[r]) for r in live], np.int32)
        break
    if limit < max_new_tokens:  # a power of two: few distinct decode-loop compilations
      limit = 1 << (limit.bit_length() - 1)
    turn = conversation.extend(
      observations, key=jax.random.fold_in(key, t), max_new_tokens=limit, **kw
    )
  out = conversation.result()
  calls, errors = np.zeros(b, np.int32), np.zeros(b, np.int32)
  per_tool: dict[str, np.ndarray] = {}
  per_kind: dict[str, int] = {}
  tool_seconds = 0.0
  results: list[list[str]] = []
  for row, env in enumerate(envs):
    st = env.episode_stats() if hasattr(env, "episode_stats") else {}
    results.append([str(r) for r in st.get("tool_results", [])])
    calls[row] = int(st.get("tool_calls", 0))
    errors[row] = int(st.get("tool_errors", 0))
    tool_seconds += float(st.get("tool_seconds", 0.0))
    for name, n in st.get("calls_per_tool", {}).items():
      per_tool.setdefault(name, np.zeros(b, np.int32))[row] = n
    for kind, n in st.get("errors_per_kind", {}).items():
      per_kind[kind] = per_kind.get(kind, 0) + int(n)
  stats = EpisodeStats(
    turns=turns,
    tool_calls=calls,
    tool_errors=errors,
    generated_tokens=generated,
    context_tokens=context,
    truncated=truncated,
    shaping=shaping,
    final_texts=[row[-1] if row else "" for row in texts],
    texts=texts,
    calls_per_tool=per_tool,
    errors_per_kind=per_kind,
    tool_seconds=tool_seconds,
    env_seconds=env_seconds,
    tool_results=results,
  )
  return out, stats


def prompt_text(
  messages: Sequence[dict[str, str]],
  *,
  chat_template: Callable[[list[dict[str, str]]], str] | None = None,
  instruction: str | None = None,
) -> str:
  """The prompt of an environment's `reset` messages (a system message, then the user's).

  With a chat template: the template of the messages (the instruction appended to the user's
  text, as `tasks.format_prompt` does). Plain: the system text, a blank line, then
  `tasks.format_prompt`'s "{instruction}\\n\\nQuestion: ...\\nAnswer:".
  """
  from postrain import tasks

  system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or None
  users = [m["content"] for m in messages if m["role"] == "user"]
  if len(users) != 1:
    raise ValueError(f"reset messages must hold exactly one user message, got {len(users)}")
  text = tasks.format_prompt(
    users[0], chat_template=chat_template, instruction=instruction,
    system=system if chat_template is not None else None,
  )  # fmt: skip
  if chat_template is None and system:
    text = f"{system}\n\n{text}"
  return text
