"""Running a few worker processes side by side for the multi-process tests (imported as
`process_group`: pytest puts this directory on sys.path)."""

import os
import socket
import subprocess
import time

import pytest


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run(
  commands: list[list[str]],
  envs: list[dict[str, str]],
  log_dir,
  *,
  timeout_s: float,
  cwd: str | None = None,
) -> list[str]:
  """Runs `commands[i]` with `envs[i]` concurrently, output to `log_dir/log{i}.txt`; returns the
  logs. All are killed when one fails (the others would wait for it until their own timeout) or
  at the deadline; the test fails with the log tails unless every process exits 0."""
  paths = [os.path.join(log_dir, f"log{i}.txt") for i in range(len(commands))]
  logs = [open(p, "w") for p in paths]
  procs = []
  try:
    for cmd, env, log in zip(commands, envs, logs):
      procs.append(
        subprocess.Popen(
          cmd,
          env=env,
          cwd=cwd,
          stdout=log,
          stderr=subprocess.STDOUT,
          start_new_session=True,  # signals among the workers never reach the test process
        )
      )
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
      if any(p.poll() not in (None, 0) for p in procs):
        break
      time.sleep(0.5)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
    for f in logs:
      f.close()
  outs = [open(p).read() for p in paths]
  codes = [p.returncode for p in procs]
  if codes != [0] * len(commands):
    pytest.fail(
      f"exit codes {codes}\n"
      + "\n".join(f"--- process {i} ---\n{o[-3000:]}" for i, o in enumerate(outs))
    )
  return outs
