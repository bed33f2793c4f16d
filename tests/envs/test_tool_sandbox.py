"""The python tool runs in the self-play sandbox: output captured, time / memory / write limits
become error results, never a crash."""

import os

from postrain import envs


def _run(code, timeout_s=5.0):
  return envs.run_tool(envs.get_tool("python"), {"code": code}, timeout_s=timeout_s)


def test_prints_come_back():
  r = _run("x = sum(range(10))\nprint(x)\nprint('done')")
  assert r.error is None and r.text == "45\ndone"


def test_no_output_says_so():
  r = _run("x = 1")
  assert r.error is None and "no output" in r.text


def test_exception_is_a_tool_error():
  r = _run("print(undefined_name)")
  assert r.error == "tool_error" and "NameError" in r.text


def test_time_limit():
  r = _run("while True:\n  pass", timeout_s=1.0)
  assert r.error == "timeout"
  assert r.seconds < 10


def test_memory_limit():
  r = _run("x = bytearray(2 * 1024 ** 3)\nprint(len(x))")
  assert r.error == "tool_error" and "memory" in r.text.lower()


def test_writes_outside_the_temp_dir_are_refused(tmp_path):
  target = tmp_path / "escape.txt"
  r = _run(f"open({str(target)!r}, 'w').write('x')")
  assert r.error == "tool_error" and "not allowed" in r.text
  assert not os.path.exists(target)


def test_writes_inside_the_temp_dir_are_allowed():
  r = _run("open('scratch.txt', 'w').write('hi')\nprint(open('scratch.txt').read())")
  assert r.error is None and r.text == "hi"


def test_subprocess_is_refused():
  r = _run("import os\nos.system('echo hi')")
  assert r.error == "tool_error" and "not allowed" in r.text
