"""Helpers for trainer tests (imported as `trainutil`: pytest puts this directory on sys.path)."""

import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "default.py")


def load_config(arg: str = "scale=test"):
  from postrain.train.config import load_config_file

  return load_config_file(DEFAULT_CONFIG, arg)


def run_cli(
  workdir: str,
  *overrides: str,
  arg: str = "scale=test",
  timeout: float = 600,
  wait: bool = True,
  config: str = DEFAULT_CONFIG,
  env: dict | None = None,
):
  """Runs `python -m postrain.train` on a config file (the default one) in a subprocess; `env`:
  variables added to the environment."""
  cmd = [
    sys.executable,
    "-m",
    "postrain.train",
    f"--config={config}:{arg}",
    f"--workdir={workdir}",
    "--config.progress_bar=False",
    *overrides,
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  if not wait:
    return subprocess.Popen(
      cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
  return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
