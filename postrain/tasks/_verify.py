"""Batch verification with deadlines: a slow or crashing scorer costs one reward, never the run.

Scorers run in worker processes (`python -m postrain.tasks._worker`, started with JAX pinned to
CPU so a worker never opens the accelerator). Items go to a worker in chunks (one message) and
come back in order (flushed every 10 ms); a worker's deadline is `timeout_s` after its last
answer (or the chunk's dispatch). Past it the worker is killed and respawned, and the chunk's
unanswered items are re-run one per message so the slow item is identified exactly: it gets
reward 0 and `VerifierStats.timeouts` is incremented. A scorer exception (or a worker that dies)
gives 0 and increments `errors`. A completion with no extractable answer gives 0 and counts in
`no_answer`.

`score_batch` sends the completions themselves: the worker extracts the answer
(`Task.extract`, linear in the completion's last `max_chars` characters) and scores it within the
same deadline, so a pathological completion costs one timeout, never the trainer's time. An
optional format reward (`format_reward`) pays a completion whose answer is explicitly marked
(`\\boxed{}` or an `answer:` line) at least that much, right or wrong.

Workers are subprocesses, not `multiprocessing` children, so the user's `__main__` is never
re-imported; a custom `Task` must be importable by module path (not defined in `__main__`) to be
sent to a worker, or scored in-process with `timeout_s=None` (no deadline).

A worker runs the copy of `_worker.py` this module read when it was imported, never the file on
disk at spawn time: workers are (re)started all through a long run, and a checkout edited or a
package upgraded meanwhile would otherwise pair this process's protocol with another version's
worker (a trainer whose restarted workers all crashed on `for i, answer, problem in message[1]`,
scoring every answer 0, was that). Answers are checked against the items sent, and a call that
raises kills the workers it left with items in flight, so no answer reaches the wrong call.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import math
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing import Pipe
from multiprocessing.connection import wait

import numpy as np

from postrain.tasks._extract import MARKED_SOURCES, MAX_EXTRACT_CHARS, check_extract_args
from postrain.tasks._problem import Problem, Task

# The worker program as of this import (module docstring); started with `python -c _BOOTSTRAP FD`,
# the source travelling in the environment (popped at once, so scorers' subprocesses don't see it).
_WORKER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
with open(_WORKER_PATH, encoding="utf-8") as _f:
  _WORKER_SOURCE = _f.read()
_SOURCE_ENV = "POSTRAIN_VERIFIER_WORKER_SOURCE"
# linecache gets the snapshot too, so a worker traceback quotes the lines that actually ran.
_BOOTSTRAP = (
  "import linecache, os\n"
  f"src, path = os.environ.pop({_SOURCE_ENV!r}), {_WORKER_PATH!r}\n"
  "linecache.cache[path] = (len(src), None, src.splitlines(True), path)\n"
  "exec(compile(src, path, 'exec'), {'__name__': '__main__', '__file__': path})\n"
)


@dataclasses.dataclass
class VerifierStats:
  """Counts from one (or several merged) scoring calls.

  Attributes:
    total: items submitted.
    scored: items whose scorer returned a value.
    no_answer: completions with nothing to extract (reward 0, scorer not called).
    timeouts: scorers past their deadline (reward 0).
    errors: scorers that raised or whose worker died (reward 0).
    format_errors: SCRL completions whose subproblem format was violated (rewards 0).
    marked: scored completions whose answer was explicitly marked (boxed or an answer line);
      counted by `score_batch` only.
  """

  total: int = 0
  scored: int = 0
  no_answer: int = 0
  timeouts: int = 0
  errors: int = 0
  format_errors: int = 0
  marked: int = 0

  def merge(self, other: VerifierStats) -> VerifierStats:
    """Returns the field-wise sum."""
    return VerifierStats(
      **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)}
    )

  def as_dict(self, prefix: str = "verifier/") -> dict[str, float]:
    """Metrics dict, e.g. {"verifier/timeouts": 0.0, ...}."""
    return {f"{prefix}{k}": float(v) for k, v in dataclasses.asdict(self).items()}


# Items per message: amortises the socket round trip without delaying the other workers.
_MAX_CHUNK = 64


class _Worker:
  """One scorer subprocess and its socket."""

  def __init__(self, startup_timeout_s: float):
    self.startup_timeout_s = startup_timeout_s
    parent, child = Pipe(duplex=True)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_PYTHON_CLIENT_PREALLOCATE="false")
    env[_SOURCE_ENV] = _WORKER_SOURCE
    try:
      # Only `child` is passed: Pipe() FDs are close-on-exec and close_fds is on, so no worker
      # holds another's socket (which would hide that worker's death from the parent).
      self.proc = subprocess.Popen(
        [sys.executable, "-c", _BOOTSTRAP, str(child.fileno())],
        pass_fds=[child.fileno()],
        stdin=subprocess.DEVNULL,
        env=env,
      )
    except BaseException:
      parent.close()
      raise
    finally:
      child.close()
    self.conn = parent
    self.conn.send(("init", list(sys.path)))
    self.task_blob: bytes | None = None  # the last task sent
    self.pending_acks = 0  # task messages not yet answered

  def send_task(self, blob: bytes) -> None:
    """Sends the task without waiting (the worker imports while the caller works)."""
    if self.task_blob != blob:
      self.conn.send(("task", blob))
      self.task_blob = blob
      self.pending_acks += 1

  def await_ready(self) -> bool:
    """Waits for the last task to load; False if the worker did not answer in time or died."""
    deadline = time.monotonic() + self.startup_timeout_s
    try:
      while self.pending_acks:
        if not self.conn.poll(max(0.0, deadline - time.monotonic())):
          return False
        message = self.conn.recv()
        self.pending_acks -= 1
        if message[0] == "task_error" and not self.pending_acks:
          self.task_blob = None  # Resend next time rather than score with no task.
          raise RuntimeError(
            f"The verifier worker could not load the task: {message[1]}. A Task sent to a "
            "worker must be importable by module path; pass timeout_s=None to score in-process."
          )
    except (EOFError, OSError):
      return False
    return True

  def kill(self) -> None:
    try:
      self.proc.kill()
      self.proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
      pass
    self.conn.close()

  def close(self) -> None:
    try:
      self.conn.send(("quit",))
      self.proc.wait(timeout=0.5)
    except (OSError, subprocess.TimeoutExpired):
      pass
    self.kill()


class _ProtocolError(Exception):
  """A worker's message does not answer the items it was sent."""


