"""The verifier worker process: `python -m postrain.tasks._worker FD`.

`postrain.tasks._verify` starts it from the copy of this file it read at import (`python -c`), so
a worker always speaks its parent's protocol, however this file changes on disk during a run.

Speaks a tiny pickle protocol over the socket FD (see `postrain.tasks._verify`):
  parent -> worker: ("init", sys_path) | ("task", pickled_task) | ("score", [(i, answer, problem)])
  worker -> parent: ("ready",) | ("task_error", msg) | ("results", [("ok", i, reward) | ("error", i, msg)])
A scorer that raises gives ("error", ...); one that hangs or kills the process is handled by the
parent (deadline, then kill and respawn).
"""

from __future__ import annotations

import pickle
import signal
import sys
import time
from multiprocessing.connection import Connection

_FLUSH_S = 0.01


def main(argv: list[str]) -> None:
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business.
  conn = Connection(int(argv[1]))
  task = None
  while True:
    try:
      message = conn.recv()
    except (EOFError, OSError):
      return  # The parent is gone.
    kind = message[0]
    if kind == "init":
      sys.path[:] = list(dict.fromkeys([*message[1], *sys.path]))
    elif kind == "task":
      try:
        task = pickle.loads(message[1])
        task.prepare()
        conn.send(("ready",))
      except Exception as e:
        conn.send(("task_error", f"{type(e).__name__}: {e}"))
    elif kind == "score":
      # Answers go back in order, flushed every _FLUSH_S (the parent's deadline clock is the
      # time of the last answer, so the interval must stay far below any timeout).
      results, last_flush = [], time.monotonic()
      for i, answer, problem in message[1]:
        try:
          results.append(("ok", i, float(task.score(answer, problem))))
        except Exception as e:
          results.append(("error", i, f"{type(e).__name__}: {e}"))
        if time.monotonic() - last_flush >= _FLUSH_S:
          conn.send(("results", results))
          results, last_flush = [], time.monotonic()
      if results:
        conn.send(("results", results))
    elif kind == "quit":
      return


if __name__ == "__main__":
  main(sys.argv)
