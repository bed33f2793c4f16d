"""`python -m postrain.train --config configs/<file>.py[:arg] [--config.key=value ...] --workdir DIR`."""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Path to a config file in configs/ (optionally `path.py:arg`).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Run directory: data, checkpoints, metrics, report."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  from postrain.train import _distributed, train

  try:
    # Before anything touches a device: joins the other processes of a multi-process run
    # (config.distributed, or JAX_COORDINATOR_ADDRESS / _NUM_PROCESSES / _PROCESS_ID; else a no-op).
    _distributed.initialize_distributed(_CONFIG.value)
    report = train(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as err:  # a bad config or input: one clear line, no trace
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  if _distributed.is_primary():
    _print_summary(report)


def _print_summary(report: dict) -> None:
  for name in ("initial", "after_sft", "final"):
    if name in report:
      line = " ".join(f"{k}={v:.3f}" for k, v in report[name].items() if k != "step")
      print(f"{name:9s} (step {report[name]['step']}): {line}")


if __name__ == "__main__":
  app.run(main)