def _receive_results(conn) -> list:
  """The ("ok" | "error", i, value) list of the worker's next ("results", [...]) message."""
  try:
    message = conn.recv()
  except (EOFError, OSError):
    raise
  except Exception as e:  # Undecodable: the stream is out of step.
    raise _ProtocolError(f"undecodable message ({e})") from e
  if not (isinstance(message, tuple) and len(message) == 2 and message[0] == "results"):
    raise _ProtocolError(f"unexpected message {str(message)[:100]}")
  results = message[1]
  if not (isinstance(results, list) and all(isinstance(r, tuple) and len(r) == 4 for r in results)):
    raise _ProtocolError(f"malformed results {str(results)[:100]}")
  return results


def _unpicklable_item(chunk, problems, answers, error: Exception) -> TypeError:
  for i in chunk:
    for name, value in (("problems", problems[i]), ("answers", answers[i])):
      try:
        pickle.dumps(value)
      except Exception as e:
        return TypeError(f"`{name}[{i}]` cannot be pickled for the verifier worker: {e}")
  return TypeError(f"The items cannot be sent to the verifier worker: {error}")


def _pickle_task(task: Task) -> bytes:
  try:
    return pickle.dumps(task)
  except Exception as e:
    raise TypeError(
      f"`task` ({task!r}) cannot be pickled for the verifier worker ({e}); "
      "pass timeout_s=None to score in-process."
    ) from e


