"""`python -m postrain.train` with a pause at a chosen point, for the kill tests.

The test sets (environment):
  HARNESS_MARKER   a path this process creates once it reached the pause point;
  HARNESS_AT       "step:K"        pause inside training step K+1 (the trainer's step counter is K),
                                   once the earlier checkpoints are committed, before its update;
                   "checkpoint:K"  pause inside the save of step K's checkpoint, after every array
                                   file is written, before orbax commits (renames) the directory;
  HARNESS_UNTIL    "kill" (default: pause until killed) or "signal" (resume once the trainer's
                   stop flag is set: a SIGTERM arrived).
The test waits for the marker file (a file event, never a sleep) and then sends its signal, so
the kill lands at the same point on an idle or a busy machine.
"""

import os
import sys
import time

_MARKER = os.environ["HARNESS_MARKER"]
_WHERE, _, _AT = os.environ["HARNESS_AT"].partition(":")
_AT = int(_AT)
_UNTIL = os.environ.get("HARNESS_UNTIL", "kill")
_flags = []  # the trainer's StopFlag, once entered


def _pause() -> None:
  with open(_MARKER + ".tmp", "w") as f:
    f.write(str(os.getpid()))
  os.replace(_MARKER + ".tmp", _MARKER)
  while True:
    if _UNTIL == "signal" and _flags and _flags[-1].stop_requested:
      return
    time.sleep(0.01)


def _install() -> None:
  import orbax.checkpoint as ocp

  from postrain.train import _checkpoint, _trainer

  enter = _checkpoint.StopFlag.__enter__

  def flag_enter(self):
    _flags.append(self)
    return enter(self)

  _checkpoint.StopFlag.__enter__ = flag_enter
  if _WHERE == "step":
    for name in ("_sft_step", "_rl_step"):
      original = getattr(_trainer.Trainer, name)

      def wrapped(self, _original=original):
        if self.step == _AT:
          self.checkpointer.wait()  # the checkpoints so far are on disk: a fixed starting point
          _pause()
        return _original(self)

      setattr(_trainer.Trainer, name, wrapped)
  elif _WHERE == "checkpoint":
    finalize = ocp.CompositeCheckpointHandler.finalize

    def paused_finalize(self, directory):
      # `directory` is the step's temporary directory, `<step>.orbax-checkpoint-tmp-...`.
      if os.path.basename(str(directory)).split(".")[0] == str(_AT):
        _pause()
      return finalize(self, directory)

    ocp.CompositeCheckpointHandler.finalize = paused_finalize
  else:
    raise ValueError(f"HARNESS_AT={os.environ['HARNESS_AT']!r}")


if __name__ == "__main__":
  from absl import app

  from postrain.train import __main__ as cli

  _install()
  sys.argv[0] = "postrain.train"
  app.run(cli.main)
