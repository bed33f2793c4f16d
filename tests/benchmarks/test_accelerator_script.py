"""benchmarks/accelerator.py on a CPU-only host: says so and exits 0 (it is never part of CI)."""

import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "accelerator.py")


def test_accelerator_script_exits_0_on_cpu(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, SCRIPT, "--out", str(tmp_path / "a.json")],
    capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
  )  # fmt: skip
  assert out.returncode == 0, out.stderr
  assert "no GPU or TPU" in out.stdout
  assert not (tmp_path / "a.json").exists()