class VerifierPool:
  """Worker processes that run task scorers under per-item deadlines.

  Args:
    num_workers: scorer processes (started lazily, reused across calls).
    startup_timeout_s: how long a (re)started worker may take to import the task's modules.
  """

  def __init__(self, num_workers: int = 1, *, startup_timeout_s: float = 120.0):
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
      raise ValueError(f"`num_workers` must be a positive int, got {num_workers!r}.")
    self.num_workers = num_workers
    self.startup_timeout_s = float(startup_timeout_s)
    self._workers: list[_Worker | None] = [None] * num_workers
    self._lock = threading.Lock()

  def __enter__(self) -> VerifierPool:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Stops every worker (a later `score` starts new ones)."""
    with self._lock:
      for i, worker in enumerate(self._workers):
        if worker is not None:
          worker.close()
        self._workers[i] = None

  def warmup(self, task: Task) -> None:
    """Starts the workers and sends them `task` without waiting for them to load it."""
    blob = _pickle_task(task)
    with self._lock:
      for slot in range(self.num_workers):
        self._send(slot, blob)

  def _send(self, slot: int, blob: bytes) -> None:
    worker = self._workers[slot]
    if worker is not None and worker.proc.poll() is not None:
      worker.kill()
      worker = None
    if worker is None:
      try:
        worker = self._workers[slot] = _Worker(self.startup_timeout_s)
      except OSError:  # Could not spawn (e.g. EAGAIN under load): the slot stays empty.
        return
    try:
      worker.send_task(blob)
    except OSError:
      worker.kill()
      self._workers[slot] = None

  def _await(self, slot: int) -> _Worker | None:
    worker = self._workers[slot]
    if worker is not None and worker.await_ready():
      return worker
    if worker is not None:
      worker.kill()
    self._workers[slot] = None
    return None

  def _restart(self, slot: int, blob: bytes) -> _Worker | None:
    worker = self._workers[slot]
    if worker is not None:
      worker.kill()
    self._workers[slot] = None
    self._send(slot, blob)
    return self._await(slot)

  def _run(
    self, workers, blob, todo, problems, answers, timeout_s, rewards, stats, extract, marked
  ):
    """Streams chunks of items to the workers (module docstring).

    A worker answers in order but flushes every `_worker._FLUSH_S`, so when it hangs or dies with
    several items outstanding the culprit is unknown: those items are re-run one per message
    (`suspects`), where a failure is attributed exactly. A slow item may thus cost up to two
    deadlines, only on this rare path.
    """
    queues = {slot: collections.deque() for slot in workers}  # items sent, not yet answered
    try:
      self._stream(
        workers, blob, todo, problems, answers, timeout_s, rewards, stats, queues, extract, marked
      )
    except BaseException:
      # Interrupted (Ctrl-C, an item that cannot be pickled, ...): a worker with items in flight
      # would hand their answers (or a half-written message) to the next call, so it goes.
      for slot, queue in queues.items():
        if queue and self._workers[slot] is not None:
          self._workers[slot].kill()
          self._workers[slot] = None
      raise

  def _stream(
    self, workers, blob, todo, problems, answers, timeout_s, rewards, stats, queues, extract, marked
  ):
    progress = dict.fromkeys(workers, 0.0)
    suspects: collections.deque[int] = collections.deque()

    def fail(slot: int, timed_out: bool) -> None:
      queue = queues[slot]
      if len(queue) == 1:  # The only outstanding item is the culprit.
        queue.clear()
        if timed_out:
          stats.timeouts += 1
        else:
          stats.errors += 1
      suspects.extend(queue)
      queue.clear()
      workers[slot] = self._restart(slot, blob)

    while True:
      live = [slot for slot, worker in workers.items() if worker is not None]
      chunk_size = max(1, min(_MAX_CHUNK, -(-len(todo) // max(len(live), 1))))
      for slot in live:
        if queues[slot] or not (todo or suspects):
          continue
        source, size = (suspects, 1) if suspects else (todo, chunk_size)
        chunk = [source.popleft() for _ in range(min(size, len(source)))]
        queues[slot].extend(chunk)
        progress[slot] = time.monotonic()
        message = ("score", [(i, answers[i], problems[i]) for i in chunk], extract)
        try:
          workers[slot].conn.send(message)
        except OSError:
          source.extendleft(reversed(chunk))
          queues[slot].clear()
          workers[slot] = self._restart(slot, blob)
        except Exception as e:  # Pickling failed: nothing was written, the worker stays.
          queues[slot].clear()
          raise _unpicklable_item(chunk, problems, answers, e) from e
      busy = [slot for slot in queues if queues[slot]]
      if not busy:
        stats.errors += len(todo) + len(suspects)  # No worker could start: count, never hang.
        return
      next_deadline = min(progress[slot] for slot in busy) + timeout_s
      conns = {workers[slot].conn: slot for slot in busy}
      for conn in wait(list(conns), timeout=max(0.0, next_deadline - time.monotonic())):
        slot = conns[conn]
        try:
          while queues[slot] and conn.poll(0):
            results = _receive_results(conn)
            progress[slot] = time.monotonic()
            for kind, i, value, is_marked in results:
              if not queues[slot] or i != queues[slot][0]:
                raise _ProtocolError(f"answer for item {i}, expected {list(queues[slot])[:1]}")
              queues[slot].popleft()
              _record(kind, i, value, is_marked, rewards, stats, marked)
        except (EOFError, OSError, _ProtocolError):  # The worker died (or is out of step).
          fail(slot, timed_out=False)
      now = time.monotonic()
      for slot in busy:
        # An answer already waiting is not late: the parent itself may have been busy (a restart
        # of another worker blocks this loop for the start-up time) or descheduled.
        if queues[slot] and now >= progress[slot] + timeout_s and not workers[slot].conn.poll(0):
          fail(slot, timed_out=True)

  def score(
    self,
    task: Task,
    problems: Sequence[Problem],
    answers: Sequence[str | None],
    *,
    timeout_s: float,
    extract: dict | None = None,
    format_reward: float = 0.0,
  ) -> tuple[np.ndarray, VerifierStats]:
    """Scores answers; returns (rewards: f32[N], stats). See the module docstring.

    `extract` None: `answers` are extracted answers (None: no answer). Otherwise they are
    completions, extracted in the worker by `task.extract(completion, **extract)`; a marked
    answer's reward is then at least `format_reward`.
    """
    blob = _pickle_task(task)
    rewards = np.zeros(len(problems), np.float32)
    marked = np.zeros(len(problems), bool)
    stats = VerifierStats(total=len(problems))
    todo = collections.deque(i for i, a in enumerate(answers) if a is not None)
    stats.no_answer = len(problems) - len(todo)
    if todo:
      with self._lock:
        for slot in range(self.num_workers):  # Start all, then wait: imports run in parallel.
          self._send(slot, blob)
        workers = {slot: self._await(slot) for slot in range(self.num_workers)}
        self._run(
          workers, blob, todo, problems, answers, timeout_s, rewards, stats, extract, marked
        )
    return _with_format_reward(rewards, marked, format_reward), stats


def _record(kind, i, value, is_marked, rewards, stats, marked) -> None:
  """Books one worker result ("ok" | "none" | "error") into rewards, stats and marked."""
  if kind == "none":
    stats.no_answer += 1
    return
  value = float(value) if kind == "ok" else math.nan
  if math.isfinite(value):
    rewards[i] = value
    stats.scored += 1
    if is_marked:
      marked[i] = True
      stats.marked += 1
  else:
    stats.errors += 1


def _with_format_reward(rewards: np.ndarray, marked: np.ndarray, format_reward: float):
  """max(reward, format_reward) where the answer was marked, else reward."""
  if format_reward:
    rewards = np.where(marked, np.maximum(rewards, np.float32(format_reward)), rewards)
  return rewards.astype(np.float32)


_DEFAULT_POOL: VerifierPool | None = None


def default_pool() -> VerifierPool:
  """The process-wide pool used when `pool=None` (one worker; closed at exit)."""
  global _DEFAULT_POOL
  if _DEFAULT_POOL is None:
    _DEFAULT_POOL = VerifierPool()
    atexit.register(_DEFAULT_POOL.close)
  return _DEFAULT_POOL


def score_answers(
  task: Task,
  problems: Sequence[Problem],
  answers: Sequence[str | None],
  *,
  timeout_s: float | None = 5.0,
  pool: VerifierPool | None = None,
) -> tuple[np.ndarray, VerifierStats]:
  """Scores already-extracted answers with `task.score`.

  Args:
    task: the task whose scorer to use.
    problems: N problems.
    answers: N extracted answers (None: no answer, reward 0).
    timeout_s: per-item deadline in seconds; None scores in this process with no deadline
      (exceptions are still caught and counted).
    pool: the worker pool (default: `default_pool()`).

  Returns:
    (rewards: f32[N], stats: VerifierStats)
  """
  return _score(task, problems, answers, timeout_s=timeout_s, pool=pool)


def _score(task, problems, items, *, timeout_s, pool, extract=None, format_reward=0.0):
  if len(problems) != len(items):
    what = "answers" if extract is None else "completions"
    raise ValueError(f"`{what}` has {len(items)} items but `problems` has {len(problems)}.")
  if timeout_s is not None and not timeout_s > 0:
    raise ValueError(f"`timeout_s` must be > 0 or None, got {timeout_s}.")
  if timeout_s is not None:
    return (pool or default_pool()).score(
      task, problems, items, timeout_s=timeout_s, extract=extract, format_reward=format_reward
    )
  rewards = np.zeros(len(problems), np.float32)
  marked = np.zeros(len(problems), bool)
  stats = VerifierStats(total=len(problems))
  for i, (problem, item) in enumerate(zip(problems, items)):
    if item is None:
      stats.no_answer += 1
      continue
    try:
      answer, source = item, None
      if extract is not None:
        answer, source = task.extract(item, **extract)
      if answer is None:
        _record("none", i, None, False, rewards, stats, marked)
        continue
      value = float(task.score(answer, problem))
    except Exception:
      stats.errors += 1
      continue
    _record("ok", i, value, source in MARKED_SOURCES, rewards, stats, marked)
  return _with_format_reward(rewards, marked, format_reward), stats


def score_batch(
  task: Task,
  problems: Sequence[Problem],
  completions: Sequence[str],
  *,
  last_number_fallback: bool = False,
  mode: str | None = None,
  max_chars: int = MAX_EXTRACT_CHARS,
  format_reward: float = 0.0,
  timeout_s: float | None = 5.0,
  pool: VerifierPool | None = None,
) -> tuple[np.ndarray, VerifierStats]:
  """Extracts each completion's answer and scores it with the task's own scorer, both in the
  verifier worker under the per-item deadline (a slow extraction counts in `stats.timeouts`).

  Args:
    task: the task (its `extract` finds the answer, its `score` is the verifier).
    problems: N problems (repeat a problem G times for a group of G rollouts).
    completions: N generated texts (without the prompt).
    last_number_fallback: with `mode=None`, True is mode "any" and False mode "marked".
    mode: the extraction mode (`postrain.tasks.EXTRACT_MODES`; see `extract_answer`).
    max_chars: extraction reads only the last `max_chars` characters of each completion.
    format_reward: in [0, 1]; a completion whose answer is marked (boxed or an `answer:` line)
      gets reward max(score, format_reward). 0 (default) for none.
    timeout_s: per-item deadline (see `score_answers`).
    pool: the worker pool (default: `default_pool()`).

  Returns:
    (rewards: f32[N], stats: VerifierStats). A slow or failing scorer gives 0 and is counted.
  """
  if mode is None:
    mode = "any" if last_number_fallback else "marked"
  check_extract_args(mode, max_chars)
  if not 0.0 <= format_reward <= 1.0:
    raise ValueError(f"`format_reward` must be in [0, 1], got {format_reward}.")
  for i, c in enumerate(completions):
    if not isinstance(c, str):
      raise TypeError(f"`completions[{i}]` must be a str, got {type(c).__name__}.")
  extract = {"mode": mode, "max_chars": max_chars}
  return _score(
    task,
    problems,
    completions,
    timeout_s=timeout_s,
    pool=pool,
    extract=extract,
    format_reward=float(format_reward),
  )
