"""benchmarks/multiturn.py runs end to end at a toy size and prints its ratios (not a timing test:
the numbers are never checked, only that the three runs complete and the episode lengths agree)."""

import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "multiturn.py")


@pytest.mark.slow
def test_multiturn_benchmark_runs_at_toy_size(tmp_path):
  args = "--config tiny --batch 2 --prompt 4 --turn-tokens 4 --obs-tokens 3 --repeats 1".split()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=600,
    cwd=tmp_path,
  )  # fmt: skip
  assert out.returncode == 0, out.stderr
  for line in ("rollout tok/s, 3 turns / single turn", "time, re-prefill / Conversation"):
    assert re.search(re.escape(line) + r".*: \d+\.\d\d", out.stdout), out.stdout
