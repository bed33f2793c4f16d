"""`python -m postrain.train --config configs/<file>.py[:arg] [--config.key=value ...] --workdir DIR`.

Exit status: 0 finished; 2 a bad config or input (one line on stderr naming the key, file or
line); 1 `check_finite` found a non-finite metric, or an internal error; 128 + signal number
(143 for SIGTERM, 130 for SIGINT) preempted: a checkpoint of the last step was saved and the
summary says "preempted at step N"; rerun the same command to resume.
"""

from __future__ import annotations

import errno
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
  except OSError as err:  # e.g. a read-only --workdir: the path, in one line
    if err.filename is None:
      raise
    denied = err.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    print(f"error: cannot {'write' if denied else 'access'} {err.filename}: {err.strerror}",
          file=sys.stderr)  # fmt: skip
    sys.exit(2)
  except FloatingPointError as err:  # config.check_finite
    print(f"error: {err}", file=sys.stderr)
    sys.exit(1)
  if _distributed.is_primary():
    _print_summary(report)
  if "preempted" in report:  # a scheduler tells a preempted run from a finished one by the status
    sys.exit(128 + report["preempted"]["signal"])


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, except that a `--config.x.y` override naming no key fails with one
  line (the closest key and the valid keys of that section) instead of a chained traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as err:  # absl's own usage errors: its one-line message
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as err:
    message = _unknown_override(argv[1:]) or f"{type(err).__name__}: {err}".splitlines()[0]
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _unknown_override(args: list[str]) -> str | None:
  """The first `--config.<path>` override of `args` whose path is not in the config file."""
  import difflib

  import ml_collections as mlc

  from postrain.train.config import load_config_file

  spec = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
  if spec is None:
    return None
  path, _, arg = spec.partition(":")
  config = load_config_file(path, arg or None)
  for a in args:
    if not a.startswith("--config."):
      continue
    name = a[len("--config.") :].split("=", 1)[0]
    node, section = config, "config"
    for part in name.split("."):
      if not isinstance(node, mlc.ConfigDict):
        return f"--config.{name}: {section} is not a section (it holds {node!r})"
      if part not in node:
        keys = sorted(node.keys())
        close = difflib.get_close_matches(part, keys, n=1, cutoff=0.6)
        hint = f"did you mean {section}.{close[0]}? " if close else ""
        return (
          f"--config.{name}: {section} has no key {part!r}; {hint}valid keys: {', '.join(keys)}"
        )
      node, section = node[part], f"{section}.{part}"
  return None


def _print_summary(report: dict) -> None:
  if "preempted" in report:
    print(f"preempted at step {report['preempted']['step']} (checkpoint saved; rerun to resume)")
  for name in ("initial", "after_sft", "final"):
    if name in report:
      line = " ".join(f"{k}={v:.3f}" for k, v in report[name].items() if k != "step")
      print(f"{name:9s} (step {report[name]['step']}): {line}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
