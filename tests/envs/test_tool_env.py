"""ToolEnv: tool calls, error observations (malformed JSON, unknown tool, wrong argument types,
timeouts) counted in the stats, shaping rewards, and the tool / environment registries."""

import json
import time

import jsonschema
import pytest

from postrain import envs


def _hermes(name, arguments):
  return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def test_successful_call_and_final_answer():
  env = envs.make_env("calculator", format="hermes")
  messages = env.reset("What is 12345 + 678?")
  assert [m["role"] for m in messages] == ["system", "user"]
  assert '"name": "calculator"' in messages[0]["content"]
  obs, _reward, done = env.step(
    "Let me compute.\n" + _hermes("calculator", {"expression": "12345 + 678"})
  )
  assert not done and "<tool_response>\n13023\n</tool_response>" in obs
  assert obs.endswith("<|im_start|>assistant\n")
  assert env.step("answer: 13023") == (None, 0.0, True)
  st = env.episode_stats()
  assert (
    st["tool_calls"] == 1 and st["tool_errors"] == 0 and st["calls_per_tool"] == {"calculator": 1}
  )


@pytest.mark.parametrize(
  "text, kind, message",
  [
    ("<tool_call>\n{name: calculator}\n</tool_call>", "malformed", "malformed JSON"),
    ("<tool_call>\n[1, 2]\n</tool_call>", "malformed", "must be"),
    ('<tool_call>\n{"name": "calculator"', "malformed", "unclosed"),
    (_hermes("weather", {"city": "Paris"}), "unknown_tool", "unknown tool 'weather'"),
    (_hermes("calculator", {"expression": 12}), "bad_arguments", "is not of type 'string'"),
    (_hermes("calculator", {"expr": "1+1"}), "bad_arguments", "required"),
    (_hermes("calculator", {"expression": "1+1", "x": 1}), "bad_arguments", "Additional"),
    (_hermes("calculator", "not json"), "malformed", "arguments"),
    (_hermes("calculator", {"expression": "1/0"}), "tool_error", "division by zero"),
  ],
)
def test_errors_become_observations_and_are_counted(text, kind, message):
  env = envs.make_env("calculator", format="hermes")
  env.reset("q")
  obs, _, done = env.step(text)
  assert not done and message in obs
  st = env.episode_stats()
  assert st["tool_calls"] == 1 and st["tool_errors"] == 1 and st["errors_per_kind"] == {kind: 1}


def test_arguments_as_a_json_string_are_accepted():
  env = envs.make_env("calculator", format="hermes")
  env.reset("q")
  obs, _, _ = env.step(_hermes("calculator", json.dumps({"expression": "6*7"})))
  assert "\n42\n" in obs


def test_compact_calls():
  env = envs.make_env("calculator", format="compact")
  env.reset("q")
  assert env.step("call: calculator(2 + 3)")[0] == "result: 5\n"
  assert env.step('call: calculator({"expression": "2*3"})')[0] == "result: 6\n"
  assert env.step("call: calculator 2 + 3")[0].startswith("error: malformed call")
  assert env.step("call: calculator({bad json)")[0].startswith("error: malformed JSON")
  assert env.step("call: nope(1)")[0].startswith("error: unknown tool")
  assert env.step("answer: 5")[2] is True
  st = env.episode_stats()
  assert st["tool_calls"] == 5 and st["tool_errors"] == 3
  assert st["tool_results"] == ["5", "6"]  # the successful calls' results, in order


def test_timeout_of_a_slow_tool_and_shaping_rewards():
  slow = envs.Tool(
    "slow", lambda seconds: time.sleep(seconds) or "woke", "Sleeps.",
    {"type": "object", "properties": {"seconds": {"type": "number"}}, "required": ["seconds"]},
  )  # fmt: skip
  env = envs.ToolEnv([slow, "calculator"], format="hermes", timeout_s=0.2, success_reward=0.1,
                     error_reward=-0.2)  # fmt: skip
  env.reset("q")
  start = time.perf_counter()
  obs, reward, _ = env.step(
    _hermes("slow", {"seconds": 3}) + _hermes("calculator", {"expression": "1"})
  )
  assert time.perf_counter() - start < 2.0
  assert "timed out after 0.2s" in obs and "\n1\n" in obs
  assert reward == pytest.approx(-0.2 + 0.1)
  assert env.episode_stats()["errors_per_kind"] == {"timeout": 1}


def test_a_tool_that_raises_is_an_error_result():
  def broken(x: str) -> str:
    raise KeyError("boom")

  tool = envs.Tool(
    "broken", broken, "Breaks.", {"type": "object", "properties": {"x": {"type": "string"}}}
  )
  r = envs.run_tool(tool, {"x": "1"}, timeout_s=1.0)
  assert r.error == "tool_error" and "boom" in r.text


def test_user_tool_by_registration_and_env_by_import_string():
  def shout(text: str) -> str:
    return text.upper()

  envs.register_tool(
    envs.Tool("shout_t", shout, "Upper-cases.", {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
    overwrite=True,
  )  # fmt: skip
  env = envs.make_env("tools", tools=("shout_t", "calculator"), format="compact")
  env.reset("q")
  assert env.step("call: shout_t(hello)")[0] == "result: HELLO\n"
  with pytest.raises(ValueError, match="already registered"):
    envs.register_tool(envs.get_tool("shout_t"))
  # an Env subclass by import string, options filtered by its signature
  # This file's module name as pytest imported it (`test_tool_env` under the `pytest` script,
  # which puts no repository root on sys.path): the import string resolves through sys.modules.
  custom = envs.make_env(f"{__name__}:EchoEnv", format="compact", timeout_s=1.0)
  assert type(custom).__name__ == "EchoEnv" and custom.reset("x")[0]["content"] == "x"
  assert custom.fmt == "compact"  # `format` passed, `timeout_s` left out (not in its signature)
  # a callable returning an env
  assert type(envs.make_env(f"{__name__}:make_echo")).__name__ == "EchoEnv"
  assert envs.make_env("none") is None


def test_bad_names_name_the_config_key():
  with pytest.raises(ValueError, match=r"config\.env\.name"):
    envs.make_env("no_such_env")
  with pytest.raises(ValueError, match=r"config\.env\.name"):
    envs.make_env("no_such_pkg.mod:thing")
  with pytest.raises(ValueError, match="unknown tool"):
    envs.ToolEnv(["no_such_tool"])
  with pytest.raises(
    jsonschema.SchemaError
  ):  # an invalid JSON schema is refused when the tool is made
    envs.Tool("bad", str, "x", {"type": "no-such-type"})


class EchoEnv(envs.Env):
  def __init__(self, format="hermes"):
    self.fmt = format

  def reset(self, problem):
    return [{"role": "user", "content": envs.question_of(problem)}]

  def step(self, model_text):
    return None, 0.0, True


def make_echo():
  return EchoEnv()
