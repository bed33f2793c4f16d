"""The self-play execution gate (arXiv 2605.22217): sandbox, determinism, limits, leak rate."""

import dataclasses
import os
import textwrap
import warnings

import numpy as np
import pytest

from postrain.tasks.selfplay._gate import (
  GateVerdict,
  execution_gate,
  execution_gate_batch,
  leaky_gate,
  output_leaks,
)
from postrain.tasks.selfplay._sandbox import SandboxConfig, run_program

FAST = SandboxConfig(timeout_s=6.0, cpu_s=1, memory_mb=256)
# The same limits set by the child itself instead of in preexec_fn.
FAST_BOOT = dataclasses.replace(FAST, limits_in="bootstrap")


def prog(src: str) -> str:
  return textwrap.dedent(src).lstrip()


GOOD = prog("""
    def f(xs, k):
      out = sorted(x * x for x in xs if x % 2)
      return out[:k] + [sum(xs)]
    """)


def test_admits_a_good_program():
  v = execution_gate(GOOD, "[3, 1, 4, 1, 5], 2", config=FAST)
  assert v == GateVerdict(True, "ok", "[1, 1, 14]")


@pytest.mark.parametrize(
  ("src", "reason"),
  [
    ("import random\ndef f(x):\n  return random.random() + x\n", "nondeterministic"),
    ("import time\ndef f(x):\n  return time.time_ns() + x\n", "nondeterministic"),
    # Set order of strings depends on the per-process hash seed.
    ("def f(x):\n  return list({'a' + str(i) for i in range(5 * x)})\n", "nondeterministic"),
    ("def f(x):\n  while True:\n    x += 1\n", "timeout"),
    ("import time\ndef f(x):\n  time.sleep(60)\n", "timeout"),
    ("def f(x):\n  return [x] * (10 ** 9)\n", "memory"),
    ("def f(x):\n  return bytearray(2 ** 34)\n", "memory"),
    ("def f(x):\n  return x / 0\n", "crash"),
    ("def f(x):\n  return f(x + 1)\n", "crash"),
    ("def g(x):\n  return x\n", "crash"),  # no entry function
    ("def f(x)\n  return x\n", "syntax_error"),
    ("import socket\ndef f(x):\n  return x\n", "sandbox_violation"),
    ("import os\ndef f(x):\n  os.system('true')\n  return x\n", "sandbox_violation"),
    ("def f(x):\n  return 'x' * 50000\n", "output_too_long"),
    ("def f(x):\n  return 'the secret answer'\n", "output_leak"),
  ],
)
def test_rejects(src, reason):
  v = execution_gate(src, "7", config=FAST)
  assert not v.admitted
  assert v.reason == reason, v


def test_bad_input_and_banned_words():
  assert execution_gate(GOOD, "open('x')", config=FAST).reason == "bad_input"
  v = execution_gate(GOOD, "[1], 1", config=FAST, banned_words=("sorted",))
  assert v == GateVerdict(False, "banned_word")
  # Short outputs are not treated as leaks: "1" appears in many programs by chance.
  assert execution_gate("def f(x):\n  return 1\n", "0", config=FAST).admitted
  assert (
    execution_gate(
      "def f(x):\n  return 1\n", "0", config=FAST, reject_output_leak=True, min_leak_chars=1
    ).reason
    == "output_leak"
  )


OUTSIDE_WRITES = {
  "open": "open({p!r}, 'w').write('x')",
  "append": "open({p!r}, 'a').write('x')",
  "os.open": "import os; os.close(os.open({p!r}, os.O_WRONLY | os.O_CREAT))",
  "pathlib": "import pathlib; pathlib.Path({p!r}).write_text('x')",
  "relative": "open('../' * 40 + {p!r}.lstrip('/'), 'w').write('x')",
  "mkdir": "import os; os.mkdir({p!r})",
  "rename": "open('a', 'w').close(); import os; os.rename('a', {p!r})",
  "shutil.copy": "open('a', 'w').close(); import shutil; shutil.copy('a', {p!r})",
  "symlink": "import os; os.symlink('/', 'escape'); open('escape/' + {p!r}.lstrip('/'), 'w')",
  "chdir": "import os; os.chdir('/'); open({p!r}, 'w').write('x')",
  "mkfifo": "import os; os.mkfifo({p!r})",
}


@pytest.mark.parametrize("how", sorted(OUTSIDE_WRITES))
def test_nothing_is_written_outside_the_temp_dir(tmp_path, how):
  target = str(tmp_path / f"escaped_{how}")
  body = OUTSIDE_WRITES[how].format(p=target)
  # The program swallows the error and returns normally: the recorded violation still rejects.
  src = f"def f(x):\n  try:\n    {body}\n  except Exception:\n    pass\n  return x + 1\n"
  res = run_program(src, "1", FAST)
  assert res.status in ("sandbox_violation", "crash"), res
  assert not os.path.exists(target)
  assert os.listdir(tmp_path) == []
  assert not execution_gate(src, "1", config=FAST).admitted
  assert not os.path.exists(target)


