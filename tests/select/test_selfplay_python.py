"""Python output-prediction self-play (arXiv 2605.22217's coding setting): seed tasks, formats,
the sandboxed gate on / off / leaky inside the loop's `gate_proposals`, an end-to-end run."""

import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from selectutil import REPO

from postrain import selfplay as sp
from postrain.selfplay import python_tasks as PT
from postrain.train.config import load_config_file

CONFIG = os.path.join(REPO, "configs", "selfplay_python.py")


@pytest.fixture(scope="module")
def fam():
  return sp.task_family(load_config_file(CONFIG, "scale=test"))


@pytest.fixture(scope="module")
def seeds():
  return PT.seed_tasks(24, seed=5)


# (program, input, the output worked out by hand)
FIXED = [
  ("def f(x): return sorted(x)[::-1]", "[3, 1, 2]", "[3, 2, 1]"),
  ("def f(x): return x[::-1].upper()", "'abc'", "'CBA'"),
  ("def f(x): return sum([v for v in x if v % 2 == 1])", "[1, 2, 3, 4, 5]", "9"),
  ("def f(x): return x * 3 + 4", "5", "19"),
  ("def f(x): return [ord(ch) - 97 for ch in ''.join(sorted(x))]", "'cab'", "[0, 1, 2]"),
  ("def f(x): return max([v * 2 for v in x[1:]], default=7)", "[9]", "7"),
  ("def f(x): return (x + 'd')[2:] + (x + 'd')[:2]", "'abc'", "'cdab'"),
  ("def f(x): return x % 3 == 1", "10", "True"),
]


def test_fixed_programs_run_through_the_gate_to_hand_computed_outputs(fam):
  verdicts = fam.gate([p for p, _, _ in FIXED], [i for _, i, _ in FIXED])
  for (program, _, want), v in zip(FIXED, verdicts):
    assert v.admitted and v.reason == "ok", (program, v)
    assert v.output == want, program


def test_seed_tasks_are_gated_distinct_and_labelled_by_the_executor(seeds):
  assert len({(t.program, t.inputs) for t in seeds}) == 24
  assert all(t.kind == "python" for t in seeds)
  kinds = {type(ast.literal_eval(t.inputs)).__name__ for t in seeds}
  assert kinds == {"list", "int", "str"}  # all three input types occur
  for t in seeds:
    assert t.program.startswith("def f(x): return ") and "\n" not in t.program
    # Independent reference: the template programs are harmless, so the test runs them here.
    ns = {}
    exec(t.program, ns)
    assert t.output == repr(ns["f"](ast.literal_eval(t.inputs))), t
    assert t.output not in t.program or len(t.output) < 3  # the leak filter held
  assert PT.seed_tasks(6, seed=5) == seeds[:6]  # deterministic, prefix-stable in n


def test_proposal_and_answer_parsing():
  assert PT.parse_proposal(" def f(x): return x[::-1]\ninput: [1, 2]") == (
    "def f(x): return x[::-1]",
    "[1, 2]",
  )
  multi = " def f(x):\n  y = x * 2\n  return y + 1\ninput: 4\n"
  assert PT.parse_proposal(multi) == ("def f(x):\n  y = x * 2\n  return y + 1", "4")
  assert PT.parse_proposal(" def f(x): return x") is None  # no input line
  assert PT.parse_proposal(" def f(x): return x\ninput:") is None  # empty input
  assert PT.parse_proposal(" def f(x): return x\ninput: 3\nprogram: def g") is None  # trailing
  assert PT.parse_proposal("\ninput: 3") is None  # empty program
  assert PT.parse_proposal("") is None
  assert PT.canonical_answer(" [1,2 ,3]\nmore") == "[1, 2, 3]"
  assert PT.canonical_answer(' "ab"') == "'ab'"
  assert PT.canonical_answer(" -7") == "-7"
  assert PT.canonical_answer(" True") == "True"
  assert PT.canonical_answer(" seven") is None
  assert PT.canonical_answer(None) is None


def test_prompts_round_trip_through_parsing(seeds):
  prompt = PT.proposer_prompt(seeds[:2])
  assert prompt.startswith(PT.PROPOSER_HEAD) and prompt.endswith("program:")
  assert PT.parse_proposal(PT.proposer_target(seeds[2])) == (seeds[2].program, seeds[2].inputs)
  assert PT.solver_prompt(seeds[0]).endswith("output:")
  assert PT.canonical_answer(PT.solver_target(seeds[0])) == seeds[0].output


LEAKS = " def f(x): return 'abcdef'\ninput: 1"
BAD = {
  "nondeterministic": " import random\ndef f(x):\n  return random.random() + x\ninput: 1",
  "crash": " def f(x): return x / 0\ninput: 1",
  "timeout": " def f(x):\n  while True:\n    x += 1\ninput: 1",
  "bad_input": " def f(x): return x\ninput: [1, 2",
  "syntax_error": " def f(x) return x\ninput: 1",
}


