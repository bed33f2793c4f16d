"""The episode driver with a scripted turn sampler: observations at their exact places with mask
0, model tokens mask 1, rows finishing at different turns, limits, and per-episode stats."""

import jax
import numpy as np
import pytest
from fake_turns import EOS, CharTokenizer, ScriptedConversation

from postrain import envs

KEY = jax.random.key(0)


def _run(scripts, fmt="compact", cache_size=None, **kw):
  tok = CharTokenizer(envs.get_format(fmt).end_of_turn)
  rows = [envs.make_env("calculator", format=fmt) for _ in scripts]
  prompts = [tok.encode(envs.prompt_text(e.reset(f"q{i}"))) for i, e in enumerate(rows)]
  conv = ScriptedConversation(scripts, tok, cache_size)
  args = dict(max_new_tokens=64, max_turns=4, max_total_tokens=400)
  args.update(kw)
  out, stats = envs.run_episodes(
    conv, rows, prompts, encode=tok.encode, decode=tok.decode, key=KEY, stop_tokens=(EOS,), **args
  )
  return out, stats, rows, prompts, conv, tok


SCRIPTS = [
  ["answer: 7"],  # no tool: one turn
  ["call: calculator(12345 + 678)", "answer: 13023"],
  ["call: calculator(1 / 0)", "call: calculator(6 * 7)", "answer: 42"],
]


@pytest.mark.parametrize("fmt", ["compact", "hermes"])
def test_masks_and_text_over_three_turns(fmt):
  scripts = SCRIPTS
  if fmt == "hermes":
    f = envs.get_format("hermes")
    scripts = [[f.render_call("calculator", {"expression": t[len("call: calculator("):-1]})
                if t.startswith("call:") else t for t in row] for row in SCRIPTS]  # fmt: skip
  out, stats, rows, prompts, conv, tok = _run(
    scripts, fmt, max_new_tokens=200, max_total_tokens=800
  )
  for b, env in enumerate(rows):
    row = out.tokens[b][: len(conv.rows[b])]
    mask = out.response_mask[b][: len(row)]
    # the whole row is the prompt and the conversation as the format renders it
    assert tok.decode(row) == tok.decode(prompts[b]) + env.format.render_turns(env.messages[2:])
    # mask 1 exactly on the model's turns (with their stop tokens) ...
    model = [t for t, m in zip(row, mask) if m]
    assert tok.decode(model) == "".join(s + env.format.end_of_turn for s in scripts[b])
    # ... and 0 on the prompt and on every observation token, in place
    assert not mask[: len(prompts[b])].any()
    context = [t for t, m in zip(row[len(prompts[b]) :], mask[len(prompts[b]) :]) if not m]
    observations = [
      env.format.observation([envs.ToolResult(m["name"], m["content"], m["error"])])
      for m in env.messages if m["role"] == "tool"
    ]  # fmt: skip
    assert tok.decode(context) == "".join(observations)
  np.testing.assert_array_equal(stats.turns, [1, 2, 3])
  np.testing.assert_array_equal(stats.tool_calls, [0, 1, 2])
  np.testing.assert_array_equal(stats.tool_errors, [0, 0, 1])
  assert stats.final_texts == [s[-1] for s in scripts]
  assert stats.tool_results == [[], ["13023"], ["42"]]  # successful calls only
  assert not stats.truncated.any()
  np.testing.assert_array_equal(stats.generated_tokens, out.response_mask.sum(-1))
  m = stats.metrics()
  assert m["turns_per_episode"] == 2.0 and m["tool_calls_per_episode"] == 1.0
  assert m["tool_error_rate"] == pytest.approx(1 / 3)
  assert m["tool_calls_per_episode/calculator"] == 1.0


def test_finished_rows_get_no_observation():
  _, _, _, _, conv, _ = _run(SCRIPTS)
  kinds = [c[0] for c in conv.calls]
  assert kinds == ["start", "extend", "extend"]
  assert conv.calls[1][1][0] is None and conv.calls[1][1][1] is not None
  assert conv.calls[2][1][:2] == [None, None] and conv.calls[2][1][2] is not None


def test_a_row_that_never_calls_a_tool_is_one_turn():
  out, stats, _, _prompts, conv, tok = _run([["answer: 7"], ["answer: 8"]])
  assert [c[0] for c in conv.calls] == ["start"]
  assert tok.decode(out.tokens[1][out.response_mask[1] > 0]) == "answer: 8"
  assert stats.context_tokens.tolist() == [0, 0]


def test_max_turns_ends_and_marks_truncated():
  _out, stats, _rows, *_ = _run(SCRIPTS, max_turns=2)
  np.testing.assert_array_equal(stats.turns, [1, 2, 2])
  np.testing.assert_array_equal(stats.truncated, [False, False, True])
  assert stats.final_texts[2] == "call: calculator(6 * 7)"  # never answered: the verifier sees this


def test_token_budget_ends_a_row_before_its_observation():
  # row 1's first turn is 30 tokens (29 + stop); its observation "result: 13023\n" 14 more
  _out, stats, _, _, conv, _ = _run(SCRIPTS[:2], max_total_tokens=40)
  np.testing.assert_array_equal(stats.turns, [1, 1])
  np.testing.assert_array_equal(stats.truncated, [False, True])
  assert [c[0] for c in conv.calls] == ["start"]
  assert stats.context_tokens.tolist() == [0, 0]


def test_turn_length_is_capped_by_the_remaining_budget():
  _, _, _, _, conv, _ = _run(SCRIPTS[1:2], max_total_tokens=60, max_new_tokens=50)
  # after 30 generated (29 + stop) and 14 observation tokens, 16 remain
  assert [c[2] for c in conv.calls] == [50, 16]


def test_a_cut_turn_ends_the_episode():
  _out, stats, *_ = _run([["call: calculator(1 + 1)…", "answer: 2"]])
  assert stats.turns.tolist() == [1] and stats.truncated.tolist() == [True]


def test_bad_arguments():
  with pytest.raises(ValueError, match="environments"):
    envs.run_episodes(None, [], [[1]], encode=list, decode=str, key=KEY, max_new_tokens=1,
                      max_turns=1, max_total_tokens=1, stop_tokens=())  # fmt: skip
  with pytest.raises(ValueError, match="max_turns"):
    envs.run_episodes(None, [None], [[1]], encode=list, decode=str, key=KEY, max_new_tokens=1,
                      max_turns=0, max_total_tokens=1, stop_tokens=())  # fmt: skip


def test_a_full_cache_ends_the_continuing_rows():
  # after the first turn (30 tokens) row 1 needs 1 + 14 slots for its observation and at least
  # one new token
  tok = CharTokenizer()
  env = envs.make_env("calculator", format="compact")
  prompt_len = len(tok.encode(envs.prompt_text(env.reset("q0"))))
  _, stats, _, _, conv, _ = _run(SCRIPTS[1:2], cache_size=prompt_len + 30 + 10)
  assert [c[0] for c in conv.calls] == ["start"]
  assert stats.truncated.tolist() == [True] and stats.context_tokens.tolist() == [0]
  # with room for 5 new tokens, the second turn is capped at 4 (a power of two)
  _, stats, _, _, conv, _ = _run(SCRIPTS[1:2], cache_size=prompt_len + 30 + 15 + 5)
  assert [c[2] for c in conv.calls] == [64, 4]