def test_existing_files_outside_are_not_modified_or_removed(tmp_path):
  victim = tmp_path / "victim.txt"
  victim.write_text("keep")
  for body in [
    f"open({str(victim)!r}, 'w')",
    f"import os; os.remove({str(victim)!r})",
    f"import os; os.truncate({str(victim)!r}, 0)",
  ]:
    res = run_program(f"def f(x):\n  {body}\n  return 0\n", "0", FAST)
    assert res.status == "sandbox_violation", res
    assert victim.read_text() == "keep"
  # Reading outside is allowed.
  src = f"def f(x):\n  return open({str(victim)!r}).read()\n"
  assert run_program(src, "0", FAST).output == "'keep'"


def test_writes_inside_the_temp_dir_work_and_env_points_there():
  src = prog("""
      import os, tempfile
      def f(x):
        with open('data.txt', 'w') as fh:
          fh.write(str(x * 2))
        os.mkdir('sub')
        with tempfile.NamedTemporaryFile('w', delete=False) as fh:
          fh.write('t')
        same = os.path.realpath(os.environ['HOME']) == os.path.realpath(os.getcwd())
        same &= os.path.dirname(os.path.realpath(fh.name)) == os.path.realpath(os.getcwd())
        return int(open('data.txt').read()), same
      """)
  v = execution_gate(src, "21", config=FAST)
  assert v == GateVerdict(True, "ok", "(42, True)")


def test_fresh_directory_per_run():
  src = prog("""
      import os
      def f(x):
        existed = os.path.exists('marker')
        open('marker', 'w').close()
        return existed
      """)
  assert execution_gate(src, "0", config=FAST, reject_output_leak=False).output == "False"


def test_leak_rate():
  bad = "def f(x):\n  return x / 0\n"
  assert execution_gate(bad, "1", config=FAST, leak_rate=1.0) == GateVerdict(
    True, "crash", None, True
  )
  with pytest.raises(ValueError, match="rng"):
    execution_gate(bad, "1", config=FAST, leak_rate=0.5)
  verdicts = execution_gate_batch(
    [bad, GOOD], ["1", "[1, 2], 1"], config=FAST, max_workers=2, leak_rate=0.0
  )
  assert [v.admitted for v in verdicts] == [False, True]
  # Vectorised ε-gate: ε = 0 is exec_valid, ε = 1 admits all, and in between about ε leaks.
  valid = np.array([True, False] * 5000)
  rng = np.random.default_rng(0)
  np.testing.assert_array_equal(leaky_gate(valid, 0.0, rng), valid)
  assert leaky_gate(valid, 1.0, rng).all()
  leaked = leaky_gate(valid, 0.2, rng)
  assert leaked[valid].all()
  rate = leaked[~valid].mean()
  assert abs(rate - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 5000)


def test_output_leaks():
  assert output_leaks("def f(x):\n  return 'hello world'", "'hello world'")
  assert output_leaks("def f(x):\n  return [1,2,  3]", "[1, 2, 3]")
  assert not output_leaks("def f(x):\n  return sorted([3, 2, 1])", "[1, 2, 3]")
  assert not output_leaks("def f(x):\n  return 10", "10")  # below min_chars


@pytest.mark.parametrize(
  ("src", "status"),
  [
    ("def f(x):\n  return sorted(x)\n", "ok"),
    ("def f(x):\n  while True:\n    pass\n", "timeout"),
    ("def f(x):\n  return bytearray(2 ** 34)\n", "memory"),
    ("def f(x):\n  open('/tmp/' + 'postrain_escape_probe', 'w')\n", "sandbox_violation"),
    (
      "import resource\ndef f(x):\n  resource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n",
      "sandbox_violation",
    ),
  ],
)
def test_limits_set_in_the_bootstrap(src, status):
  assert run_program(src, "[2, 1]", FAST_BOOT).status == status
  assert not os.path.exists("/tmp/postrain_escape_probe")


def test_bootstrap_limits_do_not_fork_python_code_in_a_jax_process():
  import jax.numpy as jnp

  float(jnp.ones(2).sum())  # initialise a JAX backend (its threads and at-fork hook)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert run_program("def f(x):\n  return x\n", "1", FAST_BOOT).output == "1"
  assert not [w for w in caught if "fork" in str(w.message)]


def test_config_validation():
  with pytest.raises(ValueError, match="limits_in"):
    SandboxConfig(limits_in="nowhere")
  with pytest.raises(ValueError, match="cpu_s"):
    SandboxConfig(cpu_s=0)
