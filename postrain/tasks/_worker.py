"""The verifier worker process: `python -m postrain.tasks._worker FD`.

`postrain.tasks._verify` starts it from the copy of this file it read at import (`python -c`), so
a worker always speaks its parent's protocol, however this file changes on disk during a run.

Speaks a tiny pickle protocol over the socket FD (see `postrain.tasks._verify`):
  parent -> worker: ("init", sys_path) | ("task", pickled_task)
                    | ("score", [(i, answer_or_completion, problem)], extract)
  worker -> parent: ("ready",) | ("task_error", msg)
                    | ("results", [("ok", i, reward, marked) | ("none", i, None, False)
                                   | ("error", i, msg, False)])
With `extract` None the items are already-extracted answers; otherwise they are completions and
the worker first runs `task.extract(completion, **extract)` (so extraction is under the same
deadline as scoring): "none" when it finds no answer, and `marked` says whether the answer was
explicitly marked (boxed or an answer line). A scorer (or extractor) that raises gives
("error", ...); one that hangs or kills the process is handled by the parent (deadline, then kill
and respawn).
"""

from __future__ import annotations

import pickle
import signal
import sys
import time
from multiprocessing.connection import Connection

_FLUSH_S = 0.01


def _score_one(task, i, item, problem, extract) -> tuple:
  try:
    answer, marked = item, False
    if extract is not None:
      answer, source = task.extract(item, **extract)
      if answer is None:
        return ("none", i, None, False)
      marked = source in ("boxed", "answer_line")
    return ("ok", i, float(task.score(answer, problem)), marked)
  except Exception as e:
    return ("error", i, f"{type(e).__name__}: {e}", False)


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
      extract = message[2]
      for i, item, problem in message[1]:
        results.append(_score_one(task, i, item, problem, extract))
        if time.monotonic() - last_flush >= _FLUSH_S:
          conn.send(("results", results))
          results, last_flush = [], time.monotonic()
      if results:
        conn.send(("results", results))
    elif kind == "quit":
      return


if __name__ == "__main__":
  main(sys.argv)