def test_output_leak_rejected_by_the_strict_gate_admitted_with_the_gate_off(fam):
  parsed = [PT.parse_proposal(LEAKS), PT.parse_proposal(" def f(x): return x * 7\ninput: 6")]
  idx, strict = sp.gate_proposals(parsed, mode="strict", gate=fam.gate)
  assert idx == [0, 1]
  assert (strict[0].admitted, strict[0].reason, strict[0].output) == (
    False,
    "output_leak",
    "'abcdef'",
  )
  assert (strict[1].admitted, strict[1].output) == (True, "42")
  _, off = sp.gate_proposals(parsed, mode="off", gate=fam.gate)
  assert off[0].admitted and off[0].leaked and off[0].output == "'abcdef'"
  assert off[1].admitted and not off[1].leaked


def test_nondeterministic_crashing_slow_and_malformed_proposals_are_rejected(fam):
  texts = [*BAD.values(), "no format at all"]
  parsed = [PT.parse_proposal(t) for t in texts]
  idx, verdicts = sp.gate_proposals(parsed, mode="strict", gate=fam.gate)
  assert idx == list(range(len(BAD)))  # the unformatted completion is not a task
  assert [v.reason for v in verdicts] == list(BAD)
  assert not any(v.admitted for v in verdicts)
  # Gate off: every parsed one gets in, marked leaked; only the ones that ran keep an output.
  _, off = sp.gate_proposals(parsed, mode="off", gate=fam.gate)
  assert all(v.admitted and v.leaked for v in off)
  assert [v.output is not None for v in off] == [True, False, False, False, False]


def test_leak_rate_draws_one_uniform_per_rejected_task_in_order(fam):
  texts = [BAD["crash"], " def f(x): return x + 1\ninput: 1", BAD["bad_input"], BAD["crash"]]
  parsed = [PT.parse_proposal(t) for t in texts] * 3
  _, verdicts = sp.gate_proposals(
    parsed, mode="strict", leak_rate=0.5, rng=np.random.default_rng(7), gate=fam.gate
  )
  u = iter(np.random.default_rng(7).random(9))  # 9 rejected tasks, in proposal order
  want = [True if i % 4 == 1 else bool(next(u) < 0.5) for i in range(12)]
  assert [v.admitted for v in verdicts] == want
  assert [v.leaked for v in verdicts] == [w and i % 4 != 1 for i, w in enumerate(want)]


@pytest.mark.parametrize(("key", "value"), [("language", "lisp"), ("gate.mode", "leaky")])
def test_bad_config(key, value):
  c = load_config_file(CONFIG, "scale=test")
  if "." in key:
    c[key.split(".")[0]][key.split(".")[1]] = value
  else:
    c[key] = value
  with pytest.raises(ValueError, match=key.split(".")[-1]):
    sp.validate(c)


@pytest.mark.parametrize("arg", ["", "gate=off,solver=grounded,leak=0.2", "scale=test"])
def test_config_builds_validates_and_locks(arg):
  c = load_config_file(CONFIG, arg)
  sp.validate(c)
  assert c.language == "python" and sp.task_family(c).kind == "python"
  if arg.startswith("gate=off"):
    assert (c.gate.mode, c.solver_reward, c.gate.leak_rate) == ("off", "grounded", 0.2)
  c.lock()
  with pytest.raises(AttributeError):
    c.not_a_key = 1
  assert "--config configs/selfplay_python.py" in open(CONFIG).read()


@pytest.mark.slow
def test_end_to_end_cli_run_writes_metrics(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO)
  cmd = [sys.executable, "-m", "postrain.selfplay", "--config", f"{CONFIG}:scale=test"]
  proc = subprocess.run(
    [*cmd, "--workdir", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert [e["step"] for e in out["evals"]] == [0, 1, 2]
  with open(tmp_path / "metrics.jsonl") as f:
    recs = [json.loads(line) for line in f]
  train = [r for r in recs if r["kind"] == "train"]
  assert [r["step"] for r in train] == [1, 2]
  keys = (
    "admit/admitted_fraction",
    "pool/size",
    "pool/unique_output_rate",
    "pool/trivial_output_rate",
    "pool/duplicate_rate",
    "solver/gap",
    "solver/vote_share",
    "gate_s",
  )
  for r in train:
    for key in keys:
      assert r[key] is not None and np.isfinite(r[key]), key
    assert r["pool/size"] >= 8  # the seed pool
  assert (tmp_path / "selfplay.png").exists()
  assert (tmp_path / "checkpoints" / "2").exists()
