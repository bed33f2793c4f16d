"""`python -m postrain.selfplay --config configs/selfplay_{dsl,python}.py[:arg] --workdir DIR`."""

from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Self-play config (configs/selfplay_dsl.py or selfplay_python.py).",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: metrics, report, checkpoint.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes
  from postrain.selfplay import run

  try:
    report = run(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps({"evals": report["evals"], "final_pool": report["final_pool"]}))


if __name__ == "__main__":
  app.run(main)
